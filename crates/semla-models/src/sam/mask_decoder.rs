//! `MaskDecoder` (`mask_decoder.*`): output tokens and prompt tokens through
//! the two-way transformer, the image tokens upscaled 4x, one hypernetwork MLP
//! per mask token, and the IoU head.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::common::{LayerNorm2d, Linear};
use super::config::MaskDecoderConfig;
use super::transformer::TwoWayTransformer;
use crate::layers::ConvTranspose;

type Result<T> = candle_core::Result<T>;

/// The mask decoder.
#[derive(Clone, Debug)]
pub struct MaskDecoder {
    /// `[1, C]`.
    iou_token: Tensor,
    /// `[M + 1, C]`: the single-mask token, then the multimask ones.
    mask_tokens: Tensor,
    transformer: TwoWayTransformer,
    upscale1: ConvTranspose,
    upscale_norm: LayerNorm2d,
    upscale2: ConvTranspose,
    hypernetworks: Vec<Mlp>,
    iou_head: Mlp,
}

impl MaskDecoder {
    pub(crate) fn load(vb: &VarBuilder, config: &MaskDecoderConfig) -> Result<Self> {
        let c = config.transformer_dim;
        let tokens = config.num_multimask_outputs + 1;
        let hypernetworks = (0..tokens)
            .map(|i| {
                Mlp::load(
                    &vb.pp(format!("output_hypernetworks_mlps.{i}")),
                    c,
                    c,
                    c / 8,
                    3,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            iou_token: vb.get((1, c), "iou_token.weight")?,
            mask_tokens: vb.get((tokens, c), "mask_tokens.weight")?,
            transformer: TwoWayTransformer::load(&vb.pp("transformer"), config)?,
            upscale1: ConvTranspose::load(vb, "output_upscaling.0", c, c / 4, 2)?,
            upscale_norm: LayerNorm2d::load(vb, "output_upscaling.1", c / 4)?,
            upscale2: ConvTranspose::load(vb, "output_upscaling.3", c / 4, c / 8, 2)?,
            hypernetworks,
            iou_head: Mlp::load(
                &vb.pp("iou_prediction_head"),
                c,
                config.iou_head_hidden_dim,
                tokens,
                config.iou_head_depth,
            )?,
        })
    }

    /// `image` `[1, C, 64, 64]` (one image's embedding), `image_pe` `[1, C, 64, 64]`,
    /// `sparse` `[B, T, C]`, `dense` `[B, C, 64, 64]` -> mask logits
    /// `[B, M, 256, 256]` and IoU predictions `[B, M]`, with `M` = 3 for
    /// `multimask` (tokens 1..) else 1 (token 0).
    pub fn forward(
        &self,
        image: &Tensor,
        image_pe: &Tensor,
        sparse: &Tensor,
        dense: &Tensor,
        multimask: bool,
    ) -> Result<(Tensor, Tensor)> {
        let (b, _, _) = sparse.dims3()?;
        let output_tokens = Tensor::cat(&[&self.iou_token, &self.mask_tokens], 0)?;
        let output_tokens = output_tokens
            .unsqueeze(0)?
            .broadcast_as((b, output_tokens.dim(0)?, output_tokens.dim(1)?))?
            .contiguous()?;
        let tokens = Tensor::cat(&[&output_tokens, sparse], 1)?;
        let (_, c, h, w) = dense.dims4()?;
        let src = image.broadcast_add(dense)?;
        let pos = image_pe.broadcast_as((b, c, h, w))?.contiguous()?;
        let (hs, src) = self.transformer.forward(&src, &pos, &tokens)?;
        let mask_count = self.mask_tokens.dim(0)?;
        let iou_out = hs.narrow(1, 0, 1)?.squeeze(1)?;
        let src = src.transpose(1, 2)?.contiguous()?.reshape((b, c, h, w))?;
        let up = self.upscale1.forward(&src)?;
        let up = self.upscale_norm.forward(&up)?.gelu_erf()?;
        let up = self.upscale2.forward(&up)?.gelu_erf()?;
        let (_, uc, uh, uw) = up.dims4()?;
        let hyper = self
            .hypernetworks
            .iter()
            .enumerate()
            .map(|(i, mlp)| mlp.forward(&hs.narrow(1, 1 + i, 1)?.squeeze(1)?))
            .collect::<Result<Vec<_>>>()?;
        let hyper = Tensor::stack(&hyper, 1)?; // [B, M+1, C/8]
        let masks = hyper
            .matmul(&up.reshape((b, uc, uh * uw))?)?
            .reshape((b, mask_count, uh, uw))?;
        let iou = self.iou_head.forward(&iou_out)?;
        let (start, len) = if multimask {
            (1, mask_count - 1)
        } else {
            (0, 1)
        };
        Ok((masks.narrow(1, start, len)?, iou.narrow(1, start, len)?))
    }
}

/// `MLP` of the mask decoder: ReLU between layers, none after the last.
#[derive(Clone, Debug)]
struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    fn load(
        vb: &VarBuilder,
        input: usize,
        hidden: usize,
        output: usize,
        depth: usize,
    ) -> Result<Self> {
        let layers = (0..depth)
            .map(|i| {
                let cin = if i == 0 { input } else { hidden };
                let cout = if i + 1 == depth { output } else { hidden };
                Linear::load(vb, &format!("layers.{i}"), cin, cout)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x)?;
            if i + 1 < self.layers.len() {
                x = x.relu()?;
            }
        }
        Ok(x)
    }
}
