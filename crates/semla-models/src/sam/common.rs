//! The small parts several SAM modules use (`segment_anything/modeling/common.py`
//! and what both image encoders share): a plain linear layer, `MLPBlock`,
//! `LayerNorm2d`, the convolutional neck and the window partition.

use candle_core::{D, Tensor};
use candle_nn::VarBuilder;

use crate::layers::{Kernels, LayerNorm};

type Result<T> = candle_core::Result<T>;

/// `nn.Linear` with bias (every SAM linear has one): `weight` `[out, in]`, `bias` `[out]`.
#[derive(Clone, Debug)]
pub(crate) struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    pub(crate) fn load(vb: &VarBuilder, prefix: &str, cin: usize, cout: usize) -> Result<Self> {
        let vb = vb.pp(prefix);
        Ok(Self {
            weight: vb.get((cout, cin), "weight")?,
            bias: vb.get(cout, "bias")?,
        })
    }

    /// `x` `[..., in]` -> `[..., out]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::layers::linear(x, &self.weight, Some(&self.bias))
    }

    /// `gelu_erf(forward(x))`, the bias and the activation in one pass.
    pub(crate) fn forward_gelu(&self, x: &Tensor) -> Result<Tensor> {
        let y = crate::layers::linear(x, &self.weight, None)?;
        let last = y.rank() - 1;
        crate::layers::bias_gelu_erf_owned(y, &self.bias, last, Kernels::Fused)
    }
}

/// The activation between an MLP's two layers.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Activation {
    /// Exact (erf) GELU: the image encoder.
    Gelu,
    /// ReLU: the mask decoder's transformer.
    Relu,
}

/// `MLPBlock`: `lin2(act(lin1(x)))`.
#[derive(Clone, Debug)]
pub(crate) struct MlpBlock {
    lin1: Linear,
    lin2: Linear,
    activation: Activation,
}

impl MlpBlock {
    pub(crate) fn load(
        vb: &VarBuilder,
        prefix: &str,
        dim: usize,
        hidden: usize,
        activation: Activation,
    ) -> Result<Self> {
        let vb = vb.pp(prefix);
        Ok(Self {
            lin1: Linear::load(&vb, "lin1", dim, hidden)?,
            lin2: Linear::load(&vb, "lin2", hidden, dim)?,
            activation,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = match self.activation {
            Activation::Gelu => self.lin1.forward_gelu(x)?,
            Activation::Relu => self.lin1.forward(x)?.relu()?,
        };
        self.lin2.forward(&h)
    }
}

/// `LayerNorm2d`: a layer norm over the channels of `[N, C, H, W]`.
#[derive(Clone, Debug)]
pub(crate) struct LayerNorm2d(LayerNorm);

impl LayerNorm2d {
    pub(crate) fn load(vb: &VarBuilder, prefix: &str, channels: usize) -> Result<Self> {
        // `common.py`: eps 1e-6 wherever LayerNorm2d is used.
        Ok(Self(LayerNorm::load(vb, prefix, channels, 1e-6)?))
    }

    /// `[N, C, H, W]` -> `[N, C, H, W]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_channels_last(&x.permute((0, 2, 3, 1))?.contiguous()?)?
            .permute((0, 3, 1, 2))?
            .contiguous()
    }

    /// The same norm on `[N, H, W, C]`.
    pub(crate) fn forward_channels_last(&self, x: &Tensor) -> Result<Tensor> {
        self.0.forward(x, Kernels::Fused)
    }
}

/// `nn.Conv2d` without bias or with it: `weight` `[out, in, k, k]`.
#[derive(Clone, Debug)]
pub(crate) struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn load(
        vb: &VarBuilder,
        prefix: &str,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Self> {
        let vb = vb.pp(prefix);
        Ok(Self {
            weight: vb.get((cout, cin, kernel, kernel), "weight")?,
            bias: if bias {
                Some(vb.get(cout, "bias")?)
            } else {
                None
            },
            stride,
            padding,
        })
    }

    /// `[N, in, H, W]` -> `[N, out, H', W']`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
    }

    /// The weight as a matrix `[out, in * k * k]` (for 1x1 and patchify convolutions).
    pub(crate) fn weight_matrix(&self) -> Result<Tensor> {
        let out = self.weight.dim(0)?;
        self.weight.reshape((out, ()))
    }

    pub(crate) fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

/// The image encoders' `neck` (`neck.0`..`neck.3`): a 1x1 convolution, `LayerNorm2d`,
/// a 3x3 convolution, `LayerNorm2d`, all without bias; the same in SAM's ViT and
/// MobileSAM's TinyViT.
#[derive(Clone, Debug)]
pub(crate) struct Neck {
    conv1: Conv2d,
    norm1: LayerNorm2d,
    conv2: Conv2d,
    norm2: LayerNorm2d,
}

impl Neck {
    pub(crate) fn load(vb: &VarBuilder, dim: usize, out: usize) -> Result<Self> {
        Ok(Self {
            conv1: Conv2d::load(vb, "0", dim, out, 1, 1, 0, false)?,
            norm1: LayerNorm2d::load(vb, "1", out)?,
            conv2: Conv2d::load(vb, "2", out, out, 3, 1, 1, false)?,
            norm2: LayerNorm2d::load(vb, "3", out)?,
        })
    }

    /// Channels-last features `[B, H, W, dim]` -> the image embedding `[B, out, H, W]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // The 1x1 convolution on channels-last, then the norm over channels.
        let x = crate::layers::linear(x, &self.conv1.weight_matrix()?, None)?;
        let x = self.norm1.forward_channels_last(&x)?;
        let x = x.permute((0, 3, 1, 2))?.contiguous()?;
        let x = self.conv2.forward(&x)?;
        self.norm2.forward(&x)
    }
}

/// `[B, H, W, C]` -> windows `[B * nh * nw, ws, ws, C]`, zero-padding H and W up
/// to multiples of `ws` (the padded tokens stay keys of the attention, as in both
/// official encoders: SAM's ViT pads after its norm, TinyViT before), and the
/// padded size.
pub(crate) fn window_partition(x: &Tensor, ws: usize) -> Result<(Tensor, (usize, usize))> {
    let (b, h, w, c) = x.dims4()?;
    let (pad_h, pad_w) = ((ws - h % ws) % ws, (ws - w % ws) % ws);
    let x = x.pad_with_zeros(1, 0, pad_h)?.pad_with_zeros(2, 0, pad_w)?;
    let (hp, wp) = (h + pad_h, w + pad_w);
    let windows = x
        .reshape((b, hp / ws, ws, wp / ws, ws, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .contiguous()?
        .reshape((b * (hp / ws) * (wp / ws), ws, ws, c))?;
    Ok((windows, (hp, wp)))
}

/// The inverse of [`window_partition`], cropping the padding.
pub(crate) fn window_unpartition(
    windows: &Tensor,
    ws: usize,
    (hp, wp): (usize, usize),
    (h, w): (usize, usize),
) -> Result<Tensor> {
    let c = windows.dim(D::Minus1)?;
    let b = windows.dim(0)? / ((hp / ws) * (wp / ws));
    windows
        .reshape((b, hp / ws, wp / ws, ws, ws, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .contiguous()?
        .reshape((b, hp, wp, c))?
        .narrow(1, 0, h)?
        .narrow(2, 0, w)?
        .contiguous()
}
