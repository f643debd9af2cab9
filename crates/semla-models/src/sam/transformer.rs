//! `TwoWayTransformer` (`mask_decoder.transformer.*`): prompt tokens and image
//! tokens attend to each other in turn.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::common::{Activation, Linear, MlpBlock};
use super::config::MaskDecoderConfig;
use crate::layers::{Kernels, LayerNorm, softmax_last_dim};

type Result<T> = candle_core::Result<T>;

/// The decoder's layer norms use PyTorch's default eps.
const EPS: f64 = 1e-5;

/// The two-way transformer.
#[derive(Clone, Debug)]
pub(crate) struct TwoWayTransformer {
    layers: Vec<TwoWayBlock>,
    final_attn: Attention,
    norm_final: LayerNorm,
}

impl TwoWayTransformer {
    pub(crate) fn load(vb: &VarBuilder, config: &MaskDecoderConfig) -> Result<Self> {
        let dim = config.transformer_dim;
        let layers = (0..config.depth)
            .map(|i| TwoWayBlock::load(&vb.pp(format!("layers.{i}")), config, i == 0))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            final_attn: Attention::load(
                &vb.pp("final_attn_token_to_image"),
                dim,
                config.num_heads,
                2,
            )?,
            norm_final: LayerNorm::load(vb, "norm_final_attn", dim, EPS)?,
        })
    }

    /// `image` and `image_pe` `[B, C, H, W]`, `tokens` `[B, T, C]` -> the
    /// processed tokens `[B, T, C]` and image tokens `[B, H*W, C]`.
    pub(crate) fn forward(
        &self,
        image: &Tensor,
        image_pe: &Tensor,
        tokens: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let flat = |t: &Tensor| t.flatten_from(2)?.transpose(1, 2)?.contiguous();
        let key_pe = flat(image_pe)?;
        let mut keys = flat(image)?;
        let mut queries = tokens.clone();
        for layer in &self.layers {
            (queries, keys) = layer.forward(&queries, &keys, tokens, &key_pe)?;
        }
        let q = (&queries + tokens)?;
        let k = (&keys + &key_pe)?;
        let attended = self.final_attn.forward(&q, &k, &keys)?;
        let queries = self
            .norm_final
            .forward(&(queries + attended)?, Kernels::Fused)?;
        Ok((queries, keys))
    }
}

/// One two-way block: token self-attention, tokens to image, MLP, image to tokens.
#[derive(Clone, Debug)]
struct TwoWayBlock {
    self_attn: Attention,
    norm1: LayerNorm,
    cross_token_to_image: Attention,
    norm2: LayerNorm,
    mlp: MlpBlock,
    norm3: LayerNorm,
    norm4: LayerNorm,
    cross_image_to_token: Attention,
    /// The first block's self-attention has no positions and no residual.
    skip_first_layer_pe: bool,
}

impl TwoWayBlock {
    fn load(
        vb: &VarBuilder,
        config: &MaskDecoderConfig,
        skip_first_layer_pe: bool,
    ) -> Result<Self> {
        let dim = config.transformer_dim;
        let heads = config.num_heads;
        Ok(Self {
            self_attn: Attention::load(&vb.pp("self_attn"), dim, heads, 1)?,
            norm1: LayerNorm::load(vb, "norm1", dim, EPS)?,
            cross_token_to_image: Attention::load(
                &vb.pp("cross_attn_token_to_image"),
                dim,
                heads,
                2,
            )?,
            norm2: LayerNorm::load(vb, "norm2", dim, EPS)?,
            mlp: MlpBlock::load(vb, "mlp", dim, config.mlp_dim, Activation::Relu)?,
            norm3: LayerNorm::load(vb, "norm3", dim, EPS)?,
            norm4: LayerNorm::load(vb, "norm4", dim, EPS)?,
            cross_image_to_token: Attention::load(
                &vb.pp("cross_attn_image_to_token"),
                dim,
                heads,
                2,
            )?,
            skip_first_layer_pe,
        })
    }

    fn forward(
        &self,
        queries: &Tensor,
        keys: &Tensor,
        query_pe: &Tensor,
        key_pe: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let norm = |n: &LayerNorm, x: &Tensor| n.forward(x, Kernels::Fused);
        let queries = if self.skip_first_layer_pe {
            self.self_attn.forward(queries, queries, queries)?
        } else {
            let q = (queries + query_pe)?;
            (queries + self.self_attn.forward(&q, &q, queries)?)?
        };
        let queries = norm(&self.norm1, &queries)?;
        let q = (&queries + query_pe)?;
        let k = (keys + key_pe)?;
        let queries = (&queries + self.cross_token_to_image.forward(&q, &k, keys)?)?;
        let queries = norm(&self.norm2, &queries)?;
        let queries = (&queries + self.mlp.forward(&queries)?)?;
        let queries = norm(&self.norm3, &queries)?;
        let q = (&queries + query_pe)?;
        let k = (keys + key_pe)?;
        let keys = (keys + self.cross_image_to_token.forward(&k, &q, &queries)?)?;
        let keys = norm(&self.norm4, &keys)?;
        Ok((queries, keys))
    }
}

/// Attention with projections to a `dim / downsample` internal width.
#[derive(Clone, Debug)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
}

impl Attention {
    fn load(vb: &VarBuilder, dim: usize, heads: usize, downsample: usize) -> Result<Self> {
        let internal = dim / downsample;
        Ok(Self {
            q_proj: Linear::load(vb, "q_proj", dim, internal)?,
            k_proj: Linear::load(vb, "k_proj", dim, internal)?,
            v_proj: Linear::load(vb, "v_proj", dim, internal)?,
            out_proj: Linear::load(vb, "out_proj", internal, dim)?,
            heads,
        })
    }

    /// `q` `[B, Nq, C]`, `k` and `v` `[B, Nk, C]` -> `[B, Nq, C]`.
    fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let split = |x: Tensor| -> Result<Tensor> {
            let (b, n, c) = x.dims3()?;
            x.reshape((b, n, self.heads, c / self.heads))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q_proj.forward(q)?)?;
        let k = split(self.k_proj.forward(k)?)?;
        let v = split(self.v_proj.forward(v)?)?;
        let head_dim = q.dim(3)?;
        let scores = (q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?;
        let out = softmax_last_dim(&scores, Kernels::Fused)?.matmul(&v)?;
        let (b, h, n, d) = out.dims4()?;
        let out = out.transpose(1, 2)?.contiguous()?.reshape((b, n, h * d))?;
        self.out_proj.forward(&out)
    }
}
