//! Export of a trained checkpoint: the tied int8 model file read by `lstm-core` (and the
//! firmware), and f32 safetensors for other tools.

use crate::checkpoint::Checkpoint;
use crate::model::Layout;
use lstm_core::format::{Header, LayerBlob, Payload, QuantModel, SCHEME_INT8_PAIRED, logit_affine};
use lstm_core::quant::paired::{paired_len, quantize_paired};
use std::path::Path;

/// Bytes taken by each part of an int8 model file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SizeBreakdown {
    /// Tied embedding: int8 values and the integer output layer's per-row multiplier.
    pub embedding: usize,
    /// LSTM weight matrices and their per-column scales.
    pub lstm: usize,
    /// LSTM biases and the output bias.
    pub biases: usize,
    /// Word offsets and text.
    pub vocabulary: usize,
    /// Whole file, including header, length prefixes and CRC.
    pub total: usize,
}

/// Quantizes each row of a `rows × cols` row-major matrix, appends the int8 rows to `weights`
/// in the paired layout and returns the per-row scales.
fn quantize_rows(data: &[f32], rows: usize, cols: usize, weights: &mut Vec<u8>) -> Vec<f32> {
    let (mut q, mut scales) = (vec![0i8; rows * cols], vec![0.0f32; rows]);
    let at = weights.len();
    weights.resize(at + paired_len(rows, cols).expect("matrix size fits usize"), 0);
    quantize_paired(&data[..rows * cols], rows, cols, &mut q, &mut scales, &mut weights[at..]);
    scales
}

/// `rows × cols` → `cols × rows`.
fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = data[r * cols + c];
        }
    }
    t
}

fn le(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Builds the int8 model file of a checkpoint.
pub fn export_int8(ckpt: &Checkpoint) -> Result<(Vec<u8>, SizeBreakdown), String> {
    let dims = ckpt.dims();
    if dims.layers > lstm_core::format::MAX_LAYERS {
        return Err(format!(
            "{} layers: the model format holds at most {}",
            dims.layers,
            lstm_core::format::MAX_LAYERS
        ));
    }
    let layout = Layout::new(dims);
    let (v, d) = (dims.vocab, dims.dim);
    let p = &ckpt.params;
    if d % 2 != 0 {
        return Err(format!("D = {d} is odd: the int8 format pairs columns, so D must be even"));
    }
    let mut weights = Vec::new();
    let emb_scales = quantize_rows(&p[layout.embedding.clone()], v, d, &mut weights);
    let embedding_bytes = weights.len();
    let mut layer_bytes = Vec::new();
    for l in 0..dims.layers {
        let w = layout.lstm_weights(p, l);
        let wx_scales = quantize_rows(&transpose(w.wx, d, 4 * d), 4 * d, d, &mut weights);
        let wh_scales = quantize_rows(&transpose(w.wh, d, 4 * d), 4 * d, d, &mut weights);
        layer_bytes.push([le(&wx_scales), le(&wh_scales), le(w.b)]);
    }
    let out_bias = &p[layout.out_bias.clone()];
    let mut logits = Vec::with_capacity(8 * v);
    for (word, (&scale, &bias)) in emb_scales.iter().zip(out_bias).enumerate() {
        let (m, b) = logit_affine(word, scale, bias).ok_or_else(|| {
            format!(
                "word {word} (\"{}\"): embedding scale {scale:e} or output bias {bias} does not fit the integer output layer (embedding values beyond ±31 or a bias beyond ±2·10⁶)",
                ckpt.vocab.get(word).map_or("?", String::as_str)
            )
        })?;
        logits.extend(m.to_le_bytes());
        logits.extend(b.to_le_bytes());
    }
    let mut words = String::new();
    let mut word_ends = Vec::with_capacity(4 * v);
    for w in &ckpt.vocab {
        words.push_str(w);
        let end = u32::try_from(words.len()).map_err(|_| "vocabulary text over 4 GiB".to_string())?;
        word_ends.extend(end.to_le_bytes());
    }
    let mut layers = lstm_core::heapless::Vec::new();
    for [wx_scales, wh_scales, bias] in &layer_bytes {
        layers.push(LayerBlob { wx_scales, wh_scales, bias }).map_err(|_| "too many layers".to_string())?;
    }
    let payload = Payload {
        header: Header {
            vocab: v as u32,
            dim: d as u32,
            hidden: d as u32,
            layers: dims.layers as u32,
            scheme: SCHEME_INT8_PAIRED,
        },
        pad: &[],
        logits_pad: &[],
        weights: &weights,
        logits: &logits,
        layers,
        word_ends: &word_ends,
        words: &words,
    };
    // Tensor bytes plus generous room for the varint length prefixes and the header.
    let capacity = weights.len()
        + logits.len()
        + word_ends.len()
        + words.len()
        + layer_bytes.iter().flatten().map(Vec::len).sum::<usize>()
        + 256;
    let mut file = vec![0u8; capacity];
    let n = QuantModel::encode(&payload, &mut file).map_err(|e| e.to_string())?;
    file.truncate(n);
    let lstm_weights: usize =
        weights.len() - embedding_bytes + layer_bytes.iter().map(|[wxs, whs, _]| wxs.len() + whs.len()).sum::<usize>();
    // The (M, B) pairs: M stands for the embedding's per-row scale, B for the output bias.
    let biases = layer_bytes.iter().map(|l| l[2].len()).sum::<usize>() + 4 * v;
    let breakdown = SizeBreakdown {
        embedding: embedding_bytes + 4 * v,
        lstm: lstm_weights,
        biases,
        vocabulary: word_ends.len() + words.len(),
        total: n,
    };
    Ok((file, breakdown))
}

/// Writes the f32 weights as safetensors (`embed.weight` V×D, `lstm.{l}.wx` D×4H,
/// `lstm.{l}.wh` H×4H, `lstm.{l}.b` 4H, gate order f,g,i,o, `out.bias` V) and `vocab.txt`
/// beside it (one word per line, in id order).
pub fn export_safetensors(ckpt: &Checkpoint, path: &Path) -> Result<std::path::PathBuf, String> {
    use safetensors::tensor::{Dtype, TensorView};
    let dims = ckpt.dims();
    let layout = Layout::new(dims);
    let (v, d) = (dims.vocab, dims.dim);
    let p = &ckpt.params;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> =
        vec![("embed.weight".into(), vec![v, d], le(&p[layout.embedding.clone()]))];
    for l in 0..dims.layers {
        let w = layout.lstm_weights(p, l);
        tensors.push((format!("lstm.{l}.wx"), vec![d, 4 * d], le(w.wx)));
        tensors.push((format!("lstm.{l}.wh"), vec![d, 4 * d], le(w.wh)));
        tensors.push((format!("lstm.{l}.b"), vec![4 * d], le(w.b)));
    }
    tensors.push(("out.bias".into(), vec![v], le(&p[layout.out_bias.clone()])));
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            Ok((name.clone(), TensorView::new(Dtype::F32, shape.clone(), bytes).map_err(|e| e.to_string())?))
        })
        .collect::<Result<_, String>>()?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("gate_order".to_string(), "f,g,i,o".to_string());
    meta.insert("tied".to_string(), "output weight = embed.weight transposed".to_string());
    meta.insert("preset".to_string(), ckpt.config.preset.clone());
    let bytes = safetensors::serialize(views, &Some(meta)).map_err(|e| e.to_string())?;
    crate::checkpoint::write_atomic(path, &bytes).map_err(|e| e.to_string())?;
    let vocab_path = path.with_file_name("vocab.txt");
    let text: String = ckpt.vocab.iter().map(|w| format!("{w}\n")).collect();
    crate::checkpoint::write_atomic(&vocab_path, text.as_bytes()).map_err(|e| e.to_string())?;
    Ok(vocab_path)
}
