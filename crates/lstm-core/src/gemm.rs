//! General matrix multiply on row-major slices, behind a trait so a host can bring a fast one.
//!
//! Every batched product of the layers goes through [`Gemm`]. [`NaiveGemm`] is the reference:
//! portable, allocation-free and deterministic. The trainer supplies a blocked, threaded
//! implementation and tests it against this one.

/// A read-only view of a row-major matrix, optionally used transposed.
#[derive(Debug, Clone, Copy)]
pub struct Mat<'a> {
    data: &'a [f32],
    stored_rows: usize,
    stored_cols: usize,
    transposed: bool,
}

impl<'a> Mat<'a> {
    /// Views `data` as a `rows × cols` row-major matrix.
    ///
    /// # Panics
    /// If `data.len() != rows * cols` (a programming error, never untrusted input).
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix buffer is not rows × cols");
        Mat { data, stored_rows: rows, stored_cols: cols, transposed: false }
    }

    /// The transpose, without moving data.
    #[must_use]
    pub fn t(self) -> Self {
        Mat { transposed: !self.transposed, ..self }
    }

    /// Logical rows (after transposition).
    pub fn rows(&self) -> usize {
        if self.transposed { self.stored_cols } else { self.stored_rows }
    }

    /// Logical columns (after transposition).
    pub fn cols(&self) -> usize {
        if self.transposed { self.stored_rows } else { self.stored_cols }
    }

    /// Whether the logical matrix is the transpose of the stored one.
    pub fn is_transposed(&self) -> bool {
        self.transposed
    }

    /// The underlying row-major storage (as stored, not transposed).
    pub fn data(&self) -> &'a [f32] {
        self.data
    }

    /// Element (r, c) of the logical matrix.
    #[inline]
    pub fn at(&self, r: usize, c: usize) -> f32 {
        if self.transposed { self.data[c * self.stored_cols + r] } else { self.data[r * self.stored_cols + c] }
    }
}

/// `C ← α·A·B + β·C` with `C` row-major, `A.rows() × B.cols()`.
pub trait Gemm {
    /// Computes `c = alpha * a * b + beta * c`. When `beta == 0`, `c` is overwritten (NaNs in it
    /// do not propagate).
    ///
    /// # Panics
    /// If the inner dimensions differ or `c` has the wrong length.
    fn gemm(&self, alpha: f32, a: Mat<'_>, b: Mat<'_>, beta: f32, c: &mut [f32]);

    /// Runs `body` with products whose right operand is always `b`: an LSTM's recurrent
    /// weights, used once per step. A fast implementation prepares (packs) `b` once for all of
    /// them; this default calls [`Gemm::gemm`] each time.
    fn with_rhs<R>(&self, b: Mat<'_>, body: impl FnOnce(&dyn FixedRhsGemm) -> R) -> R
    where
        Self: Sized,
    {
        body(&Unprepared { gemm: self, b })
    }
}

/// Products with a right operand fixed in advance (see [`Gemm::with_rhs`]).
pub trait FixedRhsGemm {
    /// Computes `c = alpha * a * B + beta * c` for the fixed `B`, like [`Gemm::gemm`].
    fn gemm(&self, alpha: f32, a: Mat<'_>, beta: f32, c: &mut [f32]);
}

/// [`FixedRhsGemm`] by plain calls to [`Gemm::gemm`].
#[derive(Debug)]
pub struct Unprepared<'a, G> {
    /// The GEMM to call.
    pub gemm: &'a G,
    /// The fixed right operand.
    pub b: Mat<'a>,
}

impl<G: Gemm> FixedRhsGemm for Unprepared<'_, G> {
    fn gemm(&self, alpha: f32, a: Mat<'_>, beta: f32, c: &mut [f32]) {
        self.gemm.gemm(alpha, a, self.b, beta, c);
    }
}

/// Straightforward triple loop, accumulation in f32 in index order: the reference.
#[derive(Debug, Clone, Copy, Default)]
pub struct NaiveGemm;

/// Panics with a clear message unless the shapes agree.
pub fn check_gemm_shapes(a: &Mat<'_>, b: &Mat<'_>, c_len: usize) {
    assert_eq!(a.cols(), b.rows(), "gemm: inner dimensions differ");
    assert_eq!(c_len, a.rows() * b.cols(), "gemm: output has the wrong length");
}

impl Gemm for NaiveGemm {
    fn gemm(&self, alpha: f32, a: Mat<'_>, b: Mat<'_>, beta: f32, c: &mut [f32]) {
        naive_gemm_columns(alpha, a, b, 0..b.cols(), beta, c);
    }
}

/// [`NaiveGemm`] restricted to columns `cols` of `b` (inside it): `c` is `a.rows() × cols.len()`,
/// each element computed exactly as in the whole product.
///
/// # Panics
/// If the inner dimensions differ, `c` has another length or `cols` reaches past `b`.
pub fn naive_gemm_columns(alpha: f32, a: Mat<'_>, b: Mat<'_>, cols: core::ops::Range<usize>, beta: f32, c: &mut [f32]) {
    assert_eq!(a.cols(), b.rows(), "gemm: inner dimensions differ");
    assert_eq!(c.len(), a.rows() * cols.len(), "gemm: output has the wrong length");
    assert!(cols.end <= b.cols(), "gemm: columns outside the operand");
    let (m, n, k) = (a.rows(), cols.len(), a.cols());
    for i in 0..m {
        let row = &mut c[i * n..(i + 1) * n];
        if beta == 0.0 {
            row.fill(0.0);
        } else if beta != 1.0 {
            row.iter_mut().for_each(|v| *v *= beta);
        }
        for p in 0..k {
            let aip = alpha * a.at(i, p);
            if aip == 0.0 {
                continue;
            }
            for (j, out) in row.iter_mut().enumerate() {
                *out += aip * b.at(p, cols.start + j);
            }
        }
    }
}

/// `y = x · W` for one row vector `x` (len `rows`) and row-major `W` (`rows × cols`).
pub fn vec_mat(x: &[f32], w: &[f32], y: &mut [f32]) {
    NaiveGemm.gemm(1.0, Mat::new(x, 1, x.len()), Mat::new(w, x.len(), y.len()), 0.0, y);
}

/// Dot product in index order.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_products_all_transpositions() {
        // A = [[1,2,3],[4,5,6]] (2×3), B = [[1,0],[0,1],[2,-1]] (3×2).
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [1.0, 0.0, 0.0, 1.0, 2.0, -1.0];
        let want = [7.0, -1.0, 16.0, -1.0];
        let mut c = [f32::NAN; 4];
        NaiveGemm.gemm(1.0, Mat::new(&a, 2, 3), Mat::new(&b, 3, 2), 0.0, &mut c);
        assert_eq!(c, want);
        // Same product from transposed storage.
        let at = [1.0, 4.0, 2.0, 5.0, 3.0, 6.0];
        let bt = [1.0, 0.0, 2.0, 0.0, 1.0, -1.0];
        let mut c2 = [0.0; 4];
        NaiveGemm.gemm(1.0, Mat::new(&at, 3, 2).t(), Mat::new(&bt, 2, 3).t(), 0.0, &mut c2);
        assert_eq!(c2, want);
        // alpha and beta.
        let mut c3 = [1.0; 4];
        NaiveGemm.gemm(2.0, Mat::new(&a, 2, 3), Mat::new(&b, 3, 2), 0.5, &mut c3);
        assert_eq!(c3, [14.5, -1.5, 32.5, -1.5]);
    }

    #[test]
    fn vec_mat_and_dot() {
        let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // 2×3
        let mut y = [0.0; 3];
        vec_mat(&[1.0, -1.0], &w, &mut y);
        assert_eq!(y, [-3.0, -3.0, -3.0]);
        assert_eq!(dot(&[1.0, 2.0], &[3.0, 4.0]), 11.0);
    }

    #[test]
    #[should_panic(expected = "inner dimensions")]
    fn shape_mismatch_panics() {
        let mut c = [0.0; 4];
        NaiveGemm.gemm(1.0, Mat::new(&[0.0; 6], 2, 3), Mat::new(&[0.0; 4], 2, 2), 0.0, &mut c);
    }
}
