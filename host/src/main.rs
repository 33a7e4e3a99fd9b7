//! `host`: the command-line program. Parsing and presentation only; the work is in `trainer`
//! and `lstm-core`.

/// `println!` that returns an error instead of panicking when stdout is closed (e.g. piped
/// into `head`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err(crate::stdout_error)
    }};
}

mod bench;
mod grad_demo;
mod infer;
mod plot;
mod progress;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use trainer::config::Config;
use trainer::data::Split;
use trainer::gemm::FastGemm;
use trainer::model::Layout;
use trainer::training::{Outcome, RunOptions, perplexity_with};
use trainer::{Checkpoint, Corpus};

#[derive(Parser, Debug)]
#[command(name = "host", version, about = "Train a word-level LSTM language model and run it anywhere")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a model on Penn Treebank (default: the `embedded` preset on data/ptb).
    Train(TrainArgs),
    /// Perplexity of a checkpoint on a split, computed like validation during training.
    Eval(EvalArgs),
    /// Export a checkpoint: int8 model file (default) or f32 safetensors.
    Export(infer::ExportArgs),
    /// Top-k next words after a prompt, with the int8 model.
    Predict(infer::PredictArgs),
    /// Sample a continuation.
    Generate(infer::GenerateArgs),
    /// Show why plain RNN gradients vanish or explode, and how clipping and the LSTM help.
    GradDemo(grad_demo::GradDemoArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(clap::Args, Debug)]
struct TrainArgs {
    /// Preset: embedded, small, book, tiny.
    #[arg(long, default_value = "embedded")]
    preset: String,
    /// Directory holding ptb.{train,valid,test}.txt.
    #[arg(long, default_value = "data/ptb")]
    data: PathBuf,
    /// Output directory [default: runs/PRESET].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Number of epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Stop after this many iterations in total (resumable).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Random seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Worker threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Embedding width D.
    #[arg(long)]
    dim: Option<usize>,
    /// Hidden width H (must equal D).
    #[arg(long)]
    hidden: Option<usize>,
    /// Dropout probability.
    #[arg(long)]
    dropout: Option<f32>,
    /// Parallel streams.
    #[arg(long)]
    batch: Option<usize>,
    /// BPTT steps.
    #[arg(long)]
    time: Option<usize>,
    /// Initial learning rate.
    #[arg(long)]
    lr: Option<f32>,
    /// Gradient-norm clip.
    #[arg(long)]
    max_grad: Option<f32>,
    /// Minutes between mid-epoch checkpoints.
    #[arg(long, default_value_t = 5.0)]
    checkpoint_minutes: f64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SplitArg {
    Train,
    Valid,
    Test,
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["model", "checkpoint"])))]
struct EvalArgs {
    /// f32 checkpoint written by `host train`.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Int8 model written by `host export` (evaluated through the quantized predictor).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Which split.
    #[arg(long, value_enum, default_value = "valid")]
    split: SplitArg,
    /// Directory holding ptb.{train,valid,test}.txt.
    #[arg(long, default_value = "data/ptb")]
    data: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Worker threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
}

fn set_threads(threads: Option<usize>) -> Result<(), String> {
    if let Some(n) = threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .map_err(|e| format!("cannot start {n} threads: {e}"))?;
    }
    Ok(())
}

fn load_corpus(dir: &std::path::Path) -> Result<Corpus, String> {
    let spinner = progress::spinner(format!("loading {}", dir.display()));
    let corpus = Corpus::load(dir).map_err(|e| e.to_string());
    spinner.finish_and_clear();
    corpus
}

fn train(args: TrainArgs) -> Result<(), String> {
    set_threads(args.threads)?;
    let mut config = Config::preset(&args.preset).map_err(|e| e.to_string())?;
    macro_rules! override_field {
        ($($f:ident),*) => { $( if let Some(v) = args.$f { config.$f = v; } )* };
    }
    override_field!(epochs, seed, dim, hidden, dropout, batch, time, lr, max_grad);
    if args.dim.is_some() && args.hidden.is_none() {
        config.hidden = config.dim;
    }
    config.validate().map_err(|e| e.to_string())?;
    let out = args.out.unwrap_or_else(|| PathBuf::from("runs").join(&args.preset));
    let corpus = load_corpus(&args.data)?;
    let params = trainer::training::parameter_count(trainer::model::Dims {
        vocab: corpus.vocab.len(),
        dim: config.dim,
        layers: config.layers,
    });
    eprintln!(
        "preset {} · V={} D=H={} layers={} · {} parameters · {} threads · output {}",
        config.preset,
        corpus.vocab.len(),
        config.dim,
        config.layers,
        params,
        rayon::current_num_threads(),
        out.display()
    );
    let mut opts = RunOptions::new(&out);
    opts.resume = args.resume;
    opts.max_steps = args.max_steps;
    opts.checkpoint_every = std::time::Duration::from_secs_f64((args.checkpoint_minutes * 60.0).max(1.0));
    // Ctrl-C: finish the current iteration, write last.ckpt, exit; a second Ctrl-C aborts.
    let stop = opts.stop.clone();
    ctrlc::set_handler(move || {
        if stop.swap(true, std::sync::atomic::Ordering::Relaxed) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: saving a checkpoint after this iteration (Ctrl-C again to abort)");
    })
    .map_err(|e| format!("cannot install the Ctrl-C handler: {e}"))?;
    let mut observer = progress::TrainProgress::new(&out);
    let outcome = trainer::train(&config, &corpus, &opts, &mut observer).map_err(|e| e.to_string());
    observer.finish();
    if let Err(e) = plot::perplexity_chart(&out) {
        eprintln!("warning: could not draw {}: {e}", out.join("perplexity.png").display());
    }
    match outcome? {
        Outcome::Finished => {
            let summary = std::fs::read_to_string(out.join("summary.json")).unwrap_or_default();
            outln!("{summary}")?;
        }
        Outcome::Paused => {
            outln!("paused; continue with: host train --preset {} --out {} --resume", args.preset, out.display())?
        }
    }
    Ok(())
}

fn vocab_mismatch(file: &std::path::Path, words: usize, data: &std::path::Path, data_words: usize) -> String {
    format!(
        "{} was trained on a different vocabulary ({words} words) than {} ({data_words} words)",
        file.display(),
        data.display()
    )
}

fn eval(args: EvalArgs) -> Result<(), String> {
    set_threads(args.threads)?;
    let split = match args.split {
        SplitArg::Train => Split::Train,
        SplitArg::Valid => Split::Valid,
        SplitArg::Test => Split::Test,
    };
    let (ppl, file, kind) = if let Some(path) = &args.checkpoint {
        let ckpt = Checkpoint::load(path).map_err(|e| e.to_string())?;
        let corpus = load_corpus(&args.data)?;
        if ckpt.vocab != corpus.vocab.words() {
            return Err(vocab_mismatch(path, ckpt.vocab.len(), &args.data, corpus.vocab.len()));
        }
        let layout = Layout::new(ckpt.dims());
        let bar = progress::bar(0, format!("eval {}", split.file_name()));
        let ppl =
            perplexity_with(&layout, &ckpt.params, corpus.split(split), FastGemm::all_threads(), |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            })
            .map_err(|e| e.to_string())?;
        bar.finish_and_clear();
        (ppl, path.clone(), "f32")
    } else {
        let path = args.model.clone().expect("clap requires --model or --checkpoint");
        let bytes = infer::read_model(&path)?;
        let model = lstm_core::QuantModel::from_bytes(&bytes).map_err(|e| e.to_string())?;
        let corpus = load_corpus(&args.data)?;
        let same_vocab = model.vocab() == corpus.vocab.len()
            && corpus.vocab.words().iter().enumerate().all(|(i, w)| model.word(i as u32) == Some(w.as_str()));
        if !same_vocab {
            return Err(vocab_mismatch(&path, model.vocab(), &args.data, corpus.vocab.len()));
        }
        let tokens = corpus.split(split);
        let bar = progress::bar(tokens.len() as u64, format!("eval {} (int8)", split.file_name()));
        let ppl = trainer::quantized::perplexity(&model, tokens, &|n| bar.inc(n as u64)).map_err(|e| e.to_string())?;
        bar.finish_and_clear();
        (ppl, path, "int8")
    };
    if args.json {
        let v = serde_json::json!({ "split": split.file_name(), "perplexity": ppl, "file": file, "weights": kind });
        outln!("{v}")?;
    } else {
        outln!("perplexity {ppl:.4}")?;
    }
    Ok(())
}

/// Marks a closed stdout: not worth an error message.
const BROKEN_PIPE: &str = "broken pipe";

pub(crate) fn stdout_error(e: std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        BROKEN_PIPE.to_string()
    } else {
        format!("cannot write to stdout: {e}")
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => train(a),
        Command::Eval(a) => eval(a),
        Command::Export(a) => infer::export(a),
        Command::Predict(a) => infer::predict(a),
        Command::Generate(a) => infer::generate(a),
        Command::GradDemo(a) => grad_demo::grad_demo(a),
        Command::Bench(b) => bench::run(b),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e == BROKEN_PIPE => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
