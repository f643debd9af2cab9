//! Depthwise convolution as one custom op.
//!
//! candle's grouped convolution runs one convolution per group (672 of them
//! for some EfficientNet blocks), which is far too slow; this op computes a
//! depthwise convolution directly, in parallel over images x channels, and
//! implements its backward (gradients of the input and of the kernel) so the
//! backbone stays trainable.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// Depthwise convolution without padding: `x` `[N, C, H, W]` (already padded),
/// `kernel` `[C, 1, k, k]` -> `[N, C, (H - k) / s + 1, (W - k) / s + 1]`.
pub fn depthwise_conv2d(x: &Tensor, kernel: &Tensor, stride: usize) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    let (kc, one, k, k2) = kernel.dims4()?;
    if kc != c || one != 1 || k != k2 {
        candle_core::bail!(
            "depthwise_conv2d: kernel {:?} does not fit input {:?} (expected [{c}, 1, k, k])",
            kernel.dims(),
            x.dims()
        )
    }
    if h < k || w < k || stride == 0 {
        candle_core::bail!("depthwise_conv2d: input {h}x{w} smaller than kernel {k} or stride 0")
    }
    if x.dtype() != DType::F32 || kernel.dtype() != DType::F32 {
        candle_core::bail!("depthwise_conv2d: only f32 is supported")
    }
    x.contiguous()?
        .apply_op2(&kernel.contiguous()?, DepthwiseConv { stride })
}

struct DepthwiseConv {
    stride: usize,
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
    oh: usize,
    ow: usize,
}

impl Geom {
    fn new(x_dims: &[usize], k: usize, s: usize) -> Self {
        let (n, c, h, w) = (x_dims[0], x_dims[1], x_dims[2], x_dims[3]);
        Self {
            n,
            c,
            h,
            w,
            k,
            s,
            oh: (h - k) / s + 1,
            ow: (w - k) / s + 1,
        }
    }
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        // `depthwise_conv2d` makes both operands contiguous before the op.
        None => candle_core::bail!("depthwise-conv2d: non-contiguous operand"),
    }
}

/// Runs `f(plane_index, plane_output)` over `planes` chunks of `out` of length
/// `plane_len` each, on candle's number of threads.
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
    std::thread::scope(|scope| {
        for (t, block) in out.chunks_mut(per_thread * plane_len).enumerate() {
            let f = &f;
            scope.spawn(move || {
                for (i, chunk) in block.chunks_mut(plane_len).enumerate() {
                    f(t * per_thread + i, chunk);
                }
            });
        }
    });
}

fn forward(x: &[f32], kernel: &[f32], g: Geom) -> Vec<f32> {
    let mut out = vec![0f32; g.n * g.c * g.oh * g.ow];
    for_each_plane(&mut out, g.oh * g.ow, |p, plane| {
        let ch = p % g.c;
        let xin = &x[p * g.h * g.w..(p + 1) * g.h * g.w];
        let ker = &kernel[ch * g.k * g.k..(ch + 1) * g.k * g.k];
        for i in 0..g.k {
            for j in 0..g.k {
                let wv = ker[i * g.k + j];
                for oy in 0..g.oh {
                    let row = &xin[(oy * g.s + i) * g.w + j..];
                    let orow = &mut plane[oy * g.ow..(oy + 1) * g.ow];
                    if g.s == 1 {
                        for (o, &v) in orow.iter_mut().zip(&row[..g.ow]) {
                            *o += wv * v;
                        }
                    } else {
                        for (ox, o) in orow.iter_mut().enumerate() {
                            *o += wv * row[ox * g.s];
                        }
                    }
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
                for oy in 0..g.oh {
                    let base = (oy * g.s + i) * g.w + j;
                    let grow = &gp[oy * g.ow..(oy + 1) * g.ow];
                    for (ox, &gv) in grow.iter().enumerate() {
                        plane[base + ox * g.s] += wv * gv;
                    }
                }
            }
        }
    });
    out
}

/// Gradient of the kernel: correlation of input and output gradient, summed over the batch.
fn grad_kernel(grad: &[f32], x: &[f32], g: Geom) -> Vec<f32> {
    let mut out = vec![0f32; g.c * g.k * g.k];
    for_each_plane(&mut out, g.k * g.k, |ch, ker| {
        for n in 0..g.n {
            let p = n * g.c + ch;
            let xin = &x[p * g.h * g.w..(p + 1) * g.h * g.w];
            let gp = &grad[p * g.oh * g.ow..(p + 1) * g.oh * g.ow];
            for i in 0..g.k {
                for j in 0..g.k {
                    let mut acc = 0f32;
                    for oy in 0..g.oh {
                        let row = &xin[(oy * g.s + i) * g.w + j..];
                        let grow = &gp[oy * g.ow..(oy + 1) * g.ow];
                        for (ox, &gv) in grow.iter().enumerate() {
                            acc += gv * row[ox * g.s];
                        }
                    }
                    ker[i * g.k + j] += acc;
                }
            }
        }
    });
    out
}

impl CustomOp2 for DepthwiseConv {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1)?;
        let kernel = contiguous_f32(s2, l2)?;
        let g = Geom::new(l1.dims(), l2.dims()[2], self.stride);
        let out = forward(x, kernel, g);
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.c, g.oh, g.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = Geom::new(x.dims(), kernel.dim(2)?, self.stride);
        let grad_v = grad.flatten_all()?.to_vec1::<f32>()?;
        let kernel_v = kernel.flatten_all()?.to_vec1::<f32>()?;
        let x_v = x.flatten_all()?.to_vec1::<f32>()?;
        let gx = Tensor::from_vec(grad_input(&grad_v, &kernel_v, g), x.dims(), x.device())?;
        let gk = Tensor::from_vec(
            grad_kernel(&grad_v, &x_v, g),
            kernel.dims(),
            kernel.device(),
        )?;
        Ok((Some(gx), Some(gk)))
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

    #[test]
    fn matches_candle_grouped_conv_forward_and_backward() {
        // candle's own backward only handles strided sizes with (H - k) % s == 0
        for (k, s, h, w) in [(3, 1, 7, 6), (3, 2, 9, 7), (5, 2, 9, 11), (5, 1, 6, 6)] {
            let c = 3;
            let x = Var::from_tensor(&random(&[2, c, h, w], 1)).unwrap();
            let ker = Var::from_tensor(&random(&[c, 1, k, k], 2)).unwrap();
            let probe = random(&[2, c, (h - k) / s + 1, (w - k) / s + 1], 3);

            let ours = depthwise_conv2d(x.as_tensor(), ker.as_tensor(), s).unwrap();
            let theirs = x.as_tensor().conv2d(ker.as_tensor(), 0, s, 1, c).unwrap();
            let diff = (&ours - &theirs)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5, "forward k={k} s={s}: {diff}");

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
            for v in [&x, &ker] {
                let a = g1.get(v.as_tensor()).unwrap();
                let b = g2.get(v.as_tensor()).unwrap();
                let d = (a - b)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(d < 1e-5, "backward k={k} s={s}: {d}");
            }
        }
    }
}
