//! The firmware under QEMU: a model exported here, embedded at build time, gives top-k words
//! and probabilities bit-identical to `host predict` (also with every logit positive); a
//! damaged model is refused at boot; the bundled `embedded` model fits the netduinoplus2's
//! 1 MiB of flash with little RAM.
//!
//! Needs `qemu-system-arm`, `defmt-print` and the `thumbv7em-none-eabihf` target
//! (`scripts/test.sh` installs them).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

fn tool(name: &str) -> PathBuf {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|c| c.join("bin").join(name));
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    on_path.or(cargo_bin.filter(|p| p.is_file())).unwrap_or_else(|| {
        panic!("`{name}` is needed to run the firmware tests: run `bash scripts/test.sh`, which installs it")
    })
}

/// Builds the firmware for `feature` with `model` and `prompts`; returns the ELF.
fn build_firmware(feature: &str, model: &Path, prompts: &Path) -> PathBuf {
    let dir = repo().join("firmware");
    let out = Command::new(env!("CARGO"))
        .current_dir(&dir)
        .args(["build", "--release", "--no-default-features", "--features", feature])
        .env("FIRMWARE_MODEL", model)
        .env("FIRMWARE_PROMPTS", prompts)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "firmware build failed:\n{}", String::from_utf8_lossy(&out.stderr));
    dir.join("target/thumbv7em-none-eabihf/release/predict")
}

/// Runs `elf` on a QEMU `machine`, decodes the defmt log; returns (exit code, log lines).
fn run_qemu(machine: &str, elf: &Path) -> (i32, Vec<String>) {
    let mut args = vec!["-machine", machine, "-nographic", "-semihosting-config", "enable=on,target=native"];
    if machine == "mps2-an386" {
        args.extend(["-cpu", "cortex-m4"]);
    }
    let mut qemu = Command::new(tool("qemu-system-arm"))
        .args(&args)
        .arg("-kernel")
        .arg(elf)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("qemu-system-arm starts");
    let mut frames = Vec::new();
    let mut stdout = qemu.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        stdout.read_to_end(&mut frames).unwrap();
        frames
    });
    // Without semihosting exit QEMU would run forever: bound it.
    let start = Instant::now();
    let status = loop {
        if let Some(s) = qemu.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(120) {
            qemu.kill().unwrap();
            panic!("QEMU {machine} did not exit within 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let frames = reader.join().unwrap();
    let mut decoder = Command::new(tool("defmt-print"))
        .arg("-e")
        .arg(elf)
        .args(["--log-format", "{L} {s}"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("defmt-print starts");
    decoder.stdin.take().unwrap().write_all(&frames).unwrap();
    let out = decoder.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (status.code().unwrap_or(-1), text.lines().map(str::to_string).collect())
}

/// The `top …` / `next …` lines (without the level).
fn machine_lines(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.split_once(' ').map(|(_, msg)| msg.trim().to_string()))
        .filter(|m| m.starts_with("top ") || m.starts_with("next "))
        .collect()
}

fn memory_line(lines: &[String]) -> std::collections::HashMap<String, u64> {
    let line = lines.iter().find(|l| l.contains("memory flash=")).expect("memory line logged");
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect()
}

/// Builds the QEMU firmware around `model` and `prompts`, runs it on mps2-an386 and requires
/// its top-5 lines to be `host predict --exact --top 5`'s, bit for bit (`what`: the model, for
/// the failure message).
fn assert_device_matches_host(model: &Path, prompts: &Path, what: &str) {
    let elf = build_firmware("qemu", model, prompts);
    let (code, lines) = run_qemu("mps2-an386", &elf);
    assert_eq!(code, 0, "firmware failed on {what}:\n{}", lines.join("\n"));
    assert!(lines.iter().any(|l| l.ends_with("done")), "{what}: {lines:#?}");
    let device = machine_lines(&lines);
    let host = Command::new(env!("CARGO"))
        .current_dir(repo())
        .args(["run", "--release", "-q", "-p", "host", "--", "predict", "--exact", "--top", "5", "--model"])
        .arg(model)
        .stdin(std::fs::File::open(prompts).unwrap())
        .output()
        .unwrap();
    assert!(host.status.success(), "{}", String::from_utf8_lossy(&host.stderr));
    let host_lines: Vec<String> = String::from_utf8_lossy(&host.stdout).lines().map(str::to_string).collect();
    assert_eq!(device.len(), 4 * (5 + 8), "{what}: {device:#?}");
    assert_eq!(device, host_lines, "firmware and host predict differ on {what}");
}

#[test]
fn firmware_under_qemu() {
    let tmp = tempfile::tempdir().unwrap();
    // A small trained model, exported.
    common::write_toy_corpus(tmp.path(), 400);
    let corpus = trainer::Corpus::load(tmp.path()).unwrap();
    let mut config = trainer::Config::preset("tiny").unwrap();
    config.epochs = 3;
    let mut opts = trainer::RunOptions::new(tmp.path().join("run"));
    opts.skip_test = true;
    trainer::train(&config, &corpus, &opts, &mut trainer::training::Silent).unwrap();
    let ckpt = trainer::Checkpoint::load(&tmp.path().join("run/best.ckpt")).unwrap();
    let (bytes, _) = trainer::export::export_int8(&ckpt).unwrap();
    let model = tmp.path().join("toy.lmq8");
    std::fs::write(&model, &bytes).unwrap();
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(&prompts, "the cat\na dog sells\nmr. smith likes the\nthe zebra\n").unwrap();

    // Firmware on mps2-an386 vs host predict.
    assert_device_matches_host(&model, &prompts, "the trained toy model");

    // The same model with every logit positive: its output bias raised by 100 nats (25,600
    // integer steps; softmax does not change). The device's top-1 / log-probability scan starts
    // from a maximum of i32::MIN, and a scan that compared `max − y` by its sign (overflowing
    // for any positive `y`) summed such logits instead of comparing them: its words and
    // probabilities then differed from the host's. A trained toy model may or may not have
    // positive logits before its first negative one; this one is all positive.
    let mut shifted = ckpt.clone();
    let out_bias = trainer::model::Layout::new(shifted.dims()).out_bias;
    shifted.params[out_bias].iter_mut().for_each(|b| *b += 100.0);
    let (shifted_bytes, _) = trainer::export::export_int8(&shifted).unwrap();
    let positive = tmp.path().join("positive.lmq8");
    std::fs::write(&positive, &shifted_bytes).unwrap();
    assert_device_matches_host(&positive, &prompts, "a model whose logits are all positive");

    // A damaged model builds but is refused at boot with an error and a non-zero exit.
    let mut damaged = bytes.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x40;
    let bad = tmp.path().join("bad.lmq8");
    std::fs::write(&bad, &damaged).unwrap();
    let elf = build_firmware("qemu", &bad, &prompts);
    let (code, lines) = run_qemu("mps2-an386", &elf);
    assert_ne!(code, 0);
    assert!(
        lines.iter().any(|l| l.starts_with("ERROR") && l.contains("invalid model: checksum mismatch")),
        "{lines:#?}"
    );

    // The bundled embedded-preset model on a 1 MiB / 128 KiB STM32F405.
    let embedded = repo().join("models/embedded.lmq8");
    let elf = build_firmware("netduino", &embedded, &repo().join("firmware/prompts.txt"));
    let (code, lines) = run_qemu("netduinoplus2", &elf);
    assert_eq!(code, 0, "{}", lines.join("\n"));
    let mem = memory_line(&lines);
    assert!(mem["flash"] <= 1024 * 1024, "{mem:?}");
    assert!(mem["ram_total"] <= 16 * 1024, "RAM {mem:?}");
    assert!(machine_lines(&lines).iter().filter(|l| l.starts_with("top ")).count() >= 5);
}
