//! The "BetterRnnlm": embedding → dropout → L stateful LSTM layers, each followed by dropout →
//! affine output tied to the embedding → softmax cross-entropy.
//!
//! Parameters live in one flat vector (so clipping, SGD and checkpoints see a single buffer);
//! [`Layout`] names its parts. Every equation is `lstm-core`'s; this module only owns buffers
//! and the order of calls, including what runs beside what: the LSTM recurrences are chains of
//! small one-thread products, so packing the tied matrix (started with the first recurrence,
//! after the first input projection) and the output's dE product run alongside them
//! (`rayon::scope`, `rayon::join`), and an evaluation of a model whose step products are too
//! small to split scores one time chunk while the layers run the next; none of it changes a
//! result. An evaluation reads its first layer's input projection from a table of `E·Wx` made
//! once, and a wide model's scores a vocabulary piece at a time ([`EVAL_PIECE_WORDS`]), its
//! softmax with [`fast_exp`] (training keeps the reference `exp`, see `train_step`).

use crate::fast_exp;
use crate::gemm::{FastGemm, PreparedB, PreparedOperands};
use lstm_core::dropout::Dropout;
use lstm_core::embedding::{embedding_backward, embedding_forward};
use lstm_core::softmax::{
    PartialLogSumExp, check_targets, cross_entropy_sum_biased, cross_entropy_sum_biased_with,
    softmax_cross_entropy_biased_by,
};
use lstm_core::{Gemm, Lstm, LstmGrads, LstmWeights, Mat, PendingWeightGrads, Rng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Shape of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dims {
    /// Vocabulary size V.
    pub vocab: usize,
    /// Embedding width D (= H).
    pub dim: usize,
    /// Number of LSTM layers.
    pub layers: usize,
}

/// Where each tensor sits in the flat parameter vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Model shape.
    pub dims: Dims,
    /// Embedding `V × D`, also the (transposed) output weight.
    pub embedding: Range<usize>,
    /// Per layer: `wx` (`D × 4H`), `wh` (`H × 4H`), `b` (`4H`).
    pub lstm: Vec<[Range<usize>; 3]>,
    /// Output bias `V`.
    pub out_bias: Range<usize>,
    /// Total number of parameters.
    pub total: usize,
}

impl Layout {
    /// The layout of a model of shape `dims`.
    pub fn new(dims: Dims) -> Layout {
        let (v, d) = (dims.vocab, dims.dim);
        let mut next = 0;
        let mut take = |n: usize| {
            next += n;
            next - n..next
        };
        let embedding = take(v * d);
        let lstm = (0..dims.layers).map(|_| [take(d * 4 * d), take(d * 4 * d), take(4 * d)]).collect();
        let out_bias = take(v);
        Layout { dims, embedding, lstm, out_bias, total: next }
    }

    /// Views of layer `l`'s weights inside `params`.
    pub fn lstm_weights<'a>(&self, params: &'a [f32], l: usize) -> LstmWeights<'a> {
        let [wx, wh, b] = &self.lstm[l];
        LstmWeights { wx: &params[wx.clone()], wh: &params[wh.clone()], b: &params[b.clone()] }
    }
}

/// Initial parameters: embedding N(0,1)/100, `Wx` N(0,1)/√D, `Wh` N(0,1)/√H, biases zero.
pub fn init_params(layout: &Layout, rng: &mut Rng) -> Vec<f32> {
    let mut p = vec![0.0f32; layout.total];
    let d = layout.dims.dim as f32;
    p[layout.embedding.clone()].iter_mut().for_each(|v| *v = rng.normal() / 100.0);
    for [wx, wh, _] in &layout.lstm {
        p[wx.clone()].iter_mut().for_each(|v| *v = rng.normal() / d.sqrt());
        p[wh.clone()].iter_mut().for_each(|v| *v = rng.normal() / d.sqrt());
    }
    p
}

/// Buffers for one batch shape (`batch` streams × `time` steps), including the LSTM states
/// carried between calls.
#[derive(Debug)]
pub struct Workspace {
    layout: Layout,
    batch: usize,
    time: usize,
    gemm: FastGemm,
    layers: Vec<Lstm<Vec<f32>>>,
    /// `inputs[l]`: the input of layer `l` after dropout; `inputs[L]` feeds the output layer.
    inputs: Vec<Vec<f32>>,
    masks: Vec<Vec<f32>>,
    logits: Vec<f32>,
    grad_a: Vec<f32>,
    grad_b: Vec<f32>,
    /// Per-block output-bias gradients, summed in order.
    bias_partials: Vec<f32>,
    /// `Eᵀ` and `E` prepared for the row-block products of the output layer.
    tied_t: PreparedB,
    tied: PreparedB,
    /// Every layer's `Wx` and `Wh`, packed once per [`Evaluation`] (only it reads them: they
    /// are stale once the parameters change).
    eval_weights: PreparedOperands,
    /// Each block's summed loss during an evaluation batch, added in order afterwards.
    eval_block_sums: Vec<Result<f64, lstm_core::Error>>,
    /// Per vocabulary piece and row of an evaluation chunk (see [`EVAL_PIECE_WORDS`]): the
    /// piece's log-sum-exp, and the target's biased score when the target lies in the piece.
    eval_pieces: Vec<(PartialLogSumExp, f32)>,
    /// `E·Wx` of the first layer, one row per word, made once per [`Evaluation`].
    eval_input_table: Vec<f32>,
    /// Gradient, same layout as the parameters.
    pub grads: Vec<f32>,
    /// Time per phase of [`Workspace::train_step`], when enabled.
    profile: Option<StepProfile>,
}

/// Batches evaluated with the same parameters; see [`Workspace::evaluation`].
#[derive(Debug)]
pub struct Evaluation<'w> {
    ws: &'w mut Workspace,
    params: &'w [f32],
}

impl Evaluation<'_> {
    /// One batch (no dropout, state carried): the **sum** of negative log-likelihoods.
    pub fn step(&mut self, ids: &[u32], targets: &[u32]) -> Result<f64, lstm_core::Error> {
        self.ws.eval_step_prepared(self.params, ids, targets)
    }

    /// How many products so far read an LSTM weight from its copy packed by
    /// [`Workspace::evaluation`] (two per layer per time chunk of a batch, see
    /// [`eval_chunk_steps`], when the backend packs).
    pub fn prepared_hits(&self) -> usize {
        self.ws.eval_weights.hits()
    }
}

thread_local! {
    /// One block of evaluation scores per thread, reused: they are reduced to a loss at once
    /// and never need the full `rows × V` buffer (measured 8-14% faster evaluation).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// k-block of the GEMM for models wider than 128 (see [`Workspace::new`]).
const WIDE_K_BLOCK: usize = 256;

/// The GEMM k-block a [`Workspace`] of width `dim` uses (for benchmarks that mimic it).
pub fn k_block_for(dim: usize) -> usize {
    if dim > 128 { WIDE_K_BLOCK } else { 128 }
}

/// Names of the phases of a training step, in order (see [`StepProfile`]).
pub const STEP_PHASES: [&str; 4] = [
    "embedding + LSTM forward (+ packing E, Eᵀ)",
    "output: scores, softmax, dY·E",
    "LSTM backward (+ output dE += dYᵀ·h)",
    "embedding backward",
];

/// Wall time spent in each of [`STEP_PHASES`], summed over `steps` training steps: where a
/// step's time goes, for `host bench train --profile`.
#[derive(Debug, Default, Clone)]
pub struct StepProfile {
    /// Seconds per phase.
    pub seconds: [f64; STEP_PHASES.len()],
    /// Training steps measured.
    pub steps: usize,
}

/// Rows per block of a narrow model's evaluation output layer (`D ≤ 128`; wider ones go by
/// vocabulary pieces, [`EVAL_PIECE_WORDS`], and only group their losses in these blocks): one
/// tile height of the kernel, only scores and their loss, so the block need not meet `E` with
/// many rows, and its 10 × V scores stay in L2 until reduced. Same-process A/B against halves
/// of the batch (`D > 128`) and 40-row blocks (`D ≤ 128`): `small` +24–26%, `book` +0–6%,
/// `embedded` +1%.
const EVAL_BLOCK_ROWS: usize = 10;

/// Words per vocabulary piece of a wide model's evaluation (`D > 128`, see
/// `score_by_pieces`): each k-block of a piece's columns of `Eᵀ` (0.5 MB for `book`) and the
/// batch's scores for the piece (0.7 MB) stay in L2 while they are multiplied and reduced.
/// Same-process A/B in blocks of 5–10 batches against the 10-row blocks below: `book` +2 to
/// +11% (four runs), `small` +11–14% (two runs); `embedded`, whose 2.6 MB `Eᵀ` stays in cache
/// anyway, −4 to −11%, so narrow models keep the blocks. (Alternating single batches read
/// `book` +19%: what one mode leaves in cache flatters the other.) 256 and 512 words ran
/// alike for `book`, 512 and 768 for `small`.
pub const EVAL_PIECE_WORDS: usize = 512;

/// The summed losses of a wide model's evaluation rows, a vocabulary piece at a time: each
/// piece's scores (`h · Eᵀ[:, piece]`) are reduced to a partial log-sum-exp per row while in
/// cache, and the pieces merge in a fixed order. `Eᵀ` (26 MB for `book`) is then read once
/// per batch instead of once per 10-row block, which also keeps the evaluation's speed from
/// falling with the memory bandwidth other tenants leave. `sums[b]` gets rows
/// `b·EVAL_BLOCK_ROWS..` (the same grouping as the blocks); `pieces` is scratch.
#[allow(clippy::too_many_arguments)]
fn score_by_pieces(
    gemm: FastGemm,
    h: Mat<'_>,
    emb: Mat<'_>,
    tied_t: &PreparedB,
    bias: &[f32],
    targets: &[u32],
    pieces: &mut Vec<(PartialLogSumExp, f32)>,
    sums: &mut [Result<f64, lstm_core::Error>],
) {
    let (rows, v) = (targets.len(), emb.rows());
    if let Err(e) = check_targets(targets, v) {
        sums.fill(Err(e));
        return;
    }
    pieces.clear();
    pieces.resize(v.div_ceil(EVAL_PIECE_WORDS) * rows, (PartialLogSumExp::EMPTY, 0.0));
    // Piece `q`: rows `q·rows..`, each the piece's log-sum-exp and the target's biased score
    // (0 when the target lies in another piece).
    pieces.par_chunks_mut(rows.max(1)).enumerate().for_each(|(q, piece)| {
        let words = q * EVAL_PIECE_WORDS..v.min((q + 1) * EVAL_PIECE_WORDS);
        SCRATCH.with_borrow_mut(|hot| {
            hot.resize(rows * words.len(), 0.0);
            gemm.gemm_prepared_columns(1.0, h, emb.t(), tied_t, words.clone(), 0.0, hot);
            let bias = &bias[words.clone()];
            for ((scores, slot), &t) in hot.chunks_exact(words.len()).zip(piece).zip(targets) {
                let target = (t as usize).checked_sub(words.start).filter(|&j| j < words.len());
                *slot = (
                    PartialLogSumExp::of_biased_with(scores, bias, fast_exp::exp),
                    target.map_or(0.0, |j| scores[j] + bias[j]),
                );
            }
        });
    });
    for (b, sum) in sums.iter_mut().enumerate() {
        let block = b * EVAL_BLOCK_ROWS..rows.min((b + 1) * EVAL_BLOCK_ROWS);
        *sum = Ok(block.fold(0.0f64, |total, r| {
            let lse = pieces[r..].iter().step_by(rows).fold(PartialLogSumExp::EMPTY, |acc, &(lse, _)| acc.merge(lse));
            let target = pieces[targets[r] as usize / EVAL_PIECE_WORDS * rows + r].1;
            total + f64::from(lse.value() - target)
        }));
    }
}

/// Steps per time chunk of an evaluation batch of `batch` streams: the LSTM layers run chunk
/// `c + 1` while the output layer scores chunk `c`, when a recurrent step's product is too
/// small for the GEMM to split (one core would idle through the recurrence) and the model is
/// wide enough to repay the extra calls; otherwise the whole batch at once. Same-process A/B
/// against whole batches: `small` +18–21% (chunks of 5 or 7 steps; 3: +6%), `book` (whose
/// steps are split) ±1%, `embedded` −3% (7) / −9% (5). With the host's 10 streams (chunks of whole
/// 10-row blocks) the losses are the same bits either way.
pub fn eval_chunk_steps(dim: usize, batch: usize) -> usize {
    if dim > 128 && batch * dim * 4 * dim < crate::gemm::MIN_PARALLEL_WORK { 7 } else { usize::MAX }
}

/// A GEMM that spawns `task` into `scope` when the first recurrence starts (the first
/// [`Gemm::with_rhs`]: the first layer's `Wh`), so that the task runs beside the chain of small
/// step products rather than beside the first input projection.
struct BesideFirstRecurrence<'g, 's, G, F> {
    gemm: &'g G,
    task: Mutex<Option<F>>,
    scope: &'g rayon::Scope<'s>,
}

impl<'s, G: Gemm, F: FnOnce() + Send + 's> Gemm for BesideFirstRecurrence<'_, 's, G, F> {
    fn gemm(&self, alpha: f32, a: Mat<'_>, b: Mat<'_>, beta: f32, c: &mut [f32]) {
        self.gemm.gemm(alpha, a, b, beta, c);
    }

    fn with_rhs<R>(&self, b: Mat<'_>, body: impl FnOnce(&dyn lstm_core::FixedRhsGemm) -> R) -> R {
        if let Some(task) = self.task.lock().unwrap_or_else(PoisonError::into_inner).take() {
            self.scope.spawn(move |_| task());
        }
        self.gemm.with_rhs(b, body)
    }
}

/// Rows per block of the fused output layer. With a narrow model (`D ≤ 128`) each block's
/// scores (`40 × V` floats, 1.6 MB for PTB) are computed, turned into softmax gradients and
/// multiplied back by `E` while they are still in the core's cache, instead of making three
/// trips through memory. A wide model's products are compute-bound and want each panel of `E`
/// to meet many rows: then the blocks are halves of the batch. Depends on the shape only, never
/// on the thread count, so results do not either.
fn output_block_rows(dim: usize, rows: usize) -> usize {
    if dim <= 128 { 40 } else { rows.div_ceil(2).max(1) }
}

/// Positions `rows` (time-major: whole steps) of a batch through the embedding and every LSTM
/// layer, each layer's input and the top output through dropout (masks for the same rows,
/// drawn from `rng` in layer order; with `train == false` all ones), carrying each layer's
/// state from the call before. `inputs` holds the inputs of layers `0..L`; the top layer's
/// output goes to `out`. With `first_projection` (an evaluation's table of `E·Wx`, one row per
/// word, see [`Workspace::evaluation`]; only without dropout) the first layer reads its input
/// projection from the table instead of embedding the words and multiplying them by `Wx`.
#[allow(clippy::too_many_arguments)]
fn hidden_rows(
    gemm: &impl Gemm,
    layout: &Layout,
    layers: &mut [Lstm<Vec<f32>>],
    inputs: &mut [Vec<f32>],
    out: &mut [f32],
    masks: &mut [Vec<f32>],
    (dropout, rng, train): (Dropout, &mut Rng, bool),
    params: &[f32],
    ids: &[u32],
    rows: Range<usize>,
    first_projection: Option<&[f32]>,
) -> Result<(), lstm_core::Error> {
    let d = layout.dims.dim;
    let span = rows.start * d..rows.end * d;
    let steps = rows.len() / layers.first().map_or(1, |l| l.batch().max(1));
    if first_projection.is_none() {
        embedding_forward(&params[layout.embedding.clone()], d, ids, &mut inputs[0][span.clone()])?;
        dropout.forward(&mut inputs[0][span.clone()], &mut masks[0][span.clone()], rng, train);
    }
    for l in 0..layers.len() {
        let w = layout.lstm_weights(params, l);
        let (below, above) = inputs.split_at_mut(l + 1);
        match first_projection.filter(|_| l == 0) {
            Some(table) => {
                layers[l].forward_projected(gemm, &w, steps, |a_all| embedding_forward(table, 4 * d, ids, a_all))?
            }
            None => layers[l].forward(gemm, &w, &below[l][span.clone()], steps)?,
        }
        let dest = if l + 1 < layers.len() { &mut above[0][span.clone()] } else { &mut *out };
        dest.copy_from_slice(layers[l].output());
        dropout.forward(dest, &mut masks[l + 1][span.clone()], rng, train);
    }
    Ok(())
}

/// The LSTM layers' backward pass, top to bottom, borrowing only what it needs from a
/// [`Workspace`] so the output layer's `dE` product can run beside it.
struct LstmBackward<'a> {
    layout: &'a Layout,
    gemm: FastGemm,
    layers: &'a mut [Lstm<Vec<f32>>],
    inputs: &'a [Vec<f32>],
    masks: &'a [Vec<f32>],
    /// The gradient arriving at the top layer's output on entry; at the embedding's output
    /// (before its dropout) on exit.
    grad_a: &'a mut Vec<f32>,
    grad_b: &'a mut Vec<f32>,
    dropout: Dropout,
}

impl LstmBackward<'_> {
    /// `grads`: the parameter gradient from `offset` on (where the LSTM layers start).
    fn run(self, params: &[f32], grads: &mut [f32], offset: usize) -> Result<(), lstm_core::Error> {
        let LstmBackward { layout, gemm, layers, inputs, masks, grad_a, grad_b, dropout } = self;
        debug_assert_eq!(layout.lstm.first().map(|r| r[0].start), Some(offset));
        let mut layer_grads = Vec::with_capacity(layers.len());
        let mut rest = grads;
        for [wx, wh, b] in &layout.lstm {
            let (g_wx, tail) = std::mem::take(&mut rest).split_at_mut(wx.len());
            let (g_wh, tail) = tail.split_at_mut(wh.len());
            let (g_b, tail) = tail.split_at_mut(b.len());
            rest = tail;
            layer_grads.push(LstmGrads { wx: g_wx, wh: g_wh, b: g_b });
        }
        // Layer `l`'s weight gradients (`xᵀ·dA`, `hᵀ·dA`: big products nothing below waits for)
        // run beside layer `l − 1`'s recurrence, a chain of small products that leaves a thread
        // mostly idle; only the input gradient `dx` is on the way down. Same-process A/B against
        // running them in turn, on a busy machine: `book` +7.3%, +2.6%, +1.5%, +0.9%; `small`
        // +3.0%, −1.4%, +0.3%; `embedded` +3.0%, +4.5%. The same products, so the same bits.
        let mut pending: Option<(PendingWeightGrads<'_>, LstmGrads<'_>)> = None;
        let mut below = layers;
        while let Some((layer, rest)) = std::mem::take(&mut below).split_last_mut() {
            below = rest;
            let l = below.len();
            dropout.backward(grad_a, &masks[l + 1]);
            let w = layout.lstm_weights(params, l);
            let previous = pending.take();
            let add_pending = move || previous.map_or(Ok(()), |(work, mut g)| work.add_to(&gemm, &mut g));
            let (added, data) = rayon::join(add_pending, || layer.backward_data(&gemm, &w, &inputs[l], grad_a, grad_b));
            added?;
            let g = layer_grads.pop().expect("one gradient view per layer");
            pending = Some((data?, g));
            std::mem::swap(grad_a, grad_b);
        }
        pending.map_or(Ok(()), |(work, mut g)| work.add_to(&gemm, &mut g))
    }
}

impl Workspace {
    /// Buffers for `batch × time` positions of a model with `layout`.
    pub fn new(layout: &Layout, batch: usize, time: usize, gemm: FastGemm) -> Workspace {
        let Dims { vocab, dim, layers } = layout.dims;
        // Wider models (no fused output layer) ran faster with k-blocks of 256 in same-process
        // A/B, step by step: `small` +2–8% (mean +5%, six rounds), `book` −1 to +8% (mean
        // +4%, six rounds); the fused path of D ≤ 128 ran 1–4% slower, so it keeps 128.
        let gemm = gemm.with_k_block(k_block_for(dim));
        let rows = batch * time;
        let lstm_layers = (0..layers)
            .map(|_| {
                let len = Lstm::<Vec<f32>>::storage_len(dim, batch, time);
                Lstm::new(dim, dim, batch, time, true, vec![0.0; len]).expect("storage sized by storage_len")
            })
            .collect();
        Workspace {
            layout: layout.clone(),
            batch,
            time,
            gemm,
            layers: lstm_layers,
            inputs: vec![vec![0.0; rows * dim]; layers + 1],
            masks: vec![vec![1.0; rows * dim]; layers + 1],
            logits: vec![0.0; rows * vocab],
            grad_a: vec![0.0; rows * dim],
            grad_b: vec![0.0; rows * dim],
            bias_partials: Vec::new(),
            tied_t: PreparedB::default(),
            tied: PreparedB::default(),
            eval_weights: PreparedOperands::default(),
            eval_block_sums: Vec::new(),
            eval_pieces: Vec::new(),
            eval_input_table: Vec::new(),
            grads: vec![0.0; layout.total],
            profile: None,
        }
    }

    /// Starts timing the phases of every training step (see [`StepProfile`]).
    pub fn enable_profile(&mut self) {
        self.profile = Some(StepProfile::default());
    }

    /// The phase times so far, if enabled.
    pub fn profile(&self) -> Option<&StepProfile> {
        self.profile.as_ref()
    }

    /// Adds the time since `*since` to `phase` and restarts the clock (when profiling).
    fn lap(&mut self, since: &mut Option<Instant>, phase: usize) {
        if let (Some(p), Some(t)) = (&mut self.profile, since.as_mut()) {
            let now = Instant::now();
            p.seconds[phase] += (now - *t).as_secs_f64();
            *t = now;
        }
    }

    /// Positions per call.
    pub fn rows(&self) -> usize {
        self.batch * self.time
    }

    /// Zeroes every layer's (h, c).
    pub fn reset_state(&mut self) {
        self.layers.iter_mut().for_each(Lstm::reset_state);
    }

    /// The (h, c) of every layer, flattened `[h₀, c₀, h₁, c₁, …]`, for checkpoints.
    pub fn state(&self) -> Vec<Vec<f32>> {
        self.layers
            .iter()
            .flat_map(|l| {
                let (h, c) = l.state();
                [h.to_vec(), c.to_vec()]
            })
            .collect()
    }

    /// Restores [`Workspace::state`].
    pub fn set_state(&mut self, state: &[Vec<f32>]) -> Result<(), lstm_core::Error> {
        if state.len() != 2 * self.layers.len() {
            return Err(lstm_core::Error::BufferLength {
                what: "saved layer states",
                expected: 2 * self.layers.len(),
                actual: state.len(),
            });
        }
        for (layer, hc) in self.layers.iter_mut().zip(state.chunks_exact(2)) {
            layer.set_state(&hc[0], &hc[1])?;
        }
        Ok(())
    }

    /// Forward through the LSTM layers to the input of the output layer (`inputs[L]`).
    /// `ids` is `time × batch`, time-major.
    fn forward_hidden(
        &mut self,
        gemm: &impl Gemm,
        params: &[f32],
        ids: &[u32],
        dropout: Dropout,
        rng: &mut Rng,
        train: bool,
    ) -> Result<(), lstm_core::Error> {
        let top = self.layers.len();
        let (lower, upper) = self.inputs.split_at_mut(top);
        hidden_rows(
            gemm,
            &self.layout,
            &mut self.layers,
            lower,
            &mut upper[0],
            &mut self.masks,
            (dropout, rng, train),
            params,
            ids,
            0..self.batch * self.time,
            None,
        )
    }

    /// Forward to all output scores `h·Eᵀ`, **without** the output bias: the softmax adds it on
    /// the fly (see `lstm_core::softmax::softmax_cross_entropy_biased`).
    fn forward(
        &mut self,
        params: &[f32],
        ids: &[u32],
        dropout: Dropout,
        rng: &mut Rng,
        train: bool,
    ) -> Result<(), lstm_core::Error> {
        let gemm = self.gemm;
        self.forward_hidden(&gemm, params, ids, dropout, rng, train)?;
        let d = self.layout.dims.dim;
        let tied = Mat::new(&params[self.layout.embedding.clone()], self.layout.dims.vocab, d).t();
        let top = &self.inputs[self.layers.len()];
        self.gemm.gemm(1.0, Mat::new(top, self.batch * self.time, d), tied, 0.0, &mut self.logits);
        Ok(())
    }

    /// One training step's forward and backward pass: returns the mean loss and leaves the
    /// gradient in [`Workspace::grads`].
    pub fn train_step(
        &mut self,
        params: &[f32],
        ids: &[u32],
        targets: &[u32],
        dropout: Dropout,
        rng: &mut Rng,
    ) -> Result<f32, lstm_core::Error> {
        let mut clock = self.profile.is_some().then(Instant::now);
        let (v, d) = (self.layout.dims.vocab, self.layout.dims.dim);
        let emb = Mat::new(&params[self.layout.embedding.clone()], v, d);
        // `E` and `Eᵀ` are packed for the output layer, and the gradient zeroed (a pass over
        // every parameter, 53 MB for `book`), while the LSTM runs: its recurrence is a chain of
        // small products and cell updates that leaves the other thread mostly free. The work
        // starts with the first layer's recurrence rather than with the forward, so that the
        // first input projection (`book`: 700 × 650 × 2600) gets both threads; same-process
        // A/B: `book` +3.2–3.8% (three runs of 40 steps), `small` and `embedded` ±0.
        // (Zeroing the gradient there rather than after the output layer: +1–1.5%.)
        let (mut tied_t, mut tied) = (std::mem::take(&mut self.tied_t), std::mem::take(&mut self.tied));
        let mut grads = std::mem::take(&mut self.grads);
        let gemm = self.gemm;
        let beside_work = || {
            gemm.prepare(emb.t(), &mut tied_t);
            gemm.prepare(emb, &mut tied);
            crate::update::zero(&mut grads);
        };
        // On a pool thread, so that the products' own splits find the other worker. (A forward
        // that fails before its first recurrence never starts the work; the step fails anyway,
        // and the next one packs and zeroes afresh.)
        let forward = rayon::scope(|scope| {
            let gemm = BesideFirstRecurrence { gemm: &gemm, task: Mutex::new(Some(beside_work)), scope };
            self.forward_hidden(&gemm, params, ids, dropout, rng, true)
        });
        (self.tied_t, self.tied, self.grads) = (tied_t, tied, grads);
        forward?;
        self.lap(&mut clock, 0);
        let rows = targets.len();
        let scale = 1.0 / rows as f32;
        let bias = &params[self.layout.out_bias.clone()];
        // Each block of rows: scores, softmax cross-entropy and its gradient dY in place (three
        // passes over a row: same-process A/B `embedded` +2.2%; the reference `exp`, so training
        // computes the previous release's bits: `fast_exp` here moved a 10-epoch `embedded` run
        // from validation perplexity 148.39 to 149.41 and saved only another 0.8%), then
        // dh = dY·E, all on one thread while the block is in cache. Each block accumulates its
        // own bias gradient; they are summed in block order, so nothing depends on scheduling.
        // The softmax's passes are the backend's (16-lane AVX-512 where available, the same
        // bits as the reference): same-process A/B `embedded` +4.2% (twice), `small` ±0.
        let block_rows = output_block_rows(d, rows);
        let blocks = rows.div_ceil(block_rows);
        self.bias_partials.resize(blocks * v, 0.0);
        self.bias_partials.fill(0.0);
        let (tied_t, tied) = (&self.tied_t, &self.tied);
        let passes = gemm.softmax_passes();
        let top = self.layers.len();
        let sums: Vec<Result<f64, lstm_core::Error>> = self
            .logits
            .par_chunks_mut(v * block_rows)
            .zip(targets.par_chunks(block_rows))
            .zip(self.bias_partials.par_chunks_mut(v))
            .zip(self.inputs[top].par_chunks(d * block_rows))
            .zip(self.grad_a.par_chunks_mut(d * block_rows))
            .map(|((((block, t), db), h), dh)| {
                let n = t.len();
                gemm.gemm_prepared(1.0, Mat::new(h, n, d), emb.t(), tied_t, 0.0, block);
                let loss = softmax_cross_entropy_biased_by(&passes, block, bias, t, scale, db)?;
                gemm.gemm_prepared(1.0, Mat::new(block, n, v), emb, tied, 0.0, dh);
                Ok(loss)
            })
            .collect();
        self.lap(&mut clock, 1);
        let mut total = 0.0f64;
        for s in sums {
            total += s?;
        }
        let (g_rest, g_out) = self.grads.split_at_mut(self.layout.out_bias.start);
        for partial in self.bias_partials.chunks_exact(v) {
            g_out.iter_mut().zip(partial).for_each(|(g, p)| *g += p);
        }
        // The tied output layer's dE += dYᵀ·h runs alongside the LSTM backward pass (again a
        // mostly sequential recurrence); the embedding's own gradient is added after both.
        let lstm_start = self.layout.embedding.end;
        let (g_emb, g_lstm) = g_rest.split_at_mut(lstm_start);
        let g_emb = &mut g_emb[self.layout.embedding.clone()];
        let dy = Mat::new(&self.logits, rows, v);
        let h_top = Mat::new(&self.inputs[top], rows, d);
        let backward = LstmBackward {
            layout: &self.layout,
            gemm,
            layers: &mut self.layers,
            inputs: &self.inputs,
            masks: &self.masks,
            grad_a: &mut self.grad_a,
            grad_b: &mut self.grad_b,
            dropout,
        };
        let ((), lstm) =
            rayon::join(|| gemm.gemm(1.0, dy.t(), h_top, 1.0, g_emb), || backward.run(params, g_lstm, lstm_start));
        lstm?;
        self.lap(&mut clock, 2);
        dropout.backward(&mut self.grad_a, &self.masks[0]);
        embedding_backward(&mut self.grads[self.layout.embedding.clone()], d, ids, &self.grad_a)?;
        self.lap(&mut clock, 3);
        if let Some(p) = &mut self.profile {
            p.steps += 1;
        }
        Ok((total / targets.len() as f64) as f32)
    }

    /// Evaluation forward (no dropout, state carried): the **sum** of negative log-likelihoods.
    /// For many batches with the same parameters, [`Workspace::evaluation`] prepares the output
    /// layer once instead of per batch.
    pub fn eval_step(&mut self, params: &[f32], ids: &[u32], targets: &[u32]) -> Result<f64, lstm_core::Error> {
        self.evaluation(params).step(ids, targets)
    }

    /// An evaluation over many batches with fixed `params` (borrowed for its lifetime, so they
    /// cannot change under it): `Eᵀ`, which every batch's scores multiply by, is packed once
    /// here rather than once per batch.
    pub fn evaluation<'w>(&'w mut self, params: &'w [f32]) -> Evaluation<'w> {
        let (v, d) = (self.layout.dims.vocab, self.layout.dims.dim);
        let emb = Mat::new(&params[self.layout.embedding.clone()], v, d);
        self.gemm.prepare(emb.t(), &mut self.tied_t);
        // The first layer's input projection of every word, `E·Wx` (`V × 4H`): the batches
        // read their rows instead of embedding the words and multiplying them again (the same
        // bits: each element is the same dot product in the same order). `book`: 104 MB and
        // 34 GFLOP (~0.2 s) once per evaluation, then 1.2 GFLOP less per batch: same-process
        // A/B in blocks of six batches, `book` +8–10% per batch, `small` +6–8%, `embedded` ±2%;
        // a pass over PTB's validation split (210 batches) repays it about five times over for `book`.
        let table_len = if self.layers.is_empty() { 0 } else { v * 4 * d };
        if self.eval_input_table.len() != table_len {
            // Fresh zero pages from the allocator, first touched by the product's own threads
            // (filling 104 MB on one thread first cost `book` 0.24 s in page faults).
            self.eval_input_table = vec![0.0; table_len];
        }
        if table_len > 0 {
            let wx0 = self.layout.lstm_weights(params, 0).wx;
            self.gemm.gemm(1.0, emb, Mat::new(wx0, d, 4 * d), 0.0, &mut self.eval_input_table);
        }
        // The other LSTM weights too (`book`: 27 MB packed per batch otherwise).
        let weights: Vec<Mat<'_>> = (0..self.layers.len())
            .flat_map(|l| {
                let w = self.layout.lstm_weights(params, l);
                [(l > 0).then(|| Mat::new(w.wx, d, 4 * d)), Some(Mat::new(w.wh, d, 4 * d))]
            })
            .flatten()
            .collect();
        self.gemm.prepare_all(&weights, &mut self.eval_weights);
        Evaluation { ws: self, params }
    }

    fn eval_step_prepared(&mut self, params: &[f32], ids: &[u32], targets: &[u32]) -> Result<f64, lstm_core::Error> {
        let rows = self.rows();
        for (what, len) in [("evaluation ids", ids.len()), ("evaluation targets", targets.len())] {
            if len != rows {
                return Err(lstm_core::Error::BufferLength { what, expected: rows, actual: len });
            }
        }
        let (v, d) = (self.layout.dims.vocab, self.layout.dims.dim);
        let (batch, time) = (self.batch, self.time);
        let chunk_steps = eval_chunk_steps(d, batch).min(time).max(1);
        let chunks = time.div_ceil(chunk_steps);
        let chunk_rows = |c: usize| c * chunk_steps * batch..time.min((c + 1) * chunk_steps) * batch;
        let weights = std::mem::take(&mut self.eval_weights);
        let prepared = self.gemm.with_prepared(&weights);
        let bias = &params[self.layout.out_bias.clone()];
        let emb = Mat::new(&params[self.layout.embedding.clone()], v, d);
        let (gemm, tied_t, layout) = (self.gemm, &self.tied_t, &self.layout);
        let top = self.layers.len();
        let (lower, upper) = self.inputs.split_at_mut(top);
        let h_top = &mut upper[0][..rows * d];
        let blocks: usize = (0..chunks).map(|c| chunk_rows(c).len().div_ceil(EVAL_BLOCK_ROWS)).sum();
        self.eval_block_sums.clear();
        self.eval_block_sums.resize(blocks, Ok(0.0));
        let mut block_sums = &mut self.eval_block_sums[..];
        // Time chunk `c + 1` runs through the LSTM layers while the output layer scores chunk
        // `c` (see `eval_chunk_steps`). Each block's loss lands in its own slot, added in order
        // at the end, so the sum does not depend on the thread count.
        let (masks, mut unused, table) = (&mut self.masks, Rng::new(0), &self.eval_input_table[..]);
        let mut hidden = |c: usize, out: &mut [f32]| {
            let no_dropout = (Dropout { p: 0.0 }, &mut unused, false);
            hidden_rows(
                &prepared,
                layout,
                &mut self.layers,
                lower,
                out,
                masks,
                no_dropout,
                params,
                &ids[chunk_rows(c)],
                chunk_rows(c),
                (!table.is_empty()).then_some(table),
            )
        };
        let (first, mut pending) = h_top.split_at_mut(chunk_rows(0).len() * d);
        let mut status = hidden(0, first);
        let mut done: &[f32] = first;
        for c in 0..chunks {
            // `status` is chunk `c`'s forward: scoring a chunk that failed would be meaningless.
            if status.is_err() {
                break;
            }
            let blocks = chunk_rows(c).len().div_ceil(EVAL_BLOCK_ROWS);
            let (sums, later) = block_sums.split_at_mut(blocks);
            block_sums = later;
            let pieces = &mut self.eval_pieces;
            let mut score = move || {
                if d > 128 {
                    let h = Mat::new(done, chunk_rows(c).len(), d);
                    return score_by_pieces(gemm, h, emb, tied_t, bias, &targets[chunk_rows(c)], pieces, sums);
                }
                // The scores of a block never leave the thread's cache-resident scratch buffer.
                sums.par_iter_mut()
                    .zip(targets[chunk_rows(c)].par_chunks(EVAL_BLOCK_ROWS))
                    .zip(done.par_chunks(d * EVAL_BLOCK_ROWS))
                    .for_each(|((sum, t), h)| {
                        *sum = SCRATCH.with_borrow_mut(|hot| {
                            hot.resize(t.len() * v, 0.0);
                            gemm.gemm_prepared(1.0, Mat::new(h, t.len(), d), emb.t(), tied_t, 0.0, hot);
                            cross_entropy_sum_biased_with(hot, bias, t, fast_exp::exp)
                        });
                    });
            };
            if c + 1 < chunks {
                let (next, rest) = pending.split_at_mut(chunk_rows(c + 1).len() * d);
                let ((), next_status) = rayon::join(score, || hidden(c + 1, next));
                status = next_status;
                (done, pending) = (next, rest);
            } else {
                score();
            }
        }
        self.eval_weights = weights;
        status?;
        self.eval_block_sums.iter().try_fold(0.0, |total, sum| Ok(total + (*sum)?))
    }

    /// The training loss (dropout drawn from `rng`, like [`Workspace::train_step`]) without the
    /// gradient, accumulated in f64: the reference for finite-difference checks.
    pub fn train_loss(
        &mut self,
        params: &[f32],
        ids: &[u32],
        targets: &[u32],
        dropout: Dropout,
        rng: &mut Rng,
    ) -> Result<f64, lstm_core::Error> {
        self.forward(params, ids, dropout, rng, true)?;
        let bias = &params[self.layout.out_bias.clone()];
        Ok(cross_entropy_sum_biased(&self.logits, bias, targets)? / targets.len() as f64)
    }

    /// Forward only, leaving logits (for prediction and generation with the f32 model).
    pub fn predict(&mut self, params: &[f32], ids: &[u32]) -> Result<&[f32], lstm_core::Error> {
        let mut unused = Rng::new(0);
        self.forward(params, ids, Dropout { p: 0.0 }, &mut unused, false)?;
        let bias = &params[self.layout.out_bias.clone()];
        let v = self.layout.dims.vocab;
        self.logits.chunks_exact_mut(v).for_each(|row| row.iter_mut().zip(bias).for_each(|(z, b)| *z += b));
        Ok(&self.logits)
    }
}
