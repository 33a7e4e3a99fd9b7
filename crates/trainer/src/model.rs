//! The "BetterRnnlm": embedding → dropout → L stateful LSTM layers, each followed by dropout →
//! affine output tied to the embedding → softmax cross-entropy.
//!
//! Parameters live in one flat vector (so clipping, SGD and checkpoints see a single buffer);
//! [`Layout`] names its parts. Every equation is `lstm-core`'s; this module only owns buffers
//! and the order of calls.

use crate::gemm::FastGemm;
use lstm_core::dropout::Dropout;
use lstm_core::embedding::{embedding_backward, embedding_forward};
use lstm_core::softmax::{cross_entropy_sum_biased, softmax_cross_entropy_biased};
use lstm_core::{Gemm, Lstm, LstmGrads, LstmWeights, Mat, Rng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::ops::Range;

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
    /// Per-softmax-block output-bias gradients, summed in order.
    bias_partials: Vec<f32>,
    /// Gradient, same layout as the parameters.
    pub grads: Vec<f32>,
}

/// Rows per parallel softmax block.
const SOFTMAX_BLOCK: usize = 16;

impl Workspace {
    /// Buffers for `batch × time` positions of a model with `layout`.
    pub fn new(layout: &Layout, batch: usize, time: usize, gemm: FastGemm) -> Workspace {
        let Dims { vocab, dim, layers } = layout.dims;
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
            grads: vec![0.0; layout.total],
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

    /// Forward to the output scores `h·Eᵀ`, **without** the output bias: the softmax adds it in
    /// the same pass over each row (see `lstm_core::softmax::softmax_cross_entropy_biased`).
    /// `ids` is `time × batch`, time-major.
    fn forward(
        &mut self,
        params: &[f32],
        ids: &[u32],
        dropout: Dropout,
        rng: &mut Rng,
        train: bool,
    ) -> Result<(), lstm_core::Error> {
        let d = self.layout.dims.dim;
        embedding_forward(&params[self.layout.embedding.clone()], d, ids, &mut self.inputs[0])?;
        dropout.forward(&mut self.inputs[0], &mut self.masks[0], rng, train);
        for l in 0..self.layers.len() {
            let w = self.layout.lstm_weights(params, l);
            let (below, above) = self.inputs.split_at_mut(l + 1);
            self.layers[l].forward(&self.gemm, &w, &below[l], self.time)?;
            above[0].copy_from_slice(self.layers[l].output());
            dropout.forward(&mut above[0], &mut self.masks[l + 1], rng, train);
        }
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
        self.forward(params, ids, dropout, rng, true)?;
        let (v, d) = (self.layout.dims.vocab, self.layout.dims.dim);
        let rows = targets.len();
        let scale = 1.0 / rows as f32;
        let bias = &params[self.layout.out_bias.clone()];
        // Each block of rows accumulates its own bias gradient; they are summed in block order,
        // so the result does not depend on scheduling.
        let blocks = rows.div_ceil(SOFTMAX_BLOCK);
        self.bias_partials.resize(blocks * v, 0.0);
        self.bias_partials.fill(0.0);
        let sums: Vec<Result<f64, lstm_core::Error>> = self
            .logits
            .par_chunks_mut(v * SOFTMAX_BLOCK)
            .zip(targets.par_chunks(SOFTMAX_BLOCK))
            .zip(self.bias_partials.par_chunks_mut(v))
            .map(|((block, t), db)| softmax_cross_entropy_biased(block, bias, t, scale, db))
            .collect();
        let mut total = 0.0f64;
        for s in sums {
            total += s?;
        }
        self.grads.fill(0.0);
        let (g_emb_and_lstm, g_out) = self.grads.split_at_mut(self.layout.out_bias.start);
        for partial in self.bias_partials.chunks_exact(v) {
            g_out.iter_mut().zip(partial).for_each(|(g, p)| *g += p);
        }
        // Tied output layer: dE += dYᵀ·h (the output use of the embedding), dh = dY·E.
        let g_emb = &mut g_emb_and_lstm[self.layout.embedding.clone()];
        let emb = Mat::new(&params[self.layout.embedding.clone()], v, d);
        let top = Mat::new(&self.inputs[self.layers.len()], rows, d);
        let dy = Mat::new(&self.logits, rows, v);
        self.gemm.gemm(1.0, dy.t(), top, 1.0, g_emb);
        self.gemm.gemm(1.0, dy, emb, 0.0, &mut self.grad_a);
        for l in (0..self.layers.len()).rev() {
            dropout.backward(&mut self.grad_a, &self.masks[l + 1]);
            let w = self.layout.lstm_weights(params, l);
            let [rwx, rwh, rb] = &self.layout.lstm[l];
            let (lo, hi) = self.grads.split_at_mut(rwh.start);
            let (wh_part, b_part) = hi.split_at_mut(rb.start - rwh.start);
            let mut grads = LstmGrads { wx: &mut lo[rwx.clone()], wh: wh_part, b: &mut b_part[..rb.len()] };
            self.layers[l].backward(&self.gemm, &w, &self.inputs[l], &self.grad_a, &mut grads, &mut self.grad_b)?;
            std::mem::swap(&mut self.grad_a, &mut self.grad_b);
        }
        dropout.backward(&mut self.grad_a, &self.masks[0]);
        embedding_backward(&mut self.grads[self.layout.embedding.clone()], d, ids, &self.grad_a)?;
        Ok((total / targets.len() as f64) as f32)
    }

    /// Evaluation forward (no dropout, state carried): the **sum** of negative log-likelihoods.
    pub fn eval_step(&mut self, params: &[f32], ids: &[u32], targets: &[u32]) -> Result<f64, lstm_core::Error> {
        let mut unused = Rng::new(0);
        self.forward(params, ids, Dropout { p: 0.0 }, &mut unused, false)?;
        let v = self.layout.dims.vocab;
        let bias = &params[self.layout.out_bias.clone()];
        let sums: Vec<Result<f64, lstm_core::Error>> = self
            .logits
            .par_chunks(v * SOFTMAX_BLOCK)
            .zip(targets.par_chunks(SOFTMAX_BLOCK))
            .map(|(block, t)| cross_entropy_sum_biased(block, bias, t))
            .collect();
        sums.into_iter().sum()
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
