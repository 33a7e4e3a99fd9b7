//! Chooses the board's memory layout, embeds the exported model and the prompt list, and sizes
//! the predictor's RAM buffers from the model header.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let feature = |f: &str| std::env::var_os(format!("CARGO_FEATURE_{}", f.to_uppercase())).is_some();

    println!("cargo:rustc-check-cfg=cfg(armv6m)");
    if std::env::var("TARGET").unwrap_or_default().starts_with("thumbv6m") {
        println!("cargo:rustc-cfg=armv6m");
    }

    let boards = [("qemu", "mps2-an386.x"), ("netduino", "netduinoplus2.x"), ("nrf52840", "nrf52840.x")];
    let chosen: Vec<_> = boards.iter().filter(|(f, _)| feature(f)).collect();
    if chosen.len() != 1 {
        panic!(
            "choose exactly one board feature (qemu, netduino, nrf52840); got {}. Example: cargo build --release --no-default-features --features qemu",
            chosen.len()
        );
    }
    std::fs::copy(manifest.join("memory").join(chosen[0].1), out.join("memory.x")).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory");

    // The model, chosen at build time.
    println!("cargo:rerun-if-env-changed=FIRMWARE_MODEL");
    let model_path = std::env::var_os("FIRMWARE_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../models/embedded.lmq8"));
    println!("cargo:rerun-if-changed={}", model_path.display());
    let model = std::fs::read(&model_path).unwrap_or_else(|e| {
        panic!(
            "\n\nno model to embed at {} ({e}).\nExport one first, from the repository root:\n    cargo run --release -p host -- export --checkpoint runs/embedded/best.ckpt --out models/embedded.lmq8\nor point FIRMWARE_MODEL at an exported .lmq8 file.\n\n",
            model_path.display()
        )
    });
    std::fs::write(out.join("model.lmq8"), &model).unwrap();

    // RAM buffers sized exactly for this model. A file that does not validate still builds:
    // the firmware reports it at boot (and exits non-zero) instead of faulting.
    type P<'a> = lstm_core::Predictor<'a, Vec<f32>, Vec<i32>>;
    let (floats, ints) = match lstm_core::QuantModel::from_bytes(&model) {
        Ok(m) => (P::float_len(&m), P::int_len(&m)),
        Err(e) => {
            println!("cargo:warning={}: {e} (the firmware will refuse it at boot)", model_path.display());
            (1, 1)
        }
    };
    std::fs::write(
        out.join("buffers.rs"),
        format!("/// f32 storage of the predictor.\npub const FLOAT_LEN: usize = {floats};\n/// i32 storage of the predictor.\npub const INT_LEN: usize = {ints};\n"),
    )
    .unwrap();

    println!("cargo:rerun-if-env-changed=FIRMWARE_PROMPTS");
    let prompts_path =
        std::env::var_os("FIRMWARE_PROMPTS").map(PathBuf::from).unwrap_or_else(|| manifest.join("prompts.txt"));
    println!("cargo:rerun-if-changed={}", prompts_path.display());
    let prompts =
        std::fs::read_to_string(&prompts_path).unwrap_or_else(|e| panic!("prompts {}: {e}", prompts_path.display()));
    std::fs::write(out.join("prompts.txt"), prompts).unwrap();
}
