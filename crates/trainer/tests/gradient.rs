//! The trainer's model (fast GEMM, flat parameters, tied output, dropout) against central
//! finite differences on a tiny configuration.

use lstm_core::Rng;
use lstm_core::dropout::Dropout;
use trainer::gemm::FastGemm;
use trainer::model::{Dims, Layout, Workspace, init_params};

#[test]
fn whole_model_gradient_matches_finite_differences() {
    let dims = Dims { vocab: 11, dim: 6, layers: 2 };
    let layout = Layout::new(dims);
    let (batch, time) = (3, 4);
    let mut rng = Rng::new(3);
    let mut params = init_params(&layout, &mut rng);
    // Larger than the real initialisation so every path carries a visible gradient.
    params.iter_mut().for_each(|p| *p += rng.normal() * 0.3);
    let ids: Vec<u32> = (0..batch * time).map(|k| (k * 7 % 9) as u32).collect();
    let targets: Vec<u32> = (0..batch * time).map(|k| ((k * 5 + 2) % 11) as u32).collect();
    let dropout = Dropout { p: 0.25 };
    let mut ws = Workspace::new(&layout, batch, time, FastGemm::new(2));
    let mut loss_at = |p: &[f32]| {
        ws.reset_state();
        ws.train_loss(p, &ids, &targets, dropout, &mut Rng::new(99)).unwrap()
    };
    let base = loss_at(&params);
    let mut ws2 = Workspace::new(&layout, batch, time, FastGemm::new(2));
    let loss = ws2.train_step(&params, &ids, &targets, dropout, &mut Rng::new(99)).unwrap();
    assert!((f64::from(loss) - base).abs() < 1e-5);
    let grads = ws2.grads.clone();

    let eps = 1e-2f32;
    let mut probe = params.clone();
    let mut worst = 0.0f64;
    for k in 0..params.len() {
        probe[k] = params[k] + eps;
        let up = loss_at(&probe);
        probe[k] = params[k] - eps;
        let down = loss_at(&probe);
        probe[k] = params[k];
        let numeric = (up - down) / (2.0 * f64::from(eps));
        let analytic = f64::from(grads[k]);
        let scale = numeric.abs().max(analytic.abs());
        assert!(
            (numeric - analytic).abs() <= 1e-3 * scale + 1e-5,
            "param {k}: analytic {analytic:e}, numeric {numeric:e}"
        );
        if scale > 1e-2 {
            worst = worst.max((numeric - analytic).abs() / scale);
        }
    }
    assert!(worst < 1e-3, "worst relative error {worst}");
}
