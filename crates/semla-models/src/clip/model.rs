//! CLIP's vision and text transformers in the Hugging Face `CLIPModel`
//! layout, with an adapter site on every Linear (and on the patch embedding).
//!
//! Module paths equal checkpoint key paths: `vision_model.embeddings.patch_embedding`,
//! `vision_model.encoder.layers.{i}.self_attn.{q,k,v,out}_proj`,
//! `vision_model.encoder.layers.{i}.mlp.fc{1,2}`, the same under `text_model.`,
//! and `visual_projection` / `text_projection`.
//!
//! Two kernel sets ([`Kernels`]): fused layer norm, softmax and activation for
//! inference (no backward pass: candle's fused ops silently cut gradients),
//! and ops that backpropagate, for adapter training. On the CPU in f32 both
//! run the attention as two nodes (the packed q/k/v projection with every
//! LoRA update, then `kernels::PackedAttention`), each with its own backward.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use semla_adapters::{Adaptation, AdaptedConv2d, AdaptedLinear, SiteInfo};

pub use crate::layers::Kernels;
use crate::layers::{
    LayerNorm, bicubic_resize_grid, causal_mask, factored_update, quick_gelu, softmax_last_dim,
};

use super::ClipError;
use super::config::{Activation, ClipConfig, ClipTextConfig, ClipVisionConfig};

type Result<T> = candle_core::Result<T>;

fn activation(x: &Tensor, act: Activation, kernels: Kernels) -> Result<Tensor> {
    match act {
        Activation::QuickGelu => quick_gelu(x, kernels),
        Activation::Gelu => x.gelu_erf(),
        Activation::GeluTanh => x.gelu(),
    }
}

/// Multi-head self-attention: `q_proj`, `k_proj`, `v_proj`, `out_proj`.
///
/// The q, k and v weights live in one `[3D, D]` tensor (and one `[3D]` bias);
/// the three sites hold views of its row blocks, so no weight is stored
/// twice. One matmul computes all three base projections; the factored
/// update of each adapted site among them is added to its block.
#[derive(Clone, Debug)]
struct Attention {
    q_proj: AdaptedLinear,
    k_proj: AdaptedLinear,
    v_proj: AdaptedLinear,
    out_proj: AdaptedLinear,
    /// `[3D, D]`: q, k, v weights stacked.
    qkv_weight: Tensor,
    /// `[3D]`
    qkv_bias: Tensor,
    num_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(vb: &VarBuilder, prefix: &str, hidden: usize, num_heads: usize) -> Result<Self> {
        let (mut weights, mut biases) = (Vec::with_capacity(3), Vec::with_capacity(3));
        for name in ["q_proj", "k_proj", "v_proj"] {
            let site = vb.pp(format!("{prefix}.{name}"));
            weights.push(site.get((hidden, hidden), "weight")?);
            biases.push(site.get(hidden, "bias")?);
        }
        let qkv_weight = Tensor::cat(&weights, 0)?;
        let qkv_bias = Tensor::cat(&biases, 0)?;
        drop((weights, biases));
        let view = |i: usize, name: &str| -> Result<AdaptedLinear> {
            Ok(AdaptedLinear::new(
                format!("{prefix}.{name}"),
                qkv_weight.narrow(0, i * hidden, hidden)?,
                Some(qkv_bias.narrow(0, i * hidden, hidden)?),
            ))
        };
        Ok(Self {
            q_proj: view(0, "q_proj")?,
            k_proj: view(1, "k_proj")?,
            v_proj: view(2, "v_proj")?,
            out_proj: AdaptedLinear::load(vb, &format!("{prefix}.out_proj"), hidden, hidden, true)?,
            qkv_weight,
            qkv_bias,
            num_heads,
            head_dim: hidden / num_heads,
        })
    }

    /// The packed projection `[N*L, 3D]` (per token q, k, v) with every adapted
    /// site's update, as one node when the CPU kernel takes it: `None` otherwise
    /// (then [`Self::project_qkv`] composes candle's ops).
    fn packed_qkv(&self, x2: &Tensor, adaptation: &Adaptation) -> Result<Option<Tensor>> {
        let hidden = self.num_heads * self.head_dim;
        let parts: Vec<(usize, &semla_adapters::FactoredSite)> =
            [&self.q_proj, &self.k_proj, &self.v_proj]
                .into_iter()
                .enumerate()
                .filter_map(|(i, site)| {
                    adaptation
                        .get(site.path())
                        .map(|update| (i * hidden, update))
                })
                .collect();
        if parts.is_empty() {
            return semla_adapters::frozen::linear(x2, &self.qkv_weight, Some(&self.qkv_bias))
                .map(Some);
        }
        let update = semla_adapters::FactoredSite::stack_outputs(&parts, 3 * hidden)?;
        semla_adapters::frozen::adapted_linear(x2, &self.qkv_weight, Some(&self.qkv_bias), &update)
    }

    /// q, k, v as `[N, H, L, d]` each (q not yet scaled).
    fn project_qkv(&self, x: &Tensor, adaptation: &Adaptation) -> Result<(Tensor, Tensor, Tensor)> {
        let (n, l, d) = x.dims3()?;
        let (h, hd) = (self.num_heads, self.head_dim);
        let x2 = x.reshape((n * l, d))?;
        // The frozen path: in adapter training only `x` gets a gradient, not the weights.
        let y = semla_adapters::frozen::linear(&x2, &self.qkv_weight, Some(&self.qkv_bias))?; // [N*L, 3D]
        // [N, L, 3, H, d] -> [3, N, H, L, d] in one copy.
        let y = y
            .reshape((n, l, 3, h, hd))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let mut out = Vec::with_capacity(3);
        for (i, site) in [&self.q_proj, &self.k_proj, &self.v_proj]
            .into_iter()
            .enumerate()
        {
            let base = y.get(i)?; // [N, H, L, d]
            out.push(match adaptation.get(site.path()) {
                None => base,
                Some(update) => {
                    let delta = factored_update(&x2, n, update)?; // [N, L, D]
                    (base + delta.reshape((n, l, h, hd))?.transpose(1, 2)?)?
                }
            });
        }
        let v = out.pop();
        let k = out.pop();
        let q = out.pop();
        match (q, k, v) {
            (Some(q), Some(k), Some(v)) => Ok((q, k, v)),
            _ => candle_core::bail!("attention: q, k, v projections missing"),
        }
    }

    /// `x`: `[N*L, D]`, the tokens of sequences of `len`; `causal`: each token
    /// attends to itself and the tokens before it only (the text tower).
    /// Returns `[N*L, D]`.
    fn forward(
        &self,
        x: &Tensor,
        len: usize,
        causal: bool,
        adaptation: &Adaptation,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let (rows, d) = x.dims2()?;
        let n = rows / len.max(1);
        let scale = (self.head_dim as f64).powf(-0.5);
        // Packed: one node for the projection, one for the attention (forward
        // and backward), no reshape, permute or split.
        if semla_adapters::host::is_cpu_f32(x)
            && let Some(qkv) = self.packed_qkv(x, adaptation)?
        {
            let out = qkv.apply_op1(crate::kernels::PackedAttention {
                heads: self.num_heads,
                len,
                scale: scale as f32,
                causal,
            })?; // [N*L, D]
            return self.out_proj.forward(&out, adaptation);
        }
        let (q, k, v) = self.project_qkv(&x.reshape((n, len, d))?, adaptation)?;
        let q = (q * scale)?;
        let mut scores = q.matmul(&k.t()?)?; // [N, H, L, L]
        if causal {
            scores = scores.broadcast_add(&causal_mask(len, x.device(), x.dtype())?)?;
        }
        let probs = softmax_last_dim(&scores, kernels)?;
        let out = probs.matmul(&v)?; // [N, H, L, d]
        let out = out.transpose(1, 2)?.reshape((rows, d))?;
        self.out_proj.forward(&out, adaptation)
    }

    fn sites(&self) -> [&AdaptedLinear; 4] {
        [&self.q_proj, &self.k_proj, &self.v_proj, &self.out_proj]
    }
}

/// The MLP: `fc1`, activation, `fc2`.
#[derive(Clone, Debug)]
struct Mlp {
    fc1: AdaptedLinear,
    fc2: AdaptedLinear,
    act: Activation,
}

impl Mlp {
    fn forward(&self, x: &Tensor, adaptation: &Adaptation, kernels: Kernels) -> Result<Tensor> {
        let h = self.fc1.forward(x, adaptation)?;
        let h = activation(&h, self.act, kernels)?;
        self.fc2.forward(&h, adaptation)
    }
}

/// One pre-norm transformer block.
#[derive(Clone, Debug)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    mlp: Mlp,
}

impl EncoderLayer {
    /// `x`: `[N*L, D]`, sequences of `len` tokens -> `[N*L, D]`. The layers
    /// work on 2-D token rows so that no reshape enters the graph (each is a
    /// node and a pass over memory in the backward).
    fn forward(
        &self,
        x: &Tensor,
        len: usize,
        causal: bool,
        adaptation: &Adaptation,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let h = self.layer_norm1.forward(x, kernels)?;
        let x = (x + self
            .self_attn
            .forward(&h, len, causal, adaptation, kernels)?)?;
        let h = self.layer_norm2.forward(&x, kernels)?;
        x + self.mlp.forward(&h, adaptation, kernels)?
    }
}

/// The stack of encoder layers.
#[derive(Clone, Debug)]
struct Encoder {
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    #[allow(clippy::too_many_arguments)]
    fn load(
        vb: &VarBuilder,
        prefix: &str,
        num_layers: usize,
        hidden: usize,
        intermediate: usize,
        num_heads: usize,
        act: Activation,
        eps: f64,
    ) -> Result<Self> {
        let mut layers = Vec::with_capacity(num_layers);
        for i in 0..num_layers {
            let p = format!("{prefix}.layers.{i}");
            layers.push(EncoderLayer {
                layer_norm1: LayerNorm::load(vb, &format!("{p}.layer_norm1"), hidden, eps)?,
                self_attn: Attention::load(vb, &format!("{p}.self_attn"), hidden, num_heads)?,
                layer_norm2: LayerNorm::load(vb, &format!("{p}.layer_norm2"), hidden, eps)?,
                mlp: Mlp {
                    fc1: AdaptedLinear::load(
                        vb,
                        &format!("{p}.mlp.fc1"),
                        hidden,
                        intermediate,
                        true,
                    )?,
                    fc2: AdaptedLinear::load(
                        vb,
                        &format!("{p}.mlp.fc2"),
                        intermediate,
                        hidden,
                        true,
                    )?,
                    act,
                },
            });
        }
        Ok(Self { layers })
    }

    fn sites(&self) -> Vec<&AdaptedLinear> {
        let mut out = Vec::new();
        for layer in &self.layers {
            out.extend(layer.self_attn.sites());
            out.push(&layer.mlp.fc1);
            out.push(&layer.mlp.fc2);
        }
        out
    }
}

/// The vision transformer (`vision_model.*`).
#[derive(Clone, Debug)]
struct VisionTransformer {
    cfg: ClipVisionConfig,
    /// `[D]`
    class_embedding: Tensor,
    patch_embedding: AdaptedConv2d,
    /// `[1 + G*G, D]`
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    encoder: Encoder,
    post_layernorm: LayerNorm,
}

/// The output of the vision tower for a batch.
#[derive(Clone, Debug)]
pub struct VisionOutput {
    /// Last hidden state `[N, 1 + h*w, D_v]`: the class token, then the
    /// patch tokens in row-major grid order (not layer-normed).
    pub last_hidden_state: Tensor,
    /// Patch grid height `h` (`H / patch_size`).
    pub grid_height: usize,
    /// Patch grid width `w` (`W / patch_size`).
    pub grid_width: usize,
    /// Outputs `[N, 1 + h*w, D_v]` of the encoder layers asked for in
    /// [`ClipModel::vision_forward_with_layers`], in the order asked (empty otherwise).
    /// Layer `i` (0-based) is transformers' `hidden_states[i + 1]`.
    pub layer_outputs: Vec<Tensor>,
}

impl VisionOutput {
    /// The patch tokens of the last layer, `[N, h*w, D_v]`.
    pub fn patch_tokens(&self) -> Result<Tensor> {
        let l = self.last_hidden_state.dim(1)?;
        self.last_hidden_state.narrow(1, 1, l - 1)?.contiguous()
    }
}

/// Which dense (per-patch) tokens [`ClipModel::dense_tokens`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenseTokens {
    /// Last hidden state of every patch: `[N, h*w, D_v]`.
    LastHidden,
    /// `post_layernorm` applied to every patch token: `[N, h*w, D_v]`.
    PostLayerNorm,
    /// `visual_projection(post_layernorm(.))` of every patch token, in the
    /// joint embedding space like [`ClipModel::get_image_features`]: `[N, h*w, E]`.
    Projected,
}

impl VisionTransformer {
    fn load(vb: &VarBuilder, cfg: &ClipVisionConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let p = cfg.patch_size;
        let grid = cfg.grid_size();
        let emb = vb.pp("vision_model.embeddings");
        let patch_weight = emb.get((d, cfg.num_channels, p, p), "patch_embedding.weight")?;
        let patch_embedding = AdaptedConv2d::new(
            "vision_model.embeddings.patch_embedding",
            patch_weight,
            None,
            p,
            0,
            1,
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            class_embedding: emb.get(d, "class_embedding")?,
            patch_embedding,
            position_embedding: emb.get((grid * grid + 1, d), "position_embedding.weight")?,
            pre_layrnorm: LayerNorm::load(vb, "vision_model.pre_layrnorm", d, cfg.layer_norm_eps)?,
            encoder: Encoder::load(
                vb,
                "vision_model.encoder",
                cfg.num_hidden_layers,
                d,
                cfg.intermediate_size,
                cfg.num_attention_heads,
                cfg.hidden_act,
                cfg.layer_norm_eps,
            )?,
            post_layernorm: LayerNorm::load(
                vb,
                "vision_model.post_layernorm",
                d,
                cfg.layer_norm_eps,
            )?,
        })
    }

    /// Position embeddings for a `gh x gw` grid: `[1 + gh*gw, D]`.
    fn position_embeddings(&self, gh: usize, gw: usize) -> Result<Tensor> {
        let g = self.cfg.grid_size();
        // Like transformers: no interpolation at the native square grid.
        if gh == g && gw == g {
            return Ok(self.position_embedding.clone());
        }
        let d = self.cfg.hidden_size;
        let cls = self.position_embedding.narrow(0, 0, 1)?;
        let grid = self.position_embedding.narrow(0, 1, g * g)?; // [G*G, D]
        let patches = bicubic_resize_grid(&grid, g, g, gh, gw)?; // [gh*gw, D]
        let out = Tensor::cat(&[&cls, &patches], 0)?;
        debug_assert_eq!(out.dims(), &[1 + gh * gw, d]);
        Ok(out)
    }

    fn forward(
        &self,
        pixels: &Tensor,
        adaptation: &Adaptation,
        kernels: Kernels,
        keep_layers: &[usize],
    ) -> Result<VisionOutput> {
        let (n, _, _, _) = pixels.dims4()?;
        let d = self.cfg.hidden_size;
        let patches = self.patch_embedding.forward(pixels, adaptation)?; // [N, D, gh, gw]
        let (_, _, gh, gw) = patches.dims4()?;
        let patches = patches.flatten_from(2)?.transpose(1, 2)?; // [N, gh*gw, D]
        let cls = self
            .class_embedding
            .reshape((1, 1, d))?
            .broadcast_as((n, 1, d))?
            .to_dtype(patches.dtype())?;
        let x = Tensor::cat(&[&cls, &patches], 1)?;
        let x = x.broadcast_add(&self.position_embeddings(gh, gw)?.unsqueeze(0)?)?;
        let x = self.pre_layrnorm.forward(&x, kernels)?;
        let len = x.dim(1)?;
        let mut x = x.reshape((n * len, d))?;
        let mut kept: Vec<Option<Tensor>> = vec![None; keep_layers.len()];
        for (i, layer) in self.encoder.layers.iter().enumerate() {
            x = layer.forward(&x, len, false, adaptation, kernels)?;
            for (slot, _) in kept.iter_mut().zip(keep_layers).filter(|(_, k)| **k == i) {
                *slot = Some(x.reshape((n, len, d))?);
            }
        }
        let x = x.reshape((n, len, d))?;
        let layer_outputs = kept
            .into_iter()
            .zip(keep_layers)
            .map(|(t, i)| {
                t.ok_or_else(|| {
                    candle_core::Error::Msg(format!("CLIP vision tower has no layer {i}"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(VisionOutput {
            last_hidden_state: x,
            grid_height: gh,
            grid_width: gw,
            layer_outputs,
        })
    }
}

/// The text transformer (`text_model.*`).
#[derive(Clone, Debug)]
struct TextTransformer {
    cfg: ClipTextConfig,
    /// `[V, D]`
    token_embedding: Tensor,
    /// `[max_positions, D]`
    position_embedding: Tensor,
    encoder: Encoder,
    final_layer_norm: LayerNorm,
}

impl TextTransformer {
    fn load(vb: &VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let emb = vb.pp("text_model.embeddings");
        Ok(Self {
            cfg: cfg.clone(),
            token_embedding: emb.get((cfg.vocab_size, d), "token_embedding.weight")?,
            position_embedding: emb.get(
                (cfg.max_position_embeddings, d),
                "position_embedding.weight",
            )?,
            encoder: Encoder::load(
                vb,
                "text_model.encoder",
                cfg.num_hidden_layers,
                d,
                cfg.intermediate_size,
                cfg.num_attention_heads,
                cfg.hidden_act,
                cfg.layer_norm_eps,
            )?,
            final_layer_norm: LayerNorm::load(
                vb,
                "text_model.final_layer_norm",
                d,
                cfg.layer_norm_eps,
            )?,
        })
    }

    /// `ids`: `[N, L]` -> final-layer-normed hidden states `[N, L, D]`.
    /// Attention is causal, so tokens after the end of text (padding) never
    /// influence the pooled token.
    fn forward(&self, ids: &Tensor, adaptation: &Adaptation, kernels: Kernels) -> Result<Tensor> {
        let (n, l) = ids.dims2()?;
        let d = self.cfg.hidden_size;
        let tokens = self
            .token_embedding
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((n, l, d))?;
        let positions = self.position_embedding.narrow(0, 0, l)?;
        let x = tokens.broadcast_add(&positions.unsqueeze(0)?)?;
        let mut x = x.reshape((n * l, d))?;
        for layer in &self.encoder.layers {
            x = layer.forward(&x, l, true, adaptation, kernels)?;
        }
        self.final_layer_norm
            .forward(&x.reshape((n, l, d))?, kernels)
    }

    /// The pooled position of each sequence, as transformers 4.46: with
    /// `eos_token_id == 2` (legacy configs) the position of the largest id,
    /// otherwise the first position holding `eos_token_id` (0 if none).
    fn pool_positions(&self, ids: &[Vec<u32>]) -> Vec<u32> {
        let eos = self.cfg.eos_token_id.unwrap_or(2);
        ids.iter()
            .map(|row| {
                if eos == 2 {
                    // torch.argmax returns the first maximum.
                    let max = row.iter().copied().max().unwrap_or(0);
                    row.iter().position(|&v| v == max).unwrap_or(0) as u32
                } else {
                    row.iter().position(|&v| v == eos).unwrap_or(0) as u32
                }
            })
            .collect()
    }
}

/// CLIP: vision tower, optional text tower and projections.
#[derive(Clone, Debug)]
pub struct ClipModel {
    config: ClipConfig,
    vision: VisionTransformer,
    text: Option<TextTransformer>,
    /// `[E, D_v]`, bias-free.
    visual_projection: Option<AdaptedLinear>,
    /// `[E, D_t]`, bias-free.
    text_projection: Option<AdaptedLinear>,
    /// Scalar `logit_scale` (log of the temperature inverse).
    logit_scale: f64,
    kernels: Kernels,
}

impl ClipModel {
    /// Builds the model from a var builder positioned at the checkpoint root.
    /// The text tower and the projections are loaded when the checkpoint has
    /// them (a `CLIPVisionModel` checkpoint has neither).
    pub fn new(vb: &VarBuilder, config: &ClipConfig) -> Result<Self> {
        let vision = VisionTransformer::load(vb, &config.vision_config)?;
        let text = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            Some(TextTransformer::load(vb, &config.text_config)?)
        } else {
            None
        };
        let e = config.projection_dim;
        let visual_projection = if vb.contains_tensor("visual_projection.weight") {
            Some(AdaptedLinear::load(
                vb,
                "visual_projection",
                config.vision_config.hidden_size,
                e,
                false,
            )?)
        } else {
            None
        };
        let text_projection = if text.is_some() && vb.contains_tensor("text_projection.weight") {
            Some(AdaptedLinear::load(
                vb,
                "text_projection",
                config.text_config.hidden_size,
                e,
                false,
            )?)
        } else {
            None
        };
        let logit_scale = if vb.contains_tensor("logit_scale") {
            vb.get((), "logit_scale")?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?
        } else {
            config.logit_scale_init_value
        };
        Ok(Self {
            config: config.clone(),
            vision,
            text,
            visual_projection,
            text_projection,
            logit_scale,
            kernels: Kernels::Fused,
        })
    }

    /// Loads `config.json` and `model.safetensors` (or the shards listed in
    /// `model.safetensors.index.json`) from a Hugging Face model folder.
    /// Weights of any float dtype are converted to f32.
    pub fn from_dir(dir: &Path, device: &Device) -> std::result::Result<Self, ClipError> {
        let config = ClipConfig::from_file(&dir.join("config.json"))?;
        let files = safetensors_files(dir)?;
        let mut tensors = HashMap::new();
        for file in &files {
            let loaded = candle_core::safetensors::load(file, device).map_err(|cause| {
                ClipError::Weights {
                    path: file.clone(),
                    cause,
                }
            })?;
            tensors.extend(loaded);
        }
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Self::new(&vb, &config).map_err(|cause| ClipError::Weights {
            path: dir.to_path_buf(),
            cause,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// The kernels in use.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// Selects fused (inference) or composed (training) kernels.
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
    }

    /// `logit_scale` of the checkpoint (multiply by its exponential to get logits).
    pub fn logit_scale(&self) -> f64 {
        self.logit_scale
    }

    /// Whether the checkpoint has a text tower.
    pub fn has_text_model(&self) -> bool {
        self.text.is_some()
    }

    /// Every adapter site, vision tower first, in checkpoint order.
    pub fn sites(&self) -> Vec<SiteInfo> {
        let mut out = vec![self.vision.patch_embedding.info()];
        out.extend(
            self.vision
                .encoder
                .sites()
                .into_iter()
                .map(AdaptedLinear::info),
        );
        if let Some(p) = &self.visual_projection {
            out.push(p.info());
        }
        if let Some(text) = &self.text {
            out.extend(text.encoder.sites().into_iter().map(AdaptedLinear::info));
        }
        if let Some(p) = &self.text_projection {
            out.push(p.info());
        }
        out
    }

    fn check_pixels(&self, pixels: &Tensor) -> Result<()> {
        let cfg = &self.config.vision_config;
        let dims = pixels.dims();
        if dims.len() != 4
            || dims[1] != cfg.num_channels
            || dims[2] < cfg.patch_size
            || dims[3] < cfg.patch_size
        {
            candle_core::bail!(
                "CLIP vision input must be [N, {}, H, W] with H, W >= {}, got {:?}",
                cfg.num_channels,
                cfg.patch_size,
                dims
            )
        }
        Ok(())
    }

    /// Runs the vision tower. `pixels`: `[N, C, H, W]` preprocessed images.
    /// Any `H, W` of at least one patch works: at other than the native grid
    /// the position embeddings are interpolated bicubically (transformers'
    /// `interpolate_pos_encoding=True`); pixels beyond a whole patch are ignored.
    pub fn vision_forward(&self, pixels: &Tensor, adaptation: &Adaptation) -> Result<VisionOutput> {
        self.check_pixels(pixels)?;
        self.vision.forward(pixels, adaptation, self.kernels, &[])
    }

    /// [`Self::vision_forward`] that also keeps the outputs of the encoder
    /// layers `layers` (0-based; e.g. the intermediate layers a segmentation
    /// head reads) in [`VisionOutput::layer_outputs`].
    pub fn vision_forward_with_layers(
        &self,
        pixels: &Tensor,
        adaptation: &Adaptation,
        layers: &[usize],
    ) -> Result<VisionOutput> {
        self.check_pixels(pixels)?;
        let available = self.config.vision_config.num_hidden_layers;
        if let Some(bad) = layers.iter().find(|&&i| i >= available) {
            candle_core::bail!(
                "CLIP vision tower has {available} layers, layer {bad} was asked for"
            )
        }
        self.vision
            .forward(pixels, adaptation, self.kernels, layers)
    }

    /// `post_layernorm` of the class token: `[N, D_v]` (transformers' `pooler_output`).
    pub fn pooled_output(&self, out: &VisionOutput) -> Result<Tensor> {
        let cls = out
            .last_hidden_state
            .narrow(1, 0, 1)?
            .squeeze(1)?
            .contiguous()?;
        self.vision.post_layernorm.forward(&cls, self.kernels)
    }

    fn visual_projection(&self) -> Result<&AdaptedLinear> {
        self.visual_projection.as_ref().ok_or_else(|| {
            candle_core::Error::Msg("this CLIP checkpoint has no visual_projection".into())
        })
    }

    /// `CLIPModel.get_image_features`: `visual_projection(post_layernorm(CLS))`,
    /// `[N, E]`, not normalised. `pixels`: `[N, C, H, W]`.
    pub fn get_image_features(&self, pixels: &Tensor, adaptation: &Adaptation) -> Result<Tensor> {
        let out = self.vision_forward(pixels, adaptation)?;
        self.image_features_from(&out, adaptation)
    }

    /// Image features from an already computed vision output: `[N, E]`.
    pub fn image_features_from(
        &self,
        out: &VisionOutput,
        adaptation: &Adaptation,
    ) -> Result<Tensor> {
        let pooled = self.pooled_output(out)?;
        self.visual_projection()?.forward(&pooled, adaptation)
    }

    /// Dense patch tokens from a vision output (see [`DenseTokens`] for the shapes).
    pub fn dense_tokens(
        &self,
        out: &VisionOutput,
        kind: DenseTokens,
        adaptation: &Adaptation,
    ) -> Result<Tensor> {
        let patches = out.patch_tokens()?;
        match kind {
            DenseTokens::LastHidden => Ok(patches),
            DenseTokens::PostLayerNorm => {
                self.vision.post_layernorm.forward(&patches, self.kernels)
            }
            DenseTokens::Projected => {
                let normed = self.vision.post_layernorm.forward(&patches, self.kernels)?;
                self.visual_projection()?.forward(&normed, adaptation)
            }
        }
    }

    /// Dense tokens as a feature map `[N, C, h, w]` (for segmentation heads).
    pub fn dense_feature_map(
        &self,
        out: &VisionOutput,
        kind: DenseTokens,
        adaptation: &Adaptation,
    ) -> Result<Tensor> {
        let tokens = self.dense_tokens(out, kind, adaptation)?; // [N, h*w, C]
        let (n, _, c) = tokens.dims3()?;
        tokens
            .transpose(1, 2)?
            .reshape((n, c, out.grid_height, out.grid_width))
    }

    fn text_tower(&self) -> Result<&TextTransformer> {
        self.text
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("this CLIP checkpoint has no text model".into()))
    }

    fn check_ids(&self, ids: &Tensor) -> Result<Vec<Vec<u32>>> {
        let text = self.text_tower()?;
        let (_, l) = ids.dims2()?;
        if l == 0 || l > text.cfg.max_position_embeddings {
            candle_core::bail!(
                "CLIP text input has {l} tokens, the model takes 1 to {}",
                text.cfg.max_position_embeddings
            )
        }
        let rows = ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        if let Some(bad) = rows
            .iter()
            .flatten()
            .find(|&&v| v as usize >= text.cfg.vocab_size)
        {
            candle_core::bail!(
                "token id {bad} is outside the vocabulary of {} tokens",
                text.cfg.vocab_size
            )
        }
        Ok(rows)
    }

    /// Final-layer-normed text hidden states `[N, L, D_t]` for token ids `[N, L]` (u32).
    pub fn text_forward(&self, ids: &Tensor, adaptation: &Adaptation) -> Result<Tensor> {
        self.check_ids(ids)?;
        self.text_tower()?
            .forward(&ids.to_dtype(DType::U32)?, adaptation, self.kernels)
    }

    /// `CLIPModel.get_text_features`: `text_projection` of the hidden state at
    /// the end-of-text token, `[N, E]`, not normalised. `ids`: `[N, L]` (u32),
    /// e.g. from [`super::ClipTokenizer::encode_context`].
    pub fn get_text_features(&self, ids: &Tensor, adaptation: &Adaptation) -> Result<Tensor> {
        let rows = self.check_ids(ids)?;
        let text = self.text_tower()?;
        let hidden = text.forward(&ids.to_dtype(DType::U32)?, adaptation, self.kernels)?; // [N, L, D]
        let (n, l, d) = hidden.dims3()?;
        let flat: Vec<u32> = text
            .pool_positions(&rows)
            .iter()
            .enumerate()
            .map(|(i, &p)| i as u32 * l as u32 + p)
            .collect();
        let index = Tensor::from_vec(flat, n, hidden.device())?;
        let pooled = hidden.reshape((n * l, d))?.index_select(&index, 0)?; // [N, D]
        let projection = self.text_projection.as_ref().ok_or_else(|| {
            candle_core::Error::Msg("this CLIP checkpoint has no text_projection".into())
        })?;
        projection.forward(&pooled, adaptation)
    }
}

impl Module for ClipModel {
    /// Image features without adaptation: `[N, C, H, W]` -> `[N, E]`.
    fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        self.get_image_features(pixels, &Adaptation::none())
    }
}

/// The safetensors files of a model folder: `model.safetensors`, or the
/// shards named by `model.safetensors.index.json`.
fn safetensors_files(dir: &Path) -> std::result::Result<Vec<PathBuf>, ClipError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(ClipError::Config {
            path: dir.to_path_buf(),
            message: "no model.safetensors or model.safetensors.index.json in this folder".into(),
        });
    }
    let text = std::fs::read_to_string(&index).map_err(|cause| ClipError::Io {
        path: index.clone(),
        cause,
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|cause| ClipError::Json {
            path: index.clone(),
            cause,
        })?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ClipError::Config {
            path: index.clone(),
            message: "no weight_map object".into(),
        })?;
    let mut files: Vec<PathBuf> = Vec::new();
    for shard in map.values().filter_map(|v| v.as_str()) {
        let path = dir.join(shard);
        if !files.contains(&path) {
            files.push(path);
        }
    }
    Ok(files)
}

/// Random vision-tower weights (normal, std 0.02; layer-norm scales std 1) under
/// the checkpoint's names and shapes, for benchmarks of a model size without its
/// weights: build with `VarBuilder::from_tensors` and [`ClipModel::new`].
pub fn random_vision_weights(cfg: &ClipConfig, device: &Device) -> Result<HashMap<String, Tensor>> {
    let v = &cfg.vision_config;
    let d = v.hidden_size;
    let g = v.grid_size();
    let mut t = HashMap::new();
    let mut put = |name: String, shape: &[usize], std: f64| -> Result<()> {
        t.insert(name, Tensor::randn(0f32, std as f32, shape, device)?);
        Ok(())
    };
    put("vision_model.embeddings.class_embedding".into(), &[d], 0.02)?;
    put(
        "vision_model.embeddings.patch_embedding.weight".into(),
        &[d, 3, v.patch_size, v.patch_size],
        0.02,
    )?;
    put(
        "vision_model.embeddings.position_embedding.weight".into(),
        &[g * g + 1, d],
        0.02,
    )?;
    for ln in ["vision_model.pre_layrnorm", "vision_model.post_layernorm"] {
        put(format!("{ln}.weight"), &[d], 1.0)?;
        put(format!("{ln}.bias"), &[d], 0.02)?;
    }
    for i in 0..v.num_hidden_layers {
        let p = format!("vision_model.encoder.layers.{i}");
        for ln in ["layer_norm1", "layer_norm2"] {
            put(format!("{p}.{ln}.weight"), &[d], 1.0)?;
            put(format!("{p}.{ln}.bias"), &[d], 0.02)?;
        }
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            put(format!("{p}.self_attn.{proj}.weight"), &[d, d], 0.02)?;
            put(format!("{p}.self_attn.{proj}.bias"), &[d], 0.02)?;
        }
        put(
            format!("{p}.mlp.fc1.weight"),
            &[v.intermediate_size, d],
            0.02,
        )?;
        put(format!("{p}.mlp.fc1.bias"), &[v.intermediate_size], 0.02)?;
        put(
            format!("{p}.mlp.fc2.weight"),
            &[d, v.intermediate_size],
            0.02,
        )?;
        put(format!("{p}.mlp.fc2.bias"), &[d], 0.02)?;
    }
    put(
        "visual_projection.weight".into(),
        &[cfg.projection_dim, d],
        0.02,
    )?;
    Ok(t)
}
