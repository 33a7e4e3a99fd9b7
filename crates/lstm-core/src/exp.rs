//! `exp` for the softmax: branch-free, vectorisable, and bit-identical on every target.
//!
//! `x = n·ln 2 + r` with `n = round(x·log₂e)` (Cody–Waite two-part ln 2), `e^r` by a degree-7
//! polynomial on |r| ≤ ln 2 / 2 (Cephes' minimax coefficients), then `2^n` assembled in the
//! exponent bits. Only f32 multiplies and adds in a fixed order and integer bit operations: no
//! table, no libm, no fused multiply-add, so x86-64 (SSE/AVX) and Cortex-M compute the same bits,
//! and the compiler can vectorise loops over it. Inputs are clamped to [−87.33, 88]; the result
//! is 0 below and ≈ 1.65e38 above.

// The constants are public so that a host's vector version of [`exp`] (the trainer's AVX-512
// softmax passes) is written from the same numbers; it must give the same bits.
const LOG2E: f32 = core::f32::consts::LOG2_E;
/// ln 2 in two parts (Cody–Waite): `n·LN2_HI` is exact for the `n` that occur.
pub const LN2_HI: f32 = 0.693_359_4;
/// The rest of ln 2: `LN2_HI + LN2_LO` ≈ ln 2.
pub const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5·2²³: adding and subtracting it rounds an f32 of magnitude < 2²² to the nearest integer.
pub const ROUNDER: f32 = 12_582_912.0;
/// Inputs below this give exactly 0 (e^x under f32's smallest normal number).
pub const MIN_X: f32 = -87.336_55;
/// Inputs above this are clamped to it.
pub const MAX_X: f32 = 88.0;
/// The polynomial for `e^r` on |r| ≤ ln 2 / 2, highest degree first, evaluated by Horner's
/// rule as `p·r + c` and finished as `p·r² + r + 1` (Cephes' minimax coefficients).
pub const POLY: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];

/// e^x with a relative error below 3e−7 over [−87.33, 88]; exactly 0 below (where e^x is
/// under f32's smallest normal number), about 1.65e38 above.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    exp_by(x, |a, b, c| a * b + c)
}

/// [`exp`]'s range reduction and polynomial with `a·b + c` computed by `mul_add`: with a
/// separate multiply and add (as [`exp`] itself) every target computes the same bits; a host
/// whose softmax needs no such promise passes a fused multiply-add (the trainer's `fast_exp`)
/// and gets the same error bound in two thirds of the operations.
#[inline(always)]
pub fn exp_by(x_in: f32, mul_add: impl Fn(f32, f32, f32) -> f32) -> f32 {
    // Plain selects rather than `clamp` (whose NaN rules cost two extra instructions per lane
    // on x86); a NaN passes through both and stays NaN.
    let x = if x_in < MIN_X { MIN_X } else { x_in };
    let x = if x > MAX_X { MAX_X } else { x };
    // n = round(x·log₂e): after adding ROUNDER the integer sits in the low mantissa bits, so
    // both the float n and the integer n come without a float-to-int conversion.
    let shifted = mul_add(x, LOG2E, ROUNDER);
    let n = shifted - ROUNDER;
    let n_int = shifted.to_bits().wrapping_sub(ROUNDER.to_bits()) as i32;
    // (x − n·ln2_hi) − n·ln2_lo; adding the negated product is the same subtraction.
    let r = mul_add(n, -LN2_LO, mul_add(n, -LN2_HI, x));
    let mut p = POLY[0];
    for &c in &POLY[1..] {
        p = mul_add(p, r, c);
    }
    let y = mul_add(p, r * r, r) + 1.0;
    let scale = f32::from_bits((n_int.wrapping_add(127) as u32) << 23);
    // A select, not a branch: stays vectorisable.
    if x_in < MIN_X { 0.0 } else { y * scale }
}

/// The larger of two values as one select (`maxps` on x86): a NaN in `b` is ignored, like
/// `f32::max`, while `f32::max` itself costs a NaN test per lane.
#[inline(always)]
fn larger(a: f32, b: f32) -> f32 {
    if b > a { b } else { a }
}

/// Independent partial results per reduction: several vector registers of work in flight, so
/// the passes run at the machine's throughput rather than at one add's latency (32 measured
/// 25% faster than 16 for the loss-only pass on the AVX-512 host). Public, with
/// [`fold_lanes`], for a host's vector version of these passes, which must sum in this order.
pub const LANES: usize = 32;

/// The fixed reduction tree over the lanes.
#[inline(always)]
pub fn fold_lanes(l: &[f32; LANES]) -> f32 {
    let mut v = *l;
    let mut n = LANES;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            v[i] += v[i + n];
        }
    }
    v[0]
}

/// Σ values in a fixed order that vectorises: 32 interleaved partial sums, then a fixed tree,
/// then the tail in order.
#[inline]
pub fn sum(values: &[f32]) -> f32 {
    let (chunks, tail) = values.as_chunks::<LANES>();
    let mut lanes = [0.0f32; LANES];
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    tail.iter().fold(fold_lanes(&lanes), |total, v| total + v)
}

/// `values[i] ← exp(values[i] − shift)` and their sum, in one pass; the sum is exactly
/// [`sum`] of the new values.
#[inline]
pub fn exp_shifted_sum(values: &mut [f32], shift: f32) -> f32 {
    let (chunks, tail) = values.as_chunks_mut::<LANES>();
    let mut lanes = [0.0f32; LANES];
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *v = exp(*v - shift);
            *l += *v;
        }
    }
    let mut total = fold_lanes(&lanes);
    for v in tail {
        *v = exp(*v - shift);
        total += *v;
    }
    total
}

/// `Σ exp(values[i] − shift)` in the order of [`exp_shifted_sum`], without storing anything.
#[inline]
pub fn exp_sum(values: &[f32], shift: f32) -> f32 {
    let (chunks, tail) = values.as_chunks::<LANES>();
    let mut lanes = [0.0f32; LANES];
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += exp(v - shift);
        }
    }
    tail.iter().fold(fold_lanes(&lanes), |total, v| total + exp(v - shift))
}

/// `max(a[i] + b[i])` (over the common length) without storing the sums.
#[inline]
pub fn max_of_sums(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let ((ca, ta), (cb, tb)) = (a[..n].as_chunks::<LANES>(), b[..n].as_chunks::<LANES>());
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for (x, y) in ca.iter().zip(cb) {
        for ((l, p), q) in lanes.iter_mut().zip(x).zip(y) {
            *l = larger(*l, p + q);
        }
    }
    let best = lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    ta.iter().zip(tb).fold(best, |m, (p, q)| m.max(p + q))
}

/// `Σ exp(a[i] + b[i] − shift)` (over the common length) in the order of
/// [`exp_shifted_sum`], without storing anything.
#[inline]
pub fn exp_sum_of_sums(a: &[f32], b: &[f32], shift: f32) -> f32 {
    exp_sum_of_sums_with(a, b, shift, exp)
}

/// [`exp_sum_of_sums`] with another `exp` (a host's faster one; see the trainer's
/// `fast_exp`): the same passes and summation order.
#[inline]
pub fn exp_sum_of_sums_with(a: &[f32], b: &[f32], shift: f32, e: impl Fn(f32) -> f32) -> f32 {
    let n = a.len().min(b.len());
    let ((ca, ta), (cb, tb)) = (a[..n].as_chunks::<LANES>(), b[..n].as_chunks::<LANES>());
    let mut lanes = [0.0f32; LANES];
    for (x, y) in ca.iter().zip(cb) {
        for ((l, p), q) in lanes.iter_mut().zip(x).zip(y) {
            *l += e(p + q - shift);
        }
    }
    ta.iter().zip(tb).fold(fold_lanes(&lanes), |total, (p, q)| total + e(p + q - shift))
}

/// `values[i] ← exp(values[i] + offsets[i] − shift)` (over the common length) and their sum,
/// in one pass: what [`exp_shifted_sum`] gives on the biased values
/// `values[i] + offsets[i]`, without a pass that stores them first.
#[inline]
pub fn exp_of_sums_shifted_sum(values: &mut [f32], offsets: &[f32], shift: f32) -> f32 {
    let n = values.len().min(offsets.len());
    let ((cv, tv), (co, to)) = (values[..n].as_chunks_mut::<LANES>(), offsets[..n].as_chunks::<LANES>());
    let mut lanes = [0.0f32; LANES];
    for (c, o) in cv.iter_mut().zip(co) {
        for ((l, v), b) in lanes.iter_mut().zip(c).zip(o) {
            *v = exp(*v + b - shift);
            *l += *v;
        }
    }
    let mut total = fold_lanes(&lanes);
    for (v, b) in tv.iter_mut().zip(to) {
        *v = exp(*v + b - shift);
        total += *v;
    }
    total
}

/// `values[i] ← values[i]·k` and `totals[i] += values[i]` (over the common length), in one pass.
#[inline]
pub fn scale_and_accumulate(values: &mut [f32], k: f32, totals: &mut [f32]) {
    for (v, t) in values.iter_mut().zip(totals) {
        *v *= k;
        *t += *v;
    }
}

/// Largest value (−∞ for an empty slice); vectorises like [`sum`].
#[inline]
pub fn max(values: &[f32]) -> f32 {
    let (chunks, tail) = values.as_chunks::<LANES>();
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l = larger(*l, *v);
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

    #[test]
    fn fused_passes_match_the_separate_ones() {
        for len in [0usize, 5, 16, 37, 1000] {
            let v: std::vec::Vec<f32> = (0..len).map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.1).collect();
            let b: std::vec::Vec<f32> = (0..len).map(|i| (i % 5) as f32 * 0.2).collect();
            let biased: std::vec::Vec<f32> = v.iter().zip(&b).map(|(x, y)| x + y).collect();
            let mut fused = biased.clone();
            let m = max(&biased);
            assert_eq!(m, max_of_sums(&v, &b));
            let lazy = exp_sum_of_sums(&v, &b, m);
            let s = exp_shifted_sum(&mut fused, m);
            let want: std::vec::Vec<f32> = biased.iter().map(|&x| exp(x - m)).collect();
            assert_eq!(fused, want);
            assert_eq!(s, sum(&want));
            assert_eq!(s, lazy);
            assert_eq!(exp_sum(&biased, m), s);
            let mut one_pass = v.clone();
            assert_eq!(exp_of_sums_shifted_sum(&mut one_pass, &b, m), s);
            assert_eq!(one_pass, want);
            let (mut scaled, mut totals) = (want.clone(), b.clone());
            scale_and_accumulate(&mut scaled, 0.5, &mut totals);
            for i in 0..len {
                assert_eq!(scaled[i], want[i] * 0.5);
                assert_eq!(totals[i], b[i] + want[i] * 0.5);
            }
        }
    }
}
