//! Gradient clipping by the global L2 norm, and plain SGD.

/// L2 norm over every gradient buffer together, accumulated in f64.
pub fn global_norm(grads: &[&mut [f32]]) -> f32 {
    let sq: f64 = grads.iter().flat_map(|g| g.iter()).map(|&v| f64::from(v) * f64::from(v)).sum();
    libm::sqrt(sq) as f32
}

/// Scales all gradients by `max_norm / norm` when their global norm exceeds `max_norm`.
/// Returns the norm before clipping (a NaN norm is returned untouched for the caller to report).
pub fn clip_grad_norm(grads: &mut [&mut [f32]], max_norm: f32) -> f32 {
    let norm = global_norm(grads);
    if norm.is_finite() && norm > max_norm {
        let rate = max_norm / (norm + 1e-6);
        grads.iter_mut().flat_map(|g| g.iter_mut()).for_each(|v| *v *= rate);
    }
    norm
}

/// `param ← param − lr · grad`.
pub fn sgd_step(params: &mut [f32], grads: &[f32], lr: f32) {
    params.iter_mut().zip(grads).for_each(|(p, g)| *p -= lr * g);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_caps_at_threshold() {
        let mut a = [3.0f32, 0.0];
        let mut b = [0.0f32, 4.0, 0.0];
        let before = clip_grad_norm(&mut [&mut a, &mut b], 1.0);
        assert!((before - 5.0).abs() < 1e-6);
        let after = global_norm(&[&mut a, &mut b]);
        assert!((after - 1.0).abs() < 1e-5, "norm after clipping {after}");
        assert!((a[0] - 0.6).abs() < 1e-5 && (b[1] - 0.8).abs() < 1e-5, "direction kept");
    }

    #[test]
    fn clipping_leaves_small_gradients() {
        let mut a = [0.3f32, 0.4];
        let before = clip_grad_norm(&mut [&mut a], 1.0);
        assert!((before - 0.5).abs() < 1e-6);
        assert_eq!(a, [0.3, 0.4]);
    }

    #[test]
    fn sgd() {
        let mut p = [1.0f32, 2.0];
        sgd_step(&mut p, &[0.5, -1.0], 0.1);
        assert_eq!(p, [0.95, 2.1]);
    }
}
