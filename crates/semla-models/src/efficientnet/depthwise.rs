//! Depthwise convolution as one custom op.
//!
//! candle's grouped convolution runs one convolution per group (672 of them
//! for some EfficientNet blocks), and its zero padding copies the tensor
//! twice; this op computes a zero-padded depthwise convolution plus bias
//! directly, in parallel over images x channels, and implements its backward
//! (gradients of the input, the kernel and the bias) so the backbone stays
//! trainable.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use semla_adapters::host::contiguous_f32;

/// The op's name in errors.
const OP: &str = "depthwise-conv2d";

/// Zero padding on each side: `[top, bottom, left, right]`.
pub type Padding = [usize; 4];

/// Depthwise convolution with zero padding and bias:
/// `x` `[N, C, H, W]`, `kernel` `[C, 1, k, k]`, `bias` `[C]` ->
/// `[N, C, (H + top + bottom - k) / s + 1, (W + left + right - k) / s + 1]`.
pub fn depthwise_conv2d(
    x: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    stride: usize,
    pad: Padding,
) -> Result<Tensor> {
    depthwise_op(
        x,
        kernel,
        bias,
        DepthwiseConv {
            stride,
            pad,
            relu6: false,
        },
    )
}

/// [`depthwise_conv2d`] followed by ReLU6 (`min(max(y, 0), 6)`) in the same
/// pass; the backward lets the gradient through where `0 < y < 6`.
pub fn depthwise_conv2d_relu6(
    x: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    stride: usize,
    pad: Padding,
) -> Result<Tensor> {
    depthwise_op(
        x,
        kernel,
        bias,
        DepthwiseConv {
            stride,
            pad,
            relu6: true,
        },
    )
}

fn depthwise_op(x: &Tensor, kernel: &Tensor, bias: &Tensor, op: DepthwiseConv) -> Result<Tensor> {
    let (stride, pad) = (op.stride, op.pad);
    let (_, c, h, w) = x.dims4()?;
    let (kc, one, k, k2) = kernel.dims4()?;
    if kc != c || one != 1 || k != k2 || bias.dims() != [c] {
        candle_core::bail!(
            "depthwise_conv2d: kernel {:?} / bias {:?} do not fit input {:?} (expected [{c}, 1, k, k] and [{c}])",
            kernel.dims(),
            bias.dims(),
            x.dims()
        )
    }
    if h + pad[0] + pad[1] < k
        || w + pad[2] + pad[3] < k
        || stride == 0
        || pad.iter().any(|&p| p >= k)
    {
        candle_core::bail!(
            "depthwise_conv2d: input {h}x{w} with padding {pad:?} does not fit kernel {k} / stride {stride}"
        )
    }
    if x.dtype() != DType::F32 || kernel.dtype() != DType::F32 || bias.dtype() != DType::F32 {
        candle_core::bail!("depthwise_conv2d: only f32 is supported")
    }
    if !x.device().is_cpu() {
        return composed(x, kernel, bias, op);
    }
    x.contiguous()?
        .apply_op3(&kernel.contiguous()?, &bias.contiguous()?, op)
}

/// The same layer from candle's ops (a grouped convolution), for devices the
/// CPU kernel does not run on.
fn composed(x: &Tensor, kernel: &Tensor, bias: &Tensor, op: DepthwiseConv) -> Result<Tensor> {
    let [top, bottom, left, right] = op.pad;
    let padded = x
        .pad_with_zeros(2, top, bottom)?
        .pad_with_zeros(3, left, right)?;
    let channels = x.dim(1)?;
    let y = padded
        .conv2d(kernel, 0, op.stride, 1, channels)?
        .broadcast_add(&bias.reshape((1, channels, 1, 1))?)?;
    if op.relu6 { y.clamp(0f32, 6f32) } else { Ok(y) }
}

#[derive(Clone, Copy, Debug)]
struct DepthwiseConv {
    stride: usize,
    pad: Padding,
    relu6: bool,
}

/// Geometry of one call, from the input and kernel shapes.
#[derive(Clone, Copy)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    top: usize,
    left: usize,
    oh: usize,
    ow: usize,
}

impl Geom {
    fn new(x_dims: &[usize], k: usize, s: usize, pad: Padding) -> Self {
        let (n, c, h, w) = (x_dims[0], x_dims[1], x_dims[2], x_dims[3]);
        let oh = (h + pad[0] + pad[1] - k) / s + 1;
        let ow = (w + pad[2] + pad[3] - k) / s + 1;
        Self {
            n,
            c,
            h,
            w,
            k,
            s,
            top: pad[0],
            left: pad[2],
            oh,
            ow,
        }
    }

    /// Output positions `o` in `0..out` whose input `o * s + tap - pad` lies in `0..size`.
    fn valid(&self, tap: usize, pad: usize, size: usize, out: usize) -> std::ops::Range<usize> {
        let lo = if pad > tap {
            (pad - tap).div_ceil(self.s)
        } else {
            0
        };
        let hi = if size + pad > tap {
            ((size + pad - tap - 1) / self.s + 1).min(out)
        } else {
            0
        };
        lo..hi.max(lo)
    }

    /// Calls `f(oy, iy, ox_range, ix0)` for every output row of tap `(i, j)`,
    /// with `ix0` the input column of the first output column of the range.
    fn for_tap(
        &self,
        i: usize,
        j: usize,
        mut f: impl FnMut(usize, usize, std::ops::Range<usize>, usize),
    ) {
        let cols = self.valid(j, self.left, self.w, self.ow);
        if cols.is_empty() {
            return;
        }
        let ix0 = cols.start * self.s + j - self.left;
        for oy in self.valid(i, self.top, self.h, self.oh) {
            let iy = oy * self.s + i - self.top;
            f(oy, iy, cols.clone(), ix0);
        }
    }
}

/// Runs `f(plane_index, plane_output)` over the chunks of `out` of length
/// `plane_len`, on candle's number of threads.
fn for_each_plane(out: &mut [f32], plane_len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let threads = candle_core::utils::get_num_threads().max(1);
    let planes = out.len() / plane_len.max(1);
    if threads == 1 || planes < 2 {
        for (p, chunk) in out.chunks_mut(plane_len).enumerate() {
            f(p, chunk);
        }
        return;
    }
    let per_thread = planes.div_ceil(threads);
    // On rayon's pool, shared with gemm (see `kernels::parallel_chunks`).
    use rayon::prelude::*;
    out.par_chunks_mut(per_thread * plane_len)
        .enumerate()
        .for_each(|(t, block)| {
            for (i, chunk) in block.chunks_mut(plane_len).enumerate() {
                f(t * per_thread + i, chunk);
            }
        });
}

fn forward(x: &[f32], kernel: &[f32], bias: &[f32], g: Geom, relu6: bool) -> Vec<f32> {
    let mut out = vec![0f32; g.n * g.c * g.oh * g.ow];
    // valid output columns and first input column of each kernel column
    let cols: Vec<(std::ops::Range<usize>, usize)> = (0..g.k)
        .map(|j| {
            let r = g.valid(j, g.left, g.w, g.ow);
            let ix0 = if r.is_empty() {
                0
            } else {
                r.start * g.s + j - g.left
            };
            (r, ix0)
        })
        .collect();
    for_each_plane(&mut out, g.oh * g.ow, |p, plane| {
        let ch = p % g.c;
        plane.fill(bias[ch]);
        let xin = &x[p * g.h * g.w..(p + 1) * g.h * g.w];
        let ker = &kernel[ch * g.k * g.k..(ch + 1) * g.k * g.k];
        // one output row at a time, so that it stays in L1 across the k*k taps
        for (oy, orow) in plane.chunks_mut(g.ow).enumerate() {
            for i in 0..g.k {
                let Some(iy) = (oy * g.s + i).checked_sub(g.top).filter(|&iy| iy < g.h) else {
                    continue;
                };
                let xrow = &xin[iy * g.w..(iy + 1) * g.w];
                for (j, (range, ix0)) in cols.iter().enumerate() {
                    if range.is_empty() {
                        continue;
                    }
                    let wv = ker[i * g.k + j];
                    let o = &mut orow[range.clone()];
                    if g.s == 1 {
                        for (o, &v) in o.iter_mut().zip(&xrow[*ix0..]) {
                            *o += wv * v;
                        }
                    } else {
                        for (o, &v) in o.iter_mut().zip(xrow[*ix0..].iter().step_by(g.s)) {
                            *o += wv * v;
                        }
                    }
                }
            }
            if relu6 {
                for o in orow.iter_mut() {
                    *o = o.clamp(0.0, 6.0);
                }
            }
        }
    });
    out
}

/// Gradient of the input: scatter each output gradient back through the kernel.
fn grad_input(grad: &[f32], kernel: &[f32], g: Geom) -> Vec<f32> {
    let mut out = vec![0f32; g.n * g.c * g.h * g.w];
    for_each_plane(&mut out, g.h * g.w, |p, plane| {
        let ch = p % g.c;
        let gp = &grad[p * g.oh * g.ow..(p + 1) * g.oh * g.ow];
        let ker = &kernel[ch * g.k * g.k..(ch + 1) * g.k * g.k];
        for i in 0..g.k {
            for j in 0..g.k {
                let wv = ker[i * g.k + j];
                g.for_tap(i, j, |oy, iy, cols, ix0| {
                    let grow = &gp[oy * g.ow + cols.start..oy * g.ow + cols.end];
                    let base = iy * g.w + ix0;
                    for (t, &gv) in grow.iter().enumerate() {
                        plane[base + t * g.s] += wv * gv;
                    }
                });
            }
        }
    });
    out
}

/// Gradient of the kernel (correlation of input and output gradient) and of
/// the bias (sum of the output gradient), summed over the batch: `[C, k*k + 1]`.
fn grad_kernel_bias(grad: &[f32], x: &[f32], g: Geom) -> Vec<f32> {
    let kk = g.k * g.k;
    let mut out = vec![0f32; g.c * (kk + 1)];
    for_each_plane(&mut out, kk + 1, |ch, acc| {
        for n in 0..g.n {
            let p = n * g.c + ch;
            let xin = &x[p * g.h * g.w..(p + 1) * g.h * g.w];
            let gp = &grad[p * g.oh * g.ow..(p + 1) * g.oh * g.ow];
            for i in 0..g.k {
                for j in 0..g.k {
                    let mut sum = 0f32;
                    g.for_tap(i, j, |oy, iy, cols, ix0| {
                        let grow = &gp[oy * g.ow + cols.start..oy * g.ow + cols.end];
                        let row = &xin[iy * g.w + ix0..];
                        for (t, &gv) in grow.iter().enumerate() {
                            sum += gv * row[t * g.s];
                        }
                    });
                    acc[i * g.k + j] += sum;
                }
            }
            acc[kk] += gp.iter().sum::<f32>();
        }
    });
    out
}

impl CustomOp3 for DepthwiseConv {
    fn name(&self) -> &'static str {
        OP
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(OP, s1, l1)?;
        let kernel = contiguous_f32(OP, s2, l2)?;
        let bias = contiguous_f32(OP, s3, l3)?;
        let g = Geom::new(l1.dims(), l2.dims()[2], self.stride, self.pad);
        let out = forward(x, kernel, bias, g, self.relu6);
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.c, g.oh, g.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = Geom::new(x.dims(), kernel.dim(2)?, self.stride, self.pad);
        let grad = if self.relu6 {
            let pass = res.gt(0f32)?.mul(&res.lt(6f32)?)?.to_dtype(DType::F32)?;
            grad.mul(&pass)?
        } else {
            grad.clone()
        };
        let grad_v = grad.flatten_all()?.to_vec1::<f32>()?;
        let kernel_v = kernel.flatten_all()?.to_vec1::<f32>()?;
        let gx = Tensor::from_vec(grad_input(&grad_v, &kernel_v, g), x.dims(), x.device())?;
        // A frozen kernel and bias (plain tensors, no graph) need no gradient:
        // skip the reduction over the batch instead of computing and storing it.
        if !kernel.track_op() && !bias.track_op() {
            return Ok((Some(gx), None, None));
        }
        let x_v = x.flatten_all()?.to_vec1::<f32>()?;
        let kb = Tensor::from_vec(
            grad_kernel_bias(&grad_v, &x_v, g),
            (g.c, g.k * g.k + 1),
            x.device(),
        )?;
        let gk = kb.narrow(1, 0, g.k * g.k)?.reshape(kernel.dims())?;
        let gb = kb.narrow(1, g.k * g.k, 1)?.reshape(bias.dims())?;
        Ok((Some(gx), Some(gk), Some(gb)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        // small deterministic LCG so the test needs no RNG crate
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    use semla_test_support::max_abs_diff as max_diff;

    /// The other-device fallback is the CPU kernel's layer, ReLU6 included.
    #[test]
    fn composed_fallback_equals_the_kernel() {
        let x = random(&[2, 3, 9, 8], 5);
        let ker = random(&[3, 1, 3, 3], 6);
        let bias = random(&[3], 7);
        for relu6 in [false, true] {
            let op = DepthwiseConv {
                stride: 2,
                pad: [0, 1, 1, 1],
                relu6,
            };
            let kernel = depthwise_op(&(&x * 20.0).unwrap(), &ker, &bias, op).unwrap();
            let fallback = composed(&(&x * 20.0).unwrap(), &ker, &bias, op).unwrap();
            assert_eq!(kernel.dims(), fallback.dims());
            assert!(max_diff(&kernel, &fallback) < 1e-5, "relu6 {relu6}");
        }
    }

    /// Against candle's grouped convolution on an explicitly padded input
    /// (candle's own backward only handles strided sizes with (H - k) % s == 0).
    #[test]
    fn matches_candle_grouped_conv_forward_and_backward() {
        for (k, s, h, w, pad) in [
            (3, 1, 7, 6, [1, 1, 1, 1]),
            (3, 2, 8, 6, [0, 1, 0, 1]),
            (5, 2, 8, 10, [1, 2, 1, 2]),
            (5, 2, 9, 11, [2, 2, 2, 2]),
            (5, 1, 6, 6, [2, 2, 2, 2]),
            (3, 1, 5, 5, [0, 0, 0, 0]),
        ] {
            let c = 3;
            let x = Var::from_tensor(&random(&[2, c, h, w], 1)).unwrap();
            let ker = Var::from_tensor(&random(&[c, 1, k, k], 2)).unwrap();
            let bias = Var::from_tensor(&random(&[c], 4)).unwrap();

            let ours =
                depthwise_conv2d(x.as_tensor(), ker.as_tensor(), bias.as_tensor(), s, pad).unwrap();
            let padded = x
                .pad_with_zeros(2, pad[0], pad[1])
                .unwrap()
                .pad_with_zeros(3, pad[2], pad[3])
                .unwrap();
            let theirs = padded
                .conv2d(ker.as_tensor(), 0, s, 1, c)
                .unwrap()
                .broadcast_add(&bias.reshape((1, c, 1, 1)).unwrap())
                .unwrap();
            assert!(
                max_diff(&ours, &theirs) < 1e-5,
                "forward k={k} s={s} pad={pad:?}"
            );

            let probe = random(ours.dims(), 3);
            let g1 = (ours * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g2 = (theirs * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [&x, &ker, &bias] {
                let d = max_diff(
                    g1.get(v.as_tensor()).unwrap(),
                    g2.get(v.as_tensor()).unwrap(),
                );
                assert!(d < 1e-5, "backward k={k} s={s} pad={pad:?}: {d}");
            }
        }
    }

    #[test]
    fn frozen_kernel_and_bias_store_no_gradient() {
        let c = 3;
        let x = Var::from_tensor(&random(&[1, c, 7, 7], 5)).unwrap();
        let ker = random(&[c, 1, 3, 3], 6);
        let bias = random(&[c], 7);
        let y = depthwise_conv2d_relu6(x.as_tensor(), &ker, &bias, 1, [1, 1, 1, 1]).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(
            grads.get(x.as_tensor()).is_some(),
            "the input still gets its gradient"
        );
        assert!(
            grads.get(&ker).is_none(),
            "a frozen kernel must not store a gradient"
        );
        assert!(
            grads.get(&bias).is_none(),
            "a frozen bias must not store a gradient"
        );
    }
}
