//! One LSTM cell step on a fused pre-activation, and its exact backward pass.
//!
//! Forward, for one row of width `4H` laid out `[f | g | i | o]`:
//! `f = σ(A_f)`, `g = tanh(A_g)`, `i = σ(A_i)`, `o = σ(A_o)`,
//! `c = f⊙c_prev + g⊙i`, `h = o⊙tanh(c)`.
//!
//! Backward, the classic derivation:
//! `ds = dc + dh⊙o⊙(1−tanh²c)`, `dc_prev = ds⊙f`, `df = ds⊙c_prev`, `dg = ds⊙i`, `di = ds⊙g`,
//! `do = dh⊙tanh c`, then through each nonlinearity to `dA`.

use crate::activation::{sigmoid, sigmoid_grad_from_output, tanh, tanh_grad_from_output};

/// Offsets of the four gates inside a `4H` row.
#[derive(Debug, Clone, Copy)]
pub struct GateLayout {
    /// Hidden size H.
    pub hidden: usize,
}

impl GateLayout {
    /// Forget gate range.
    pub fn f(&self) -> core::ops::Range<usize> {
        0..self.hidden
    }
    /// Candidate (g) range.
    pub fn g(&self) -> core::ops::Range<usize> {
        self.hidden..2 * self.hidden
    }
    /// Input gate range.
    pub fn i(&self) -> core::ops::Range<usize> {
        2 * self.hidden..3 * self.hidden
    }
    /// Output gate range.
    pub fn o(&self) -> core::ops::Range<usize> {
        3 * self.hidden..4 * self.hidden
    }
}

/// Applies the gate nonlinearities in place: `a` holds `A` on entry and `[f|g|i|o]` on exit.
#[inline]
pub fn activate_gates(a: &mut [f32]) {
    let h = a.len() / 4;
    let (sig_f, rest) = a.split_at_mut(h);
    let (tanh_g, sig_io) = rest.split_at_mut(h);
    sig_f.iter_mut().chain(sig_io.iter_mut()).for_each(|v| *v = sigmoid(*v));
    tanh_g.iter_mut().for_each(|v| *v = tanh(*v));
}

/// State update from activated gates: writes `c`, `tanh(c)` and `h`.
#[inline]
pub fn update_state(gates: &[f32], c_prev: &[f32], c: &mut [f32], tanh_c: &mut [f32], h: &mut [f32]) {
    let n = c_prev.len();
    let (f, rest) = gates.split_at(n);
    let (g, rest) = rest.split_at(n);
    let (i, o) = rest.split_at(n);
    for k in 0..n {
        let ck = f[k] * c_prev[k] + g[k] * i[k];
        let tk = tanh(ck);
        c[k] = ck;
        tanh_c[k] = tk;
        h[k] = o[k] * tk;
    }
}

/// Full cell forward: `a` (4H) holds the pre-activation on entry and the activated gates on exit
/// (kept for the backward pass); `c`, `tanh_c` and `h` (H each) receive the new state.
#[inline]
pub fn cell_forward(a: &mut [f32], c_prev: &[f32], c: &mut [f32], tanh_c: &mut [f32], h: &mut [f32]) {
    debug_assert_eq!(a.len(), 4 * c_prev.len());
    activate_gates(a);
    update_state(a, c_prev, c, tanh_c, h);
}

/// Cell backward.
///
/// - `gates` (4H): the activated gates from the forward pass on entry, `dA` on exit.
/// - `c_prev`, `tanh_c` (H): from the forward pass.
/// - `dh` (H): gradient arriving at this step's `h` (from above and from the next step).
/// - `dc` (H): gradient of this step's `c` from the next step on entry, `dc_prev` on exit.
#[inline]
pub fn cell_backward(gates: &mut [f32], c_prev: &[f32], tanh_c: &[f32], dh: &[f32], dc: &mut [f32]) {
    let n = c_prev.len();
    debug_assert_eq!(gates.len(), 4 * n);
    let (f, rest) = gates.split_at_mut(n);
    let (g, rest) = rest.split_at_mut(n);
    let (i, o) = rest.split_at_mut(n);
    for k in 0..n {
        let (fk, gk, ik, ok, tk) = (f[k], g[k], i[k], o[k], tanh_c[k]);
        let ds = dc[k] + dh[k] * ok * tanh_grad_from_output(tk);
        dc[k] = ds * fk;
        let df = ds * c_prev[k];
        let dg = ds * ik;
        let di = ds * gk;
        let d_o = dh[k] * tk;
        f[k] = df * sigmoid_grad_from_output(fk);
        g[k] = dg * tanh_grad_from_output(gk);
        i[k] = di * sigmoid_grad_from_output(ik);
        o[k] = d_o * sigmoid_grad_from_output(ok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::vec_mat;

    /// A hand-built step with D = 1, H = 2, every intermediate written out (values computed in f64 outside Rust)
    /// (x = 0.5, h_prev = [0.1, −0.2], c_prev = [0.3, −0.4]).
    #[test]
    fn golden_step_two_units() {
        let x = [0.5f32];
        let h_prev = [0.1f32, -0.2];
        let c_prev = [0.3f32, -0.4];
        // Wx: 1 × 8, Wh: 2 × 8, b: 8, gate order f f g g i i o o.
        let wx = [0.2f32, -0.1, 0.4, 0.3, -0.5, 0.6, 0.1, -0.2];
        let wh = [
            0.5f32, 0.1, -0.3, 0.2, 0.0, -0.4, 0.3, 0.1, //
            -0.2, 0.3, 0.1, -0.1, 0.2, 0.5, -0.6, 0.4,
        ];
        let b = [1.0f32, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let mut a = [0.0f32; 8];
        let mut hw = [0.0f32; 8];
        vec_mat(&x, &wx, &mut a);
        vec_mat(&h_prev, &wh, &mut hw);
        for k in 0..8 {
            a[k] += hw[k] + b[k];
        }
        // A = x·Wx + h·Wh + b, by hand:
        // f1: 0.1 + 0.05 + 0.04 + 1 = 1.19        f2: −0.05 + 0.01 − 0.06 + 1 = 0.90
        // g1: 0.2 − 0.03 − 0.02 = 0.15            g2: 0.15 + 0.02 + 0.02 = 0.19
        // i1: −0.25 + 0 − 0.04 = −0.29            i2: 0.3 − 0.04 − 0.1 = 0.16
        // o1: 0.05 + 0.03 + 0.12 = 0.20           o2: −0.1 + 0.01 − 0.08 = −0.17
        let a_want = [1.19, 0.90, 0.15, 0.19, -0.29, 0.16, 0.20, -0.17];
        for k in 0..8 {
            assert!((a[k] - a_want[k]).abs() < 1e-6, "A[{k}] = {}", a[k]);
        }
        let (mut c, mut tc, mut h) = ([0.0f32; 2], [0.0f32; 2], [0.0f32; 2]);
        cell_forward(&mut a, &c_prev, &mut c, &mut tc, &mut h);
        // f = σ(1.19), σ(0.90); g = tanh(0.15), tanh(0.19); i = σ(−0.29), σ(0.16);
        // o = σ(0.20), σ(−0.17):
        let f = [0.766_741_064_228_542_7_f64, 0.710_949_502_625_003_9];
        let g = [0.148_885_033_623_318_f64, 0.187_746_205_868_285_4];
        let i = [0.428_003_867_068_481_4_f64, 0.539_914_884_555_565_7];
        let o = [0.549_833_997_312_478_f64, 0.457_602_059_225_649];
        // c = f·c_prev + g·i; h = o·tanh(c):
        let c_want = [
            f[0] * 0.3 + g[0] * i[0],  // 0.293746...
            f[1] * -0.4 + g[1] * i[1], // −0.183013...
        ];
        let h_want = [o[0] * c_want[0].tanh(), o[1] * c_want[1].tanh()];
        let gates_want = [f[0], f[1], g[0], g[1], i[0], i[1], o[0], o[1]];
        for k in 0..8 {
            assert!((f64::from(a[k]) - gates_want[k]).abs() < 1e-6, "gate {k}");
        }
        for k in 0..2 {
            assert!((f64::from(c[k]) - c_want[k]).abs() < 1e-6, "c[{k}] = {}", c[k]);
            assert!((f64::from(h[k]) - h_want[k]).abs() < 1e-6, "h[{k}] = {}", h[k]);
        }
        // The written-out values of the new state.
        assert!((f64::from(c[0]) - 0.293_745_689_407_963_8).abs() < 1e-6);
        assert!((f64::from(c[1]) - -0.183_012_829_982_880_8).abs() < 1e-6);
        assert!((f64::from(h[0]) - 0.157_020_872_365_096_3).abs() < 1e-6);
        assert!((f64::from(h[1]) - -0.082_824_407_564_136).abs() < 1e-6);
    }

    /// Golden backward values for a one-unit cell, worked by hand from the formulas.
    #[test]
    fn golden_backward_one_unit() {
        // Gates f=0.5, g=0.2, i=0.6, o=0.7; c_prev=0.4 → c=0.32, tanh c.
        let c_prev = [0.4f32];
        let tc = [libm::tanhf(0.32)];
        let mut gates = [0.5f32, 0.2, 0.6, 0.7];
        let dh = [1.0f32];
        let mut dc = [0.5f32];
        cell_backward(&mut gates, &c_prev, &tc, &dh, &mut dc);
        let t = 0.32f64.tanh();
        let ds = 0.5 + 0.7 * (1.0 - t * t);
        let want = [
            ds * 0.4 * 0.5 * 0.5,    // df·σ'
            ds * 0.6 * (1.0 - 0.04), // dg·tanh'
            ds * 0.2 * 0.6 * 0.4,    // di·σ'
            t * 0.7 * 0.3,           // do·σ'
        ];
        for k in 0..4 {
            assert!((f64::from(gates[k]) - want[k]).abs() < 1e-6, "dA[{k}]");
        }
        assert!((f64::from(dc[0]) - ds * 0.5).abs() < 1e-6);
    }
}
