//! A time-unrolled LSTM layer over `N` parallel streams, with storage fixed at construction.
//!
//! The layer owns one flat buffer `S` (an array on a microcontroller, a `Vec` on the host) that
//! holds everything the backward pass needs. Products are batched for speed: the input
//! projection of all steps is one GEMM, `x·Wx` for `steps·N` rows; the backward weight gradients
//! are one GEMM each over all steps.

use crate::cell::{cell_backward, cell_forward};
use crate::gemm::{Gemm, Mat};
use crate::{Error, check_len};

/// The parameters of one layer: `wx` is `D × 4H`, `wh` is `H × 4H`, `b` is `4H`, gate order f,g,i,o.
#[derive(Debug, Clone, Copy)]
pub struct LstmWeights<'a> {
    /// Input weights, `D × 4H`.
    pub wx: &'a [f32],
    /// Recurrent weights, `H × 4H`.
    pub wh: &'a [f32],
    /// Bias, `4H`.
    pub b: &'a [f32],
}

/// Gradient accumulators with the shapes of [`LstmWeights`]; `backward` adds into them.
#[derive(Debug)]
pub struct LstmGrads<'a> {
    /// d loss / d wx.
    pub wx: &'a mut [f32],
    /// d loss / d wh.
    pub wh: &'a mut [f32],
    /// d loss / d b.
    pub b: &'a mut [f32],
}

/// An LSTM layer of `hidden` units reading `input`-wide vectors, for `batch` streams and at most
/// `capacity` steps per call.
#[derive(Debug, Clone)]
pub struct Lstm<S> {
    input: usize,
    hidden: usize,
    batch: usize,
    capacity: usize,
    stateful: bool,
    /// Steps run by the last `forward`.
    steps: usize,
    /// Whether the state at slot `steps` must be carried into the next `forward`.
    carry: bool,
    /// Whether `gates` still holds activations (not yet turned into `dA` by `backward`).
    tape: bool,
    storage: S,
}

/// Disjoint views of the storage.
struct Parts<'a> {
    gates: &'a mut [f32],
    c: &'a mut [f32],
    h: &'a mut [f32],
    tanh_c: &'a mut [f32],
    dh: &'a mut [f32],
    dc: &'a mut [f32],
}

impl<S: AsRef<[f32]> + AsMut<[f32]>> Lstm<S> {
    /// Number of `f32` the storage must hold: `N·H·(7·capacity + 4)`.
    pub const fn storage_len(hidden: usize, batch: usize, capacity: usize) -> usize {
        batch * hidden * (7 * capacity + 4)
    }

    /// Builds a layer over `storage`, which must hold exactly [`Self::storage_len`] values.
    /// A `stateful` layer carries (h, c) from one `forward` to the next.
    pub fn new(
        input: usize,
        hidden: usize,
        batch: usize,
        capacity: usize,
        stateful: bool,
        mut storage: S,
    ) -> Result<Self, Error> {
        check_len("lstm storage", storage.as_ref().len(), Self::storage_len(hidden, batch, capacity))?;
        storage.as_mut().fill(0.0);
        Ok(Lstm { input, hidden, batch, capacity, stateful, steps: 0, carry: false, tape: false, storage })
    }

    /// Input width D.
    pub fn input(&self) -> usize {
        self.input
    }
    /// Hidden width H.
    pub fn hidden(&self) -> usize {
        self.hidden
    }
    /// Number of parallel streams N.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Maximum steps per call.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Steps run by the last forward pass.
    pub fn steps(&self) -> usize {
        self.steps
    }

    fn parts(&mut self) -> Parts<'_> {
        let nh = self.batch * self.hidden;
        let cap = self.capacity;
        let s = self.storage.as_mut();
        let (gates, s) = s.split_at_mut(4 * cap * nh);
        let (c, s) = s.split_at_mut((cap + 1) * nh);
        let (h, s) = s.split_at_mut((cap + 1) * nh);
        let (tanh_c, s) = s.split_at_mut(cap * nh);
        let (dh, s) = s.split_at_mut(nh);
        let dc = &mut s[..nh];
        Parts { gates, c, h, tanh_c, dh, dc }
    }

    fn h_all(&self) -> &[f32] {
        let nh = self.batch * self.hidden;
        let start = 4 * self.capacity * nh + (self.capacity + 1) * nh;
        &self.storage.as_ref()[start..start + (self.capacity + 1) * nh]
    }

    fn c_all(&self) -> &[f32] {
        let nh = self.batch * self.hidden;
        let start = 4 * self.capacity * nh;
        &self.storage.as_ref()[start..start + (self.capacity + 1) * nh]
    }

    /// Zeroes (h, c); the next `forward` starts from zero.
    pub fn reset_state(&mut self) {
        let nh = self.batch * self.hidden;
        let p = self.parts();
        p.h[..nh].fill(0.0);
        p.c[..nh].fill(0.0);
        self.carry = false;
    }

    /// Sets (h, c) (`N × H` each) for the next `forward`.
    pub fn set_state(&mut self, h: &[f32], c: &[f32]) -> Result<(), Error> {
        let nh = self.batch * self.hidden;
        check_len("lstm state h", h.len(), nh)?;
        check_len("lstm state c", c.len(), nh)?;
        let p = self.parts();
        p.h[..nh].copy_from_slice(h);
        p.c[..nh].copy_from_slice(c);
        self.carry = false;
        Ok(())
    }

    /// The current (h, c): the state after the last step run, or the state set/reset since.
    pub fn state(&self) -> (&[f32], &[f32]) {
        let nh = self.batch * self.hidden;
        let slot = if self.carry { self.steps } else { 0 };
        (&self.h_all()[slot * nh..(slot + 1) * nh], &self.c_all()[slot * nh..(slot + 1) * nh])
    }

    /// Outputs h of the last forward, `steps × N × H`, time-major.
    pub fn output(&self) -> &[f32] {
        let nh = self.batch * self.hidden;
        &self.h_all()[nh..(self.steps + 1) * nh]
    }

    /// Activated gates `[f | g | i | o]` (`N × 4H`) of step `t` of the last forward pass, or
    /// `None` once `backward` has consumed them or past the last step.
    pub fn gates(&self, t: usize) -> Option<&[f32]> {
        if !self.tape || t >= self.steps {
            return None;
        }
        let len = self.batch * 4 * self.hidden;
        Some(&self.storage.as_ref()[t * len..(t + 1) * len])
    }

    /// Gradients of the loss with respect to the initial (h, c) of the last backward pass.
    pub fn first_state_grad(&self) -> (&[f32], &[f32]) {
        let nh = self.batch * self.hidden;
        let s = self.storage.as_ref();
        let start = nh * (7 * self.capacity + 2);
        (&s[start..start + nh], &s[start + nh..start + 2 * nh])
    }

    fn check_weights(&self, w: &LstmWeights<'_>) -> Result<(), Error> {
        let g = 4 * self.hidden;
        check_len("lstm wx", w.wx.len(), self.input * g)?;
        check_len("lstm wh", w.wh.len(), self.hidden * g)?;
        check_len("lstm bias", w.b.len(), g)
    }

    /// Runs `steps` steps on `x` (`steps × N × D`, time-major). The output is in [`Self::output`].
    pub fn forward(&mut self, gemm: &impl Gemm, w: &LstmWeights<'_>, x: &[f32], steps: usize) -> Result<(), Error> {
        check_len("lstm input", x.len(), steps * self.batch * self.input)?;
        let (rows, d, g) = (steps * self.batch, self.input, 4 * self.hidden);
        self.forward_projected(gemm, w, steps, |a_all| {
            gemm.gemm(1.0, Mat::new(x, rows, d), Mat::new(w.wx, d, g), 0.0, a_all);
            Ok(())
        })
    }

    /// [`Self::forward`] for a caller that has the input projection `x·Wx` already: `project`
    /// writes it (`steps × N × 4H`, time-major, without the bias) into the buffer it is given.
    /// An evaluation's first layer reads its rows from a table of `E·Wx`, one row per word,
    /// instead of multiplying the embedded words again every batch. An error from `project`
    /// leaves the state as it was (and no tape: [`Self::backward`] refuses).
    pub fn forward_projected(
        &mut self,
        gemm: &impl Gemm,
        w: &LstmWeights<'_>,
        steps: usize,
        project: impl FnOnce(&mut [f32]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.check_weights(w)?;
        if steps > self.capacity {
            return Err(Error::TooManySteps { steps, capacity: self.capacity });
        }
        let (n, hd) = (self.batch, self.hidden);
        let (nh, g) = (n * hd, 4 * hd);
        let (stateful, carry, last) = (self.stateful, self.carry, self.steps);
        self.tape = false;
        let p = self.parts();
        let a_all = &mut p.gates[..steps * n * g];
        project(a_all)?;
        if !stateful {
            p.h[..nh].fill(0.0);
            p.c[..nh].fill(0.0);
        } else if carry && last > 0 {
            p.h.copy_within(last * nh..(last + 1) * nh, 0);
            p.c.copy_within(last * nh..(last + 1) * nh, 0);
        }
        for row in a_all.chunks_exact_mut(g) {
            row.iter_mut().zip(w.b).for_each(|(a, b)| *a += b);
        }
        gemm.with_rhs(Mat::new(w.wh, hd, g), |wh| {
            for t in 0..steps {
                let a_t = &mut a_all[t * n * g..(t + 1) * n * g];
                let (h_prev, h_next) = p.h.split_at_mut((t + 1) * nh);
                let h_prev = &h_prev[t * nh..];
                wh.gemm(1.0, Mat::new(h_prev, n, hd), 1.0, a_t);
                let (c_prev, c_next) = p.c.split_at_mut((t + 1) * nh);
                let c_prev = &c_prev[t * nh..];
                let tanh_c = &mut p.tanh_c[t * nh..(t + 1) * nh];
                for r in 0..n {
                    let span = r * hd..(r + 1) * hd;
                    cell_forward(
                        &mut a_t[r * g..(r + 1) * g],
                        &c_prev[span.clone()],
                        &mut c_next[span.clone()],
                        &mut tanh_c[span.clone()],
                        &mut h_next[span],
                    );
                }
            }
        });
        self.steps = steps;
        self.carry = true;
        self.tape = true;
        Ok(())
    }

    /// Back-propagates `dh_out` (`steps × N × H`, gradient of the loss with respect to
    /// [`Self::output`]) through the last forward pass. Adds the weight gradients into `grads`,
    /// writes the input gradient into `dx` (`steps × N × D`), and leaves the gradient of the
    /// initial state in [`Self::first_state_grad`]. Consumes the tape.
    pub fn backward(
        &mut self,
        gemm: &impl Gemm,
        w: &LstmWeights<'_>,
        x: &[f32],
        dh_out: &[f32],
        grads: &mut LstmGrads<'_>,
        dx: &mut [f32],
    ) -> Result<(), Error> {
        self.check_weights(w)?;
        check_grads(grads, self.input, self.hidden)?;
        self.backward_data(gemm, w, x, dh_out, dx)?.add_to(gemm, grads)
    }

    /// The part of [`Self::backward`] that the layer below waits for: the recurrence back
    /// through every step and the input gradient `dx`. The weight gradients are returned as
    /// work still to do, which a caller may run beside the next layer's recurrence (a chain of
    /// small products that leaves threads idle). Consumes the tape.
    pub fn backward_data<'s>(
        &'s mut self,
        gemm: &impl Gemm,
        w: &LstmWeights<'_>,
        x: &'s [f32],
        dh_out: &[f32],
        dx: &mut [f32],
    ) -> Result<PendingWeightGrads<'s>, Error> {
        self.check_weights(w)?;
        if !self.tape {
            return Err(Error::NoTape);
        }
        let (n, hd, d, steps) = (self.batch, self.hidden, self.input, self.steps);
        let (nh, g) = (n * hd, 4 * hd);
        check_len("lstm input", x.len(), steps * n * d)?;
        check_len("lstm output gradient", dh_out.len(), steps * nh)?;
        check_len("lstm input gradient", dx.len(), steps * n * d)?;
        self.tape = false;
        let p = self.parts();
        p.dh.fill(0.0);
        p.dc.fill(0.0);
        // `Whᵀ` as a transposed view: a GEMM that prepares its operand (packs it) reads it
        // either way, so no transposed copy is stored.
        gemm.with_rhs(Mat::new(w.wh, hd, g).t(), |wh_t| {
            for t in (0..steps).rev() {
                p.dh.iter_mut().zip(&dh_out[t * nh..(t + 1) * nh]).for_each(|(a, b)| *a += b);
                let da_t = &mut p.gates[t * n * g..(t + 1) * n * g];
                for r in 0..n {
                    let span = r * hd..(r + 1) * hd;
                    cell_backward(
                        &mut da_t[r * g..(r + 1) * g],
                        &p.c[t * nh..(t + 1) * nh][span.clone()],
                        &p.tanh_c[t * nh..(t + 1) * nh][span.clone()],
                        &p.dh[span.clone()],
                        &mut p.dc[span],
                    );
                }
                wh_t.gemm(1.0, Mat::new(da_t, n, g), 0.0, p.dh);
            }
        });
        let da = &p.gates[..steps * n * g];
        gemm.gemm(1.0, Mat::new(da, steps * n, g), Mat::new(w.wx, d, g).t(), 0.0, dx);
        Ok(PendingWeightGrads { x, h: &p.h[..steps * nh], da, rows: steps * n, input: d, hidden: hd })
    }
}

fn check_grads(grads: &LstmGrads<'_>, input: usize, hidden: usize) -> Result<(), Error> {
    let g = 4 * hidden;
    check_len("lstm wx gradient", grads.wx.len(), input * g)?;
    check_len("lstm wh gradient", grads.wh.len(), hidden * g)?;
    check_len("lstm bias gradient", grads.b.len(), g)
}

/// The weight gradients of a backward pass whose recurrence [`Lstm::backward_data`] has run:
/// products over all steps at once (`xᵀ·dA`, `hᵀ·dA`) and the bias' column sums.
#[derive(Debug, Clone, Copy)]
pub struct PendingWeightGrads<'a> {
    /// The layer's input, `rows × D`.
    x: &'a [f32],
    /// The state each step started from, `rows × H`.
    h: &'a [f32],
    /// Gradient of the gates' pre-activations, `rows × 4H`.
    da: &'a [f32],
    rows: usize,
    input: usize,
    hidden: usize,
}

impl PendingWeightGrads<'_> {
    /// Adds the weight gradients into `grads`.
    pub fn add_to(&self, gemm: &impl Gemm, grads: &mut LstmGrads<'_>) -> Result<(), Error> {
        check_grads(grads, self.input, self.hidden)?;
        let (rows, d, hd, g) = (self.rows, self.input, self.hidden, 4 * self.hidden);
        let da = Mat::new(self.da, rows, g);
        gemm.gemm(1.0, Mat::new(self.x, rows, d).t(), da, 1.0, grads.wx);
        gemm.gemm(1.0, Mat::new(self.h, rows, hd).t(), da, 1.0, grads.wh);
        for row in self.da.chunks_exact(g) {
            grads.b.iter_mut().zip(row).for_each(|(a, b)| *a += b);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NaiveGemm, Rng};
    use std::vec;
    use std::vec::Vec;

    /// Sizes of the layers under test: D, H, N, T.
    const D: usize = 5;
    const H: usize = 4;
    const N: usize = 3;
    const T: usize = 6;

    /// `len` values of N(0, 0.25).
    fn random(rng: &mut Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.normal() * 0.5).collect()
    }

    /// `Wx`, `Wh`, `b` of a test layer.
    type Weights = (Vec<f32>, Vec<f32>, Vec<f32>);

    /// Random weights and a stateful layer of the test sizes.
    fn setup(rng: &mut Rng) -> (Weights, Lstm<Vec<f32>>) {
        let g = 4 * H;
        let weights = (random(rng, D * g), random(rng, H * g), random(rng, g));
        let layer = Lstm::new(D, H, N, T, true, vec![0.0; Lstm::<Vec<f32>>::storage_len(H, N, T)]).unwrap();
        (weights, layer)
    }

    /// `backward_data` then `add_to` is `backward` bit for bit (weight gradients added onto
    /// what the accumulators held, `dx`, the initial state's gradient); gradient buffers of the
    /// wrong size are refused by both before anything is written, and `backward` keeps its tape.
    #[test]
    fn split_backward_equals_backward() {
        let (d, h, n, t) = (D, H, N, T);
        let g = 4 * h;
        let mut rng = Rng::new(11);
        let ((wx, wh, b), fresh) = setup(&mut rng);
        let w = LstmWeights { wx: &wx, wh: &wh, b: &b };
        let (x, dh) = (random(&mut rng, t * n * d), random(&mut rng, t * n * h));
        let start = (random(&mut rng, d * g), random(&mut rng, h * g), random(&mut rng, g));
        let run = |split: bool| {
            let mut layer = fresh.clone();
            layer.forward(&NaiveGemm, &w, &x, t).unwrap();
            let (mut gwx, mut gwh, mut gb) = start.clone();
            let mut dx = vec![0.0; t * n * d];
            let mut grads = LstmGrads { wx: &mut gwx, wh: &mut gwh, b: &mut gb };
            if split {
                let pending = layer.backward_data(&NaiveGemm, &w, &x, &dh, &mut dx).unwrap();
                let mut short = vec![0.0; g - 1];
                let mut bad = LstmGrads { wx: &mut vec![0.0; d * g], wh: &mut vec![0.0; h * g], b: &mut short };
                assert_eq!(
                    pending.add_to(&NaiveGemm, &mut bad),
                    Err(Error::BufferLength { what: "lstm bias gradient", expected: g, actual: g - 1 })
                );
                assert!(bad.wx.iter().all(|&v| v == 0.0), "a refused add writes nothing");
                pending.add_to(&NaiveGemm, &mut grads).unwrap();
            } else {
                let mut short = vec![0.0; h * g - 1];
                let mut bad = LstmGrads { wx: &mut vec![0.0; d * g], wh: &mut short, b: &mut vec![0.0; g] };
                let refused = layer.backward(&NaiveGemm, &w, &x, &dh, &mut bad, &mut dx);
                assert_eq!(
                    refused,
                    Err(Error::BufferLength { what: "lstm wh gradient", expected: h * g, actual: h * g - 1 })
                );
                assert!(layer.gates(0).is_some(), "a refused backward keeps the tape");
                layer.backward(&NaiveGemm, &w, &x, &dh, &mut grads, &mut dx).unwrap();
            }
            let (dh0, dc0) = layer.first_state_grad();
            (gwx, gwh, gb, dx, dh0.to_vec(), dc0.to_vec())
        };
        let whole = run(false);
        assert_eq!(run(true), whole);
        assert_ne!(whole.0, start.0, "the weight gradients were added");
    }

    /// `forward_projected` handed `x·Wx` gives `forward`'s outputs bit for bit, call after call
    /// with the state carried; a projection that fails changes nothing (the state the next
    /// call carries, the outputs) and leaves no tape for `backward`.
    #[test]
    fn projected_forward_equals_forward() {
        let (d, h, n, t) = (D, H, N, T);
        let g = 4 * h;
        let mut rng = Rng::new(3);
        let ((wx, wh, b), fresh) = setup(&mut rng);
        let w = LstmWeights { wx: &wx, wh: &wh, b: &b };
        let inputs: Vec<Vec<f32>> = (0..3).map(|_| random(&mut rng, t * n * d)).collect();
        let layer = || fresh.clone();
        let (mut plain, mut projected) = (layer(), layer());
        let wx = &wx;
        let project = |x: &[f32]| {
            let x = x.to_vec();
            move |a_all: &mut [f32]| {
                NaiveGemm.gemm(1.0, Mat::new(&x, t * n, d), Mat::new(wx, d, g), 0.0, a_all);
                Ok(())
            }
        };
        for (call, x) in inputs.iter().enumerate() {
            plain.forward(&NaiveGemm, &w, x, t).unwrap();
            if call == 1 {
                let output = projected.output().to_vec();
                let failed = Error::TokenOutOfRange { id: 7, vocab: 3 };
                assert_eq!(projected.forward_projected(&NaiveGemm, &w, t, |_| Err(failed)), Err(failed));
                assert_eq!(projected.output(), output, "a failed call changes nothing");
                let (mut grads_wx, mut grads_wh, mut grads_b) = (vec![0.0; d * g], vec![0.0; h * g], vec![0.0; g]);
                let mut grads = LstmGrads { wx: &mut grads_wx, wh: &mut grads_wh, b: &mut grads_b };
                let mut dx = vec![0.0; t * n * d];
                let dh = vec![0.0; t * n * h];
                assert_eq!(projected.backward(&NaiveGemm, &w, x, &dh, &mut grads, &mut dx), Err(Error::NoTape));
            }
            projected.forward_projected(&NaiveGemm, &w, t, project(x)).unwrap();
            assert_eq!(plain.output(), projected.output(), "call {call}");
            assert_eq!(plain.state(), projected.state(), "call {call}");
        }
    }
}
