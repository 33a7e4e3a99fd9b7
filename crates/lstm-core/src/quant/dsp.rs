//! The paired int8 sums ([`super::paired`]) on the Armv7E-M DSP extension: per word one `SMLAD`
//! on the raw word, one `UXTB16` and one `SMLAD` on its low bytes — four multiply-accumulates
//! for three instructions; `LDM` brings four weight words and four activation words at a time.
//!
//! The only `unsafe` in `lstm-core`: `asm!` blocks (the DSP intrinsics are unstable in Rust, and
//! `LDM` needs fixed, ascending registers). Measured under QEMU on the `embedded` model: 14
//! instructions per 16 multiply-accumulates when fully unrolled.
#![allow(unsafe_code)]

use core::arch::asm;

/// Words per `LDM` (one chunk).
const CHUNK: usize = 4;

/// `[raw, low]` over `n = x.len()` words: `pair` must hold `4n` bytes. Word-aligned pairs take
/// the `LDM` kernel, others (never produced by the model format) the portable loop.
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
        _ => looped(pair, x, chunks),
    };
    let done = CHUNK * chunks;
    if done < n {
        let [r, l] = super::paired::raw_sums_portable(&pair[4 * done..], &x[done..]);
        raw = raw.wrapping_add(r);
        low = low.wrapping_add(l);
    }
    [raw, low]
}

/// Calls `f([raw, low])` for every pair of `blob` (pairs of `4·x.len()` bytes, word aligned),
/// with the kernel chosen once for the whole pass rather than per pair.
#[inline(always)]
pub fn for_each_raw(blob: &[u8], x: &[i32], mut f: impl FnMut([i32; 2])) {
    let n = x.len();
    if n == 0 || n % CHUNK != 0 || blob.as_ptr() as usize % 4 != 0 {
        blob.chunks_exact(4 * n.max(1)).for_each(|pair| f(raw_sums(pair, x)));
        return;
    }
    let pairs = blob.chunks_exact(4 * n);
    match n / CHUNK {
        8 => pairs.for_each(|pair| f(unrolled::<8>(pair, x))),
        4 => pairs.for_each(|pair| f(unrolled::<4>(pair, x))),
        16 => pairs.for_each(|pair| f(unrolled::<16>(pair, x))),
        2 => pairs.for_each(|pair| f(unrolled::<2>(pair, x))),
        chunks => pairs.for_each(|pair| f(looped(pair, x, chunks))),
    }
}

/// One chunk: four activation words into r0–r3, four weight words into r4, r5, r8, r9
/// (`LDM` lists must ascend), three instructions per weight word.
macro_rules! chunk {
    () => {
        concat!(
            "ldm {xp}!, {{r0, r1, r2, r3}}\n",
            "ldm {wp}!, {{r4, r5, r8, r9}}\n",
            "smlad {raw}, r4, r0, {raw}\n",
            "uxtb16 r4, r4\n",
            "smlad {low}, r4, r0, {low}\n",
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

/// Any number (≥ 1) of chunks, with a counter.
#[inline(always)]
fn looped(pair: &[u8], x: &[i32], chunks: usize) -> [i32; 2] {
    let (mut raw, mut low) = (0i32, 0i32);
    // SAFETY: as in `unrolled`, with `chunks ≥ 1` iterations of 16 bytes from each pointer,
    // `16·chunks ≤ 4·x.len() ≤ pair.len()`. SUBS clobbers the flags (no `preserves_flags`).
    unsafe {
        asm!(
            "2:",
            chunk!(),
            "subs {n}, {n}, #1",
            "bne 2b",
            n = inout(reg) chunks => _,
            xp = inout(reg) x.as_ptr() => _,
            wp = inout(reg) pair.as_ptr() => _,
            raw = inout(reg) raw,
            low = inout(reg) low,
            out("r0") _, out("r1") _, out("r2") _, out("r3") _,
            out("r4") _, out("r5") _, out("r8") _, out("r9") _,
            options(nostack, readonly)
        );
    }
    [raw, low]
}
