//! CLIP in OpenAI's layout as CAT-Seg runs it (`clip_model.*` in the checkpoint):
//! the visual transformer with split `q/k/v_proj_weight` and a fused
//! `in_proj_bias`, its dense last block, the hooked guidance blocks, and the
//! text transformer.
//!
//! Adapter sites are the modules SemLA's LoRA targets: `mlp.c_fc`, `mlp.c_proj`
//! and the `attn.{q,k,v}_proj` linears of every block of both towers. The q/k/v
//! sites are inert unless [`ClipTowers::apply_qkv_lora`] is set: the official
//! attention reads the base weights directly, so PEFT's LoRA on them never runs.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use semla_adapters::{Adaptation, AdaptedLinear, SiteInfo};

use super::config::CatSegClipConfig;
use crate::layers::{
    Kernels, LayerNorm, bicubic_resize_grid, causal_mask, factored_update, quick_gelu,
    softmax_last_dim,
};

type Result<T> = candle_core::Result<T>;

/// Every LayerNorm of OpenAI CLIP.
const LN_EPS: f64 = 1e-5;

/// `nn.MultiheadAttention` with separate projection weights (`q/k/v_proj_weight`,
/// `in_proj_bias`, `out_proj`), the q/k/v weights stacked once for one matmul.
#[derive(Clone, Debug)]
struct Attention {
    q_proj: AdaptedLinear,
    k_proj: AdaptedLinear,
    v_proj: AdaptedLinear,
    /// Not an adapter site in SemLA's library.
    out_proj_weight: Tensor,
    out_proj_bias: Tensor,
    /// `[3D, D]`
    qkv_weight: Tensor,
    /// `[3D]`
    qkv_bias: Tensor,
    num_heads: usize,
}

impl Attention {
    fn load(vb: &VarBuilder, prefix: &str, width: usize, num_heads: usize) -> Result<Self> {
        let attn = vb.pp(prefix);
        let weights = ["q_proj_weight", "k_proj_weight", "v_proj_weight"]
            .into_iter()
            .map(|name| attn.get((width, width), name))
            .collect::<Result<Vec<_>>>()?;
        let qkv_weight = Tensor::cat(&weights, 0)?;
        let qkv_bias = attn.get(3 * width, "in_proj_bias")?;
        let view = |i: usize, name: &str| -> Result<AdaptedLinear> {
            Ok(AdaptedLinear::new(
                format!("{prefix}.{name}"),
                qkv_weight.narrow(0, i * width, width)?,
                None,
            ))
        };
        Ok(Self {
            q_proj: view(0, "q_proj")?,
            k_proj: view(1, "k_proj")?,
            v_proj: view(2, "v_proj")?,
            out_proj_weight: attn.get((width, width), "out_proj.weight")?,
            out_proj_bias: attn.get(width, "out_proj.bias")?,
            qkv_weight,
            qkv_bias,
            num_heads,
        })
    }

    fn out_proj(&self, x: &Tensor) -> Result<Tensor> {
        crate::layers::linear(x, &self.out_proj_weight, Some(&self.out_proj_bias))
    }

    /// `x W^T + b` for the q, k, v row blocks at once: token rows `x2`
    /// `[N*L, D]` of `n` sequences -> `[N*L, 3D]`, with the LoRA updates of the
    /// q/k/v sites added when `apply_lora`. On the CPU one node (the stacked
    /// product and every update in one buffer, `frozen::adapted_linear`).
    fn qkv(
        &self,
        x2: &Tensor,
        n: usize,
        adaptation: &Adaptation,
        apply_lora: bool,
    ) -> Result<Tensor> {
        let d = x2.dim(1)?;
        let parts: Vec<(usize, &semla_adapters::FactoredSite)> = if apply_lora {
            [&self.q_proj, &self.k_proj, &self.v_proj]
                .into_iter()
                .enumerate()
                .filter_map(|(i, site)| adaptation.get(site.path()).map(|u| (i * d, u)))
                .collect()
        } else {
            Vec::new()
        };
        if parts.is_empty() {
            return semla_adapters::frozen::linear(x2, &self.qkv_weight, Some(&self.qkv_bias));
        }
        let update = semla_adapters::FactoredSite::stack_outputs(&parts, 3 * d)?;
        if let Some(y) = semla_adapters::frozen::adapted_linear(
            x2,
            &self.qkv_weight,
            Some(&self.qkv_bias),
            &update,
        )? {
            return Ok(y);
        }
        let y = semla_adapters::frozen::linear(x2, &self.qkv_weight, Some(&self.qkv_bias))?;
        let delta = factored_update(x2, n, &update)?.reshape(y.shape())?;
        y + delta
    }

    /// Scaled dot-product attention: `x` `[N, L, D]` -> `[N, L, D]`, causal
    /// (each token attends to itself and those before it) in the text tower.
    fn forward(
        &self,
        x: &Tensor,
        causal: bool,
        adaptation: &Adaptation,
        apply_lora: bool,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let (n, l, d) = x.dims3()?;
        let h = self.num_heads;
        let hd = d / h;
        let scale = (hd as f64).powf(-0.5);
        let qkv = self.qkv(&x.reshape((n * l, d))?, n, adaptation, apply_lora)?; // [N*L, 3D]
        if semla_adapters::host::is_cpu_f32(x) {
            // Straight from the packed projection, no permute copy (with its own backward).
            let out = qkv.apply_op1(crate::kernels::PackedAttention {
                heads: h,
                len: l,
                scale: scale as f32,
                causal,
            })?; // [N*L, D]
            return self.out_proj(&out)?.reshape((n, l, d));
        }
        let qkv = qkv
            .reshape((n, l, 3, h, hd))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?; // [3, N, H, L, d]
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let mut scores = (q * scale)?.matmul(&k.t()?)?; // [N, H, L, L]
        if causal {
            scores = scores.broadcast_add(&causal_mask(l, x.device(), x.dtype())?)?;
        }
        let probs = softmax_last_dim(&scores, kernels)?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((n, l, d))?;
        self.out_proj(&out)
    }

    /// The dense path of the last visual block (`forward_dense`): the value
    /// projection of every token through `out_proj`, no attention.
    fn values(&self, x: &Tensor, adaptation: &Adaptation, apply_lora: bool) -> Result<Tensor> {
        let (n, l, d) = x.dims3()?;
        let v = self
            .qkv(&x.reshape((n * l, d))?, n, adaptation, apply_lora)?
            .narrow(1, 2 * d, d)?;
        self.out_proj(&v)?.reshape((n, l, d))
    }
}

/// `mlp.c_fc`, QuickGELU, `mlp.c_proj`.
#[derive(Clone, Debug)]
struct Mlp {
    c_fc: AdaptedLinear,
    c_proj: AdaptedLinear,
}

impl Mlp {
    fn forward(&self, x: &Tensor, adaptation: &Adaptation, kernels: Kernels) -> Result<Tensor> {
        let h = self.c_fc.forward(x, adaptation)?;
        self.c_proj.forward(&quick_gelu(&h, kernels)?, adaptation)
    }
}

/// A pre-norm residual attention block (`resblocks.{i}`).
#[derive(Clone, Debug)]
struct ResidualBlock {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl ResidualBlock {
    fn load(vb: &VarBuilder, prefix: &str, width: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            ln_1: LayerNorm::load(vb, &format!("{prefix}.ln_1"), width, LN_EPS)?,
            attn: Attention::load(vb, &format!("{prefix}.attn"), width, heads)?,
            ln_2: LayerNorm::load(vb, &format!("{prefix}.ln_2"), width, LN_EPS)?,
            mlp: Mlp {
                c_fc: AdaptedLinear::load(
                    vb,
                    &format!("{prefix}.mlp.c_fc"),
                    width,
                    4 * width,
                    true,
                )?,
                c_proj: AdaptedLinear::load(
                    vb,
                    &format!("{prefix}.mlp.c_proj"),
                    4 * width,
                    width,
                    true,
                )?,
            },
        })
    }

    fn forward(&self, x: &Tensor, causal: bool, ctx: &Ctx) -> Result<Tensor> {
        let h = self.ln_1.forward(x, ctx.kernels)?;
        let x = (x + self.attn.forward(
            &h,
            causal,
            ctx.adaptation,
            ctx.apply_qkv_lora,
            ctx.kernels,
        )?)?;
        let h = self.ln_2.forward(&x, ctx.kernels)?;
        x + self.mlp.forward(&h, ctx.adaptation, ctx.kernels)?
    }

    /// `forward_dense`: every token becomes `out_proj(v) + x[CLS]` (the block
    /// input's class token, broadcast), then the MLP residual.
    fn forward_dense(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let h = self.ln_1.forward(x, ctx.kernels)?;
        let cls = x.narrow(1, 0, 1)?;
        let v = self
            .attn
            .values(&h, ctx.adaptation, ctx.apply_qkv_lora)?
            .broadcast_add(&cls)?;
        let h = self.ln_2.forward(&v, ctx.kernels)?;
        v + self.mlp.forward(&h, ctx.adaptation, ctx.kernels)?
    }

    fn sites(&self) -> [&AdaptedLinear; 5] {
        [
            &self.attn.q_proj,
            &self.attn.k_proj,
            &self.attn.v_proj,
            &self.mlp.c_fc,
            &self.mlp.c_proj,
        ]
    }

    fn sites_mut(&mut self) -> [&mut AdaptedLinear; 5] {
        [
            &mut self.attn.q_proj,
            &mut self.attn.k_proj,
            &mut self.attn.v_proj,
            &mut self.mlp.c_fc,
            &mut self.mlp.c_proj,
        ]
    }
}

/// What every block of one forward shares.
struct Ctx<'a> {
    adaptation: &'a Adaptation,
    apply_qkv_lora: bool,
    kernels: Kernels,
}

/// The dense visual output of a batch of CLIP inputs.
#[derive(Clone, Debug)]
pub struct DenseVisual {
    /// `ln_post` and `proj` of every token: `[N, 1 + G*G, E]` (class slot first).
    pub features: Tensor,
    /// The raw outputs of the guidance blocks, `[N, 1 + G*G, D_v]` each (class
    /// token included, batch first).
    pub guidance: [Tensor; 2],
}

/// Both CLIP towers as CAT-Seg holds them.
#[derive(Clone, Debug)]
pub struct ClipTowers {
    config: CatSegClipConfig,
    guidance_layers: [usize; 2],
    /// See the module documentation.
    pub apply_qkv_lora: bool,
    /// `visual.conv1.weight` `[D, 3, p, p]` (no bias).
    conv1: Tensor,
    /// `[D]`
    class_embedding: Tensor,
    /// `[1 + g*g, D]` at the pretrained grid.
    positional_embedding: Tensor,
    ln_pre: LayerNorm,
    visual_blocks: Vec<ResidualBlock>,
    ln_post: LayerNorm,
    /// `[D, E]` (`x @ proj`).
    proj: Tensor,
    /// `[V, D_t]`
    token_embedding: Tensor,
    /// `[context, D_t]`
    text_positional_embedding: Tensor,
    text_blocks: Vec<ResidualBlock>,
    ln_final: LayerNorm,
    /// `[D_t, E]`
    text_projection: Tensor,
}

impl ClipTowers {
    /// Loads the towers from `vb` positioned at `clip_model`.
    pub fn load(
        vb: &VarBuilder,
        prefix: &str,
        config: &CatSegClipConfig,
        guidance_layers: [usize; 2],
    ) -> Result<Self> {
        let c = config;
        let (d, dt) = (c.vision_width, c.text_width);
        let g = c.pretrained_grid;
        let v = vb.pp(format!("{prefix}visual"));
        let visual_blocks = (0..c.vision_layers)
            .map(|i| {
                ResidualBlock::load(
                    vb,
                    &format!("{prefix}visual.transformer.resblocks.{i}"),
                    d,
                    c.vision_heads,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let text_blocks = (0..c.text_layers)
            .map(|i| {
                ResidualBlock::load(
                    vb,
                    &format!("{prefix}transformer.resblocks.{i}"),
                    dt,
                    c.text_heads,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let t = vb.pp(prefix.trim_end_matches('.'));
        Ok(Self {
            config: c.clone(),
            guidance_layers,
            apply_qkv_lora: false,
            conv1: v.get((d, 3, c.patch_size, c.patch_size), "conv1.weight")?,
            class_embedding: v.get(d, "class_embedding")?,
            positional_embedding: v.get((g * g + 1, d), "positional_embedding")?,
            ln_pre: LayerNorm::load(&v, "ln_pre", d, LN_EPS)?,
            visual_blocks,
            ln_post: LayerNorm::load(&v, "ln_post", d, LN_EPS)?,
            proj: v.get((d, c.embed_dim), "proj")?,
            token_embedding: t.get((c.vocab_size, dt), "token_embedding.weight")?,
            text_positional_embedding: t.get((c.context_length, dt), "positional_embedding")?,
            text_blocks,
            ln_final: LayerNorm::load(&t, "ln_final", dt, LN_EPS)?,
            text_projection: t.get((dt, c.embed_dim), "text_projection")?,
        })
    }

    /// The positional embedding for a `grid x grid` input: the pretrained one,
    /// or (dense mode, another token count) its bicubic resize, class row kept.
    fn positions(&self, grid: usize) -> Result<Tensor> {
        let g = self.config.pretrained_grid;
        if grid == g {
            return Ok(self.positional_embedding.clone());
        }
        let cls = self.positional_embedding.narrow(0, 0, 1)?;
        let patches = self.positional_embedding.narrow(0, 1, g * g)?;
        let resized = bicubic_resize_grid(&patches, g, g, grid, grid)?;
        Tensor::cat(&[&cls, &resized], 0)
    }

    /// `encode_image(x, dense=True)` with the guidance hooks: `pixels` `[N, 3, S, S]`
    /// CLIP-normalised at the CLIP resolution.
    pub fn encode_image_dense(
        &self,
        pixels: &Tensor,
        adaptation: &Adaptation,
        kernels: Kernels,
    ) -> Result<DenseVisual> {
        let ctx = Ctx {
            adaptation,
            apply_qkv_lora: self.apply_qkv_lora,
            kernels,
        };
        let (n, _, _, _) = pixels.dims4()?;
        let d = self.config.vision_width;
        let p = self.config.patch_size;
        let patches = pixels.conv2d(&self.conv1, 0, p, 1, 1)?; // [N, D, g, g]
        let grid = patches.dim(2)?;
        let patches = patches.flatten_from(2)?.transpose(1, 2)?; // [N, g*g, D]
        let cls = self
            .class_embedding
            .reshape((1, 1, d))?
            .broadcast_as((n, 1, d))?;
        let x = Tensor::cat(&[&cls.contiguous()?, &patches.contiguous()?], 1)?;
        let x = x.broadcast_add(&self.positions(grid)?.unsqueeze(0)?)?;
        let mut x = self.ln_pre.forward(&x, kernels)?;
        let last = self.visual_blocks.len() - 1;
        let mut guidance: [Option<Tensor>; 2] = [None, None];
        for (i, block) in self.visual_blocks.iter().enumerate() {
            x = if i == last {
                block.forward_dense(&x, &ctx)?
            } else {
                block.forward(&x, false, &ctx)?
            };
            for (slot, _) in guidance
                .iter_mut()
                .zip(self.guidance_layers)
                .filter(|(_, layer)| *layer == i && i != last)
            {
                *slot = Some(x.clone());
            }
        }
        let x = self.ln_post.forward(&x, kernels)?;
        let features = x.broadcast_matmul(&self.proj)?;
        let [Some(g0), Some(g1)] = guidance else {
            candle_core::bail!(
                "guidance layers {:?} are not blocks before the last of {}",
                self.guidance_layers,
                self.visual_blocks.len()
            )
        };
        Ok(DenseVisual {
            features,
            guidance: [g0, g1],
        })
    }

    /// `encode_text` of token ids `[T, context]` (zero-padded, end of text = the
    /// largest id), then L2-normalised: `[T, E]`.
    pub fn encode_text(
        &self,
        ids: &Tensor,
        adaptation: &Adaptation,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let ctx = Ctx {
            adaptation,
            apply_qkv_lora: self.apply_qkv_lora,
            kernels,
        };
        let (t, l) = ids.dims2()?;
        let dt = self.config.text_width;
        let tokens = self
            .token_embedding
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((t, l, dt))?;
        let mut x = tokens.broadcast_add(
            &self
                .text_positional_embedding
                .narrow(0, 0, l)?
                .unsqueeze(0)?,
        )?;
        for block in &self.text_blocks {
            x = block.forward(&x, true, &ctx)?;
        }
        let x = self.ln_final.forward(&x, kernels)?;
        // argmax(ids): the first position of the largest id (the end-of-text token).
        let rows: Vec<Vec<u32>> = ids.to_dtype(DType::U32)?.to_vec2()?;
        let eot: Vec<u32> = rows
            .iter()
            .map(|row| {
                let max = row.iter().copied().max().unwrap_or(0);
                row.iter().position(|&v| v == max).unwrap_or(0) as u32
            })
            .collect();
        let mut pooled = Vec::with_capacity(t);
        for (i, &pos) in eot.iter().enumerate() {
            pooled.push(x.get(i)?.get(pos as usize)?);
        }
        let pooled = Tensor::stack(&pooled, 0)?.matmul(&self.text_projection)?; // [T, E]
        // `x / x.norm(dim=-1, keepdim=True)`: no epsilon in the official code.
        pooled.broadcast_div(&pooled.sqr()?.sum_keepdim(1)?.sqrt()?)
    }

    /// The adapter sites, visual blocks first, then text blocks.
    pub fn sites(&self) -> Vec<&AdaptedLinear> {
        self.visual_blocks
            .iter()
            .chain(&self.text_blocks)
            .flat_map(ResidualBlock::sites)
            .collect()
    }

    /// The adapter sites, mutable (for merging a weight update).
    pub fn sites_mut(&mut self) -> Vec<&mut AdaptedLinear> {
        self.visual_blocks
            .iter_mut()
            .chain(&mut self.text_blocks)
            .flat_map(ResidualBlock::sites_mut)
            .collect()
    }

    /// Every tensor under its checkpoint key (relative to the towers' prefix),
    /// the q/k/v weights split again and the bias fused as in the checkpoint.
    pub fn named_tensors(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut out = vec![
            (format!("{prefix}visual.conv1.weight"), self.conv1.clone()),
            (
                format!("{prefix}visual.class_embedding"),
                self.class_embedding.clone(),
            ),
            (
                format!("{prefix}visual.positional_embedding"),
                self.positional_embedding.clone(),
            ),
            (format!("{prefix}visual.proj"), self.proj.clone()),
            (
                format!("{prefix}token_embedding.weight"),
                self.token_embedding.clone(),
            ),
            (
                format!("{prefix}positional_embedding"),
                self.text_positional_embedding.clone(),
            ),
            (
                format!("{prefix}text_projection"),
                self.text_projection.clone(),
            ),
        ];
        for (name, ln) in [
            ("visual.ln_pre", &self.ln_pre),
            ("visual.ln_post", &self.ln_post),
            ("ln_final", &self.ln_final),
        ] {
            out.extend(ln.named_tensors(&format!("{prefix}{name}")));
        }
        for (tower, blocks) in [
            ("visual.transformer", &self.visual_blocks),
            ("transformer", &self.text_blocks),
        ] {
            for (i, block) in blocks.iter().enumerate() {
                let p = format!("{prefix}{tower}.resblocks.{i}");
                out.extend(block.ln_1.named_tensors(&format!("{p}.ln_1")));
                out.extend(block.ln_2.named_tensors(&format!("{p}.ln_2")));
                let a = &block.attn;
                out.push((format!("{p}.attn.q_proj_weight"), a.q_proj.weight().clone()));
                out.push((format!("{p}.attn.k_proj_weight"), a.k_proj.weight().clone()));
                out.push((format!("{p}.attn.v_proj_weight"), a.v_proj.weight().clone()));
                out.push((format!("{p}.attn.in_proj_bias"), a.qkv_bias.clone()));
                out.push((
                    format!("{p}.attn.out_proj.weight"),
                    a.out_proj_weight.clone(),
                ));
                out.push((format!("{p}.attn.out_proj.bias"), a.out_proj_bias.clone()));
                for (name, site) in [("c_fc", &block.mlp.c_fc), ("c_proj", &block.mlp.c_proj)] {
                    out.push((format!("{p}.mlp.{name}.weight"), site.weight().clone()));
                    if let Some(b) = site.bias() {
                        out.push((format!("{p}.mlp.{name}.bias"), b.clone()));
                    }
                }
            }
        }
        out
    }

    /// The patch embedding `visual.conv1.weight` `[D, 3, p, p]`.
    pub fn patch_weight(&self) -> &Tensor {
        &self.conv1
    }

    /// Rebuilds the stacked q/k/v weight of every block from its sites (after a
    /// weight update was merged into one of them).
    pub fn restack_qkv(&mut self) -> Result<()> {
        for block in self.visual_blocks.iter_mut().chain(&mut self.text_blocks) {
            let a = &mut block.attn;
            a.qkv_weight = Tensor::cat(
                &[a.q_proj.weight(), a.k_proj.weight(), a.v_proj.weight()],
                0,
            )?;
        }
        Ok(())
    }

    /// Sites paths of every site in `sites()`: used to check adapters.
    pub fn site_infos(&self) -> Vec<SiteInfo> {
        self.sites().into_iter().map(AdaptedLinear::info).collect()
    }
}
