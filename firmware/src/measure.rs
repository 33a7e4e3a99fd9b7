//! Flash and RAM use from the linker's symbols, and the stack's high-water mark by painting.
//!
//! The only `unsafe` of the firmware: declaring the linker-defined symbols and reading/writing
//! the unused stack region below the current stack pointer.
#![allow(unsafe_code)]

// SAFETY: these symbols are defined by cortex-m-rt's link.x; only their addresses are used.
unsafe extern "C" {
    static __sidata: u32;
    static __sdata: u32;
    static __edata: u32;
    static __sbss: u32;
    static __ebss: u32;
    static __sheap: u32;
    static _stack_start: u32;
    static __vector_table: u32;
}

const PAINT: u32 = 0x5AFE_C0DE;
/// Bytes kept unpainted just below the stack pointer when painting (the painter's own frame).
const GUARD: usize = 256;

fn addr(p: *const u32) -> usize {
    p as usize
}

/// Static memory use.
#[derive(Debug, Clone, Copy, defmt::Format)]
pub struct MemoryUse {
    /// Flash from the vector table to the end of .data's initial values.
    pub flash: u32,
    /// .data bytes.
    pub data: u32,
    /// .bss bytes.
    pub bss: u32,
}

/// Reads the section bounds.
pub fn memory_use() -> MemoryUse {
    // Only the addresses of the linker symbols are taken (safe); nothing is read through them.
    let (sidata, sdata, edata, sbss, ebss, vt) = (
        addr(&raw const __sidata),
        addr(&raw const __sdata),
        addr(&raw const __edata),
        addr(&raw const __sbss),
        addr(&raw const __ebss),
        addr(&raw const __vector_table),
    );
    let data = edata - sdata;
    MemoryUse { flash: (sidata + data - vt) as u32, data: data as u32, bss: (ebss - sbss) as u32 }
}

fn stack_bounds() -> (usize, usize) {
    (addr(&raw const __sheap), addr(&raw const _stack_start))
}

/// Fills the free stack (from the end of static RAM up to just below the current stack
/// pointer) with a pattern, so [`stack_high_water`] can later see how deep the stack went.
#[inline(never)]
pub fn paint_stack() {
    let (bottom, _) = stack_bounds();
    let sp = cortex_m::register::msp::read() as usize;
    let mut p = bottom;
    while p + 4 <= sp.saturating_sub(GUARD) {
        // SAFETY: [bottom, sp − GUARD) lies between the end of .bss/.uninit and the live
        // stack: no object lives there, and the stack has never been deeper than now.
        unsafe { core::ptr::write_volatile(p as *mut u32, PAINT) };
        p += 4;
    }
}

/// Deepest stack use since [`paint_stack`], in bytes from the top of RAM.
pub fn stack_high_water() -> u32 {
    let (bottom, top) = stack_bounds();
    let mut p = bottom;
    // SAFETY: reads stay within [bottom, top), RAM owned by the stack region.
    while p < top && unsafe { core::ptr::read_volatile(p as *const u32) } == PAINT {
        p += 4;
    }
    (top - p) as u32
}

/// Marks the start of a measured region for the instruction-counting QEMU plugin
/// (`bench/insn_count.c`), which watches for this function's first instruction.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn bench_start() {
    cortex_m::asm::nop();
}

/// Marks the end of a measured region (see [`bench_start`]).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn bench_stop() {
    // Two instructions, so the linker cannot fold this into `bench_start`.
    cortex_m::asm::nop();
    cortex_m::asm::nop();
}
