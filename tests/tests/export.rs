//! train → export → load → predict, across trainer and lstm-core.

use lstm_core::QuantModel;
use lstm_core::quant::f32_at;
use lstm_core::quant::paired::paired_weight;
use trainer::config::Config;
use trainer::export::{export_int8, export_safetensors};
use trainer::model::Layout;
use trainer::training::{RunOptions, Silent, train};
use trainer::{Checkpoint, Corpus};

mod common;

fn trained(dir: &std::path::Path) -> (Corpus, Checkpoint) {
    common::write_toy_corpus(dir, 2000);
    let corpus = Corpus::load(dir).unwrap();
    let mut config = Config::preset("tiny").unwrap();
    config.epochs = 4;
    let mut opts = RunOptions::new(dir.join("run"));
    opts.skip_test = true;
    train(&config, &corpus, &opts, &mut Silent).unwrap();
    let ckpt = Checkpoint::load(&dir.join("run/best.ckpt")).unwrap();
    (corpus, ckpt)
}

#[test]
fn int8_export_round_trips_and_predicts_like_the_f32_model() {
    let tmp = tempfile::tempdir().unwrap();
    let (corpus, ckpt) = trained(tmp.path());
    let (bytes, size) = export_int8(&ckpt).unwrap();
    assert_eq!(size.total, bytes.len());
    assert!(size.embedding + size.lstm + size.biases + size.vocabulary < size.total);
    let model = QuantModel::from_bytes(&bytes).unwrap();
    let layout = Layout::new(ckpt.dims());
    let (v, d) = (ckpt.dims().vocab, ckpt.dims().dim);
    assert_eq!((model.vocab(), model.dim(), model.layers()), (v, d, 2));
    for (id, w) in ckpt.vocab.iter().enumerate() {
        assert_eq!(model.word(id as u32), Some(w.as_str()));
    }

    // Every weight comes back within half a quantization step.
    let emb = &ckpt.params[layout.embedding.clone()];
    for r in 0..v {
        let s = model.embedding_scale(r);
        for c in 0..d {
            let back = f32::from(paired_weight(model.embedding(), d, r, c).unwrap()) * s;
            // Half a step, plus the scale's own rounding in the integer multiplier.
            assert!((back - emb[r * d + c]).abs() <= s * 0.501 + 1e-7, "embedding[{r}][{c}]");
        }
        let bias = ckpt.params[layout.out_bias.start + r];
        assert!((model.out_bias(r) - bias).abs() <= 1.0 / 512.0 + 1e-6, "out bias {r}");
    }
    for l in 0..2 {
        let w = layout.lstm_weights(&ckpt.params, l);
        let blob = model.layer(l);
        let (wx, wh) = model.layer_weights(l);
        for j in 0..4 * d {
            let (sx, sh) = (f32_at(blob.wx_scales, j).unwrap(), f32_at(blob.wh_scales, j).unwrap());
            for k in 0..d {
                let x = f32::from(paired_weight(wx, d, j, k).unwrap()) * sx;
                let h = f32::from(paired_weight(wh, d, j, k).unwrap()) * sh;
                assert!((x - w.wx[k * 4 * d + j]).abs() <= sx / 2.0 + 1e-7, "layer {l} wx[{k}][{j}]");
                assert!((h - w.wh[k * 4 * d + j]).abs() <= sh / 2.0 + 1e-7, "layer {l} wh[{k}][{j}]");
            }
            assert_eq!(f32_at(blob.bias, j).unwrap(), w.b[j]);
        }
    }

    // Same perplexity, within quantization noise.
    let f32_ppl =
        trainer::training::perplexity(&layout, &ckpt.params, &corpus.valid, trainer::gemm::FastGemm::new(1)).unwrap();
    let int8_ppl = trainer::quantized::perplexity(&model, &corpus.valid, &|_| {}).unwrap();
    let rel = (int8_ppl - f32_ppl).abs() / f32_ppl;
    assert!(rel < 0.01, "f32 {f32_ppl:.4} vs int8 {int8_ppl:.4}");

    // After "the cat", the grammar allows only the five verbs: they are the top five.
    let mut p = trainer::quantized::host_predictor(&model);
    for w in ["the", "cat"] {
        p.feed(model.token(w).unwrap()).unwrap();
    }
    let top = p.top_k::<5>().unwrap();
    let mut words: Vec<&str> = top.iter().map(|c| model.word(c.id).unwrap()).collect();
    words.sort();
    assert_eq!(words, ["buys", "likes", "sees", "sells", "watches"]);
    let mass: f32 = top.iter().map(|c| c.prob).sum();
    assert!(mass > 0.95, "probability mass on the verbs {mass}");
}

#[test]
fn safetensors_export_has_the_documented_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, ckpt) = trained(tmp.path());
    let path = tmp.path().join("model.safetensors");
    let vocab_path = export_safetensors(&ckpt, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let layout = Layout::new(ckpt.dims());
    let (v, d) = (ckpt.dims().vocab, ckpt.dims().dim);
    let mut expect = vec![("embed.weight".to_string(), vec![v, d], layout.embedding.clone())];
    for l in 0..2 {
        let [wx, wh, b] = layout.lstm[l].clone();
        expect.push((format!("lstm.{l}.wx"), vec![d, 4 * d], wx));
        expect.push((format!("lstm.{l}.wh"), vec![d, 4 * d], wh));
        expect.push((format!("lstm.{l}.b"), vec![4 * d], b));
    }
    expect.push(("out.bias".to_string(), vec![v], layout.out_bias.clone()));
    assert_eq!(st.len(), expect.len());
    for (name, shape, range) in expect {
        let t = st.tensor(&name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
        assert_eq!(t.shape(), shape.as_slice(), "{name}");
        let values: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(values, ckpt.params[range], "{name}");
    }
    let words: Vec<String> = std::fs::read_to_string(vocab_path).unwrap().lines().map(String::from).collect();
    assert_eq!(words, ckpt.vocab);
}
