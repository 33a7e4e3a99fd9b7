//! `exp` with fused multiply-adds, for the host's softmax.
//!
//! `lstm_core::exp::exp` keeps every multiply and add separate so that x86 and Cortex-M compute
//! the same bits; the host's softmax needs no such promise (the firmware never sees its values),
//! and with fused multiply-adds the same range reduction and polynomial take 20 vector
//! operations instead of 30. Where the compiler may not use FMA instructions (a build without
//! `target-cpu=native` on x86, say) this is `lstm_core::exp::exp` itself: `f32::mul_add`
//! without them is a library call.

/// e^x with a relative error below 3e−7 over [−87.33, 88] (as `lstm_core::exp::exp`); exactly
/// 0 below, about 1.65e38 above; NaN stays NaN.
#[cfg(target_feature = "fma")]
#[inline(always)]
pub fn exp(x_in: f32) -> f32 {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    // Cody–Waite ln 2 and Cephes' polynomial, as in `lstm_core::exp`.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUNDER: f32 = 12_582_912.0;
    const MIN_X: f32 = -87.336_55;
    const MAX_X: f32 = 88.0;
    let x = if x_in < MIN_X { MIN_X } else { x_in };
    let x = if x > MAX_X { MAX_X } else { x };
    let shifted = x.mul_add(LOG2E, ROUNDER);
    let n = shifted - ROUNDER;
    let n_int = shifted.to_bits().wrapping_sub(ROUNDER.to_bits()) as i32;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let y = p.mul_add(r * r, r + 1.0);
    let scale = f32::from_bits((n_int.wrapping_add(127) as u32) << 23);
    if x_in < MIN_X { 0.0 } else { y * scale }
}

/// Without FMA instructions: the reference itself.
#[cfg(not(target_feature = "fma"))]
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    lstm_core::exp::exp(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lstm_core::exp as reference;

    /// (x, e^x in f64): the reference's own table.
    const VECTORS: &[(f32, f64)] = &[
        (0.0, 1.0),
        (1.0, core::f64::consts::E),
        (-1.0, 0.367_879_441_171_442_33),
        (0.346, 1.413_402_615_817_677_1),
        (-0.3465, 0.707_158_819_287_271_3),
        (-10.5, 2.753_644_934_974_716e-5),
        (20.0, 485_165_195.409_790_3),
        (-80.0, 1.804_851_387_845_415e-35),
        (87.0, 6.076_030_225_056_872e37),
    ];
    const REL: f64 = 3e-7;

    #[test]
    fn vectors() {
        for &(x, want) in VECTORS {
            let got = f64::from(exp(x));
            assert!(((got - want) / want).abs() <= REL, "exp({x}) = {got}, want {want}");
        }
        assert_eq!(exp(0.0), 1.0);
    }

    /// Within the bound everywhere, and within two of the reference's rounding steps of it.
    #[test]
    fn sweep_against_f64_and_the_reference() {
        let (mut worst, mut worst_ref) = (0.0f64, 0.0f64);
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (f64::from(exp(x)), f64::from(x).exp());
            worst = worst.max(((got - want) / want).abs());
            let theirs = f64::from(reference::exp(x));
            worst_ref = worst_ref.max(((got - theirs) / theirs).abs());
            x += 0.000_97;
        }
        assert!(worst <= REL, "worst relative error {worst}");
        assert!(worst_ref <= 2.0 * REL, "worst distance from the reference {worst_ref}");
    }

    /// The softmax cross-entropy with this `exp` against the reference's: the same losses and
    /// gradients to within a few float steps, targets at both ends of a row.
    #[test]
    fn softmax_cross_entropy_matches_the_reference() {
        use lstm_core::softmax::{cross_entropy_sum_biased_with, softmax_cross_entropy_biased_with};
        let (m, v) = (4usize, 1000usize);
        let scores: Vec<f32> = (0..m * v).map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 0.02).collect();
        let bias: Vec<f32> = (0..v).map(|i| (i % 11) as f32 * 0.05 - 0.25).collect();
        let targets = [0u32, 999, 500, 3];
        let (mut fast, mut slow) = (scores.clone(), scores.clone());
        let (mut db_fast, mut db_slow) = (vec![0.0f32; v], vec![0.0f32; v]);
        let got = softmax_cross_entropy_biased_with(&mut fast, &bias, &targets, 0.25, &mut db_fast, exp).unwrap();
        let want =
            softmax_cross_entropy_biased_with(&mut slow, &bias, &targets, 0.25, &mut db_slow, reference::exp).unwrap();
        assert!((got - want).abs() <= 1e-6 * want.abs(), "loss {got} vs {want}");
        for (g, w) in fast.iter().zip(&slow).chain(db_fast.iter().zip(&db_slow)) {
            assert!((g - w).abs() <= 1e-6 * w.abs() + 1e-12, "gradient {g} vs {w}");
        }
        let sum = cross_entropy_sum_biased_with(&scores, &bias, &targets, exp).unwrap();
        assert!((sum - want).abs() <= 1e-6 * want.abs(), "loss without gradient {sum} vs {want}");
    }

    #[test]
    fn clamps_and_nan() {
        for x in [f32::NEG_INFINITY, -1e30, -100.0, -87.4] {
            assert_eq!(exp(x), 0.0, "exp({x})");
        }
        for x in [f32::INFINITY, 1e30, 89.0] {
            assert!(exp(x).is_finite() && exp(x) > 1e38, "exp({x})");
        }
        assert!(exp(f32::NAN).is_nan());
    }
}
