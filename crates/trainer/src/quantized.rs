//! Host helpers around `lstm-core`'s int8 [`Predictor`]: owned buffers, and perplexity computed
//! the same way as the f32 evaluation (10 streams × 35 steps, state carried, wrapping).

use crate::data::EvalBatches;
use crate::training::{EVAL_BATCH, EVAL_TIME};
use lstm_core::{PredictError, Predictor, QuantModel};
use rayon::prelude::*;

/// A predictor with heap-allocated buffers (the device uses static arrays instead).
pub type HostPredictor<'m> = Predictor<'m, Vec<f32>, Vec<i32>>;

/// A fresh predictor over `model`.
pub fn host_predictor<'m>(model: &QuantModel<'m>) -> HostPredictor<'m> {
    let floats = vec![0.0; HostPredictor::float_len(model)];
    let ints = vec![0; HostPredictor::int_len(model)];
    Predictor::new(model.clone(), floats, ints).expect("buffers sized by float_len/int_len")
}

/// Perplexity of the int8 model on `tokens`: every position predicted by the evaluation
/// batching of [`crate::training::perplexity`], one independent predictor per stream, streams
/// run in parallel.
pub fn perplexity(
    model: &QuantModel<'_>,
    tokens: &[u32],
    progress: &(dyn Fn(usize) + Sync),
) -> Result<f64, PredictError> {
    let batches = EvalBatches::new(tokens.len(), EVAL_BATCH, EVAL_TIME);
    let iters = batches.iters();
    let rows = EVAL_BATCH * EVAL_TIME;
    // Gather each stream's (input, target) sequence once.
    let mut streams: Vec<Vec<(u32, u32)>> = (0..EVAL_BATCH).map(|_| Vec::with_capacity(iters * EVAL_TIME)).collect();
    let (mut ids, mut targets) = (vec![0u32; rows], vec![0u32; rows]);
    for it in 0..iters {
        batches.fill(tokens, it, &mut ids, &mut targets);
        for t in 0..EVAL_TIME {
            for (i, s) in streams.iter_mut().enumerate() {
                s.push((ids[t * EVAL_BATCH + i], targets[t * EVAL_BATCH + i]));
            }
        }
    }
    let sums: Vec<Result<f64, PredictError>> = streams
        .par_iter()
        .map(|stream| {
            let mut p = host_predictor(model);
            let mut total = 0.0f64;
            for (k, &(x, y)) in stream.iter().enumerate() {
                p.feed(x)?;
                total -= f64::from(p.log_prob(y)?);
                if k % 256 == 255 {
                    progress(256);
                }
            }
            Ok(total)
        })
        .collect();
    let mut total = 0.0;
    for s in sums {
        total += s?;
    }
    Ok((total / (iters * rows).max(1) as f64).exp())
}
