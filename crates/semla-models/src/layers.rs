//! Layers shared by the transformer models (CLIP in both layouts, CAT-Seg,
//! SAM): layer norm, softmax and QuickGELU in an inference and a
//! differentiable form (one-node CPU kernels with their own backward, or
//! candle's composed ops), the factored LoRA update of several sites that
//! share one matmul, the causal mask, the bicubic grid resize of position
//! embeddings and the non-overlapping transposed convolution.

use candle_core::{D, DType, Tensor};
use candle_nn::VarBuilder;
use semla_adapters::FactoredSite;

use crate::fastmath;
use semla_adapters::host::{contiguous_f32, contiguous_f32_mut};

type Result<T> = candle_core::Result<T>;

/// Which implementation of layer norm, softmax and activations to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Kernels {
    /// Fused single-pass kernels without a backward pass: inference only.
    #[default]
    Fused,
    /// Ops that backpropagate: use when training adapters. On the CPU in f32
    /// these are hand-written kernels with their own backward pass (layer
    /// norm, activations, CLIP's packed attention, the frozen and LoRA
    /// linears); elsewhere candle's composed ops.
    Composed,
}

/// A layer norm over the last dimension (`weight`, `bias`: `[D]`).
#[derive(Clone, Debug)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub(crate) fn load(vb: &VarBuilder, prefix: &str, size: usize, eps: f64) -> Result<Self> {
        let vb = vb.pp(prefix);
        Ok(Self {
            weight: vb.get(size, "weight")?,
            bias: vb.get(size, "bias")?,
            eps,
        })
    }

    /// `(prefix.weight, weight)` and `(prefix.bias, bias)`.
    pub(crate) fn named_tensors(&self, prefix: &str) -> [(String, Tensor); 2] {
        [
            (format!("{prefix}.weight"), self.weight.clone()),
            (format!("{prefix}.bias"), self.bias.clone()),
        ]
    }

    pub(crate) fn forward(&self, x: &Tensor, kernels: Kernels) -> Result<Tensor> {
        match kernels {
            Kernels::Fused => {
                candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps as f32)
            }
            // One node with its own backward where the kernel takes it.
            Kernels::Composed
                if [x, &self.weight, &self.bias]
                    .into_iter()
                    .all(semla_adapters::host::is_cpu_f32) =>
            {
                x.contiguous()?.apply_op3(
                    &self.weight.contiguous()?,
                    &self.bias.contiguous()?,
                    LayerNormKernel {
                        eps: self.eps as f32,
                    },
                )
            }
            Kernels::Composed => {
                candle_nn::ops::layer_norm_slow(x, &self.weight, &self.bias, self.eps as f32)
            }
        }
    }
}

const LAYER_NORM_OP: &str = "layer-norm";

/// Layer norm over the last dimension as one graph node, forward and backward
/// (`Kernels::Composed` on the CPU in f32): arguments `x` `[..., D]`,
/// `weight` and `bias` `[D]`. The backward recomputes each row's mean and
/// inverse deviation (cheaper than keeping them): with `x^ = (x - mean) rstd`
/// and `gw = grad * weight`, `grad_x = rstd (gw - mean(gw) - x^ mean(gw x^))`,
/// `grad_weight = sum_rows grad x^`, `grad_bias = sum_rows grad` (each when tracked).
struct LayerNormKernel {
    eps: f32,
}

/// `(mean, 1 / sqrt(var + eps))` of one row (two passes, as PyTorch).
#[inline]
fn row_moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len().max(1) as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

impl candle_core::CustomOp3 for LayerNormKernel {
    fn name(&self) -> &'static str {
        LAYER_NORM_OP
    }

    fn cpu_fwd(
        &self,
        x: &candle_core::CpuStorage,
        x_layout: &candle_core::Layout,
        w: &candle_core::CpuStorage,
        w_layout: &candle_core::Layout,
        b: &candle_core::CpuStorage,
        b_layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let x = contiguous_f32(LAYER_NORM_OP, x, x_layout)?;
        let w = contiguous_f32(LAYER_NORM_OP, w, w_layout)?;
        let b = contiguous_f32(LAYER_NORM_OP, b, b_layout)?;
        let width = x_layout.shape().dims().last().copied().unwrap_or(0);
        if width == 0 || w.len() != width || b.len() != width {
            candle_core::bail!(
                "{LAYER_NORM_OP}: weight {} and bias {} for rows of {width}",
                w.len(),
                b.len()
            )
        }
        let mut out = vec![0f32; x.len()];
        let eps = self.eps;
        crate::kernels::parallel_chunks(&mut out, width, |offset, chunk| {
            let rows = x[offset..offset + chunk.len()].chunks(width);
            for (o_row, x_row) in chunk.chunks_mut(width).zip(rows) {
                let (mean, rstd) = row_moments(x_row, eps);
                for (((o, &v), &wi), &bi) in o_row.iter_mut().zip(x_row).zip(w).zip(b) {
                    *o = (v - mean) * rstd * wi + bi;
                }
            }
        });
        Ok((candle_core::CpuStorage::F32(out), x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        use semla_adapters::host::read_f32;
        let (x_c, w_c, g_c) = (x.contiguous()?, weight.contiguous()?, grad.contiguous()?);
        let (xv, w, g) = (
            read_f32(LAYER_NORM_OP, &x_c)?,
            read_f32(LAYER_NORM_OP, &w_c)?,
            read_f32(LAYER_NORM_OP, &g_c)?,
        );
        let width = w.len().max(1);
        if xv.len() != g.len() || xv.len() % width != 0 {
            candle_core::bail!(
                "{LAYER_NORM_OP}: gradient {:?} for {:?}",
                grad.dims(),
                x.dims()
            )
        }
        let eps = self.eps;
        let grad_x = if x.track_op() {
            let mut gx = vec![0f32; xv.len()];
            crate::kernels::parallel_chunks(&mut gx, width, |offset, chunk| {
                let x_rows = xv[offset..offset + chunk.len()].chunks(width);
                let g_rows = g[offset..offset + chunk.len()].chunks(width);
                for ((gx_row, x_row), g_row) in chunk.chunks_mut(width).zip(x_rows).zip(g_rows) {
                    let (mean, rstd) = row_moments(x_row, eps);
                    let (mut sum_gw, mut sum_gw_xhat) = (0f32, 0f32);
                    for ((&v, &gi), &wi) in x_row.iter().zip(g_row).zip(w.iter()) {
                        let gw = gi * wi;
                        sum_gw += gw;
                        sum_gw_xhat += gw * (v - mean) * rstd;
                    }
                    let (mean_gw, mean_gw_xhat) =
                        (sum_gw / width as f32, sum_gw_xhat / width as f32);
                    for (((o, &v), &gi), &wi) in
                        gx_row.iter_mut().zip(x_row).zip(g_row).zip(w.iter())
                    {
                        let xhat = (v - mean) * rstd;
                        *o = rstd * (gi * wi - mean_gw - xhat * mean_gw_xhat);
                    }
                }
            });
            Some(Tensor::from_vec(gx, x.shape(), x.device())?)
        } else {
            None
        };
        // Parameter gradients (training a norm itself): one serial pass.
        let (want_w, want_b) = (weight.track_op(), bias.track_op());
        let (mut gw, mut gb) = (vec![0f32; width], vec![0f32; width]);
        if want_w || want_b {
            for (x_row, g_row) in xv.chunks(width).zip(g.chunks(width)) {
                let (mean, rstd) = row_moments(x_row, eps);
                for (((a, b), &v), &gi) in gw.iter_mut().zip(gb.iter_mut()).zip(x_row).zip(g_row) {
                    *a += gi * (v - mean) * rstd;
                    *b += gi;
                }
            }
        }
        let grad_w = want_w
            .then(|| Tensor::from_vec(gw, weight.shape(), weight.device()))
            .transpose()?;
        let grad_b = want_b
            .then(|| Tensor::from_vec(gb, bias.shape(), bias.device()))
            .transpose()?;
        Ok((grad_x, grad_w, grad_b))
    }
}

pub(crate) fn softmax_last_dim(x: &Tensor, kernels: Kernels) -> Result<Tensor> {
    match kernels {
        Kernels::Fused => candle_nn::ops::softmax_last_dim(x),
        Kernels::Composed => candle_nn::ops::softmax(x, D::Minus1),
    }
}

/// An element-wise activation the fused kernels compute in one parallel pass.
#[derive(Clone, Copy, Debug)]
enum Pointwise {
    /// `x * sigmoid(1.702 x)`.
    QuickGelu,
    /// `0.5 x (1 + erf(x / sqrt(2)))`, erf by [`erf_fast`].
    GeluErf,
}

impl Pointwise {
    fn name(self) -> &'static str {
        match self {
            Self::QuickGelu => "quick-gelu",
            Self::GeluErf => "gelu-erf",
        }
    }

    #[inline(always)]
    fn apply(self, v: f32) -> f32 {
        match self {
            Self::QuickGelu => v / (1.0 + fastmath::exp(-1.702 * v)),
            Self::GeluErf => 0.5 * v * (1.0 + erf_fast(v * std::f32::consts::FRAC_1_SQRT_2)),
        }
    }

    /// The derivative at `v`.
    #[inline(always)]
    fn derivative(self, v: f32) -> f32 {
        match self {
            Self::QuickGelu => {
                let s = 1.0 / (1.0 + fastmath::exp(-1.702 * v));
                s + 1.702 * v * s * (1.0 - s)
            }
            // Phi(v) + v phi(v).
            Self::GeluErf => {
                let cdf = 0.5 * (1.0 + erf_fast(v * std::f32::consts::FRAC_1_SQRT_2));
                let pdf = fastmath::exp(-0.5 * v * v)
                    * (0.5 * std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2);
                cdf + v * pdf
            }
        }
    }
}

/// Runs `$body` with `$f` bound to the activation's `$method` (`apply` or
/// `derivative`) as a closure of one known activation, which the compiler
/// inlines into the vectorised maps of [`fastmath`].
macro_rules! with_pointwise {
    ($activation:expr, $method:ident, |$f:ident| $body:expr) => {
        match $activation {
            Pointwise::QuickGelu => {
                let $f = |v: f32| Pointwise::QuickGelu.$method(v);
                $body
            }
            Pointwise::GeluErf => {
                let $f = |v: f32| Pointwise::GeluErf.$method(v);
                $body
            }
        }
    };
}
/// erf by Abramowitz and Stegun 7.1.26 (the formula of PyTorch's vectorised
/// CPU erf): |error| below 8e-7 in f32 against the exact erf, so GELU stays
/// within 1e-5 of the exact formula for |x| < 25, where candle's scalar
/// `libm::erff` costs about six times as much.
#[inline(always)]
fn erf_fast(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_7) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    (1.0 - poly * fastmath::exp(-a * a)).copysign(x)
}

/// An activation in one parallel pass: into a new buffer (`CustomOp1`, with
/// its backward) or over its input (`InplaceOp1`, inference only).
struct ActivationOp(Pointwise);

impl ActivationOp {
    /// `out[i] = activation(input[i])`.
    fn map(&self, input: &[f32], out: &mut [f32]) {
        with_pointwise!(self.0, apply, |f| {
            crate::kernels::parallel_chunks(out, 1024, |offset, chunk| {
                fastmath::map(chunk, &input[offset..offset + chunk.len()], f);
            })
        });
    }

    /// `values[i] = activation(values[i])`.
    fn map_in_place(&self, values: &mut [f32]) {
        with_pointwise!(self.0, apply, |f| {
            crate::kernels::parallel_chunks(values, 1024, |_, chunk| {
                fastmath::map_in_place(chunk, f);
            })
        });
    }
}

impl candle_core::CustomOp1 for ActivationOp {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let input = contiguous_f32(self.0.name(), storage, layout)?;
        let mut out = vec![0f32; input.len()];
        self.map(input, &mut out);
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
    }

    /// `grad * activation'(x)` in one parallel pass.
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let name = self.0.name();
        let (x_c, g_c) = (x.contiguous()?, grad.contiguous()?);
        let (xv, g) = (
            semla_adapters::host::read_f32(name, &x_c)?,
            semla_adapters::host::read_f32(name, &g_c)?,
        );
        if xv.len() != g.len() {
            candle_core::bail!("{name}: gradient {:?} for {:?}", grad.dims(), x.dims())
        }
        let mut out = vec![0f32; xv.len()];
        with_pointwise!(self.0, derivative, |f| {
            crate::kernels::parallel_chunks(&mut out, 1024, |offset, chunk| {
                let range = offset..offset + chunk.len();
                fastmath::zip_map(chunk, &xv[range.clone()], &g[range], |v, gi| gi * f(v));
            })
        });
        Tensor::from_vec(out, x.shape(), x.device()).map(Some)
    }
}

impl candle_core::InplaceOp1 for ActivationOp {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<()> {
        self.map_in_place(contiguous_f32_mut(self.0.name(), storage, layout)?);
        Ok(())
    }
}

/// `activation(x + bias)` with the bias broadcast along one axis, in one
/// parallel pass over `x`'s own buffer (inference only): element `i` takes
/// `bias[(i / inner) % C]`.
struct BiasActivationOp {
    activation: Pointwise,
    /// Elements after the bias axis (1 when the bias is on the last axis).
    inner: usize,
}

impl candle_core::InplaceOp2 for BiasActivationOp {
    fn name(&self) -> &'static str {
        self.activation.name()
    }

    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        layout: &candle_core::Layout,
        bias_storage: &candle_core::CpuStorage,
        bias_layout: &candle_core::Layout,
    ) -> Result<()> {
        let name = self.activation.name();
        let values = contiguous_f32_mut(name, storage, layout)?;
        let bias = contiguous_f32(name, bias_storage, bias_layout)?;
        let (inner, activation) = (self.inner.max(1), self.activation);
        let channels = bias.len().max(1);
        crate::kernels::parallel_chunks(values, 1024, |offset, chunk| {
            if inner == 1 {
                let biases = bias.iter().cycle().skip(offset % channels);
                for (v, &b) in chunk.iter_mut().zip(biases) {
                    *v = activation.apply(*v + b);
                }
                return;
            }
            // Runs of `inner` elements share one bias value.
            let mut done = 0;
            while done < chunk.len() {
                let at = offset + done;
                let run = (inner - at % inner).min(chunk.len() - done);
                let b = bias[(at / inner) % channels];
                with_pointwise!(activation, apply, |f| {
                    fastmath::map_in_place(&mut chunk[done..done + run], |v| f(v + b))
                });
                done += run;
            }
        });
        Ok(())
    }
}

/// Whether the fused element-wise kernels can take `x`.
fn fusable(x: &Tensor, kernels: Kernels) -> bool {
    kernels == Kernels::Fused && x.dtype() == DType::F32 && x.is_contiguous() && x.device().is_cpu()
}

/// Exact (erf) GELU of a tensor the caller just computed and holds alone:
/// with inference kernels it is overwritten in place ([`erf_fast`], one
/// parallel pass, no new buffer); otherwise candle's differentiable `gelu_erf`.
pub(crate) fn gelu_erf_owned(x: Tensor, kernels: Kernels) -> Result<Tensor> {
    if fusable(&x, kernels) {
        x.inplace_op1(&ActivationOp(Pointwise::GeluErf))?;
        Ok(x)
    } else {
        differentiable(&x, Pointwise::GeluErf)
    }
}

/// `gelu_erf(x + bias)` with `bias` `[C]` on axis `axis` of `x`, a tensor the
/// caller just computed and holds alone: in place in one pass with inference
/// kernels, composed otherwise.
pub(crate) fn bias_gelu_erf_owned(
    x: Tensor,
    bias: &Tensor,
    axis: usize,
    kernels: Kernels,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    if axis >= dims.len() || bias.dims() != [dims[axis]] {
        candle_core::bail!(
            "bias_gelu_erf: bias {:?} does not fit axis {axis} of {:?}",
            bias.dims(),
            dims
        )
    }
    if fusable(&x, kernels) && bias.dtype() == DType::F32 {
        let inner = dims[axis + 1..].iter().product();
        x.inplace_op2(
            &bias.contiguous()?,
            &BiasActivationOp {
                activation: Pointwise::GeluErf,
                inner,
            },
        )?;
        return Ok(x);
    }
    let mut shape = vec![1; dims.len()];
    shape[axis] = dims[axis];
    differentiable(&x.broadcast_add(&bias.reshape(shape)?)?, Pointwise::GeluErf)
}

/// An activation that backpropagates: one node with its own backward on the
/// CPU in f32 ([`ActivationOp`]), candle's composed ops elsewhere.
fn differentiable(x: &Tensor, activation: Pointwise) -> Result<Tensor> {
    if semla_adapters::host::is_cpu_f32(x) {
        return x.contiguous()?.apply_op1(ActivationOp(activation));
    }
    match activation {
        Pointwise::GeluErf => x.gelu_erf(),
        Pointwise::QuickGelu => x.mul(&candle_nn::ops::sigmoid(&x.affine(1.702, 0.0)?)?),
    }
}

/// The factored LoRA update of a Linear site (the contract of
/// [`semla_adapters::site`]): `x2` `[N*L, in]` -> `sum_j coeff[n, j] B[:, j] (A[j, :] x)`
/// as `[N, L, out]`. Used where several sites share one base matmul.
pub(crate) fn factored_update(x2: &Tensor, n: usize, site: &FactoredSite) -> Result<Tensor> {
    let rows = x2.dim(0)?;
    let h = x2.matmul(&site.a.t()?)?; // [N*L, R]
    let r = h.dim(1)?;
    let coeff = site.coeff.to_dtype(h.dtype())?.unsqueeze(1)?; // [N|1, 1, R]
    let h = h.reshape((n, rows / n, r))?.broadcast_mul(&coeff)?;
    let out = site.b.dim(0)?;
    h.reshape((rows, r))?
        .matmul(&site.b.t()?)?
        .reshape((n, rows / n, out))
}

/// Bicubic resize of a row-major `[gh*gw, D]` grid of vectors, as PyTorch's
/// `F.interpolate(mode="bicubic", align_corners=False)` (cubic coefficient
/// `A = -0.75`, source index `scale * (dst + 0.5) - 0.5`, border taps clamped):
/// what transformers' `interpolate_pos_encoding` does. Computed in f64.
pub(crate) fn bicubic_resize_grid(
    grid: &Tensor,
    gh: usize,
    gw: usize,
    oh: usize,
    ow: usize,
) -> Result<Tensor> {
    let d = grid.dim(1)?;
    let src: Vec<f32> = grid.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let taps = |in_size: usize, out_size: usize| -> Vec<([usize; 4], [f64; 4])> {
        const A: f64 = -0.75;
        let cc1 = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
        let cc2 = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
        // PyTorch computes the scale in float (accscalar) as in / out.
        let scale = in_size as f64 / out_size as f64;
        (0..out_size)
            .map(|o| {
                let real = scale * (o as f64 + 0.5) - 0.5;
                let floor = real.floor();
                let t = real - floor;
                let i0 = floor as i64;
                let clamp = |i: i64| i.clamp(0, in_size as i64 - 1) as usize;
                (
                    [clamp(i0 - 1), clamp(i0), clamp(i0 + 1), clamp(i0 + 2)],
                    [cc2(t + 1.0), cc1(t), cc1(1.0 - t), cc2(2.0 - t)],
                )
            })
            .collect()
    };
    let ty = taps(gh, oh);
    let tx = taps(gw, ow);
    let mut out = vec![0f32; oh * ow * d];
    let mut acc = vec![0f64; d];
    for (oy, (iy, wy)) in ty.iter().enumerate() {
        for (ox, (ix, wx)) in tx.iter().enumerate() {
            acc.iter_mut().for_each(|a| *a = 0.0);
            for (yy, &wyy) in iy.iter().zip(wy) {
                for (xx, &wxx) in ix.iter().zip(wx) {
                    let w = wyy * wxx;
                    let row = &src[(yy * gw + xx) * d..(yy * gw + xx + 1) * d];
                    for (a, &v) in acc.iter_mut().zip(row) {
                        *a += w * v as f64;
                    }
                }
            }
            let dst = &mut out[(oy * ow + ox) * d..(oy * ow + ox + 1) * d];
            for (o, &a) in dst.iter_mut().zip(&acc) {
                *o = a as f32;
            }
        }
    }
    Tensor::from_vec(out, (oh * ow, d), grid.device())?.to_dtype(grid.dtype())
}

/// Bilinear resize of `x` `[N, C, H, W]` to `[N, C, h, w]` as two matrix
/// products with constant interpolation matrices, so that it backpropagates
/// (candle's `upsample_bilinear2d` has no backward pass). The taps are
/// PyTorch's `F.interpolate(mode="bilinear")` without antialiasing: with
/// `align_corners` false, source `(i + 0.5) * in / out - 0.5` clamped below at
/// 0; with it true, `i * (in - 1) / (out - 1)`.
pub(crate) fn bilinear_resize_differentiable(
    x: &Tensor,
    h: usize,
    w: usize,
    align_corners: bool,
) -> Result<Tensor> {
    let (n, c, in_h, in_w) = x.dims4()?;
    let weights = |in_size: usize, out_size: usize| -> Vec<f32> {
        let mut m = vec![0f32; out_size * in_size];
        for o in 0..out_size {
            let src = if align_corners {
                if out_size > 1 {
                    o as f64 * (in_size as f64 - 1.0) / (out_size as f64 - 1.0)
                } else {
                    0.0
                }
            } else {
                ((o as f64 + 0.5) * in_size as f64 / out_size as f64 - 0.5).max(0.0)
            };
            let i0 = (src.floor() as usize).min(in_size - 1);
            let i1 = (i0 + 1).min(in_size - 1);
            let lambda = src - i0 as f64;
            m[o * in_size + i0] += (1.0 - lambda) as f32;
            m[o * in_size + i1] += lambda as f32;
        }
        m
    };
    let device = x.device();
    let rows = Tensor::from_vec(weights(in_h, h), (h, in_h), device)?.to_dtype(x.dtype())?;
    let cols = Tensor::from_vec(weights(in_w, w), (w, in_w), device)?
        .to_dtype(x.dtype())?
        .t()?;
    let flat = x.reshape((n * c, in_h, in_w))?;
    // [h, H] x [NC, H, W] -> [NC, h, W], then x [W, w] -> [NC, h, w].
    let resized = rows.broadcast_matmul(&flat)?.broadcast_matmul(&cols)?;
    resized.reshape((n, c, h, w))
}

/// `quick_gelu(x) = x * sigmoid(1.702 x)`, fused when inference kernels are asked for.
pub(crate) fn quick_gelu(x: &Tensor, kernels: Kernels) -> Result<Tensor> {
    if fusable(x, kernels) {
        return x.apply_op1_no_bwd(&ActivationOp(Pointwise::QuickGelu));
    }
    differentiable(x, Pointwise::QuickGelu)
}

/// The additive causal mask `[L, L]` of a text transformer: 0 on and below the
/// diagonal, `-inf` above.
pub(crate) fn causal_mask(l: usize, device: &candle_core::Device, dtype: DType) -> Result<Tensor> {
    let mask: Vec<f32> = (0..l)
        .flat_map(|i| (0..l).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (l, l), device)?.to_dtype(dtype)
}

/// A plain (non-adapted) linear layer: `x` `[..., in]` -> `[..., out]` with
/// `weight` `[out, in]`.
pub(crate) fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let in_features = dims.last().copied().unwrap_or(1);
    let rows = x.elem_count() / in_features.max(1);
    // One node on the CPU (bias and product in one buffer); only `x` gets a gradient.
    let y = semla_adapters::frozen::linear(&x.reshape((rows, in_features))?, weight, bias)?;
    let mut out_dims = dims;
    if let Some(last) = out_dims.last_mut() {
        *last = weight.dim(0)?;
    }
    y.reshape(out_dims.as_slice())
}

/// `ConvTranspose2d` with kernel = stride (no overlap), bias; weight `[in, out, k, k]`.
#[derive(Clone, Debug)]
pub(crate) struct ConvTranspose {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
}

impl ConvTranspose {
    pub(crate) fn load(
        vb: &VarBuilder,
        prefix: &str,
        cin: usize,
        cout: usize,
        k: usize,
    ) -> Result<Self> {
        let vb = vb.pp(prefix);
        Ok(Self {
            weight: vb.get((cin, cout, k, k), "weight")?,
            bias: vb.get(cout, "bias")?,
            stride: k,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.conv_transpose2d(&self.weight, 0, 0, self.stride, 1)?
            .broadcast_add(&self.bias.reshape((1, (), 1, 1))?)
    }

    pub(crate) fn named(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        out.push((format!("{prefix}.weight"), self.weight.clone()));
        out.push((format!("{prefix}.bias"), self.bias.clone()));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fused_gelu_equals_the_exact_formula_in_place_and_with_a_bias_on_any_axis() {
        let device = candle_core::Device::Cpu;
        // Values over [-12, 12) (the fused pass runs in parallel above 65536 values).
        let n = 3 * 5 * 70 * 67;
        let values: Vec<f32> = (0..n)
            .map(|i| (i as f32 / n as f32) * 24.0 - 12.0)
            .collect();
        let x = Tensor::from_vec(values, (3, 5, 70, 67), &device).unwrap();
        let exact = x.gelu_erf().unwrap();
        let fused = gelu_erf_owned(x.copy().unwrap(), Kernels::Fused).unwrap();
        let diff = semla_test_support::max_abs_diff(&fused, &exact);
        assert!(diff < 1e-5, "fused GELU differs from erf GELU by {diff}");
        for axis in [1, 3] {
            let c = x.dim(axis).unwrap();
            let bias = Tensor::arange(0f32, c as f32, &device)
                .unwrap()
                .affine(0.3, -1.0)
                .unwrap();
            let mut shape = vec![1; 4];
            shape[axis] = c;
            let want = x
                .broadcast_add(&bias.reshape(shape).unwrap())
                .unwrap()
                .gelu_erf()
                .unwrap();
            for kernels in [Kernels::Fused, Kernels::Composed] {
                let got = bias_gelu_erf_owned(x.copy().unwrap(), &bias, axis, kernels).unwrap();
                let diff = semla_test_support::max_abs_diff(&got, &want);
                assert!(diff < 1e-5, "axis {axis}, {kernels:?}: differs by {diff}");
            }
        }
        let wrong = Tensor::zeros(4, DType::F32, &device).unwrap();
        assert!(bias_gelu_erf_owned(x, &wrong, 1, Kernels::Fused).is_err());
    }

    #[test]
    fn differentiable_bilinear_resize_equals_candles_and_backpropagates() {
        let device = candle_core::Device::Cpu;
        let values: Vec<f32> = (0..2 * 3 * 7 * 5)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let x = Tensor::from_vec(values, (2, 3, 7, 5), &device).unwrap();
        for (h, w) in [(16, 11), (3, 2), (7, 5), (1, 9)] {
            for align in [false, true] {
                let ours = bilinear_resize_differentiable(&x, h, w, align).unwrap();
                let candle = x.upsample_bilinear2d(h, w, align).unwrap();
                let diff = semla_test_support::max_abs_diff(&ours, &candle);
                assert!(diff < 1e-5, "{h}x{w} align {align}: {diff}");
            }
        }
        // The gradient of the sum is each source pixel's total weight: for an
        // upsample by 2 (align_corners false) every output row and column has
        // weights summing to 1, so the gradients sum to the output's size.
        let var = candle_core::Var::from_tensor(&x).unwrap();
        let out = bilinear_resize_differentiable(var.as_tensor(), 14, 10, false).unwrap();
        let grads = out.sum_all().unwrap().backward().unwrap();
        let total: f32 = grads
            .get(var.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!((total - (2 * 3 * 14 * 10) as f32).abs() < 1e-3, "{total}");
    }

    /// The gradients of `sum(y * target)` for the given variables.
    fn grads_of(y: &Tensor, target: &Tensor, vars: &[&candle_core::Var]) -> Vec<Tensor> {
        let grads = (y * target).unwrap().sum_all().unwrap().backward().unwrap();
        vars.iter()
            .map(|v| grads.get(v.as_tensor()).unwrap().clone())
            .collect()
    }

    /// The layer-norm kernel against candle's composed `layer_norm_slow`:
    /// value and the gradients of input, weight and bias, on rows long enough
    /// to be split across threads.
    #[test]
    fn layer_norm_kernel_has_the_composed_value_and_gradients() {
        let device = candle_core::Device::Cpu;
        let var = |t: Tensor| candle_core::Var::from_tensor(&t).unwrap();
        let x = var((Tensor::randn(0f32, 2.0, (3, 70, 96), &device).unwrap() + 0.5).unwrap());
        let w = var(Tensor::randn(1f32, 0.3, 96, &device).unwrap());
        let b = var(Tensor::randn(0f32, 0.3, 96, &device).unwrap());
        let norm = LayerNorm {
            weight: w.as_tensor().clone(),
            bias: b.as_tensor().clone(),
            eps: 1e-5,
        };
        let ours = norm.forward(x.as_tensor(), Kernels::Composed).unwrap();
        let composed =
            candle_nn::ops::layer_norm_slow(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5)
                .unwrap();
        assert!(semla_test_support::max_abs_diff(&ours, &composed) < 1e-5);
        let target = Tensor::randn(0f32, 1.0, (3, 70, 96), &device).unwrap();
        let got = grads_of(&ours, &target, &[&x, &w, &b]);
        let want = grads_of(&composed, &target, &[&x, &w, &b]);
        for (name, (g, c)) in ["x", "weight", "bias"].iter().zip(got.iter().zip(&want)) {
            let diff = semla_test_support::max_abs_diff(g, c);
            assert!(diff < 1e-3, "grad {name} differs by {diff}");
        }
    }

    /// The activations' backward against candle's autograd of the composed
    /// formulas (QuickGELU `x sigmoid(1.702 x)`, erf GELU).
    #[test]
    fn activation_kernels_backpropagate_the_composed_gradient() {
        let device = candle_core::Device::Cpu;
        let n = 3 * 70 * 400; // parallel above 65536 values
        let values: Vec<f32> = (0..n).map(|i| (i as f32 / n as f32) * 16.0 - 8.0).collect();
        let x = candle_core::Var::from_tensor(
            &Tensor::from_vec(values, (3, 70, 400), &device).unwrap(),
        )
        .unwrap();
        let target = Tensor::randn(0f32, 1.0, (3, 70, 400), &device).unwrap();
        let t = x.as_tensor();
        let quick_composed = t
            .mul(&candle_nn::ops::sigmoid(&t.affine(1.702, 0.0).unwrap()).unwrap())
            .unwrap();
        let cases = [
            (
                "quick-gelu",
                quick_gelu(t, Kernels::Composed).unwrap(),
                quick_composed,
            ),
            (
                "gelu-erf",
                gelu_erf_owned(t.clone(), Kernels::Composed).unwrap(),
                t.gelu_erf().unwrap(),
            ),
        ];
        for (name, ours, composed) in cases {
            assert!(
                semla_test_support::max_abs_diff(&ours, &composed) < 1e-5,
                "{name}"
            );
            let g = &grads_of(&ours, &target, &[&x])[0];
            let c = &grads_of(&composed, &target, &[&x])[0];
            let diff = semla_test_support::max_abs_diff(g, c);
            assert!(diff < 1e-5, "{name}: gradient differs by {diff}");
        }
    }
}
