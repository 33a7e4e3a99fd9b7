//! `host bench`: throughput numbers printed beside a GEMM peak measured in the same run, since
//! shared machines are noisy and only ratios travel.

use clap::Subcommand;
use lstm_core::{Gemm, Mat, Rng};
use std::time::Instant;
use trainer::config::Config;
use trainer::gemm::{Backend, FastGemm};
use trainer::model::{Dims, Layout, Workspace, init_params};

/// Tokens of PTB's validation split (words and one `<eos>` per line): the evaluation rate is
/// that of a pass over it, preparation included.
const PTB_VALID_TOKENS: usize = 73_760;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Training and evaluation tokens/s for a preset, and the GEMM peak.
    Train {
        /// Preset to measure.
        #[arg(long, default_value = "embedded")]
        preset: String,
        /// Vocabulary size (PTB: 10000).
        #[arg(long, default_value_t = 10_000)]
        vocab: usize,
        /// Timed training iterations.
        #[arg(long, default_value_t = 20)]
        iters: usize,
        /// Worker threads [default: all cores].
        #[arg(long)]
        threads: Option<usize>,
        /// Also print where a training step's time goes, phase by phase.
        #[arg(long)]
        profile: bool,
    },
    /// GFLOP/s of every matrix product of a training step of a preset (with the operands'
    /// transpositions), on each GEMM backend this CPU runs, and of a 2048³ product.
    Gemm {
        /// Preset whose shapes to measure.
        #[arg(long, default_value = "embedded")]
        preset: String,
        /// Vocabulary size (PTB: 10000).
        #[arg(long, default_value_t = 10_000)]
        vocab: usize,
        /// Worker threads [default: all cores].
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Training steps of a preset alternated, in one process, between two GEMM backends
    /// (`amx` and `avx512` unless told): the ratio of each pair, seconds apart, travels where
    /// whole runs minutes apart do not.
    Backends {
        /// Preset to measure.
        #[arg(long, default_value = "book")]
        preset: String,
        /// Vocabulary size (PTB: 10000).
        #[arg(long, default_value_t = 10_000)]
        vocab: usize,
        /// Timed pairs of steps.
        #[arg(long, default_value_t = 30)]
        pairs: usize,
    },
    /// Latency per token of the int8 predictor (feed + top-5), next to the f32 model
    /// evaluated one token at a time in the same run.
    Predict {
        /// Int8 model written by `host export`.
        #[arg(long)]
        model: std::path::PathBuf,
        /// f32 checkpoint for the reference (optional).
        #[arg(long)]
        checkpoint: Option<std::path::PathBuf>,
        /// Tokens to time.
        #[arg(long, default_value_t = 2000)]
        tokens: usize,
    },
}

/// See [`BenchCommand::Backends`]: pairs in alternating order (ABBA), the median and quartiles
/// of the pairs' ratios.
fn bench_backends(preset: &str, vocab: usize, pairs: usize) -> Result<(), String> {
    let cfg = Config::preset(preset).map_err(|e| e.to_string())?;
    let layout = Layout::new(Dims { vocab, dim: cfg.dim, layers: cfg.layers });
    let gemms: Vec<FastGemm> = [Backend::AmxBf16x3, Backend::Avx512]
        .into_iter()
        .filter_map(|b| FastGemm::all_threads().with_backend(b))
        .collect();
    if gemms.len() < 2 {
        return Err("this CPU runs only one of the AMX and AVX-512 backends: nothing to compare".into());
    }
    let mut rng = Rng::new(1);
    let mut params = init_params(&layout, &mut rng);
    let rows = cfg.batch * cfg.time;
    let ids: Vec<u32> = (0..rows).map(|_| (rng.next_u64() % vocab as u64) as u32).collect();
    let targets: Vec<u32> = (0..rows).map(|_| (rng.next_u64() % vocab as u64) as u32).collect();
    let mut workspaces: Vec<Workspace> =
        gemms.iter().map(|&g| Workspace::new(&layout, cfg.batch, cfg.time, g)).collect();
    let dropout = lstm_core::dropout::Dropout { p: cfg.dropout };
    let step = |ws: &mut Workspace, params: &mut Vec<f32>, rng: &mut Rng| -> Result<f64, String> {
        let t = Instant::now();
        ws.train_step(params, &ids, &targets, dropout, rng).map_err(|e| e.to_string())?;
        trainer::update::clip_and_step(params, &ws.grads, cfg.max_grad, 0.1);
        Ok(t.elapsed().as_secs_f64())
    };
    for ws in &mut workspaces {
        step(ws, &mut params, &mut rng)?; // warm-up: buffers touched, operands packed once
    }
    let mut ratios = Vec::with_capacity(pairs);
    let mut seconds = [0.0f64; 2];
    for pair in 0..pairs {
        let order = if pair % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut t = [0.0f64; 2];
        for w in order {
            t[w] = step(&mut workspaces[w], &mut params, &mut rng)?;
            seconds[w] += t[w];
        }
        ratios.push(t[1] / t[0]);
    }
    ratios.sort_by(f64::total_cmp);
    let at = |q: usize| ratios[(q * (pairs - 1)) / 4];
    let tokens = rows as f64 * pairs as f64;
    outln!("preset {preset}: {pairs} pairs of training steps, threads={}", rayon::current_num_threads())?;
    for (g, s) in gemms.iter().zip(seconds) {
        outln!("{:>26}: {:>7.0} tokens/s (mean)", g.backend().name(), tokens / s)?;
    }
    outln!(
        "speed {} ÷ {}: median of pairs {:.3} (quartiles {:.3}–{:.3})",
        gemms[0].backend().name(),
        gemms[1].backend().name(),
        at(2),
        at(1),
        at(3)
    )?;
    Ok(())
}

fn bench_predict(
    model_path: &std::path::PathBuf,
    checkpoint: Option<&std::path::PathBuf>,
    tokens: usize,
) -> Result<(), String> {
    let bytes = crate::infer::read_model(model_path)?;
    let model = lstm_core::QuantModel::from_bytes(&bytes).map_err(|e| e.to_string())?;
    let mut rng = Rng::new(7);
    let ids: Vec<u32> = (0..tokens).map(|_| (rng.next_u64() % model.vocab() as u64) as u32).collect();
    let mut p = trainer::quantized::host_predictor(&model);
    let t = Instant::now();
    let mut checksum = 0u64;
    for &id in &ids {
        p.feed(id).map_err(|e| e.to_string())?;
        checksum += u64::from(p.top_k::<5>().map_err(|e| e.to_string())?[0].id);
    }
    let int8 = t.elapsed().as_secs_f64() / tokens as f64;
    let macs = macs_per_token(Dims { vocab: model.vocab(), dim: model.dim(), layers: model.layers() });
    outln!(
        "model: V={} D=H={} layers={} · {:.2} M multiply-adds per token",
        model.vocab(),
        model.dim(),
        model.layers(),
        macs / 1e6
    )?;
    outln!(
        "int8 predictor (1 thread): {:8.1} µs/token  {:8.0} tokens/s  {:.2} GMAC/s  (checksum {checksum})",
        int8 * 1e6,
        1.0 / int8,
        macs / int8 / 1e9
    )?;
    if let Some(path) = checkpoint {
        let ckpt = trainer::Checkpoint::load(path).map_err(|e| e.to_string())?;
        let layout = Layout::new(ckpt.dims());
        let mut ws = Workspace::new(&layout, 1, 1, FastGemm::new(1));
        let t = Instant::now();
        for &id in &ids {
            ws.predict(&ckpt.params, &[id]).map_err(|e| e.to_string())?;
        }
        let f32_time = t.elapsed().as_secs_f64() / tokens as f64;
        outln!(
            "f32 model, batch 1 (1 thread): {:8.1} µs/token  {:8.0} tokens/s  (int8 is {:.2}× its speed)",
            f32_time * 1e6,
            1.0 / f32_time,
            f32_time / int8
        )?;
    }
    Ok(())
}

/// Multiply-adds per token of one forward pass: `V·D + Σ 4H(D+H)`.
pub fn macs_per_token(dims: Dims) -> f64 {
    let d = dims.dim as f64;
    dims.vocab as f64 * d + dims.layers as f64 * 4.0 * d * (d + d)
}

/// GFLOP/s of a `n³` product through [`FastGemm`]: the best of short runs with each k-block
/// the trainer uses and a longer one (512, which suits a square product best; the trainer's
/// shapes measured no faster with it), so the reference is the GEMM's real peak.
pub fn gemm_peak(n: usize) -> f64 {
    let mut best = 0.0f64;
    for _ in 0..2 {
        for k_block in [128, 256, 512] {
            let gemm = FastGemm::all_threads().with_k_block(k_block);
            best = best.max(gemm_gflops(gemm, n, n, n, false, false, false, 0.3));
        }
    }
    best
}

/// GFLOP/s of `C (m×n) += A (m×k) · B (k×n)`, each operand read from transposed storage when
/// asked, repeated for at least `min_s` seconds after a warm-up; with `fixed_rhs`, through
/// [`Gemm::with_rhs`] as the recurrent steps run (B prepared once for all repetitions).
#[allow(clippy::too_many_arguments)]
fn gemm_gflops(gemm: FastGemm, m: usize, n: usize, k: usize, ta: bool, tb: bool, fixed_rhs: bool, min_s: f64) -> f64 {
    let mut rng = Rng::new(1);
    let a: Vec<f32> = (0..m * k).map(|_| rng.normal()).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rng.normal()).collect();
    let mut c = vec![0.0f32; m * n];
    let am = if ta { Mat::new(&a, k, m).t() } else { Mat::new(&a, m, k) };
    let bm = if tb { Mat::new(&b, n, k).t() } else { Mat::new(&b, k, n) };
    gemm.gemm(1.0, am, bm, 0.0, &mut c); // warm-up
    let mut reps = 0;
    let run = |product: &dyn Fn(&mut [f32]), c: &mut [f32], reps: &mut usize| {
        let t = Instant::now();
        while *reps == 0 || t.elapsed().as_secs_f64() < min_s {
            product(c);
            *reps += 1;
        }
        t.elapsed().as_secs_f64()
    };
    let secs = if fixed_rhs {
        gemm.with_rhs(bm, |rhs| run(&|c| rhs.gemm(1.0, am, 1.0, c), &mut c, &mut reps))
    } else {
        run(&|c| gemm.gemm(1.0, am, bm, 1.0, c), &mut c, &mut reps)
    };
    2.0 * (m * n * k) as f64 * reps as f64 / secs / 1e9
}

fn bench_gemm(preset: &str, vocab: usize) -> Result<(), String> {
    let cfg = Config::preset(preset).map_err(|e| e.to_string())?;
    let (rows, n, d, g) = (cfg.batch * cfg.time, cfg.batch, cfg.dim, 4 * cfg.dim);
    // (name, m, n, k, A transposed, B transposed, B fixed across calls): the products of one
    // training step; the recurrent ones run, as in training, against a `Wh` prepared once.
    let shapes = [
        ("logits  h·Eᵀ", rows, vocab, d, false, true, false),
        ("out dE  dYᵀ·h", vocab, d, rows, true, false, false),
        ("out dh  dY·E", rows, d, vocab, false, false, false),
        ("lstm x·Wx", rows, g, d, false, false, false),
        ("lstm h·Wh (step)", n, g, d, false, false, true),
        ("lstm da·Whᵀ (step)", n, d, g, false, false, true),
        ("lstm dWx xᵀ·dA", d, g, rows, true, false, false),
        ("lstm dx dA·Wxᵀ", rows, d, g, false, true, false),
        ("square 2048³", 2048, 2048, 2048, false, false, false),
    ];
    // The k-block a training workspace of this width uses.
    let base = FastGemm::all_threads().with_k_block(trainer::model::k_block_for(d));
    let backends: Vec<FastGemm> = [Backend::AmxBf16x3, Backend::Avx512, Backend::Nalgebra]
        .into_iter()
        .filter_map(|b| base.with_backend(b))
        .collect();
    outln!(
        "preset {preset}: GFLOP/s per product (best of 5 interleaved runs), threads={}",
        rayon::current_num_threads()
    )?;
    let header: Vec<String> = backends.iter().map(|g| format!("{:>22}", g.backend().name())).collect();
    outln!("{:<22} {:>18} {}", "product", "m × n × k", header.join(""))?;
    for (name, m, nn, k, ta, tb, fixed) in shapes {
        // The backends take turns, and each keeps its best of several short runs: on a shared
        // machine, noise only ever slows a run down.
        let mut best = vec![0.0f64; backends.len()];
        for _ in 0..5 {
            for (b, &g) in best.iter_mut().zip(&backends) {
                *b = b.max(gemm_gflops(g, m, nn, k, ta, tb, fixed, 0.1));
            }
        }
        let cells: Vec<String> = best.iter().map(|v| format!("{v:>22.1}")).collect();
        outln!("{name:<22} {:>18} {}", format!("{m}×{nn}×{k}"), cells.join(""))?;
    }
    Ok(())
}

pub fn run(cmd: BenchCommand) -> Result<(), String> {
    match cmd {
        BenchCommand::Predict { model, checkpoint, tokens } => bench_predict(&model, checkpoint.as_ref(), tokens),
        BenchCommand::Gemm { preset, vocab, threads } => {
            if let Some(n) = threads {
                rayon::ThreadPoolBuilder::new().num_threads(n).build_global().map_err(|e| e.to_string())?;
            }
            bench_gemm(&preset, vocab)
        }
        BenchCommand::Backends { preset, vocab, pairs } => bench_backends(&preset, vocab, pairs.max(1)),
        BenchCommand::Train { preset, vocab, iters, threads, profile } => {
            if let Some(n) = threads {
                rayon::ThreadPoolBuilder::new().num_threads(n).build_global().map_err(|e| e.to_string())?;
            }
            let cfg = Config::preset(&preset).map_err(|e| e.to_string())?;
            let dims = Dims { vocab, dim: cfg.dim, layers: cfg.layers };
            let layout = Layout::new(dims);
            let mut rng = Rng::new(1);
            let mut params = init_params(&layout, &mut rng);
            let gemm = FastGemm::all_threads();
            let rows = cfg.batch * cfg.time;
            let ids: Vec<u32> = (0..rows).map(|_| (rng.next_u64() % vocab as u64) as u32).collect();
            let targets: Vec<u32> = (0..rows).map(|_| (rng.next_u64() % vocab as u64) as u32).collect();
            let mut ws = Workspace::new(&layout, cfg.batch, cfg.time, gemm);
            let dropout = lstm_core::dropout::Dropout { p: cfg.dropout };
            let step = |ws: &mut Workspace, params: &mut Vec<f32>, rng: &mut Rng| -> Result<(), String> {
                ws.train_step(params, &ids, &targets, dropout, rng).map_err(|e| e.to_string())?;
                trainer::update::clip_and_step(params, &ws.grads, cfg.max_grad, 0.1);
                Ok(())
            };
            step(&mut ws, &mut params, &mut rng)?;
            if profile {
                ws.enable_profile();
            }
            let t = Instant::now();
            for _ in 0..iters {
                step(&mut ws, &mut params, &mut rng)?;
            }
            let train_tps = (iters * rows) as f64 / t.elapsed().as_secs_f64();
            // Evaluation runs like validation: 10 streams × 35 steps.
            let (eval_batch, eval_time) = (trainer::training::EVAL_BATCH, trainer::training::EVAL_TIME);
            let eval_rows = eval_batch * eval_time;
            let mut eval_ws = Workspace::new(&layout, eval_batch, eval_time, gemm);
            let eval_ids: Vec<u32> = (0..eval_rows).map(|_| (rng.next_u64() % vocab as u64) as u32).collect();
            // Like `training::perplexity`: prepared once (the output layer, the LSTM weights, the
            // table of E·Wx), then every batch. The rate is that of a whole pass over PTB's
            // validation split: the preparation once, then its batches at the measured speed.
            let t = Instant::now();
            let mut evaluation = eval_ws.evaluation(&params);
            let setup = t.elapsed().as_secs_f64();
            let eval_iters = iters * 2;
            let t = Instant::now();
            for _ in 0..eval_iters {
                evaluation.step(&eval_ids, &eval_ids).map_err(|e| e.to_string())?;
            }
            let per_batch = t.elapsed().as_secs_f64() / eval_iters as f64;
            let pass = trainer::data::EvalBatches::new(PTB_VALID_TOKENS, eval_batch, eval_time).iters();
            let eval_tps = (pass * eval_rows) as f64 / (setup + pass as f64 * per_batch);
            let peak = gemm_peak(2048);
            let macs = macs_per_token(dims);
            let train_gflops = train_tps * macs * 2.0 * 3.0 / 1e9;
            let eval_gflops = eval_tps * macs * 2.0 / 1e9;
            outln!(
                "preset {preset}: V={vocab} D=H={} layers={} batch={} time={} threads={}",
                cfg.dim,
                cfg.layers,
                cfg.batch,
                cfg.time,
                rayon::current_num_threads()
            )?;
            outln!("gemm 2048³ (same run):  {peak:8.1} GFLOP/s")?;
            outln!(
                "train: {train_tps:10.0} tokens/s  {train_gflops:7.1} GFLOP/s  ({:.0}% of the GEMM peak)",
                100.0 * train_gflops / peak
            )?;
            outln!(
                "eval:  {eval_tps:10.0} tokens/s  {eval_gflops:7.1} GFLOP/s  ({:.0}% of the GEMM peak; a pass of {pass} batches, {:.0} ms of it preparing)",
                100.0 * eval_gflops / peak,
                setup * 1e3
            )?;
            if let Some(p) = ws.profile() {
                let total: f64 = p.seconds.iter().sum();
                outln!("training step, {} steps: {:.2} ms per step", p.steps, 1e3 * total / p.steps as f64)?;
                for (name, s) in trainer::model::STEP_PHASES.iter().zip(p.seconds) {
                    outln!("  {name:<32} {:7.2} ms  {:5.1}%", 1e3 * s / p.steps as f64, 100.0 * s / total)?;
                }
            }
            Ok(())
        }
    }
}
