//! Next-word prediction with the int8 model, one token at a time, without a heap.
//!
//! RAM is the (h, c) state of every layer plus a few H-wide scratch vectors and the `K` best
//! candidates: independent of the vocabulary size. The output layer is computed one vocabulary
//! row at a time, read straight from the model bytes, with an online log-sum-exp.
//!
//! Per layer and step: `x` and `h` are quantized per vector (int8, one scale each), every gate
//! pre-activation is `A_j = (Σ q_x·Wx_j)·(s_x·s_j) + (Σ q_h·Wh_j)·(s_h·s'_j) + b_j` with exact
//! i32 sums, and the gate math is `lstm-core`'s [`activate_gates`] / [`update_state`].

use crate::Rng;
use crate::cell::{activate_gates, update_state};
use crate::format::QuantModel;
use crate::quant::{dot_i8, dot_i8_x4, f32_at, quantize};
use crate::sampling::GumbelMax;
use core::cmp::Ordering;

/// Why a prediction could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictError {
    /// A buffer's length is not what [`Predictor::float_len`] / [`Predictor::int_len`] give.
    Buffer {
        /// Expected length.
        expected: usize,
        /// Given length.
        actual: usize,
    },
    /// A token id outside the vocabulary.
    Token {
        /// The id.
        id: u32,
        /// V.
        vocab: usize,
    },
    /// No token has been fed since the last reset.
    NoContext,
}

impl core::fmt::Display for PredictError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            PredictError::Buffer { expected, actual } => write!(f, "buffer of {actual} elements, {expected} needed"),
            PredictError::Token { id, vocab } => write!(f, "token {id} outside the vocabulary of {vocab}"),
            PredictError::NoContext => f.write_str("no token fed yet"),
        }
    }
}

impl core::error::Error for PredictError {}

/// A candidate next word.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Word id.
    pub id: u32,
    /// Probability.
    pub prob: f32,
    /// Logit.
    pub logit: f32,
}

/// Min-heap entry ordered by logit (ties: the smaller id ranks higher, as a stable sort would).
#[derive(Debug, Clone, Copy)]
struct Ranked {
    logit: f32,
    id: u32,
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        self.logit.total_cmp(&other.logit).then_with(|| other.id.cmp(&self.id))
    }
}

/// Running `log Σ exp` over a stream of values.
#[derive(Debug, Clone, Copy)]
struct OnlineLse {
    max: f32,
    sum: f32,
}

impl OnlineLse {
    fn new() -> Self {
        OnlineLse { max: f32::NEG_INFINITY, sum: 0.0 }
    }
    fn push(&mut self, z: f32) {
        if z > self.max {
            self.sum = self.sum * crate::exp::exp(self.max - z) + 1.0;
            self.max = z;
        } else {
            self.sum += crate::exp::exp(z - self.max);
        }
    }
    fn value(&self) -> f32 {
        self.max + libm::logf(self.sum)
    }
}

/// The quantized model with its state.
///
/// `F` holds `f32` storage of [`Predictor::float_len`] elements, `Q` holds `i8` storage of
/// [`Predictor::int_len`]: arrays on a microcontroller, `Vec`s on a host.
#[derive(Debug)]
pub struct Predictor<'m, F, Q> {
    model: QuantModel<'m>,
    floats: F,
    ints: Q,
    /// Scale of the quantized top hidden vector (valid when `fed`).
    top_scale: f32,
    fed: bool,
}

impl<'m, F: AsRef<[f32]> + AsMut<[f32]>, Q: AsRef<[i8]> + AsMut<[i8]>> Predictor<'m, F, Q> {
    /// `f32` storage needed: `2·L·H` state + `D` input + `4H` gates + `2H` scratch.
    pub fn float_len(model: &QuantModel<'_>) -> usize {
        let h = model.dim();
        2 * model.layers() * h + h + 4 * h + 2 * h
    }

    /// `i8` storage needed: two H-wide quantized vectors.
    pub fn int_len(model: &QuantModel<'_>) -> usize {
        2 * model.dim()
    }

    /// A predictor with zero state over `model`.
    pub fn new(model: QuantModel<'m>, mut floats: F, mut ints: Q) -> Result<Self, PredictError> {
        let (fl, il) = (Self::float_len(&model), Self::int_len(&model));
        if floats.as_ref().len() != fl {
            return Err(PredictError::Buffer { expected: fl, actual: floats.as_ref().len() });
        }
        if ints.as_ref().len() != il {
            return Err(PredictError::Buffer { expected: il, actual: ints.as_ref().len() });
        }
        floats.as_mut().fill(0.0);
        ints.as_mut().fill(0);
        Ok(Predictor { model, floats, ints, top_scale: 1.0, fed: false })
    }

    /// The model.
    pub fn model(&self) -> &QuantModel<'m> {
        &self.model
    }

    /// Forgets the context: zero (h, c) in every layer.
    pub fn reset(&mut self) {
        self.floats.as_mut().fill(0.0);
        self.ints.as_mut().fill(0);
        self.fed = false;
    }

    /// The top layer's hidden state after the last token (H values).
    pub fn top_hidden(&self) -> &[f32] {
        let h = self.model.dim();
        let l = self.model.layers() - 1;
        &self.floats.as_ref()[2 * l * h..2 * l * h + h]
    }

    /// Advances the state by one token.
    pub fn feed(&mut self, token: u32) -> Result<(), PredictError> {
        let (v, h) = (self.model.vocab(), self.model.dim());
        if token as usize >= v {
            return Err(PredictError::Token { id: token, vocab: v });
        }
        let layers = self.model.layers();
        let (state, scratch) = self.floats.as_mut().split_at_mut(2 * layers * h);
        let (x, scratch) = scratch.split_at_mut(h);
        let (gates, scratch) = scratch.split_at_mut(4 * h);
        let (c_new, tanh_c) = scratch.split_at_mut(h);
        let (qx, qh) = self.ints.as_mut().split_at_mut(h);
        let (row, scale) = self.model.embedding_row(token as usize);
        for (xi, &q) in x.iter_mut().zip(row) {
            *xi = f32::from(q as i8) * scale;
        }
        for l in 0..layers {
            let blob = self.model.layer(l);
            let (hl, cl) = state[2 * l * h..2 * (l + 1) * h].split_at_mut(h);
            let sx = quantize(x, qx);
            let sh = quantize(hl, qh);
            // Four gate rows per kernel call (4H is a multiple of 4).
            for (((rows_x, rows_h), a4), j0) in blob
                .wx
                .chunks_exact(4 * h)
                .zip(blob.wh.chunks_exact(4 * h))
                .zip(gates.chunks_exact_mut(4))
                .zip((0..).step_by(4))
            {
                let (dx, dh) = (dot_i8_x4(rows_x, qx), dot_i8_x4(rows_h, qh));
                for (r, a) in a4.iter_mut().enumerate() {
                    let j = j0 + r;
                    let ax = dx[r] as f32 * (sx * f32_at(blob.wx_scales, j).unwrap_or(0.0));
                    let ah = dh[r] as f32 * (sh * f32_at(blob.wh_scales, j).unwrap_or(0.0));
                    *a = ax + ah + f32_at(blob.bias, j).unwrap_or(0.0);
                }
            }
            activate_gates(gates);
            update_state(gates, cl, c_new, tanh_c, x);
            cl.copy_from_slice(c_new);
            hl.copy_from_slice(x);
        }
        // Quantize the top hidden state once for the V output rows.
        self.top_scale = quantize(x, qx);
        self.fed = true;
        Ok(())
    }

    /// Logit of word `v` for the current context.
    fn logit(&self, v: usize) -> f32 {
        let h = self.model.dim();
        let (row, scale) = self.model.embedding_row(v);
        dot_i8(row, &self.ints.as_ref()[..h]) as f32 * (self.top_scale * scale) + self.model.out_bias(v)
    }

    /// Calls `f(v, logit)` for every word in order, four rows per kernel call. Walks the
    /// embedding, its scales and the output bias as zipped fixed-size chunks, so the loop
    /// carries no index arithmetic or bounds checks.
    #[inline]
    fn for_each_logit(&self, mut f: impl FnMut(usize, f32)) {
        let (vocab, h) = (self.model.vocab(), self.model.dim());
        let q = &self.ints.as_ref()[..h];
        let p = self.model.payload();
        let top = self.top_scale;
        let groups =
            p.embedding.chunks_exact(4 * h).zip(p.embedding_scales.chunks_exact(16)).zip(p.out_bias.chunks_exact(16));
        let mut v = 0;
        for ((rows, scales), biases) in groups {
            let dots = dot_i8_x4(rows, q);
            for r in 0..4 {
                let scale =
                    f32::from_le_bytes([scales[4 * r], scales[4 * r + 1], scales[4 * r + 2], scales[4 * r + 3]]);
                let bias = f32::from_le_bytes([biases[4 * r], biases[4 * r + 1], biases[4 * r + 2], biases[4 * r + 3]]);
                f(v + r, dots[r] as f32 * (top * scale) + bias);
            }
            v += 4;
        }
        for v in v..vocab {
            f(v, self.logit(v));
        }
    }

    /// The `K` most probable next words, most probable first, with probabilities, in one pass
    /// over the vocabulary.
    pub fn top_k<const K: usize>(&self) -> Result<heapless::Vec<Candidate, K>, PredictError> {
        if !self.fed {
            return Err(PredictError::NoContext);
        }
        let mut lse = OnlineLse::new();
        let mut heap: heapless::BinaryHeap<core::cmp::Reverse<Ranked>, heapless::binary_heap::Max, K> =
            heapless::BinaryHeap::new();
        self.for_each_logit(|v, z| {
            lse.push(z);
            let item = core::cmp::Reverse(Ranked { logit: z, id: v as u32 });
            if heap.len() < K {
                let _ = heap.push(item);
            } else if heap.peek().is_some_and(|worst| item < *worst) {
                let _ = heap.pop();
                let _ = heap.push(item);
            }
        });
        let log_z = lse.value();
        let mut out: heapless::Vec<Candidate, K> = heapless::Vec::new();
        while let Some(core::cmp::Reverse(r)) = heap.pop() {
            let _ = out.push(Candidate { id: r.id, logit: r.logit, prob: crate::exp::exp(r.logit - log_z) });
        }
        out.reverse();
        Ok(out)
    }

    /// Natural-log probability of `target` as the next word.
    pub fn log_prob(&self, target: u32) -> Result<f32, PredictError> {
        if !self.fed {
            return Err(PredictError::NoContext);
        }
        if target as usize >= self.model.vocab() {
            return Err(PredictError::Token { id: target, vocab: self.model.vocab() });
        }
        let mut lse = OnlineLse::new();
        self.for_each_logit(|_, z| lse.push(z));
        Ok(self.logit(target as usize) - lse.value())
    }

    /// Draws the next word from softmax(logits / `temperature`) in one pass
    /// ([`GumbelMax`]). A temperature of 0 (or below) picks the most probable word.
    pub fn sample(&self, temperature: f32, rng: &mut Rng) -> Result<u32, PredictError> {
        if !self.fed {
            return Err(PredictError::NoContext);
        }
        let mut choice = GumbelMax::new(temperature);
        self.for_each_logit(|v, z| choice.push(v as u32, z, rng));
        Ok(choice.winner())
    }
}
