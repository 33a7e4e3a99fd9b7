//! `host export`, `host predict`, `host generate`: from a checkpoint to the int8 file, and
//! what the model says.

use lstm_core::{QuantModel, Rng};
use std::io::BufRead;
use std::path::PathBuf;
use trainer::Checkpoint;
use trainer::export::{export_int8, export_safetensors};
use trainer::gemm::FastGemm;
use trainer::model::{Layout, Workspace};
use trainer::quantized::host_predictor;

/// Largest `--top` the predictor is built for.
pub const MAX_TOP: usize = 64;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ExportFormat {
    /// Tied int8 model for `lstm-core` and the firmware.
    Int8,
    /// f32 weights for other tools, with vocab.txt beside them.
    Safetensors,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Checkpoint written by `host train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
    /// File format.
    #[arg(long, value_enum, default_value = "int8")]
    format: ExportFormat,
    /// Refuse an int8 model larger than this many bytes.
    #[arg(long)]
    budget_flash: Option<usize>,
}

#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    /// Int8 model written by `host export`.
    #[arg(long)]
    model: PathBuf,
    /// How many candidates to show.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Machine-readable output, line for line what the firmware logs: `top N RANK ID WORD BITS
    /// PROB` (BITS: the f32 probability's IEEE bits in hex) and a greedy continuation
    /// `next N STEP ID WORD` of `--continue` words.
    #[arg(long)]
    exact: bool,
    /// Words of greedy continuation printed with --exact.
    #[arg(long = "continue", default_value_t = 8)]
    continue_words: usize,
    /// Prompt; without one, prompts are read line by line from stdin.
    prompt: Option<String>,
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["model", "checkpoint"])))]
pub struct GenerateArgs {
    /// Int8 model written by `host export`.
    #[arg(long)]
    model: Option<PathBuf>,
    /// f32 checkpoint written by `host train`.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// First words.
    #[arg(long, default_value = "the")]
    start: String,
    /// Words to generate.
    #[arg(long, default_value_t = 30)]
    words: usize,
    /// Sampling temperature (0 = always the most probable word).
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Reads and validates an int8 model file.
pub fn read_model(path: &PathBuf) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    QuantModel::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(bytes)
}

pub fn export(args: ExportArgs) -> Result<(), String> {
    let ckpt = Checkpoint::load(&args.checkpoint).map_err(|e| e.to_string())?;
    match args.format {
        ExportFormat::Safetensors => {
            let vocab = export_safetensors(&ckpt, &args.out)?;
            outln!("wrote {} and {}", args.out.display(), vocab.display())?;
        }
        ExportFormat::Int8 => {
            let (bytes, size) = export_int8(&ckpt)?;
            let kib = |b: usize| b as f64 / 1024.0;
            outln!("embedding  {:>10} bytes {:>9.1} KiB", size.embedding, kib(size.embedding))?;
            outln!("lstm       {:>10} bytes {:>9.1} KiB", size.lstm, kib(size.lstm))?;
            outln!("biases     {:>10} bytes {:>9.1} KiB", size.biases, kib(size.biases))?;
            outln!("vocabulary {:>10} bytes {:>9.1} KiB", size.vocabulary, kib(size.vocabulary))?;
            outln!("total      {:>10} bytes {:>9.1} KiB", size.total, kib(size.total))?;
            if let Some(budget) = args.budget_flash
                && size.total > budget
            {
                return Err(format!(
                    "the model takes {} bytes, over the flash budget of {budget} bytes by {}; not written",
                    size.total,
                    size.total - budget
                ));
            }
            trainer::checkpoint::write_atomic(&args.out, &bytes).map_err(|e| e.to_string())?;
            outln!("wrote {}", args.out.display())?;
        }
    }
    Ok(())
}

/// Prompt words → ids; unknown words become `<unk>` (or are dropped without one) and are
/// returned.
fn encode(model: &QuantModel<'_>, prompt: &str) -> (Vec<u32>, Vec<String>) {
    let unk = model.token("<unk>");
    let mut ids = Vec::new();
    let mut unknown = Vec::new();
    for w in prompt.split_whitespace() {
        match model.token(w).or(unk) {
            Some(id) => {
                if model.token(w).is_none() {
                    unknown.push(w.to_string());
                }
                ids.push(id);
            }
            None => unknown.push(w.to_string()),
        }
    }
    (ids, unknown)
}

fn predict_exact(model: &QuantModel<'_>, n: usize, prompt: &str, args: &PredictArgs) -> Result<(), String> {
    let (ids, _) = encode(model, prompt);
    let mut p = host_predictor(model);
    for &id in &ids {
        p.feed(id).map_err(|e| e.to_string())?;
    }
    let best = p.top_k::<MAX_TOP>().map_err(|e| e.to_string())?;
    for (rank, c) in best.iter().take(args.top).enumerate() {
        outln!("top {n} {rank} {} {} {:08x} {}", c.id, model.word(c.id).unwrap_or("?"), c.prob.to_bits(), c.prob)?;
    }
    let mut next = best.first().map(|c| c.id);
    for step in 0..args.continue_words {
        let Some(id) = next else { break };
        outln!("next {n} {step} {id} {}", model.word(id).unwrap_or("?"))?;
        p.feed(id).map_err(|e| e.to_string())?;
        next = p.top_k::<1>().map_err(|e| e.to_string())?.first().map(|c| c.id);
    }
    Ok(())
}

fn predict_one(model: &QuantModel<'_>, prompt: &str, top: usize) -> Result<(), String> {
    let (ids, unknown) = encode(model, prompt);
    if !unknown.is_empty() {
        eprintln!("not in the vocabulary (read as <unk>): {}", unknown.join(" "));
    }
    if ids.is_empty() {
        return Err(format!("prompt {prompt:?} has no words"));
    }
    let mut p = host_predictor(model);
    for &id in &ids {
        p.feed(id).map_err(|e| e.to_string())?;
    }
    let best = p.top_k::<MAX_TOP>().map_err(|e| e.to_string())?;
    outln!("{prompt}")?;
    for c in best.iter().take(top) {
        outln!("  {:<16} {:.6}", model.word(c.id).unwrap_or("?"), c.prob)?;
    }
    Ok(())
}

pub fn predict(args: PredictArgs) -> Result<(), String> {
    if args.top == 0 || args.top > MAX_TOP {
        return Err(format!("--top must be between 1 and {MAX_TOP}"));
    }
    let bytes = read_model(&args.model)?;
    let model = QuantModel::from_bytes(&bytes).map_err(|e| e.to_string())?;
    let run = |n: usize, prompt: &str| {
        if args.exact { predict_exact(&model, n, prompt, &args) } else { predict_one(&model, prompt, args.top) }
    };
    match &args.prompt {
        Some(prompt) => run(0, prompt),
        None => {
            let mut n = 0;
            for line in std::io::stdin().lock().lines() {
                let line = line.map_err(|e| format!("stdin: {e}"))?;
                if !line.trim().is_empty() {
                    run(n, line.trim())?;
                    n += 1;
                }
            }
            Ok(())
        }
    }
}

fn show(word: &str) -> String {
    if word == "<eos>" { "\n".to_string() } else { format!("{word} ") }
}

pub fn generate(args: GenerateArgs) -> Result<(), String> {
    let mut rng = Rng::new(args.seed);
    let mut text = String::new();
    if let Some(path) = &args.model {
        let bytes = read_model(path)?;
        let model = QuantModel::from_bytes(&bytes).map_err(|e| e.to_string())?;
        let (ids, unknown) = encode(&model, &args.start);
        if !unknown.is_empty() {
            eprintln!("not in the vocabulary (read as <unk>): {}", unknown.join(" "));
        }
        let mut p = host_predictor(&model);
        for &id in &ids {
            p.feed(id).map_err(|e| e.to_string())?;
            text.push_str(&show(model.word(id).unwrap_or("?")));
        }
        for _ in 0..args.words {
            let next = p.sample(args.temperature, &mut rng).map_err(|e| e.to_string())?;
            text.push_str(&show(model.word(next).unwrap_or("?")));
            p.feed(next).map_err(|e| e.to_string())?;
        }
    } else if let Some(path) = &args.checkpoint {
        let ckpt = Checkpoint::load(path).map_err(|e| e.to_string())?;
        let vocab = trainer::data::Vocab::from_words(ckpt.vocab.clone());
        let (ids, unknown) = vocab.encode_prompt(&args.start);
        if !unknown.is_empty() {
            eprintln!("not in the vocabulary (read as <unk>): {}", unknown.join(" "));
        }
        if ids.is_empty() {
            return Err("--start has no words the model knows".into());
        }
        let layout = Layout::new(ckpt.dims());
        let mut ws = Workspace::new(&layout, 1, 1, FastGemm::new(1));
        let mut logits = Vec::new();
        for &id in &ids {
            logits = ws.predict(&ckpt.params, &[id]).map_err(|e| e.to_string())?.to_vec();
            text.push_str(&show(vocab.word(id)));
        }
        for _ in 0..args.words {
            let next = sample_logits(&logits, args.temperature, &mut rng);
            text.push_str(&show(vocab.word(next)));
            logits = ws.predict(&ckpt.params, &[next]).map_err(|e| e.to_string())?.to_vec();
        }
    }
    outln!("{}", text.trim_end())?;
    Ok(())
}

/// Samples from softmax(logits / T) with the same one-pass rule as the int8 predictor.
fn sample_logits(logits: &[f32], temperature: f32, rng: &mut Rng) -> u32 {
    let mut choice = lstm_core::sampling::GumbelMax::new(temperature);
    for (v, &z) in logits.iter().enumerate() {
        choice.push(v as u32, z, rng);
    }
    choice.winner()
}
