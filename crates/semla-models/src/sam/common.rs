//! The small parts every SAM module uses (`segment_anything/modeling/common.py`):
//! a plain linear layer, `MLPBlock` and `LayerNorm2d`.

use candle_core::Tensor;
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
        let h = self.lin1.forward(x)?;
        let h = match self.activation {
            Activation::Gelu => h.gelu_erf()?,
            Activation::Relu => h.relu()?,
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
