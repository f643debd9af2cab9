//! Layers shared by the transformer models (CLIP in both layouts, CAT-Seg,
//! SAM): layer norm, softmax and QuickGELU in a fused (inference) and a
//! composed (differentiable) form, the factored LoRA update of several sites that
//! share one matmul, the causal mask, the bicubic grid resize of position
//! embeddings and the non-overlapping transposed convolution.

use candle_core::{D, DType, Tensor};
use candle_nn::VarBuilder;
use semla_adapters::FactoredSite;

type Result<T> = candle_core::Result<T>;

/// Which implementation of layer norm, softmax and activations to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Kernels {
    /// Fused single-pass kernels without a backward pass: inference only.
    #[default]
    Fused,
    /// Composed tensor ops that backpropagate: use when training adapters.
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
            Kernels::Composed => {
                candle_nn::ops::layer_norm_slow(x, &self.weight, &self.bias, self.eps as f32)
            }
        }
    }
}

pub(crate) fn softmax_last_dim(x: &Tensor, kernels: Kernels) -> Result<Tensor> {
    match kernels {
        Kernels::Fused => candle_nn::ops::softmax_last_dim(x),
        Kernels::Composed => candle_nn::ops::softmax(x, D::Minus1),
    }
}

/// `quick_gelu(x) = x * sigmoid(1.702 x)` in one pass (inference only).
struct QuickGelu;

impl candle_core::CustomOp1 for QuickGelu {
    fn name(&self) -> &'static str {
        "quick-gelu"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let candle_core::CpuStorage::F32(data) = storage else {
            candle_core::bail!("quick-gelu: only f32 is supported")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("quick-gelu: input must be contiguous")
        };
        let input = &data[start..end];
        let mut out = vec![0f32; input.len()];
        crate::kernels::parallel_chunks(&mut out, 1024, |offset, chunk| {
            for (o, &v) in chunk.iter_mut().zip(&input[offset..]) {
                *o = v / (1.0 + (-1.702 * v).exp());
            }
        });
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
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
    match kernels {
        Kernels::Fused if x.dtype() == DType::F32 && x.is_contiguous() && x.device().is_cpu() => {
            x.apply_op1_no_bwd(&QuickGelu)
        }
        _ => x.mul(&candle_nn::ops::sigmoid(&x.affine(1.702, 0.0)?)?),
    }
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
    let y = x.reshape((rows, in_features))?.matmul(&weight.t()?)?;
    let y = match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
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
}
