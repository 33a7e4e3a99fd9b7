//! The paired int8 weight layout: two rows share every 16-bit half-word, so one `SMLAD` on the
//! raw word multiplies four weights by two activations.
//!
//! Rows come in pairs `(2m, 2m+1)`; pair `m` takes `2·cols` bytes. Word `k` of a pair (bytes
//! `4k .. 4k+4`) holds columns `2k` and `2k+1`, each as a little-endian half-word
//! `256·q[2m][j] + (q[2m+1][j] + 128)`: the even row's weight is the signed high byte, the odd
//! row's weight is stored offset by 128 in the unsigned low byte. With activations `x` packed as
//! int16 pairs `X_k = (x_2k, x_2k+1)`:
//!
//! - `raw = Σ_k SMLAD(W_k, X_k) = 256·Σ q_even·x + Σ (q_odd + 128)·x`
//! - `low = Σ_k SMLAD(UXTB16(W_k), X_k) = Σ (q_odd + 128)·x`
//!
//! so `raw − low = 256·Σ q_even·x` and `low − 128·Σx = Σ q_odd·x`: two dot products for three
//! instructions per four weights, where sign-extending every byte (`SXTB16`) costs four.
//!
//! Sums are exact in i32 over [`SEGMENT_COLS`] columns (`256·256·128·128 = 2³⁰`, even for
//! weights and activations of −128 from a hostile file); wider rows are summed per segment in
//! i64 ([`pair_sums_wide`]).

/// Columns one i32 accumulation may span exactly.
pub const SEGMENT_COLS: usize = 256;

/// Bytes of a `rows × cols` matrix in the paired layout (an odd last row is padded with zeros).
pub fn paired_len(rows: usize, cols: usize) -> Option<usize> {
    rows.div_ceil(2).checked_mul(2)?.checked_mul(cols)
}

/// Byte of weight `(r, j)` inside its pair: high byte for even rows, low byte for odd rows.
#[inline]
fn byte_index(cols: usize, r: usize, j: usize) -> usize {
    (r / 2) * 2 * cols + 2 * j + usize::from(r.is_multiple_of(2))
}

/// Writes the row-major int8 matrix `q` (`rows × cols`) into `out` (`paired_len` bytes).
///
/// # Panics
/// If `q` or `out` have other lengths than `rows × cols` and `paired_len(rows, cols)`.
pub fn encode_paired(q: &[i8], rows: usize, cols: usize, out: &mut [u8]) {
    assert_eq!(q.len(), rows * cols, "encode_paired: matrix length");
    assert_eq!(Some(out.len()), paired_len(rows, cols), "encode_paired: output length");
    // Padding row: weight 0, i.e. low bytes 0x80.
    for (i, b) in out.iter_mut().enumerate() {
        *b = if i % 2 == 0 { 0x80 } else { 0 };
    }
    for r in 0..rows {
        for j in 0..cols {
            let v = q[r * cols + j] as u8;
            out[byte_index(cols, r, j)] = if r % 2 == 0 { v } else { v ^ 0x80 };
        }
    }
}

/// Quantizes each row of the row-major `rows × cols` matrix `data` with its own scale
/// ([`super::quantize`], scales into `scales`) and writes the int8 rows into `out` in the paired
/// layout; `q` is `rows × cols` scratch. What the exporter does to every weight matrix.
///
/// # Panics
/// If a buffer's length is not the one the shape implies.
pub fn quantize_paired(data: &[f32], rows: usize, cols: usize, q: &mut [i8], scales: &mut [f32], out: &mut [u8]) {
    assert_eq!(data.len(), rows * cols, "quantize_paired: matrix length");
    assert_eq!(scales.len(), rows, "quantize_paired: one scale per row");
    for ((row, qr), s) in data.chunks_exact(cols.max(1)).zip(q.chunks_exact_mut(cols.max(1))).zip(scales.iter_mut()) {
        *s = super::quantize(row, qr);
    }
    encode_paired(q, rows, cols, out);
}

/// Weight `(r, j)` of a paired matrix of `cols` columns (`None` outside `blob`).
#[inline]
pub fn paired_weight(blob: &[u8], cols: usize, r: usize, j: usize) -> Option<i8> {
    let b = *blob.get(byte_index(cols, r, j))?;
    Some(if r.is_multiple_of(2) { b as i8 } else { (b ^ 0x80) as i8 })
}

/// Packs int16 activations two per word, `X_k = x_2k | x_2k+1 << 16` (an odd tail pairs with
/// 0), and returns `128·Σx` for each [`SEGMENT_COLS`]-column segment through `offsets`.
pub fn pack_activations(x: impl IntoIterator<Item = i16>, out: &mut [i32], offsets: &mut [i32]) {
    out.fill(0);
    offsets.fill(0);
    for (j, v) in x.into_iter().enumerate() {
        if let Some(w) = out.get_mut(j / 2) {
            *w |= i32::from(v as u16) << (16 * (j % 2));
        }
        if let Some(k) = offsets.get_mut(j / SEGMENT_COLS) {
            *k += 128 * i32::from(v);
        }
    }
}

/// Segments of a row of `cols` columns.
pub fn segments(cols: usize) -> usize {
    cols.div_ceil(SEGMENT_COLS)
}

/// `[256·Σ q_even·x, Σ q_odd·x]` for one pair (`pair`: `4·x.len()` bytes, at most
/// [`SEGMENT_COLS`] columns) and activations packed by [`pack_activations`] whose segment
/// offset is `offset`. Exact.
#[inline(always)]
pub fn pair_sums(pair: &[u8], x: &[i32], offset: i32) -> [i32; 2] {
    let [raw, low] = raw_sums(pair, x);
    [raw.wrapping_sub(low), low.wrapping_sub(offset)]
}

/// [`pair_sums`] for rows of any width: per segment, summed in i64.
pub fn pair_sums_wide(pair: &[u8], x: &[i32], offsets: &[i32]) -> [i64; 2] {
    let words = SEGMENT_COLS / 2;
    let mut acc = [0i64; 2];
    for ((p, xs), &k) in pair.chunks(4 * words).zip(x.chunks(words)).zip(offsets) {
        let s = pair_sums(p, xs, k);
        acc[0] += i64::from(s[0]);
        acc[1] += i64::from(s[1]);
    }
    acc
}

/// `[raw, low]` of the module docs, wrapping i32 like `SMLAD`.
#[inline(always)]
fn raw_sums(pair: &[u8], x: &[i32]) -> [i32; 2] {
    #[cfg(arm_dsp)]
    {
        super::dsp::raw_sums(pair, x)
    }
    #[cfg(not(arm_dsp))]
    {
        raw_sums_portable(pair, x)
    }
}

/// The same sums with plain integer arithmetic.
#[inline]
pub(crate) fn raw_sums_portable(pair: &[u8], x: &[i32]) -> [i32; 2] {
    let (mut raw, mut low) = (0i32, 0i32);
    for (w, &xk) in pair.chunks_exact(4).zip(x) {
        let (x0, x1) = (i32::from(xk as i16), xk >> 16);
        let (h0, h1) = (i32::from(i16::from_le_bytes([w[0], w[1]])), i32::from(i16::from_le_bytes([w[2], w[3]])));
        raw = raw.wrapping_add(h0.wrapping_mul(x0)).wrapping_add(h1.wrapping_mul(x1));
        low = low.wrapping_add(i32::from(w[0]) * x0).wrapping_add(i32::from(w[2]) * x1);
    }
    [raw, low]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(q: &[i8], cols: usize, r: usize, x: &[i16]) -> i64 {
        (0..cols).map(|j| i64::from(q[r * cols + j]) * i64::from(x[j])).sum()
    }

    fn check(rows: usize, cols: usize, q: &[i8], x: &[i16]) {
        let mut blob = std::vec![0u8; paired_len(rows, cols).unwrap()];
        encode_paired(q, rows, cols, &mut blob);
        for r in 0..rows {
            for j in 0..cols {
                assert_eq!(paired_weight(&blob, cols, r, j), Some(q[r * cols + j]));
            }
        }
        let mut packed = std::vec![0i32; cols.div_ceil(2)];
        let mut offsets = std::vec![0i32; segments(cols)];
        pack_activations(x.iter().copied(), &mut packed, &mut offsets);
        for (m, pair) in blob.chunks_exact(2 * cols).enumerate() {
            let got = pair_sums_wide(pair, &packed, &offsets);
            assert_eq!(got[0], 256 * reference(q, cols, 2 * m, x), "row {}", 2 * m);
            let odd = if 2 * m + 1 < rows { reference(q, cols, 2 * m + 1, x) } else { 0 };
            assert_eq!(got[1], odd, "row {}", 2 * m + 1);
            if cols <= SEGMENT_COLS {
                let narrow = pair_sums(pair, &packed, offsets[0]);
                assert_eq!([i64::from(narrow[0]), i64::from(narrow[1])], got);
            }
        }
    }

    #[test]
    fn sums_equal_plain_dot_products() {
        // Extreme values, an odd row count, one column pair.
        let q: std::vec::Vec<i8> = (0..3 * 6).map(|i| [127, -128, 0, 1, -1, -127][i % 6]).collect();
        check(3, 6, &q, &[-128, 127, 127, -128, 5, -7]);
        check(1, 2, &[-128, -128], &[-128, -128]);
        let mut rng = crate::Rng::new(7);
        for (rows, cols) in [(4, 64), (5, 10), (2, 256), (6, 650), (2, 600)] {
            let q: std::vec::Vec<i8> = (0..rows * cols).map(|_| (rng.next_u64() % 256) as u8 as i8).collect();
            let x: std::vec::Vec<i16> = (0..cols).map(|_| (rng.next_u64() % 256) as i16 - 128).collect();
            check(rows, cols, &q, &x);
        }
    }

    #[test]
    fn worst_case_segment_does_not_overflow() {
        let cols = SEGMENT_COLS;
        let q = std::vec![-128i8; 2 * cols];
        check(2, cols, &q, &std::vec![-128i16; cols]);
    }

    #[test]
    fn layout_test_vector() {
        // Rows [1, -2] and [3, -4]: halves 256·1 + (3+128), 256·(−2) + (−4+128).
        let mut out = [0u8; 4];
        encode_paired(&[1, -2, 3, -4], 2, 2, &mut out);
        assert_eq!(out, [131, 1, 124, 0xfe]);
    }
}
