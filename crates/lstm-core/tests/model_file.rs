//! The exported model format and the quantized predictor: round trips, every refusal, no
//! panic on arbitrary bytes, and top-k against a full-softmax reference.

use lstm_core::format::{
    FORMAT_VERSION, FormatError, Header, LayerBlob, MAGIC, Payload, QuantModel, SCHEME_INT8_PER_ROW,
};
use lstm_core::quant::{dot_i8, quantize};
use lstm_core::{Predictor, Rng};
use proptest::prelude::*;

/// Owned tensors of a random model with V words, width D, L layers.
struct Tensors {
    v: usize,
    d: usize,
    emb: Vec<u8>,
    emb_scales: Vec<u8>,
    layers: Vec<[Vec<u8>; 5]>,
    out_bias: Vec<u8>,
    word_ends: Vec<u8>,
    words: String,
}

fn le(xs: impl IntoIterator<Item = f32>) -> Vec<u8> {
    xs.into_iter().flat_map(f32::to_le_bytes).collect()
}

fn quantized_rows(rng: &mut Rng, rows: usize, cols: usize, std: f32) -> (Vec<u8>, Vec<u8>) {
    let mut q = vec![0i8; cols];
    let mut data = Vec::new();
    let mut scales = Vec::new();
    for _ in 0..rows {
        let row: Vec<f32> = (0..cols).map(|_| rng.normal() * std).collect();
        scales.push(quantize(&row, &mut q));
        data.extend(q.iter().map(|&x| x as u8));
    }
    (data, le(scales))
}

impl Tensors {
    fn random(v: usize, d: usize, layers: usize, seed: u64) -> Tensors {
        let mut rng = Rng::new(seed);
        let (emb, emb_scales) = quantized_rows(&mut rng, v, d, 0.5);
        let layers = (0..layers)
            .map(|_| {
                let (wx, wxs) = quantized_rows(&mut rng, 4 * d, d, 0.6);
                let (wh, whs) = quantized_rows(&mut rng, 4 * d, d, 0.6);
                let b = le((0..4 * d).map(|_| rng.normal() * 0.1));
                [wx, wxs, wh, whs, b]
            })
            .collect();
        let out_bias = le((0..v).map(|_| rng.normal() * 0.1));
        let mut words = String::new();
        let mut word_ends = Vec::new();
        for i in 0..v {
            words.push_str(&format!("w{i}é"));
            word_ends.extend((words.len() as u32).to_le_bytes());
        }
        Tensors { v, d, emb, emb_scales, layers, out_bias, word_ends, words }
    }

    fn payload(&self) -> Payload<'_> {
        let mut layers = heapless::Vec::new();
        for [wx, wx_scales, wh, wh_scales, bias] in &self.layers {
            layers.push(LayerBlob { wx, wx_scales, wh, wh_scales, bias }).unwrap();
        }
        Payload {
            header: Header {
                vocab: self.v as u32,
                dim: self.d as u32,
                hidden: self.d as u32,
                layers: self.layers.len() as u32,
                scheme: SCHEME_INT8_PER_ROW,
            },
            embedding: &self.emb,
            embedding_scales: &self.emb_scales,
            layers,
            out_bias: &self.out_bias,
            word_ends: &self.word_ends,
            words: &self.words,
        }
    }

    fn file_with(&self, payload: &Payload<'_>) -> Vec<u8> {
        let mut buf = vec![0u8; self.emb.len() * 2 + 100_000];
        let n = QuantModel::encode(payload, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    fn file(&self) -> Vec<u8> {
        self.file_with(&self.payload())
    }
}

#[test]
fn round_trip_borrows_the_tensors() {
    let t = Tensors::random(37, 8, 2, 1);
    let bytes = t.file();
    assert_eq!(bytes[..4], MAGIC);
    let m = QuantModel::from_bytes(&bytes).unwrap();
    assert_eq!((m.vocab(), m.dim(), m.layers()), (37, 8, 2));
    assert_eq!(m.payload(), &t.payload());
    assert_eq!(m.word(5), Some("w5é"));
    assert_eq!(m.word(37), None);
    assert_eq!(m.token("w36é"), Some(36));
    // Zero-copy: the embedding slice points into the file bytes.
    let emb = m.payload().embedding.as_ptr() as usize;
    assert!(emb >= bytes.as_ptr() as usize && emb < bytes.as_ptr() as usize + bytes.len());
}

fn reencode(bytes: &mut [u8]) {
    let n = bytes.len() - 4;
    let crc = lstm_core::format::crc32(&bytes[..n]).to_le_bytes();
    bytes[n..].copy_from_slice(&crc);
}

#[test]
fn every_refusal_has_its_own_error() {
    let t = Tensors::random(11, 4, 1, 2);
    let good = t.file();
    let err = |b: &[u8]| QuantModel::from_bytes(b).unwrap_err();
    assert_eq!(err(&good[..3]), FormatError::TooShort { len: 3 });
    assert_eq!(err(b"GIF89a.........."), FormatError::BadMagic);
    let mut newer = good.clone();
    newer[4..6].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    assert_eq!(err(&newer), FormatError::NewerVersion { found: FORMAT_VERSION + 1 });
    assert!(err(&newer).to_string().contains("newer than this program reads"));
    let mut zero = good.clone();
    zero[4..6].copy_from_slice(&0u16.to_le_bytes());
    assert_eq!(err(&zero), FormatError::UnknownVersion { found: 0 });
    assert!(matches!(err(&good[..good.len() - 9]), FormatError::Checksum { .. }));
    let mut flipped = good.clone();
    flipped[30] ^= 4;
    assert!(matches!(err(&flipped), FormatError::Checksum { .. }));
    let mut trailing = good.clone();
    trailing.insert(good.len() - 4, 0);
    reencode(&mut trailing);
    assert_eq!(err(&trailing), FormatError::TrailingBytes { count: 1 });

    let mut p = t.payload();
    p.header.scheme = 9;
    assert_eq!(err(&t.file_with(&p)), FormatError::UnknownScheme { scheme: 9 });
    let mut p = t.payload();
    p.header.layers = 2;
    assert_eq!(err(&t.file_with(&p)), FormatError::LayerCount { header: 2, stored: 1 });
    let mut p = t.payload();
    p.header.hidden = 5;
    assert!(matches!(err(&t.file_with(&p)), FormatError::BadDimensions { .. }));
    let mut p = t.payload();
    p.header.vocab = 12;
    assert_eq!(err(&t.file_with(&p)), FormatError::Length { what: "embedding", layer: None, expected: 48, actual: 44 });
    let mut p = t.payload();
    p.layers[0].wh = &t.layers[0][2][1..];
    assert!(matches!(err(&t.file_with(&p)), FormatError::Length { what: "wh", layer: Some(0), .. }));
    let nan_scales = le((0..11).map(|i| if i == 3 { f32::NAN } else { 1.0 }));
    let mut p = t.payload();
    p.embedding_scales = &nan_scales;
    assert_eq!(err(&t.file_with(&p)), FormatError::NonFinite { what: "embedding scales", index: 3 });
    let zero_scales = le((0..16).map(|i| if i == 7 { 0.0 } else { 1.0 }));
    let mut p = t.payload();
    p.layers[0].wx_scales = &zero_scales;
    assert_eq!(err(&t.file_with(&p)), FormatError::NonFinite { what: "wx scales", index: 7 });
    let mut bad_ends = t.word_ends.clone();
    bad_ends[8..12].copy_from_slice(&1u32.to_le_bytes()); // word 2 ends before word 1
    let mut p = t.payload();
    p.word_ends = &bad_ends;
    assert_eq!(err(&t.file_with(&p)), FormatError::Vocabulary { index: 2 });
    let mut split_char = t.word_ends.clone();
    split_char[0..4].copy_from_slice(&3u32.to_le_bytes()); // inside "é"
    let mut p = t.payload();
    p.word_ends = &split_char;
    assert_eq!(err(&t.file_with(&p)), FormatError::Vocabulary { index: 0 });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    /// Truncations and random byte changes give an error or a valid model, never a panic; a
    /// model that loads can run.
    #[test]
    fn damaged_files_never_panic(cut in 0usize..2000, flips in proptest::collection::vec((0usize..2000, any::<u8>()), 0..6), fix_crc in any::<bool>()) {
        let t = Tensors::random(9, 4, 2, 3);
        let mut bytes = t.file();
        let cut = cut.min(bytes.len());
        bytes.truncate(bytes.len() - cut.min(bytes.len()) / 3);
        for (at, v) in flips {
            if !bytes.is_empty() {
                let i = at % bytes.len();
                bytes[i] = v;
            }
        }
        if fix_crc && bytes.len() >= 10 {
            reencode(&mut bytes);
        }
        if let Ok(m) = QuantModel::from_bytes(&bytes) {
            let mut p = Predictor::new(m.clone(), vec![0.0; Predictor::<Vec<f32>, Vec<i8>>::float_len(&m)], vec![0; Predictor::<Vec<f32>, Vec<i8>>::int_len(&m)]).unwrap();
            p.feed(0).unwrap();
            let _ = p.top_k::<3>().unwrap();
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut b = bytes;
        if b.len() >= 6 {
            b[..4].copy_from_slice(&MAGIC);
            b[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
            if b.len() >= 10 { reencode(&mut b); }
        }
        let _ = QuantModel::from_bytes(&b);
    }
}

/// The predictor's top-k against a straightforward full-logit reference computed here.
#[test]
fn top_k_matches_a_full_softmax_reference() {
    let t = Tensors::random(300, 16, 2, 4);
    let bytes = t.file();
    let m = QuantModel::from_bytes(&bytes).unwrap();
    type P<'a> = Predictor<'a, Vec<f32>, Vec<i8>>;
    let mut p: P<'_> = Predictor::new(m.clone(), vec![0.0; P::float_len(&m)], vec![0; P::int_len(&m)]).unwrap();
    assert_eq!(p.top_k::<5>().unwrap_err(), lstm_core::PredictError::NoContext);
    assert_eq!(p.feed(300).unwrap_err(), lstm_core::PredictError::Token { id: 300, vocab: 300 });
    for token in [3u32, 141, 7, 299, 0] {
        p.feed(token).unwrap();
        let mut q = vec![0i8; 16];
        let s = quantize(p.top_hidden(), &mut q);
        let logits: Vec<f32> = (0..300)
            .map(|v| {
                let (row, rs) = m.embedding_row(v);
                dot_i8(row, &q) as f32 * (s * rs) + m.out_bias(v)
            })
            .collect();
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, |a, b| a.max(f64::from(b)));
        let z: f64 = logits.iter().map(|&l| (f64::from(l) - max).exp()).sum();
        let mut order: Vec<usize> = (0..300).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        let top = p.top_k::<5>().unwrap();
        assert_eq!(top.len(), 5);
        for (c, &want) in top.iter().zip(&order) {
            assert_eq!(c.id as usize, want);
            let prob = (f64::from(logits[want]) - max).exp() / z;
            assert!((f64::from(c.prob) - prob).abs() < 1e-5, "{} vs {prob}", c.prob);
        }
        let lp = p.log_prob(order[0] as u32).unwrap();
        assert!((f64::from(lp) - f64::from(top[0].prob).ln()).abs() < 1e-4);
        // Sampling at temperature 0 is the argmax; at temperature 1 it follows the probabilities.
        assert_eq!(p.sample(0.0, &mut Rng::new(1)).unwrap(), order[0] as u32);
    }
    let mut rng = Rng::new(5);
    let n = 4000;
    let top = p.top_k::<1>().unwrap()[0];
    let hits = (0..n).filter(|_| p.sample(1.0, &mut rng).unwrap() == top.id).count();
    let expect = f64::from(top.prob) * n as f64;
    assert!((hits as f64 - expect).abs() < 5.0 * expect.sqrt() + 5.0, "{hits} vs {expect}");
    // Reset forgets the context.
    p.reset();
    assert_eq!(p.top_k::<2>().unwrap_err(), lstm_core::PredictError::NoContext);
}

#[test]
fn ram_does_not_depend_on_the_vocabulary() {
    let small = Tensors::random(10, 8, 2, 6);
    let large = Tensors::random(2000, 8, 2, 6);
    let (bs, bl) = (small.file(), large.file());
    let (ms, ml) = (QuantModel::from_bytes(&bs).unwrap(), QuantModel::from_bytes(&bl).unwrap());
    type P<'a> = Predictor<'a, Vec<f32>, Vec<i8>>;
    assert_eq!(P::float_len(&ms), P::float_len(&ml));
    assert_eq!(P::int_len(&ms), P::int_len(&ml));
}
