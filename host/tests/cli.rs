//! The command line reports bad input clearly and exits non-zero, never panicking.

use std::process::Command;

fn host(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_host")).args(args).output().expect("host runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_data_directory_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (ok, _, err) = host(&["train", "--preset", "tiny", "--data", "/no/such/dir", "--out", out.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("error: cannot read /no/such/dir/ptb.train.txt"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn untied_dimensions_are_refused() {
    let (ok, _, err) = host(&["train", "--preset", "tiny", "--dim", "32", "--hidden", "16"]);
    assert!(!ok);
    assert!(err.contains("D=32 must equal the hidden width H=16"), "{err}");
}

#[test]
fn eval_of_a_missing_or_foreign_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, _, err) = host(&["eval", "--checkpoint", "/no/such.ckpt"]);
    assert!(!ok && err.contains("/no/such.ckpt"), "{err}");
    let foreign = tmp.path().join("foreign.ckpt");
    std::fs::write(&foreign, b"GIF89a not a model at all").unwrap();
    let (ok, _, err) = host(&["eval", "--checkpoint", foreign.to_str().unwrap()]);
    assert!(!ok && err.contains("is not a checkpoint of this program"), "{err}");
}

#[test]
fn unknown_preset_lists_the_choices() {
    let (ok, _, err) = host(&["train", "--preset", "gigantic"]);
    assert!(!ok && err.contains("unknown preset `gigantic`") && err.contains("embedded"), "{err}");
}

/// Trains a tiny model on an inline corpus through the CLI; returns (dir, checkpoint path).
fn tiny_run() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let line = " the cat sees the dog \n a dog likes the cat \n the <unk> sells a house \n";
    for name in ["ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"] {
        std::fs::write(tmp.path().join(name), line.repeat(40)).unwrap();
    }
    let out = tmp.path().join("run");
    let (ok, _, err) = host(&[
        "train",
        "--preset",
        "tiny",
        "--data",
        tmp.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        "2",
    ]);
    assert!(ok, "{err}");
    for f in ["best.ckpt", "last.ckpt", "metrics.jsonl", "summary.json", "perplexity.png"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let ckpt = out.join("best.ckpt");
    (tmp, ckpt)
}

#[test]
fn export_predict_generate_and_eval() {
    let (tmp, ckpt) = tiny_run();
    let model = tmp.path().join("m.lmq8");
    let (c, m, d) = (ckpt.to_str().unwrap(), model.to_str().unwrap(), tmp.path().to_str().unwrap());
    let (ok, out, err) = host(&["export", "--checkpoint", c, "--out", m, "--budget-flash", "1000"]);
    assert!(!ok && err.contains("over the flash budget of 1000 bytes"), "{err}");
    assert!(out.contains("embedding") && out.contains("total"), "{out}");
    assert!(!model.exists(), "a model over budget is not written");
    let (ok, out, err) = host(&["export", "--checkpoint", c, "--out", m]);
    assert!(ok && model.exists(), "{err}");
    assert!(out.contains("vocabulary"), "{out}");

    let (ok, out, err) = host(&["predict", "--model", m, "--top", "3", "the cat zebra"]);
    assert!(ok, "{err}");
    assert!(err.contains("not in the vocabulary (read as <unk>): zebra"), "{err}");
    assert_eq!(out.lines().count(), 4, "{out}");

    let (ok, out, err) = host(&["generate", "--model", m, "--start", "the", "--words", "5", "--seed", "3"]);
    assert!(ok && out.split_whitespace().count() >= 2, "{out}{err}");
    let (ok, out, err) = host(&["generate", "--checkpoint", c, "--start", "a", "--words", "5"]);
    assert!(ok && !out.is_empty(), "{out}{err}");

    for source in [["--checkpoint", c], ["--model", m]] {
        let (ok, out, err) = host(&["eval", source[0], source[1], "--data", d, "--split", "test", "--json"]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let ppl = v["perplexity"].as_f64().unwrap();
        assert!(ppl > 1.0 && ppl < 20.0, "{out}");
    }

    // A damaged model file is refused with the file name and the reason.
    let mut bytes = std::fs::read(&model).unwrap();
    bytes.truncate(bytes.len() / 2);
    let broken = tmp.path().join("broken.lmq8");
    std::fs::write(&broken, bytes).unwrap();
    let (ok, _, err) = host(&["predict", "--model", broken.to_str().unwrap(), "the"]);
    assert!(!ok && err.contains("broken.lmq8: checksum mismatch"), "{err}");

    let sf = tmp.path().join("m.safetensors");
    let (ok, _, err) = host(&["export", "--checkpoint", c, "--format", "safetensors", "--out", sf.to_str().unwrap()]);
    assert!(ok && sf.exists() && tmp.path().join("vocab.txt").exists(), "{err}");
}

/// PNG signature, an IHDR with the expected size, and an IEND chunk at the end.
fn assert_png(path: &std::path::Path, width: u32, height: u32) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    assert_eq!(&b[12..16], b"IHDR");
    assert_eq!(u32::from_be_bytes(b[16..20].try_into().unwrap()), width);
    assert_eq!(u32::from_be_bytes(b[20..24].try_into().unwrap()), height);
    assert_eq!(&b[b.len() - 8..b.len() - 4], b"IEND");
}

#[test]
fn grad_demo_prints_the_series_and_draws_both_charts() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, out, err) = host(&["grad-demo", "--out", tmp.path().to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("largest singular value σ_max: Wh 1.6452, 0.5·Wh 0.8226"), "{out}");
    let rows: Vec<Vec<f64>> = out
        .lines()
        .filter(|l| l.trim_start().chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(|l| l.split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 20);
    assert!(rows.windows(2).skip(2).all(|w| w[1][0] > w[0][0]), "exploding column");
    assert!(rows.windows(2).all(|w| w[1][1] < w[0][1]), "vanishing column");
    assert!(rows.iter().all(|r| r[3] <= 5.0 + 1e-4), "clipped column");
    assert_png(&tmp.path().join("rnn_gradient_norm.png"), 900, 580);
    assert_png(&tmp.path().join("tanh_derivative.png"), 800, 480);
}

/// Ctrl-C (SIGINT) during training writes a checkpoint at the current iteration; resuming
/// ends with weights bit-identical to an uninterrupted run.
#[test]
fn interrupted_training_resumes_bit_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let line = " the cat sees the dog \n a dog likes the cat \n the <unk> sells a house \n mr. smith buys shares \n";
    for name in ["ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"] {
        std::fs::write(tmp.path().join(name), line.repeat(200)).unwrap();
    }
    let data = tmp.path().to_str().unwrap().to_string();
    let args = |out: &std::path::Path| -> Vec<String> {
        [
            "train",
            "--preset",
            "tiny",
            "--data",
            &data,
            "--dim",
            "48",
            "--batch",
            "8",
            "--time",
            "20",
            "--epochs",
            "1000",
            "--max-steps",
            "1500",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let reference = tmp.path().join("reference");
    let (ok, _, err) = host(&args(&reference).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");

    let run = tmp.path().join("interrupted");
    let child =
        Command::new(env!("CARGO_BIN_EXE_host")).args(args(&run)).stderr(std::process::Stdio::piped()).spawn().unwrap();
    // Wait for some progress, then interrupt.
    let log = run.join("train_log.jsonl");
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&log).map_or(0, |t| t.lines().count()) < 3 {
        assert!(start.elapsed().as_secs() < 60, "no training progress");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let kill = Command::new("sh").arg("-c").arg(format!("kill -INT {}", child.id())).status().unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("interrupted"), "the run finished before the signal arrived: {err}");
    let paused = trainer::Checkpoint::load(&run.join("last.ckpt")).unwrap();
    assert!(paused.progress.step > 0 && paused.progress.step < 1500, "stopped at {}", paused.progress.step);

    let mut resume = args(&run);
    resume.push("--resume".into());
    let (ok, _, err) = host(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");
    let a = trainer::Checkpoint::load(&reference.join("last.ckpt")).unwrap();
    let b = trainer::Checkpoint::load(&run.join("last.ckpt")).unwrap();
    assert_eq!(a.progress.step, 1500);
    assert_eq!(b.progress.step, 1500);
    assert!(a.params.iter().zip(&b.params).all(|(x, y)| x.to_bits() == y.to_bits()), "weights differ after resume");
}
