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
    // x·Wx (but the first layer's, read from its table of E·Wx) and the recurrent Wh of each
    // layer, per batch; other backends pack nothing.
    let expected = if gemm.backend() != Backend::Nalgebra { 2 * (2 * dims.layers - 1) } else { 0 };
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
    let expected = if gemm.backend() != Backend::Nalgebra { (2 * dims.layers - 1) * chunks * batches.len() } else { 0 };
    assert_eq!(eval.prepared_hits(), expected);
}

/// A wide model (`D > 128`) scores its evaluation a vocabulary piece at a time and merges the
/// pieces' log-sum-exps: the losses equal the whole-row softmax of the forward pass, with
/// targets at both ends of every piece (the last one partial), and a target outside the
/// vocabulary is an error naming it, not a loss.
#[test]
fn evaluation_by_vocabulary_pieces_equals_whole_rows() {
    use lstm_core::dropout::Dropout;
    use trainer::model::EVAL_PIECE_WORDS;
    let vocab = 2 * EVAL_PIECE_WORDS + 77;
    let dims = Dims { vocab, dim: 136, layers: 2 };
    let (batch, time) = (2, 9);
    let layout = Layout::new(dims);
    let mut params = init_params(&layout, &mut Rng::new(11));
    // Weights 8× and embeddings N(0, 0.8²): saturated states and scores spread widely, so a
    // piece lost or merged twice shows.
    params.iter_mut().for_each(|w| *w *= 8.0);
    params[layout.embedding.clone()].iter_mut().for_each(|w| *w *= 10.0);
    let edges = [0, EVAL_PIECE_WORDS - 1, EVAL_PIECE_WORDS, 2 * EVAL_PIECE_WORDS - 1, 2 * EVAL_PIECE_WORDS, vocab - 1];
    let mut rng = Rng::new(4);
    let ids: Vec<u32> = (0..batch * time).map(|_| (rng.next_u64() % vocab as u64) as u32).collect();
    let targets: Vec<u32> = (0..batch * time).map(|k| edges[k % edges.len()] as u32).collect();
    let gemm = FastGemm::new(2);
    let (mut ws, mut reference) =
        (Workspace::new(&layout, batch, time, gemm), Workspace::new(&layout, batch, time, gemm));
    let mut eval = ws.evaluation(&params);
    for i in 0..2 {
        let got = eval.step(&ids, &targets).unwrap();
        let mean = reference.train_loss(&params, &ids, &targets, Dropout { p: 0.0 }, &mut Rng::new(0)).unwrap();
        let want = mean * (batch * time) as f64;
        let uniform = (vocab as f64).ln();
        assert!((mean - uniform).abs() > 1.0, "batch {i}: the scores must spread ({mean} vs {uniform})");
        // The AMX backend's products keep 16 significand bits per operand (bf16x3): these
        // saturated, widely spread scores come out within ~2e-5 of the f32 kernel's, while a
        // piece lost or merged twice moves the loss by whole units.
        assert!((got - want).abs() <= 1e-4 * want.abs(), "batch {i}: {got} vs {want}");
    }
    let mut bad = targets.clone();
    bad[5] = vocab as u32;
    let err = eval.step(&ids, &bad).unwrap_err();
    assert_eq!(err, lstm_core::Error::TokenOutOfRange { id: vocab as u32, vocab });
}
