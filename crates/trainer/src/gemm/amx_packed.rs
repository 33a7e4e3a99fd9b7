//! Cache-blocked GEMM around the AMX bf16x3 micro-kernel (`amx.rs`), for `alpha = 1` and
//! `beta` 0 or 1 (every product of a training step; others stay on the f32 kernel).
//!
//! The BLIS loop structure, as in `packed.rs`: `B` packed `KC × NC` at a time into column
//! panels of 32, `A` `MC × KC` at a time into row panels of 32, each value split into its high
//! and low bfloat16 parts while it is packed (so the split costs no pass of its own). `k` is
//! padded with zeros to a multiple of 32 in each block. Partial tiles of `C` go through a
//! local tile that starts from the same values the full tile would load, so an element gets
//! the same bits wherever it sits, and results do not depend on how `C` is split between
//! threads.

use super::amx::{Amx, KSTEP, MR, NR, PANEL_STEP_PAIRS, TILE_PAIRS};
use super::packed::{Strided, scale_only};
use std::cell::RefCell;
use std::ops::Range;

/// Steps of `k` per packed block (a multiple of 32): a row panel of `A` is 32 KiB, held in L1
/// while the block's column panels of `B` (as much each) stream past it (see `macro_kernel`).
pub const KC: usize = 256;
/// Rows of `A` per packed block (a multiple of `MR`): 256 KiB, in L2.
const MC: usize = 256;
/// Columns of `B` per packed block (a multiple of `NR`): 1 MiB, in L2.
const NC: usize = 1024;

/// `x` as a high and a low bfloat16 part (`x ≈ high + low` to 16 significant bits), each
/// rounded to nearest (ties to even) and returned in the low 16 bits; NaN stays NaN. Written
/// without branches so that the packing loops vectorise.
#[inline(always)]
fn split(x: f32) -> (u32, u32) {
    let bits = if x.is_nan() { 0x7fc0_0000 } else { x.to_bits() };
    let high = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000;
    let rest = (f32::from_bits(bits) - f32::from_bits(high)).to_bits();
    let low = rest.wrapping_add(0x7fff + ((rest >> 16) & 1)) >> 16;
    (high >> 16, low)
}

/// Two values adjacent in `k` as a pair of high parts and a pair of low parts.
#[inline(always)]
fn pair(x0: f32, x1: f32) -> (u32, u32) {
    let ((h0, l0), (h1, l1)) = (split(x0), split(x1));
    (h0 | (h1 << 16), l0 | (l1 << 16))
}

/// `len` values of `buf` from its first 64-byte boundary, and where that is. The tile unit
/// loads 64-byte rows: rows straddling two cache lines ran the kernel at half its rate.
fn aligned(buf: &mut Vec<u32>, len: usize) -> (usize, &mut [u32]) {
    buf.resize(len + 15, 0);
    let offset = (64 - buf.as_ptr() as usize % 64) % 64 / 4;
    (offset, &mut buf[offset..offset + len])
}

/// A 32 × 32 tile of `C` on a cache-line boundary (partial tiles go through one).
#[repr(C, align(64))]
struct LocalTile([f32; MR * NR]);

thread_local! {
    /// Packing buffers, reused by every product on this thread.
    static PACKS: RefCell<(Vec<u32>, Vec<u32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Steps of 32 covering `kb` values of `k`.
fn steps(kb: usize) -> usize {
    kb.div_ceil(KSTEP)
}

/// Element `(i, p)` of `m`, zero outside `rows × ks`.
#[inline(always)]
fn get(m: &Strided<'_>, rows: &Range<usize>, ks: &Range<usize>, i: usize, p: usize) -> f32 {
    if i < rows.end && p < ks.end { m.data[i * m.rs + p * m.cs] } else { 0.0 }
}

/// Where pair `t` (along `k`) of row or column `r` (across) of half-panel `chunk` (16 rows or
/// columns) goes in step `s` of a block of `st` steps: the high part there, the low part one
/// tile further.
#[inline(always)]
fn slot(st: usize, chunk: usize, s: usize) -> usize {
    let (q, h) = (chunk / 2, chunk % 2);
    ((q * st + s) * 4 + 2 * h) * TILE_PAIRS
}

/// Packs `A[rows, ks]` into row panels of 32: panel `q`, step `s`, row half `h`, part `e`
/// (high, low), row `r`, pair `t` at `((q·steps + s)·4 + 2h + e)·256 + 16r + t`; zeros past the
/// last row and the last step.
fn pack_a(amx: Amx, a: &Strided<'_>, rows: Range<usize>, ks: Range<usize>, out: &mut [u32]) {
    pack_pairs::<true>(amx, a, rows, ks, out);
}

/// Packs `B[ks, cols]` into column panels of 32: panel `q`, step `s`, column half `h`, part
/// `e`, pair `p`, column `j` at `((q·steps + s)·4 + 2h + e)·256 + 16p + j` (the tile unit's
/// layout for its second operand); zeros past the last column and the last step.
fn pack_b(amx: Amx, b: &Strided<'_>, ks: Range<usize>, cols: Range<usize>, out: &mut [u32]) {
    pack_pairs::<false>(amx, &b.t(), cols, ks, out);
}

/// Sixteen pairs' high and low parts into the tiles at `at` and `at + 256`, from `first` on:
/// at `first + i` when `contiguous`, else at `first + 16i`.
#[inline(always)]
fn put16(out: &mut [u32], at: usize, first: usize, contiguous: bool, high: &[u32; 16], low: &[u32; 16]) {
    let (hi, lo) = out[at..at + 2 * TILE_PAIRS].split_at_mut(TILE_PAIRS);
    if contiguous {
        hi[first..first + 16].copy_from_slice(high);
        lo[first..first + 16].copy_from_slice(low);
    } else {
        for i in 0..16 {
            (hi[first + 16 * i], lo[first + 16 * i]) = (high[i], low[i]);
        }
    }
}

/// Packs `m[across, ks]` (`A`, or `Bᵀ`: `across` the tile's rows or columns, `ks` along `k`)
/// into panels of 32, pair `t` of row-or-column `r` at `16r + t` in its tile (`BY_ROWS`, the
/// layout of `A`) or at `16t + r` (that of `B`). Reads memory in its own order (a row, or two
/// columns, of `m` at a time) and scatters into the panels; what that leaves (partial
/// half-panels, a partial last step, other strides) goes value by value.
fn pack_pairs<const BY_ROWS: bool>(amx: Amx, m: &Strided<'_>, across: Range<usize>, ks: Range<usize>, out: &mut [u32]) {
    const _: () = assert!(MR == NR);
    let place = |r: usize, t: usize| if BY_ROWS { 16 * r + t } else { 16 * t + r };
    let store = |out: &mut [u32], at: usize, r: usize, t: usize, (high, low): (u32, u32)| {
        out[at + place(r, t)] = high;
        out[at + TILE_PAIRS + place(r, t)] = low;
    };
    let st = steps(ks.len());
    let full_k = ks.len() / KSTEP * KSTEP;
    let full_chunks = if m.cs == 1 || m.rs == 1 { across.len() / 16 } else { 0 };
    if m.cs == 1 {
        // Each row of `m` runs along `k`: 32 values, 16 pairs, per step.
        for i in across.start..across.start + full_chunks * 16 {
            let (chunk, r) = ((i - across.start) / 16, (i - across.start) % 16);
            let src = &m.data[i * m.rs + ks.start..][..full_k];
            for (s, src) in src.chunks_exact(KSTEP).enumerate() {
                let (high, low) = amx.split_along(src.try_into().expect("a step"));
                put16(out, slot(st, chunk, s), place(r, 0), BY_ROWS, &high, &low);
            }
        }
    } else if m.rs == 1 {
        // Each column of `m` runs across: two adjacent columns make 16 pairs at a time.
        for pg in 0..full_k / 2 {
            let (s, t) = (pg / 16, pg % 16);
            let k = ks.start + 2 * pg;
            let (c0, c1) = (&m.data[k * m.cs + across.start..], &m.data[(k + 1) * m.cs + across.start..]);
            for chunk in 0..full_chunks {
                let x0 = c0[16 * chunk..][..16].try_into().expect("16 across");
                let x1 = c1[16 * chunk..][..16].try_into().expect("16 across");
                let (high, low) = amx.split_across(x0, x1);
                put16(out, slot(st, chunk, s), place(0, t), !BY_ROWS, &high, &low);
            }
        }
    }
    for chunk in 0..across.len().div_ceil(MR) * 2 {
        for s in 0..st {
            if chunk < full_chunks && s < full_k / KSTEP {
                continue;
            }
            for r in 0..16 {
                for t in 0..16 {
                    let (i, p) = (across.start + 16 * chunk + r, ks.start + s * KSTEP + 2 * t);
                    let pair = pair(get(m, &across, &ks, i, p), get(m, &across, &ks, i, p + 1));
                    store(out, slot(st, chunk, s), r, t, pair);
                }
            }
        }
    }
}

/// `B` packed once for many products with different `A` (the tied embedding, the recurrent
/// weights): every `KC`-step block, each as column panels.
#[derive(Debug, Default)]
pub struct PackedB {
    data: Vec<u32>,
    /// Where the packed panels start in `data` (its first 64-byte boundary).
    offset: usize,
    k: usize,
    n: usize,
}

impl PackedB {
    /// Packs `b` (reusing this buffer's allocation).
    pub fn pack(&mut self, amx: Amx, b: &Strided<'_>) {
        use rayon::prelude::*;
        let (k, n) = (b.rows, b.cols);
        self.k = k;
        self.n = n;
        let panels = n.div_ceil(NR);
        let (offset, mut rest) = aligned(&mut self.data, steps_total(k) * panels * PANEL_STEP_PAIRS);
        self.offset = offset;
        for pc in (0..k).step_by(KC) {
            let ks = pc..k.min(pc + KC);
            let len = steps(ks.len()) * PANEL_STEP_PAIRS;
            let (block, tail) = rest.split_at_mut(panels * len);
            rest = tail;
            // A large operand (the embedding) is packed on the pool's threads, panels apart.
            let per_task = if k * n >= 1 << 22 { panels.div_ceil(8) } else { panels };
            block.par_chunks_mut(per_task * len).enumerate().for_each(|(t, part)| {
                let j0 = t * per_task * NR;
                pack_b(amx, b, ks.clone(), j0..n.min(j0 + per_task * NR), part);
            });
        }
    }

    /// Shape `(k, n)` of the packed matrix.
    pub fn shape(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// The block of steps starting at `pc` (a multiple of `KC`).
    fn block(&self, pc: usize) -> &[u32] {
        let panels = self.n.div_ceil(NR);
        &self.data[self.offset + steps_total(pc) * panels * PANEL_STEP_PAIRS..]
    }
}

/// Steps of 32 in the blocks covering `k` values (each block padded on its own).
fn steps_total(k: usize) -> usize {
    (k / KC) * steps(KC) + steps(k % KC)
}

/// Whether the AMX path computes `alpha·A·B + beta·C` (otherwise the f32 kernel does).
pub fn handles(alpha: f32, beta: f32) -> bool {
    alpha == 1.0 && (beta == 0.0 || beta == 1.0)
}

/// `C ← A·B + beta·C` (`beta` 0 or 1) on one thread; `c` is row-major with `b.cols` columns.
/// With `beta == 0`, `C` is never read.
pub fn gemm(amx: Amx, a: Strided<'_>, b: Strided<'_>, beta: f32, c: &mut [f32]) {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    debug_assert!(beta == 0.0 || beta == 1.0);
    debug_assert_eq!(c.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        return scale_only(beta, c);
    }
    PACKS.with_borrow_mut(|(apack, bpack)| {
        let (_, apack) = aligned(apack, MC.div_ceil(MR) * steps(KC) * PANEL_STEP_PAIRS);
        let (_, bpack) = aligned(bpack, NC.div_ceil(NR) * steps(KC) * PANEL_STEP_PAIRS);
        for jc in (0..n).step_by(NC) {
            let cols = jc..n.min(jc + NC);
            for pc in (0..k).step_by(KC) {
                let ks = pc..k.min(pc + KC);
                pack_b(amx, &b, ks.clone(), cols.clone(), bpack);
                let accumulate = pc > 0 || beta == 1.0;
                for ic in (0..m).step_by(MC) {
                    let rows = ic..m.min(ic + MC);
                    pack_a(amx, &a, rows.clone(), ks.clone(), apack);
                    macro_kernel(amx, steps(ks.len()), apack, rows, bpack, cols.clone(), accumulate, c, n);
                }
            }
        }
    });
}

/// [`gemm`] with `B` already packed, restricted to its columns `cols` (starting at a multiple
/// of `NR`): `c` is `m × cols.len()`. The same bits as packing `B` on the fly.
pub fn gemm_prepacked(amx: Amx, a: Strided<'_>, b: &PackedB, cols: Range<usize>, beta: f32, c: &mut [f32]) {
    let (m, (k, n)) = (a.rows, b.shape());
    debug_assert!(cols.start.is_multiple_of(NR) && cols.end <= n);
    debug_assert_eq!(k, a.cols);
    let width = cols.len();
    debug_assert_eq!(c.len(), m * width);
    if m == 0 || width == 0 {
        return;
    }
    if k == 0 {
        return scale_only(beta, c);
    }
    let first_panel = cols.start / NR;
    PACKS.with_borrow_mut(|(apack, _)| {
        let (_, apack) = aligned(apack, MC.div_ceil(MR) * steps(KC) * PANEL_STEP_PAIRS);
        for pc in (0..k).step_by(KC) {
            let ks = pc..k.min(pc + KC);
            let st = steps(ks.len());
            let panels = &b.block(pc)[first_panel * st * PANEL_STEP_PAIRS..];
            let accumulate = pc > 0 || beta == 1.0;
            for ic in (0..m).step_by(MC) {
                let rows = ic..m.min(ic + MC);
                pack_a(amx, &a, rows.clone(), ks.clone(), apack);
                macro_kernel(amx, st, apack, rows, panels, 0..width, accumulate, c, width);
            }
        }
    });
}

/// Rows `rows` × columns `cols` of `C` for one block of `st` steps; `c` is row-major with
/// `ldc` columns, indexed from the sub-problem's origin.
///
/// Each row panel of `A` (32 KiB at 256 steps) stays in L1 while the block's column panels of
/// `B` stream past it from L2. Measured on one thread against the other order (a `B` panel
/// held against every `A` panel): `book`'s products 1.1–1.5× faster, 2048³ 1.2×. `KC` = 256
/// beat 128 and 512 by 10–30% on the same products.
#[allow(clippy::too_many_arguments)]
fn macro_kernel(
    amx: Amx,
    st: usize,
    apack: &[u32],
    rows: Range<usize>,
    bpack: &[u32],
    cols: Range<usize>,
    accumulate: bool,
    c: &mut [f32],
    ldc: usize,
) {
    let panel = st * PANEL_STEP_PAIRS;
    let origin = |i: usize, j: usize| (rows.start + i * MR) * ldc + cols.start + j * NR;
    let (na, nb) = (rows.len().div_ceil(MR), cols.len().div_ceil(NR));
    for qa in 0..na {
        let mr = MR.min(rows.len() - qa * MR);
        let apanel = &apack[qa * panel..(qa + 1) * panel];
        for qb in 0..nb {
            let nr = NR.min(cols.len() - qb * NR);
            let bpanel = &bpack[qb * panel..(qb + 1) * panel];
            let at = origin(qa, qb);
            // The next tile of `C`, fetched while this one is computed (without it, each tile
            // waited on memory for its `C`: 2048³ ran at 0.4×).
            let next = if qb + 1 < nb { origin(qa, qb + 1) } else { origin(qa + 1, 0) };
            let next = c.as_ptr().wrapping_add(next) as usize;
            if mr == MR && nr == NR {
                amx.tile(st, apanel, bpanel, accumulate, &mut c[at..], ldc, next);
                continue;
            }
            let mut local = LocalTile([0.0; MR * NR]);
            let tile = &mut local.0;
            if accumulate {
                for r in 0..mr {
                    tile[r * NR..r * NR + nr].copy_from_slice(&c[at + r * ldc..at + r * ldc + nr]);
                }
            }
            amx.tile(st, apanel, bpanel, accumulate, tile, NR, next);
            for r in 0..mr {
                c[at + r * ldc..at + r * ldc + nr].copy_from_slice(&tile[r * NR..r * NR + nr]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splitting keeps 16 significant bits: `high + low` is within 2⁻¹⁷ of `x`, relatively.
    #[test]
    fn high_and_low_parts_keep_sixteen_bits() {
        let widen = |h: u32| f32::from_bits(h << 16);
        for &x in &[1.0f32, -1.0, 0.1, -0.3333, 2.71, 1e-20, -7.5e12, 650.0, 1.0 / 3.0, 0.0] {
            let (h, l) = split(x);
            let back = widen(h) + widen(l);
            assert!((back - x).abs() <= x.abs() * 2f32.powi(-17), "{x}: {back}");
        }
        assert!(widen(split(f32::NAN).0).is_nan());
        assert_eq!(split(1.0 + 2f32.powi(-8)).0, split(1.0).0, "tie to even, down");
        assert_eq!(split(1.0 + 3.0 * 2f32.powi(-8)).0, split(1.0 + 2f32.powi(-6)).0, "tie to even, up");
    }

    fn reference(a: &Strided<'_>, b: &Strided<'_>) -> Vec<f64> {
        let mut c = vec![0.0f64; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                c[i * b.cols + j] = (0..a.cols)
                    .map(|p| f64::from(a.data[i * a.rs + p * a.cs]) * f64::from(b.data[p * b.rs + j * b.cs]))
                    .sum();
            }
        }
        c
    }

    /// Every transposition, partial tiles, several k-blocks and `beta` 1: within bf16x3's error
    /// of the f64 product, and prepacked `B` (whole or by column slices) gives the same bits.
    #[test]
    fn matches_the_f64_product_within_bf16x3_error() {
        let Some(amx) = Amx::detect() else {
            eprintln!("no AMX-BF16 on this CPU: skipped");
            return;
        };
        for &(m, n, k) in &[(1, 1, 1), (20, 70, 45), (70, 33, 600), (33, 1100, 40), (300, 64, 1100)] {
            let av: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 37.0).collect();
            let bv: Vec<f32> = (0..k * n).map(|i| ((i * 53 % 97) as f32 - 48.0) / 41.0).collect();
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let a = if ta {
                    Strided { data: &av, rows: m, cols: k, rs: 1, cs: m }
                } else {
                    Strided { data: &av, rows: m, cols: k, rs: k, cs: 1 }
                };
                let b = if tb {
                    Strided { data: &bv, rows: k, cols: n, rs: 1, cs: k }
                } else {
                    Strided { data: &bv, rows: k, cols: n, rs: n, cs: 1 }
                };
                let exact = reference(&a, &b);
                let scale: Vec<f64> = {
                    let abs_a = Strided { data: &av, ..a };
                    let mut s = vec![0.0f64; m * n];
                    for i in 0..m {
                        for j in 0..n {
                            s[i * n + j] = (0..k)
                                .map(|p| {
                                    f64::from(abs_a.data[i * a.rs + p * a.cs]).abs()
                                        * f64::from(b.data[p * b.rs + j * b.cs]).abs()
                                })
                                .sum();
                        }
                    }
                    s
                };
                let mut c = vec![f32::NAN; m * n];
                gemm(amx, a, b, 0.0, &mut c);
                for i in 0..m * n {
                    let err = (f64::from(c[i]) - exact[i]).abs();
                    assert!(
                        err <= scale[i] * 1e-5 + 1e-6,
                        "{m}×{n}×{k} ta={ta} tb={tb} [{i}]: {} vs {}",
                        c[i],
                        exact[i]
                    );
                }
                let mut twice = c.clone();
                gemm(amx, a, b, 1.0, &mut twice);
                for i in 0..m * n {
                    let err = (f64::from(twice[i]) - 2.0 * exact[i]).abs();
                    assert!(err <= scale[i] * 3e-5 + 1e-6, "beta 1 [{i}]");
                }
                let mut packed = PackedB::default();
                packed.pack(amx, &b);
                let mut again = vec![f32::NAN; m * n];
                gemm_prepacked(amx, a, &packed, 0..n, 0.0, &mut again);
                assert_eq!(bits(&again), bits(&c), "prepacked {m}×{n}×{k}");
                if n > NR {
                    let mut right = vec![f32::NAN; m * (n - NR)];
                    gemm_prepacked(amx, a, &packed, NR..n, 0.0, &mut right);
                    for i in 0..m {
                        assert_eq!(bits(&right[i * (n - NR)..(i + 1) * (n - NR)]), bits(&c[i * n + NR..(i + 1) * n]));
                    }
                }
                // Rows split anywhere (not at a tile boundary): the same bits.
                if m > 3 {
                    let mid = m / 2 + 1;
                    let mut parts = vec![f32::NAN; m * n];
                    let (top, bottom) = parts.split_at_mut(mid * n);
                    gemm(amx, a.rows_range(0..mid), b, 0.0, top);
                    gemm(amx, a.rows_range(mid..m), b, 0.0, bottom);
                    assert_eq!(bits(&parts), bits(&c), "row split {m}×{n}×{k}");
                }
            }
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }
}
