//! Terminal progress: indicatif bars for training and evaluation.

use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use trainer::training::{EvalRecord, Observer};

/// A bar with position, ETA and a message.
pub fn bar(len: u64, prefix: String) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} (eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    b.set_prefix(prefix);
    b
}

/// A spinner for short waits.
pub fn spinner(msg: String) -> ProgressBar {
    let s = ProgressBar::new_spinner();
    s.set_message(msg);
    s.enable_steady_tick(std::time::Duration::from_millis(120));
    s
}

/// Training observer: one bar per epoch; evaluation lines printed above it.
#[derive(Debug)]
pub struct TrainProgress {
    bar: Option<ProgressBar>,
    out: PathBuf,
}

impl TrainProgress {
    /// Reports for a run writing into `out`.
    pub fn new(out: &Path) -> TrainProgress {
        TrainProgress { bar: None, out: out.to_path_buf() }
    }

    /// Clears the bar.
    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Observer for TrainProgress {
    fn epoch_start(&mut self, epoch: usize, iters: usize, start_iter: usize) {
        self.finish();
        let b = bar(iters as u64, format!("epoch {epoch}"));
        b.set_position(start_iter as u64);
        b.reset_eta();
        self.bar = Some(b);
    }

    fn step(&mut self, _epoch: usize, iter: usize, train_ppl: f64, tokens_per_s: f64) {
        if let Some(b) = &self.bar {
            b.set_position(iter as u64);
            b.set_message(format!("train ppl {train_ppl:.1} · {tokens_per_s:.0} tok/s"));
        }
    }

    fn evaluated(&mut self, r: &EvalRecord) {
        let line = format!(
            "epoch {:>3} · step {:>7} · lr {:<8} · train ppl {:>8.2} · val ppl {:>8.2}{} · {:.0} tok/s · {:.0} s",
            r.epoch,
            r.step,
            r.lr,
            r.train_ppl,
            r.val_ppl,
            if r.best { " (best)" } else { "" },
            r.tokens_per_s,
            r.elapsed_s
        );
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
        if let Err(e) = crate::plot::perplexity_chart(&self.out) {
            self.message(&format!("warning: could not draw the perplexity chart: {e}"));
        }
    }

    fn message(&mut self, text: &str) {
        match &self.bar {
            Some(b) => b.println(text),
            None => eprintln!("{text}"),
        }
    }
}
