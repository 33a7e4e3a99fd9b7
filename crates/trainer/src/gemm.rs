//! The host's fast GEMM: nalgebra's f32 product (a packed, SIMD-blocked kernel from
//! `matrixmultiply`) with the output split across the rayon pool.
//!
//! Each output element is computed entirely by one thread in the same order whatever the split,
//! so results do not depend on the thread count: training stays bit-reproducible.

use lstm_core::gemm::{Gemm, Mat, check_gemm_shapes};
use nalgebra::{DMatrixView, DMatrixViewMut, Dyn};

/// Below this many multiply-adds a product is not worth splitting.
const MIN_PARALLEL_WORK: usize = 1 << 18;
/// nalgebra hands a product to `matrixmultiply` only when every dimension exceeds 5; its own
/// small-matrix loop mis-indexes strided (transposed) views, so those go to the reference
/// kernel instead, and splits never produce a piece this small.
const SMALL_DIM: usize = 5;

/// nalgebra-backed GEMM using up to `threads` rayon workers.
#[derive(Debug, Clone, Copy)]
pub struct FastGemm {
    threads: usize,
}

impl FastGemm {
    /// A GEMM using up to `threads` threads of the current rayon pool.
    pub fn new(threads: usize) -> FastGemm {
        FastGemm { threads: threads.max(1) }
    }

    /// A GEMM using every thread of the current rayon pool.
    pub fn all_threads() -> FastGemm {
        FastGemm::new(rayon::current_num_threads())
    }
}

type View<'a> = DMatrixView<'a, f32, Dyn, Dyn>;
type ViewMut<'a> = DMatrixViewMut<'a, f32, Dyn, Dyn>;

/// nalgebra view of a row-major matrix (strides: one row down = `cols`, one column right = 1).
fn view<'a>(m: &Mat<'a>) -> View<'a> {
    let (rs, cs) = if m.is_transposed() { (1, m.rows()) } else { (m.cols(), 1) };
    DMatrixView::from_slice_with_strides(m.data(), m.rows(), m.cols(), rs, cs)
}

fn split_gemm(alpha: f32, a: View<'_>, b: View<'_>, beta: f32, mut c: ViewMut<'_>, threads: usize) {
    let (m, n, k) = (a.nrows(), b.ncols(), a.ncols());
    let splittable =
        |len: usize| len * (threads / 2) / threads > SMALL_DIM && len - len * (threads / 2) / threads > SMALL_DIM;
    if threads <= 1 || m * n * k < MIN_PARALLEL_WORK || !(splittable(m) || splittable(n)) {
        c.gemm(alpha, &a, &b, beta);
        return;
    }
    let (t1, t2) = (threads / 2, threads - threads / 2);
    // Measured (crates/trainer: `host bench train`, shapes of the presets): with a short inner
    // dimension the row split wins (for h·Eᵀ, 700×10000×64, by ~30%: each half packs its own
    // rows of A and streams B once), otherwise splitting the larger side does.
    let rows_first = m >= 128 && k <= 256;
    if splittable(m) && (rows_first || m >= n || !splittable(n)) {
        let mid = m * t1 / threads;
        let (c1, c2) = c.rows_range_pair_mut(0..mid, mid..);
        let (a1, a2) = (a.rows_range(0..mid), a.rows_range(mid..));
        rayon::join(|| split_gemm(alpha, a1, b, beta, c1, t1), || split_gemm(alpha, a2, b, beta, c2, t2));
    } else {
        let mid = n * t1 / threads;
        let (c1, c2) = c.columns_range_pair_mut(0..mid, mid..);
        let (b1, b2) = (b.columns_range(0..mid), b.columns_range(mid..));
        rayon::join(|| split_gemm(alpha, a, b1, beta, c1, t1), || split_gemm(alpha, a, b2, beta, c2, t2));
    }
}

impl Gemm for FastGemm {
    fn gemm(&self, alpha: f32, a: Mat<'_>, b: Mat<'_>, beta: f32, c: &mut [f32]) {
        check_gemm_shapes(&a, &b, c.len());
        let (m, n) = (a.rows(), b.cols());
        if m == 0 || n == 0 {
            return;
        }
        if m <= SMALL_DIM || n <= SMALL_DIM || a.cols() <= SMALL_DIM {
            lstm_core::NaiveGemm.gemm(alpha, a, b, beta, c);
            return;
        }
        if beta == 0.0 {
            // Never let NaN or garbage in C leak through 0·C.
            c.fill(0.0);
        }
        let cv: ViewMut<'_> = DMatrixViewMut::from_slice_with_strides_mut(c, m, n, n, 1);
        split_gemm(alpha, view(&a), view(&b), beta, cv, self.threads);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lstm_core::{NaiveGemm, Rng};

    #[test]
    fn matches_the_reference_for_every_transposition_and_split() {
        let mut rng = Rng::new(9);
        for &(m, n, k) in &[(1, 1, 1), (3, 5, 7), (70, 9, 64), (64, 300, 65), (257, 129, 33)] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.normal()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.normal()).collect();
            let c0: Vec<f32> = (0..m * n).map(|_| rng.normal()).collect();
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let am = if ta { Mat::new(&a, k, m).t() } else { Mat::new(&a, m, k) };
                let bm = if tb { Mat::new(&b, n, k).t() } else { Mat::new(&b, k, n) };
                let mut want = c0.clone();
                NaiveGemm.gemm(0.5, am, bm, 0.25, &mut want);
                let mut one = c0.clone();
                FastGemm::new(1).gemm(0.5, am, bm, 0.25, &mut one);
                let mut many = c0.clone();
                FastGemm::new(4).gemm(0.5, am, bm, 0.25, &mut many);
                for (w, o) in want.iter().zip(&one) {
                    assert!((w - o).abs() <= 1e-4 * (1.0 + w.abs()), "{m}x{n}x{k} {ta} {tb}: {w} vs {o}");
                }
                assert_eq!(one, many, "result depends on the thread split");
            }
        }
    }

    #[test]
    fn beta_zero_ignores_nan_in_output() {
        let mut c = [f32::NAN; 4];
        FastGemm::new(2).gemm(1.0, Mat::new(&[1.0, 2.0], 2, 1), Mat::new(&[3.0, 4.0], 1, 2), 0.0, &mut c);
        assert_eq!(c, [3.0, 4.0, 6.0, 8.0]);
    }
}
