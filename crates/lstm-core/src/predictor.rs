//! Next-word prediction with the int8 model, one token at a time, without a heap.
//!
//! RAM is the (h, c) state of every layer, a few H-wide scratch vectors, two packed int16
//! activation vectors and the `K` best candidates: independent of the vocabulary size. The
//! output layer is computed one vocabulary pair at a time, read straight from the model bytes.
//!
//! Per layer and step, the input (layer 0: the embedding row's int8 values and its scale;
//! above: the layer below's `h`) and `h` are quantized at the fixed scale 1/127 (they lie in
//! (−1, 1)), packed as int16 pairs, and every gate pre-activation is
//! `A_j = (Σ q_x·Wx_j)·(s_x·s_j) + (Σ q_h·Wh_j)·(s'_j/127) + b_j` with exact integer sums
//! ([`crate::quant::paired`]); the gate math is `lstm-core`'s [`activate_gates`] /
//! [`update_state`].
//!
//! The output layer is integer-only: logit `v` in units of 1/256 nat is
//! `y = B + ⌊A·M / 2³²⌋` (see [`crate::format`]), and the softmax is taken over these quantized
//! logits with the exact table `e^(−d/256)` of [`crate::exp_table`]: per word one multiply, one
//! compare and one table read, no floating point, the same bits on every target. Rounding a
//! logit down to a multiple of 1/256 nat moves a probability by less than 0.4 %, far below the
//! int8 weights' effect.

use crate::Rng;
use crate::cell::{activate_gates, update_state};
use crate::exp_table::{IntLse, STEPS_PER_NAT};
use crate::format::QuantModel;
use crate::quant::paired::{pack_activations, pair_sums, pair_sums_wide, paired_weight, segments};
use crate::quant::{UNIT_SCALE, f32_at, quantize_unit};
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

/// Min-heap entry ordered by integer logit (ties: the smaller id ranks higher, as a stable
/// sort would).
#[derive(Debug, Clone, Copy)]
struct Ranked {
    logit: i32,
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
        self.logit.cmp(&other.logit).then_with(|| other.id.cmp(&self.id))
    }
}

/// Little-endian f32 number `i` of an 8-byte chunk.
#[inline(always)]
fn f32_le(bytes: &[u8; 8], i: usize) -> f32 {
    let b = &bytes[4 * i..4 * i + 4];
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// `B + ⌊A·M / 2³²⌋` for a one-segment row (cannot overflow: |A| ≤ 2³⁰, M < 2³¹,
/// |B| ≤ 2³⁰).
#[inline(always)]
fn logit_narrow(a: i32, (m, b): (i32, i32)) -> i32 {
    b.wrapping_add(((i64::from(a) * i64::from(m)) >> 32) as i32)
}

/// The same for wider rows, saturated to i32 (equal to [`logit_narrow`] wherever that applies).
fn logit_wide(a: i64, (m, b): (i32, i32)) -> i32 {
    let y = i128::from(b) + ((i128::from(a) * i128::from(m)) >> 32);
    y.clamp(i128::from(i32::MIN), i128::from(i32::MAX)) as i32
}

/// `(M, B)` of two consecutive rows from 16 `logits` bytes.
#[inline(always)]
fn affine_pair(bytes: &[u8; 16]) -> [(i32, i32); 2] {
    let w = |i: usize| i32::from_le_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]]);
    [(w(0), w(1)), (w(2), w(3))]
}

/// The quantized model with its state.
///
/// `F` holds `f32` storage of [`Predictor::float_len`] elements, `Q` holds `i32` storage of
/// [`Predictor::int_len`]: arrays on a microcontroller, `Vec`s on a host.
#[derive(Debug)]
pub struct Predictor<'m, F, Q> {
    model: QuantModel<'m>,
    floats: F,
    ints: Q,
    fed: bool,
}

/// Natural sums `[A_even, A_odd]` of one pair (`A_even` = 256·Σq·x), any width.
#[inline(always)]
fn sums(pair: &[u8], x: &[i32], offsets: &[i32]) -> [i64; 2] {
    match offsets {
        [k] => pair_sums(pair, x, *k).map(i64::from),
        _ => pair_sums_wide(pair, x, offsets),
    }
}

impl<'m, F: AsRef<[f32]> + AsMut<[f32]>, Q: AsRef<[i32]> + AsMut<[i32]>> Predictor<'m, F, Q> {
    /// `f32` storage needed: `2·L·H` state + `D` input + `4H` gates + `2H` scratch.
    pub fn float_len(model: &QuantModel<'_>) -> usize {
        let h = model.dim();
        2 * model.layers() * h + h + 4 * h + 2 * h
    }

    /// `i32` storage needed: two packed int16 vectors of H/2 words, their segment offsets, and
    /// the integer sums of the 4H gate rows against each.
    pub fn int_len(model: &QuantModel<'_>) -> usize {
        2 * (model.dim() / 2 + segments(model.dim())) + 8 * model.dim()
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
        Ok(Predictor { model, floats, ints, fed: false })
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
        let (xq, hq, xk, hk, sums_x, sums_h) = split_ints(self.ints.as_mut(), h);
        let emb = self.model.embedding();
        let token = token as usize;
        pack_activations((0..h).map(|j| i16::from(paired_weight(emb, h, token, j).unwrap_or(0))), xq, xk);
        let mut sx = self.model.embedding_scale(token);
        for l in 0..layers {
            let (wx, wh) = self.model.layer_weights(l);
            let blob = self.model.layer(l);
            let (hl, cl) = state[2 * l * h..2 * (l + 1) * h].split_at_mut(h);
            if l > 0 {
                pack_activations(x.iter().map(|&v| quantize_unit(v)), xq, xk);
                sx = UNIT_SCALE;
            }
            pack_activations(hl.iter().map(|&v| quantize_unit(v)), hq, hk);
            // Two gate rows per pair; even rows' sums carry a factor 256 (exact shift).
            if let ([kx], [kh]) = (&*xk, &*hk) {
                // One segment: i32 sums (and i32 → f32, one instruction on the M4).
                all_pair_sums(wx, xq, *kx, sums_x);
                all_pair_sums(wh, hq, *kh, sums_h);
                let scales = blob.wx_scales.as_chunks::<8>().0.iter().zip(blob.wh_scales.as_chunks::<8>().0);
                let sums = sums_x.as_chunks::<2>().0.iter().zip(sums_h.as_chunks::<2>().0);
                for (((&[x0, x1], &[h0, h1]), (a2, b)), (swx, swh)) in
                    sums.zip(gates.as_chunks_mut::<2>().0.iter_mut().zip(blob.bias.as_chunks::<8>().0)).zip(scales)
                {
                    let (sx0, sx1) = (sx * f32_le(swx, 0), sx * f32_le(swx, 1));
                    let (sh0, sh1) = (UNIT_SCALE * f32_le(swh, 0), UNIT_SCALE * f32_le(swh, 1));
                    a2[0] = (x0 >> 8) as f32 * sx0 + (h0 >> 8) as f32 * sh0 + f32_le(b, 0);
                    a2[1] = x1 as f32 * sx1 + h1 as f32 * sh1 + f32_le(b, 1);
                }
            } else {
                for (((px, ph), a2), j0) in wx
                    .chunks_exact(2 * h)
                    .zip(wh.chunks_exact(2 * h))
                    .zip(gates.chunks_exact_mut(2))
                    .zip((0..).step_by(2))
                {
                    let (ax, ah) = (sums(px, xq, xk), sums(ph, hq, hk));
                    for (r, a) in a2.iter_mut().enumerate() {
                        let j = j0 + r;
                        let shift = if r == 0 { 8 } else { 0 };
                        let dx = (ax[r] >> shift) as f32 * (sx * f32_at(blob.wx_scales, j).unwrap_or(0.0));
                        let dh = (ah[r] >> shift) as f32 * (UNIT_SCALE * f32_at(blob.wh_scales, j).unwrap_or(0.0));
                        *a = dx + dh + f32_at(blob.bias, j).unwrap_or(0.0);
                    }
                }
            }
            activate_gates(gates);
            update_state(gates, cl, c_new, tanh_c, x);
            cl.copy_from_slice(c_new);
            hl.copy_from_slice(x);
        }
        // The top hidden state, quantized once for the V output rows.
        pack_activations(x.iter().map(|&v| quantize_unit(v)), xq, xk);
        self.fed = true;
        Ok(())
    }

    /// The packed top hidden state and its segment offsets.
    fn top(&self) -> (&[i32], &[i32]) {
        let h = self.model.dim();
        let ints = self.ints.as_ref();
        let (xq, rest) = ints.split_at(h / 2);
        (xq, &rest[h / 2..h / 2 + segments(h)])
    }

    /// Integer logit (1/256 nat) of word `v` for the current context.
    fn logit(&self, v: usize) -> i32 {
        let h = self.model.dim();
        let (x, offsets) = self.top();
        let pair = &self.model.embedding()[(v / 2) * 2 * h..(v / 2 + 1) * 2 * h];
        logit_wide(sums(pair, x, offsets)[v % 2], self.model.logit_affine(v))
    }

    /// Calls `f(v, y)` with the integer logit `y` (1/256 nat) of every word in order, one pair
    /// of rows per kernel call, walking the embedding and the `(M, B)` table as zipped
    /// fixed-size chunks: no index arithmetic or bounds checks in the loop.
    #[inline(always)]
    fn for_each_logit(&self, mut f: impl FnMut(usize, i32)) {
        let (vocab, h) = (self.model.vocab(), self.model.dim());
        let (x, offsets) = self.top();
        let pairs = vocab / 2;
        let affine = self.model.payload().logits.as_chunks::<16>().0.iter();
        let mut v = 0;
        let rows = self.model.embedding()[..pairs * 2 * h].chunks_exact(2 * h);
        if let [k] = offsets {
            for (pair, aff) in rows.zip(affine) {
                let [a0, a1] = pair_sums(pair, x, *k);
                let [m0, m1] = affine_pair(aff);
                f(v, logit_narrow(a0, m0));
                f(v + 1, logit_narrow(a1, m1));
                v += 2;
            }
        } else {
            for (pair, aff) in rows.zip(affine) {
                let [a0, a1] = pair_sums_wide(pair, x, offsets);
                let [m0, m1] = affine_pair(aff);
                f(v, logit_wide(a0, m0));
                f(v + 1, logit_wide(a1, m1));
                v += 2;
            }
        }
        // An odd vocabulary's last word has no partner in the (M, B) table.
        for v in v..vocab {
            f(v, self.logit(v));
        }
    }

    /// The integer softmax sums over every word. Logits up to `lse.limit` only add their term;
    /// `candidate(v, y, lse)` receives every other one, in order, and must [`IntLse::push`]
    /// it (and may move the limit, never above `lse.max`; with `max_only`, always to exactly
    /// `lse.max`). On Cortex-M4 the whole pass is one
    /// assembly loop ([`crate::quant`]'s DSP kernel), elsewhere the same arithmetic in Rust.
    #[inline(always)]
    fn softmax_scan(&self, max_only: bool, mut candidate: impl FnMut(usize, i32, &mut IntLse)) -> IntLse {
        let mut lse = IntLse::new();
        #[cfg(arm_dsp)]
        {
            let (vocab, h) = (self.model.vocab(), self.model.dim());
            let (x, offsets) = self.top();
            let pairs = vocab / 2;
            if let [k] = offsets {
                let rows = &self.model.embedding()[..pairs * 2 * h];
                let affine = self.model.payload().logits;
                if crate::quant::scan_logits(max_only, rows, x, *k, affine, &mut lse, &mut candidate) {
                    for v in 2 * pairs..vocab {
                        let y = self.logit(v);
                        if y > lse.limit { candidate(v, y, &mut lse) } else { lse.push(y) }
                    }
                    return lse;
                }
            }
        }
        // The portable loop tests against the limit, whichever it is.
        let _ = max_only;
        self.for_each_logit(|v, y| if y > lse.limit { candidate(v, y, &mut lse) } else { lse.push(y) });
        lse
    }

    /// The `K` most probable next words, most probable first, with probabilities, in one pass
    /// over the vocabulary.
    pub fn top_k<const K: usize>(&self) -> Result<heapless::Vec<Candidate, K>, PredictError> {
        if !self.fed {
            return Err(PredictError::NoContext);
        }
        let mut heap: heapless::BinaryHeap<core::cmp::Reverse<Ranked>, heapless::binary_heap::Max, K> =
            heapless::BinaryHeap::new();
        // Until the heap is full every word is a candidate; then only one with a logit above
        // the worst kept one (a tie loses: its id is larger), which never exceeds the maximum.
        let lse = self.softmax_scan(K == 1, |v, y, lse| {
            lse.push(y);
            lse.limit = admit(&mut heap, Ranked { logit: y, id: v as u32 });
        });
        let mut out: heapless::Vec<Candidate, K> = heapless::Vec::new();
        while let Some(core::cmp::Reverse(r)) = heap.pop() {
            let logit = r.logit as f32 / STEPS_PER_NAT as f32;
            let _ = out.push(Candidate { id: r.id, logit, prob: lse.prob(r.logit) });
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
        let lse = self.softmax_scan(true, |_, y, lse| {
            lse.push(y);
            lse.limit = lse.max;
        });
        Ok(lse.log_prob(self.logit(target as usize)))
    }

    /// Draws the next word from softmax(logits / `temperature`) in one pass
    /// ([`GumbelMax`]). A temperature of 0 (or below) picks the most probable word.
    pub fn sample(&self, temperature: f32, rng: &mut Rng) -> Result<u32, PredictError> {
        if !self.fed {
            return Err(PredictError::NoContext);
        }
        let mut choice = GumbelMax::new(temperature);
        self.for_each_logit(|v, y| choice.push(v as u32, y as f32 / STEPS_PER_NAT as f32, rng));
        Ok(choice.winner())
    }
}

/// Puts `item` into the top-`K` heap (dropping the worst when full) and returns the logit a
/// later word must exceed to enter: `i32::MIN` while the heap has room.
#[inline(always)]
fn admit<const K: usize>(
    heap: &mut heapless::BinaryHeap<core::cmp::Reverse<Ranked>, heapless::binary_heap::Max, K>,
    item: Ranked,
) -> i32 {
    if heap.len() == K {
        let _ = heap.pop();
    }
    let _ = heap.push(core::cmp::Reverse(item));
    if heap.len() == K { heap.peek().map_or(i32::MIN, |w| w.0.logit) } else { i32::MIN }
}

/// The parts of `ints`.
type Ints<'a> = (&'a mut [i32], &'a mut [i32], &'a mut [i32], &'a mut [i32], &'a mut [i32], &'a mut [i32]);

/// `ints` → packed input, packed hidden state, their segment offsets, and the gate sums
/// against each.
fn split_ints(ints: &mut [i32], h: usize) -> Ints<'_> {
    let (xq, rest) = ints.split_at_mut(h / 2);
    let (hq, rest) = rest.split_at_mut(h / 2);
    let (xk, rest) = rest.split_at_mut(segments(h));
    let (hk, rest) = rest.split_at_mut(segments(h));
    let (sums_x, sums_h) = rest.split_at_mut(4 * h);
    (xq, hq, xk, hk, sums_x, sums_h)
}

/// `[A_even, A_odd]` of every pair of a one-segment matrix into `out` (two words per pair):
/// one assembly loop on the Cortex-M4, [`pair_sums`] elsewhere.
fn all_pair_sums(blob: &[u8], x: &[i32], offset: i32, out: &mut [i32]) {
    #[cfg(arm_dsp)]
    if crate::quant::all_pair_sums(blob, x, offset, out) {
        return;
    }
    for (pair, o) in blob.chunks_exact(4 * x.len().max(1)).zip(out.as_chunks_mut::<2>().0) {
        *o = pair_sums(pair, x, offset);
    }
}
