//! Small dense `f64` linear algebra for SVD fusion (candle has no SVD):
//! Householder QR, one-sided Jacobi SVD, and the SVD of a low-rank product
//! `B diag(c) A` computed without ever forming the product.

// Index loops read better than iterator chains in this matrix code.
#![allow(clippy::needless_range_loop)]

/// A dense row-major `f64` matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// `rows * cols` values, row-major.
    pub data: Vec<f64>,
}

impl Matrix {
    /// A `rows x cols` zero matrix.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    /// Wraps row-major data (`data.len()` must be `rows * cols`).
    pub fn from_rows(rows: usize, cols: usize, data: Vec<f64>) -> Self {
        debug_assert_eq!(data.len(), rows * cols);
        Self { rows, cols, data }
    }

    /// Element `(i, j)`.
    #[inline]
    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.cols + j]
    }

    /// Mutable element `(i, j)`.
    #[inline]
    pub fn at_mut(&mut self, i: usize, j: usize) -> &mut f64 {
        &mut self.data[i * self.cols + j]
    }

    /// The transpose.
    pub fn transpose(&self) -> Self {
        let mut t = Self::zeros(self.cols, self.rows);
        for i in 0..self.rows {
            for j in 0..self.cols {
                *t.at_mut(j, i) = self.at(i, j);
            }
        }
        t
    }

    /// `self @ other`.
    pub fn matmul(&self, other: &Self) -> Self {
        assert_eq!(self.cols, other.rows, "matmul shape mismatch");
        let mut out = Self::zeros(self.rows, other.cols);
        for i in 0..self.rows {
            let out_row = &mut out.data[i * other.cols..(i + 1) * other.cols];
            for k in 0..self.cols {
                let a = self.data[i * self.cols + k];
                if a == 0.0 {
                    continue;
                }
                let b_row = &other.data[k * other.cols..(k + 1) * other.cols];
                for (o, b) in out_row.iter_mut().zip(b_row) {
                    *o += a * b;
                }
            }
        }
        out
    }
}

/// Thin Householder QR of an `m x n` matrix: `Q` `[m, k]` with orthonormal
/// columns and upper-trapezoidal `R` `[k, n]`, `k = min(m, n)`, `M = Q R`.
pub fn qr(m: &Matrix) -> (Matrix, Matrix) {
    let (rows, cols) = (m.rows, m.cols);
    let k = rows.min(cols);
    // Column-major working copy: every reflection runs over contiguous memory.
    let mut r: Vec<Vec<f64>> = (0..cols)
        .map(|j| (0..rows).map(|i| m.at(i, j)).collect())
        .collect();
    let mut reflectors: Vec<Vec<f64>> = Vec::with_capacity(k);
    for j in 0..k {
        // Householder vector for column j below the diagonal.
        let mut v: Vec<f64> = r[j][j..].to_vec();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let alpha = if v[0] >= 0.0 { -norm } else { norm };
        v[0] -= alpha;
        let vnorm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 || vnorm == 0.0 {
            reflectors.push(Vec::new());
            continue;
        }
        for x in &mut v {
            *x /= vnorm;
        }
        // R <- (I - 2 v v^T) R on rows j.., columns j..
        for col in r.iter_mut().skip(j) {
            reflect(&v, &mut col[j..]);
        }
        reflectors.push(v);
    }
    // Q = H_0 H_1 ... H_{k-1} applied to the first k columns of the identity.
    let mut q: Vec<Vec<f64>> = (0..k)
        .map(|c| (0..rows).map(|i| f64::from(u8::from(i == c))).collect())
        .collect();
    for (j, v) in reflectors.iter().enumerate().rev() {
        if v.is_empty() {
            continue;
        }
        for col in q.iter_mut() {
            reflect(v, &mut col[j..]);
        }
    }
    let mut q_out = Matrix::zeros(rows, k);
    for (c, col) in q.iter().enumerate() {
        for (i, x) in col.iter().enumerate() {
            *q_out.at_mut(i, c) = *x;
        }
    }
    let mut r_thin = Matrix::zeros(k, cols);
    for (j, col) in r.iter().enumerate() {
        for i in 0..k.min(j + 1) {
            *r_thin.at_mut(i, j) = col[i];
        }
    }
    (q_out, r_thin)
}

/// `x <- x - 2 v (v . x)` for a unit vector `v`.
fn reflect(v: &[f64], x: &mut [f64]) {
    let dot: f64 = v.iter().zip(x.iter()).map(|(a, b)| a * b).sum();
    for (xi, vi) in x.iter_mut().zip(v) {
        *xi -= 2.0 * vi * dot;
    }
}

/// Thin SVD of an `m x n` matrix by one-sided (Hestenes) Jacobi rotations:
/// `M = U diag(S) V^T` with `U` `[m, k]`, `S` `[k]` descending, `V` `[n, k]`,
/// `k = min(m, n)`. Accurate to a few ulps relative to the largest singular
/// value. Columns are stored contiguously and their norms are updated with each
/// rotation (recomputed exactly at every sweep), which makes it usable on the
/// `320 x 320` triangles of EfficientNet's widest layers (SoMA runs a QR first).
pub fn svd(m: &Matrix) -> (Matrix, Vec<f64>, Matrix) {
    if m.rows < m.cols {
        let (u, s, v) = svd(&m.transpose());
        return (v, s, u);
    }
    let (rows, n) = (m.rows, m.cols);
    let mut cols = vec![0f64; rows * n];
    for i in 0..rows {
        for j in 0..n {
            cols[j * rows + i] = m.at(i, j);
        }
    }
    let mut v = vec![0f64; n * n];
    for j in 0..n {
        v[j * n + j] = 1.0;
    }
    let dot = |x: &[f64], y: &[f64]| -> f64 { x.iter().zip(y).map(|(a, b)| a * b).sum() };
    let rotate = |data: &mut [f64], len: usize, p: usize, q: usize, c: f64, s: f64| {
        let (left, right) = data.split_at_mut(q * len);
        let x = &mut left[p * len..(p + 1) * len];
        let y = &mut right[..len];
        for (a, b) in x.iter_mut().zip(y.iter_mut()) {
            let (xp, yq) = (*a, *b);
            *a = c * xp - s * yq;
            *b = s * xp + c * yq;
        }
    };
    let eps = 1e-15;
    let mut norms = vec![0f64; n];
    for _sweep in 0..60 {
        for (j, norm) in norms.iter_mut().enumerate() {
            let col = &cols[j * rows..(j + 1) * rows];
            *norm = dot(col, col);
        }
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let (alpha, beta) = (norms[p], norms[q]);
                let gamma = dot(
                    &cols[p * rows..(p + 1) * rows],
                    &cols[q * rows..(q + 1) * rows],
                );
                if gamma == 0.0 || gamma.abs() <= eps * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                rotate(&mut cols, rows, p, q, c, s);
                rotate(&mut v, n, p, q, c, s);
                norms[p] = alpha - t * gamma;
                norms[q] = beta + t * gamma;
            }
        }
        if !rotated {
            break;
        }
    }
    let mut order: Vec<(usize, f64)> = (0..n)
        .map(|j| {
            let col = &cols[j * rows..(j + 1) * rows];
            (j, dot(col, col).sqrt())
        })
        .collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut u = Matrix::zeros(rows, n);
    let mut vm = Matrix::zeros(n, n);
    let mut sigma = Vec::with_capacity(n);
    for (k, &(j, value)) in order.iter().enumerate() {
        sigma.push(value);
        for i in 0..rows {
            *u.at_mut(i, k) = if value > 0.0 {
                cols[j * rows + i] / value
            } else {
                0.0
            };
        }
        for i in 0..n {
            *vm.at_mut(i, k) = v[j * n + i];
        }
    }
    (u, sigma, vm)
}

/// SVD of the low-rank product `M = B diag(c) A` with `B` `[m, R]`, `c` `[R]`,
/// `A` `[R, n]`, never forming `M`: `B = Qb Rb`, `A^T = Qa Ra`, then the SVD
/// of the small core `Rb diag(c) Ra^T` gives `M = (Qb U) S (Qa V)^T`.
/// Returns `U` `[m, k]`, `S` `[k]` (descending), `Vt` `[k, n]`,
/// `k = min(m, n, R)`. Cost `O((m + n) R^2 + R^3)`.
pub fn low_rank_svd(b: &Matrix, c: &[f64], a: &Matrix) -> (Matrix, Vec<f64>, Matrix) {
    assert_eq!(b.cols, c.len());
    assert_eq!(a.rows, c.len());
    let (qb, rb) = qr(b); // [m, kb], [kb, R]
    let (qa, ra) = qr(&a.transpose()); // [n, ka], [ka, R]
    let mut rb_c = rb;
    for i in 0..rb_c.rows {
        for (j, cj) in c.iter().enumerate() {
            *rb_c.at_mut(i, j) *= cj;
        }
    }
    let core = rb_c.matmul(&ra.transpose()); // [kb, ka]
    let (u, s, v) = svd(&core);
    let k = s.len();
    let u_full = qb.matmul(&u); // [m, k]
    let v_full = qa.matmul(&v); // [n, k]
    debug_assert_eq!(u_full.cols, k);
    (u_full, s, v_full.transpose())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(rows: usize, cols: usize, seed: u64) -> Matrix {
        // Small deterministic generator, independent of the rand crate's versions.
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let data = (0..rows * cols)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect();
        Matrix::from_rows(rows, cols, data)
    }

    fn max_diff(a: &Matrix, b: &Matrix) -> f64 {
        a.data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    fn scale_cols(m: &Matrix, s: &[f64]) -> Matrix {
        let mut out = m.clone();
        for i in 0..m.rows {
            for j in 0..m.cols {
                *out.at_mut(i, j) *= s[j];
            }
        }
        out
    }

    #[test]
    fn qr_reconstructs_and_is_orthonormal() {
        for (r, c) in [(7, 3), (3, 7), (5, 5)] {
            let m = random(r, c, 1);
            let (q, rr) = qr(&m);
            assert!(max_diff(&q.matmul(&rr), &m) < 1e-12);
            let qtq = q.transpose().matmul(&q);
            for i in 0..qtq.rows {
                for j in 0..qtq.cols {
                    let e = if i == j { 1.0 } else { 0.0 };
                    assert!((qtq.at(i, j) - e).abs() < 1e-12);
                }
            }
            for i in 0..rr.rows {
                for j in 0..i.min(rr.cols) {
                    assert_eq!(rr.at(i, j), 0.0);
                }
            }
        }
    }

    #[test]
    fn svd_of_known_matrix() {
        // [[3, 0], [4, 5]] has singular values sqrt(45) and sqrt(5).
        let m = Matrix::from_rows(2, 2, vec![3.0, 0.0, 4.0, 5.0]);
        let (u, s, v) = svd(&m);
        assert!((s[0] - 45f64.sqrt()).abs() < 1e-12 && (s[1] - 5f64.sqrt()).abs() < 1e-12);
        assert!(max_diff(&scale_cols(&u, &s).matmul(&v.transpose()), &m) < 1e-12);
    }

    #[test]
    fn low_rank_svd_matches_dense_product() {
        for (m, r, n) in [(10, 16, 27), (12, 3, 10), (5, 8, 40)] {
            let b = random(m, r, 2);
            let a = random(r, n, 3);
            let c: Vec<f64> = (0..r).map(|i| (i as f64) - 2.5).collect();
            let dense = scale_cols(&b, &c).matmul(&a);
            let (u, s, vt) = low_rank_svd(&b, &c, &a);
            assert!(s.windows(2).all(|w| w[0] >= w[1]));
            assert!(max_diff(&scale_cols(&u, &s).matmul(&vt), &dense) < 1e-10);
            // Same singular values as the dense SVD.
            let (_, s_dense, _) = svd(&dense);
            for (x, y) in s.iter().zip(&s_dense) {
                assert!((x - y).abs() < 1e-10, "{x} vs {y}");
            }
        }
    }
}
