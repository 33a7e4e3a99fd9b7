//! Board support shared by the firmware binaries: the defmt transport, panic and exit
//! handling, the cycle counter and memory measurements.
//!
//! Boards (exactly one cargo feature): `qemu` (mps2-an386) and `netduino` (netduinoplus2) log
//! defmt frames over semihosting and exit with a status QEMU returns; `nrf52840` logs over RTT
//! for `probe-rs run`.
#![no_std]
#![deny(unsafe_code)]

#[cfg(feature = "nrf52840")]
use defmt_rtt as _;
#[cfg(feature = "semihosting")]
use defmt_semihosting as _;
#[cfg(feature = "nrf52840")]
use panic_probe as _;

pub mod measure;

/// Bytes at a 4-byte-aligned address.
#[repr(C, align(4))]
struct Aligned<T: ?Sized>(T);

/// The file at a word-aligned address: the format aligns its weights within the file, so the
/// Cortex-M4 kernel can load them four words at a time (`LDM`).
static MODEL_ALIGNED: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/model.lmq8")));

/// The model exported by `host export`, embedded at build time (read in place from flash).
pub static MODEL: &[u8] = &MODEL_ALIGNED.0;
/// One prompt per line, chosen at build time.
pub static PROMPTS: &str = include_str!(concat!(env!("OUT_DIR"), "/prompts.txt"));

/// Predictor buffer sizes computed from the model header by build.rs.
pub mod buffers {
    include!(concat!(env!("OUT_DIR"), "/buffers.rs"));
}

/// Ends the program: under QEMU the status becomes QEMU's exit status; on a probe, a
/// breakpoint (success) or an undefined instruction (failure) stops `probe-rs run`.
pub fn exit(code: i32) -> ! {
    #[cfg(feature = "semihosting")]
    {
        use cortex_m_semihosting::debug;
        debug::exit(if code == 0 { debug::EXIT_SUCCESS } else { debug::EXIT_FAILURE });
    }
    loop {
        if code == 0 {
            cortex_m::asm::bkpt();
        } else {
            cortex_m::asm::udf();
        }
    }
}

#[cfg(feature = "semihosting")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    defmt::error!("panic: {}", defmt::Display2Format(info));
    exit(1)
}

#[cfg(feature = "semihosting")]
#[defmt::panic_handler]
fn defmt_panic() -> ! {
    exit(1)
}

/// Cycle counts from the DWT (Cortex-M3 and up; always 0 under QEMU, which does not model it).
#[derive(Debug)]
pub struct Cycles {
    #[cfg(not(armv6m))]
    _dwt_enabled: bool,
}

impl Cycles {
    /// Starts the cycle counter.
    pub fn start() -> Cycles {
        #[cfg(not(armv6m))]
        {
            let enabled = match cortex_m::Peripherals::take() {
                Some(mut cp) => {
                    cp.DCB.enable_trace();
                    cp.DWT.enable_cycle_counter();
                    true
                }
                None => false,
            };
            Cycles { _dwt_enabled: enabled }
        }
        #[cfg(armv6m)]
        Cycles {}
    }

    /// The current count (wrapping), or 0 without a counter.
    pub fn now(&self) -> u32 {
        #[cfg(not(armv6m))]
        {
            cortex_m::peripheral::DWT::cycle_count()
        }
        #[cfg(armv6m)]
        0
    }
}
