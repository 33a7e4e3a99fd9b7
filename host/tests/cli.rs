//! The command line reports bad input clearly and exits non-zero, never panicking.

use std::process::Command;

fn host(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_host"))
        .args(args)
        .output()
        .expect("host runs");
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
    let (ok, _, err) = host(&[
        "train",
        "--preset",
        "tiny",
        "--data",
        "/no/such/dir",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("error: cannot read /no/such/dir/ptb.train.txt"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn untied_dimensions_are_refused() {
    let (ok, _, err) = host(&["train", "--preset", "tiny", "--dim", "32", "--hidden", "16"]);
    assert!(!ok);
    assert!(
        err.contains("D=32 must equal the hidden width H=16"),
        "{err}"
    );
}

#[test]
fn eval_of_a_missing_or_foreign_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, _, err) = host(&["eval", "--checkpoint", "/no/such.ckpt"]);
    assert!(!ok && err.contains("/no/such.ckpt"), "{err}");
    let foreign = tmp.path().join("foreign.ckpt");
    std::fs::write(&foreign, b"GIF89a not a model at all").unwrap();
    let (ok, _, err) = host(&["eval", "--checkpoint", foreign.to_str().unwrap()]);
    assert!(
        !ok && err.contains("is not a checkpoint of this program"),
        "{err}"
    );
}

#[test]
fn unknown_preset_lists_the_choices() {
    let (ok, _, err) = host(&["train", "--preset", "gigantic"]);
    assert!(
        !ok && err.contains("unknown preset `gigantic`") && err.contains("embedded"),
        "{err}"
    );
}
