//! The f32 values of CPU tensors, read in place by hand-written kernels.
//!
//! A custom op's forward pass receives candle's storage and layout
//! ([`contiguous_f32`], [`contiguous_f32_mut`]); its backward pass receives
//! tensors ([`read_f32`]). The kernels of the workspace read their operands
//! through these, so the checks (f32, contiguous, within the storage) are
//! written once.

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};

/// The contiguous f32 values a CPU storage holds under `layout`, or an error
/// naming the op `op`.
pub fn contiguous_f32<'a>(op: &str, storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: only f32 is supported")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: input must be contiguous")
    };
    data.get(start..end)
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: storage shorter than its layout")))
}

/// The same, writable (in-place ops).
pub fn contiguous_f32_mut<'a>(
    op: &str,
    storage: &'a mut CpuStorage,
    layout: &Layout,
) -> Result<&'a mut [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: only f32 is supported")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: input must be contiguous")
    };
    data.get_mut(start..end)
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: storage shorter than its layout")))
}

/// The values of a contiguous f32 CPU tensor, borrowed in place (a read lock
/// on its storage is held while this lives).
pub struct F32Values<'t> {
    storage: candle_core::StorageRef<'t>,
    range: std::ops::Range<usize>,
}

impl std::ops::Deref for F32Values<'_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match &*self.storage {
            // Checked to be in range when made (see `read_f32`).
            Storage::Cpu(CpuStorage::F32(data)) => &data[self.range.clone()],
            _ => &[],
        }
    }
}

/// Borrows the row-major values of `tensor` (f32, on the CPU, contiguous:
/// call `.contiguous()` first when it may not be), or an error naming `op`.
pub fn read_f32<'t>(op: &str, tensor: &'t Tensor) -> Result<F32Values<'t>> {
    let (storage, layout) = tensor.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("{op}: only CPU tensors are supported")
    };
    let CpuStorage::F32(data) = cpu else {
        candle_core::bail!("{op}: only f32 is supported")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: input must be contiguous")
    };
    if end > data.len() {
        candle_core::bail!("{op}: storage shorter than its layout")
    }
    Ok(F32Values {
        storage,
        range: start..end,
    })
}

/// How gemm splits one product: across candle's configured threads
/// (`RAYON_NUM_THREADS`), serially with one.
pub fn gemm_parallelism() -> gemm::Parallelism {
    let threads = candle_core::utils::get_num_threads();
    if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// Whether `tensor` is an f32 tensor on the CPU (what the kernels take).
pub fn is_cpu_f32(tensor: &Tensor) -> bool {
    tensor.device().is_cpu() && tensor.dtype() == candle_core::DType::F32
}

/// A strided matrix inside a slice: element `(i, j)` lies at
/// `offset + i * row_stride + j * col_stride`.
#[derive(Clone, Copy, Debug)]
pub struct Strided<'a> {
    /// The values the matrix lies in.
    pub data: &'a [f32],
    /// Index of element `(0, 0)`.
    pub offset: usize,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Distance between rows.
    pub row_stride: usize,
    /// Distance between columns.
    pub col_stride: usize,
}

impl<'a> Strided<'a> {
    /// A row-major `rows x cols` matrix starting at `offset`, rows `row_stride` apart.
    pub fn rows(
        data: &'a [f32],
        offset: usize,
        rows: usize,
        cols: usize,
        row_stride: usize,
    ) -> Self {
        Self {
            data,
            offset,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// A dense row-major `rows x cols` matrix (the whole of `data` from index 0).
    pub fn dense(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::rows(data, 0, rows, cols, cols)
    }

    /// The transpose (the same values, strides swapped).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Whether every element lies inside `data`.
    fn fits(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last = (self.rows - 1)
            .checked_mul(self.row_stride)
            .zip((self.cols - 1).checked_mul(self.col_stride))
            .and_then(|(r, c)| r.checked_add(c))
            .and_then(|rc| rc.checked_add(self.offset));
        last.is_some_and(|last| last < self.data.len())
    }
}

/// `dst = scale * lhs rhs`, or `dst += scale * lhs rhs` when `accumulate`, with
/// `dst` row-major `[lhs.rows, rhs.cols]` at `dst_row_stride` apart.
///
/// # Safety
/// `dst` must be valid for writes at `i * dst_row_stride + j` for every row `i`
/// of `lhs` and column `j` of `rhs`, and no one else may read or write those
/// elements during the call. The operands' bounds are checked.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_raw(
    op: &str,
    dst: *mut f32,
    dst_row_stride: usize,
    lhs: Strided<'_>,
    rhs: Strided<'_>,
    accumulate: bool,
    scale: f32,
    parallelism: gemm::Parallelism,
) -> Result<()> {
    if lhs.cols != rhs.rows {
        candle_core::bail!(
            "{op}: [{}, {}] x [{}, {}]",
            lhs.rows,
            lhs.cols,
            rhs.rows,
            rhs.cols
        )
    }
    if !lhs.fits() || !rhs.fits() {
        candle_core::bail!("{op}: a matrix operand reaches past its storage")
    }
    let (m, n, k) = (lhs.rows, rhs.cols, lhs.cols);
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                // SAFETY: the caller guarantees these elements are writable and ours.
                unsafe { std::ptr::write_bytes(dst.add(i * dst_row_stride), 0, n) };
            }
        }
        return Ok(());
    }
    // SAFETY: both operands were checked to lie inside their slices; the
    // destination is the caller's promise.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_row_stride as isize,
            accumulate,
            lhs.data.as_ptr().add(lhs.offset),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr().add(rhs.offset),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

/// [`gemm_raw`] into a dense row-major `dst` of exactly `[lhs.rows, rhs.cols]`.
pub fn gemm_into(
    op: &str,
    dst: &mut [f32],
    lhs: Strided<'_>,
    rhs: Strided<'_>,
    accumulate: bool,
    scale: f32,
    parallelism: gemm::Parallelism,
) -> Result<()> {
    if dst.len() != lhs.rows * rhs.cols {
        candle_core::bail!(
            "{op}: a destination of {} values for [{}, {}]",
            dst.len(),
            lhs.rows,
            rhs.cols
        )
    }
    // SAFETY: `dst` is exclusively borrowed and holds exactly the rows x cols written.
    unsafe {
        gemm_raw(
            op,
            dst.as_mut_ptr(),
            rhs.cols,
            lhs,
            rhs,
            accumulate,
            scale,
            parallelism,
        )
    }
}

/// `scale * lhs rhs` into a new dense row-major `[lhs.rows, rhs.cols]`, written
/// by gemm alone (no zero fill first: the buffer starts uninitialised and gemm,
/// which does not read a destination it is told not to, sets every element).
pub fn gemm_to_new(
    op: &str,
    lhs: Strided<'_>,
    rhs: Strided<'_>,
    scale: f32,
    parallelism: gemm::Parallelism,
) -> Result<Vec<f32>> {
    let len = lhs.rows * rhs.cols;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    // SAFETY: the spare capacity holds `len` elements; every one of them is
    // written by `gemm_raw` (zeros when the inner dimension is 0) before
    // `set_len` exposes them, and `gemm_raw` only writes through the pointer.
    unsafe {
        gemm_raw(
            op,
            out.spare_capacity_mut().as_mut_ptr().cast::<f32>(),
            rhs.cols,
            lhs,
            rhs,
            false,
            scale,
            parallelism,
        )?;
        out.set_len(len);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Products of strided views (a transpose, a column block of a wider
    /// matrix) against the sums written out, into new and accumulated
    /// destinations; operands reaching past their storage are refused.
    #[test]
    fn strided_products_equal_the_written_out_sums() {
        // lhs: columns 1..4 of a 2 x 5 matrix; rhs: the transpose of a 2 x 3.
        let wide: Vec<f32> = (0..10).map(|i| i as f32 - 3.0).collect();
        let small: Vec<f32> = (0..6).map(|i| 0.5 * i as f32 + 1.0).collect();
        let lhs = Strided::rows(&wide, 1, 2, 3, 5);
        let rhs = Strided::dense(&small, 2, 3).t();
        let want = |i: usize, j: usize| -> f32 {
            (0..3)
                .map(|k| wide[i * 5 + 1 + k] * small[j * 3 + k])
                .sum::<f32>()
                * 2.0
        };
        let fresh = gemm_to_new("test", lhs, rhs, 2.0, gemm::Parallelism::None).unwrap();
        let mut acc = vec![1f32; 4];
        gemm_into(
            "test",
            &mut acc,
            lhs,
            rhs,
            true,
            2.0,
            gemm::Parallelism::None,
        )
        .unwrap();
        for i in 0..2 {
            for j in 0..2 {
                assert!((fresh[i * 2 + j] - want(i, j)).abs() < 1e-5);
                assert!((acc[i * 2 + j] - 1.0 - want(i, j)).abs() < 1e-5);
            }
        }
        // An empty inner dimension gives zeros, not garbage.
        let none = Strided::dense(&[], 2, 0);
        let zero = gemm_to_new(
            "test",
            none,
            Strided::dense(&[], 0, 3),
            1.0,
            gemm::Parallelism::None,
        );
        assert_eq!(zero.unwrap(), vec![0f32; 6]);
        let past = Strided::rows(&wide, 8, 2, 3, 5);
        assert!(gemm_to_new("test", past, rhs, 1.0, gemm::Parallelism::None).is_err());
        assert!(gemm_to_new("test", lhs, lhs, 1.0, gemm::Parallelism::None).is_err());
    }
}
