//! Next-word prediction on the microcontroller: validates the embedded model, then for each
//! prompt logs the top-k next words and a greedy continuation.
//!
//! Log lines meant for machines start with a keyword (`top`, `next`, `memory`, `stack`) and
//! carry exact values (probabilities also as IEEE bits) so a host test can compare them with
//! `host predict --exact`.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use firmware::buffers::{FLOAT_LEN, INT_LEN};
use firmware::{Cycles, MODEL, PROMPTS, exit, measure};
use lstm_core::{Predictor, QuantModel};

/// Candidates logged per prompt.
const TOP_K: usize = 5;
/// Words of greedy continuation per prompt.
const CONTINUE: usize = 8;

#[entry]
fn main() -> ! {
    measure::paint_stack();
    let cycles = Cycles::start();
    defmt::info!("model: {=usize} bytes embedded in flash", MODEL.len());
    let model = match QuantModel::from_bytes(MODEL) {
        Ok(m) => m,
        Err(e) => {
            defmt::error!("invalid model: {}", defmt::Display2Format(&e));
            exit(2)
        }
    };
    defmt::info!("model: V={=usize} D=H={=usize} layers={=usize}", model.vocab(), model.dim(), model.layers());
    let unk = model.token("<unk>");
    let mut floats = [0.0f32; FLOAT_LEN];
    let mut ints = [0i32; INT_LEN];
    let mut predictor = match Predictor::new(model.clone(), &mut floats[..], &mut ints[..]) {
        Ok(p) => p,
        Err(e) => {
            defmt::error!("predictor: {}", defmt::Display2Format(&e));
            exit(3)
        }
    };
    let mut tokens_timed = 0u32;
    let mut cycles_total = 0u64;

    for (n, prompt) in PROMPTS.lines().map(str::trim).filter(|l| !l.is_empty()).enumerate() {
        predictor.reset();
        defmt::info!("prompt {=usize} \"{=str}\"", n, prompt);
        for word in prompt.split_whitespace() {
            let id = match model.token(word).or(unk) {
                Some(id) => id,
                None => {
                    defmt::warn!("skipping unknown word \"{=str}\" (no <unk> in the vocabulary)", word);
                    continue;
                }
            };
            let t0 = cycles.now();
            if let Err(e) = predictor.feed(id) {
                defmt::error!("feed: {}", defmt::Display2Format(&e));
                exit(4)
            }
            cycles_total += u64::from(cycles.now().wrapping_sub(t0));
            tokens_timed += 1;
        }
        let t0 = cycles.now();
        let top = match predictor.top_k::<TOP_K>() {
            Ok(t) => t,
            Err(e) => {
                defmt::error!("top-k: {}", defmt::Display2Format(&e));
                exit(5)
            }
        };
        let top_cycles = cycles.now().wrapping_sub(t0);
        for (rank, c) in top.iter().enumerate() {
            defmt::info!(
                "top {=usize} {=usize} {=u32} {=str} {=u32:08x} {=f32}",
                n,
                rank,
                c.id,
                model.word(c.id).unwrap_or("?"),
                c.prob.to_bits(),
                c.prob
            );
        }
        defmt::info!("top-k over {=usize} words: {=u32} cycles", model.vocab(), top_cycles);
        // Greedy continuation: feed the most probable word, repeat.
        let mut next = top.first().map(|c| c.id);
        for step in 0..CONTINUE {
            let Some(id) = next else { break };
            defmt::info!("next {=usize} {=usize} {=u32} {=str}", n, step, id, model.word(id).unwrap_or("?"));
            // One predicted token, as the instruction-count benchmark measures it: the LSTM
            // layers for the fed word, then the whole output layer for the next one.
            measure::bench_start();
            let fed = predictor.feed(id);
            next = predictor.top_k::<1>().ok().and_then(|t| t.first().map(|c| c.id));
            measure::bench_stop();
            if fed.is_err() {
                break;
            }
        }
    }

    let mem = measure::memory_use();
    let stack = measure::stack_high_water();
    defmt::info!(
        "memory flash={=u32} data={=u32} bss={=u32} stack={=u32} ram_total={=u32}",
        mem.flash,
        mem.data,
        mem.bss,
        stack,
        mem.data + mem.bss + stack
    );
    if tokens_timed > 0 {
        defmt::info!(
            "cycles per fed token: {=u64} ({=u32} tokens; 0 means no cycle counter, as under QEMU)",
            cycles_total / u64::from(tokens_timed),
            tokens_timed
        );
    }
    defmt::info!("done");
    exit(0)
}
