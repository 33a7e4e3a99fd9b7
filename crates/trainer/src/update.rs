//! The parameter update after each training step (clip by global norm, then SGD) on every
//! thread.
//!
//! The formulas are `lstm-core`'s (`optim`); this only splits the buffers into fixed chunks.
//! The squared norm's partial sums are added in chunk order, so the result does not depend on
//! the thread count and training stays reproducible. On one thread these passes over every
//! parameter (norm, scale, step, finiteness check: `book` has 13.3 M) cost 4–5% of a step.

use lstm_core::optim::{clip_scale, sgd_step_scaled, sum_of_squares};
use rayon::prelude::*;

/// Floats per chunk (256 KiB: many chunks per thread even for `embedded`'s 0.7 M parameters).
pub const CHUNK: usize = 1 << 16;

/// What [`clip_and_step`] found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Update {
    /// Global L2 norm of the gradient before clipping.
    pub norm: f32,
    /// Whether every parameter is finite after the step.
    pub finite: bool,
}

/// Clips `grads` to global norm `max_norm` and applies `params ← params − lr·grads`, in one
/// pass for the norm and one for the step (the clipped gradient is never stored).
///
/// # Panics
/// If `params` and `grads` differ in length.
pub fn clip_and_step(params: &mut [f32], grads: &[f32], max_norm: f32, lr: f32) -> Update {
    assert_eq!(params.len(), grads.len(), "parameters and gradients differ in length");
    let partials: Vec<f64> = grads.par_chunks(CHUNK).map(sum_of_squares).collect();
    let norm = partials.iter().sum::<f64>().sqrt() as f32;
    let scale = clip_scale(norm, max_norm);
    let finite = params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .map(|(p, g)| {
            sgd_step_scaled(p, g, lr, scale);
            p.iter().all(|v| v.is_finite())
        })
        .reduce(|| true, |a, b| a && b);
    Update { norm, finite }
}

/// Zeroes `values` on every thread.
pub fn zero(values: &mut [f32]) {
    values.par_chunks_mut(CHUNK).for_each(|c| c.fill(0.0));
}

#[cfg(test)]
mod tests {
    use super::*;
    use lstm_core::optim::{clip_grad_norm, sgd_step};
    use lstm_core::rng::Rng;

    /// Several chunks and a partial one: the same bits as clipping and stepping buffer-wide,
    /// and the same norm up to the order of the f64 additions.
    #[test]
    fn equals_clip_then_step() {
        let mut rng = Rng::new(3);
        let n = 3 * CHUNK + 123;
        let grads: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        let start: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        for max_norm in [0.25f32, 1e6] {
            let (mut clipped, mut expected) = (grads.clone(), start.clone());
            let norm = clip_grad_norm(&mut [&mut clipped], max_norm);
            sgd_step(&mut expected, &clipped, 20.0);
            let mut got = start.clone();
            let update = clip_and_step(&mut got, &grads, max_norm, 20.0);
            assert!((update.norm - norm).abs() <= 1e-6 * norm, "{} vs {norm}", update.norm);
            assert!(update.finite);
            // Unclipped, the step is bit-exact; clipped, the norm (hence the scale) may differ in
            // its last bit.
            for (a, b) in got.iter().zip(&expected) {
                let tolerance = if max_norm > 1e5 { 0.0 } else { 1e-6 * b.abs().max(1.0) };
                assert!((a - b).abs() <= tolerance, "max_norm {max_norm}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn reports_non_finite_parameters() {
        let mut params = vec![1.0f32; CHUNK + 5];
        let mut grads = vec![0.0f32; CHUNK + 5];
        grads[CHUNK + 2] = f32::INFINITY;
        let update = clip_and_step(&mut params, &grads, 0.25, 1.0);
        assert!(!update.norm.is_finite());
        assert!(!update.finite);
        zero(&mut grads);
        assert!(grads.iter().all(|&g| g == 0.0));
    }
}
