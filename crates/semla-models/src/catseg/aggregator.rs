//! CAT-Seg's cost aggregator (`sem_seg_head.predictor.transformer.*`): the cost
//! volume between dense image and class text embeddings, its embedding, the
//! spatial (Swin, appearance-guided) and class (linear attention, text-guided)
//! aggregation layers, and the upsampling decoder guided by CLIP's
//! intermediate layers.
//!
//! Shapes: `B` images (tiles), `T` classes, hidden `C`, grid `H x W` (24 x 24).
//! The class axis is folded into the batch where the official code does so, but
//! every adapter site sees the images first (`[B, ...]`), so that a per-image
//! mixture reaches the right rows.

use candle_core::{D, Tensor};
use candle_nn::VarBuilder;
use semla_adapters::{Adaptation, AdaptedLinear};

use super::config::CatSegConfig;
use crate::layers::{ConvTranspose, Kernels, LayerNorm, softmax_last_dim};

type Result<T> = candle_core::Result<T>;

/// Every LayerNorm and GroupNorm of the aggregator.
const NORM_EPS: f64 = 1e-5;
/// The linear attention's epsilon.
const LINEAR_ATTENTION_EPS: f64 = 1e-6;
/// Masked score of the shifted Swin windows.
const SHIFT_MASK_VALUE: f32 = -100.0;

/// A convolution with bias (`weight` `[out, in, k, k]`), stride 1, padding `k / 2`.
#[derive(Clone, Debug)]
struct Conv {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: usize,
}

impl Conv {
    fn load(
        vb: &VarBuilder,
        prefix: &str,
        cin: usize,
        cout: usize,
        k: usize,
        bias: bool,
    ) -> Result<Self> {
        let vb = vb.pp(prefix);
        Ok(Self {
            weight: vb.get((cout, cin, k, k), "weight")?,
            bias: if bias {
                Some(vb.get(cout, "bias")?)
            } else {
                None
            },
            padding: k / 2,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.conv2d(&self.weight, self.padding, 1, 1, 1)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
    }

    fn named(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        out.push((format!("{prefix}.weight"), self.weight.clone()));
        if let Some(b) = &self.bias {
            out.push((format!("{prefix}.bias"), b.clone()));
        }
    }
}

/// `nn.GroupNorm(groups, channels)` on `[N, C, H, W]`.
#[derive(Clone, Debug)]
struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
}

impl GroupNorm {
    fn load(vb: &VarBuilder, prefix: &str, channels: usize) -> Result<Self> {
        let vb = vb.pp(prefix);
        Ok(Self {
            weight: vb.get(channels, "weight")?,
            bias: vb.get(channels, "bias")?,
            groups: channels / 16,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let g = x.reshape((n, self.groups, (c / self.groups) * h * w))?;
        let mean = g.mean_keepdim(2)?;
        let centred = g.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(2)?;
        let normed = centred
            .broadcast_div(&(var + NORM_EPS)?.sqrt()?)?
            .reshape((n, c, h, w))?;
        normed
            .broadcast_mul(&self.weight.reshape((1, c, 1, 1))?)?
            .broadcast_add(&self.bias.reshape((1, c, 1, 1))?)
    }

    fn named(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        out.push((format!("{prefix}.weight"), self.weight.clone()));
        out.push((format!("{prefix}.bias"), self.bias.clone()));
    }
}

/// One Swin block (`block_1` unshifted, `block_2` shifted by half a window):
/// window attention whose queries and keys see `[hidden, appearance guidance]`,
/// then timm's MLP with exact GELU.
#[derive(Clone, Debug)]
struct SwinBlock {
    norm1: LayerNorm,
    q: AdaptedLinear,
    k: AdaptedLinear,
    v: AdaptedLinear,
    proj: AdaptedLinear,
    norm2: LayerNorm,
    fc1: AdaptedLinear,
    fc2: AdaptedLinear,
    shift: usize,
    window: usize,
    heads: usize,
    /// `[windows, w*w, w*w]` additive mask of the shifted block.
    mask: Option<Tensor>,
}

impl SwinBlock {
    fn load(vb: &VarBuilder, prefix: &str, cfg: &CatSegConfig, shift: usize) -> Result<Self> {
        let (c, ca) = (cfg.hidden_dim, cfg.appearance_guidance_proj_dim);
        let p = |name: &str| format!("{prefix}.{name}");
        let resolution = cfg.feature_resolution[0];
        Ok(Self {
            norm1: LayerNorm::load(vb, &p("norm1"), c, NORM_EPS)?,
            q: AdaptedLinear::load(vb, &p("attn.q"), c + ca, c, true)?,
            k: AdaptedLinear::load(vb, &p("attn.k"), c + ca, c, true)?,
            v: AdaptedLinear::load(vb, &p("attn.v"), c, c, true)?,
            proj: AdaptedLinear::load(vb, &p("attn.proj"), c, c, true)?,
            norm2: LayerNorm::load(vb, &p("norm2"), c, NORM_EPS)?,
            fc1: AdaptedLinear::load(vb, &p("mlp.fc1"), c, 4 * c, true)?,
            fc2: AdaptedLinear::load(vb, &p("mlp.fc2"), 4 * c, c, true)?,
            shift,
            window: cfg.window_size,
            heads: cfg.num_heads,
            mask: if shift > 0 {
                Some(shift_mask(resolution, cfg.window_size, shift, vb.device())?)
            } else {
                None
            },
        })
    }

    /// `x` `[B, T, H*W, C]`, `guidance` `[B, T, H*W, Ca]` (normalised) -> `[B, T, H*W, C]`.
    fn forward(
        &self,
        x: &Tensor,
        guidance: &Tensor,
        adaptation: &Adaptation,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let (b, t, l, c) = x.dims4()?;
        let side = (l as f64).sqrt() as usize;
        let ws = self.window;
        let nw = side / ws;
        let h = self.norm1.forward(x, kernels)?;
        let h = Tensor::cat(&[&h, guidance], 3)?.reshape((b * t, side, side, ()))?;
        let h = if self.shift > 0 {
            roll2(&h, -(self.shift as i64))?
        } else {
            h
        };
        let cg = h.dim(3)?;
        // Window partition: [B*T, nw, ws, nw, ws, Cg] -> [B, T*nw*nw, ws*ws, Cg].
        let windows = h
            .reshape((b * t, nw, ws, nw, ws, cg))?
            .permute((0, 1, 3, 2, 4, 5))?
            .contiguous()?
            .reshape((b, t * nw * nw, ws * ws, cg))?;
        let q = self.q.forward(&windows, adaptation)?;
        let k = self.k.forward(&windows, adaptation)?;
        let v = self
            .v
            .forward(&windows.narrow(3, 0, c)?.contiguous()?, adaptation)?;
        let heads = self.heads;
        let hd = c / heads;
        let split = |z: Tensor| -> Result<Tensor> {
            z.reshape((b * t * nw * nw, ws * ws, heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (split(q)?, split(k)?, split(v)?);
        let mut scores = (q * (hd as f64).powf(-0.5))?.matmul(&k.t()?)?; // [M, heads, L, L]
        if let Some(mask) = &self.mask {
            let m = nw * nw;
            scores = scores
                .reshape((b * t, m, heads, ws * ws, ws * ws))?
                .broadcast_add(&mask.unsqueeze(1)?.unsqueeze(0)?)?
                .reshape((b * t * m, heads, ws * ws, ws * ws))?;
        }
        let attn = softmax_last_dim(&scores, kernels)?.matmul(&v)?; // [M, heads, L, hd]
        let attn = attn
            .transpose(1, 2)?
            .reshape((b, t * nw * nw, ws * ws, c))?;
        let out = self.proj.forward(&attn, adaptation)?;
        // Window reverse, then the reverse shift.
        let out = out
            .reshape((b * t, nw, nw, ws, ws, c))?
            .permute((0, 1, 3, 2, 4, 5))?
            .contiguous()?
            .reshape((b * t, side, side, c))?;
        let out = if self.shift > 0 {
            roll2(&out, self.shift as i64)?
        } else {
            out
        };
        let x = (x + out.reshape((b, t, l, c))?)?;
        let h = self.norm2.forward(&x, kernels)?;
        let h = self.fc1.forward(&h, adaptation)?.gelu_erf()?;
        x + self.fc2.forward(&h, adaptation)?
    }

    fn sites(&self) -> [&AdaptedLinear; 6] {
        [&self.q, &self.k, &self.v, &self.proj, &self.fc1, &self.fc2]
    }

    fn sites_mut(&mut self) -> [&mut AdaptedLinear; 6] {
        [
            &mut self.q,
            &mut self.k,
            &mut self.v,
            &mut self.proj,
            &mut self.fc1,
            &mut self.fc2,
        ]
    }

    fn named(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        out.extend(self.norm1.named_tensors(&format!("{prefix}.norm1")));
        out.extend(self.norm2.named_tensors(&format!("{prefix}.norm2")));
        for (name, site) in [
            ("attn.q", &self.q),
            ("attn.k", &self.k),
            ("attn.v", &self.v),
            ("attn.proj", &self.proj),
            ("mlp.fc1", &self.fc1),
            ("mlp.fc2", &self.fc2),
        ] {
            named_linear(site, &format!("{prefix}.{name}"), out);
        }
    }
}

fn named_linear(site: &AdaptedLinear, prefix: &str, out: &mut Vec<(String, Tensor)>) {
    out.push((format!("{prefix}.weight"), site.weight().clone()));
    if let Some(b) = site.bias() {
        out.push((format!("{prefix}.bias"), b.clone()));
    }
}

/// `torch.roll(x, (s, s), dims=(1, 2))` on `[M, H, W, C]`: `out[i] = x[(i - s) mod H]`.
fn roll2(x: &Tensor, shift: i64) -> Result<Tensor> {
    let roll = |x: &Tensor, dim: usize| -> Result<Tensor> {
        let n = x.dim(dim)? as i64;
        let s = shift.rem_euclid(n) as usize;
        if s == 0 {
            return Ok(x.clone());
        }
        let n = n as usize;
        Tensor::cat(&[&x.narrow(dim, n - s, s)?, &x.narrow(dim, 0, n - s)?], dim)
    };
    roll(&roll(x, 1)?, 2)
}

/// The shifted-window mask of timm's Swin: regions `[0, H-ws)`, `[H-ws, H-s)`,
/// `[H-s, H)` per axis, label `3 * row + col`; 0 within a region, −100 across.
fn shift_mask(
    side: usize,
    ws: usize,
    shift: usize,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let region = |i: usize| -> usize {
        if i < side - ws {
            0
        } else if i < side - shift {
            1
        } else {
            2
        }
    };
    let nw = side / ws;
    let mut mask = Vec::with_capacity(nw * nw * ws.pow(4));
    for wy in 0..nw {
        for wx in 0..nw {
            let labels: Vec<usize> = (0..ws * ws)
                .map(|i| 3 * region(wy * ws + i / ws) + region(wx * ws + i % ws))
                .collect();
            for &a in &labels {
                for &b in &labels {
                    mask.push(if a == b { 0.0 } else { SHIFT_MASK_VALUE });
                }
            }
        }
    }
    Tensor::from_vec(mask, (nw * nw, ws * ws, ws * ws), device)
}

/// `swin_block`: the two Swin blocks over each class's cost map, with the
/// appearance guidance normalised once.
#[derive(Clone, Debug)]
struct SwinWrapper {
    guidance_norm: LayerNorm,
    block_1: SwinBlock,
    block_2: SwinBlock,
}

/// `attention` (ClassTransformerLayer): linear attention across classes at
/// every (pooled) pixel, the classes padded to `pad_len` with learned tokens.
#[derive(Clone, Debug)]
struct ClassAttention {
    q: AdaptedLinear,
    k: AdaptedLinear,
    v: AdaptedLinear,
    mlp_0: AdaptedLinear,
    mlp_2: AdaptedLinear,
    norm1: LayerNorm,
    norm2: LayerNorm,
    /// `[1, 1, C]`
    padding_tokens: Tensor,
    /// `[1, 1, Ct]`
    padding_guidance: Tensor,
    heads: usize,
    pool: [usize; 2],
    pad_len: usize,
}

impl ClassAttention {
    fn load(vb: &VarBuilder, prefix: &str, cfg: &CatSegConfig) -> Result<Self> {
        let (c, ct) = (cfg.hidden_dim, cfg.text_guidance_proj_dim);
        let p = |name: &str| format!("{prefix}.{name}");
        Ok(Self {
            q: AdaptedLinear::load(vb, &p("attention.q"), c + ct, c, true)?,
            k: AdaptedLinear::load(vb, &p("attention.k"), c + ct, c, true)?,
            v: AdaptedLinear::load(vb, &p("attention.v"), c, c, true)?,
            mlp_0: AdaptedLinear::load(vb, &p("MLP.0"), c, 4 * c, true)?,
            mlp_2: AdaptedLinear::load(vb, &p("MLP.2"), 4 * c, c, true)?,
            norm1: LayerNorm::load(vb, &p("norm1"), c, NORM_EPS)?,
            norm2: LayerNorm::load(vb, &p("norm2"), c, NORM_EPS)?,
            padding_tokens: vb.pp(prefix).get((1, 1, c), "padding_tokens")?,
            padding_guidance: vb.pp(prefix).get((1, 1, ct), "padding_guidance")?,
            heads: cfg.num_heads,
            pool: cfg.pooling_sizes,
            pad_len: cfg.pad_len,
        })
    }

    /// `x` `[B, C, T, H, W]`, `text` `[B, T, Ct]` -> `[B, C, T, H, W]` (with the
    /// layer's outer residual: `x + (pooled + attention + MLP)`).
    fn forward(
        &self,
        x: &Tensor,
        text: &Tensor,
        adaptation: &Adaptation,
        kernels: Kernels,
    ) -> Result<Tensor> {
        let (b, c, t, h, w) = x.dims5()?;
        let pooled = if self.pool == [1, 1] {
            x.clone()
        } else {
            x.reshape((b, c * t, h, w))?
                .avg_pool2d((self.pool[0], self.pool[1]))?
                .reshape((b, c, t, h / self.pool[0], w / self.pool[1]))?
        };
        let (hp, wp) = (pooled.dim(3)?, pooled.dim(4)?);
        let pad = self.pad_len.saturating_sub(t);
        // [B, Hp, Wp, T, C]: the classes of each pixel form one sequence.
        let tokens = pooled.permute((0, 3, 4, 2, 1))?.contiguous()?;
        let ct = text.dim(2)?;
        let guidance = text
            .reshape((b, 1, 1, t, ct))?
            .broadcast_as((b, hp, wp, t, ct))?
            .contiguous()?;
        let n1 = self.norm1.forward(&tokens, kernels)?;
        let qk_in = Tensor::cat(&[&n1, &guidance], 4)?;
        let q = self.q.forward(&qk_in, adaptation)?;
        let k = self.k.forward(&qk_in, adaptation)?;
        let v = self.v.forward(&n1, adaptation)?;
        // The official code appends `pad` copies of the learned padding token (and
        // guidance) to every pixel's sequence. They are the same at every pixel of
        // an image, so their keys and values are computed once per image and enter
        // the attention's sums `pad` times; their own outputs are dropped anyway.
        let padding = if pad > 0 {
            let ptok = self.padding_tokens.broadcast_as((b, 1, c))?.contiguous()?;
            let pg = self
                .padding_guidance
                .broadcast_as((b, 1, ct))?
                .contiguous()?;
            let pn = self.norm1.forward(&ptok, kernels)?;
            let pk = self.k.forward(&Tensor::cat(&[&pn, &pg], 2)?, adaptation)?; // [B, 1, C]
            let pv = self.v.forward(&pn, adaptation)?;
            Some(Padding {
                k: pk,
                v: pv,
                count: pad,
            })
        } else {
            None
        };
        let attn = linear_attention(&q, &k, &v, self.heads, padding.as_ref())?;
        let tokens = (tokens + attn)?;
        let n2 = self.norm2.forward(&tokens, kernels)?;
        let mlp = self
            .mlp_2
            .forward(&self.mlp_0.forward(&n2, adaptation)?.relu()?, adaptation)?;
        let tokens = (tokens + mlp)?;
        // Back to [B, C, S, Hp, Wp], resized to the grid (align_corners=True), padding dropped.
        let y = tokens.permute((0, 4, 3, 1, 2))?.contiguous()?;
        let y = if (hp, wp) == (h, w) {
            y
        } else {
            let y = y.reshape((b, c * t, hp, wp))?;
            let y = match kernels {
                Kernels::Fused => y.upsample_bilinear2d(h, w, true)?,
                Kernels::Composed => crate::layers::bilinear_resize_differentiable(&y, h, w, true)?,
            };
            y.reshape((b, c, t, h, w))?
        };
        x + y
    }

    fn sites(&self) -> [&AdaptedLinear; 5] {
        [&self.q, &self.k, &self.v, &self.mlp_0, &self.mlp_2]
    }

    fn sites_mut(&mut self) -> [&mut AdaptedLinear; 5] {
        [
            &mut self.q,
            &mut self.k,
            &mut self.v,
            &mut self.mlp_0,
            &mut self.mlp_2,
        ]
    }

    fn named(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        for (name, site) in [
            ("attention.q", &self.q),
            ("attention.k", &self.k),
            ("attention.v", &self.v),
            ("MLP.0", &self.mlp_0),
            ("MLP.2", &self.mlp_2),
        ] {
            named_linear(site, &format!("{prefix}.{name}"), out);
        }
        out.extend(self.norm1.named_tensors(&format!("{prefix}.norm1")));
        out.extend(self.norm2.named_tensors(&format!("{prefix}.norm2")));
        out.push((
            format!("{prefix}.padding_tokens"),
            self.padding_tokens.clone(),
        ));
        out.push((
            format!("{prefix}.padding_guidance"),
            self.padding_guidance.clone(),
        ));
    }
}

/// Keys and values `[B, 1, C]` of the padding token, and how many copies of it
/// each sequence holds.
struct Padding {
    k: Tensor,
    v: Tensor,
    count: usize,
}

/// "Transformers are RNNs" linear attention over the class axis: `q`, `k`, `v`
/// `[B, Hp, Wp, T, C]` with `heads` contiguous channel blocks, plus `padding`
/// copies of a per-image key/value; `S = T + padding`, `phi(z) = elu(z) + 1`,
/// `out_l = phi(q_l)^T (sum_s phi(k_s) v_s^T / S) * S / (phi(q_l) . sum_s phi(k_s) + eps)`,
/// the sums running over the real and the padding tokens.
fn linear_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    padding: Option<&Padding>,
) -> Result<Tensor> {
    let (b, hp, wp, t, c) = q.dims5()?;
    let pixels = hp * wp;
    let hd = c / heads;
    let count = padding.map_or(0, |p| p.count);
    let s = (t + count) as f64;
    let split = |z: &Tensor, len: usize| -> Result<Tensor> {
        z.reshape((b, pixels, len, heads, hd))?
            .permute((0, 1, 3, 2, 4))?
            .contiguous() // [B, P, h, L, d]
    };
    let phi = |z: &Tensor| -> Result<Tensor> { z.elu(1.0)? + 1.0 };
    let qf = phi(&split(q, t)?)?;
    let kf = phi(&split(k, t)?)?;
    let v = (split(v, t)? / s)?;
    // Batched products in three dimensions: [B*P*h, L, d].
    let flat = |z: &Tensor, rows: usize, cols: usize| z.reshape((b * pixels * heads, rows, cols));
    let mut kv = flat(&kf, t, hd)?
        .t()?
        .contiguous()?
        .matmul(&flat(&v, t, hd)?)?
        .reshape((b, pixels, heads, hd, hd))?;
    let mut ksum = kf.sum_keepdim(3)?; // [B, P, h, 1, d]
    if let Some(p) = padding {
        let pk = phi(&p.k.reshape((b * heads, 1, hd))?)?;
        let pv = (p.v.reshape((b * heads, 1, hd))? / s)?;
        let n = p.count as f64;
        let pkv = (pk.t()?.contiguous()?.matmul(&pv)? * n)?.reshape((b, 1, heads, hd, hd))?;
        kv = kv.broadcast_add(&pkv)?;
        ksum = ksum.broadcast_add(&(pk.reshape((b, 1, heads, 1, hd))? * n)?)?;
    }
    let z = (qf.broadcast_mul(&ksum)?.sum_keepdim(D::Minus1)? + LINEAR_ATTENTION_EPS)?.recip()?; // [B, P, h, T, 1]
    let out = flat(&qf, t, hd)?
        .matmul(&flat(&kv, hd, hd)?)?
        .reshape((b, pixels, heads, t, hd))?
        .broadcast_mul(&z)?; // [B, P, h, T, d]
    (out * s)?
        .permute((0, 1, 3, 2, 4))?
        .reshape((b, hp, wp, t, c))
}

/// One `AggregatorLayer`: spatial then class aggregation.
#[derive(Clone, Debug)]
struct AggregatorLayer {
    swin: SwinWrapper,
    attention: ClassAttention,
}

/// `Up`: a 2x transposed convolution, the decoder guidance concatenated, a
/// double 3x3 convolution with GroupNorm and ReLU.
#[derive(Clone, Debug)]
struct Up {
    up: ConvTranspose,
    conv0: Conv,
    norm1: GroupNorm,
    conv3: Conv,
    norm4: GroupNorm,
}

impl Up {
    fn load(
        vb: &VarBuilder,
        prefix: &str,
        cin: usize,
        cout: usize,
        guidance: usize,
    ) -> Result<Self> {
        let p = |name: &str| format!("{prefix}.{name}");
        Ok(Self {
            up: ConvTranspose::load(vb, &p("up"), cin, cin - guidance, 2)?,
            conv0: Conv::load(vb, &p("conv.double_conv.0"), cin, cout, 3, false)?,
            norm1: GroupNorm::load(vb, &p("conv.double_conv.1"), cout)?,
            conv3: Conv::load(vb, &p("conv.double_conv.3"), cout, cout, 3, false)?,
            norm4: GroupNorm::load(vb, &p("conv.double_conv.4"), cout)?,
        })
    }

    /// `x` `[B*T, Cin, h, w]`, `guidance` `[B, G, 2h, 2w]` -> `[B*T, Cout, 2h, 2w]`.
    fn forward(&self, x: &Tensor, guidance: &Tensor, classes: usize) -> Result<Tensor> {
        let x = self.up.forward(x)?;
        let (b, g, h, w) = guidance.dims4()?;
        let guidance = guidance
            .unsqueeze(1)?
            .broadcast_as((b, classes, g, h, w))?
            .reshape((b * classes, g, h, w))?;
        let x = Tensor::cat(&[&x, &guidance], 1)?;
        let x = self.norm1.forward(&self.conv0.forward(&x)?)?.relu()?;
        self.norm4.forward(&self.conv3.forward(&x)?)?.relu()
    }

    fn named(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        self.up.named(&format!("{prefix}.up"), out);
        self.conv0
            .named(&format!("{prefix}.conv.double_conv.0"), out);
        self.norm1
            .named(&format!("{prefix}.conv.double_conv.1"), out);
        self.conv3
            .named(&format!("{prefix}.conv.double_conv.3"), out);
        self.norm4
            .named(&format!("{prefix}.conv.double_conv.4"), out);
    }
}

/// What the aggregator produced for a batch, with its intermediates (for the
/// parity tests against the official code).
#[derive(Clone, Debug)]
pub struct AggregatorOutput {
    /// Cosine cost volume `[B, T, H, W]`.
    pub cost: Tensor,
    /// Per-class logits `[B, T, 4H, 4W]`.
    pub logits: Tensor,
}

/// The aggregator.
#[derive(Clone, Debug)]
pub struct Aggregator {
    conv1: Conv,
    guidance_projection: Conv,
    /// `[Ct, E]` + bias
    text_guidance_weight: Tensor,
    text_guidance_bias: Tensor,
    decoder_guidance_projection: [Conv; 2],
    layers: Vec<AggregatorLayer>,
    decoder1: Up,
    decoder2: Up,
    head: Conv,
    pad_len: usize,
}

impl Aggregator {
    /// Loads `prefix` (`sem_seg_head.predictor.transformer`).
    pub fn load(vb: &VarBuilder, prefix: &str, cfg: &CatSegConfig) -> Result<Self> {
        let p = |name: &str| format!("{prefix}.{name}");
        let c = cfg.hidden_dim;
        let layers = (0..cfg.num_layers)
            .map(|i| -> Result<AggregatorLayer> {
                let l = p(&format!("layers.{i}"));
                let w = format!("{l}.swin_block");
                Ok(AggregatorLayer {
                    swin: SwinWrapper {
                        guidance_norm: LayerNorm::load(
                            vb,
                            &format!("{w}.guidance_norm"),
                            cfg.appearance_guidance_proj_dim,
                            NORM_EPS,
                        )?,
                        block_1: SwinBlock::load(vb, &format!("{w}.block_1"), cfg, 0)?,
                        block_2: SwinBlock::load(
                            vb,
                            &format!("{w}.block_2"),
                            cfg,
                            cfg.window_size / 2,
                        )?,
                    },
                    attention: ClassAttention::load(vb, &format!("{l}.attention"), cfg)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let tg = vb.pp(p("text_guidance_projection.0"));
        Ok(Self {
            conv1: Conv::load(vb, &p("conv1"), 1, c, 7, true)?,
            guidance_projection: Conv::load(
                vb,
                &p("guidance_projection.0"),
                cfg.appearance_guidance_dim,
                cfg.appearance_guidance_proj_dim,
                3,
                true,
            )?,
            text_guidance_weight: tg.get(
                (cfg.text_guidance_proj_dim, cfg.text_guidance_dim),
                "weight",
            )?,
            text_guidance_bias: tg.get(cfg.text_guidance_proj_dim, "bias")?,
            decoder_guidance_projection: [
                Conv::load(
                    vb,
                    &p("decoder_guidance_projection.0.0"),
                    cfg.decoder_guidance_dims[0],
                    cfg.decoder_guidance_proj_dims[0],
                    3,
                    true,
                )?,
                Conv::load(
                    vb,
                    &p("decoder_guidance_projection.1.0"),
                    cfg.decoder_guidance_dims[1],
                    cfg.decoder_guidance_proj_dims[1],
                    3,
                    true,
                )?,
            ],
            layers,
            decoder1: Up::load(
                vb,
                &p("decoder1"),
                c,
                cfg.decoder_dims[0],
                cfg.decoder_guidance_proj_dims[0],
            )?,
            decoder2: Up::load(
                vb,
                &p("decoder2"),
                cfg.decoder_dims[0],
                cfg.decoder_dims[1],
                cfg.decoder_guidance_proj_dims[1],
            )?,
            head: Conv::load(vb, &p("head"), cfg.decoder_dims[1], 1, 3, true)?,
            pad_len: cfg.pad_len,
        })
    }

    /// `image` `[B, E, H, W]` (dense CLIP features, un-normalised), `text`
    /// `[B, T, E]` (unit-norm class embeddings), `guidance` the upsampled CLIP
    /// layers `[B, 256, 2H, 2W]` and `[B, 128, 4H, 4W]` -> the cost and the logits.
    pub fn forward(
        &self,
        image: &Tensor,
        text: &Tensor,
        guidance: [&Tensor; 2],
        adaptation: &Adaptation,
        kernels: Kernels,
    ) -> Result<AggregatorOutput> {
        let (b, _, h, w) = image.dims4()?;
        let t = text.dim(1)?;
        if t > self.pad_len {
            candle_core::bail!(
                "{t} classes: more than CAT-Seg's {} (the official code then keeps the 256 of highest cost; not implemented)",
                self.pad_len
            );
        }
        // Cost volume: cosine similarity of every pixel with every class.
        let img_n = l2_normalize(image, 1)?; // [B, E, H, W]
        let txt_n = l2_normalize(text, 2)?; // [B, T, E]
        let e = img_n.dim(1)?;
        let cost = txt_n
            .matmul(&img_n.reshape((b, e, h * w))?)?
            .reshape((b, t, h, w))?;
        let x = self.conv1.forward(&cost.reshape((b * t, 1, h, w))?)?; // [B*T, C, H, W]
        let c = x.dim(1)?;
        let mut x = x.reshape((b, t, c, h, w))?.transpose(1, 2)?.contiguous()?; // [B, C, T, H, W]
        let appearance = self.guidance_projection.forward(image)?.relu()?; // [B, Ca, H, W]
        let decoder_guidance = [
            self.decoder_guidance_projection[0]
                .forward(guidance[0])?
                .relu()?,
            self.decoder_guidance_projection[1]
                .forward(guidance[1])?
                .relu()?,
        ];
        // The text guidance: the template mean (one template) re-normalised.
        let text_mean = text.broadcast_div(&text.sqr()?.sum_keepdim(2)?.sqrt()?)?;
        let text_guidance = crate::layers::linear(
            &text_mean,
            &self.text_guidance_weight,
            Some(&self.text_guidance_bias),
        )?
        .relu()?; // [B, T, Ct]
        let ca = appearance.dim(1)?;
        let appearance_tokens = appearance
            .flatten_from(2)?
            .transpose(1, 2)?
            .unsqueeze(1)?
            .broadcast_as((b, t, h * w, ca))?
            .contiguous()?; // [B, T, H*W, Ca]
        for layer in &self.layers {
            let g = layer
                .swin
                .guidance_norm
                .forward(&appearance_tokens, kernels)?;
            // [B, C, T, H, W] -> [B, T, H*W, C]
            let tokens = x
                .permute((0, 2, 3, 4, 1))?
                .contiguous()?
                .reshape((b, t, h * w, c))?;
            let tokens = layer
                .swin
                .block_1
                .forward(&tokens, &g, adaptation, kernels)?;
            let tokens = layer
                .swin
                .block_2
                .forward(&tokens, &g, adaptation, kernels)?;
            x = tokens
                .reshape((b, t, h, w, c))?
                .permute((0, 4, 1, 2, 3))?
                .contiguous()?;
            x = layer
                .attention
                .forward(&x, &text_guidance, adaptation, kernels)?;
        }
        // Decoder over every class map: [B*T, C, H, W].
        let z = x.transpose(1, 2)?.contiguous()?.reshape((b * t, c, h, w))?;
        let z = self.decoder1.forward(&z, &decoder_guidance[0], t)?;
        let z = self.decoder2.forward(&z, &decoder_guidance[1], t)?;
        let logits = self.head.forward(&z)?;
        let (_, _, oh, ow) = logits.dims4()?;
        Ok(AggregatorOutput {
            cost,
            logits: logits.reshape((b, t, oh, ow))?,
        })
    }

    /// The adapter sites in layer order.
    pub fn sites(&self) -> Vec<&AdaptedLinear> {
        let mut out = Vec::new();
        for layer in &self.layers {
            out.extend(layer.swin.block_1.sites());
            out.extend(layer.swin.block_2.sites());
            out.extend(layer.attention.sites());
        }
        out
    }

    /// The adapter sites, mutable.
    pub fn sites_mut(&mut self) -> Vec<&mut AdaptedLinear> {
        let mut out = Vec::new();
        for layer in &mut self.layers {
            out.extend(layer.swin.block_1.sites_mut());
            out.extend(layer.swin.block_2.sites_mut());
            out.extend(layer.attention.sites_mut());
        }
        out
    }

    /// Every tensor under its checkpoint key.
    pub fn named_tensors(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        let p = |name: &str| format!("{prefix}.{name}");
        self.conv1.named(&p("conv1"), &mut out);
        self.guidance_projection
            .named(&p("guidance_projection.0"), &mut out);
        out.push((
            p("text_guidance_projection.0.weight"),
            self.text_guidance_weight.clone(),
        ));
        out.push((
            p("text_guidance_projection.0.bias"),
            self.text_guidance_bias.clone(),
        ));
        self.decoder_guidance_projection[0].named(&p("decoder_guidance_projection.0.0"), &mut out);
        self.decoder_guidance_projection[1].named(&p("decoder_guidance_projection.1.0"), &mut out);
        for (i, layer) in self.layers.iter().enumerate() {
            let l = p(&format!("layers.{i}"));
            out.extend(
                layer
                    .swin
                    .guidance_norm
                    .named_tensors(&format!("{l}.swin_block.guidance_norm")),
            );
            layer
                .swin
                .block_1
                .named(&format!("{l}.swin_block.block_1"), &mut out);
            layer
                .swin
                .block_2
                .named(&format!("{l}.swin_block.block_2"), &mut out);
            layer.attention.named(&format!("{l}.attention"), &mut out);
        }
        self.decoder1.named(&p("decoder1"), &mut out);
        self.decoder2.named(&p("decoder2"), &mut out);
        self.head.named(&p("head"), &mut out);
        out
    }
}

/// `F.normalize(x, dim)`: `x / max(||x||, 1e-12)`.
fn l2_normalize(x: &Tensor, dim: usize) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(dim)?.sqrt()?.maximum(1e-12)?;
    x.broadcast_div(&norm)
}
