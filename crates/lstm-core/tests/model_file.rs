//! The exported model format and the quantized predictor: round trips, every refusal, no
//! panic on arbitrary bytes, and top-k against a full-softmax reference.

use lstm_core::format::{
    FORMAT_VERSION, FormatError, Header, LayerBlob, MAGIC, Payload, QuantModel, SCHEME_INT8_PAIRED, logit_affine,
};
use lstm_core::quant::paired::{paired_len, paired_weight, quantize_paired};
use lstm_core::quant::quantize_unit;
use lstm_core::{Predictor, Rng};
use proptest::prelude::*;

type P<'a> = Predictor<'a, Vec<f32>, Vec<i32>>;

/// Owned tensors of a random model with V words, width D, L layers.
struct Tensors {
    v: usize,
    d: usize,
    weights: Vec<u8>,
    logits: Vec<u8>,
    layers: Vec<[Vec<u8>; 3]>,
    word_ends: Vec<u8>,
    words: String,
}

fn le(xs: impl IntoIterator<Item = f32>) -> Vec<u8> {
    xs.into_iter().flat_map(f32::to_le_bytes).collect()
}

/// Random rows quantized per row, appended to `weights` in the paired layout; returns the scales.
fn quantized_rows(rng: &mut Rng, rows: usize, cols: usize, std: f32, weights: &mut Vec<u8>) -> Vec<f32> {
    let data: Vec<f32> = (0..rows * cols).map(|_| rng.normal() * std).collect();
    let (mut q, mut scales) = (vec![0i8; rows * cols], vec![0.0f32; rows]);
    let at = weights.len();
    weights.resize(at + paired_len(rows, cols).unwrap(), 0);
    quantize_paired(&data, rows, cols, &mut q, &mut scales, &mut weights[at..]);
    scales
}

impl Tensors {
    fn random(v: usize, d: usize, layers: usize, seed: u64) -> Tensors {
        let mut rng = Rng::new(seed);
        let mut weights = Vec::new();
        let emb_scales = quantized_rows(&mut rng, v, d, 0.5, &mut weights);
        let layers = (0..layers)
            .map(|_| {
                let wxs = quantized_rows(&mut rng, 4 * d, d, 0.6, &mut weights);
                let whs = quantized_rows(&mut rng, 4 * d, d, 0.6, &mut weights);
                [le(wxs), le(whs), le((0..4 * d).map(|_| rng.normal() * 0.1))]
            })
            .collect();
        let logits = (0..v)
            .flat_map(|i| {
                let (m, b) = logit_affine(i, emb_scales[i], rng.normal() * 0.1).unwrap();
                [m.to_le_bytes(), b.to_le_bytes()].concat()
            })
            .collect();
        let mut words = String::new();
        let mut word_ends = Vec::new();
        for i in 0..v {
            words.push_str(&format!("w{i}é"));
            word_ends.extend((words.len() as u32).to_le_bytes());
        }
        Tensors { v, d, weights, logits, layers, word_ends, words }
    }

    fn payload(&self) -> Payload<'_> {
        let mut layers = heapless::Vec::new();
        for [wx_scales, wh_scales, bias] in &self.layers {
            layers.push(LayerBlob { wx_scales, wh_scales, bias }).unwrap();
        }
        Payload {
            header: Header {
                vocab: self.v as u32,
                dim: self.d as u32,
                hidden: self.d as u32,
                layers: self.layers.len() as u32,
                scheme: SCHEME_INT8_PAIRED,
            },
            pad: &[],
            logits_pad: &[],
            weights: &self.weights,
            logits: &self.logits,
            layers,
            word_ends: &self.word_ends,
            words: &self.words,
        }
    }

    fn file_with(&self, payload: &Payload<'_>) -> Vec<u8> {
        let mut buf =
            vec![0u8; self.weights.len() + self.logits.len() + self.word_ends.len() + self.words.len() + 100_000];
        let n = QuantModel::encode(payload, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    fn file(&self) -> Vec<u8> {
        self.file_with(&self.payload())
    }
}

fn predictor<'m>(m: &QuantModel<'m>) -> P<'m> {
    Predictor::new(m.clone(), vec![0.0; P::float_len(m)], vec![0; P::int_len(m)]).unwrap()
}

#[test]
fn round_trip_borrows_the_tensors() {
    let t = Tensors::random(37, 8, 2, 1);
    let bytes = t.file();
    assert_eq!(bytes[..4], MAGIC);
    let m = QuantModel::from_bytes(&bytes).unwrap();
    assert_eq!((m.vocab(), m.dim(), m.layers()), (37, 8, 2));
    // Everything but the alignment padding, which `encode` chooses.
    assert_eq!(m.payload(), &Payload { pad: m.payload().pad, logits_pad: m.payload().logits_pad, ..t.payload() });
    assert_eq!(m.word(5), Some("w5é"));
    assert_eq!(m.word(37), None);
    assert_eq!(m.token("w36é"), Some(36));
    // Zero-copy: the weights point into the file bytes, at a 4-byte-aligned offset.
    let weights = m.payload().weights.as_ptr() as usize;
    assert!(weights >= bytes.as_ptr() as usize && weights < bytes.as_ptr() as usize + bytes.len());
    assert_eq!((weights - bytes.as_ptr() as usize) % 4, 0);
    // Odd V, and every header size: the padding always aligns the weights.
    for (v, d) in [(1, 2), (3, 2), (200, 6), (70_000, 2)] {
        let t = Tensors::random(v, d, 1, 9);
        let bytes = t.file();
        let m = QuantModel::from_bytes(&bytes).unwrap();
        assert_eq!((m.payload().weights.as_ptr() as usize - bytes.as_ptr() as usize) % 4, 0, "V={v} D={d}");
        assert_eq!((m.payload().logits.as_ptr() as usize - bytes.as_ptr() as usize) % 4, 0, "V={v} D={d}");
    }
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
    let mut old = good.clone();
    old[4..6].copy_from_slice(&1u16.to_le_bytes());
    assert_eq!(err(&old), FormatError::Outdated { found: 1 });
    assert!(err(&old).to_string().contains("export the checkpoint again"));
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
    p.header.dim = 3;
    p.header.hidden = 3;
    assert!(matches!(err(&t.file_with(&p)), FormatError::BadDimensions { .. }));
    let mut p = t.payload();
    p.header.vocab = 13;
    let expected = paired_len(13, 4).unwrap() + paired_len(16, 8).unwrap();
    assert_eq!(err(&t.file_with(&p)), FormatError::Length { what: "weights", layer: None, expected, actual: 176 });
    let mut p = t.payload();
    p.weights = &t.weights[1..];
    assert!(matches!(err(&t.file_with(&p)), FormatError::Length { what: "weights", layer: None, .. }));
    let mut p = t.payload();
    p.logits = &t.logits[8..];
    assert_eq!(err(&t.file_with(&p)), FormatError::Length { what: "logits", layer: None, expected: 88, actual: 80 });
    let mut zero_multiplier = t.logits.clone();
    zero_multiplier[24..28].copy_from_slice(&0i32.to_le_bytes());
    let mut p = t.payload();
    p.logits = &zero_multiplier;
    assert_eq!(err(&t.file_with(&p)), FormatError::LogitAffine { index: 3 });
    let mut huge_bias = t.logits.clone();
    huge_bias[36..40].copy_from_slice(&(i32::MIN).to_le_bytes());
    let mut p = t.payload();
    p.logits = &huge_bias;
    assert_eq!(err(&t.file_with(&p)), FormatError::LogitAffine { index: 4 });
    // Padding is chosen by `encode`; a hand-made file with four pad bytes is refused.
    let mut p = t.payload();
    p.pad = &[0; 4];
    let mut raw = vec![0u8; 10_000];
    raw[..4].copy_from_slice(&MAGIC);
    raw[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let n = postcard::to_slice(&p, &mut raw[6..]).unwrap().len();
    raw.truncate(6 + n + 4);
    reencode(&mut raw);
    assert!(matches!(err(&raw), FormatError::Length { what: "alignment padding", .. }));
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
            let mut p = predictor(&m);
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

/// The exact integer logit of word `v` (1/256 nat), computed here from the weights, the
/// quantized top hidden state and the file's `(M, B)`.
fn reference_logit(m: &QuantModel<'_>, qh: &[i16], v: usize) -> i32 {
    let d = m.dim();
    let dot: i128 =
        (0..d).map(|j| i128::from(paired_weight(m.embedding(), d, v, j).unwrap()) * i128::from(qh[j])).sum();
    let a = if v.is_multiple_of(2) { 256 * dot } else { dot };
    let (mul, b) = m.logit_affine(v);
    (i128::from(b) + ((a * i128::from(mul)) >> 32)) as i32
}

/// The predictor's top-k against a straightforward full-logit reference computed here: the
/// same integer logits, ranked the same, and probabilities within the 1/256-nat quantization of
/// an exact softmax over the real-valued logits.
#[test]
fn top_k_matches_a_full_softmax_reference() {
    let t = Tensors::random(301, 16, 2, 4);
    let bytes = t.file();
    let m = QuantModel::from_bytes(&bytes).unwrap();
    let mut p = predictor(&m);
    assert_eq!(p.top_k::<5>().unwrap_err(), lstm_core::PredictError::NoContext);
    assert_eq!(p.feed(301).unwrap_err(), lstm_core::PredictError::Token { id: 301, vocab: 301 });
    for token in [3u32, 141, 7, 300, 0] {
        p.feed(token).unwrap();
        let qh: Vec<i16> = p.top_hidden().iter().map(|&h| quantize_unit(h)).collect();
        let logits: Vec<i32> = (0..301).map(|v| reference_logit(&m, &qh, v)).collect();
        let max = f64::from(*logits.iter().max().unwrap());
        let z: f64 = logits.iter().map(|&l| ((f64::from(l) - max) / 256.0).exp()).sum();
        let mut order: Vec<usize> = (0..301).collect();
        order.sort_by(|&a, &b| logits[b].cmp(&logits[a]).then(a.cmp(&b)));
        let top = p.top_k::<5>().unwrap();
        assert_eq!(top.len(), 5);
        for (c, &want) in top.iter().zip(&order) {
            assert_eq!(c.id as usize, want);
            assert_eq!(c.logit, logits[want] as f32 / 256.0);
            let prob = ((f64::from(logits[want]) - max) / 256.0).exp() / z;
            assert!((f64::from(c.prob) - prob).abs() < 1e-6 + 1e-5 * prob, "{} vs {prob}", c.prob);
        }
        for target in [order[0], order[7], order[300]] {
            let lp = f64::from(p.log_prob(target as u32).unwrap());
            let want = (f64::from(logits[target]) - max) / 256.0 - z.ln();
            assert!((lp - want).abs() < 1e-5, "log p({target}) = {lp} vs {want}");
        }
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

/// A model wider than one exact segment (D = 300 > 256) predicts the same top words through the
/// wide path as the reference.
#[test]
fn wide_rows_sum_per_segment() {
    let t = Tensors::random(40, 300, 1, 8);
    let bytes = t.file();
    let m = QuantModel::from_bytes(&bytes).unwrap();
    let mut p = predictor(&m);
    p.feed(5).unwrap();
    let qh: Vec<i16> = p.top_hidden().iter().map(|&h| quantize_unit(h)).collect();
    let logits: Vec<i32> = (0..40).map(|v| reference_logit(&m, &qh, v)).collect();
    let best = (0..40).max_by(|&a, &b| logits[a].cmp(&logits[b]).then(b.cmp(&a))).unwrap();
    let top = p.top_k::<1>().unwrap()[0];
    assert_eq!(top.id as usize, best);
    assert_eq!(top.logit, logits[best] as f32 / 256.0);
}

#[test]
fn ram_does_not_depend_on_the_vocabulary() {
    let small = Tensors::random(10, 8, 2, 6);
    let large = Tensors::random(2000, 8, 2, 6);
    let (bs, bl) = (small.file(), large.file());
    let (ms, ml) = (QuantModel::from_bytes(&bs).unwrap(), QuantModel::from_bytes(&bl).unwrap());
    assert_eq!(P::float_len(&ms), P::float_len(&ml));
    assert_eq!(P::int_len(&ms), P::int_len(&ml));
}
