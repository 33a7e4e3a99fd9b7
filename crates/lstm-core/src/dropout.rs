//! Inverted dropout: kept activations are scaled by 1/(1−p) during training, so evaluation is
//! the identity.

use crate::rng::Rng;

/// Dropout with drop probability `p` in [0, 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    /// Probability of zeroing an activation.
    pub p: f32,
}

impl Dropout {
    /// Training: draws `mask` (0 or 1/(1−p) per element) from `rng` and applies it to `x`.
    /// Evaluation (`train == false`) or `p == 0`: leaves `x` unchanged, mask all ones, and
    /// draws nothing from `rng`.
    pub fn forward(&self, x: &mut [f32], mask: &mut [f32], rng: &mut Rng, train: bool) {
        debug_assert_eq!(x.len(), mask.len());
        if !train || self.p <= 0.0 {
            mask.fill(1.0);
            return;
        }
        let keep_scale = 1.0 / (1.0 - self.p);
        for (v, m) in x.iter_mut().zip(mask.iter_mut()) {
            *m = if rng.next_f32() >= self.p { keep_scale } else { 0.0 };
            *v *= *m;
        }
    }

    /// Applies the forward mask to the gradient.
    pub fn backward(&self, dx: &mut [f32], mask: &[f32]) {
        dx.iter_mut().zip(mask).for_each(|(d, m)| *d *= m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    #[test]
    fn mask_statistics_and_scaling() {
        let d = Dropout { p: 0.3 };
        let n = 100_000;
        let mut x = vec![2.0f32; n];
        let mut mask = vec![0.0f32; n];
        d.forward(&mut x, &mut mask, &mut Rng::new(5), true);
        let kept = mask.iter().filter(|&&m| m != 0.0).count();
        let frac = kept as f64 / n as f64;
        assert!((frac - 0.7).abs() < 0.01, "kept fraction {frac}");
        assert!(mask.iter().all(|&m| m == 0.0 || (m - 1.0 / 0.7).abs() < 1e-6));
        // Expectation is preserved.
        let mean: f64 = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
        assert!((mean - 2.0).abs() < 0.03, "mean {mean}");
        // Backward applies the same mask.
        let mut g = vec![1.0f32; n];
        d.backward(&mut g, &mask);
        assert_eq!(g, mask);
    }

    #[test]
    fn identity_at_evaluation() {
        let d = Dropout { p: 0.5 };
        let mut x = [1.0f32, -2.0, 3.0];
        let mut mask = [0.0f32; 3];
        let mut rng = Rng::new(1);
        d.forward(&mut x, &mut mask, &mut rng, false);
        assert_eq!(x, [1.0, -2.0, 3.0]);
        assert_eq!(mask, [1.0; 3]);
        assert_eq!(rng, Rng::new(1), "evaluation draws nothing");
    }

    #[test]
    fn same_seed_same_mask() {
        let d = Dropout { p: 0.5 };
        let (mut m1, mut m2, mut m3) = ([0.0f32; 64], [0.0f32; 64], [0.0f32; 64]);
        d.forward(&mut [1.0; 64], &mut m1, &mut Rng::new(42), true);
        d.forward(&mut [1.0; 64], &mut m2, &mut Rng::new(42), true);
        d.forward(&mut [1.0; 64], &mut m3, &mut Rng::new(43), true);
        assert_eq!(m1, m2);
        assert_ne!(m1, m3);
    }
}
