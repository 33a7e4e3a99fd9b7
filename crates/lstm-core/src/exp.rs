//! `exp` for the softmax: branch-free, vectorisable, and bit-identical on every target.
//!
//! `x = n·ln 2 + r` with `n = round(x·log₂e)` (Cody–Waite two-part ln 2), `e^r` by a degree-7
//! polynomial on |r| ≤ ln 2 / 2 (Cephes' minimax coefficients), then `2^n` assembled in the
//! exponent bits. Only f32 multiplies and adds in a fixed order and integer bit operations: no
//! table, no libm, no fused multiply-add, so x86-64 (SSE/AVX) and Cortex-M compute the same bits,
//! and the compiler can vectorise loops over it. Inputs are clamped to [−87.33, 88]; the result
//! is 0 below and ≈ 1.65e38 above.

const LOG2E: f32 = core::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5·2²³: adding and subtracting it rounds an f32 of magnitude < 2²² to the nearest integer.
const ROUNDER: f32 = 12_582_912.0;
const MIN_X: f32 = -87.336_55;
const MAX_X: f32 = 88.0;

/// e^x with a relative error below 3e−7 over [−87.33, 88]; exactly 0 below (where e^x is
/// under f32's smallest normal number), about 1.65e38 above.
#[inline(always)]
pub fn exp(x_in: f32) -> f32 {
    let x = x_in.clamp(MIN_X, MAX_X);
    // n = round(x·log₂e): after adding ROUNDER the integer sits in the low mantissa bits, so
    // both the float n and the integer n come without a float-to-int conversion.
    let shifted = x * LOG2E + ROUNDER;
    let n = shifted - ROUNDER;
    let n_int = shifted.to_bits().wrapping_sub(ROUNDER.to_bits()) as i32;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * (r * r) + r + 1.0;
    let scale = f32::from_bits((n_int.wrapping_add(127) as u32) << 23);
    // A select, not a branch: stays vectorisable.
    if x_in < MIN_X { 0.0 } else { y * scale }
}

/// Σ values in a fixed order that vectorises: 8 interleaved partial sums, then a fixed tree.
#[inline]
pub fn sum(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    let mut total = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for v in tail {
        total += v;
    }
    total
}

/// Largest value (−∞ for an empty slice); vectorises like [`sum`].
#[inline]
pub fn max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l = l.max(*v);
        }
    }
    lanes.iter().chain(tail).copied().fold(f32::NEG_INFINITY, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (x, e^x in f64).
    const VECTORS: &[(f32, f64)] = &[
        (0.0, 1.0),
        (1.0, core::f64::consts::E),
        (-1.0, 0.367_879_441_171_442_33),
        (0.346, 1.413_402_615_817_677_1),
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

    #[test]
    fn sweep_against_f64() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = f64::from(x).exp();
            let rel = ((f64::from(exp(x)) - want) / want).abs();
            worst = worst.max(rel);
            x += 0.001_37;
        }
        assert!(worst <= REL, "worst relative error {worst}");
    }

    #[test]
    fn clamps_instead_of_overflowing() {
        for x in [f32::NEG_INFINITY, -1e30, -100.0, -87.4] {
            let y = exp(x);
            assert_eq!(y, 0.0, "exp({x})");
        }
        for x in [f32::INFINITY, 1e30, 89.0] {
            assert!(exp(x).is_finite() && exp(x) > 1e38);
        }
    }

    #[test]
    fn reductions_match_plain_loops() {
        let v: std::vec::Vec<f32> = (0..1001).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.25).collect();
        let plain: f64 = v.iter().map(|&x| f64::from(x)).sum();
        assert!((f64::from(sum(&v)) - plain).abs() < 1e-3);
        assert_eq!(max(&v), v.iter().copied().fold(f32::NEG_INFINITY, f32::max));
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        assert_eq!(sum(&[1.0, 2.0, 3.0]), 6.0);
    }
}
