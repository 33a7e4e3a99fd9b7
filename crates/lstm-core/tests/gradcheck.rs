//! Finite-difference gradient checks for every layer and for a tiny tied two-layer model.
//!
//! Central differences on the f32 forward pass with the loss accumulated in f64; each analytic
//! gradient element must match to a relative error of 1e-3 (with a 1e-5 absolute floor for
//! elements that are nearly zero).

use lstm_core::affine::{affine_backward, affine_forward};
use lstm_core::cell::{cell_backward, cell_forward};
use lstm_core::dropout::Dropout;
use lstm_core::embedding::{embedding_backward, embedding_forward};
use lstm_core::softmax::{cross_entropy_sum, softmax_cross_entropy};
use lstm_core::{Lstm, LstmGrads, LstmWeights, Mat, NaiveGemm, Rng};

const EPS: f32 = 1e-2;
const REL_TOL: f64 = 1e-3;
const ABS_FLOOR: f64 = 1e-5;

fn random(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal() * scale).collect()
}

fn weighted_sum(values: &[f32], weights: &[f32]) -> f64 {
    values.iter().zip(weights).map(|(&v, &w)| f64::from(v) * f64::from(w)).sum()
}

/// Compares `analytic` with central differences of `loss` around `x`; returns the worst
/// relative error.
fn check(name: &str, x: &[f32], analytic: &[f32], mut loss: impl FnMut(&[f32]) -> f64) -> f64 {
    assert_eq!(x.len(), analytic.len(), "{name}: gradient length");
    let mut probe = x.to_vec();
    let mut worst = 0.0f64;
    for k in 0..x.len() {
        probe[k] = x[k] + EPS;
        let up = loss(&probe);
        probe[k] = x[k] - EPS;
        let down = loss(&probe);
        probe[k] = x[k];
        let numeric = (up - down) / (2.0 * f64::from(EPS));
        let a = f64::from(analytic[k]);
        let err = (a - numeric).abs();
        let scale = a.abs().max(numeric.abs());
        assert!(err <= REL_TOL * scale + ABS_FLOOR, "{name}[{k}]: analytic {a:.8e} vs numeric {numeric:.8e}");
        if scale > 1e-2 {
            worst = worst.max(err / scale);
        }
    }
    worst
}

#[test]
fn cell() {
    let h = 3;
    let mut rng = Rng::new(1);
    let a0 = random(&mut rng, 4 * h, 1.0);
    let c_prev = random(&mut rng, h, 1.0);
    let (rh, rc) = (random(&mut rng, h, 1.0), random(&mut rng, h, 1.0));
    let forward = |a: &[f32], c_prev: &[f32]| {
        let mut a = a.to_vec();
        let (mut c, mut tc, mut hh) = (vec![0.0; h], vec![0.0; h], vec![0.0; h]);
        cell_forward(&mut a, c_prev, &mut c, &mut tc, &mut hh);
        (a, c, tc, hh)
    };
    let loss = |a: &[f32], c_prev: &[f32]| {
        let (_, c, _, hh) = forward(a, c_prev);
        weighted_sum(&hh, &rh) + weighted_sum(&c, &rc)
    };
    let (mut gates, _, tc, _) = forward(&a0, &c_prev);
    let mut dc = rc.clone();
    cell_backward(&mut gates, &c_prev, &tc, &rh, &mut dc);
    check("cell dA", &a0, &gates, |a| loss(a, &c_prev));
    check("cell dc_prev", &c_prev, &dc, |c| loss(&a0, c));
}

struct LayerCase {
    d: usize,
    h: usize,
    n: usize,
    steps: usize,
    wx: Vec<f32>,
    wh: Vec<f32>,
    b: Vec<f32>,
}

impl LayerCase {
    fn layer(&self, capacity: usize) -> Lstm<Vec<f32>> {
        let len = Lstm::<Vec<f32>>::storage_len(self.h, self.n, capacity);
        Lstm::new(self.d, self.h, self.n, capacity, true, vec![0.0; len]).unwrap()
    }
    fn weights(&self) -> LstmWeights<'_> {
        LstmWeights { wx: &self.wx, wh: &self.wh, b: &self.b }
    }
}

#[test]
fn layer_carries_state_and_matches_finite_differences() {
    let mut rng = Rng::new(2);
    let (d, h, n, steps) = (3, 4, 2, 5);
    let case = LayerCase {
        d,
        h,
        n,
        steps,
        wx: random(&mut rng, d * 4 * h, 0.5),
        wh: random(&mut rng, h * 4 * h, 0.5),
        b: random(&mut rng, 4 * h, 0.5),
    };
    let x1 = random(&mut rng, steps * n * d, 1.0);
    let x2 = random(&mut rng, steps * n * d, 1.0);

    // Two stateful calls of 5 steps equal one call of 10 steps.
    let mut split = case.layer(steps);
    split.forward(&NaiveGemm, &case.weights(), &x1, steps).unwrap();
    let first = split.output().to_vec();
    let (h_mid, c_mid) = (split.state().0.to_vec(), split.state().1.to_vec());
    split.forward(&NaiveGemm, &case.weights(), &x2, steps).unwrap();
    let second = split.output().to_vec();
    let mut whole = case.layer(2 * steps);
    let x12: Vec<f32> = x1.iter().chain(&x2).copied().collect();
    whole.forward(&NaiveGemm, &case.weights(), &x12, 2 * steps).unwrap();
    let joined: Vec<f32> = first.iter().chain(&second).copied().collect();
    for (a, b) in joined.iter().zip(whole.output()) {
        assert!((a - b).abs() < 1e-6, "carried state differs from one long run");
    }

    // Gradient of the second call, from the carried (non-zero) state.
    let r = random(&mut rng, steps * n * h, 1.0);
    let run = |wx: &[f32], wh: &[f32], b: &[f32], x: &[f32], h0: &[f32], c0: &[f32]| {
        let mut layer = case.layer(case.steps);
        layer.set_state(h0, c0).unwrap();
        layer.forward(&NaiveGemm, &LstmWeights { wx, wh, b }, x, case.steps).unwrap();
        weighted_sum(layer.output(), &r)
    };
    let mut layer = case.layer(steps);
    layer.set_state(&h_mid, &c_mid).unwrap();
    layer.forward(&NaiveGemm, &case.weights(), &x2, steps).unwrap();
    let (mut gwx, mut gwh, mut gb) = (vec![0.0; case.wx.len()], vec![0.0; case.wh.len()], vec![0.0; case.b.len()]);
    let mut dx = vec![0.0; x2.len()];
    let mut grads = LstmGrads { wx: &mut gwx, wh: &mut gwh, b: &mut gb };
    layer.backward(&NaiveGemm, &case.weights(), &x2, &r, &mut grads, &mut dx).unwrap();
    let (dh0, dc0) = (layer.first_state_grad().0.to_vec(), layer.first_state_grad().1.to_vec());
    let (wx, wh, b) = (&case.wx, &case.wh, &case.b);
    check("layer dWx", wx, &gwx, |p| run(p, wh, b, &x2, &h_mid, &c_mid));
    check("layer dWh", wh, &gwh, |p| run(wx, p, b, &x2, &h_mid, &c_mid));
    check("layer db", b, &gb, |p| run(wx, wh, p, &x2, &h_mid, &c_mid));
    check("layer dx", &x2, &dx, |p| run(wx, wh, b, p, &h_mid, &c_mid));
    check("layer dh0", &h_mid, &dh0, |p| run(wx, wh, b, &x2, p, &c_mid));
    check("layer dc0", &c_mid, &dc0, |p| run(wx, wh, b, &x2, &h_mid, p));

    // The tape is consumed: a second backward without forward is refused.
    let mut grads = LstmGrads { wx: &mut gwx, wh: &mut gwh, b: &mut gb };
    assert_eq!(
        layer.backward(&NaiveGemm, &case.weights(), &x2, &r, &mut grads, &mut dx),
        Err(lstm_core::Error::NoTape)
    );
}

#[test]
fn embedding_with_repeated_ids() {
    let mut rng = Rng::new(3);
    let (v, d) = (5, 3);
    let table = random(&mut rng, v * d, 1.0);
    let ids = [1u32, 4, 1, 1, 0];
    let r = random(&mut rng, ids.len() * d, 1.0);
    let loss = |t: &[f32]| {
        let mut out = vec![0.0; ids.len() * d];
        embedding_forward(t, d, &ids, &mut out).unwrap();
        weighted_sum(&out, &r)
    };
    let mut grad = vec![0.0; v * d];
    embedding_backward(&mut grad, d, &ids, &r).unwrap();
    check("embedding", &table, &grad, loss);
    assert_eq!(grad[3 * d..4 * d], [0.0; 3], "unused row gets no gradient");
}

#[test]
fn affine_plain_and_transposed() {
    let mut rng = Rng::new(4);
    let (m, d, o) = (3, 4, 5);
    let x = random(&mut rng, m * d, 1.0);
    let b = random(&mut rng, o, 1.0);
    let r = random(&mut rng, m * o, 1.0);
    for transposed in [false, true] {
        let w = random(&mut rng, d * o, 1.0);
        fn wm(w: &[f32], transposed: bool, d: usize, o: usize) -> Mat<'_> {
            if transposed { Mat::new(w, o, d).t() } else { Mat::new(w, d, o) }
        }
        let loss = |x: &[f32], w: &[f32], b: &[f32]| {
            let mut y = vec![0.0; m * o];
            affine_forward(&NaiveGemm, x, wm(w, transposed, d, o), b, &mut y).unwrap();
            weighted_sum(&y, &r)
        };
        let (mut dw, mut db, mut dx) = (vec![0.0; d * o], vec![0.0; o], vec![0.0; m * d]);
        affine_backward(&NaiveGemm, &x, wm(&w, transposed, d, o), &r, &mut dw, &mut db, &mut dx).unwrap();
        check("affine dx", &x, &dx, |p| loss(p, &w, &b));
        check("affine dW", &w, &dw, |p| loss(&x, p, &b));
        check("affine db", &b, &db, |p| loss(&x, &w, p));
    }
}

#[test]
fn softmax_cross_entropy_gradient() {
    let mut rng = Rng::new(5);
    let (m, v) = (4, 6);
    let logits = random(&mut rng, m * v, 2.0);
    let targets = [0u32, 5, 2, 2];
    let mut grad = logits.clone();
    let loss = softmax_cross_entropy(&mut grad, v, &targets).unwrap();
    let reference = cross_entropy_sum(&logits, v, &targets).unwrap() / m as f64;
    assert!((f64::from(loss) - reference).abs() < 1e-6);
    check("softmax-ce", &logits, &grad, |p| cross_entropy_sum(p, v, &targets).unwrap() / m as f64);
}

/// Embedding → dropout → LSTM → dropout → LSTM → dropout → affine tied to the embedding → loss.
struct TinyModel {
    v: usize,
    d: usize,
    n: usize,
    steps: usize,
    ids: Vec<u32>,
    targets: Vec<u32>,
    dropout: Dropout,
}

impl TinyModel {
    fn ranges(&self) -> [std::ops::Range<usize>; 8] {
        let (v, d) = (self.v, self.d);
        let sizes = [v * d, d * 4 * d, d * 4 * d, 4 * d, d * 4 * d, d * 4 * d, 4 * d, v];
        let mut start = 0;
        sizes.map(|s| {
            start += s;
            start - s..start
        })
    }

    /// Loss and, when `grad` is given, its gradient with respect to the flat parameters.
    fn run(&self, params: &[f32], grad: Option<&mut [f32]>) -> f64 {
        let (v, d, n, t) = (self.v, self.d, self.n, self.steps);
        let [emb, wx1, wh1, b1, wx2, wh2, b2, ob] = self.ranges();
        let rows = n * t;
        let mut rng = Rng::new(77);
        let new_layer = || {
            let len = Lstm::<Vec<f32>>::storage_len(d, n, t);
            Lstm::new(d, d, n, t, true, vec![0.0; len]).unwrap()
        };
        let (mut l1, mut l2) = (new_layer(), new_layer());
        let w1 = LstmWeights { wx: &params[wx1.clone()], wh: &params[wh1.clone()], b: &params[b1.clone()] };
        let w2 = LstmWeights { wx: &params[wx2.clone()], wh: &params[wh2.clone()], b: &params[b2.clone()] };
        let mut x0 = vec![0.0; rows * d];
        embedding_forward(&params[emb.clone()], d, &self.ids, &mut x0).unwrap();
        let (mut m0, mut m1, mut m2) = (vec![0.0; rows * d], vec![0.0; rows * d], vec![0.0; rows * d]);
        self.dropout.forward(&mut x0, &mut m0, &mut rng, true);
        l1.forward(&NaiveGemm, &w1, &x0, t).unwrap();
        let mut x1 = l1.output().to_vec();
        self.dropout.forward(&mut x1, &mut m1, &mut rng, true);
        l2.forward(&NaiveGemm, &w2, &x1, t).unwrap();
        let mut x2 = l2.output().to_vec();
        self.dropout.forward(&mut x2, &mut m2, &mut rng, true);
        let tied = Mat::new(&params[emb.clone()], v, d).t();
        let mut logits = vec![0.0; rows * v];
        affine_forward(&NaiveGemm, &x2, tied, &params[ob.clone()], &mut logits).unwrap();
        let Some(grad) = grad else {
            return cross_entropy_sum(&logits, v, &self.targets).unwrap() / rows as f64;
        };
        grad.fill(0.0);
        let loss = softmax_cross_entropy(&mut logits, v, &self.targets).unwrap();
        let mut dx2 = vec![0.0; rows * d];
        let (g_emb, rest) = grad.split_at_mut(emb.end);
        let (g_l1, rest) = rest.split_at_mut(b1.end - emb.end);
        let (g_l2, g_ob) = rest.split_at_mut(b2.end - b1.end);
        affine_backward(&NaiveGemm, &x2, tied, &logits, g_emb, g_ob, &mut dx2).unwrap();
        self.dropout.backward(&mut dx2, &m2);
        let mut dx1 = vec![0.0; rows * d];
        let (gwx, rest) = g_l2.split_at_mut(d * 4 * d);
        let (gwh, gb) = rest.split_at_mut(d * 4 * d);
        l2.backward(&NaiveGemm, &w2, &x1, &dx2, &mut LstmGrads { wx: gwx, wh: gwh, b: gb }, &mut dx1).unwrap();
        self.dropout.backward(&mut dx1, &m1);
        let mut dx0 = vec![0.0; rows * d];
        let (gwx, rest) = g_l1.split_at_mut(d * 4 * d);
        let (gwh, gb) = rest.split_at_mut(d * 4 * d);
        l1.backward(&NaiveGemm, &w1, &x0, &dx1, &mut LstmGrads { wx: gwx, wh: gwh, b: gb }, &mut dx0).unwrap();
        self.dropout.backward(&mut dx0, &m0);
        embedding_backward(g_emb, d, &self.ids, &dx0).unwrap();
        f64::from(loss)
    }
}

#[test]
fn tiny_tied_two_layer_model() {
    let mut rng = Rng::new(6);
    let (v, d, n, steps) = (7, 4, 2, 5);
    let model = TinyModel {
        v,
        d,
        n,
        steps,
        // Ids 5 and 6 never occur as input: their embedding rows get gradient only through the
        // tied output layer, rows 0..5 through both uses.
        ids: (0..n * steps).map(|k| (k * 3 % 5) as u32).collect(),
        targets: (0..n * steps).map(|k| ((k * 5 + 1) % v) as u32).collect(),
        dropout: Dropout { p: 0.3 },
    };
    let total = model.ranges()[7].end;
    let params = random(&mut rng, total, 0.5);
    let mut grad = vec![0.0; total];
    let loss = model.run(&params, Some(&mut grad));
    assert!((loss - model.run(&params, None)).abs() < 1e-5);
    let worst = check("tiny model", &params, &grad, |p| model.run(p, None));
    assert!(worst < REL_TOL, "worst relative error {worst}");
    // The finite differences above perturb both uses of the tied matrix at once, so the check
    // proves its gradient is the sum of both. Rows never used as input still learn.
    assert!(grad[5 * d..7 * d].iter().all(|&g| g != 0.0));
}
