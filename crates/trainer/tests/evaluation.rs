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
