//! Frozen layers that pass gradients to their input only.
//!
//! candle's backward pass of `matmul` and `conv2d` always computes the
//! gradient of both operands, even when one of them is a plain (frozen)
//! tensor that no optimizer will ever read: training a LoRA adapter on a frozen
//! base then pays a second full-size matmul/convolution per frozen layer and
//! keeps every frozen weight's gradient in the `GradStore`.
//!
//! On the CPU in f32 a frozen linear layer, alone or with a factored LoRA
//! update ([`adapted_linear`]), is one `LinearKernel` node with its own
//! forward and backward. Elsewhere (and for the convolutions) the functions
//! here compute the layer's forward on a detached input (no graph), then pass
//! the result through a custom op whose only job is to route the output
//! gradient back to the input: `grad_x = grad_y W` for a linear layer, a
//! transposed convolution for a convolution. Either way the frozen weight
//! never enters the graph, so it neither receives nor stores a gradient.
//!
//! The plain candle ops run unchanged when the input does not track
//! gradients (inference), when the weight or bias does (training the base
//! model itself), on a non-CPU device, or when [`set_enabled`] turned the
//! frozen path off (to measure what it saves).

use candle_core::backend::BackendStorage;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use crate::host::{self, Strided};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the input-only backward on (the default) or off for the whole
/// process. Off, frozen layers run candle's plain ops, whose backward also
/// computes the weights' gradients: only useful to measure the difference.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether the input-only backward is on.
pub fn is_enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether a layer with input `x`, `weight` and `bias` should take the
/// frozen path: the input needs a gradient, the parameters need none.
fn use_frozen_path(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> bool {
    is_enabled()
        && x.track_op()
        && !weight.track_op()
        && !bias.is_some_and(Tensor::track_op)
        && x.device().is_cpu()
}

/// How the gradient of the output maps to the gradient of the input.
#[derive(Clone, Debug)]
enum InputGradient {
    /// `y = x W^T (+ b)` with `x` `[M, in]`, `W` `[out, in]`.
    Linear { weight: Tensor },
    /// `y = W x (+ b)` per image, `x` `[N, in, L]`, `W` `[out, in]`.
    Pointwise { weight: Tensor },
    /// `y = conv2d(x, W) (+ b)`.
    Conv2d {
        weight: Tensor,
        padding: usize,
        stride: usize,
        dilation: usize,
        groups: usize,
    },
}

/// Custom op of two arguments `(x, y)`: its value is `y` (the layer output,
/// computed without a graph); its backward returns the input gradient for `x`
/// and nothing for `y`.
struct FrozenBridge(InputGradient);

fn copy_contiguous(storage: &CpuStorage, layout: &Layout) -> Result<CpuStorage> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("frozen layer: output is not contiguous")
    };
    Ok(match storage {
        CpuStorage::F32(v) => CpuStorage::F32(v[start..end].to_vec()),
        CpuStorage::F64(v) => CpuStorage::F64(v[start..end].to_vec()),
        CpuStorage::BF16(v) => CpuStorage::BF16(v[start..end].to_vec()),
        CpuStorage::F16(v) => CpuStorage::F16(v[start..end].to_vec()),
        _ => candle_core::bail!("frozen layer: unsupported dtype {:?}", storage.dtype()),
    })
}

impl CustomOp2 for FrozenBridge {
    fn name(&self) -> &'static str {
        "frozen-layer"
    }

    fn cpu_fwd(
        &self,
        _x: &CpuStorage,
        _x_layout: &Layout,
        y: &CpuStorage,
        y_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((copy_contiguous(y, y_layout)?, y_layout.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_x = match &self.0 {
            InputGradient::Linear { weight } => grad.matmul(weight)?,
            InputGradient::Pointwise { weight } => weight
                .t()?
                .contiguous()?
                .broadcast_left(grad.dim(0)?)?
                .matmul(&grad.contiguous()?)?,
            InputGradient::Conv2d {
                weight,
                padding,
                stride,
                dilation,
                groups,
            } => conv2d_input_grad(x, grad, weight, *padding, *stride, *dilation, *groups)?,
        };
        Ok((Some(grad_x), None))
    }
}

/// Gradient of `conv2d(x, weight)` with respect to `x`.
fn conv2d_input_grad(
    x: &Tensor,
    grad: &Tensor,
    weight: &Tensor,
    padding: usize,
    stride: usize,
    dilation: usize,
    groups: usize,
) -> Result<Tensor> {
    let in_h = x.dim(2)?;
    let in_w = x.dim(3)?;
    let (out_c, in_per_group, k_h, k_w) = weight.dims4()?;
    if (k_h, k_w, stride, padding, groups) == (1, 1, 1, 0, 1) {
        // A pointwise convolution is a matmul over channels; candle's
        // transposed convolution is far slower for it.
        let n = grad.dim(0)?;
        let grad3 = grad.reshape((n, out_c, in_h * in_w))?;
        let w_t = weight.reshape((out_c, in_per_group))?.t()?.contiguous()?;
        return w_t
            .broadcast_matmul(&grad3)?
            .reshape((n, in_per_group, in_h, in_w));
    }
    let grad_h = grad.dim(2)?;
    let grad_w = grad.dim(3)?;
    // A transposed convolution maps the output size back to
    // (g - 1) * stride + dilation * (k - 1) + 1 - 2 * padding + output_padding;
    // output_padding recovers the input rows/columns the stride skipped.
    let covered_h = ((grad_h - 1) * stride + dilation * (k_h - 1) + 1).saturating_sub(2 * padding);
    let covered_w = ((grad_w - 1) * stride + dilation * (k_w - 1) + 1).saturating_sub(2 * padding);
    let out_pad_h = in_h.saturating_sub(covered_h);
    let out_pad_w = in_w.saturating_sub(covered_w);
    // candle's conv_transpose2d takes one output padding for both axes; use
    // the larger one and crop, which is exact (extra rows come out last).
    let out_pad = out_pad_h.max(out_pad_w);
    let transpose = |g: &Tensor, w: &Tensor| -> Result<Tensor> {
        let t = g.conv_transpose2d(w, padding, out_pad, stride, dilation)?;
        t.narrow(2, 0, in_h)?.narrow(3, 0, in_w)
    };
    if groups == 1 {
        return transpose(grad, weight);
    }
    let out_per_group = weight.dim(0)? / groups;
    let mut parts = Vec::with_capacity(groups);
    for g in 0..groups {
        let grad_g = grad
            .narrow(1, g * out_per_group, out_per_group)?
            .contiguous()?;
        let weight_g = weight
            .narrow(0, g * out_per_group, out_per_group)?
            .contiguous()?;
        parts.push(transpose(&grad_g, &weight_g)?);
    }
    Tensor::cat(&parts, 1)
}

/// Gradient of `conv2d(x, weight)` with respect to `weight` (`[out, in/groups, k, k]`).
fn conv2d_weight_grad(
    x: &Tensor,
    grad: &Tensor,
    weight: &Tensor,
    padding: usize,
    stride: usize,
    dilation: usize,
    groups: usize,
) -> Result<Tensor> {
    let (out_c, _, k_h, k_w) = weight.dims4()?;
    let one = |x: &Tensor, grad: &Tensor| -> Result<Tensor> {
        // Correlating the input with the output gradient, batch as channels:
        // stride and dilation swap roles.
        let g = x
            .transpose(0, 1)?
            .conv2d(&grad.transpose(0, 1)?, padding, dilation, stride, 1)?
            .transpose(0, 1)?;
        g.narrow(2, 0, k_h)?.narrow(3, 0, k_w)
    };
    if groups == 1 {
        return one(x, grad);
    }
    let in_per_group = x.dim(1)? / groups;
    let out_per_group = out_c / groups;
    let mut parts = Vec::with_capacity(groups);
    for g in 0..groups {
        let x_g = x.narrow(1, g * in_per_group, in_per_group)?.contiguous()?;
        let grad_g = grad
            .narrow(1, g * out_per_group, out_per_group)?
            .contiguous()?;
        parts.push(one(&x_g, &grad_g)?);
    }
    Tensor::cat(&parts, 0)
}

/// Custom op of three arguments `(x, weight, y)` for a convolution whose
/// weight is trainable: its value is `y` (computed without a graph), its
/// backward returns the exact gradients of `x` and `weight`. candle's own
/// conv2d backward derives one output padding from the height and uses it for
/// the width too, which fails ("shape mismatch in add") whenever the two axes
/// need different ones, e.g. a stride-2 convolution of a 9x12 input.
struct TrainableConv2d {
    padding: usize,
    stride: usize,
    dilation: usize,
    groups: usize,
}

impl candle_core::CustomOp3 for TrainableConv2d {
    fn name(&self) -> &'static str {
        "conv2d-exact-backward"
    }

    fn cpu_fwd(
        &self,
        _x: &CpuStorage,
        _x_layout: &Layout,
        _w: &CpuStorage,
        _w_layout: &Layout,
        y: &CpuStorage,
        y_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((copy_contiguous(y, y_layout)?, y_layout.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (p, s, d, g) = (self.padding, self.stride, self.dilation, self.groups);
        let grad_x = if x.track_op() {
            Some(conv2d_input_grad(x, grad, weight, p, s, d, g)?)
        } else {
            None
        };
        let grad_w = if weight.track_op() {
            Some(conv2d_weight_grad(x, grad, weight, p, s, d, g)?)
        } else {
            None
        };
        Ok((grad_x, grad_w, None))
    }
}

fn bridged(x: &Tensor, y: Tensor, rule: InputGradient) -> Result<Tensor> {
    let y = y.contiguous()?;
    x.apply_op2(&y, FrozenBridge(rule))
}

/// `x W^T + b` for a frozen `weight` `[out, in]` and `bias` `[out]`, with `x`
/// `[M, in]` -> `[M, out]`. Only `x` receives a gradient.
///
/// On the CPU in f32 this is one `LinearKernel` node (inference and
/// training alike); elsewhere candle's ops, bridged to an input-only backward.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let plain = |x: &Tensor| -> Result<Tensor> {
        let y = x.matmul(&weight.t()?)?;
        match bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    };
    let frozen = !weight.track_op() && !bias.is_some_and(Tensor::track_op);
    if !frozen || !is_enabled() {
        return plain(x);
    }
    if let Some(kernel) = LinearKernel::new(x, weight, bias, None)? {
        return x.contiguous()?.apply_op1(kernel);
    }
    if !use_frozen_path(x, weight, bias) {
        return plain(x);
    }
    let y = plain(&x.detach())?;
    bridged(
        x,
        y,
        InputGradient::Linear {
            weight: weight.clone(),
        },
    )
}

/// `x W^T + b + sum_j coeff[n, j] B[:, j] (A[j, :] x)` for a frozen `weight`
/// `[out, in]` and `bias` `[out]`, `x` `[M, in]` (the rows of `images` images,
/// `M / images` each, in order) and the factored update of `site` (`A` `[R, in]`,
/// `B` `[out, R]`, `coeff` `[images | 1, R]`), as one `LinearKernel` node:
/// the gradients of `x`, `A` and `B` (those that are tracked), never of the
/// weight. `None` when the kernel cannot take it (not f32 on the CPU, a
/// tracked weight, bias or coefficient, a strided operand, shapes that do not
/// chain); the caller then composes candle's ops.
pub fn adapted_linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    site: &crate::FactoredSite,
) -> Result<Option<Tensor>> {
    let frozen = !weight.track_op() && !bias.is_some_and(Tensor::track_op);
    if !frozen || !is_enabled() || site.coeff.track_op() {
        return Ok(None);
    }
    let (Ok((rows, inner)), Ok((rank, a_inner)), Ok((out, b_rank)), Ok((images, c_rank))) = (
        x.dims2(),
        site.a.dims2(),
        site.b.dims2(),
        site.coeff.dims2(),
    ) else {
        return Ok(None);
    };
    let chains = a_inner == inner
        && b_rank == rank
        && c_rank == rank
        && out == weight.dim(0)?
        && images > 0
        && rows % images == 0;
    if !chains || !host::is_cpu_f32(&site.a) || !host::is_cpu_f32(&site.b) {
        return Ok(None);
    }
    let coeff = RankCoefficients {
        values: site
            .coeff
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?,
        images,
        rank,
    };
    let Some(kernel) = LinearKernel::new(x, weight, bias, Some(coeff))? else {
        return Ok(None);
    };
    x.contiguous()?
        .apply_op3(&site.a.contiguous()?, &site.b.contiguous()?, kernel)
        .map(Some)
}

/// The per-row coefficients of the rank rows of a `LinearKernel`'s update.
#[derive(Clone, Debug)]
struct RankCoefficients {
    /// `[images, rank]` row-major.
    values: Vec<f32>,
    /// 1: one row shared by every input row; otherwise the input rows are
    /// `images` equal runs, run `n` taking row `n`.
    images: usize,
    rank: usize,
}

impl RankCoefficients {
    /// The coefficients of input row `row` out of `rows`.
    fn of_row(&self, row: usize, rows: usize) -> &[f32] {
        let image = if self.images <= 1 {
            0
        } else {
            row / (rows / self.images).max(1)
        };
        &self.values[image * self.rank..(image + 1) * self.rank]
    }

    /// Multiplies every row of `h` (`[rows, rank]`) by its coefficients.
    fn scale_rows(&self, h: &mut [f32]) {
        let rows = h.len() / self.rank.max(1);
        for (i, row) in h.chunks_mut(self.rank.max(1)).enumerate() {
            for (v, &c) in row.iter_mut().zip(self.of_row(i, rows)) {
                *v *= c;
            }
        }
    }
}

const LINEAR_OP: &str = "frozen-linear";

/// A frozen linear layer, optionally with a factored LoRA update, as one
/// graph node on the CPU in f32 (see [`linear`] and [`adapted_linear`]).
///
/// Forward: the output starts as the bias rows and gemm accumulates `x W^T`
/// into it, then `(c * (x A^T)) B^T`: one output buffer, no element-wise pass.
/// Backward: `grad_x = g W + (c * (g B)) A`, `grad_A = (c * (g B))^T x`,
/// `grad_B = g^T (c * (x A^T))`, each only when tracked; the weight never
/// gets one. As a `CustomOp1` (of `x`) it is the plain linear, as a
/// `CustomOp3` (of `x`, `A`, `B`) the adapted one.
struct LinearKernel {
    /// `[out, in]`, contiguous.
    weight: Tensor,
    /// `[out]`, contiguous.
    bias: Option<Tensor>,
    coeff: Option<RankCoefficients>,
}

impl LinearKernel {
    /// The kernel for these operands, or `None` when it cannot take them.
    fn new(
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        coeff: Option<RankCoefficients>,
    ) -> Result<Option<Self>> {
        let f32_cpu =
            host::is_cpu_f32(x) && host::is_cpu_f32(weight) && bias.is_none_or(host::is_cpu_f32);
        let (Ok((_, inner)), Ok((out, w_inner))) = (x.dims2(), weight.dims2()) else {
            return Ok(None);
        };
        let fits = inner == w_inner && bias.is_none_or(|b| b.dims() == [out]);
        // A strided weight would be copied on every call: leave it to candle.
        if !f32_cpu || !fits || !weight.is_contiguous() || !bias.is_none_or(Tensor::is_contiguous) {
            return Ok(None);
        }
        Ok(Some(Self {
            weight: weight.clone(),
            bias: bias.cloned(),
            coeff,
        }))
    }

    /// `c * (x A^T)`: `[rows, rank]`.
    fn scaled_hidden(
        coeff: &RankCoefficients,
        x: &[f32],
        rows: usize,
        inner: usize,
        a: &[f32],
    ) -> Result<Vec<f32>> {
        let mut h = vec![0f32; rows * coeff.rank];
        host::gemm_into(
            LINEAR_OP,
            &mut h,
            Strided::dense(x, rows, inner),
            Strided::dense(a, coeff.rank, inner).t(),
            false,
            1.0,
            host::gemm_parallelism(),
        )?;
        coeff.scale_rows(&mut h);
        Ok(h)
    }

    fn forward(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        factors: Option<(&[f32], &[f32])>,
    ) -> Result<(CpuStorage, Shape)> {
        let x = host::contiguous_f32(LINEAR_OP, x, x_layout)?;
        let (rows, inner) = x_layout.shape().dims2()?;
        let out = self.weight.dim(0)?;
        let weight = host::read_f32(LINEAR_OP, &self.weight)?;
        let parallelism = host::gemm_parallelism();
        let (x_rows, weight_t) = (
            Strided::dense(x, rows, inner),
            Strided::dense(&weight, out, inner).t(),
        );
        // With a bias gemm accumulates onto the bias rows; without, it writes a fresh buffer.
        let mut y = match &self.bias {
            Some(bias) => {
                let mut y = host::read_f32(LINEAR_OP, bias)?.repeat(rows);
                host::gemm_into(LINEAR_OP, &mut y, x_rows, weight_t, true, 1.0, parallelism)?;
                y
            }
            None => host::gemm_to_new(LINEAR_OP, x_rows, weight_t, 1.0, parallelism)?,
        };
        if let (Some(coeff), Some((a, b))) = (&self.coeff, factors) {
            let h = Self::scaled_hidden(coeff, x, rows, inner, a)?;
            host::gemm_into(
                LINEAR_OP,
                &mut y,
                Strided::dense(&h, rows, coeff.rank),
                Strided::dense(b, out, coeff.rank).t(),
                true,
                1.0,
                parallelism,
            )?;
        }
        Ok((CpuStorage::F32(y), Shape::from((rows, out))))
    }

    /// The gradients of `x`, `A` and `B` (each when `want`ed) for output gradient `grad`.
    fn backward(
        &self,
        x: &Tensor,
        factors: Option<(&Tensor, &Tensor)>,
        grad: &Tensor,
        want: [bool; 3],
    ) -> Result<[Option<Tensor>; 3]> {
        let (rows, inner) = x.dims2()?;
        let out = self.weight.dim(0)?;
        let device = x.device();
        let parallelism = host::gemm_parallelism();
        let grad = grad.contiguous()?;
        let g = host::read_f32(LINEAR_OP, &grad)?;
        let weight = host::read_f32(LINEAR_OP, &self.weight)?;
        let mut grad_x = if want[0] {
            Some(host::gemm_to_new(
                LINEAR_OP,
                Strided::dense(&g, rows, out),
                Strided::dense(&weight, out, inner),
                1.0,
                parallelism,
            )?)
        } else {
            None
        };
        let (mut grad_a, mut grad_b) = (None, None);
        if let (Some(coeff), Some((a, b))) = (&self.coeff, factors) {
            let rank = coeff.rank;
            let (a, b) = (a.contiguous()?, b.contiguous()?);
            let (a, b) = (
                host::read_f32(LINEAR_OP, &a)?,
                host::read_f32(LINEAR_OP, &b)?,
            );
            // c * (g B): the gradient of the scaled hidden rows, [rows, rank].
            let mut grad_h = vec![0f32; rows * rank];
            host::gemm_into(
                LINEAR_OP,
                &mut grad_h,
                Strided::dense(&g, rows, out),
                Strided::dense(&b, out, rank),
                false,
                1.0,
                parallelism,
            )?;
            coeff.scale_rows(&mut grad_h);
            if let Some(grad_x) = grad_x.as_mut() {
                host::gemm_into(
                    LINEAR_OP,
                    grad_x,
                    Strided::dense(&grad_h, rows, rank),
                    Strided::dense(&a, rank, inner),
                    true,
                    1.0,
                    parallelism,
                )?;
            }
            let x = x.contiguous()?;
            let xv = host::read_f32(LINEAR_OP, &x)?;
            if want[1] {
                let mut ga = vec![0f32; rank * inner];
                host::gemm_into(
                    LINEAR_OP,
                    &mut ga,
                    Strided::dense(&grad_h, rows, rank).t(),
                    Strided::dense(&xv, rows, inner),
                    false,
                    1.0,
                    parallelism,
                )?;
                grad_a = Some(Tensor::from_vec(ga, (rank, inner), device)?);
            }
            if want[2] {
                let h = Self::scaled_hidden(coeff, &xv, rows, inner, &a)?;
                let mut gb = vec![0f32; out * rank];
                host::gemm_into(
                    LINEAR_OP,
                    &mut gb,
                    Strided::dense(&g, rows, out).t(),
                    Strided::dense(&h, rows, rank),
                    false,
                    1.0,
                    parallelism,
                )?;
                grad_b = Some(Tensor::from_vec(gb, (out, rank), device)?);
            }
        }
        let grad_x = grad_x
            .map(|v| Tensor::from_vec(v, (rows, inner), device))
            .transpose()?;
        Ok([grad_x, grad_a, grad_b])
    }
}

impl CustomOp1 for LinearKernel {
    fn name(&self) -> &'static str {
        LINEAR_OP
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_layout: &Layout) -> Result<(CpuStorage, Shape)> {
        self.forward(x, x_layout, None)
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let [grad_x, _, _] = self.backward(x, None, grad, [true, false, false])?;
        Ok(grad_x)
    }
}

impl candle_core::CustomOp3 for LinearKernel {
    fn name(&self) -> &'static str {
        "frozen-linear-lora"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        a: &CpuStorage,
        a_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = host::contiguous_f32(LINEAR_OP, a, a_layout)?;
        let b = host::contiguous_f32(LINEAR_OP, b, b_layout)?;
        self.forward(x, x_layout, Some((a, b)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let want = [x.track_op(), a.track_op(), b.track_op()];
        let [gx, ga, gb] = self.backward(x, Some((a, b)), grad, want)?;
        Ok((gx, ga, gb))
    }
}

/// A 1x1 convolution as a batched matrix product: `weight` `[out, in]`,
/// `bias` `[out]`, `x` `[N, in, L]` (pixels flattened) -> `[N, out, L]`.
/// With a frozen weight only `x` receives a gradient.
pub fn pointwise(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let forward = |x: &Tensor| -> Result<Tensor> {
        let y = weight.broadcast_left(x.dim(0)?)?.matmul(x)?;
        match bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1))?),
            None => Ok(y),
        }
    };
    if !use_frozen_path(x, weight, bias) {
        return forward(x);
    }
    let y = forward(&x.detach())?;
    bridged(
        x,
        y,
        InputGradient::Pointwise {
            weight: weight.clone(),
        },
    )
}

/// `conv2d(x, weight) + bias` for a frozen `weight` `[out, in / groups, k, k]`
/// and `bias` `[out]`, with `x` `[N, in, H, W]` -> `[N, out, H', W']`.
/// With a frozen weight only `x` receives a gradient; with a trainable one
/// (a `Var`), `x`, the weight and the bias get exact gradients for every
/// input size (candle's own backward fails when the two axes need different
/// output paddings).
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    stride: usize,
    dilation: usize,
    groups: usize,
) -> Result<Tensor> {
    let forward = |x: &Tensor| -> Result<Tensor> {
        let y = x.conv2d(weight, padding, stride, dilation, groups)?;
        match bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
    };
    if weight.track_op() && x.device().is_cpu() {
        // Trainable weight: candle's op with an exact backward (see `TrainableConv2d`).
        let y = x
            .detach()
            .conv2d(&weight.detach(), padding, stride, dilation, groups)?
            .contiguous()?;
        let y = x.apply_op3(
            weight,
            &y,
            TrainableConv2d {
                padding,
                stride,
                dilation,
                groups,
            },
        )?;
        return match bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
            None => Ok(y),
        };
    }
    if !use_frozen_path(x, weight, bias) {
        return forward(x);
    }
    let y = forward(&x.detach())?;
    bridged(
        x,
        y,
        InputGradient::Conv2d {
            weight: weight.clone(),
            padding,
            stride,
            dilation,
            groups,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    use semla_test_support::ramp;

    /// The one-node linear equals the composed formula, written out by hand,
    /// with and without bias; a transposed (strided) weight takes candle's ops
    /// and gives the same; a bias that does not fit is an error, not a panic.
    #[test]
    fn the_linear_kernel_is_the_composed_linear() {
        let x = ramp(&[5, 7], 2.0);
        let w = ramp(&[3, 7], 1.0);
        let b = ramp(&[3], 4.0);
        let xs: Vec<Vec<f32>> = x.to_vec2().unwrap();
        let ws: Vec<Vec<f32>> = w.to_vec2().unwrap();
        let bs: Vec<f32> = b.to_vec1().unwrap();
        for bias in [Some(&b), None] {
            let got: Vec<Vec<f32>> = linear(&x, &w, bias).unwrap().to_vec2().unwrap();
            for (i, row) in got.iter().enumerate() {
                for (j, v) in row.iter().enumerate() {
                    let dot: f32 = (0..7).map(|k| xs[i][k] * ws[j][k]).sum();
                    let want = dot + bias.map_or(0.0, |_| bs[j]);
                    assert!((v - want).abs() < 1e-5, "({i}, {j}): {v} vs {want}");
                }
            }
        }
        let strided = ramp(&[7, 3], 1.0).t().unwrap();
        let fused = linear(&x, &strided, Some(&b)).unwrap();
        let composed = x
            .matmul(&strided.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        assert!(max_diff(&fused, &composed) < 1e-5);
        assert!(linear(&x, &w, Some(&ramp(&[4], 1.0))).is_err());
    }

    /// The adapted one-node linear against candle's composed ops, value and
    /// the gradients of `x`, `A` and `B`, with one mixture for the batch and
    /// with one per image; the frozen weight gets no gradient entry.
    #[test]
    fn the_adapted_linear_kernel_has_the_composed_value_and_gradients() {
        let (images, rows_per_image, inner, out, rank) = (3, 4, 7, 5, 2);
        let rows = images * rows_per_image;
        let w = ramp(&[out, inner], 1.0);
        let bias = ramp(&[out], 2.0);
        for per_image in [false, true] {
            let x = Var::from_tensor(&ramp(&[rows, inner], 2.0)).unwrap();
            let a = Var::from_tensor(&ramp(&[rank, inner], 0.7)).unwrap();
            let b = Var::from_tensor(&(ramp(&[out, rank], 1.3) + 0.1).unwrap()).unwrap();
            let coeff = if per_image {
                Tensor::new(&[[0.5f32, -1.0], [2.0, 0.25], [1.5, 3.0]], &Device::Cpu).unwrap()
            } else {
                Tensor::new(&[[2.0f32, -0.5]], &Device::Cpu).unwrap()
            };
            let site = crate::FactoredSite {
                a: a.as_tensor().clone(),
                b: b.as_tensor().clone(),
                coeff: coeff.clone(),
            };
            let fused = adapted_linear(x.as_tensor(), &w, Some(&bias), &site)
                .unwrap()
                .expect("the kernel takes f32 CPU operands");
            // Composed: every image's rows with its own coefficients.
            let coeff_rows = if per_image {
                coeff
                    .unsqueeze(1)
                    .unwrap()
                    .broadcast_as((images, rows_per_image, rank))
                    .unwrap()
                    .reshape((rows, rank))
                    .unwrap()
            } else {
                coeff.broadcast_as((rows, rank)).unwrap()
            };
            let hidden = x
                .as_tensor()
                .matmul(&a.as_tensor().t().unwrap())
                .unwrap()
                .mul(&coeff_rows)
                .unwrap();
            let composed = (x
                .as_tensor()
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&bias)
                .unwrap()
                + hidden.matmul(&b.as_tensor().t().unwrap()).unwrap())
            .unwrap();
            assert!(max_diff(&fused, &composed) < 1e-5, "per image {per_image}");
            let target = ramp(&[rows, out], 3.0);
            let loss = |y: &Tensor| {
                (y * &target)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap()
            };
            let (gf, gc) = (loss(&fused), loss(&composed));
            for (name, t) in [("x", &x), ("A", &a), ("B", &b)] {
                let d = max_diff(
                    gf.get(t.as_tensor()).unwrap(),
                    gc.get(t.as_tensor()).unwrap(),
                );
                assert!(
                    d < 1e-4,
                    "per image {per_image}: grad {name} differs by {d}"
                );
            }
            assert!(gf.get(&w).is_none());
        }
        // Shapes that do not chain leave it to the caller (None), not a panic.
        let x = ramp(&[rows, inner], 1.0);
        let bad = crate::FactoredSite {
            a: ramp(&[rank, inner + 1], 1.0),
            b: ramp(&[out, rank], 1.0),
            coeff: Tensor::new(&[[1f32, 1.0]], &Device::Cpu).unwrap(),
        };
        assert!(adapted_linear(&x, &w, None, &bad).unwrap().is_none());
    }

    use semla_test_support::max_abs_diff as max_diff;

    /// Same value and same input gradient as candle's own ops, and no gradient
    /// entry for the frozen weight (candle's ops leave one).
    #[test]
    fn linear_matches_plain_op_without_weight_gradient() {
        let x = Var::from_tensor(&ramp(&[5, 7], 2.0)).unwrap();
        let w = ramp(&[3, 7], 1.0);
        let b = ramp(&[3], 1.0);
        let plain = x
            .as_tensor()
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        let frozen = linear(x.as_tensor(), &w, Some(&b)).unwrap();
        assert!(max_diff(&plain, &frozen) < 1e-6);
        let target = ramp(&[5, 3], 3.0);
        let plain_grads = (plain * &target)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let frozen_grads = (frozen * &target)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gp = plain_grads.get(x.as_tensor()).unwrap();
        let gf = frozen_grads.get(x.as_tensor()).unwrap();
        assert!(max_diff(gp, gf) < 1e-5);
        // candle's matmul stores a gradient for the (transposed) frozen
        // weight; the frozen layer stores none of the weight's shape.
        let weight_shaped = |g: &candle_core::backprop::GradStore| {
            g.get_ids()
                .filter_map(|id| g.get_id(*id))
                .filter(|t| t.dims() == [7, 3] || t.dims() == [3, 7])
                .count()
        };
        assert_eq!(weight_shaped(&plain_grads), 1);
        assert_eq!(weight_shaped(&frozen_grads), 0);
    }

    /// Checks the input gradient two ways: against candle's own conv2d
    /// backward (square inputs, where candle's backward works), and by the
    /// adjoint identity `<grad_x, v> = <target, conv(v)>` for a random `v`
    /// (every shape: candle's backward fails when the two axes need different
    /// output paddings, e.g. stride 2 on a 9x10 input).
    #[test]
    fn conv2d_input_gradient_is_exact_for_strides_padding_and_groups() {
        // (in, out, k, padding, stride, dilation, groups, height, width)
        let cases = [
            (4, 6, 3, 1, 1, 1, 1, 9, 9),
            (4, 6, 3, 1, 2, 1, 1, 9, 9),
            (4, 6, 3, 1, 2, 1, 1, 8, 8),
            (4, 6, 3, 1, 2, 1, 1, 9, 10),
            (3, 5, 1, 0, 1, 1, 1, 7, 5),
            (3, 5, 1, 0, 1, 1, 1, 6, 6),
            (6, 6, 3, 1, 2, 1, 6, 10, 10),
            (6, 6, 5, 2, 2, 1, 6, 11, 8),
            (4, 4, 3, 2, 1, 2, 2, 9, 10),
        ];
        for case in cases {
            let (cin, cout, k, padding, stride, dilation, groups, h, w) = case;
            let x = Var::from_tensor(&ramp(&[2, cin, h, w], 2.0)).unwrap();
            let weight = ramp(&[cout, cin / groups, k, k], 1.0);
            let b = ramp(&[cout], 1.0);
            let plain = x
                .as_tensor()
                .conv2d(&weight, padding, stride, dilation, groups)
                .unwrap()
                .broadcast_add(&b.reshape((1, (), 1, 1)).unwrap())
                .unwrap();
            let frozen = conv2d(
                x.as_tensor(),
                &weight,
                Some(&b),
                padding,
                stride,
                dilation,
                groups,
            )
            .unwrap();
            assert!(max_diff(&plain, &frozen) < 1e-5);
            let target = ramp(plain.dims(), 3.0);
            let gf = (frozen * &target)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let grad_x = gf.get(x.as_tensor()).unwrap();
            assert_eq!(grad_x.dims(), x.dims());
            assert!(gf.get(&weight).is_none());
            let v = Tensor::randn(0f32, 1.0, x.dims(), &Device::Cpu).unwrap();
            let lhs: f32 = (grad_x * &v)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            let conv_v = v
                .conv2d(&weight, padding, stride, dilation, groups)
                .unwrap();
            let rhs: f32 = (conv_v * &target)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(
                (lhs - rhs).abs() < 1e-3 * rhs.abs().max(1.0),
                "case {case:?}: {lhs} vs {rhs}"
            );
            if h == w {
                let gp = (plain * &target)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let d = max_diff(gp.get(x.as_tensor()).unwrap(), grad_x);
                assert!(d < 1e-4, "case {case:?}: input gradients differ by {d}");
            }
        }
    }

    /// With a trainable weight: same gradients as candle's backward on square
    /// inputs; on a 9x12 input (where candle's backward fails) the weight
    /// gradient satisfies `<grad_w, V> = <target, conv(x, V)>`.
    #[test]
    fn trainable_conv2d_has_exact_gradients_for_any_size() {
        for (h, w, groups) in [(9, 9, 1), (8, 8, 2), (9, 12, 1), (9, 12, 2)] {
            let x = Var::from_tensor(&ramp(&[2, 4, h, w], 2.0)).unwrap();
            let weight = Var::from_tensor(&ramp(&[6, 4 / groups, 3, 3], 1.0)).unwrap();
            let bias = Var::from_tensor(&ramp(&[6], 1.0)).unwrap();
            let y = conv2d(
                x.as_tensor(),
                weight.as_tensor(),
                Some(bias.as_tensor()),
                1,
                2,
                1,
                groups,
            )
            .unwrap();
            let target = ramp(y.dims(), 3.0);
            let grads = (&y * &target)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gw = grads.get(weight.as_tensor()).unwrap();
            let gx = grads.get(x.as_tensor()).unwrap();
            let gb = grads.get(bias.as_tensor()).unwrap();
            let expected_gb = target.sum((0, 2, 3)).unwrap();
            assert!(max_diff(gb, &expected_gb) < 1e-4);
            let v = Tensor::randn(0f32, 1.0, weight.dims(), &Device::Cpu).unwrap();
            let lhs: f32 = (gw * &v).unwrap().sum_all().unwrap().to_scalar().unwrap();
            let conv_v = x.as_tensor().detach().conv2d(&v, 1, 2, 1, groups).unwrap();
            let rhs: f32 = (conv_v * &target)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(
                (lhs - rhs).abs() < 1e-3 * rhs.abs().max(1.0),
                "{h}x{w}: {lhs} vs {rhs}"
            );
            if h == w {
                let plain = x
                    .as_tensor()
                    .conv2d(weight.as_tensor(), 1, 2, 1, groups)
                    .unwrap()
                    .broadcast_add(&bias.as_tensor().reshape((1, (), 1, 1)).unwrap())
                    .unwrap();
                assert!(max_diff(&plain, &y) < 1e-5);
                let gp = (plain * &target)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                assert!(max_diff(gp.get(weight.as_tensor()).unwrap(), gw) < 1e-4);
                assert!(max_diff(gp.get(x.as_tensor()).unwrap(), gx) < 1e-4);
            }
        }
    }

    #[test]
    fn trainable_weights_keep_their_gradient() {
        let x = Var::from_tensor(&ramp(&[5, 7], 2.0)).unwrap();
        let w = Var::from_tensor(&ramp(&[3, 7], 1.0)).unwrap();
        let y = linear(x.as_tensor(), w.as_tensor(), None).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(w.as_tensor()).is_some());
    }

    #[test]
    fn pointwise_matches_plain_op_without_weight_gradient() {
        let x = Var::from_tensor(&ramp(&[2, 5, 6], 2.0)).unwrap();
        let w = ramp(&[3, 5], 1.0);
        let b = ramp(&[3], 1.0);
        let plain = w
            .broadcast_left(2)
            .unwrap()
            .matmul(x.as_tensor())
            .unwrap()
            .broadcast_add(&b.reshape((1, 3, 1)).unwrap())
            .unwrap();
        let frozen = pointwise(x.as_tensor(), &w, Some(&b)).unwrap();
        assert!(max_diff(&plain, &frozen) < 1e-6);
        let target = ramp(&[2, 3, 6], 3.0);
        let gp = (plain * &target)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gf = (frozen * &target)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(
            max_diff(
                gp.get(x.as_tensor()).unwrap(),
                gf.get(x.as_tensor()).unwrap()
            ) < 1e-5
        );
        let weight_shaped = |g: &candle_core::backprop::GradStore| {
            g.get_ids()
                .filter_map(|id| g.get_id(*id))
                .filter(|t| t.dims().ends_with(&[3, 5]))
                .count()
        };
        assert!(weight_shaped(&gp) > 0);
        assert_eq!(weight_shaped(&gf), 0);
    }

    #[test]
    fn inference_path_is_the_plain_op() {
        let x = ramp(&[2, 4], 1.0);
        let w = ramp(&[3, 4], 1.0);
        let y = linear(&x, &w, None).unwrap();
        assert!(!y.track_op());
        assert!(max_diff(&y, &x.matmul(&w.t().unwrap()).unwrap()) < 1e-7);
    }
}
