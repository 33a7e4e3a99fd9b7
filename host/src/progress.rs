//! Terminal progress: indicatif bars for training and evaluation.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
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

/// Training observer: one bar per epoch; evaluation lines printed above it. When stderr is not
/// a terminal (a log file, CI), a plain progress line every 30 seconds instead.
#[derive(Debug)]
pub struct TrainProgress {
    bar: Option<ProgressBar>,
    out: PathBuf,
    plain: bool,
    last_line: Instant,
    iters: usize,
    epoch_start: (Instant, usize),
}

/// Interval between plain-text progress lines.
const PLAIN_EVERY: Duration = Duration::from_secs(30);

impl TrainProgress {
    /// Reports for a run writing into `out`.
    pub fn new(out: &Path) -> TrainProgress {
        TrainProgress {
            bar: None,
            out: out.to_path_buf(),
            plain: !std::io::stderr().is_terminal(),
            last_line: Instant::now(),
            iters: 0,
            epoch_start: (Instant::now(), 0),
        }
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
        self.iters = iters;
        self.epoch_start = (Instant::now(), start_iter);
        let b = bar(iters as u64, format!("epoch {epoch}"));
        b.set_position(start_iter as u64);
        b.reset_eta();
        self.bar = Some(b);
    }

    fn step(&mut self, epoch: usize, iter: usize, train_ppl: f64, tokens_per_s: f64) {
        if self.plain && self.last_line.elapsed() >= PLAIN_EVERY {
            self.last_line = Instant::now();
            let (since, first) = self.epoch_start;
            let per_iter = since.elapsed().as_secs_f64() / (iter - first).max(1) as f64;
            let eta = per_iter * self.iters.saturating_sub(iter) as f64;
            eprintln!(
                "epoch {epoch} · iteration {iter}/{} · train ppl {train_ppl:.1} · {tokens_per_s:.0} tok/s · epoch ends in {eta:.0} s",
                self.iters
            );
        }
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
