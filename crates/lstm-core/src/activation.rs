//! Logistic sigmoid and hyperbolic tangent that stay finite and accurate for every finite input.
//!
//! Both exponentiate only −|x| (so `exp` lies in (0, 1] and nothing overflows) through
//! [`crate::exp::exp`], and choose between the two halves with selects rather than branches:
//! gate loops vectorise, and every target computes the same bits.

use crate::exp::exp;

/// σ(x) = 1 / (1 + e^{−x}) within 4e−7 (relative), never NaN for finite x.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    let e = exp(-x.abs());
    let s = 1.0 / (1.0 + e);
    if x >= 0.0 { s } else { e * s }
}

/// tanh(x) within 3e−7 (absolute, and relative for |x| ≥ 0.125; an odd polynomial below).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let e = exp(-2.0 * a);
    let large = (1.0 - e) / (1.0 + e);
    let x2 = x * x;
    // tanh x = x − x³/3 + 2x⁵/15 − 17x⁷/315 + …, error below 3e−10 for |x| < 0.125.
    let small = x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0))));
    if a < 0.125 { small } else { large.copysign(x) }
}

/// Derivative of σ written in terms of its output y = σ(x): y(1−y).
#[inline]
pub fn sigmoid_grad_from_output(y: f32) -> f32 {
    y * (1.0 - y)
}

/// Derivative of tanh written in terms of its output y = tanh(x): 1−y².
#[inline]
pub fn tanh_grad_from_output(y: f32) -> f32 {
    1.0 - y * y
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// (x, σ(x), tanh(x)) computed in f64.
    const VECTORS: &[(f32, f64, f64)] = &[
        (0.0, 0.5, 0.0),
        (1.0, 0.731_058_578_630_004_9, 0.761_594_155_955_764_9),
        (-1.0, 0.268_941_421_369_995_1, -0.761_594_155_955_764_9),
        (2.5, 0.924_141_819_978_756_6, 0.986_614_298_151_430_3),
        (-7.0, 9.110_511_944_006_454e-4, -0.999_998_336_943_944_7),
        (20.0, 0.999_999_997_938_846_3, 1.0),
        (-30.0, 9.357_622_968_839_299e-14, -1.0),
    ];
    /// Error bound: relative 1e-6.
    const REL: f64 = 1e-6;

    #[test]
    fn vectors() {
        for &(x, s, t) in VECTORS {
            let gs = f64::from(sigmoid(x));
            let gt = f64::from(tanh(x));
            assert!((gs - s).abs() <= REL * s.abs().max(1e-38), "sigmoid({x}) = {gs}, want {s}");
            assert!((gt - t).abs() <= REL * t.abs().max(1e-30), "tanh({x}) = {gt}, want {t}");
        }
    }

    #[test]
    fn extremes() {
        for x in [f32::MAX, f32::MIN, 1e30, -1e30, 89.0, -89.0, 1e-45, -1e-45] {
            let s = sigmoid(x);
            let t = tanh(x);
            assert!((0.0..=1.0).contains(&s), "sigmoid({x}) = {s}");
            assert!((-1.0..=1.0).contains(&t), "tanh({x}) = {t}");
        }
        assert_eq!(sigmoid(f32::MIN), 0.0);
        assert_eq!(sigmoid(f32::MAX), 1.0);
    }

    proptest! {
        #[test]
        fn finite_and_in_range(x in proptest::num::f32::NORMAL | proptest::num::f32::SUBNORMAL | proptest::num::f32::ZERO) {
            let s = sigmoid(x);
            let t = tanh(x);
            prop_assert!(s.is_finite() && (0.0..=1.0).contains(&s));
            prop_assert!(t.is_finite() && (-1.0..=1.0).contains(&t));
            // Symmetries hold to rounding.
            prop_assert!((sigmoid(-x) - (1.0 - s)).abs() <= 1e-6);
            prop_assert_eq!(tanh(-x), -t);
        }

        #[test]
        fn matches_f64_reference(x in -50.0f32..50.0) {
            let xd = f64::from(x);
            let s = 1.0 / (1.0 + (-xd).exp());
            prop_assert!((f64::from(sigmoid(x)) - s).abs() <= 1e-6 * s.max(1e-30) + 1e-37);
            prop_assert!((f64::from(tanh(x)) - xd.tanh()).abs() <= 1e-6);
        }
    }
}
