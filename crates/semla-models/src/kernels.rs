//! CPU inference kernels that candle runs serially or with poor parallel
//! efficiency on few cores: multi-head attention with one task per (image, head),
//! and an element-wise map split across threads.
//!
//! [`FusedAttention`] is forward only (inference); [`PackedAttention`] has
//! its own backward pass and serves training too.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use semla_adapters::host::{self, Strided};

/// Runs `f(first_index, chunk)` over `out` split into one contiguous chunk per
/// thread (chunk lengths are multiples of `granule`); serially when one thread
/// is configured (`RAYON_NUM_THREADS`, as candle) or the work is small.
pub fn parallel_chunks(out: &mut [f32], granule: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let threads = candle_core::utils::get_num_threads().max(1);
    let granule = granule.max(1);
    let units = out.len().div_ceil(granule);
    // Below about 64k elements a thread costs more than it saves.
    if threads == 1 || units < 2 || out.len() < 65_536 {
        f(0, out);
        return;
    }
    let per_thread = units.div_ceil(threads) * granule;
    // On rayon's pool, which gemm uses too: fresh OS threads would compete
    // with its workers (still spinning after a product) for the same cores.
    out.par_chunks_mut(per_thread)
        .enumerate()
        .for_each(|(t, chunk)| f(t * per_thread, chunk));
}

/// Runs `run(task, scratch)` for every task in `0..tasks`, split into one
/// contiguous range per configured thread, each with its own `scratch()`.
fn for_each_task<S>(
    tasks: usize,
    scratch: impl Fn() -> S + Sync,
    run: impl Fn(usize, &mut S) -> Result<()> + Sync,
) -> Result<()> {
    let threads = candle_core::utils::get_num_threads()
        .max(1)
        .min(tasks.max(1));
    let range = |first: usize, last: usize| -> Result<()> {
        let mut scratch = scratch();
        (first..last).try_for_each(|task| run(task, &mut scratch))
    };
    if threads <= 1 {
        return range(0, tasks);
    }
    let per_thread = tasks.div_ceil(threads);
    // On rayon's pool (see `parallel_chunks`); the first error wins.
    (0..threads)
        .into_par_iter()
        .map(|t| range(t * per_thread, ((t + 1) * per_thread).min(tasks)))
        .collect::<Vec<Result<()>>>()
        .into_iter()
        .collect()
}

/// A destination shared by the tasks of one kernel, each writing its own
/// disjoint elements (its address only, so that it can cross threads).
#[derive(Clone, Copy)]
struct SharedOut(usize);

impl SharedOut {
    fn new(out: &mut [f32]) -> Self {
        Self(out.as_mut_ptr() as usize)
    }

    /// The address of element `at`.
    ///
    /// # Safety
    /// `at` must lie inside the buffer this was made from, and the elements
    /// written from there must belong to the calling task alone.
    unsafe fn at(self, at: usize) -> *mut f32 {
        // SAFETY: the caller keeps `at` inside the buffer.
        unsafe { (self.0 as *mut f32).add(at) }
    }
}

/// What is added to one head's scaled scores before the softmax.
#[derive(Clone, Copy)]
enum ScoreMask<'a> {
    /// Nothing.
    None,
    /// An additive `[L, L]` bias (TinyViT's attention biases).
    Bias(&'a [f32]),
    /// `-inf` above the diagonal: token `i` attends to tokens `0..=i` (a text
    /// transformer's causal mask).
    Causal,
}

/// `probs = softmax(scale * q k^T + mask)` row by row for one head: `q`, `k`
/// `[L, d]`, `probs` `[L, L]` (dense).
fn head_probs(
    q: Strided<'_>,
    k: Strided<'_>,
    scale: f32,
    mask: ScoreMask<'_>,
    probs: &mut [f32],
) -> Result<()> {
    let len = q.rows;
    host::gemm_into(
        ATTENTION_OP,
        probs,
        q,
        k.t(),
        false,
        1.0,
        gemm::Parallelism::None,
    )?;
    // With a bias the scores are scaled and biased first; without one the
    // scale goes inside the exponential (the same softmax).
    let row_scale = match mask {
        ScoreMask::Bias(bias) => {
            for (s, &b) in probs.iter_mut().zip(bias) {
                *s = *s * scale + b;
            }
            1.0
        }
        ScoreMask::None | ScoreMask::Causal => scale,
    };
    for (i, row) in probs.chunks_mut(len.max(1)).enumerate() {
        // A causal row's masked part has probability exactly 0.
        let seen = match mask {
            ScoreMask::Causal => {
                let (seen, masked) = row.split_at_mut((i + 1).min(len));
                masked.fill(0.0);
                seen
            }
            _ => row,
        };
        let max = seen.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        crate::fastmath::map_in_place(seen, |s| crate::fastmath::exp((s - max) * row_scale));
        let inv = 1.0 / seen.iter().sum::<f32>();
        crate::fastmath::map_in_place(seen, |s| s * inv);
    }
    Ok(())
}

const ATTENTION_OP: &str = "fused-attention";

/// The forward of both attention ops: for every image and head,
/// `softmax(q k^T * scale + bias[head]) v` into the `[N, L, H * d]` rows the
/// output projection takes. `view(image, head, part)` is that head's q
/// (`part` 0), k (1) or v (2) as an `[L, d]` matrix; `bias` is `[H, L, L]`.
/// One task per (image, head) on rayon's pool, each with single-threaded
/// products: small per-head products parallelise badly inside one gemm call,
/// well across heads.
fn attend<'a>(
    op: &str,
    (n, len, heads, head_dim): (usize, usize, usize, usize),
    scale: f32,
    mask: ScoreMask<'_>,
    view: impl Fn(usize, usize, usize) -> Strided<'a> + Sync,
) -> Result<Vec<f32>> {
    let width = heads * head_dim;
    let mut out = vec![0f32; n * len * width];
    // Each task writes the columns `h*d..(h+1)*d` of the rows of image `n`:
    // disjoint regions of `out`.
    let shared = SharedOut::new(&mut out);
    for_each_task(
        n * heads,
        || vec![0f32; len * len],
        |task, probs| {
            let (image, head) = (task / heads, task % heads);
            // A bias holds one [L, L] block per head.
            let mask = match mask {
                ScoreMask::Bias(b) => ScoreMask::Bias(&b[head * len * len..(head + 1) * len * len]),
                other => other,
            };
            head_probs(
                view(image, head, 0),
                view(image, head, 1),
                scale,
                mask,
                probs,
            )?;
            // SAFETY: rows of image `image`, columns of head `head`: inside
            // `out` and this task's alone.
            unsafe {
                host::gemm_raw(
                    op,
                    shared.at(image * len * width + head * head_dim),
                    width,
                    Strided::dense(probs, len, len),
                    view(image, head, 2),
                    false,
                    1.0,
                    gemm::Parallelism::None,
                )
            }
        },
    )?;
    Ok(out)
}

/// Scaled dot-product attention, fused: for every image `n` and head `h`,
/// `softmax(q k^T * scale + bias[h]) v`, written straight into the
/// `[N, L, H * d]` layout the output projection takes (no transpose copy).
/// The optional additive `bias` `[H, L, L]` (row-major) is shared by all images
/// (TinyViT's per-offset attention biases, the same in every window).
///
/// Inputs `q`, `k`, `v`: `[N, H, L, d]` f32 (any strides within a head's rows
/// are fine as long as each is contiguous overall); output `[N, L, H * d]`.
/// The (image, head) pairs are spread over the threads, each running its own
/// single-threaded matrix products: small per-head products parallelise badly
/// inside one gemm call, well across heads. Inference only (no backward; see
/// [`PackedAttention`] for training).
pub struct FusedAttention<'a> {
    /// Multiplies the scores before the softmax (`d^-1/2`).
    pub scale: f32,
    /// Added to the scaled scores, `[H, L, L]`; none for plain attention.
    pub bias: Option<&'a [f32]>,
}

impl CustomOp3 for FusedAttention<'_> {
    fn name(&self) -> &'static str {
        ATTENTION_OP
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = q_layout.shape().dims4()?;
        if k_layout.shape().dims4()? != dims || v_layout.shape().dims4()? != dims {
            candle_core::bail!("fused-attention: q, k and v must have one shape")
        }
        let q = host::contiguous_f32(ATTENTION_OP, q, q_layout)?;
        let k = host::contiguous_f32(ATTENTION_OP, k, k_layout)?;
        let v = host::contiguous_f32(ATTENTION_OP, v, v_layout)?;
        let (n, heads, len, head_dim) = dims;
        if let Some(bias) = self.bias
            && bias.len() != heads * len * len
        {
            candle_core::bail!(
                "fused-attention: a bias of {} values for {heads} heads of {len} tokens",
                bias.len()
            )
        }
        let view = |image: usize, head: usize, part: usize| {
            let data = [q, k, v][part];
            let at = (image * heads + head) * len * head_dim;
            Strided::rows(data, at, len, head_dim, head_dim)
        };
        let out = attend(
            ATTENTION_OP,
            (n, len, heads, head_dim),
            self.scale,
            self.bias.map_or(ScoreMask::None, ScoreMask::Bias),
            view,
        )?;
        let width = heads * head_dim;
        Ok((CpuStorage::F32(out), Shape::from((n, len, width))))
    }
}

/// Multi-head attention straight from a packed q/k/v projection, forward and
/// backward: `qkv` `[N * L, 3 * H * d]` (the tokens of `N` sequences of `L`,
/// per token q, then k, then v, each head by head: the output of one linear
/// layer with the q, k and v weights stacked) -> `softmax(q k^T * scale) v`
/// as `[N * L, H * d]`, the layout the output projection takes.
///
/// No reshape, permute or split on either pass (each would be a graph node
/// and a pass over memory in the backward). The backward recomputes each
/// head's probabilities `P` (cheaper than keeping them) and writes the
/// gradient of `qkv` in the same packed layout:
/// `dV = P^T dO`, `dP = dO V^T`, `dS = P * (dP - rowsum(P * dP))`,
/// `dQ = scale dS K`, `dK = scale dS^T Q`.
pub struct PackedAttention {
    /// Heads `H`.
    pub heads: usize,
    /// Tokens per sequence `L`.
    pub len: usize,
    /// Multiplies the scores before the softmax (`d^-1/2`).
    pub scale: f32,
    /// Token `i` attends to tokens `0..=i` only (a text transformer's causal
    /// mask); the masked probabilities are exactly 0, so their gradients are too.
    pub causal: bool,
}

const PACKED_OP: &str = "packed-attention";

impl PackedAttention {
    fn mask(&self) -> ScoreMask<'static> {
        if self.causal {
            ScoreMask::Causal
        } else {
            ScoreMask::None
        }
    }

    /// `(N, L, H, d)` of a packed `[N * L, 3 H d]` input.
    fn dims(&self, shape: &Shape) -> Result<(usize, usize, usize, usize)> {
        let (rows, packed) = shape.dims2()?;
        let (heads, len) = (self.heads.max(1), self.len.max(1));
        if packed % (3 * heads) != 0 || rows % len != 0 {
            candle_core::bail!(
                "{PACKED_OP}: [{rows}, {packed}] is not sequences of {len} tokens with {heads} heads' q, k, v"
            )
        }
        Ok((rows / len, len, heads, packed / (3 * heads)))
    }
}

impl candle_core::CustomOp1 for PackedAttention {
    fn name(&self) -> &'static str {
        PACKED_OP
    }

    fn cpu_fwd(&self, qkv: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, len, heads, head_dim) = self.dims(layout.shape())?;
        let qkv = host::contiguous_f32(PACKED_OP, qkv, layout)?;
        let width = heads * head_dim;
        let view = |image: usize, head: usize, part: usize| {
            let at = image * len * 3 * width + part * width + head * head_dim;
            Strided::rows(qkv, at, len, head_dim, 3 * width)
        };
        let out = attend(
            PACKED_OP,
            (n, len, heads, head_dim),
            self.scale,
            self.mask(),
            view,
        )?;
        Ok((CpuStorage::F32(out), Shape::from((n * len, width))))
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (n, len, heads, head_dim) = self.dims(qkv.shape())?;
        let width = heads * head_dim;
        let (qkv_c, grad_c) = (qkv.contiguous()?, grad.contiguous()?);
        let values = host::read_f32(PACKED_OP, &qkv_c)?;
        let grad_out = host::read_f32(PACKED_OP, &grad_c)?;
        if grad_out.len() != n * len * width {
            candle_core::bail!("{PACKED_OP}: an output gradient of {:?}", grad.dims())
        }
        let (qkv_v, grad_v): (&[f32], &[f32]) = (&values, &grad_out);
        let mut grad_qkv = vec![0f32; n * len * 3 * width];
        let shared = SharedOut::new(&mut grad_qkv);
        let (scale, mask) = (self.scale, self.mask());
        let serial = gemm::Parallelism::None;
        for_each_task(
            n * heads,
            || (vec![0f32; len * len], vec![0f32; len * len]),
            |task, (probs, grad_probs)| {
                let (image, head) = (task / heads, task % heads);
                let packed_at =
                    |part: usize| image * len * 3 * width + part * width + head * head_dim;
                let view =
                    |part: usize| Strided::rows(qkv_v, packed_at(part), len, head_dim, 3 * width);
                let grad_o = Strided::rows(
                    grad_v,
                    image * len * width + head * head_dim,
                    len,
                    head_dim,
                    width,
                );
                head_probs(view(0), view(1), scale, mask, probs)?;
                host::gemm_into(
                    PACKED_OP,
                    grad_probs,
                    grad_o,
                    view(2).t(),
                    false,
                    1.0,
                    serial,
                )?;
                // dS = P * (dP - rowsum(P * dP)), in place of dP.
                for (p_row, g_row) in probs.chunks(len).zip(grad_probs.chunks_mut(len)) {
                    let dot: f32 = p_row.iter().zip(g_row.iter()).map(|(p, g)| p * g).sum();
                    for (g, &p) in g_row.iter_mut().zip(p_row) {
                        *g = p * (*g - dot);
                    }
                }
                let (probs, scores_grad) = (
                    Strided::dense(probs, len, len),
                    Strided::dense(grad_probs, len, len),
                );
                let stride = 3 * width;
                // SAFETY: each destination is this head's columns of q, k or v in
                // the image's rows of `grad_qkv`: inside it and this task's alone.
                unsafe {
                    let (dq, dk, dv) = (
                        shared.at(packed_at(0)),
                        shared.at(packed_at(1)),
                        shared.at(packed_at(2)),
                    );
                    host::gemm_raw(PACKED_OP, dv, stride, probs.t(), grad_o, false, 1.0, serial)?;
                    host::gemm_raw(
                        PACKED_OP,
                        dq,
                        stride,
                        scores_grad,
                        view(1),
                        false,
                        scale,
                        serial,
                    )?;
                    host::gemm_raw(
                        PACKED_OP,
                        dk,
                        stride,
                        scores_grad.t(),
                        view(0),
                        false,
                        scale,
                        serial,
                    )
                }
            },
        )?;
        Tensor::from_vec(grad_qkv, qkv.shape(), qkv.device()).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Device, Tensor};
    use semla_test_support::max_abs_diff;

    #[test]
    fn parallel_chunks_visits_every_element_once_with_its_offset() {
        // Large enough to be split across threads when more than one is configured.
        let mut out = vec![-1f32; 200_003];
        parallel_chunks(&mut out, 1024, |offset, chunk| {
            for (i, o) in chunk.iter_mut().enumerate() {
                *o = (offset + i) as f32;
            }
        });
        assert!(out.iter().enumerate().all(|(i, &v)| v == i as f32));
        let mut small = vec![0f32; 10];
        parallel_chunks(&mut small, 4, |offset, chunk| {
            assert_eq!(offset, 0);
            assert_eq!(chunk.len(), 10);
        });
    }

    #[test]
    fn fused_attention_equals_the_composed_formula() {
        let device = Device::Cpu;
        let (n, heads, len, d) = (2, 3, 37, 16);
        let q = Tensor::randn(0f32, 1.0, (n, heads, len, d), &device).unwrap();
        let k = Tensor::randn(0f32, 1.0, (n, heads, len, d), &device).unwrap();
        let v = Tensor::randn(0f32, 1.0, (n, heads, len, d), &device).unwrap();
        let scale = 0.25f32;
        let bias = Tensor::randn(0f32, 2.0, (heads, len, len), &device).unwrap();
        let bias_values = bias.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for with_bias in [false, true] {
            let op = FusedAttention {
                scale,
                bias: with_bias.then_some(bias_values.as_slice()),
            };
            let fused = q.apply_op3_no_bwd(&k, &v, &op).unwrap();
            let mut scores = (q.matmul(&k.t().unwrap()).unwrap() * scale as f64).unwrap();
            if with_bias {
                scores = scores.broadcast_add(&bias).unwrap();
            }
            let probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
            let want = probs
                .matmul(&v)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((n, len, heads * d))
                .unwrap();
            let diff = max_abs_diff(&fused, &want);
            assert!(diff < 1e-5, "bias {with_bias}: {diff}");
        }
        let op = FusedAttention { scale, bias: None };
        // Mismatched shapes are an error, not a panic.
        let short =
            Tensor::zeros((n, heads, len - 1, d), candle_core::DType::F32, &device).unwrap();
        assert!(q.apply_op3_no_bwd(&short, &v, &op).is_err());
        let wrong = FusedAttention {
            scale,
            bias: Some(&bias_values[1..]),
        };
        assert!(q.apply_op3_no_bwd(&k, &v, &wrong).is_err());
    }

    /// The packed op against candle's composed attention on the same packed
    /// projection, plain and causal (the additive `-inf` mask of a text
    /// tower): the output, and the gradient of the projection through
    /// candle's autograd of the composed formula.
    #[test]
    fn packed_attention_has_the_composed_value_and_gradient() {
        let device = Device::Cpu;
        let (n, heads, len, d) = (2, 3, 29, 8);
        let width = heads * d;
        let scale = 0.3f32;
        for causal in [false, true] {
            let qkv = candle_core::Var::from_tensor(
                &Tensor::randn(0f32, 1.0, (n * len, 3 * width), &device).unwrap(),
            )
            .unwrap();
            let op = PackedAttention {
                heads,
                len,
                scale,
                causal,
            };
            let fused = qkv.as_tensor().apply_op1(op).unwrap();
            let parts = qkv
                .as_tensor()
                .reshape((n, len, 3, heads, d))
                .unwrap()
                .permute((2, 0, 3, 1, 4))
                .unwrap();
            let (q, k, v) = (
                parts.get(0).unwrap(),
                parts.get(1).unwrap(),
                parts.get(2).unwrap(),
            );
            let mut scores = (q.matmul(&k.t().unwrap()).unwrap() * scale as f64).unwrap();
            if causal {
                let mask =
                    crate::layers::causal_mask(len, &device, candle_core::DType::F32).unwrap();
                scores = scores.broadcast_add(&mask).unwrap();
            }
            let probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
            let composed = probs
                .matmul(&v)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((n * len, width))
                .unwrap();
            assert!(max_abs_diff(&fused, &composed) < 1e-5, "causal {causal}");
            let target = Tensor::randn(0f32, 1.0, (n * len, width), &device).unwrap();
            let grad = |y: &Tensor| {
                let grads = (y * &target)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                grads.get(qkv.as_tensor()).unwrap().clone()
            };
            let (gf, gc) = (grad(&fused), grad(&composed));
            assert_eq!(gf.dims(), qkv.dims());
            let diff = max_abs_diff(&gf, &gc);
            assert!(
                diff < 1e-5,
                "causal {causal}: packed gradient differs by {diff}"
            );
        }
        // A packed width that is not 3 x heads x d, or rows that are not whole
        // sequences, are an error, not a panic.
        let odd = Tensor::zeros((4, 10), candle_core::DType::F32, &device).unwrap();
        assert!(
            odd.apply_op1(PackedAttention {
                heads: 3,
                len: 4,
                scale,
                causal: false,
            })
            .is_err()
        );
        let ragged = Tensor::zeros((5, 9), candle_core::DType::F32, &device).unwrap();
        assert!(
            ragged
                .apply_op1(PackedAttention {
                    heads: 3,
                    len: 4,
                    scale,
                    causal: true,
                })
                .is_err()
        );
    }
}
