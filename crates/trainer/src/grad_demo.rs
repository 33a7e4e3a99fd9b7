//! Why an LSTM: gradient norms flowing backwards through a plain RNN explode or vanish with
//! the recurrent matrix's largest singular value, while the LSTM's memory cell only multiplies
//! element-wise by forget gates. Every number here comes from running the computation.

use crate::gemm::FastGemm;
use lstm_core::activation::tanh;
use lstm_core::gemm::{Gemm, Mat, NaiveGemm};
use lstm_core::optim::clip_grad_norm;
use lstm_core::{Lstm, LstmWeights, Rng};

/// Demo parameters.
#[derive(Debug, Clone, Copy)]
pub struct DemoConfig {
    /// Steps back through time T.
    pub steps: usize,
    /// Hidden size H.
    pub hidden: usize,
    /// Batch N.
    pub batch: usize,
    /// Seed of every random matrix (the default, 9, draws a Wh with σ_max ≈ 1.65: the plain
    /// series explodes and the halved one, σ_max ≈ 0.82, vanishes).
    pub seed: u64,
    /// Clipping threshold applied to the exploding series.
    pub clip: f32,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig { steps: 20, hidden: 3, batch: 2, seed: 9, clip: 5.0 }
    }
}

/// Norm of `dh` divided by N at every step, for each experiment.
#[derive(Debug, Clone)]
pub struct DemoResult {
    /// dh ← dh·Whᵀ with Wh ~ N(0, 1).
    pub rnn: Vec<f32>,
    /// The same with 0.5·Wh.
    pub rnn_scaled: Vec<f32>,
    /// dh ← (dh ⊙ (1 − y²))·Whᵀ over a real tanh RNN forward pass, Wh ~ N(0, 1).
    pub rnn_tanh: Vec<f32>,
    /// The exploding series with dh clipped to `clip` at every step.
    pub rnn_clipped: Vec<f32>,
    /// A unit gradient on the last LSTM cell state, back through dc ← dc ⊙ f only.
    pub lstm_cell: Vec<f32>,
    /// The same LSTM with forget-gate bias 3 (f ≈ 0.95: what training learns where memory
    /// matters): the gradient survives many steps.
    pub lstm_cell_open: Vec<f32>,
    /// Largest singular value of Wh.
    pub sigma_max: f32,
    /// Largest singular value of 0.5·Wh.
    pub sigma_max_scaled: f32,
}

fn norm_per_batch(m: &[f32], batch: usize) -> f32 {
    (m.iter().map(|v| f64::from(*v) * f64::from(*v)).sum::<f64>().sqrt() / batch as f64) as f32
}

fn largest_singular_value(w: &[f32], n: usize) -> f32 {
    let m = nalgebra::DMatrix::from_row_slice(n, n, w);
    m.singular_values().max()
}

/// Back-propagates `ones(N, H)` through `steps` multiplications by `whᵀ`, optionally through
/// tanh outputs `ys[t]` and clipping.
fn backprop(wh: &[f32], cfg: &DemoConfig, ys: Option<&[Vec<f32>]>, clip: Option<f32>) -> Vec<f32> {
    let (n, h) = (cfg.batch, cfg.hidden);
    let mut dh = vec![1.0f32; n * h];
    let mut next = vec![0.0f32; n * h];
    let mut norms = Vec::with_capacity(cfg.steps);
    for t in (0..cfg.steps).rev() {
        if let Some(ys) = ys {
            dh.iter_mut().zip(&ys[t]).for_each(|(d, y)| *d *= 1.0 - y * y);
        }
        NaiveGemm.gemm(1.0, Mat::new(&dh, n, h), Mat::new(wh, h, h).t(), 0.0, &mut next);
        std::mem::swap(&mut dh, &mut next);
        if let Some(threshold) = clip {
            // Clip so that the plotted quantity, ‖dh‖ / N, never exceeds the threshold.
            clip_grad_norm(&mut [&mut dh], threshold * n as f32);
        }
        norms.push(norm_per_batch(&dh, n));
    }
    norms
}

/// Runs every experiment.
pub fn run(cfg: &DemoConfig) -> DemoResult {
    let (n, h, steps) = (cfg.batch, cfg.hidden, cfg.steps);
    let mut rng = Rng::new(cfg.seed);
    let wh: Vec<f32> = (0..h * h).map(|_| rng.normal()).collect();
    let wh_scaled: Vec<f32> = wh.iter().map(|w| w * 0.5).collect();
    let rnn = backprop(&wh, cfg, None, None);
    let rnn_scaled = backprop(&wh_scaled, cfg, None, None);
    let rnn_clipped = backprop(&wh, cfg, None, Some(cfg.clip));

    // A real tanh RNN forward pass with random inputs, then its backward pass.
    let d = h;
    let wx: Vec<f32> = (0..d * h).map(|_| rng.normal()).collect();
    let mut hs = vec![vec![0.0f32; n * h]; steps + 1];
    for t in 0..steps {
        let x: Vec<f32> = (0..n * d).map(|_| rng.normal()).collect();
        let mut a = vec![0.0f32; n * h];
        NaiveGemm.gemm(1.0, Mat::new(&x, n, d), Mat::new(&wx, d, h), 0.0, &mut a);
        NaiveGemm.gemm(1.0, Mat::new(&hs[t], n, h), Mat::new(&wh, h, h), 1.0, &mut a);
        hs[t + 1] = a.iter().map(|&v| tanh(v)).collect();
    }
    let rnn_tanh = backprop(&wh, cfg, Some(&hs[1..]), None);

    // An lstm-core LSTM layer over the same number of steps; the memory-cell path only.
    let lstm_wx: Vec<f32> = (0..d * 4 * h).map(|_| rng.normal() / (d as f32).sqrt()).collect();
    let lstm_wh: Vec<f32> = (0..h * 4 * h).map(|_| rng.normal() / (h as f32).sqrt()).collect();
    let xs: Vec<f32> = (0..steps * n * d).map(|_| rng.normal()).collect();
    let cell_path = |forget_bias: f32| {
        let mut b = vec![0.0f32; 4 * h];
        b[..h].fill(forget_bias);
        let w = LstmWeights { wx: &lstm_wx, wh: &lstm_wh, b: &b };
        let mut layer = Lstm::new(d, h, n, steps, false, vec![0.0; Lstm::<Vec<f32>>::storage_len(h, n, steps)])
            .expect("sized storage");
        layer.forward(&FastGemm::new(1), &w, &xs, steps).expect("shapes match");
        let mut dc = vec![1.0f32; n * h];
        let mut norms = Vec::with_capacity(steps);
        for t in (0..steps).rev() {
            let gates = layer.gates(t).expect("tape present");
            for r in 0..n {
                for k in 0..h {
                    dc[r * h + k] *= gates[r * 4 * h + k]; // forget gate f
                }
            }
            norms.push(norm_per_batch(&dc, n));
        }
        norms
    };
    let lstm_cell = cell_path(0.0);
    let lstm_cell_open = cell_path(3.0);

    DemoResult {
        rnn,
        rnn_scaled,
        rnn_tanh,
        rnn_clipped,
        lstm_cell,
        lstm_cell_open,
        sigma_max: largest_singular_value(&wh, h),
        sigma_max_scaled: largest_singular_value(&wh_scaled, h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_demo_explodes_vanishes_and_clips() {
        let cfg = DemoConfig::default();
        let r = run(&cfg);
        assert_eq!(r.rnn.len(), 20);
        assert!(r.rnn.windows(2).skip(2).all(|w| w[1] > w[0]), "exploding series not increasing: {:?}", r.rnn);
        assert!(r.rnn_scaled.windows(2).all(|w| w[1] < w[0]), "scaled series not decreasing: {:?}", r.rnn_scaled);
        assert!(r.rnn_clipped.iter().all(|&v| v <= cfg.clip * 1.0001));
        assert!(r.rnn_clipped.iter().any(|&v| (v - cfg.clip).abs() < 1e-3), "clipping never engaged");
        assert!(r.sigma_max > 1.0 && r.sigma_max_scaled < r.sigma_max);
        assert!((r.sigma_max_scaled - 0.5 * r.sigma_max).abs() < 1e-5);
        // tanh only ever shrinks the gradient relative to the linear recursion.
        assert!(r.rnn_tanh.last() < r.rnn.last());
        // Forget gates lie in (0, 1): the cell path decays gently, never explodes.
        assert!(r.lstm_cell.windows(2).all(|w| w[1] <= w[0]));
        assert!(r.lstm_cell_open.windows(2).all(|w| w[1] <= w[0]));
        assert!(r.lstm_cell_open[19] > 0.1 * r.lstm_cell_open[0], "an open forget gate keeps the gradient");
    }
}
