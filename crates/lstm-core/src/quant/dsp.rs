//! The paired int8 sums ([`super::paired`]) on the Armv7E-M DSP extension: per word one `SMLAD`
//! on the raw word, one `UXTB16` and one `SMLAD` on its low bytes — four multiply-accumulates
//! for three instructions; `LDM` brings four weight words and four activation words at a time.
//!
//! The only `unsafe` in `lstm-core`: `asm!` blocks (the DSP intrinsics are unstable in Rust, and
//! `LDM` needs fixed, ascending registers). Measured under QEMU on the `embedded` model: 14
//! instructions per 16 multiply-accumulates when fully unrolled.
#![allow(unsafe_code)]

use crate::exp_table::IntLse;
use core::arch::asm;

/// Words per `LDM` (one chunk).
const CHUNK: usize = 4;

/// `[raw, low]` over `n = x.len()` words: `pair` must hold `4n` bytes. Word-aligned pairs of
/// 8–128 words (D = 16 … 256 in steps of doubling) take the unrolled `LDM` kernel, the rest
/// (never produced by the `embedded` or test models) the portable loop.
#[inline(always)]
pub fn raw_sums(pair: &[u8], x: &[i32]) -> [i32; 2] {
    let n = x.len();
    if pair.len() < 4 * n || pair.as_ptr() as usize % 4 != 0 {
        return super::paired::raw_sums_portable(pair, x);
    }
    let chunks = n / CHUNK;
    let [mut raw, mut low] = match chunks {
        0 => [0, 0],
        8 => unrolled::<8>(pair, x),
        4 => unrolled::<4>(pair, x),
        16 => unrolled::<16>(pair, x),
        32 => unrolled::<32>(pair, x),
        2 => unrolled::<2>(pair, x),
        _ => return super::paired::raw_sums_portable(pair, x),
    };
    let done = CHUNK * chunks;
    if done < n {
        let [r, l] = super::paired::raw_sums_portable(&pair[4 * done..], &x[done..]);
        raw = raw.wrapping_add(r);
        low = low.wrapping_add(l);
    }
    [raw, low]
}

/// One chunk: four activation words into r0–r3, four weight words into r4, r5, r8, r9
/// (`LDM` lists must ascend), three instructions per weight word. The two arguments are the
/// instructions for the first word's raw and low sums: `SMLAD` accumulates (the default),
/// `SMUAD` starts both sums without zeroing instructions (`first_chunk!`).
macro_rules! chunk {
    () => {
        chunk!("smlad {raw}, r4, r0, {raw}\n", "smlad {low}, r4, r0, {low}\n")
    };
    ($raw0:literal, $low0:literal) => {
        concat!(
            "ldm {xp}!, {{r0, r1, r2, r3}}\n",
            "ldm {wp}!, {{r4, r5, r8, r9}}\n",
            $raw0,
            "uxtb16 r4, r4\n",
            $low0,
            "smlad {raw}, r5, r1, {raw}\n",
            "uxtb16 r5, r5\n",
            "smlad {low}, r5, r1, {low}\n",
            "smlad {raw}, r8, r2, {raw}\n",
            "uxtb16 r8, r8\n",
            "smlad {low}, r8, r2, {low}\n",
            "smlad {raw}, r9, r3, {raw}\n",
            "uxtb16 r9, r9\n",
            "smlad {low}, r9, r3, {low}\n",
        )
    };
}

/// The first chunk of a pair: `SMUAD` starts both sums.
macro_rules! first_chunk {
    () => {
        chunk!("smuad {raw}, r4, r0\n", "smuad {low}, r4, r0\n")
    };
}

/// `[A_even, A_odd]` (see [`super::paired::pair_sums`]) of every pair of `blob` (rows of
/// `2·x.len()` columns, one segment) into `out`, two words per pair, in one assembly loop.
/// Returns `false`, doing nothing, where the loop does not apply (unaligned data, `x.len()` not
/// 8, 16 or 32 words, or `out` too short); the caller then takes the portable path.
pub fn all_pair_sums(blob: &[u8], x: &[i32], offset: i32, out: &mut [i32]) -> bool {
    match x.len() {
        32 => all::<8>(blob, x, offset, out),
        16 => all::<4>(blob, x, offset, out),
        8 => all::<2>(blob, x, offset, out),
        _ => false,
    }
}

/// Pointers and the offset `all` reads with one `LDM` (order fixed).
#[repr(C)]
struct AllState {
    out: *mut i32,
    offset: i32,
    end: *const i32,
}

#[inline(never)]
fn all<const C: usize>(blob: &[u8], x: &[i32], offset: i32, out: &mut [i32]) -> bool {
    let stride = 16 * C;
    let pairs = blob.len() / stride;
    let aligned = blob.as_ptr() as usize % 4 == 0;
    if !aligned || x.len() != 4 * C || out.len() < 2 * pairs {
        return false;
    }
    if pairs == 0 {
        return true;
    }
    let mut st = AllState { out: out.as_mut_ptr(), offset, end: out[2 * pairs..].as_ptr() };
    // SAFETY: `wp` walks `pairs` whole pairs of `blob` (`16·C` bytes each, word aligned:
    // checked above); each pair reads the `4·C` words of `x` and rewinds `xp`; the loop writes
    // two words per pair through `st.out`, which stops at `st.end = out + 2·pairs ≤ out.len()`.
    // `st` is a local `repr(C)` struct (offsets 0–8). Registers: r0–r5, r8, r9 and the
    // operands; the stack is untouched.
    unsafe {
        asm!(
            "2:",
            first_chunk!(),
            ".rept {c1}",
            chunk!(),
            ".endr",
            "sub {xp}, {xp}, #{xbytes}",
            "ldm {st}, {{r0, r1, r2}}",
            "sub {raw}, {raw}, {low}",
            "sub {low}, {low}, r1",
            "strd {raw}, {low}, [r0], #8",
            "str r0, [{st}]",
            "cmp r0, r2",
            "blo 2b",
            c1 = const C - 1,
            xbytes = const 16 * C,
            xp = inout(reg) x.as_ptr() => _,
            wp = inout(reg) blob.as_ptr() => _,
            raw = out(reg) _,
            low = out(reg) _,
            st = in(reg) &raw mut st,
            out("r0") _, out("r1") _, out("r2") _, out("r3") _,
            out("r4") _, out("r5") _, out("r8") _, out("r9") _,
            options(nostack)
        );
    }
    true
}

/// The two rows of a pair on the fast path, general form: `y ≤ limit` (r4) adds
/// `T[min(max − y, 8191)]` to the sum (r2:r3) with `UMLAL` by one (`{low}`).
macro_rules! rows_limit {
    () => {
        concat!(
            "movs {low}, #1\n",
            "cmp r8, r4\n",
            "bgt 3f\n",
            "sub {raw}, r1, r8\n",
            "usat {raw}, #13, {raw}\n",
            "ldr {raw}, [r5, {raw}, lsl #2]\n",
            "umlal r2, r3, {raw}, {low}\n",
            "cmp r9, r4\n",
            "bgt 4f\n",
            "sub {raw}, r1, r9\n",
            "usat {raw}, #13, {raw}\n",
            "ldr {raw}, [r5, {raw}, lsl #2]\n",
            "umlal r2, r3, {raw}, {low}\n",
        )
    };
}

/// The same when the limit is the maximum (top-1, log-probabilities): one `SUBS` both tests
/// and forms `max − y`, and r4 holds the one for `UMLAL`. The test is the signed `BLT` (N ≠ V),
/// not the sign of the difference (`BMI`): before the first logit the maximum is `i32::MIN`,
/// and `i32::MIN − y` overflows to a positive number for every positive `y`, which `BMI` took
/// for `y ≤ max`: every positive logit before the first negative one was summed as a term and
/// never compared, so a most probable word among them was missed (a toy model whose most
/// probable word after `<eos>` was word 0 made the firmware's greedy continuation differ from
/// the host's, which the QEMU test caught).
macro_rules! rows_max {
    () => {
        concat!(
            "subs {raw}, r1, r8\n",
            "blt 3f\n",
            "usat {raw}, #13, {raw}\n",
            "ldr {raw}, [r5, {raw}, lsl #2]\n",
            "umlal r2, r3, {raw}, r4\n",
            "subs {raw}, r1, r9\n",
            "blt 4f\n",
            "usat {raw}, #13, {raw}\n",
            "ldr {raw}, [r5, {raw}, lsl #2]\n",
            "umlal r2, r3, {raw}, r4\n",
        )
    };
}

/// One entry into the scan loop (see [`scan`]): pairs until the end or a row off the fast path.
macro_rules! scan_asm {
    ($rows:expr, $c:ident, $x:ident, $wp:ident, $st:ident, $status:ident, $y0:ident, $y1:ident) => {
        asm!(
            "2:",
            first_chunk!(),
            ".rept {c1}",
            chunk!(),
            ".endr",
            "sub {xp}, {xp}, #{xbytes}",
            "ldm {st}, {{r0, r1, r2, r3, r4, r5, r8}}",
            "sub {raw}, {raw}, {low}",
            "sub {low}, {low}, r8",
            "ldrd r8, r9, [r0], #8",
            "smmla r8, {raw}, r8, r9",
            "ldrd {raw}, r9, [r0], #8",
            "smmla r9, {low}, {raw}, r9",
            $rows,
            "stm {st}, {{r0, r1, r2, r3}}",
            "ldr r4, [{st}, #28]",
            "cmp {wp}, r4",
            "blo 2b",
            "movs r0, #0",
            "b 5f",
            // The pair's first row leaves the fast path: report both rows.
            "3:",
            "str r0, [{st}]",
            "mov {raw}, r8",
            "mov {low}, r9",
            "movs r0, #2",
            "b 5f",
            // The second row does: the first is accounted for.
            "4:",
            "stm {st}, {{r0, r1, r2, r3}}",
            "mov {low}, r9",
            "movs r0, #1",
            "5:",
            c1 = const $c - 1,
            xbytes = const 16 * $c,
            xp = inout(reg) $x.as_ptr() => _,
            wp = inout(reg) $wp,
            raw = out(reg) $y0,
            low = out(reg) $y1,
            st = in(reg) &raw mut $st,
            out("r0") $status,
            out("r1") _, out("r2") _, out("r3") _,
            out("r4") _, out("r5") _, out("r8") _, out("r9") _,
            options(nostack)
        )
    };
}

/// What the vocabulary scan shares with its assembly loop. One `LDM` reads the first seven
/// fields into r0–r5, r8 and one `STM` writes back the first four, so the order is fixed.
#[repr(C)]
#[derive(Debug)]
struct ScanState {
    /// Next `(M, B)` pair (word aligned).
    affine: *const u8,
    /// Running maximum logit.
    max: i32,
    /// Q31 sum of `e^((y − max)/256)`, low and high words.
    sum_lo: u32,
    sum_hi: u32,
    /// Logits above this leave the fast path (≤ `max`).
    limit: i32,
    /// `exp_table::EXP_NEG_Q31`.
    table: *const u32,
    /// `128·Σx` of the activations.
    offset: i32,
    /// End of the weight bytes.
    end: *const u8,
}

impl ScanState {
    /// Copies the running maximum and sum into `sums`.
    fn store(&self, sums: &mut IntLse) {
        sums.max = self.max;
        sums.sum = u64::from(self.sum_lo) | u64::from(self.sum_hi) << 32;
    }

    /// Takes the running maximum and sum from `sums`.
    fn load(&mut self, sums: &IntLse) {
        self.max = sums.max;
        self.sum_lo = sums.sum as u32;
        self.sum_hi = (sums.sum >> 32) as u32;
    }
}

/// The integer logits `y = B + ⌊A·M/2³²⌋` of every pair of `blob` (rows of `2·x.len()`
/// columns, one segment), accumulated into `sums` exactly like [`IntLse::push`] when
/// `y ≤ sums.limit`; any other logit is handed to `slow(row, y, sums)` in row order, which must
/// account for it (and may move `max`, `sum` and `limit`). `max_only` promises that the
/// limit always equals the maximum (top-1, log-probabilities): a shorter loop. Returns `false`,
/// doing nothing, where the assembly loop does not apply (unaligned data, or `x.len()` not 8,
/// 16 or 32 words); the caller then takes the portable path.
#[inline(always)]
pub fn scan_logits(
    max_only: bool,
    blob: &[u8],
    x: &[i32],
    offset: i32,
    affine: &[u8],
    sums: &mut IntLse,
    slow: impl FnMut(usize, i32, &mut IntLse),
) -> bool {
    match x.len() {
        32 if max_only => scan::<8, true>(blob, x, offset, affine, sums, slow),
        16 if max_only => scan::<4, true>(blob, x, offset, affine, sums, slow),
        8 if max_only => scan::<2, true>(blob, x, offset, affine, sums, slow),
        32 => scan::<8, false>(blob, x, offset, affine, sums, slow),
        16 => scan::<4, false>(blob, x, offset, affine, sums, slow),
        8 => scan::<2, false>(blob, x, offset, affine, sums, slow),
        _ => false,
    }
}

#[inline(always)]
fn scan<const C: usize, const MAX_ONLY: bool>(
    blob: &[u8],
    x: &[i32],
    offset: i32,
    affine: &[u8],
    sums: &mut IntLse,
    mut slow: impl FnMut(usize, i32, &mut IntLse),
) -> bool {
    let stride = 16 * C;
    let pairs = blob.len() / stride;
    let aligned = blob.as_ptr() as usize % 4 == 0 && affine.as_ptr() as usize % 4 == 0;
    if !aligned || x.len() != 4 * C || affine.len() < 16 * pairs {
        return false;
    }
    if pairs == 0 {
        return true;
    }
    let table = crate::exp_table::EXP_NEG_Q31.as_ptr();
    let start = blob.as_ptr();
    let end = blob[pairs * stride..].as_ptr();
    let mut st = ScanState {
        affine: affine.as_ptr(),
        max: 0,
        sum_lo: 0,
        sum_hi: 0,
        // With `MAX_ONLY` the loop never reads the limit (it is the maximum) and uses the
        // word as the constant 1.
        limit: if MAX_ONLY { 1 } else { sums.limit },
        table,
        offset,
        end,
    };
    st.load(sums);
    let mut wp = start;
    while wp < end {
        let (status, y0, y1): (u32, i32, i32);
        // SAFETY: `wp` walks `blob` pair by pair (`stride = 16·C` bytes, `pairs` whole pairs,
        // word aligned: checked above) and stops at `end`; each pair reads `16·C` bytes of `x`
        // (`x.len() = 4·C` words, aligned as `&[i32]`) from its start, rewinding `xp` after;
        // `st.affine` walks `affine` 16 bytes per pair (`affine.len() ≥ 16·pairs`, aligned);
        // `table` reads index `min(max − y, 8191)`, inside the 8192-entry table, because
        // `y ≤ limit ≤ max` on that path and logits lie within ±2³⁰ (so the difference is a
        // non-negative i32). The only memory written is `st`, a local `repr(C)` struct whose
        // field offsets the `LDM`/`STM`/`LDR` below use (0–28). Registers: r0–r5, r8, r9 and
        // the operands; the stack is untouched.
        unsafe {
            if MAX_ONLY {
                scan_asm!(rows_max!(), C, x, wp, st, status, y0, y1);
            } else {
                scan_asm!(rows_limit!(), C, x, wp, st, status, y0, y1);
            }
        }
        if status == 0 {
            break;
        }
        let pair = (wp as usize - start as usize) / stride - 1;
        st.store(sums);
        if status == 2 {
            slow(2 * pair, y0, sums);
            // The second row has not been looked at: the first may have moved the limit.
            if y1 <= sums.limit {
                sums.push(y1);
            } else {
                slow(2 * pair + 1, y1, sums);
            }
        } else {
            slow(2 * pair + 1, y1, sums);
        }
        st.load(sums);
        if !MAX_ONLY {
            st.limit = sums.limit;
        }
    }
    st.store(sums);
    true
}

/// `C` chunks, fully unrolled (no loop counter or branch).
#[inline(always)]
fn unrolled<const C: usize>(pair: &[u8], x: &[i32]) -> [i32; 2] {
    let (mut raw, mut low) = (0i32, 0i32);
    debug_assert!(x.len() >= CHUNK * C && pair.len() >= 4 * CHUNK * C);
    // SAFETY: the caller checked `pair.len() ≥ 4·x.len() ≥ 16·C` and that `pair` is word
    // aligned (`x` is `&[i32]`, so aligned); `.rept C` reads 16·C bytes from each pointer, all
    // inside the slices. Only the named registers and flags-free DSP instructions are used; no
    // memory is written, the stack is untouched.
    unsafe {
        asm!(
            ".rept {c}",
            chunk!(),
            ".endr",
            c = const C,
            xp = inout(reg) x.as_ptr() => _,
            wp = inout(reg) pair.as_ptr() => _,
            raw = inout(reg) raw,
            low = inout(reg) low,
            out("r0") _, out("r1") _, out("r2") _, out("r3") _,
            out("r4") _, out("r5") _, out("r8") _, out("r9") _,
            options(nostack, readonly, preserves_flags)
        );
    }
    [raw, low]
}
