//! The AMX micro-kernel: one 32 × 32 tile of `C` in f32 from panels of `A` and `B` each split
//! into a high and a low bfloat16 part ("bf16x3": `a·b ≈ aₕ·bₕ + aₕ·bₗ + aₗ·bₕ`, summed in
//! f32 by the tile unit).
//!
//! Why: the CPUs this project trains on (Sapphire / Emerald Rapids) multiply bfloat16 tiles
//! at ~2,300 GFLOP/s per core in cache, 13× what their 512-bit f32 FMAs reach. Three products
//! per f32 product keep 16 of f32's 24 significand bits in every operand (relative error
//! ~2⁻¹⁷ each, against 2⁻²⁴) while the unit still runs several times faster than f32.
//! oneDNN and XLA offer the same split as an "fp32 via bf16x3" mode.
//!
//! The second `unsafe` module of the trainer (beside `avx512.rs`): stable Rust has no AMX
//! intrinsics, so the tile instructions are inline assembly. Linux hands out the 8 KiB of tile
//! state only to a process that asks (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), and each thread must
//! load a tile configuration before its first tile instruction; [`Amx::detect`] and
//! [`Amx::tile`] see to both.
#![allow(unsafe_code)]

use std::arch::asm;
use std::arch::x86_64::{
    __m512, __m512i, _CMP_UNORD_Q, _mm512_add_epi32, _mm512_and_si512, _mm512_castps_si512, _mm512_castsi512_ps,
    _mm512_cmp_ps_mask, _mm512_loadu_ps, _mm512_loadu_si512, _mm512_mask_mov_epi32, _mm512_or_si512,
    _mm512_permutex2var_epi16, _mm512_set1_epi32, _mm512_slli_epi32, _mm512_srli_epi32, _mm512_storeu_si512,
    _mm512_sub_ps,
};
use std::cell::Cell;
use std::sync::OnceLock;

/// Rows of `C` per tile (two 16-row tile registers).
pub const MR: usize = 32;
/// Columns of `C` per tile (two 16-column tile registers).
pub const NR: usize = 32;
/// Steps of `k` per tile instruction (16 pairs of bfloat16).
pub const KSTEP: usize = 32;
/// Pairs per packed 16 × 32 bfloat16 tile. Both operands are packed as pairs of bfloat16
/// values adjacent in `k` (the first in the low half of a `u32`): a row of an `A` tile is 16
/// pairs along `k`, a row of a `B` tile one pair for each of 16 columns.
pub const TILE_PAIRS: usize = 16 * 16;
/// Pairs per step of `KSTEP` in a packed panel of `A` (two row halves, high and low parts)
/// or of `B` (two column halves, high and low parts).
pub const PANEL_STEP_PAIRS: usize = 4 * TILE_PAIRS;

/// Proof that the running CPU executes AMX-BF16 and Linux granted this process the tile
/// state: only [`Amx::detect`] makes one.
#[derive(Debug, Clone, Copy)]
pub struct Amx(());

/// The tile configuration (palette 1): eight registers of 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
    reserved_rows: [u8; 16],
}

const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
    reserved_rows: [0; 16],
};

thread_local! {
    /// Whether this thread has loaded [`CONFIG`].
    static CONFIGURED: Cell<bool> = const { Cell::new(false) };
}

impl Amx {
    /// `Some` when the CPU has AMX-TILE and AMX-BF16, the OS enabled the tile state, and Linux
    /// granted it to this process.
    pub fn detect() -> Option<Amx> {
        static GRANTED: OnceLock<bool> = OnceLock::new();
        GRANTED
            .get_or_init(|| {
                // The packing's splits are AVX-512 (BW for the 16-bit permute); every AMX CPU has it.
                std::arch::is_x86_feature_detected!("avx512bw") && cpu_has_amx_bf16() && request_tile_state()
            })
            .then_some(Amx(()))
    }

    /// `C[r][j] ← Σₚ A(r, p)·B(p, j) (+ C[r][j] when `accumulate`)` for `r, j < 32` over
    /// `steps · 32` values of `p`, where `C[r][j]` is `c[r·ldc + j]`.
    ///
    /// Panels are packed by `amx_packed.rs`: `a` holds [`PANEL_STEP_PAIRS`] per step (for rows
    /// 0–15 then 16–31, the high part's tile then the low part's; pair `t` of row `r` at
    /// `16r + t`), `b` the same for columns 0–15 then 16–31 (pair `p` of column `j` at `16p + j`).
    /// Every element takes the same sequence of tile operations wherever it sits.
    ///
    /// # Panics
    /// If a panel is shorter than `steps`, or `c` does not hold 32 rows of 32 at stride `ldc`.
    ///
    /// `next` is where the caller's next tile of `C` starts (its rows `ldc` apart, as here):
    /// the loop asks for it to be brought into cache, four rows per step of `k`, so that the
    /// next call does not wait on memory for it. Only a hint: any address will do.
    #[allow(clippy::too_many_arguments)]
    pub fn tile(self, steps: usize, a: &[u32], b: &[u32], accumulate: bool, c: &mut [f32], ldc: usize, next: usize) {
        assert!(a.len() >= steps * PANEL_STEP_PAIRS && b.len() >= steps * PANEL_STEP_PAIRS, "amx tile: short panel");
        assert!(ldc >= NR && c.len() >= (MR - 1) * ldc + NR, "amx tile: output too small");
        if steps == 0 && accumulate {
            return;
        }
        configure_this_thread();
        // SAFETY: the CPU runs AMX-BF16 and the process holds the tile state (this value
        // exists only after `detect` checked both); this thread loaded the 16 × 64-byte
        // configuration just above. The assembly reads `steps` packed steps of 4 KiB from
        // `a` and `b` (lengths asserted above) and reads and writes 32 rows of 32 f32 at
        // stride `ldc` from `c` (length asserted above); it touches only tile registers
        // besides its operands.
        unsafe {
            tile_32x32(steps, a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), ldc * 4, accumulate, next);
        }
    }
}

impl Amx {
    /// Pairs `(x0[j], x1[j])` (two rows of `B`, adjacent in `k`) split into high parts and low
    /// parts: `(high, low)`, each pair in one `u32` with `x0`'s part in the low half. Parts are
    /// rounded to nearest, ties to even; `x ≈ high + low` to 16 significant bits; NaN stays NaN.
    #[inline]
    pub fn split_across(self, x0: &[f32; 16], x1: &[f32; 16]) -> ([u32; 16], [u32; 16]) {
        let (mut high, mut low) = ([0u32; 16], [0u32; 16]);
        // SAFETY: `detect` checked AVX-512F and BW; the function reads the two 16-value arrays
        // and writes the two 16-value arrays it is given.
        unsafe { split_across_avx512(x0, x1, &mut high, &mut low) };
        (high, low)
    }

    /// Pairs `(x[2t], x[2t + 1])` (a row of `A`, or a column of `Bᵀ`, along `k`) split as in
    /// [`Amx::split_across`].
    #[inline]
    pub fn split_along(self, x: &[f32; 32]) -> ([u32; 16], [u32; 16]) {
        let (mut high, mut low) = ([0u32; 16], [0u32; 16]);
        // SAFETY: as above, for one 32-value array in.
        unsafe { split_along_avx512(x, &mut high, &mut low) };
        (high, low)
    }
}

/// High and low bfloat16 parts of 16 floats, each in the low 16 bits of its lane.
#[target_feature(enable = "avx512f")]
fn split16(x: __m512) -> (__m512i, __m512i) {
    let round = |b: __m512i| {
        let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
        _mm512_add_epi32(b, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)))
    };
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
    let bits = _mm512_mask_mov_epi32(_mm512_castps_si512(x), nan, _mm512_set1_epi32(0x7fc0_0000));
    let high = _mm512_and_si512(round(bits), _mm512_set1_epi32(0xffff_0000_u32 as i32));
    let rest = _mm512_sub_ps(_mm512_castsi512_ps(bits), _mm512_castsi512_ps(high));
    (_mm512_srli_epi32::<16>(high), _mm512_srli_epi32::<16>(round(_mm512_castps_si512(rest))))
}

/// # Safety
/// AVX-512F must be available.
#[target_feature(enable = "avx512f")]
unsafe fn split_across_avx512(x0: &[f32; 16], x1: &[f32; 16], high: &mut [u32; 16], low: &mut [u32; 16]) {
    // SAFETY: each pointer covers 16 values (array types).
    unsafe {
        let (h0, l0) = split16(_mm512_loadu_ps(x0.as_ptr()));
        let (h1, l1) = split16(_mm512_loadu_ps(x1.as_ptr()));
        _mm512_storeu_si512(high.as_mut_ptr().cast(), _mm512_or_si512(h0, _mm512_slli_epi32::<16>(h1)));
        _mm512_storeu_si512(low.as_mut_ptr().cast(), _mm512_or_si512(l0, _mm512_slli_epi32::<16>(l1)));
    }
}

/// # Safety
/// AVX-512F and AVX-512BW must be available.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn split_along_avx512(x: &[f32; 32], high: &mut [u32; 16], low: &mut [u32; 16]) {
    // Word `w` of the result is word `2w` of the two split halves (the low word of lane `w`).
    const EVEN_WORDS: [i16; 32] = [
        0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40, 42, 44, 46, 48, 50, 52, 54, 56,
        58, 60, 62,
    ];
    // SAFETY: `x` covers 32 values, `high` and `low` 16 each; the index table is 64 bytes.
    unsafe {
        let idx = _mm512_loadu_si512(EVEN_WORDS.as_ptr().cast());
        let (h0, l0) = split16(_mm512_loadu_ps(x.as_ptr()));
        let (h1, l1) = split16(_mm512_loadu_ps(x.as_ptr().add(16)));
        _mm512_storeu_si512(high.as_mut_ptr().cast(), _mm512_permutex2var_epi16(h0, idx, h1));
        _mm512_storeu_si512(low.as_mut_ptr().cast(), _mm512_permutex2var_epi16(l0, idx, l1));
    }
}

/// Loads [`CONFIG`] once per thread (it stays until the thread releases its tiles).
fn configure_this_thread() {
    if !CONFIGURED.get() {
        // SAFETY: `detect` established that the tile state is enabled for this process;
        // `CONFIG` is a valid palette-1 configuration (64 bytes, reserved bytes zero).
        unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly)) };
        CONFIGURED.set(true);
    }
}

/// CPUID leaf 7: AMX-BF16 (EDX bit 22) and AMX-TILE (bit 24); leaf 1: OSXSAVE, and XCR0's
/// tile bits (17, 18) set by the OS.
fn cpu_has_amx_bf16() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86-64 CPU.
    let (max_leaf, leaf1) = unsafe { (__cpuid(0).eax, __cpuid(1)) };
    if max_leaf < 7 || leaf1.ecx & (1 << 27) == 0 {
        return false;
    }
    #[allow(unused_unsafe)]
    // SAFETY: as above; leaf 7 exists (checked).
    let leaf7 = unsafe { __cpuid_count(7, 0) };
    if leaf7.edx & (1 << 22) == 0 || leaf7.edx & (1 << 24) == 0 {
        return false;
    }
    // SAFETY: OSXSAVE is set (checked), so XGETBV is enabled.
    let xcr0 = unsafe { _xgetbv(0) };
    xcr0 & (0b11 << 17) == 0b11 << 17
}

/// Asks Linux for the AMX tile data state (`ARCH_REQ_XCOMP_PERM`, `XFEATURE_XTILEDATA`).
#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM takes two integers and touches no memory of
    // ours; it fails cleanly (returns -1) where the kernel does not support the request.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// The tile loop. Registers: `tmm0`–`tmm3` the four 16 × 16 quarters of `C`, `tmm4`/`tmm5`
/// the two row halves of `A`, `tmm6`/`tmm7` the two column halves of `B`. Per step: the
/// low × high products first, then high × high, then high × low (reloading only what
/// changes: 8 tile loads for 12 tile products).
///
/// # Safety
/// As in [`Amx::tile`]; `steps ≥ 1` unless `accumulate` is false.
#[inline(never)]
unsafe fn tile_32x32(
    steps: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc_bytes: usize,
    accumulate: bool,
    next: usize,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        asm!(
            "lea {c1}, [{c} + {ldc}*8]",
            "lea {c1}, [{c1} + {ldc}*8]",
            "test {acc}, {acc}",
            "jz 3f",
            "tileloadd tmm0, [{c} + {ldc}*1]",
            "tileloadd tmm1, [{c} + {ldc}*1 + 64]",
            "tileloadd tmm2, [{c1} + {ldc}*1]",
            "tileloadd tmm3, [{c1} + {ldc}*1 + 64]",
            "jmp 4f",
            "3:",
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "4:",
            "test {k}, {k}",
            "jz 5f",
            "2:",
            // The next tile of `C`, four of its rows (two lines each) per step.
            ".rept 4",
            "prefetcht0 [{next}]",
            "prefetcht0 [{next} + 64]",
            "add {next}, {ldc}",
            ".endr",
            // low parts of A against high parts of B
            "tileloadd tmm4, [{a} + {s}*1 + 1024]",
            "tileloadd tmm5, [{a} + {s}*1 + 3072]",
            "tileloadd tmm6, [{b} + {s}*1]",
            "tileloadd tmm7, [{b} + {s}*1 + 2048]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            // high parts of A against high parts of B
            "tileloadd tmm4, [{a} + {s}*1]",
            "tileloadd tmm5, [{a} + {s}*1 + 2048]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            // high parts of A against low parts of B
            "tileloadd tmm6, [{b} + {s}*1 + 1024]",
            "tileloadd tmm7, [{b} + {s}*1 + 3072]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a}, 4096",
            "add {b}, 4096",
            "dec {k}",
            "jnz 2b",
            "5:",
            "tilestored [{c} + {ldc}*1], tmm0",
            "tilestored [{c} + {ldc}*1 + 64], tmm1",
            "tilestored [{c1} + {ldc}*1], tmm2",
            "tilestored [{c1} + {ldc}*1 + 64], tmm3",
            a = inout(reg) a => _,
            b = inout(reg) b => _,
            k = inout(reg) steps => _,
            c = in(reg) c,
            c1 = out(reg) _,
            next = inout(reg) next => _,
            ldc = in(reg) ldc_bytes,
            s = in(reg) 64usize,
            acc = in(reg) usize::from(accumulate),
            options(nostack),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exactly representable operands (small integers, zero low parts): the tile must give the
    /// exact product, element by element, and add to `C` when asked.
    #[test]
    fn integer_tile_is_exact() {
        let Some(amx) = Amx::detect() else {
            eprintln!("no AMX-BF16 on this CPU: skipped");
            return;
        };
        let steps = 2;
        let k = steps * KSTEP;
        let av = |r: usize, p: usize| ((r * 7 + p * 3) % 11) as f32 - 5.0;
        let bv = |p: usize, j: usize| ((p * 5 + j * 2) % 13) as f32 - 6.0;
        let pair = |x0: f32, x1: f32| (x0.to_bits() >> 16) | (x1.to_bits() & 0xffff_0000);
        let mut a = vec![0u32; steps * PANEL_STEP_PAIRS];
        let mut b = vec![0u32; steps * PANEL_STEP_PAIRS];
        for s in 0..steps {
            for half in 0..2 {
                let tile = s * PANEL_STEP_PAIRS + half * 2 * TILE_PAIRS;
                for r in 0..16 {
                    for t in 0..16 {
                        let (i, p) = (half * 16 + r, s * 32 + 2 * t);
                        a[tile + r * 16 + t] = pair(av(i, p), av(i, p + 1));
                    }
                }
                for q in 0..16 {
                    for j in 0..16 {
                        let (p, j2) = (s * 32 + 2 * q, half * 16 + j);
                        b[tile + q * 16 + j] = pair(bv(p, j2), bv(p + 1, j2));
                    }
                }
            }
        }
        let ldc = 40;
        let mut c = vec![f32::NAN; 32 * ldc];
        amx.tile(steps, &a, &b, false, &mut c, ldc, 0);
        let exact = |r: usize, j: usize| (0..k).map(|p| av(r, p) * bv(p, j)).sum::<f32>();
        for r in 0..32 {
            for j in 0..32 {
                assert_eq!(c[r * ldc + j], exact(r, j), "C[{r}][{j}]");
            }
            assert!(c[r * ldc + 32..r * ldc + 40].iter().all(|x| x.is_nan()), "row {r} written past the tile");
        }
        amx.tile(steps, &a, &b, true, &mut c, ldc, 0);
        for r in 0..32 {
            for j in 0..32 {
                assert_eq!(c[r * ldc + j], 2.0 * exact(r, j), "accumulated C[{r}][{j}]");
            }
        }
    }
}
