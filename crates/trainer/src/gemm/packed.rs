//! Cache-blocked GEMM around the AVX-512 micro-kernel (the BLIS loop structure).
//!
//! `B` is packed `KC × NC` at a time into column panels of `NR` (kept in L3, a group of them
//! in L2 at a time), `A` `MC × KC` at a time into row panels of `MR` (kept in L2, one hot in L1
//! while it meets the group's panels; see `B_GROUP_BYTES`). An operand stored row-major along
//! the direction the kernel walks is read in place instead (its full panels; only a partial
//! last panel is packed): packing the 700 × 10,000 softmax gradient, say, would cost as much
//! memory traffic as the product itself. Partial panels are zero-padded; partial tiles of `C`
//! go through a local tile and are finished with the kernel's own epilogue, so an element gets
//! the same bits whether it sits in a full or a partial tile, which makes the result
//! independent of how rows are split between threads.

use super::avx512::{APanel, Avx512, BPanel, MR, NR};
use std::cell::RefCell;
use std::ops::Range;

/// Default steps of `k` per packed block (an `A` panel of 5 KiB in L1, a `B` panel of 16 KiB);
/// callers choose per product (`FastGemm::with_k_block`).
pub const KC: usize = 128;
/// Rows of `A` per packed block (a multiple of `MR`; ~300 KiB, well inside L2).
const MC: usize = 300;
/// Columns of `B` per packed block (a multiple of `NR`; k-block × NC floats: 1 MiB at 128 steps,
/// 2 MiB at 256).
const NC: usize = 2048;

/// Packed panels of `B` per group: each row panel of `A` (`MR × kb`, 10 KiB at 256 steps)
/// stays in L1 while it meets a group of `B`'s column panels (this many bytes of them, brought
/// into L2 by the group's first row panel), which stream from L2 ahead of the kernel's
/// prefetch. The BLIS order the other way round (one `B` panel, 32 KiB at 256 steps, held in
/// the 48 KiB L1 against every row panel) kept losing the panel's lines to the streamed `A`:
/// prefetching `B` only for the first row panel measured −8% (`small`) and −16% (`book`).
/// Same-process A/B against that order: single-thread products +5–29% (`book`'s scores and
/// `x·Wx` +12–14%, 2048³ +25%), training `small` +6–15%, `book` +4–28% (medians of noisy
/// minutes), `embedded` +4–5%, evaluation `book` +8%, `small` +3%; 256 KiB and 768 KiB within
/// the noise of 512, 1 MiB worse for `book`. Same bits: only the order of the tiles changes.
const B_GROUP_BYTES: usize = 512 * 1024;

/// A row-major `A` whose panels each meet at most this many panels of `B` is read in place
/// (`n ≤ 768`): packing costs a pass over `A` that only pays back when each panel meets many
/// panels of `B`. `small`'s dh = dY·E (350 × 200 × 10,000 per block) ran 15% faster than
/// packing its 14 MB of `A` first, training +5% (same-process A/B against 2 panels). `book`'s
/// `n = 650` products (dY·E, dA·Wxᵀ, each step's dA·Whᵀ) ran 5–8% faster in place on one
/// thread, training +1–2% (medians of 40-step A/Bs against 8 panels); x·Wx (`n = 2600`) lost
/// 6% in place, so wider products stay packed.
const A_IN_PLACE_MAX: usize = 24;
/// A small row-major `B` meeting at most this many panels of `A` is read in place.
const B_IN_PLACE_MAX: usize = 2;

/// Smallest prepared `B` (in floats) packed by several threads (16 MiB; `book`'s embedding).
const PARALLEL_PACK_MIN: usize = 1 << 22;

/// Largest `B` (in floats) read in place: 256 KiB, well inside L2.
const B_IN_PLACE_MAX_FLOATS: usize = 1 << 16;

/// A read-only matrix with arbitrary strides: element `(i, j)` is `data[i·rs + j·cs]`.
#[derive(Debug, Clone, Copy)]
pub struct Strided<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Strided<'a> {
    /// The transpose, without moving data.
    pub fn t(self) -> Strided<'a> {
        Strided { rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs, ..self }
    }

    /// Columns `range` of this matrix.
    pub fn cols_range(self, range: Range<usize>) -> Strided<'a> {
        let start = (range.start * self.cs).min(self.data.len());
        Strided { data: &self.data[start..], cols: range.len(), ..self }
    }

    /// Rows `range` of this matrix.
    pub fn rows_range(self, range: Range<usize>) -> Strided<'a> {
        let start = (range.start * self.rs).min(self.data.len());
        Strided { data: &self.data[start..], rows: range.len(), ..self }
    }
}

thread_local! {
    /// Packing buffers, reused by every product on this thread (no allocation per call).
    static PACKS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Packs `M[rows, ks]` into panels of `W` rows: panel `q`, step `p`, row `r` at
/// `(q·kb + p)·W + r`; rows past the end are zero. Row panels of `A` are `W = MR`; column panels
/// of `B` are the same thing on `Bᵀ` with `W = NR`.
fn pack_panels<const W: usize>(m: &Strided<'_>, rows: Range<usize>, ks: Range<usize>, out: &mut [f32]) {
    let kb = ks.len();
    // Register transposes for panels whose rows run along k (see below).
    let transposer = Avx512::detect().filter(|_| W.is_multiple_of(16));
    for (q, panel) in out.chunks_exact_mut(kb * W).take(rows.len().div_ceil(W)).enumerate() {
        let i0 = rows.start + q * W;
        let live = W.min(rows.end - i0);
        if m.rs == 1 {
            // The panel's rows are contiguous for each p.
            for (p, dst) in ks.clone().zip(panel.chunks_exact_mut(W)) {
                let at = i0 + p * m.cs;
                if live == W {
                    // A fixed-size copy compiles to vector moves instead of a memcpy call.
                    let src: &[f32; W] = m.data[at..at + W].try_into().expect("W floats");
                    dst.copy_from_slice(src);
                } else {
                    dst[..live].copy_from_slice(&m.data[at..at + live]);
                    dst[live..].fill(0.0);
                }
            }
        } else if m.cs == 1 && live == W && W.is_multiple_of(8) {
            // Rows contiguous along k (B = Eᵀ of a row-major E, say): 16 × 16 blocks
            // transposed in registers, then the last steps 8 rows at a time, so each step
            // writes 8 consecutive floats instead of one strided float. The register
            // transposes took `book`'s `Whᵀ` from 2.0 to 1.05 ms and `Eᵀ` (2 threads) from 7.5
            // to 4.5 ms; training +0.7% (`book`), +1.5% (`small`), ±0 (`embedded`).
            let blocked = if transposer.is_some() { kb / 16 * 16 } else { 0 };
            if let Some(t) = transposer {
                for r0 in (0..W).step_by(16) {
                    for p0 in (0..blocked).step_by(16) {
                        let at = (i0 + r0) * m.rs + ks.start + p0;
                        t.transpose16(&m.data[at..], m.rs, &mut panel[p0 * W + r0..], W);
                    }
                }
            }
            for r0 in (0..W).step_by(8) {
                let rows: [&[f32]; 8] = std::array::from_fn(|r| {
                    let at = (i0 + r0 + r) * m.rs + ks.start;
                    &m.data[at..at + kb]
                });
                for (p, dst) in panel.chunks_exact_mut(W).enumerate().skip(blocked) {
                    let dst: &mut [f32; 8] = (&mut dst[r0..r0 + 8]).try_into().expect("8 floats");
                    for (d, row) in dst.iter_mut().zip(&rows) {
                        *d = row[p];
                    }
                }
            }
        } else {
            for r in 0..W {
                if r < live {
                    let row = &m.data[(i0 + r) * m.rs..];
                    for (p, dst) in ks.clone().zip(panel[r..].iter_mut().step_by(W)) {
                        *dst = row[p * m.cs];
                    }
                } else {
                    panel[r..].iter_mut().step_by(W).for_each(|v| *v = 0.0);
                }
            }
        }
    }
}

/// Packs `A[rows, ks]` into row panels of `MR`.
fn pack_a(a: &Strided<'_>, rows: Range<usize>, ks: Range<usize>, out: &mut [f32]) {
    pack_panels::<MR>(a, rows, ks, out);
}

/// Packs `B[ks, cols]` into column panels of `NR`: panel `q`, step `p`, column `j` at
/// `(q·kb + p)·NR + j`.
fn pack_b(b: &Strided<'_>, ks: Range<usize>, cols: Range<usize>, out: &mut [f32]) {
    pack_panels::<NR>(&b.t(), cols, ks, out);
}

/// `B` packed once for many products with different `A` (the tied embedding, used by every row
/// block of the output layer): every `KC`-step block of rows, each as column panels.
#[derive(Debug, Default)]
pub struct PackedB {
    data: Vec<f32>,
    /// Where the packed panels start in `data` (its first 64-byte boundary).
    offset: usize,
    k: usize,
    n: usize,
    kc: usize,
}

impl PackedB {
    /// Packs `b` in k-blocks of `kc` (reusing this buffer's allocation).
    pub fn pack(&mut self, b: &Strided<'_>, kc: usize) {
        let (k, n) = (b.rows, b.cols);
        let padded = n.div_ceil(NR) * NR;
        let kc = kc.max(1);
        self.k = k;
        self.n = n;
        self.kc = kc;
        let len = k * padded;
        self.offset = aligned_offset(&mut self.data, len);
        let data = &mut self.data[self.offset..self.offset + len];
        // Panels are independent: a large operand (the 26 MB embedding of `book`, say) is
        // packed in groups of panels on the pool's threads, since one core does not saturate
        // the memory bandwidth; smaller ones measured faster on one thread (2.6 MB: 1.5 ms
        // alone, 2.4–2.9 ms split).
        use rayon::prelude::*;
        let panels = padded / NR;
        let per_task = if k * padded >= PARALLEL_PACK_MIN { panels.div_ceil(8) } else { panels };
        for (q, block) in data.chunks_mut(kc * padded).enumerate() {
            let ks = q * kc..k.min(q * kc + kc);
            let kb = ks.len();
            block.par_chunks_mut(kb * NR * per_task).enumerate().for_each(|(t, part)| {
                let j0 = t * per_task * NR;
                pack_b(b, ks.clone(), j0..n.min(j0 + per_task * NR), part);
            });
        }
    }

    /// Shape `(k, n)` of the packed matrix.
    pub fn shape(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    fn block(&self, ks: &Range<usize>) -> &[f32] {
        let padded = self.n.div_ceil(NR) * NR;
        &self.data[self.offset + ks.start * padded..self.offset + ks.end * padded]
    }
}

/// Resizes `buf` to hold `len` floats from its first 64-byte boundary and returns where that
/// is. The kernel reads packed `B` one cache line (16 floats) at a time; a large `Vec` starts
/// 16 bytes past a line (glibc's `mmap` header), so every such load straddled two lines.
/// Aligned, same-process A/B: 2-thread products of `book`'s shapes +5% (median of 32), training
/// `book` +5.7% and `small` +6% (medians of 16 and 12 rounds), `embedded` (mostly in-place
/// `B`) unchanged.
fn aligned_offset(buf: &mut Vec<f32>, len: usize) -> usize {
    buf.resize(len + 15, 0.0);
    // A `Vec<f32>` is 4-byte aligned, so the boundary is at most 15 floats in.
    (64 - buf.as_ptr() as usize % 64) % 64 / 4
}

/// `len` floats of `buf` starting at a 64-byte boundary (see [`aligned_offset`]).
fn aligned_mut(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    let off = aligned_offset(buf, len);
    &mut buf[off..off + len]
}

/// Where the kernel finds one `kb`-step block of `A`'s row panels.
#[derive(Clone, Copy)]
enum ASrc<'a> {
    /// Every panel packed, `kb·MR` floats each.
    Packed(&'a [f32]),
    /// Read in place from row-major `A` (rows from `i0`, steps from `pc`); a partial last
    /// panel (`live` rows) is packed in `edge`.
    InPlace { a: Strided<'a>, pc: usize, edge: &'a [f32] },
}

impl<'a> ASrc<'a> {
    fn panel(self, q: usize, i0: usize, kb: usize, live: usize) -> APanel<'a> {
        match self {
            ASrc::Packed(p) => APanel::packed(&p[q * kb * MR..(q + 1) * kb * MR]),
            ASrc::InPlace { edge, .. } if live < MR => APanel::packed(&edge[..kb * MR]),
            ASrc::InPlace { a, pc, .. } => APanel { data: &a.data[i0 * a.rs + pc..], rs: a.rs, cs: 1 },
        }
    }
}

/// Where the kernel finds one `kb`-step block of `B`'s column panels.
#[derive(Clone, Copy)]
enum BSrc<'a> {
    /// Every panel packed, `kb·NR` floats each.
    Packed(&'a [f32]),
    /// Read in place from row-major `B` (steps from `pc`); a partial last panel is packed in `edge`.
    InPlace { b: Strided<'a>, pc: usize, edge: &'a [f32] },
}

impl<'a> BSrc<'a> {
    fn panel(self, q: usize, j0: usize, kb: usize, live: usize) -> BPanel<'a> {
        match self {
            BSrc::Packed(p) => BPanel::packed(&p[q * kb * NR..(q + 1) * kb * NR]),
            BSrc::InPlace { edge, .. } if live < NR => BPanel::packed(&edge[..kb * NR]),
            BSrc::InPlace { b, pc, .. } => BPanel { data: &b.data[pc * b.rs + j0..], ld: b.rs },
        }
    }
}

/// Rows `rows` × columns `cols` of `C` for one `kb`-step block; `c` is row-major with `ldc`
/// columns, indexed from the sub-problem's origin.
#[allow(clippy::too_many_arguments)]
fn macro_kernel(
    kernel: Avx512,
    kb: usize,
    alpha: f32,
    a: ASrc<'_>,
    rows: Range<usize>,
    b: BSrc<'_>,
    cols: Range<usize>,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    let panels = cols.len().div_ceil(NR);
    let group = (B_GROUP_BYTES / (kb * NR * size_of::<f32>())).max(1);
    for first in (0..panels).step_by(group) {
        for qa in 0..rows.len().div_ceil(MR) {
            let i0 = rows.start + qa * MR;
            let mr = MR.min(rows.end - i0);
            let apanel = a.panel(qa, i0, kb, mr);
            for qb in first..panels.min(first + group) {
                let j0 = cols.start + qb * NR;
                let nr = NR.min(cols.end - j0);
                let bpanel = b.panel(qb, j0, kb, nr);
                let at = i0 * ldc + j0;
                if mr == MR && nr == NR {
                    kernel.tile(kb, alpha, apanel, bpanel, beta, &mut c[at..], ldc);
                } else {
                    edge_tile(kernel, kb, alpha, apanel, bpanel, beta, &mut c[at..], ldc, mr, nr);
                }
            }
        }
    }
}

/// `C = beta·C` for an empty inner dimension (`beta == 0` overwrites).
pub(super) fn scale_only(beta: f32, c: &mut [f32]) {
    c.iter_mut().for_each(|v| *v = if beta == 0.0 { 0.0 } else { *v * beta });
}

/// The source of `A[rows, ks]` for a product with `n` columns: in place when `A` is row-major
/// and each panel meets few panels of `B` (the output layer's `dY·E`), packed into
/// `apack` otherwise (reused often, a packed panel stays in L1 while rows a power-of-two
/// stride apart would fight over the same cache sets).
fn a_source<'a>(a: &Strided<'a>, rows: Range<usize>, ks: Range<usize>, n: usize, apack: &'a mut [f32]) -> ASrc<'a> {
    if a.cs == 1 && n <= A_IN_PLACE_MAX * NR {
        let full = rows.len() / MR * MR;
        if full < rows.len() {
            pack_a(a, rows.start + full..rows.end, ks.clone(), apack);
        }
        ASrc::InPlace { a: *a, pc: ks.start, edge: apack }
    } else {
        pack_a(a, rows, ks, apack);
        ASrc::Packed(apack)
    }
}

/// `C ← alpha·A·B + beta·C` on one thread; `c` is row-major with `b.cols` columns.
/// With `beta == 0`, `C` is never read.
pub fn gemm(kernel: Avx512, kc: usize, alpha: f32, a: Strided<'_>, b: Strided<'_>, beta: f32, c: &mut [f32]) {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    debug_assert_eq!(k, b.rows);
    debug_assert_eq!(c.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        return scale_only(beta, c);
    }
    let kc = kc.max(1);
    PACKS.with_borrow_mut(|(apack, bpack)| {
        apack.resize(MC * kc, 0.0);
        let bpack = aligned_mut(bpack, kc * NC);
        for jc in (0..n).step_by(NC) {
            let cols = jc..n.min(jc + NC);
            for pc in (0..k).step_by(kc) {
                let ks = pc..k.min(pc + kc);
                // In place for a small row-major B that meets few row panels (the embedded LSTM's
                // per-step products). A large one is packed even then: its rows, a page or more
                // apart, defeat the prefetcher (packing measured 1.4× faster for 20×2600×650).
                let bsrc = if b.cs == 1 && m <= B_IN_PLACE_MAX * MR && k * n <= B_IN_PLACE_MAX_FLOATS {
                    let full = cols.len() / NR * NR;
                    if full < cols.len() {
                        pack_b(&b, ks.clone(), cols.start + full..cols.end, bpack);
                    }
                    BSrc::InPlace { b, pc, edge: bpack }
                } else {
                    pack_b(&b, ks.clone(), cols.clone(), bpack);
                    BSrc::Packed(bpack)
                };
                // Later k-blocks add to what the first one wrote.
                let beta = if pc == 0 { beta } else { 1.0 };
                for ic in (0..m).step_by(MC) {
                    let rows = ic..m.min(ic + MC);
                    let asrc = a_source(&a, rows.clone(), ks.clone(), n, apack);
                    macro_kernel(kernel, ks.len(), alpha, asrc, rows, bsrc, cols.clone(), beta, c, n);
                }
            }
        }
    });
}

/// [`gemm`] with `B` already packed, restricted to its columns `cols` (starting at a multiple
/// of `NR`): `c` is `m × cols.len()`. The same bits as packing `B` on the fly.
pub fn gemm_prepacked(
    kernel: Avx512,
    alpha: f32,
    a: Strided<'_>,
    b: &PackedB,
    cols: Range<usize>,
    beta: f32,
    c: &mut [f32],
) {
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
    let kc = b.kc;
    PACKS.with_borrow_mut(|(apack, _)| {
        apack.resize(MC * kc, 0.0);
        for pc in (0..k).step_by(kc) {
            let ks = pc..k.min(pc + kc);
            let kb = ks.len();
            let beta = if pc == 0 { beta } else { 1.0 };
            let panels = BSrc::Packed(&b.block(&ks)[first_panel * kb * NR..]);
            for ic in (0..m).step_by(MC) {
                let rows = ic..m.min(ic + MC);
                let asrc = a_source(&a, rows.clone(), ks.clone(), width, apack);
                macro_kernel(kernel, kb, alpha, asrc, rows, panels, 0..width, beta, c, width);
            }
        }
    });
}

/// A partial tile: the kernel writes a full local tile (its left half when that holds every
/// live column), and the live part is finished with the kernel's epilogue
/// (`fma(C, beta, alpha·sum)`), bit for bit.
#[allow(clippy::too_many_arguments)]
fn edge_tile(
    kernel: Avx512,
    kb: usize,
    alpha: f32,
    apanel: APanel<'_>,
    bpanel: BPanel<'_>,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
    mr: usize,
    nr: usize,
) {
    let mut tile = [0.0f32; MR * NR];
    // A last panel with at most 16 live columns (`D` = 200: 8; 650: 10) takes the 16-column
    // kernel, half the multiply-adds: same-process A/B `small` +2–5% (three runs), `book`
    // +3% (median of block ratios), `embedded` (no such products) ±3%.
    if nr <= 16 {
        kernel.tile_vectors::<1>(kb, 1.0, apanel, bpanel, 0.0, &mut tile, NR);
    } else {
        kernel.tile(kb, 1.0, apanel, bpanel, 0.0, &mut tile, NR);
    }
    for (r, sums) in tile.chunks_exact(NR).take(mr).enumerate() {
        for (out, &sum) in c[r * ldc..r * ldc + nr].iter_mut().zip(sums) {
            let scaled = sum * alpha;
            *out = if beta == 0.0 { scaled } else { out.mul_add(beta, scaled) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transposed operand (rows contiguous along k: 16 × 16 register transposes, then the
    /// steps left over) packs element `(p, j)` of `B` at `(q·kb + p)·NR + j`, zeros past the
    /// last column; blocks of steps with and without a tail, from the start and from inside.
    #[test]
    fn transposed_operand_packs_element_by_element() {
        let (k, n) = (45, 70);
        // `Bᵀ` row-major (n × k), so `B` is its transposed view.
        let data: Vec<f32> = (0..k * n).map(|v| v as f32).collect();
        let b = Strided { data: &data, rows: n, cols: k, rs: k, cs: 1 }.t();
        for ks in [0..45, 0..32, 5..40, 29..45] {
            let kb = ks.len();
            let panels = n.div_ceil(NR);
            let mut out = vec![f32::NAN; panels * NR * kb];
            pack_b(&b, ks.clone(), 0..n, &mut out);
            for q in 0..panels {
                for p in 0..kb {
                    for j in 0..NR {
                        let col = q * NR + j;
                        let want = if col < n { data[col * k + ks.start + p] } else { 0.0 };
                        assert_eq!(out[(q * kb + p) * NR + j], want, "steps {ks:?}: panel {q}, step {p}, column {j}");
                    }
                }
            }
        }
    }

    /// Every k-block of a packed `B` starts on a cache line, whatever the allocator returned
    /// (`kb·padded` floats per block, a multiple of 16, keeps the blocks after the first there).
    #[test]
    fn packed_b_blocks_start_on_cache_lines() {
        let (k, n) = (300, 70);
        let data: Vec<f32> = (0..k * n).map(|v| v as f32).collect();
        let b = Strided { data: &data, rows: k, cols: n, rs: n, cs: 1 };
        let mut packed = PackedB::default();
        for kc in [128, 256] {
            packed.pack(&b, kc);
            for pc in (0..k).step_by(kc) {
                let block = packed.block(&(pc..k.min(pc + kc)));
                assert_eq!(block.as_ptr() as usize % 64, 0, "k-block at {pc}, kc {kc}");
                // The first panel's first row is B's row pc, columns 0..32.
                assert_eq!(block[..NR], data[pc * n..pc * n + NR]);
            }
        }
        let mut buf = vec![0.0f32; 3];
        for len in [1, 1000, 1 << 20] {
            let offset = aligned_offset(&mut buf, len);
            assert_eq!(buf[offset..].as_ptr() as usize % 64, 0);
            assert!(buf.len() >= offset + len);
        }
    }
}
