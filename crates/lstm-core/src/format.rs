//! The exported model file: tied int8 weights, read in place (zero-copy) from flash.
//!
//! # Layout
//!
//! ```text
//! offset  size  field
//! 0       4     magic "LMQ8"
//! 4       2     format version, u16 little-endian (this code reads 2)
//! 6       n     payload, postcard-encoded `Payload` (below)
//! 6+n     4     CRC-32 (IEEE, as zlib/PNG) of bytes 0 .. 6+n, u32 little-endian
//! ```
//!
//! `Payload`, in order (postcard: integers as varints, byte strings as varint length + bytes):
//! - `header`: vocabulary size V, embedding width D, hidden width H (D = H, even), layer count
//!   L, scheme (2 = int8 symmetric per row, paired layout, integer logits).
//! - `pad`: 0–3 zero bytes, so that `weights` starts at a 4-byte-aligned file offset (the
//!   Cortex-M4 kernel loads four words at a time with `LDM`, which needs aligned addresses).
//! - `weights`: every int8 matrix in the paired layout of [`crate::quant::paired`], back to
//!   back: the embedding (V rows, rounded up to even, × D; row `v` is both the input embedding
//!   of word `v` and the output weights of logit `v`), then per layer `Wx` (4H × D) and `Wh`
//!   (4H × H), row `j` = gate column `j`, gate order f, g, i, o.
//! - `logits_pad`: 0–3 zero bytes aligning `logits` likewise.
//! - `logits`: V × (M, B), i32 little-endian: the integer output layer. With the top hidden
//!   state quantized at the fixed scale 1/127, logit `v` in units of 1/256 nat is
//!   `y = B + ⌊A·M / 2³²⌋`, where `A` is what the paired sums give for row `v` (256·Σq·x for
//!   even rows, Σq·x for odd ones; see [`logit_affine`]).
//! - `layers`: L × { `wx_scales`: 4H × f32, `wh_scales`: 4H × f32, `bias`: 4H × f32 }.
//! - `word_ends`: V × u32, end offset of each word in `words`; `words`: the vocabulary in id
//!   order, concatenated, UTF-8.
//!
//! Every f32, i32 and u32 is stored as 4 little-endian bytes and decoded by value, so no
//! unaligned reference is ever formed and the file may sit at any address (at a word-aligned
//! one the Cortex-M4 takes its fast path). [`QuantModel::from_bytes`] checks everything before
//! use; no input makes it panic, read out of bounds or loop without bound.

use crate::exp_table::STEPS_PER_NAT;
use crate::quant::f32_at;
use crate::quant::paired::paired_len;
use serde::{Deserialize, Serialize};

/// First four bytes of a model file.
pub const MAGIC: [u8; 4] = *b"LMQ8";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 2;
/// Most LSTM layers a file may hold.
pub const MAX_LAYERS: usize = 4;
/// Quantization scheme 2: int8, symmetric, per embedding row and per gate column, paired rows,
/// integer logits.
pub const SCHEME_INT8_PAIRED: u8 = 2;
/// Largest |B| of the integer output layer: with |⌊A·M/2³²⌋| ≤ 2²⁹ every logit stays within
/// ±2³⁰, so differences of two logits fit i32.
pub const MAX_LOGIT_BIAS: i32 = (1 << 29) - 1;
const PREFIX: usize = 6;
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// CRC-32 (IEEE) of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    CRC.checksum(bytes)
}

/// Model shape and scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Vocabulary size V.
    pub vocab: u32,
    /// Embedding width D.
    pub dim: u32,
    /// Hidden width H.
    pub hidden: u32,
    /// Number of LSTM layers.
    pub layers: u32,
    /// Quantization scheme.
    pub scheme: u8,
}

/// One LSTM layer's per-gate scales and biases, borrowed from the file (its weights are in
/// [`Payload::weights`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerBlob<'a> {
    /// `4H` f32 LE.
    pub wx_scales: &'a [u8],
    /// `4H` f32 LE.
    pub wh_scales: &'a [u8],
    /// `4H` f32 LE.
    pub bias: &'a [u8],
}

/// Everything between the prefix and the CRC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload<'a> {
    /// Shape.
    pub header: Header,
    /// 0–3 zero bytes aligning `weights` ([`QuantModel::encode`] chooses them).
    pub pad: &'a [u8],
    /// All int8 matrices, paired layout: embedding, then `Wx`, `Wh` of each layer.
    pub weights: &'a [u8],
    /// 0–3 zero bytes aligning `logits`.
    pub logits_pad: &'a [u8],
    /// `V × (M, B)` i32 LE: the integer output layer.
    pub logits: &'a [u8],
    /// The LSTM layers' scales and biases.
    #[serde(borrow)]
    pub layers: heapless::Vec<LayerBlob<'a>, MAX_LAYERS>,
    /// `V` u32 LE.
    pub word_ends: &'a [u8],
    /// Concatenated words.
    pub words: &'a str,
}

/// Why a model file was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatError {
    /// Too short to hold even the prefix and the checksum.
    TooShort {
        /// Bytes present.
        len: usize,
    },
    /// Does not start with "LMQ8".
    BadMagic,
    /// Written by a newer program.
    NewerVersion {
        /// Version in the file.
        found: u16,
    },
    /// Written by an older program in a layout this one no longer reads.
    Outdated {
        /// Version in the file.
        found: u16,
    },
    /// A version this program never wrote.
    UnknownVersion {
        /// Version in the file.
        found: u16,
    },
    /// CRC mismatch: truncated or corrupted.
    Checksum {
        /// CRC stored in the file.
        stored: u32,
        /// CRC of the content.
        computed: u32,
    },
    /// The payload does not decode.
    Decode,
    /// Bytes left after the payload.
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// Unknown quantization scheme.
    UnknownScheme {
        /// The scheme byte.
        scheme: u8,
    },
    /// Layer count in the header is 0, above [`MAX_LAYERS`], or differs from the layers stored.
    LayerCount {
        /// Header's count.
        header: u32,
        /// Layers stored.
        stored: usize,
    },
    /// The tied output needs D = H, and sizes must be non-zero.
    BadDimensions {
        /// V.
        vocab: u32,
        /// D.
        dim: u32,
        /// H.
        hidden: u32,
    },
    /// A tensor's length differs from what the header implies.
    Length {
        /// Which tensor.
        what: &'static str,
        /// Layer index, where it applies.
        layer: Option<usize>,
        /// Expected bytes.
        expected: usize,
        /// Bytes stored.
        actual: usize,
    },
    /// A scale is zero, negative, NaN or infinite, or a bias is not finite.
    NonFinite {
        /// Which tensor.
        what: &'static str,
        /// Element index.
        index: usize,
    },
    /// A logit multiplier is not positive, or a logit bias exceeds [`MAX_LOGIT_BIAS`].
    LogitAffine {
        /// Word id.
        index: usize,
    },
    /// Word offsets decrease, overrun the text, or split a UTF-8 character.
    Vocabulary {
        /// Word id.
        index: usize,
    },
}

impl core::fmt::Display for FormatError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            FormatError::TooShort { len } => write!(f, "file too short ({len} bytes) to be a model"),
            FormatError::BadMagic => f.write_str("not a model file (bad magic bytes; expected \"LMQ8\")"),
            FormatError::NewerVersion { found } => write!(
                f,
                "model format version {found} is newer than this program reads ({FORMAT_VERSION}); upgrade it"
            ),
            FormatError::Outdated { found } => write!(
                f,
                "model format version {found} predates the paired int8 layout of version {FORMAT_VERSION}; export the checkpoint again with `host export`"
            ),
            FormatError::UnknownVersion { found } => write!(f, "unknown model format version {found}"),
            FormatError::Checksum { stored, computed } => write!(
                f,
                "checksum mismatch (stored {stored:08x}, computed {computed:08x}): the file is truncated or corrupted"
            ),
            FormatError::Decode => f.write_str("payload does not decode: the file is malformed"),
            FormatError::TrailingBytes { count } => write!(f, "{count} unexpected bytes after the payload"),
            FormatError::UnknownScheme { scheme } => write!(f, "unknown quantization scheme {scheme}"),
            FormatError::LayerCount { header, stored } => {
                write!(f, "header says {header} layers, file stores {stored} (at most {MAX_LAYERS})")
            }
            FormatError::BadDimensions { vocab, dim, hidden } => write!(
                f,
                "bad dimensions V={vocab} D={dim} H={hidden}: all must be non-zero, D must equal H (tied output) and be even (paired int8 rows)"
            ),
            FormatError::Length { what, layer, expected, actual } => match layer {
                Some(l) => write!(f, "layer {l} {what}: expected {expected} bytes, found {actual}"),
                None => write!(f, "{what}: expected {expected} bytes, found {actual}"),
            },
            FormatError::NonFinite { what, index } => {
                write!(f, "{what}[{index}] is not a finite positive scale or finite bias")
            }
            FormatError::LogitAffine { index } => {
                write!(f, "logit of word {index}: the multiplier must be positive and |bias| at most {MAX_LOGIT_BIAS}")
            }
            FormatError::Vocabulary { index } => write!(f, "vocabulary entry {index} has invalid offsets"),
        }
    }
}

impl core::error::Error for FormatError {}

/// A validated model, borrowing its tensors from the file bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantModel<'a> {
    payload: Payload<'a>,
    vocab: usize,
    dim: usize,
    layers: usize,
}

fn expect_len(
    what: &'static str,
    layer: Option<usize>,
    actual: usize,
    expected: Option<usize>,
) -> Result<(), FormatError> {
    match expected {
        Some(e) if e == actual => Ok(()),
        _ => Err(FormatError::Length { what, layer, expected: expected.unwrap_or(usize::MAX), actual }),
    }
}

fn check_scales(what: &'static str, bytes: &[u8], positive: bool) -> Result<(), FormatError> {
    for index in 0..bytes.len() / 4 {
        let v = f32_at(bytes, index).unwrap_or(f32::NAN);
        let ok = v.is_finite() && (!positive || v > 0.0);
        if !ok {
            return Err(FormatError::NonFinite { what, index });
        }
    }
    Ok(())
}

/// Bytes of a postcard varint.
fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

/// `(M, B)` of word `v` from the `logits` bytes (zeros past the end).
fn logit_at(logits: &[u8], v: usize) -> (i32, i32) {
    let word = |i: usize| logits.get(4 * i..4 * i + 4).map_or(0, |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    (word(2 * v), word(2 * v + 1))
}

/// The paired sums give `A = 256·Σq·x` for even rows and `Σq·x` for odd ones (see
/// [`crate::quant::paired`]), and the top hidden state has scale 1/127: the logit in nats is
/// `A·scale/127` (÷256 for even rows), so in units of 1/256 nat the multiplier is
/// `M = scale/127·2³²` (even) or `scale/127·2⁴⁰` (odd). This is `scale / M`.
fn row_factor(v: usize) -> f32 {
    if v.is_multiple_of(2) { 127.0 / 4_294_967_296.0 } else { 127.0 / 1_099_511_627_776.0 }
}

/// `(M, B)` of the integer output layer for embedding row `v` with quantization scale `scale`
/// and output bias `bias` (nats); `None` when they do not fit it (a scale over 127/512, i.e.
/// embedding values beyond ±31, or |bias| over 2²¹ nats).
pub fn logit_affine(v: usize, scale: f32, bias: f32) -> Option<(i32, i32)> {
    let m = libm::round(f64::from(scale) / f64::from(row_factor(v)));
    let b = libm::round(f64::from(bias) * f64::from(STEPS_PER_NAT));
    let fits = (1.0..=f64::from(i32::MAX)).contains(&m) && b.abs() <= f64::from(MAX_LOGIT_BIAS);
    fits.then_some((m as i32, b as i32))
}

impl<'a> QuantModel<'a> {
    /// Validates `bytes` completely and returns a model that borrows from them.
    pub fn from_bytes(bytes: &'a [u8]) -> Result<QuantModel<'a>, FormatError> {
        if bytes.len() < PREFIX + 4 {
            if bytes.len() >= 4 && bytes[..4] != MAGIC {
                return Err(FormatError::BadMagic);
            }
            return Err(FormatError::TooShort { len: bytes.len() });
        }
        if bytes[..4] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version > FORMAT_VERSION {
            return Err(FormatError::NewerVersion { found: version });
        }
        if version == 1 {
            return Err(FormatError::Outdated { found: version });
        }
        if version != FORMAT_VERSION {
            return Err(FormatError::UnknownVersion { found: version });
        }
        let (body, crc_bytes) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
        let computed = crc32(body);
        if stored != computed {
            return Err(FormatError::Checksum { stored, computed });
        }
        let (payload, rest) =
            postcard::take_from_bytes::<Payload<'a>>(&body[PREFIX..]).map_err(|_| FormatError::Decode)?;
        if !rest.is_empty() {
            return Err(FormatError::TrailingBytes { count: rest.len() });
        }
        Self::validate(payload)
    }

    fn validate(payload: Payload<'a>) -> Result<QuantModel<'a>, FormatError> {
        let h = payload.header;
        if h.scheme != SCHEME_INT8_PAIRED {
            return Err(FormatError::UnknownScheme { scheme: h.scheme });
        }
        if h.layers == 0 || h.layers as usize > MAX_LAYERS || h.layers as usize != payload.layers.len() {
            return Err(FormatError::LayerCount { header: h.layers, stored: payload.layers.len() });
        }
        if h.vocab == 0 || h.dim == 0 || h.dim != h.hidden || !h.dim.is_multiple_of(2) {
            return Err(FormatError::BadDimensions { vocab: h.vocab, dim: h.dim, hidden: h.hidden });
        }
        let (v, d, layers) = (h.vocab as usize, h.dim as usize, h.layers as usize);
        for pad in [payload.pad, payload.logits_pad] {
            if pad.len() > 3 {
                return Err(FormatError::Length {
                    what: "alignment padding",
                    layer: None,
                    expected: 3,
                    actual: pad.len(),
                });
            }
        }
        let weights =
            paired_len(v, d).zip(paired_len(4 * d, 2 * d)).and_then(|(e, l)| e.checked_add(l.checked_mul(layers)?));
        expect_len("weights", None, payload.weights.len(), weights)?;
        expect_len("logits", None, payload.logits.len(), v.checked_mul(8))?;
        expect_len("word offsets", None, payload.word_ends.len(), v.checked_mul(4))?;
        for index in 0..v {
            let (m, b) = logit_at(payload.logits, index);
            if m <= 0 || b.unsigned_abs() > MAX_LOGIT_BIAS.unsigned_abs() {
                return Err(FormatError::LogitAffine { index });
            }
        }
        let g = d.checked_mul(4);
        for (l, layer) in payload.layers.iter().enumerate() {
            let gb = g.and_then(|g| g.checked_mul(4));
            expect_len("wx scales", Some(l), layer.wx_scales.len(), gb)?;
            expect_len("wh scales", Some(l), layer.wh_scales.len(), gb)?;
            expect_len("bias", Some(l), layer.bias.len(), gb)?;
            check_scales("wx scales", layer.wx_scales, true)?;
            check_scales("wh scales", layer.wh_scales, true)?;
            check_scales("bias", layer.bias, false)?;
        }
        let mut start = 0usize;
        for index in 0..v {
            let end = payload.word_ends[4 * index..4 * index + 4].try_into().map(u32::from_le_bytes).unwrap_or(u32::MAX)
                as usize;
            if end < start || end > payload.words.len() || !payload.words.is_char_boundary(end) {
                return Err(FormatError::Vocabulary { index });
            }
            start = end;
        }
        if start != payload.words.len() {
            return Err(FormatError::Vocabulary { index: v - 1 });
        }
        Ok(QuantModel { payload, vocab: v, dim: d, layers })
    }

    /// Vocabulary size V.
    pub fn vocab(&self) -> usize {
        self.vocab
    }
    /// Width D = H.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Number of LSTM layers.
    pub fn layers(&self) -> usize {
        self.layers
    }
    /// The decoded payload.
    pub fn payload(&self) -> &Payload<'a> {
        &self.payload
    }

    /// Word of `id`.
    pub fn word(&self, id: u32) -> Option<&'a str> {
        let id = id as usize;
        if id >= self.vocab {
            return None;
        }
        let end_at = |i: usize| {
            u32::from_le_bytes([
                self.payload.word_ends[4 * i],
                self.payload.word_ends[4 * i + 1],
                self.payload.word_ends[4 * i + 2],
                self.payload.word_ends[4 * i + 3],
            ]) as usize
        };
        let start = if id == 0 { 0 } else { end_at(id - 1) };
        self.payload.words.get(start..end_at(id))
    }

    /// Id of `word` (a linear scan: the device has no room for an index).
    pub fn token(&self, word: &str) -> Option<u32> {
        (0..self.vocab as u32).find(|&id| self.word(id) == Some(word))
    }

    /// The embedding in the paired layout (V rows rounded up to even, × D).
    pub fn embedding(&self) -> &'a [u8] {
        &self.payload.weights[..self.embedding_len()]
    }

    fn embedding_len(&self) -> usize {
        self.vocab.div_ceil(2) * 2 * self.dim
    }

    /// Layer `l`'s `Wx` and `Wh` (4H rows each), paired layout.
    pub fn layer_weights(&self, l: usize) -> (&'a [u8], &'a [u8]) {
        let m = 4 * self.dim * self.dim;
        let at = self.embedding_len() + l * 2 * m;
        self.payload.weights[at..at + 2 * m].split_at(m)
    }

    /// Layer `l`'s scales and biases.
    pub fn layer(&self, l: usize) -> &LayerBlob<'a> {
        &self.payload.layers[l]
    }

    /// `(M, B)` of logit `v`: `y = B + ⌊A·M / 2³²⌋` in units of 1/256 nat.
    pub fn logit_affine(&self, v: usize) -> (i32, i32) {
        logit_at(self.payload.logits, v)
    }

    /// Scale of embedding row `v` (as an input, `x = scale·q`), recovered from its multiplier.
    pub fn embedding_scale(&self, v: usize) -> f32 {
        self.logit_affine(v).0 as f32 * row_factor(v)
    }

    /// Output bias of word `v` in nats (exact to 1/512 nat).
    pub fn out_bias(&self, v: usize) -> f32 {
        self.logit_affine(v).1 as f32 / STEPS_PER_NAT as f32
    }

    /// Writes the file for `payload` into `out` and returns its length. `payload.pad` and
    /// `payload.logits_pad` are replaced by the zero bytes that align `weights` and `logits` to
    /// 4 bytes.
    pub fn encode(payload: &Payload<'_>, out: &mut [u8]) -> Result<usize, FormatError> {
        if out.len() < PREFIX + 4 {
            return Err(FormatError::TooShort { len: out.len() });
        }
        out[..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        // Offset of the weight bytes: prefix, header, pad length (one byte), pad, weights length;
        // then of the logits: weights, pad length, pad, logits length.
        let header = postcard::to_slice(&payload.header, &mut out[PREFIX..]).map_err(|_| FormatError::Decode)?.len();
        let before = PREFIX + header + 1 + varint_len(payload.weights.len());
        let zeros = [0u8; 3];
        let pad = &zeros[..(4 - before % 4) % 4];
        let after = before + pad.len() + payload.weights.len() + 1 + varint_len(payload.logits.len());
        let logits_pad = &zeros[..(4 - after % 4) % 4];
        let aligned = Payload { pad, logits_pad, ..payload.clone() };
        let n = postcard::to_slice(&aligned, &mut out[PREFIX..]).map_err(|_| FormatError::Decode)?.len();
        let end = PREFIX + n;
        if out.len() < end + 4 {
            return Err(FormatError::TooShort { len: out.len() });
        }
        let crc = crc32(&out[..end]);
        out[end..end + 4].copy_from_slice(&crc.to_le_bytes());
        Ok(end + 4)
    }
}
