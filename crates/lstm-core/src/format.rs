//! The exported model file: tied int8 weights, read in place (zero-copy) from flash.
//!
//! # Layout
//!
//! ```text
//! offset  size  field
//! 0       4     magic "LMQ8"
//! 4       2     format version, u16 little-endian (this code reads 1)
//! 6       n     payload, postcard-encoded `Payload` (below)
//! 6+n     4     CRC-32 (IEEE, as zlib/PNG) of bytes 0 .. 6+n, u32 little-endian
//! ```
//!
//! `Payload`, in order (postcard: integers as varints, byte strings as varint length + bytes):
//! - `header`: vocabulary size V, embedding width D, hidden width H, layer count L, scheme
//!   (1 = int8 symmetric, one scale per embedding row and per LSTM gate column).
//! - `embedding`: V × D int8, row-major; `embedding_scales`: V × f32. Row `v` is both the input
//!   embedding of word `v` and the output weights of logit `v` (tied).
//! - `layers`: L × { `wx`: 4H × D int8 (row `j` = gate column `j` of `Wx`, so each output is one
//!   contiguous dot product), `wx_scales`: 4H × f32, `wh`: 4H × H int8, `wh_scales`: 4H × f32,
//!   `bias`: 4H × f32 }, gate order f, g, i, o. Layers after the first read H-wide inputs.
//! - `out_bias`: V × f32.
//! - `word_ends`: V × u32, end offset of each word in `words`; `words`: the vocabulary in id
//!   order, concatenated, UTF-8.
//!
//! Every f32 and u32 is stored as 4 little-endian bytes and decoded by value, so no unaligned
//! reference is ever formed and the file may sit at any address. [`QuantModel::from_bytes`]
//! checks everything before use; no input makes it panic, read out of bounds or loop without
//! bound.

use crate::quant::f32_at;
use serde::{Deserialize, Serialize};

/// First four bytes of a model file.
pub const MAGIC: [u8; 4] = *b"LMQ8";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Most LSTM layers a file may hold.
pub const MAX_LAYERS: usize = 4;
/// Quantization scheme 1: int8, symmetric, per embedding row and per gate column.
pub const SCHEME_INT8_PER_ROW: u8 = 1;
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

/// One LSTM layer's tensors, borrowed from the file.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerBlob<'a> {
    /// `4H × D_in` int8.
    pub wx: &'a [u8],
    /// `4H` f32 LE.
    pub wx_scales: &'a [u8],
    /// `4H × H` int8.
    pub wh: &'a [u8],
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
    /// `V × D` int8.
    pub embedding: &'a [u8],
    /// `V` f32 LE.
    pub embedding_scales: &'a [u8],
    /// The LSTM layers.
    #[serde(borrow)]
    pub layers: heapless::Vec<LayerBlob<'a>, MAX_LAYERS>,
    /// `V` f32 LE.
    pub out_bias: &'a [u8],
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
                "bad dimensions V={vocab} D={dim} H={hidden}: all must be non-zero and D must equal H (tied output)"
            ),
            FormatError::Length { what, layer, expected, actual } => match layer {
                Some(l) => write!(f, "layer {l} {what}: expected {expected} bytes, found {actual}"),
                None => write!(f, "{what}: expected {expected} bytes, found {actual}"),
            },
            FormatError::NonFinite { what, index } => {
                write!(f, "{what}[{index}] is not a finite positive scale or finite bias")
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
        if h.scheme != SCHEME_INT8_PER_ROW {
            return Err(FormatError::UnknownScheme { scheme: h.scheme });
        }
        if h.layers == 0 || h.layers as usize > MAX_LAYERS || h.layers as usize != payload.layers.len() {
            return Err(FormatError::LayerCount { header: h.layers, stored: payload.layers.len() });
        }
        if h.vocab == 0 || h.dim == 0 || h.dim != h.hidden {
            return Err(FormatError::BadDimensions { vocab: h.vocab, dim: h.dim, hidden: h.hidden });
        }
        let (v, d) = (h.vocab as usize, h.dim as usize);
        let g = d.checked_mul(4);
        expect_len("embedding", None, payload.embedding.len(), v.checked_mul(d))?;
        expect_len("embedding scales", None, payload.embedding_scales.len(), v.checked_mul(4))?;
        expect_len("output bias", None, payload.out_bias.len(), v.checked_mul(4))?;
        expect_len("word offsets", None, payload.word_ends.len(), v.checked_mul(4))?;
        check_scales("embedding scales", payload.embedding_scales, true)?;
        check_scales("output bias", payload.out_bias, false)?;
        for (l, layer) in payload.layers.iter().enumerate() {
            let w = g.and_then(|g| g.checked_mul(d));
            let gb = g.and_then(|g| g.checked_mul(4));
            expect_len("wx", Some(l), layer.wx.len(), w)?;
            expect_len("wh", Some(l), layer.wh.len(), w)?;
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
        Ok(QuantModel { payload, vocab: v, dim: d, layers: h.layers as usize })
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

    /// Int8 row `v` of the embedding and its scale.
    pub fn embedding_row(&self, v: usize) -> (&'a [u8], f32) {
        let d = self.dim;
        (&self.payload.embedding[v * d..(v + 1) * d], f32_at(self.payload.embedding_scales, v).unwrap_or(0.0))
    }

    /// Output bias of word `v`.
    pub fn out_bias(&self, v: usize) -> f32 {
        f32_at(self.payload.out_bias, v).unwrap_or(0.0)
    }

    /// Layer `l`'s tensors.
    pub fn layer(&self, l: usize) -> &LayerBlob<'a> {
        &self.payload.layers[l]
    }

    /// Bytes the file takes: prefix + payload + CRC.
    pub fn encode(payload: &Payload<'_>, out: &mut [u8]) -> Result<usize, FormatError> {
        if out.len() < PREFIX + 4 {
            return Err(FormatError::TooShort { len: out.len() });
        }
        out[..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        let n = postcard::to_slice(payload, &mut out[PREFIX..]).map_err(|_| FormatError::Decode)?.len();
        let end = PREFIX + n;
        if out.len() < end + 4 {
            return Err(FormatError::TooShort { len: out.len() });
        }
        let crc = crc32(&out[..end]);
        out[end..end + 4].copy_from_slice(&crc.to_le_bytes());
        Ok(end + 4)
    }
}
