//! Any byte string given to the model loader yields an error or a model that runs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lstm_core::{Predictor, QuantModel};

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = QuantModel::from_bytes(data) {
        type P<'a> = Predictor<'a, Vec<f32>, Vec<i32>>;
        let floats = vec![0.0; P::float_len(&model)];
        let ints = vec![0; P::int_len(&model)];
        let mut p: P<'_> = Predictor::new(model.clone(), floats, ints).expect("sized buffers");
        p.feed(0).expect("token 0 exists in a valid model");
        let _ = p.top_k::<4>();
        let _ = model.word(model.vocab() as u32 - 1);
    }
});
