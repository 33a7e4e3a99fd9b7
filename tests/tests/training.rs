//! Training end to end through the trainer's public API: learning, exact resume, and every
//! bad input named in the spec.

use std::path::Path;
use trainer::Corpus;

mod common;
use common::write_toy_corpus;
use trainer::checkpoint::Checkpoint;
use trainer::config::Config;
use trainer::training::{Outcome, RunOptions, Silent, TrainError, train};

fn tiny(epochs: usize) -> Config {
    let mut c = Config::preset("tiny").unwrap();
    c.epochs = epochs;
    c
}

fn opts(out: &Path) -> RunOptions {
    let mut o = RunOptions::new(out);
    o.skip_test = true;
    o
}

#[test]
fn resumed_run_is_bit_identical_to_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    write_toy_corpus(tmp.path(), 300);
    let corpus = Corpus::load(tmp.path()).unwrap();
    let config = tiny(2);

    let straight = tmp.path().join("straight");
    assert_eq!(train(&config, &corpus, &opts(&straight), &mut Silent).unwrap(), Outcome::Finished);
    let reference = Checkpoint::load(&straight.join("last.ckpt")).unwrap();
    let iters =
        trainer::data::TrainBatches::new(corpus.train.len(), config.batch, config.time).iters_per_epoch() as u64;
    assert!(iters > 20, "the toy corpus gives {iters} iterations per epoch");

    // Interrupt mid-epoch, at an epoch boundary, and again mid-epoch, then finish.
    let resumed = tmp.path().join("resumed");
    for stop in [7, iters, iters + 5] {
        let mut o = opts(&resumed);
        o.resume = stop != 7;
        o.max_steps = Some(stop);
        assert_eq!(train(&config, &corpus, &o, &mut Silent).unwrap(), Outcome::Paused, "stop at {stop}");
        assert_eq!(Checkpoint::load(&resumed.join("last.ckpt")).unwrap().progress.step, stop);
    }
    let mut o = opts(&resumed);
    o.resume = true;
    assert_eq!(train(&config, &corpus, &o, &mut Silent).unwrap(), Outcome::Finished);
    let finished = Checkpoint::load(&resumed.join("last.ckpt")).unwrap();
    assert_eq!(finished.progress.step, reference.progress.step);
    let same_bits = finished.params.iter().zip(&reference.params).all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same_bits, "resumed weights differ from the uninterrupted run");
    assert_eq!(finished.progress.best_val_ppl, reference.progress.best_val_ppl);
    // One metrics line per epoch, no duplicates from the interruptions.
    let lines = std::fs::read_to_string(resumed.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 2);
}

#[test]
fn tiny_training_lowers_perplexity() {
    let tmp = tempfile::tempdir().unwrap();
    write_toy_corpus(tmp.path(), 400);
    let corpus = Corpus::load(tmp.path()).unwrap();
    let layout = trainer::model::Layout::new(trainer::model::Dims { vocab: corpus.vocab.len(), dim: 16, layers: 2 });
    let untrained = trainer::model::init_params(&layout, &mut lstm_core::Rng::new(1));
    let gemm = trainer::gemm::FastGemm::all_threads();
    let before = trainer::training::perplexity(&layout, &untrained, &corpus.valid, gemm).unwrap();
    let out = tmp.path().join("run");
    train(&tiny(5), &corpus, &opts(&out), &mut Silent).unwrap();
    let after = Checkpoint::load(&out.join("best.ckpt")).unwrap();
    let steps = Checkpoint::load(&out.join("last.ckpt")).unwrap().progress.step;
    let ppl = trainer::training::perplexity(&layout, &after.params, &corpus.valid, gemm).unwrap();
    // Untrained: about the vocabulary size. The grammar allows 5 choices at three of its four
    // positions, so a model that learned it is far below that.
    assert!(before > 0.8 * corpus.vocab.len() as f64, "untrained perplexity {before}");
    assert!(steps >= 300, "trained {steps} steps");
    assert!(ppl < 8.0, "perplexity {before:.1} → {ppl:.2} after {steps} steps");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    // Missing and empty data files name the file.
    let err = Corpus::load(&tmp.path().join("nowhere")).unwrap_err().to_string();
    assert!(err.contains("nowhere/ptb.train.txt"), "{err}");
    write_toy_corpus(tmp.path(), 100);
    std::fs::write(tmp.path().join("ptb.valid.txt"), "  \n").unwrap();
    let err = Corpus::load(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("ptb.valid.txt is empty"), "{err}");
    write_toy_corpus(tmp.path(), 100);
    let corpus = Corpus::load(tmp.path()).unwrap();

    // D ≠ H with tying.
    let mut untied = tiny(1);
    untied.hidden = 8;
    let err = train(&untied, &corpus, &opts(&tmp.path().join("u")), &mut Silent).unwrap_err().to_string();
    assert!(err.contains("D=16 must equal the hidden width H=8"), "{err}");

    // A paused run to play with.
    let out = tmp.path().join("run");
    let mut o = opts(&out);
    o.max_steps = Some(3);
    train(&tiny(1), &corpus, &o, &mut Silent).unwrap();
    let last = out.join("last.ckpt");
    let good = std::fs::read(&last).unwrap();

    // Starting afresh over it is refused (nothing lost); resuming nothing is refused.
    let err = train(&tiny(1), &corpus, &opts(&out), &mut Silent).unwrap_err();
    assert!(matches!(err, TrainError::WouldOverwrite { .. }), "{err}");
    let mut o = opts(&tmp.path().join("empty"));
    o.resume = true;
    assert!(matches!(train(&tiny(1), &corpus, &o, &mut Silent), Err(TrainError::NothingToResume { .. })));

    // A checkpoint whose configuration differs from the flags.
    let mut o = opts(&out);
    o.resume = true;
    let mut other = tiny(1);
    other.dropout = 0.5;
    let err = train(&other, &corpus, &o, &mut Silent).unwrap_err().to_string();
    assert!(err.contains("dropout: checkpoint has 0.2, requested 0.5"), "{err}");

    // Corrupt, truncated and foreign checkpoints.
    for (bytes, want) in [
        (good[..good.len() / 2].to_vec(), "truncated"),
        (
            {
                let mut b = good.clone();
                b[40] ^= 1;
                b
            },
            "CRC-32 mismatch",
        ),
        (b"\x89PNG\r\n\x1a\n....".to_vec(), "not a checkpoint"),
    ] {
        std::fs::write(&last, &bytes).unwrap();
        let err = train(&tiny(1), &corpus, &o, &mut Silent).unwrap_err().to_string();
        assert!(err.contains(want) && err.contains("last.ckpt"), "{err}");
    }
    std::fs::write(&last, &good).unwrap();

    // Divergence stops training and keeps the last good checkpoint intact: output biases of
    // ±3e38 make the cross-entropy overflow to infinity on the first step.
    let mut poisoned = Checkpoint::load(&last).unwrap();
    let layout = trainer::model::Layout::new(poisoned.dims());
    for (k, b) in poisoned.params[layout.out_bias.clone()].iter_mut().enumerate() {
        *b = if k == 0 { 3e38 } else { -3e38 };
    }
    poisoned.save(&last).unwrap();
    let before = std::fs::read(&last).unwrap();
    let err = train(&tiny(1), &corpus, &o, &mut Silent).unwrap_err();
    assert!(matches!(err, TrainError::NonFiniteLoss { .. }), "{err}");
    assert!(err.to_string().contains("still holds the last good state"), "{err}");
    assert_eq!(std::fs::read(&last).unwrap(), before, "last.ckpt was modified");

    // From the good checkpoint the run goes on.
    std::fs::write(&last, &good).unwrap();
    assert_eq!(train(&tiny(1), &corpus, &o, &mut Silent).unwrap(), Outcome::Finished);
}
