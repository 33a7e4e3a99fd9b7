//! The trainer's model (fast GEMM, flat parameters, tied output, dropout) against central
//! finite differences on a tiny configuration.

use lstm_core::Rng;
use lstm_core::dropout::Dropout;
use trainer::gemm::FastGemm;
use trainer::model::{Dims, Layout, Workspace, init_params};

#[test]
fn whole_model_gradient_matches_finite_differences() {
    check_gradient(Dims { vocab: 11, dim: 6, layers: 2 }, 3, 4);
}

/// 45 positions: the fused output layer's row blocks (40 rows) end inside the batch, and 37
/// words leave a partial column panel in every product with `V`.
#[test]
fn gradient_across_output_blocks_matches_finite_differences() {
    check_gradient(Dims { vocab: 37, dim: 8, layers: 2 }, 5, 9);
}

fn check_gradient(dims: Dims, batch: usize, time: usize) {
    let vocab = dims.vocab as u32;
    let layout = Layout::new(dims);
    let mut rng = Rng::new(3);
    let mut params = init_params(&layout, &mut rng);
    // Larger than the real initialisation so every path carries a visible gradient.
    params.iter_mut().for_each(|p| *p += rng.normal() * 0.3);
    let ids: Vec<u32> = (0..batch * time).map(|k| (k as u32 * 7) % (vocab - 2)).collect();
    let targets: Vec<u32> = (0..batch * time).map(|k| (k as u32 * 5 + 2) % vocab).collect();
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

/// The fused output layer and the threaded GEMM split work differently with 1 and 3 threads,
/// but every number is computed in the same order: the gradient must be bit-identical.
#[test]
fn gradient_does_not_depend_on_the_thread_count() {
    // Big enough that the output products are split between threads too.
    let dims = Dims { vocab: 403, dim: 64, layers: 2 };
    let layout = Layout::new(dims);
    let (batch, time) = (10, 21);
    let params = init_params(&layout, &mut Rng::new(5));
    let ids: Vec<u32> = (0..batch * time).map(|k| (k as u32 * 11) % 403).collect();
    let targets: Vec<u32> = (0..batch * time).map(|k| (k as u32 * 3 + 1) % 403).collect();
    let grads_with = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut ws = Workspace::new(&layout, batch, time, FastGemm::new(threads));
            let loss = ws.train_step(&params, &ids, &targets, Dropout { p: 0.3 }, &mut Rng::new(8)).unwrap();
            // The update too: its norm is summed over fixed chunks, whatever the thread count.
            let mut stepped = params.clone();
            let update = trainer::update::clip_and_step(&mut stepped, &ws.grads, 0.25, 20.0);
            (loss, ws.grads.clone(), update, stepped)
        })
    };
    let (loss1, g1, u1, p1) = grads_with(1);
    let (loss3, g3, u3, p3) = grads_with(3);
    assert_eq!(loss1.to_bits(), loss3.to_bits());
    assert!(g1.iter().zip(&g3).all(|(a, b)| a.to_bits() == b.to_bits()), "gradients differ between 1 and 3 threads");
    assert_eq!(u1, u3);
    assert!(p1.iter().zip(&p3).all(|(a, b)| a.to_bits() == b.to_bits()), "updates differ between 1 and 3 threads");
}

/// A step whose forward fails (a word outside the vocabulary, found before the first
/// recurrence starts the packing and zeroing that run beside it) reports the error and leaves
/// the workspace whole: the next step's loss and gradient equal a fresh workspace's, bit for
/// bit.
#[test]
fn a_failed_step_leaves_the_workspace_whole() {
    let dims = Dims { vocab: 23, dim: 8, layers: 2 };
    let layout = Layout::new(dims);
    let params = init_params(&layout, &mut Rng::new(4));
    let (batch, time) = (3, 5);
    let ids: Vec<u32> = (0..batch * time).map(|k| (k as u32 * 3) % 23).collect();
    let targets: Vec<u32> = (0..batch * time).map(|k| (k as u32 * 7 + 1) % 23).collect();
    let mut bad = ids.clone();
    bad[4] = 23;
    let dropout = Dropout { p: 0.0 };
    let mut ws = Workspace::new(&layout, batch, time, FastGemm::new(2));
    assert!(ws.train_step(&params, &bad, &targets, dropout, &mut Rng::new(1)).is_err());
    ws.reset_state();
    let loss = ws.train_step(&params, &ids, &targets, dropout, &mut Rng::new(1)).unwrap();
    let mut fresh = Workspace::new(&layout, batch, time, FastGemm::new(2));
    let want = fresh.train_step(&params, &ids, &targets, dropout, &mut Rng::new(1)).unwrap();
    assert_eq!(loss.to_bits(), want.to_bits());
    assert_eq!(ws.grads, fresh.grads);
}

/// A step on the AMX backend (bf16x3 products, where the CPU has the tile unit) gives the
/// loss and gradient of the AVX-512 kernels within the products' own error: the whole model
/// wired to the fast path, at a width and row count that use it everywhere it applies. (The
/// backward pass is the same code on every backend and is checked against finite differences
/// above; central differences of the AMX loss itself are too noisy to resolve 0.1%: the
/// products' ~2⁻¹⁷ relative error, divided by the step, is of the order of a small derivative.)
#[test]
fn amx_step_matches_the_avx512_step() {
    use trainer::gemm::Backend;
    let gemms: Vec<FastGemm> =
        [Backend::AmxBf16x3, Backend::Avx512].into_iter().filter_map(|b| FastGemm::new(2).with_backend(b)).collect();
    if gemms.len() < 2 {
        eprintln!("no AMX on this CPU: skipped");
        return;
    }
    let dims = Dims { vocab: 403, dim: 128, layers: 2 };
    let layout = Layout::new(dims);
    let params = init_params(&layout, &mut Rng::new(7));
    let (batch, time) = (10, 21);
    let ids: Vec<u32> = (0..batch * time).map(|k| (k as u32 * 11) % 403).collect();
    let targets: Vec<u32> = (0..batch * time).map(|k| (k as u32 * 3 + 1) % 403).collect();
    let steps: Vec<(f32, Vec<f32>)> = gemms
        .iter()
        .map(|&g| {
            let mut ws = Workspace::new(&layout, batch, time, g);
            let loss = ws.train_step(&params, &ids, &targets, Dropout { p: 0.3 }, &mut Rng::new(5)).unwrap();
            (loss, ws.grads.clone())
        })
        .collect();
    let ((amx_loss, amx), (f32_loss, f32_grads)) = (&steps[0], &steps[1]);
    assert!((amx_loss - f32_loss).abs() <= 1e-5 * f32_loss.abs(), "loss {amx_loss} vs {f32_loss}");
    let diff: f64 = amx.iter().zip(f32_grads).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = f32_grads.iter().map(|b| f64::from(*b).powi(2)).sum::<f64>().sqrt();
    assert!(norm > 0.0 && diff <= 1e-4 * norm, "gradient differs by {:e} of its norm", diff / norm);
}
