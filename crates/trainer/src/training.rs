//! The truncated-BPTT training loop, evaluation, and the files a run leaves behind.
//!
//! Output directory: `last.ckpt` (every epoch end, every few minutes, and on stop),
//! `best.ckpt` (best validation perplexity), `metrics.jsonl` (one line per evaluation),
//! `train_log.jsonl` (running training perplexity, for plots), `summary.json` (at the end).

use crate::checkpoint::{Checkpoint, CheckpointError, Progress, write_atomic};
use crate::config::{Config, ConfigError};
use crate::data::{Corpus, EvalBatches, TrainBatches};
use crate::gemm::FastGemm;
use crate::model::{Dims, Layout, Workspace, init_params};
use crate::update::clip_and_step;
use lstm_core::Rng;
use lstm_core::dropout::Dropout;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Evaluation streams and steps (the reference evaluation: batch 10, time 35).
pub const EVAL_BATCH: usize = 10;
/// See [`EVAL_BATCH`].
pub const EVAL_TIME: usize = 35;
/// Training iterations between two `train_log.jsonl` points.
pub const LOG_EVERY: u64 = 20;

/// Why training stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Checkpoint problem.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Output file problem.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A resumed run asked for a different configuration.
    #[error("{path} was trained with a different configuration:\n  {}\nresume with the same flags, or train into another --out directory", .differences.join("\n  "))]
    ConfigMismatch {
        /// Checkpoint.
        path: PathBuf,
        /// Field-by-field differences.
        differences: Vec<String>,
    },
    /// The checkpoint's vocabulary is not this corpus's.
    #[error("{path} was trained on a different vocabulary ({ckpt} words) than the data given ({data} words)")]
    VocabMismatch {
        /// Checkpoint.
        path: PathBuf,
        /// Words in the checkpoint.
        ckpt: usize,
        /// Words in the data.
        data: usize,
    },
    /// Refusing to overwrite an earlier run.
    #[error("{path} already exists: pass --resume to continue that run, or choose another --out directory")]
    WouldOverwrite {
        /// Existing checkpoint.
        path: PathBuf,
    },
    /// `--resume` with nothing to resume.
    #[error("--resume: {path} does not exist, there is no run to continue")]
    NothingToResume {
        /// Missing checkpoint.
        path: PathBuf,
    },
    /// Loss diverged.
    #[error(
        "training loss became {loss} at step {step} (epoch {epoch}); stopped. {last} still holds the last good state: resume with a lower --lr or --max-grad"
    )]
    NonFiniteLoss {
        /// Loss value.
        loss: f32,
        /// Global step.
        step: u64,
        /// Epoch (1-based).
        epoch: usize,
        /// The intact checkpoint.
        last: PathBuf,
    },
    /// A numerical-core shape error (a bug, or a corrupt checkpoint state).
    #[error("internal shape error: {0}")]
    Shape(#[from] lstm_core::Error),
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalRecord {
    /// 1-based epoch just finished.
    pub epoch: usize,
    /// Global iteration count.
    pub step: u64,
    /// Learning rate used during that epoch.
    pub lr: f32,
    /// Training perplexity over the epoch (with dropout).
    pub train_ppl: f64,
    /// Validation perplexity.
    pub val_ppl: f64,
    /// Training tokens per second during the epoch.
    pub tokens_per_s: f64,
    /// Training wall time so far.
    pub elapsed_s: f64,
    /// Whether this was the best so far (saved to best.ckpt).
    pub best: bool,
}

/// One line of `train_log.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainPoint {
    /// Global iteration.
    pub step: u64,
    /// Fractional epoch.
    pub epoch: f64,
    /// Perplexity over the last [`LOG_EVERY`] iterations.
    pub train_ppl: f64,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Configuration.
    pub config: Config,
    /// Number of parameters (the tied matrix counted once).
    pub parameters: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Epochs completed.
    pub epochs_completed: usize,
    /// Best validation perplexity.
    pub best_val_ppl: Option<f64>,
    /// Test perplexity of the best checkpoint.
    pub test_ppl: Option<f64>,
    /// Training wall time, seconds.
    pub wall_time_s: f64,
    /// Mean wall time per completed epoch, seconds.
    pub seconds_per_epoch: Option<f64>,
}

/// Progress reports for a user interface.
pub trait Observer {
    /// A new epoch starts (1-based), `iters` iterations long, resuming at `start_iter`.
    fn epoch_start(&mut self, _epoch: usize, _iters: usize, _start_iter: usize) {}
    /// An iteration finished.
    fn step(&mut self, _epoch: usize, _iter: usize, _train_ppl: f64, _tokens_per_s: f64) {}
    /// An epoch's evaluation finished.
    fn evaluated(&mut self, _record: &EvalRecord) {}
    /// A line worth telling the user.
    fn message(&mut self, _text: &str) {}
}

/// An observer that reports nothing.
#[derive(Debug, Default)]
pub struct Silent;
impl Observer for Silent {}

/// How to run (not part of the model's identity).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Output directory.
    pub out_dir: PathBuf,
    /// Continue from `out_dir/last.ckpt`.
    pub resume: bool,
    /// Stop (with a checkpoint) after this many iterations in total.
    pub max_steps: Option<u64>,
    /// Wall time between mid-epoch checkpoints.
    pub checkpoint_every: Duration,
    /// Skip the final test evaluation (tests use this to stay fast).
    pub skip_test: bool,
    /// Set from elsewhere (a Ctrl-C handler) to stop after the current iteration with a
    /// checkpoint, exactly as `max_steps` would.
    pub stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl RunOptions {
    /// Defaults: checkpoint every 5 minutes, evaluate the test split at the end.
    pub fn new(out_dir: impl Into<PathBuf>) -> RunOptions {
        RunOptions {
            out_dir: out_dir.into(),
            resume: false,
            max_steps: None,
            checkpoint_every: Duration::from_secs(300),
            skip_test: false,
            stop: Default::default(),
        }
    }
}

/// How a call to [`train`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every epoch ran; `summary.json` is written.
    Finished,
    /// `--max-steps` reached; `last.ckpt` holds the state to resume from.
    Paused,
}

/// Perplexity of `params` on `tokens`, computed exactly like validation during training:
/// [`EVAL_BATCH`] streams, [`EVAL_TIME`] steps per call, state carried, no dropout, averaged
/// over every predicted position.
pub fn perplexity(layout: &Layout, params: &[f32], tokens: &[u32], gemm: FastGemm) -> Result<f64, lstm_core::Error> {
    perplexity_with(layout, params, tokens, gemm, |_, _| {})
}

/// [`perplexity`] with a callback `(done, total)` after each call.
pub fn perplexity_with(
    layout: &Layout,
    params: &[f32],
    tokens: &[u32],
    gemm: FastGemm,
    mut progress: impl FnMut(usize, usize),
) -> Result<f64, lstm_core::Error> {
    let batches = EvalBatches::new(tokens.len(), EVAL_BATCH, EVAL_TIME);
    let mut ws = Workspace::new(layout, EVAL_BATCH, EVAL_TIME, gemm);
    let rows = EVAL_BATCH * EVAL_TIME;
    let (mut ids, mut targets) = (vec![0u32; rows], vec![0u32; rows]);
    let mut total = 0.0f64;
    let iters = batches.iters();
    let mut eval = ws.evaluation(params);
    for it in 0..iters {
        batches.fill(tokens, it, &mut ids, &mut targets);
        total += eval.step(&ids, &targets)?;
        progress(it + 1, iters);
    }
    Ok((total / (iters * rows).max(1) as f64).exp())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}

fn append_json(path: &Path, value: &impl Serialize) -> Result<(), TrainError> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io_err(path))?;
    let line = serde_json::to_string(value).expect("plain data serialises");
    writeln!(f, "{line}").map_err(io_err(path))
}

/// Keeps only the lines of a JSONL log whose `step` is at most `step` (a resumed run rewrites
/// what happened after its checkpoint).
fn truncate_log(path: &Path, step: u64) -> Result<(), TrainError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(serde_json::Value::as_u64))
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes()).map_err(TrainError::from)
}

fn stop_message(interrupted: bool, step: u64, last: &Path) -> String {
    let why = if interrupted { "interrupted" } else { "--max-steps" };
    format!("stopped at step {step} ({why}); {} saved, continue with --resume", last.display())
}

/// Number of parameters of a model.
pub fn parameter_count(dims: Dims) -> usize {
    Layout::new(dims).total
}

/// Trains (or resumes) a run described by `config` on `corpus`, reporting to `observer`.
pub fn train(
    config: &Config,
    corpus: &Corpus,
    opts: &RunOptions,
    observer: &mut dyn Observer,
) -> Result<Outcome, TrainError> {
    config.validate()?;
    let out = &opts.out_dir;
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let last_path = out.join("last.ckpt");
    let best_path = out.join("best.ckpt");
    let metrics_path = out.join("metrics.jsonl");
    let log_path = out.join("train_log.jsonl");
    let dims = Dims { vocab: corpus.vocab.len(), dim: config.dim, layers: config.layers };
    let layout = Layout::new(dims);
    let gemm = FastGemm::all_threads();

    let mut ckpt = if opts.resume {
        if !last_path.exists() {
            return Err(TrainError::NothingToResume { path: last_path });
        }
        let mut c = Checkpoint::load(&last_path)?;
        let differences = c.config.differences(config);
        if !differences.is_empty() {
            return Err(TrainError::ConfigMismatch { path: last_path, differences });
        }
        if c.vocab != corpus.vocab.words() {
            return Err(TrainError::VocabMismatch { path: last_path, ckpt: c.vocab.len(), data: corpus.vocab.len() });
        }
        c.config.epochs = config.epochs;
        if c.config.lr != config.lr {
            observer.message(&format!("learning rate set to {} (was {})", config.lr, c.progress.lr));
            c.progress.lr = config.lr;
            c.config.lr = config.lr;
        }
        c.config.max_grad = config.max_grad;
        truncate_log(&metrics_path, c.progress.step)?;
        truncate_log(&log_path, c.progress.step)?;
        observer.message(&format!(
            "resuming {} at epoch {}, iteration {} (step {})",
            last_path.display(),
            c.progress.epoch + 1,
            c.progress.iter_in_epoch,
            c.progress.step
        ));
        c
    } else {
        if last_path.exists() {
            return Err(TrainError::WouldOverwrite { path: last_path });
        }
        for p in [&metrics_path, &log_path, &best_path, &out.join("summary.json")] {
            let _ = std::fs::remove_file(p);
        }
        let mut rng = Rng::new(config.seed);
        let params = init_params(&layout, &mut rng);
        Checkpoint {
            config: config.clone(),
            vocab: corpus.vocab.words().to_vec(),
            params,
            progress: Progress {
                epoch: 0,
                iter_in_epoch: 0,
                step: 0,
                lr: config.lr,
                best_val_ppl: None,
                rng_state: rng.state(),
                layer_state: Vec::new(),
                epoch_loss_sum: 0.0,
                epoch_loss_count: 0,
                elapsed_s: 0.0,
                finished: false,
            },
        }
    };

    let batches = TrainBatches::new(corpus.train.len(), config.batch, config.time);
    let iters = batches.iters_per_epoch();
    let rows = config.batch * config.time;
    let mut ws = Workspace::new(&layout, config.batch, config.time, gemm);
    let (mut ids, mut targets) = (vec![0u32; rows], vec![0u32; rows]);
    let dropout = Dropout { p: config.dropout };
    let mut rng = Rng::from_state(ckpt.progress.rng_state);
    let session_start = Instant::now();
    let elapsed_before = ckpt.progress.elapsed_s;
    let mut last_save = Instant::now();

    while ckpt.progress.epoch < config.epochs {
        let epoch = ckpt.progress.epoch + 1;
        let start_iter = ckpt.progress.iter_in_epoch;
        if start_iter == 0 || ckpt.progress.layer_state.is_empty() {
            ws.reset_state();
        } else {
            ws.set_state(&ckpt.progress.layer_state)?;
        }
        observer.epoch_start(epoch, iters, start_iter);
        let epoch_clock = Instant::now();
        let (mut window_loss, mut window_n) = (0.0f64, 0u64);
        for it in start_iter..iters {
            batches.fill(&corpus.train, it, &mut ids, &mut targets);
            let loss = ws.train_step(&ckpt.params, &ids, &targets, dropout, &mut rng)?;
            if !loss.is_finite() {
                return Err(TrainError::NonFiniteLoss { loss, step: ckpt.progress.step + 1, epoch, last: last_path });
            }
            let update = clip_and_step(&mut ckpt.params, &ws.grads, config.max_grad, ckpt.progress.lr);
            if !update.finite {
                return Err(TrainError::NonFiniteLoss {
                    loss: f32::INFINITY,
                    step: ckpt.progress.step + 1,
                    epoch,
                    last: last_path,
                });
            }
            let p = &mut ckpt.progress;
            p.step += 1;
            p.iter_in_epoch = it + 1;
            p.epoch_loss_sum += f64::from(loss);
            p.epoch_loss_count += 1;
            window_loss += f64::from(loss);
            window_n += 1;
            let done = (it + 1 - start_iter) as f64;
            let tokens_per_s = done * rows as f64 / epoch_clock.elapsed().as_secs_f64().max(1e-9);
            observer.step(epoch, it + 1, (p.epoch_loss_sum / p.epoch_loss_count as f64).exp(), tokens_per_s);
            if p.step % LOG_EVERY == 0 {
                let point = TrainPoint {
                    step: p.step,
                    epoch: ckpt.progress.epoch as f64 + (it + 1) as f64 / iters as f64,
                    train_ppl: (window_loss / window_n as f64).exp(),
                };
                append_json(&log_path, &point)?;
                (window_loss, window_n) = (0.0, 0);
            }
            let interrupted = opts.stop.load(std::sync::atomic::Ordering::Relaxed);
            let stop = interrupted || opts.max_steps.is_some_and(|m| ckpt.progress.step >= m);
            let periodic = last_save.elapsed() >= opts.checkpoint_every;
            if (stop || periodic) && it + 1 < iters {
                ckpt.progress.rng_state = rng.state();
                ckpt.progress.layer_state = ws.state();
                ckpt.progress.elapsed_s = elapsed_before + session_start.elapsed().as_secs_f64();
                ckpt.save(&last_path)?;
                last_save = Instant::now();
                if stop {
                    observer.message(&stop_message(interrupted, ckpt.progress.step, &last_path));
                    return Ok(Outcome::Paused);
                }
            }
        }
        // End of epoch: evaluate, adapt the learning rate, checkpoint.
        let epoch_secs = epoch_clock.elapsed().as_secs_f64();
        let val_ppl = perplexity(&layout, &ckpt.params, &corpus.valid, gemm)?;
        let p = &mut ckpt.progress;
        let train_ppl = (p.epoch_loss_sum / p.epoch_loss_count.max(1) as f64).exp();
        let improved = p.best_val_ppl.is_none_or(|b| val_ppl < b);
        let record = EvalRecord {
            epoch,
            step: p.step,
            lr: p.lr,
            train_ppl,
            val_ppl,
            tokens_per_s: (iters - start_iter) as f64 * rows as f64 / epoch_secs.max(1e-9),
            elapsed_s: elapsed_before + session_start.elapsed().as_secs_f64(),
            best: improved,
        };
        if improved {
            p.best_val_ppl = Some(val_ppl);
        } else {
            p.lr /= 4.0;
            observer.message(&format!("validation perplexity did not improve: learning rate → {}", p.lr));
        }
        p.epoch += 1;
        p.iter_in_epoch = 0;
        p.epoch_loss_sum = 0.0;
        p.epoch_loss_count = 0;
        p.layer_state = Vec::new();
        p.rng_state = rng.state();
        p.elapsed_s = record.elapsed_s;
        p.finished = p.epoch >= config.epochs;
        if improved {
            ckpt.save(&best_path)?;
        }
        ckpt.save(&last_path)?;
        last_save = Instant::now();
        append_json(&metrics_path, &record)?;
        observer.evaluated(&record);
        let interrupted = opts.stop.load(std::sync::atomic::Ordering::Relaxed);
        if (interrupted || opts.max_steps.is_some_and(|m| ckpt.progress.step >= m))
            && ckpt.progress.epoch < config.epochs
        {
            observer.message(&stop_message(interrupted, ckpt.progress.step, &last_path));
            return Ok(Outcome::Paused);
        }
    }

    let test_ppl = if opts.skip_test || !best_path.exists() {
        None
    } else {
        let best = Checkpoint::load(&best_path)?;
        observer.message("evaluating the best checkpoint on the test split");
        Some(perplexity(&layout, &best.params, &corpus.test, gemm)?)
    };
    let summary = Summary {
        config: ckpt.config.clone(),
        parameters: layout.total,
        vocab: dims.vocab,
        epochs_completed: ckpt.progress.epoch,
        best_val_ppl: ckpt.progress.best_val_ppl,
        test_ppl,
        wall_time_s: ckpt.progress.elapsed_s,
        seconds_per_epoch: (ckpt.progress.epoch > 0).then(|| ckpt.progress.elapsed_s / ckpt.progress.epoch as f64),
    };
    let summary_path = out.join("summary.json");
    let json = serde_json::to_string_pretty(&summary).expect("plain data serialises");
    write_atomic(&summary_path, json.as_bytes())?;
    Ok(Outcome::Finished)
}
