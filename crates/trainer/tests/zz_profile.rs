use lstm_core::{Gemm, Lstm, LstmGrads, LstmWeights, Mat, Rng};
use std::time::Instant;
use trainer::gemm::FastGemm;

fn time(name: &str, flops: f64, f: &mut dyn FnMut()) {
    f();
    let t = Instant::now();
    let reps = 3;
    for _ in 0..reps {
        f();
    }
    let s = t.elapsed().as_secs_f64() / reps as f64;
    println!("{name:<34} {:8.2} ms  {:6.1} GFLOP/s", s * 1e3, flops / s / 1e9);
}

#[test]
#[ignore]
fn profile_book_layer() {
    let mut rng = Rng::new(1);
    let (n, t, d) = (20usize, 35usize, 650usize);
    let g = 4 * d;
    let wx: Vec<f32> = (0..d * g).map(|_| rng.normal() * 0.04).collect();
    let wh: Vec<f32> = (0..d * g).map(|_| rng.normal() * 0.04).collect();
    let b = vec![0.0f32; g];
    let x: Vec<f32> = (0..t * n * d).map(|_| rng.normal()).collect();
    let gemm = FastGemm::all_threads();
    let w = LstmWeights { wx: &wx, wh: &wh, b: &b };
    let mut layer = Lstm::new(d, d, n, t, true, vec![0.0; Lstm::<Vec<f32>>::storage_len(d, n, t)]).unwrap();
    let macs = (t * n * d * g) as f64 * 2.0;
    time("layer forward", 2.0 * macs, &mut || layer.forward(&gemm, &w, &x, t).unwrap());
    let (mut gx, mut gh, mut gb) = (vec![0.0; d * g], vec![0.0; d * g], vec![0.0; g]);
    let mut dx = vec![0.0; t * n * d];
    let dh = vec![0.01f32; t * n * d];
    time("layer forward+backward", 6.0 * macs, &mut || {
        layer.forward(&gemm, &w, &x, t).unwrap();
        let mut grads = LstmGrads { wx: &mut gx, wh: &mut gh, b: &mut gb };
        layer.backward(&gemm, &w, &x, &dh, &mut grads, &mut dx).unwrap();
    });
    let mut a = vec![0.0f32; n * g];
    let h = &x[..n * d];
    time("step gemm 20x650x2600", 2.0 * (n * d * g) as f64, &mut || {
        gemm.gemm(1.0, Mat::new(h, n, d), Mat::new(&wh, d, g), 1.0, &mut a)
    });
    let mut dhp = vec![0.0f32; n * d];
    time("step gemm dA·Whᵀ 20x2600x650", 2.0 * (n * d * g) as f64, &mut || {
        gemm.gemm(1.0, Mat::new(&a, n, g), Mat::new(&wh, d, g).t(), 0.0, &mut dhp)
    });
    let mut all = vec![0.0f32; t * n * g];
    time("batched x·Wx 700x650x2600", 2.0 * (t * n * d * g) as f64, &mut || {
        gemm.gemm(1.0, Mat::new(&x, t * n, d), Mat::new(&wx, d, g), 0.0, &mut all)
    });
    time("dWx += xᵀ·dA 650x700x2600", 2.0 * (t * n * d * g) as f64, &mut || {
        gemm.gemm(1.0, Mat::new(&x, t * n, d).t(), Mat::new(&all, t * n, g), 1.0, &mut gx)
    });
    let (m, v) = (700usize, 10000usize);
    let e: Vec<f32> = (0..v * d).map(|_| rng.normal() * 0.01).collect();
    let mut logits = vec![0.0f32; m * v];
    let hh: Vec<f32> = x[..m * d].to_vec();
    time("logits 700x650x10000", 2.0 * (m * d * v) as f64, &mut || {
        gemm.gemm(1.0, Mat::new(&hh, m, d), Mat::new(&e, v, d).t(), 0.0, &mut logits)
    });
}
