//! Int8 dot products on the Armv7E-M DSP extension: `SXTB16` unpacks two sign-extended bytes
//! into 16-bit lanes, `SMLAD` multiplies both lanes and accumulates: two MACs per instruction.
//!
//! The only `unsafe` in `lstm-core`: three single-instruction `asm!` blocks, needed because the
//! DSP intrinsics are unstable in Rust.
#![allow(unsafe_code)]

use core::arch::asm;

/// Bytes 0 and 2 of `x`, sign-extended into the two halfwords.
#[inline(always)]
fn sxtb16(x: u32) -> u32 {
    let r: u32;
    // SAFETY: a register-to-register instruction with no memory access, flags or stack use.
    unsafe {
        asm!("sxtb16 {r}, {x}", r = lateout(reg) r, x = in(reg) x, options(pure, nomem, nostack, preserves_flags))
    };
    r
}

/// Bytes 1 and 3 of `x`, sign-extended into the two halfwords.
#[inline(always)]
fn sxtb16_ror8(x: u32) -> u32 {
    let r: u32;
    // SAFETY: as for `sxtb16`.
    unsafe {
        asm!("sxtb16 {r}, {x}, ror #8", r = lateout(reg) r, x = in(reg) x, options(pure, nomem, nostack, preserves_flags))
    };
    r
}

/// `acc + a.lo·b.lo + a.hi·b.hi` on signed halfwords.
#[inline(always)]
fn smlad(a: u32, b: u32, acc: i32) -> i32 {
    let r: i32;
    // SAFETY: as for `sxtb16`. (SMLAD sets the Q flag on signed overflow, which the
    // `preserves_flags` option does not cover and nothing reads; our sums cannot overflow.)
    unsafe {
        asm!("smlad {r}, {a}, {b}, {acc}", r = lateout(reg) r, a = in(reg) a, b = in(reg) b, acc = in(reg) acc,
             options(pure, nomem, nostack))
    };
    r
}

#[inline(always)]
fn word(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[inline(always)]
fn word_i8(b: &[i8]) -> u32 {
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

/// Dot products of four int8 weight rows with one int8 vector; the vector is unpacked once
/// per four columns and shared by the four rows.
#[inline(always)]
pub fn dot_i8_x4(rows: [&[u8]; 4], x: &[i8]) -> [i32; 4] {
    let [r0, r1, r2, r3] = rows;
    let (mut a0, mut a1, mut a2, mut a3) = (0i32, 0i32, 0i32, 0i32);
    let chunks = x
        .chunks_exact(4)
        .zip(r0.chunks_exact(4))
        .zip(r1.chunks_exact(4))
        .zip(r2.chunks_exact(4))
        .zip(r3.chunks_exact(4));
    for ((((xc, w0), w1), w2), w3) in chunks {
        let xw = word_i8(xc);
        let (xe, xo) = (sxtb16(xw), sxtb16_ror8(xw));
        let (w0, w1, w2, w3) = (word(w0), word(w1), word(w2), word(w3));
        a0 = smlad(sxtb16_ror8(w0), xo, smlad(sxtb16(w0), xe, a0));
        a1 = smlad(sxtb16_ror8(w1), xo, smlad(sxtb16(w1), xe, a1));
        a2 = smlad(sxtb16_ror8(w2), xo, smlad(sxtb16(w2), xe, a2));
        a3 = smlad(sxtb16_ror8(w3), xo, smlad(sxtb16(w3), xe, a3));
    }
    let mut acc = [a0, a1, a2, a3];
    let tail = x.len() / 4 * 4;
    for (a, row) in acc.iter_mut().zip(rows) {
        for j in tail..x.len() {
            *a += i32::from(row[j] as i8) * i32::from(x[j]);
        }
    }
    acc
}
