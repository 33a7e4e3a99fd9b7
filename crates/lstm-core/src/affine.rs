//! Affine layer `y = x·W + b` over a batch of rows, and its backward pass.
//!
//! `W` is a [`Mat`], so a tied output layer passes the embedding table transposed
//! (`Mat::new(embedding, V, D).t()`) and its gradient lands, transposed back, in the
//! embedding's gradient.

use crate::gemm::{Gemm, Mat};
use crate::{Error, check_len};

/// `y = x·W + b`; `x` is `M × D`, `w` is logically `D × O`, `y` is `M × O`.
pub fn affine_forward(gemm: &impl Gemm, x: &[f32], w: Mat<'_>, b: &[f32], y: &mut [f32]) -> Result<(), Error> {
    let (d, o) = (w.rows(), w.cols());
    check_len("affine bias", b.len(), o)?;
    let m = x.len().checked_div(d).unwrap_or(0);
    check_len("affine input", x.len(), m * d)?;
    check_len("affine output", y.len(), m * o)?;
    gemm.gemm(1.0, Mat::new(x, m, d), w, 0.0, y);
    for row in y.chunks_exact_mut(o.max(1)) {
        row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
    }
    Ok(())
}

/// Given `dy` (`M × O`): adds `dW` into `dw` (stored like `w`: `D × O`, or `O × D` when `w` is
/// transposed), adds `Σ dy` into `db`, and writes `dx = dy·Wᵀ` (`M × D`).
pub fn affine_backward(
    gemm: &impl Gemm,
    x: &[f32],
    w: Mat<'_>,
    dy: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
    dx: &mut [f32],
) -> Result<(), Error> {
    let (d, o) = (w.rows(), w.cols());
    let m = x.len().checked_div(d).unwrap_or(0);
    check_len("affine input", x.len(), m * d)?;
    check_len("affine output gradient", dy.len(), m * o)?;
    check_len("affine weight gradient", dw.len(), d * o)?;
    check_len("affine bias gradient", db.len(), o)?;
    check_len("affine input gradient", dx.len(), m * d)?;
    let (xm, dym) = (Mat::new(x, m, d), Mat::new(dy, m, o));
    if w.is_transposed() {
        gemm.gemm(1.0, dym.t(), xm, 1.0, dw);
    } else {
        gemm.gemm(1.0, xm.t(), dym, 1.0, dw);
    }
    for row in dy.chunks_exact(o.max(1)) {
        db.iter_mut().zip(row).for_each(|(a, b)| *a += b);
    }
    gemm.gemm(1.0, dym, w.t(), 0.0, dx);
    Ok(())
}
