//! Symmetric int8 quantization and the integer dot product of the quantized path.
//!
//! A vector `x` is stored as `q = round(x / s)` with `s = max|x| / 127`, so `x ≈ s·q` and
//! `q ∈ [−127, 127]`. Products of two quantized vectors are exact in i32 (|q·q| ≤ 16129, so
//! up to 133 000 terms cannot overflow), then scaled back in f32. Only integer arithmetic,
//! IEEE-exact f32 operations and `libm` are used, so every target computes identical bits.

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

/// Dot products of four int8 weight rows stored back to back in `block` (row `r` is
/// `block[r·n .. (r+1)·n]`, `n = x.len()`; rows missing from a short block give 0) with one int8
/// vector. Exact, so every implementation returns the same integers: `SMLAD`/`SXTB16` on
/// Armv7E-M, portable elsewhere.
#[inline(always)]
pub fn dot_i8_x4(block: &[u8], x: &[i8]) -> [i32; 4] {
    #[cfg(arm_dsp)]
    {
        dsp::dot_i8_x4(block, x)
    }
    #[cfg(not(arm_dsp))]
    {
        let n = x.len();
        core::array::from_fn(|r| block.get(r * n..(r + 1) * n).map_or(0, |row| dot_i8(row, x)))
    }
}

/// `Σ a[k]·b[k]` for int8 weights stored as bytes (`a`) and int8 activations (`b`).
#[inline]
pub fn dot_i8(a: &[u8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&w, &x)| i32::from(w as i8) * i32::from(x)).sum()
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
    fn four_row_dot_equals_single_dots() {
        let x: [i8; 11] = [127, -127, 3, -4, 5, 0, 7, -8, 9, 10, -11];
        let block: [u8; 44] = core::array::from_fn(|i| (i * 37 + (i % 11) * 91) as u8);
        let got = dot_i8_x4(&block, &x);
        for r in 0..4 {
            assert_eq!(got[r], dot_i8(&block[r * 11..(r + 1) * 11], &x));
        }
    }

    #[test]
    fn dot_is_exact() {
        let a = [127u8, 0x81, 2]; // 127, −127, 2
        let b = [127i8, 127, -3];
        assert_eq!(dot_i8(&a, &b), 127 * 127 - 127 * 127 - 6);
        assert_eq!(f32_at(&1.5f32.to_le_bytes(), 0), Some(1.5));
        assert_eq!(f32_at(&[0, 0, 0], 0), None);
    }
}
