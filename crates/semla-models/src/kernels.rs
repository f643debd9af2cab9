//! CPU inference kernels that candle runs serially or with poor parallel
//! efficiency on few cores: multi-head attention with one task per (image, head),
//! and an element-wise map split across threads.
//!
//! Forward only: these are for inference (`Kernels::Fused` in CLIP); training
//! uses candle's composed ops, which backpropagate.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};

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
    std::thread::scope(|scope| {
        let mut chunks = out.chunks_mut(per_thread).enumerate();
        // The calling thread takes the first chunk itself.
        let first = chunks.next();
        for (t, chunk) in chunks {
            let f = &f;
            scope.spawn(move || f(t * per_thread, chunk));
        }
        if let Some((_, chunk)) = first {
            f(0, chunk);
        }
    });
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
/// inside one gemm call, well across heads.
pub struct FusedAttention<'a> {
    /// Multiplies the scores before the softmax (`d^-1/2`).
    pub scale: f32,
    /// Added to the scaled scores, `[H, L, L]`; none for plain attention.
    pub bias: Option<&'a [f32]>,
}

impl CustomOp3 for FusedAttention<'_> {
    fn name(&self) -> &'static str {
        "fused-attention"
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
        let (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) = (q, k, v) else {
            candle_core::bail!("fused-attention: only f32 is supported")
        };
        let dims = q_layout.shape().dims4()?;
        if k_layout.shape().dims4()? != dims || v_layout.shape().dims4()? != dims {
            candle_core::bail!("fused-attention: q, k and v must have one shape")
        }
        let slice = |data: &'_ [f32], layout: &Layout| -> Result<std::ops::Range<usize>> {
            layout
                .contiguous_offsets()
                .map(|(start, end)| start..end)
                .ok_or_else(|| {
                    candle_core::Error::Msg("fused-attention: inputs must be contiguous".into())
                })
                .and_then(|r| {
                    if r.end <= data.len() {
                        Ok(r)
                    } else {
                        candle_core::bail!("fused-attention: storage shorter than its layout")
                    }
                })
        };
        let (q, k, v) = (
            &q[slice(q, q_layout)?],
            &k[slice(k, k_layout)?],
            &v[slice(v, v_layout)?],
        );
        let (n, heads, len, head_dim) = dims;
        if let Some(bias) = self.bias
            && bias.len() != heads * len * len
        {
            candle_core::bail!(
                "fused-attention: a bias of {} values for {heads} heads of {len} tokens",
                bias.len()
            )
        }
        let width = heads * head_dim;
        let mut out = vec![0f32; n * len * width];
        let tasks = n * heads;
        let threads = candle_core::utils::get_num_threads()
            .max(1)
            .min(tasks.max(1));
        let per_thread = tasks.div_ceil(threads.max(1));
        // Each task writes the columns `h*d..(h+1)*d` of the rows of image `n`:
        // disjoint regions of `out`, shared through its address.
        let out_addr = out.as_mut_ptr() as usize;
        let (scale, bias) = (self.scale, self.bias);
        let run = |first_task: usize, last_task: usize| {
            let mut scores = vec![0f32; len * len];
            for task in first_task..last_task {
                let (image, head) = (task / heads, task % heads);
                let at = (image * heads + head) * len * head_dim;
                let (qh, kh, vh) = (
                    &q[at..at + len * head_dim],
                    &k[at..at + len * head_dim],
                    &v[at..at + len * head_dim],
                );
                // scores[i, j] = sum_c q[i, c] k[j, c]
                // SAFETY: all pointers address buffers of the sizes the strides imply
                // (`scores` L x L, `qh` and `kh` L x d), and nothing else writes `scores`.
                unsafe {
                    gemm::gemm(
                        len,
                        len,
                        head_dim,
                        scores.as_mut_ptr(),
                        1,
                        len as isize,
                        false,
                        qh.as_ptr(),
                        1,
                        head_dim as isize,
                        kh.as_ptr(),
                        head_dim as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                // With a bias the scores are scaled and biased first; without one
                // the scale goes inside the exponential (the same softmax).
                let row_scale = match bias {
                    Some(bias) => {
                        let bias = &bias[head * len * len..(head + 1) * len * len];
                        for (s, &b) in scores.iter_mut().zip(bias) {
                            *s = *s * scale + b;
                        }
                        1.0
                    }
                    None => scale,
                };
                for row in scores.chunks_mut(len) {
                    let max = row.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
                    let mut sum = 0f32;
                    for s in row.iter_mut() {
                        *s = ((*s - max) * row_scale).exp();
                        sum += *s;
                    }
                    let inv = 1.0 / sum;
                    row.iter_mut().for_each(|s| *s *= inv);
                }
                // out[image, i, head*d + c] = sum_j p[i, j] v[j, c]
                // SAFETY: the destination block (rows of image `image`, columns of
                // head `head`) lies inside `out` and belongs to this task alone.
                unsafe {
                    let dst = (out_addr as *mut f32).add(image * len * width + head * head_dim);
                    gemm::gemm(
                        len,
                        head_dim,
                        len,
                        dst,
                        1,
                        width as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        len as isize,
                        vh.as_ptr(),
                        1,
                        head_dim as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
        };
        if threads <= 1 {
            run(0, tasks);
        } else {
            std::thread::scope(|scope| {
                for t in 1..threads {
                    let run = &run;
                    let first = t * per_thread;
                    let last = ((t + 1) * per_thread).min(tasks);
                    if first < last {
                        scope.spawn(move || run(first, last));
                    }
                }
                run(0, per_thread.min(tasks));
            });
        }
        Ok((CpuStorage::F32(out), Shape::from((n, len, width))))
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
}
