//! `exp` with fused multiply-adds, for the host's evaluation softmax.
//!
//! `lstm_core::exp::exp` keeps every multiply and add separate so that x86 and Cortex-M compute
//! the same bits; an evaluation's losses need no such promise (the firmware never sees them),
//! and with fused multiply-adds the same range reduction and polynomial
//! (`lstm_core::exp::exp_by`) take 20 vector operations instead of 30. Where the compiler may
//! not use FMA instructions (a build without `target-cpu=native` on x86, say) this is
//! `lstm_core::exp::exp` itself: `f32::mul_add` without them is a library call. Evaluation
//! +7–10% (same-process A/B: `book`, `small`, `embedded`). Training keeps the reference: with
//! this `exp` a 10-epoch `embedded` run took another trajectory (validation perplexity 149.41
//! against 148.39) for 0.8% more speed, while with the reference this release trains the
//! previous release's bits.

/// e^x with a relative error below 3e−7 over [−87.33, 88] (as `lstm_core::exp::exp`); exactly
/// 0 below, about 1.65e38 above; NaN stays NaN.
#[cfg(target_feature = "fma")]
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    lstm_core::exp::exp_by(x, f32::mul_add)
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

    const REL: f64 = 3e-7;

    /// Within the reference's bound against f64 everywhere, and within two of its rounding
    /// steps of the reference; exact where the polynomial is (e⁰).
    #[test]
    fn sweep_against_f64_and_the_reference() {
        assert_eq!(exp(0.0), 1.0);
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

    /// The evaluation's losses with this `exp` against the reference's: whole rows and
    /// vocabulary pieces to within a few float steps, targets at both ends of a row.
    #[test]
    fn evaluation_losses_match_the_reference() {
        use lstm_core::softmax::{PartialLogSumExp, cross_entropy_sum_biased, cross_entropy_sum_biased_with};
        let (m, v) = (4usize, 1000usize);
        let scores: Vec<f32> = (0..m * v).map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 0.02).collect();
        let bias: Vec<f32> = (0..v).map(|i| (i % 11) as f32 * 0.05 - 0.25).collect();
        let targets = [0u32, 999, 500, 3];
        let got = cross_entropy_sum_biased_with(&scores, &bias, &targets, exp).unwrap();
        let want = cross_entropy_sum_biased(&scores, &bias, &targets).unwrap();
        assert!((got - want).abs() <= 1e-6 * want.abs(), "loss {got} vs {want}");
        for row in scores.chunks_exact(v) {
            for piece in [0..512, 512..1000] {
                let fast = PartialLogSumExp::of_biased_with(&row[piece.clone()], &bias[piece.clone()], exp).value();
                let slow = PartialLogSumExp::of_biased(&row[piece.clone()], &bias[piece]).value();
                assert!((fast - slow).abs() <= 1e-6 * slow.abs().max(1.0), "piece {fast} vs {slow}");
            }
        }
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
