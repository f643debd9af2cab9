//! `ImageEncoderViT` (`image_encoder.*` in the checkpoint): a patchify
//! convolution, absolute positions, ViT blocks attending in 14x14 windows or
//! globally with decomposed relative positions, and a convolutional neck to the
//! 256-channel image embedding.

use candle_core::{D, Tensor};
use candle_nn::VarBuilder;

use super::common::{
    Activation, Conv2d, Linear, MlpBlock, Neck, window_partition, window_unpartition,
};
use super::config::ImageEncoderConfig;
use crate::layers::{Kernels, LayerNorm, softmax_last_dim};

type Result<T> = candle_core::Result<T>;

/// Most attention scores materialised at once (`[chunk, N, N]`), to bound
/// memory in the global blocks (64 MiB of f32).
const MAX_SCORES: usize = 1 << 24;

/// The ViT image encoder.
#[derive(Clone, Debug)]
pub struct ImageEncoder {
    patch_embed: Conv2d,
    /// `[1, 64, 64, D]`.
    pos_embed: Tensor,
    blocks: Vec<Block>,
    neck: Neck,
    patch_size: usize,
}

impl ImageEncoder {
    pub(crate) fn load(vb: &VarBuilder, config: &ImageEncoderConfig) -> Result<Self> {
        let dim = config.args.encoder_embed_dim;
        let grid = config.grid();
        let p = config.patch_size;
        let blocks = (0..config.args.encoder_depth)
            .map(|i| {
                let global = config.args.encoder_global_attn_indexes.contains(&i);
                let side = if global { grid } else { config.window_size };
                Block::load(
                    &vb.pp(format!("blocks.{i}")),
                    dim,
                    config.args.encoder_num_heads,
                    dim * config.mlp_ratio,
                    side,
                    if global { 0 } else { config.window_size },
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch_embed: Conv2d::load(vb, "patch_embed.proj", 3, dim, p, p, 0, true)?,
            pos_embed: vb.get((1, grid, grid, dim), "pos_embed")?,
            blocks,
            neck: Neck::load(&vb.pp("neck"), dim, config.out_chans)?,
            patch_size: p,
        })
    }

    /// `x` `[B, 3, 1024, 1024]` (normalised, padded) -> the image embedding
    /// `[B, 256, 64, 64]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        // A convolution whose kernel equals its stride is a matmul over patches.
        let patches = x
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * gh * gw, c * p * p))?;
        let mut x = crate::layers::linear(
            &patches,
            &self.patch_embed.weight_matrix()?,
            self.patch_embed.bias(),
        )?
        .reshape((b, gh, gw, ()))?
        .broadcast_add(&self.pos_embed)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        self.neck.forward(&x)
    }
}

/// A transformer block; `window` 0 attends globally.
#[derive(Clone, Debug)]
struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: MlpBlock,
    window: usize,
}

impl Block {
    fn load(
        vb: &VarBuilder,
        dim: usize,
        heads: usize,
        hidden: usize,
        side: usize,
        window: usize,
    ) -> Result<Self> {
        Ok(Self {
            norm1: LayerNorm::load(vb, "norm1", dim, 1e-6)?,
            attn: Attention::load(&vb.pp("attn"), dim, heads, side)?,
            norm2: LayerNorm::load(vb, "norm2", dim, 1e-6)?,
            mlp: MlpBlock::load(vb, "mlp", dim, hidden, Activation::Gelu)?,
            window,
        })
    }

    /// `[B, H, W, C]` -> `[B, H, W, C]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.norm1.forward(x, Kernels::Fused)?;
        let h = if self.window > 0 {
            let (_, height, width, _) = h.dims4()?;
            let (windows, padded) = window_partition(&h, self.window)?;
            let attended = self.attn.forward(&windows)?;
            window_unpartition(&attended, self.window, padded, (height, width))?
        } else {
            self.attn.forward(&h)?
        };
        let x = (x + h)?;
        let m = self.mlp.forward(&self.norm2.forward(&x, Kernels::Fused)?)?;
        x + m
    }
}

/// Multi-head attention with decomposed relative positions.
#[derive(Clone, Debug)]
struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
    /// `[2 * side - 1, head_dim]` each.
    rel_pos_h: Tensor,
    rel_pos_w: Tensor,
}

impl Attention {
    fn load(vb: &VarBuilder, dim: usize, heads: usize, side: usize) -> Result<Self> {
        let head_dim = dim / heads;
        Ok(Self {
            qkv: Linear::load(vb, "qkv", dim, 3 * dim)?,
            proj: Linear::load(vb, "proj", dim, dim)?,
            heads,
            rel_pos_h: vb.get((2 * side - 1, head_dim), "rel_pos_h")?,
            rel_pos_w: vb.get((2 * side - 1, head_dim), "rel_pos_w")?,
        })
    }

    /// `[B, H, W, C]` -> `[B, H, W, C]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let heads = self.heads;
        let hd = c / heads;
        let n = h * w;
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, n, 3, heads, hd))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?
            .reshape((3, b * heads, n, hd))?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let rel_h = relative_table(&self.rel_pos_h, h)?; // [h, kh, hd]
        let rel_w = relative_table(&self.rel_pos_w, w)?; // [w, kw, hd]
        let scale = (hd as f64).powf(-0.5);
        let rows = b * heads;
        let chunk = (MAX_SCORES / (n * n).max(1)).clamp(1, rows);
        let mut outputs = Vec::with_capacity(rows.div_ceil(chunk));
        for start in (0..rows).step_by(chunk) {
            let len = chunk.min(rows - start);
            let q = q.narrow(0, start, len)?;
            let k = k.narrow(0, start, len)?;
            let v = v.narrow(0, start, len)?;
            let scores = (q.affine(scale, 0.0)?).matmul(&k.t()?)?; // [len, n, n]
            // einsum("bhwc,hkc->bhwk") with the unscaled q, and its w twin.
            let r_q = q.reshape((len, h, w, hd))?;
            let along_h = r_q
                .permute((1, 0, 2, 3))?
                .contiguous()?
                .reshape((h, len * w, hd))?
                .matmul(&rel_h.transpose(1, 2)?)? // [h, len*w, kh]
                .reshape((h, len, w, h))?
                .permute((1, 0, 2, 3))?;
            let along_w = r_q
                .permute((2, 0, 1, 3))?
                .contiguous()?
                .reshape((w, len * h, hd))?
                .matmul(&rel_w.transpose(1, 2)?)? // [w, len*h, kw]
                .reshape((w, len, h, w))?
                .permute((1, 2, 0, 3))?;
            let scores = scores
                .reshape((len, h, w, h, w))?
                .broadcast_add(&along_h.unsqueeze(4)?)?
                .broadcast_add(&along_w.unsqueeze(3)?)?
                .reshape((len, n, n))?;
            let probs = softmax_last_dim(&scores, Kernels::Fused)?;
            outputs.push(probs.matmul(&v)?);
        }
        let out = Tensor::cat(&outputs, 0)?
            .reshape((b, heads, h, w, hd))?
            .permute((0, 2, 3, 1, 4))?
            .contiguous()?
            .reshape((b, h, w, c))?;
        self.proj.forward(&out)
    }
}

/// `get_rel_pos` for equal query and key sides: `table[i - j + side - 1]` as
/// `[side, side, head_dim]`. The official interpolation of a table of another
/// length never runs at SAM's sizes; the loader checked the length.
fn relative_table(table: &Tensor, side: usize) -> Result<Tensor> {
    let len = table.dim(0)?;
    if len != 2 * side - 1 {
        candle_core::bail!("relative position table of {len} entries for side {side}");
    }
    let index: Vec<u32> = (0..side)
        .flat_map(|i| (0..side).map(move |j| (i + side - 1 - j) as u32))
        .collect();
    let index = Tensor::from_vec(index, side * side, table.device())?;
    table
        .index_select(&index, 0)?
        .reshape((side, side, table.dim(D::Minus1)?))
}
