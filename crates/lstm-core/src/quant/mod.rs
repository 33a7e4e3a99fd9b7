//! Symmetric int8 quantization and the integer dot products of the quantized path.
//!
//! A weight row `x` is stored as `q = round(x / s)` with `s = max|x| / 127`, so `x ≈ s·q` and
//! `q ∈ [−127, 127]`; hidden states, which lie in (−1, 1), use the fixed scale 1/127
//! ([`quantize_unit`]). Rows are stored two by two ([`paired`]) and their dot products with
//! int16 activations are exact integers, scaled back in f32 (LSTM gates) or kept as integers
//! (logits, see `format`). Only integer arithmetic, IEEE-exact f32 operations and `libm` are
//! used, so every target computes identical bits; `dsp` (Cortex-M4 only) is the one place with
//! `unsafe`, hand-scheduled `SMLAD` loops that produce the same integers as the portable code.

/// Scale for a vector whose largest magnitude is `max_abs` (1 for an all-zero vector, so that
/// dequantization never divides by zero).
#[inline]
pub fn scale_for(max_abs: f32) -> f32 {
    if max_abs > 0.0 && max_abs.is_finite() { max_abs / 127.0 } else { 1.0 }
}

/// Quantizes `x` into `q` with one scale for the whole vector; returns the scale.
pub fn quantize(x: &[f32], q: &mut [i8]) -> f32 {
    let max_abs = x.iter().fold(0.0f32, |m, v| m.max(libm::fabsf(*v)));
    let s = scale_for(max_abs);
    for (qi, &xi) in q.iter_mut().zip(x) {
        *qi = libm::roundf(xi / s).clamp(-127.0, 127.0) as i8;
    }
    s
}

#[cfg(arm_dsp)]
mod dsp;
#[cfg(arm_dsp)]
pub(crate) use dsp::{all_pair_sums, scan_logits};
pub mod paired;

/// The fixed quantization scale of hidden states, which lie in (−1, 1) (`h = o·tanh c`).
pub const UNIT_SCALE: f32 = 1.0 / 127.0;

/// `round(127·v)` for `v` in [−1, 1] (outside: clamped; NaN: 0), rounding half to even by the
/// float adder: adding 1.5·2²³ leaves the rounded integer in the low mantissa bits, three
/// instructions instead of a `roundf` call.
#[inline]
pub fn quantize_unit(v: f32) -> i16 {
    const MAGIC: f32 = 12_582_912.0;
    let v = if v > 1.0 {
        1.0
    } else if v < -1.0 {
        -1.0
    } else if v.is_nan() {
        0.0
    } else {
        v
    };
    ((v * 127.0 + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32) as i16
}

/// Reads the `i`-th little-endian f32 of `bytes` (no alignment needed, no reference formed).
/// Returns `None` past the end.
#[inline]
pub fn f32_at(bytes: &[u8], i: usize) -> Option<f32> {
    let b = bytes.get(4 * i..4 * i + 4)?;
    Some(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_error_is_within_half_a_step() {
        let x = [0.5f32, -1.27, 0.0, 0.003, 1.0];
        let mut q = [0i8; 5];
        let s = quantize(&x, &mut q);
        assert!((s - 0.01).abs() < 1e-9);
        assert_eq!(q, [50, -127, 0, 0, 100]);
        for (xi, qi) in x.iter().zip(q) {
            assert!((xi - s * f32::from(qi)).abs() <= s / 2.0 + 1e-7);
        }
    }

    #[test]
    fn zero_and_non_finite_vectors_are_safe() {
        let mut q = [1i8; 3];
        assert_eq!(quantize(&[0.0; 3], &mut q), 1.0);
        assert_eq!(q, [0; 3]);
    }

    #[test]
    fn unit_quantization_test_vectors() {
        let vectors = [(0.0f32, 0i16), (1.0, 127), (-1.0, -127), (0.5, 64), (-0.5, -64), (0.0039, 0), (0.004, 1)];
        for (v, q) in vectors {
            assert_eq!(quantize_unit(v), q, "{v}");
        }
        assert_eq!(quantize_unit(7.0), 127);
        assert_eq!(quantize_unit(f32::NEG_INFINITY), -127);
        assert_eq!(quantize_unit(f32::NAN), 0);
        // Half-way cases round to even: 127·v = 0.5 and 1.5 exactly.
        assert_eq!(quantize_unit(0.5 / 127.0), 0);
        assert_eq!(quantize_unit(1.5 / 127.0), 2);
    }

    #[test]
    fn f32_reads_by_value() {
        assert_eq!(f32_at(&1.5f32.to_le_bytes(), 0), Some(1.5));
        assert_eq!(f32_at(&[0, 0, 0], 0), None);
    }
}
