//! Evaluation packs each LSTM layer's `Wx` and `Wh` once and finds them again by identity for
//! every batch; if the layer ever formed those matrices differently, every batch would
//! silently pack them again (correct, only slower). This counts that they are found.

use lstm_core::Rng;
use trainer::gemm::{Backend, FastGemm};
use trainer::model::{Dims, Layout, Workspace, init_params};

#[test]
fn evaluation_reads_every_lstm_weight_from_its_packed_copy() {
    let dims = Dims { vocab: 23, dim: 8, layers: 2 };
    let layout = Layout::new(dims);
    let params = init_params(&layout, &mut Rng::new(5));
    let (batch, time) = (3, 4);
    let ids: Vec<u32> = (0..batch * time).map(|k| (k as u32 * 7) % 23).collect();
    let gemm = FastGemm::new(2);
    let mut ws = Workspace::new(&layout, batch, time, gemm);
    let mut eval = ws.evaluation(&params);
    let first = eval.step(&ids, &ids).unwrap();
    let second = eval.step(&ids, &ids).unwrap();
    assert!(first.is_finite() && second.is_finite());
    // x·Wx and the recurrent Wh of each layer, per batch; other backends pack nothing.
    let expected = if gemm.backend() == Backend::Avx512 { 2 * 2 * dims.layers } else { 0 };
    assert_eq!(eval.prepared_hits(), expected);

    // The same sums as a fresh workspace evaluating batch by batch.
    let mut plain = Workspace::new(&layout, batch, time, gemm);
    assert_eq!(plain.eval_step(&params, &ids, &ids).unwrap(), first);
    assert_eq!(plain.eval_step(&params, &ids, &ids).unwrap(), second);
}

/// A model whose evaluation is pipelined (the LSTM layers run one time chunk ahead of the
/// output layer) gives the losses of the whole-batch forward pass, batch after batch with the
/// state carried across chunks and batches.
#[test]
fn pipelined_evaluation_equals_the_whole_batch_forward() {
    use lstm_core::dropout::Dropout;
    use trainer::model::eval_chunk_steps;
    let dims = Dims { vocab: 31, dim: 136, layers: 2 };
    let (batch, time) = (2, 17);
    let chunk = eval_chunk_steps(dims.dim, batch);
    assert!(chunk < time, "this shape must be evaluated in chunks (chunk {chunk})");
    let chunks = time.div_ceil(chunk);
    let layout = Layout::new(dims);
    let mut params = init_params(&layout, &mut Rng::new(8));
    // Embeddings of N(0, 0.5²) rather than N(0, 0.01²): inputs that move the loss visibly, so a
    // chunk fed the wrong words or state cannot hide under the tolerance.
    params[layout.embedding.clone()].iter_mut().for_each(|w| *w *= 50.0);
    let mut rng = Rng::new(3);
    let batches: Vec<Vec<u32>> =
        (0..3).map(|_| (0..batch * time).map(|_| (rng.next_u64() % 31) as u32).collect()).collect();
    let gemm = FastGemm::new(2);
    let mut ws = Workspace::new(&layout, batch, time, gemm);
    let mut reference = Workspace::new(&layout, batch, time, gemm);
    let mut eval = ws.evaluation(&params);
    for (i, ids) in batches.iter().enumerate() {
        let targets: Vec<u32> = ids.iter().map(|&t| (t * 5 + 1) % 31).collect();
        let got = eval.step(ids, &targets).unwrap();
        let mean = reference.train_loss(&params, ids, &targets, Dropout { p: 0.0 }, &mut Rng::new(0)).unwrap();
        let want = mean * (batch * time) as f64;
        assert!((got - want).abs() <= 1e-6 * want.abs(), "batch {i}: {got} vs {want}");
    }
    let expected = if gemm.backend() == Backend::Avx512 { 2 * dims.layers * chunks * batches.len() } else { 0 };
    assert_eq!(eval.prepared_hits(), expected);
}
