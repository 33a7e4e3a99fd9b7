//! The AVX-512 micro-kernel (one `MR × NR` tile of `C` from panels of `A` and `B`), the
//! 16 × 16 register transpose that packs transposed operands, and the training softmax's row
//! passes at 16 lanes (the reference's operations, bit for bit).
//!
//! One of the trainer's two `unsafe` modules (the other, `amx.rs`, drives the tile unit).
//! Measured on the 2-core Xeon this project trains on (Sapphire Rapids class): a 10 × 32 tile of 512-bit FMAs runs at ~175 GFLOP/s per core in cache, a
//! 6 × 16 tile of 256-bit ones at ~86. `matrixmultiply` reaches AVX-512 too for a plain
//! product, but a kernel of our own is what lets the trainer pack an operand once for many
//! products (the tied embedding, the recurrent weights), read row-major operands in place and
//! fuse the output layer; those decide the training speed. Stable Rust has no safe way to ask
//! for 512-bit vectors in one function, hence intrinsics behind a run-time CPU check.
#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m512, __m512i, _CMP_NLT_UQ, _MM_HINT_T0, _mm_prefetch, _mm512_add_ps, _mm512_cmp_ps_mask, _mm512_fmadd_ps,
    _mm512_loadu_ps, _mm512_loadu_si512, _mm512_maskz_scalef_ps, _mm512_max_ps, _mm512_min_ps, _mm512_mul_ps,
    _mm512_permutex2var_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps, _mm512_sub_ps,
};

/// How many steps of `k` ahead the kernel asks for `B`'s next lines. The hardware prefetcher
/// alone left a streamed panel short of bandwidth; same-process A/B, step by step, with 16
/// ahead: training +5–8% (`book`), +7–10% (`small`), +4–8% (`embedded`), evaluation +8–16%
/// (8, 24 and 32 measured within a few percent of 16).
const PREFETCH_STEPS: usize = 16;

/// Rows of `C` per tile (one broadcast of `A` each per step of `k`).
pub const MR: usize = 10;
/// Columns of `C` per tile (two 16-lane registers).
pub const NR: usize = 32;

/// Proof that the running CPU has AVX-512F: only [`Avx512::detect`] makes one.
#[derive(Debug, Clone, Copy)]
pub struct Avx512(());

impl Avx512 {
    /// `Some` when the CPU executes AVX-512F instructions.
    pub fn detect() -> Option<Avx512> {
        std::arch::is_x86_feature_detected!("avx512f").then_some(Avx512(()))
    }

    /// `C[r][j] ← alpha·Σₚ A(r, p)·B(p, j) + beta·C[r][j]` for `r < MR`, `j < NR`, where
    /// `C[r][j]` is `c[r·ldc + j]`. With `beta == 0`, `C` is not read.
    ///
    /// Each sum runs over `p` in order with one fused multiply-add per step, and the epilogue
    /// is `fma(C, beta, alpha·sum)`: callers that finish edge tiles themselves reproduce it
    /// bit for bit (see `packed.rs`).
    ///
    /// # Panics
    /// If a panel is shorter than `k` steps or `c` does not hold the tile.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn tile(self, k: usize, alpha: f32, a: APanel<'_>, b: BPanel<'_>, beta: f32, c: &mut [f32], ldc: usize) {
        self.tile_vectors::<2>(k, alpha, a, b, beta, c, ldc);
    }

    /// [`Avx512::tile`] on the first `16·V` columns only (`V` = 1 or 2; `C[r][j]` for
    /// `j < 16·V`, reading as many columns of `B`). With `V` = 1: the edge tile of a product
    /// whose width leaves at most 16 columns in its last panel (`D` = 200: 8 of 32; 650: 10),
    /// at half the multiply-adds. Every element is the same sequence of fused multiply-adds
    /// as in [`Avx512::tile`], so the same bits.
    ///
    /// # Panics
    /// If a panel is shorter than `k` steps or `c` does not hold the `16·V` columns.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn tile_vectors<const V: usize>(
        self,
        k: usize,
        alpha: f32,
        a: APanel<'_>,
        b: BPanel<'_>,
        beta: f32,
        c: &mut [f32],
        ldc: usize,
    ) {
        let width = 16 * V;
        if k == 0 {
            let zero = [0.0f32; MR * NR];
            return self.tile_vectors::<V>(1, alpha, APanel::packed(&zero), BPanel::packed(&zero), beta, c, ldc);
        }
        assert!(a.data.len() > (MR - 1) * a.rs + (k - 1) * a.cs, "micro-kernel: A panel too short");
        assert!(b.data.len() >= (k - 1) * b.ld + width, "micro-kernel: B panel too short");
        assert!(ldc >= width && c.len() >= (MR - 1) * ldc + width, "micro-kernel: tile outside C");
        // SAFETY: `self` exists only when AVX-512F was detected at run time, so the
        // `target_feature` function may run. The asserts above bound every access: reads of
        // `a` at `r·rs + p·cs ≤ (MR−1)·rs + (k−1)·cs`, of `b` at `p·ld + j < (k−1)·ld + 16·V`,
        // and reads/writes of `c` at `r·ldc + j < (MR−1)·ldc + 16·V`, for `r < MR`, `p < k`,
        // `j < 16·V`.
        unsafe {
            if a.rs == 1 && a.cs == MR {
                tile_avx512::<true, V>(k, alpha, a, b, beta, c.as_mut_ptr(), ldc);
            } else {
                tile_avx512::<false, V>(k, alpha, a, b, beta, c.as_mut_ptr(), ldc);
            }
        }
    }

    /// `values[i] ← exp(values[i] + offsets[i] − shift)` and their sum, bit for bit what
    /// `lstm_core::exp::exp_of_sums_shifted_sum` computes: the same operations (no fused
    /// multiply-add) in the same order, the same 32 partial sums and fixed tree, 16 lanes per
    /// instruction where the compiler's own vectorisation of the reference uses 8.
    pub fn exp_of_sums_shifted_sum(self, values: &mut [f32], offsets: &[f32], shift: f32) -> f32 {
        let n = values.len().min(offsets.len());
        let full = n / LANES * LANES;
        let mut lanes = [0.0f32; LANES];
        // SAFETY: AVX-512F was detected (`self` exists); the function reads and writes
        // `values[..full]` and reads `offsets[..full]`, both at least `full` long.
        unsafe { exp_of_sums_avx512(values.as_mut_ptr(), offsets.as_ptr(), full, shift, &mut lanes) };
        let mut total = lstm_core::exp::fold_lanes(&lanes);
        for (v, b) in values[full..n].iter_mut().zip(&offsets[full..n]) {
            *v = lstm_core::exp::exp(*v + b - shift);
            total += *v;
        }
        total
    }

    /// `max(a[i] + b[i])`: `lstm_core::exp::max_of_sums` (the same 32 running maxima, then
    /// its fold and tail).
    pub fn max_of_sums(self, a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let full = n / LANES * LANES;
        let mut lanes = [f32::NEG_INFINITY; LANES];
        // SAFETY: AVX-512F was detected; `a` and `b` hold at least `full` floats.
        unsafe { max_of_sums_avx512(a.as_ptr(), b.as_ptr(), full, &mut lanes) };
        let best = lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        a[full..n].iter().zip(&b[full..n]).fold(best, |m, (p, q)| m.max(p + q))
    }

    /// `values[i] ← values[i]·k`, `totals[i] += values[i]`: `lstm_core::exp::scale_and_accumulate`.
    pub fn scale_and_accumulate(self, values: &mut [f32], k: f32, totals: &mut [f32]) {
        let n = values.len().min(totals.len());
        let full = n / 16 * 16;
        // SAFETY: AVX-512F was detected; both slices hold at least `full` floats.
        unsafe { scale_and_accumulate_avx512(values.as_mut_ptr(), k, totals.as_mut_ptr(), full) };
        for (v, t) in values[full..n].iter_mut().zip(&mut totals[full..n]) {
            *v *= k;
            *t += *v;
        }
    }

    /// `dst[q·dst_stride + r] = src[r·src_stride + q]` for `r, q < 16`: a 16 × 16 block
    /// transposed in registers, so packing a transposed operand (`Eᵀ`, `Wxᵀ`, `Whᵀ`) reads and
    /// writes whole cache lines instead of one float per row and step.
    ///
    /// # Panics
    /// If either slice does not hold its 16 × 16 block.
    pub fn transpose16(self, src: &[f32], src_stride: usize, dst: &mut [f32], dst_stride: usize) {
        assert!(src_stride >= 16 && src.len() >= 15 * src_stride + 16, "transpose16: source block out of bounds");
        assert!(dst_stride >= 16 && dst.len() >= 15 * dst_stride + 16, "transpose16: destination block out of bounds");
        // SAFETY: AVX-512F was detected (`self` exists), and the asserts bound every access:
        // rows `r·stride .. r·stride + 16` for `r < 16` of either slice.
        unsafe { transpose16_avx512(src.as_ptr(), src_stride, dst.as_mut_ptr(), dst_stride) }
    }
}

/// The reference's partial sums per pass: two 16-lane registers.
const LANES: usize = lstm_core::exp::LANES;
const _: () = assert!(LANES == 32, "the passes below keep the reference's partial sums in two registers");

/// `lstm_core::exp::exp` on 16 lanes: each step the reference's own operation (a multiply and
/// an add, never fused), except that `y·2ⁿ` is one `vscalefps` instead of building `2ⁿ` in the
/// exponent bits and multiplying: both round the exact product once, and `n` stays in
/// [−126, 127], so the bits are the same (tested against the reference over the whole range).
#[target_feature(enable = "avx512f")]
fn exp16(x_in: __m512) -> __m512 {
    use lstm_core::exp::{LN2_HI, LN2_LO, MAX_X, MIN_X, POLY, ROUNDER};
    // Selects as in the reference: a NaN passes both (MAXPS/MINPS return their second operand).
    let x = _mm512_max_ps(_mm512_set1_ps(MIN_X), x_in);
    let x = _mm512_min_ps(_mm512_set1_ps(MAX_X), x);
    let shifted = _mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(core::f32::consts::LOG2_E)), _mm512_set1_ps(ROUNDER));
    let n = _mm512_sub_ps(shifted, _mm512_set1_ps(ROUNDER));
    let r = _mm512_add_ps(_mm512_mul_ps(n, _mm512_set1_ps(-LN2_HI)), x);
    let r = _mm512_add_ps(_mm512_mul_ps(n, _mm512_set1_ps(-LN2_LO)), r);
    let mut p = _mm512_set1_ps(POLY[0]);
    for &c in &POLY[1..] {
        p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(c));
    }
    let y = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(p, _mm512_mul_ps(r, r)), r), _mm512_set1_ps(1.0));
    // Zero below MIN_X (NaN kept: "not less than" is true for it), else y·2ⁿ.
    let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x_in, _mm512_set1_ps(MIN_X));
    _mm512_maskz_scalef_ps(keep, y, n)
}

/// # Safety
/// AVX-512F must be available; `values` and `offsets` must hold `full` floats (a multiple of 32).
#[target_feature(enable = "avx512f")]
unsafe fn exp_of_sums_avx512(values: *mut f32, offsets: *const f32, full: usize, shift: f32, lanes: &mut [f32; LANES]) {
    let shift = _mm512_set1_ps(shift);
    let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    for at in (0..full).step_by(32) {
        // SAFETY: at + 32 ≤ full (caller's bounds).
        unsafe {
            let a =
                _mm512_sub_ps(_mm512_add_ps(_mm512_loadu_ps(values.add(at)), _mm512_loadu_ps(offsets.add(at))), shift);
            let b = _mm512_sub_ps(
                _mm512_add_ps(_mm512_loadu_ps(values.add(at + 16)), _mm512_loadu_ps(offsets.add(at + 16))),
                shift,
            );
            let (ea, eb) = (exp16(a), exp16(b));
            _mm512_storeu_ps(values.add(at), ea);
            _mm512_storeu_ps(values.add(at + 16), eb);
            lo = _mm512_add_ps(lo, ea);
            hi = _mm512_add_ps(hi, eb);
        }
    }
    // SAFETY: `lanes` holds 32 floats.
    unsafe {
        _mm512_storeu_ps(lanes.as_mut_ptr(), lo);
        _mm512_storeu_ps(lanes.as_mut_ptr().add(16), hi);
    }
}

/// # Safety
/// AVX-512F must be available; `a` and `b` must hold `full` floats (a multiple of 32).
#[target_feature(enable = "avx512f")]
unsafe fn max_of_sums_avx512(a: *const f32, b: *const f32, full: usize, lanes: &mut [f32; LANES]) {
    let (mut lo, mut hi) = (_mm512_set1_ps(f32::NEG_INFINITY), _mm512_set1_ps(f32::NEG_INFINITY));
    for at in (0..full).step_by(32) {
        // SAFETY: at + 32 ≤ full (caller's bounds). `max(v, l)` is the reference's
        // `if v > l { v } else { l }`, NaNs and signed zeros included.
        unsafe {
            lo = _mm512_max_ps(_mm512_add_ps(_mm512_loadu_ps(a.add(at)), _mm512_loadu_ps(b.add(at))), lo);
            hi = _mm512_max_ps(_mm512_add_ps(_mm512_loadu_ps(a.add(at + 16)), _mm512_loadu_ps(b.add(at + 16))), hi);
        }
    }
    // SAFETY: `lanes` holds 32 floats.
    unsafe {
        _mm512_storeu_ps(lanes.as_mut_ptr(), lo);
        _mm512_storeu_ps(lanes.as_mut_ptr().add(16), hi);
    }
}

/// # Safety
/// AVX-512F must be available; `values` and `totals` must hold `full` floats (a multiple of 16).
#[target_feature(enable = "avx512f")]
unsafe fn scale_and_accumulate_avx512(values: *mut f32, k: f32, totals: *mut f32, full: usize) {
    let k = _mm512_set1_ps(k);
    for at in (0..full).step_by(16) {
        // SAFETY: at + 16 ≤ full (caller's bounds).
        unsafe {
            let v = _mm512_mul_ps(_mm512_loadu_ps(values.add(at)), k);
            _mm512_storeu_ps(values.add(at), v);
            _mm512_storeu_ps(totals.add(at), _mm512_add_ps(_mm512_loadu_ps(totals.add(at)), v));
        }
    }
}

/// The lane indices for one stage of [`transpose16_avx512`]: with `(lo, hi)` for block size
/// `b`, rows `i` and `i + b` (bit `b` of `i` clear) swap their off-diagonal `b × b` blocks.
const fn stage_indices(b: usize) -> ([i32; 16], [i32; 16]) {
    let (mut lo, mut hi) = ([0i32; 16], [0i32; 16]);
    let mut j = 0;
    while j < 16 {
        // Index < 16 picks lane j of the first row, 16 + j lane j of the second.
        if j & b == 0 {
            lo[j] = j as i32;
            hi[j] = (j + b) as i32;
        } else {
            lo[j] = (16 + j - b) as i32;
            hi[j] = (16 + j) as i32;
        }
        j += 1;
    }
    (lo, hi)
}

/// Stages for block sizes 8, 4, 2, 1.
const STAGES: [([i32; 16], [i32; 16]); 4] = [stage_indices(8), stage_indices(4), stage_indices(2), stage_indices(1)];

/// # Safety
/// AVX-512F must be available; `src` must be readable and `dst` writable at
/// `r·stride + q` for every `r, q < 16`.
#[target_feature(enable = "avx512f")]
unsafe fn transpose16_avx512(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
    // SAFETY: within the caller's bounds (see above).
    unsafe {
        let mut rows: [__m512; 16] = std::array::from_fn(|r| _mm512_loadu_ps(src.add(r * src_stride)));
        for (stage, (lo, hi)) in STAGES.iter().enumerate() {
            let b = 8 >> stage;
            let (lo, hi): (__m512i, __m512i) =
                (_mm512_loadu_si512(lo.as_ptr().cast()), _mm512_loadu_si512(hi.as_ptr().cast()));
            for i in (0..16).filter(|i| i & b == 0) {
                let (x, y) = (rows[i], rows[i + b]);
                rows[i] = _mm512_permutex2var_ps(x, lo, y);
                rows[i + b] = _mm512_permutex2var_ps(x, hi, y);
            }
        }
        for (q, row) in rows.iter().enumerate() {
            _mm512_storeu_ps(dst.add(q * dst_stride), *row);
        }
    }
}

/// `MR` rows of `A` over `k` steps: element `(r, p)` at `data[r·rs + p·cs]` (packed panels
/// have `rs = 1, cs = MR`; a row-major matrix read in place has `rs = ` its row length, `cs = 1`).
#[derive(Debug, Clone, Copy)]
pub struct APanel<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> APanel<'a> {
    /// A packed panel.
    pub fn packed(data: &'a [f32]) -> Self {
        APanel { data, rs: 1, cs: MR }
    }
}

/// `NR` columns of `B` over `k` steps: element `(p, j)` at `data[p·ld + j]` (packed panels have
/// `ld = NR`; a row-major matrix read in place has `ld = ` its row length).
#[derive(Debug, Clone, Copy)]
pub struct BPanel<'a> {
    pub data: &'a [f32],
    pub ld: usize,
}

impl<'a> BPanel<'a> {
    /// A packed panel.
    pub fn packed(data: &'a [f32]) -> Self {
        BPanel { data, ld: NR }
    }
}

/// # Safety
/// AVX-512F must be available; `a`, `b` must hold every element of `k` steps (see
/// [`Avx512::tile`]) over `16·V` columns, and `c` must be readable and writable at `r·ldc + j`
/// for every `r < MR`, `j < 16·V`. `PACKED` promises `a.rs == 1 && a.cs == MR`.
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const PACKED: bool, const V: usize>(
    k: usize,
    alpha: f32,
    a: APanel<'_>,
    b: BPanel<'_>,
    beta: f32,
    c: *mut f32,
    ldc: usize,
) {
    let (a_rs, a_cs) = if PACKED { (1, MR) } else { (a.rs, a.cs) };
    let (ap, bp) = (a.data.as_ptr(), b.data.as_ptr());
    // The tile of `C` is read (or, with `beta == 0`, its lines fetched for writing) only after
    // all `k` steps: asked for now, it arrives while they run instead of stalling the epilogue
    // on twenty lines from memory (`book`'s scores are 14 MB per thread, met once per k-block).
    // Same-process A/B: training +2.4% (`book`, median of 14 rounds), +4.3% (`small`), +2.7%
    // (`embedded`).
    for r in 0..MR {
        let line = c.wrapping_add(r * ldc).cast::<i8>();
        for v in 0..V {
            _mm_prefetch::<_MM_HINT_T0>(line.wrapping_add(64 * v));
        }
    }
    let mut acc: [[__m512; V]; MR] = [[_mm512_setzero_ps(); V]; MR];
    for p in 0..k {
        // The cache lines of `B`'s row `PREFETCH_STEPS` ahead: a hint, which never faults, so
        // the address may run past the panel (hence `wrapping_add`).
        let ahead = bp.wrapping_add((p + PREFETCH_STEPS) * b.ld).cast::<i8>();
        // SAFETY: p < k, so every offset is within the bounds the caller checked; prefetches
        // read nothing architecturally.
        unsafe {
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, b_v) in bv.iter_mut().enumerate() {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * v));
                *b_v = _mm512_loadu_ps(bp.add(p * b.ld + 16 * v));
            }
            let a_p = ap.add(p * a_cs);
            for (r, row) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a_p.add(r * a_rs));
                for (acc_v, &b_v) in row.iter_mut().zip(&bv) {
                    *acc_v = _mm512_fmadd_ps(x, b_v, *acc_v);
                }
            }
        }
    }
    let alpha = _mm512_set1_ps(alpha);
    let beta_v = _mm512_set1_ps(beta);
    for (r, row) in acc.iter().enumerate() {
        for (half, &sum) in row.iter().enumerate() {
            // SAFETY: r < MR and the 16 lanes from `half·16` stay below 16·V (caller's contract).
            unsafe {
                let out = c.add(r * ldc + half * 16);
                let scaled = _mm512_mul_ps(sum, alpha);
                let value = if beta == 0.0 { scaled } else { _mm512_fmadd_ps(_mm512_loadu_ps(out), beta_v, scaled) };
                _mm512_storeu_ps(out, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lstm_core::rng::Rng;

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    /// Rows of every length around the 16- and 32-lane steps, with the clamps' edges, ±∞, NaN,
    /// −0 and values whose results are subnormal.
    fn rows(rng: &mut Rng) -> Vec<Vec<f32>> {
        let specials =
            [f32::NAN, -87.336_55, -87.336_56, -87.0, -90.0, 88.0, 88.1, 0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY];
        let mut out = Vec::new();
        for len in [0usize, 1, 15, 16, 17, 31, 32, 33, 63, 64, 100, 1000] {
            for spread in [0.1f32, 5.0, 40.0] {
                let mut row: Vec<f32> = (0..len).map(|_| rng.normal() * spread).collect();
                for (v, s) in row.iter_mut().step_by(7).zip(specials) {
                    *v = s;
                }
                out.push(row);
            }
        }
        out
    }

    /// The 16-column edge kernel gives the full kernel's first 16 columns bit for bit, packed
    /// and in place, with and without `beta`, for several `k`.
    #[test]
    fn left_half_tile_is_the_full_tiles_left_half() {
        let Some(kern) = Avx512::detect() else { return };
        let mut rng = Rng::new(5);
        for k in [0usize, 1, 7, 64, 200] {
            let a: Vec<f32> = (0..MR * k.max(1)).map(|_| rng.normal()).collect();
            let b: Vec<f32> = (0..NR * k.max(1)).map(|_| rng.normal()).collect();
            let c0: Vec<f32> = (0..MR * NR).map(|_| rng.normal()).collect();
            let panels = [APanel::packed(&a), APanel { data: &a, rs: k.max(1), cs: 1 }];
            for (apanel, beta) in panels.into_iter().zip([0.0f32, 0.5]) {
                let (mut full, mut half) = (c0.clone(), c0.clone());
                kern.tile(k, 1.5, apanel, BPanel::packed(&b), beta, &mut full, NR);
                kern.tile_vectors::<1>(k, 1.5, apanel, BPanel::packed(&b), beta, &mut half, NR);
                for r in 0..MR {
                    let row = r * NR..(r + 1) * NR;
                    assert!(
                        same_bits(&full[row.start..row.start + 16], &half[row.start..row.start + 16]),
                        "k {k}, row {r}"
                    );
                    assert!(
                        same_bits(&c0[row.start + 16..row.end], &half[row.start + 16..row.end]),
                        "k {k}: right half untouched"
                    );
                }
            }
        }
    }

    /// Every float step over the range where `exp` is not clamped (a million points) and
    /// beyond: the 16-lane pass returns the reference's bits, and its sum is the reference's.
    #[test]
    fn exp_pass_is_the_reference_bit_for_bit() {
        let Some(k) = Avx512::detect() else { return };
        let mut x = -95.0f32;
        let mut values = Vec::new();
        while x < 95.0 {
            values.push(x);
            x += 0.000_19;
        }
        values.push(f32::NAN);
        let offsets = vec![0.0f32; values.len()];
        for shift in [0.0f32, 1.5] {
            let (mut want, mut got) = (values.clone(), values.clone());
            let sum_want = lstm_core::exp::exp_of_sums_shifted_sum(&mut want, &offsets, shift);
            let sum_got = k.exp_of_sums_shifted_sum(&mut got, &offsets, shift);
            assert!(same_bits(&want, &got), "exp values differ (shift {shift})");
            assert_eq!(sum_want.to_bits(), sum_got.to_bits(), "exp sums differ (shift {shift})");
        }
    }

    /// The three passes, and a whole softmax cross-entropy with its gradients, against the
    /// reference on rows of every shape.
    #[test]
    fn row_passes_are_the_reference_bit_for_bit() {
        let Some(k) = Avx512::detect() else { return };
        let mut rng = Rng::new(11);
        for row in rows(&mut rng) {
            let offsets: Vec<f32> = (0..row.len()).map(|_| rng.normal()).collect();
            let want = lstm_core::exp::max_of_sums(&row, &offsets);
            assert_eq!(k.max_of_sums(&row, &offsets).to_bits(), want.to_bits(), "max, {} values", row.len());
            let (mut a, mut b) = (row.clone(), row.clone());
            let sum_a = lstm_core::exp::exp_of_sums_shifted_sum(&mut a, &offsets, 0.75);
            let sum_b = k.exp_of_sums_shifted_sum(&mut b, &offsets, 0.75);
            assert!(same_bits(&a, &b) && sum_a.to_bits() == sum_b.to_bits(), "exp, {} values", row.len());
            let (mut ta, mut tb) = (offsets.clone(), offsets.clone());
            lstm_core::exp::scale_and_accumulate(&mut a, 0.3, &mut ta);
            k.scale_and_accumulate(&mut b, 0.3, &mut tb);
            assert!(same_bits(&a, &b) && same_bits(&ta, &tb), "scale, {} values", row.len());
        }
        for vocab in [1usize, 33, 100, 1000] {
            let m = 5;
            let scores: Vec<f32> = (0..m * vocab).map(|_| rng.normal() * 4.0).collect();
            let bias: Vec<f32> = (0..vocab).map(|_| rng.normal()).collect();
            let targets: Vec<u32> = (0..m as u32).map(|i| (i * 37) % vocab as u32).collect();
            let (mut a, mut b) = (scores.clone(), scores);
            let (mut da, mut db) = (vec![0.25f32; vocab], vec![0.25f32; vocab]);
            use lstm_core::softmax::{softmax_cross_entropy_biased, softmax_cross_entropy_biased_by};
            let la = softmax_cross_entropy_biased(&mut a, &bias, &targets, 0.2, &mut da).unwrap();
            let passes = super::super::SoftmaxPasses { kernel: Some(k) };
            let lb = softmax_cross_entropy_biased_by(&passes, &mut b, &bias, &targets, 0.2, &mut db).unwrap();
            assert_eq!(la.to_bits(), lb.to_bits(), "loss, vocabulary {vocab}");
            assert!(same_bits(&a, &b) && same_bits(&da, &db), "gradients, vocabulary {vocab}");
        }
    }
}
