//! Training checkpoints: everything needed to resume bit-exactly, in one self-checking file.
//!
//! Layout: `MAGIC` (8 bytes) · format version (u32 LE) · payload length (u64 LE) · payload
//! (postcard) · CRC-32 of everything before it (u32 LE). Files are written to a temporary name,
//! synced, then renamed over the target, so a crash never leaves a half-written checkpoint.

use crate::config::Config;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// First bytes of every checkpoint.
pub const MAGIC: &[u8; 8] = b"LSTMCKPT";
/// Current format version.
pub const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 8;

/// Where training stands, so it can continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Epochs fully completed.
    pub epoch: usize,
    /// Iterations done inside the current epoch.
    pub iter_in_epoch: usize,
    /// Iterations done in total.
    pub step: u64,
    /// Current learning rate.
    pub lr: f32,
    /// Best validation perplexity so far.
    pub best_val_ppl: Option<f64>,
    /// Dropout generator state.
    pub rng_state: u64,
    /// LSTM (h, c) of every layer of the training streams.
    pub layer_state: Vec<Vec<f32>>,
    /// Sum of training losses and their count in the current epoch (for reporting).
    pub epoch_loss_sum: f64,
    /// Count for `epoch_loss_sum`.
    pub epoch_loss_count: u64,
    /// Training wall time so far, seconds.
    pub elapsed_s: f64,
    /// Whether every epoch has run.
    pub finished: bool,
}

/// A checkpoint: configuration, vocabulary, parameters, progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The run's configuration.
    pub config: Config,
    /// Words in id order.
    pub vocab: Vec<String>,
    /// Flat parameters (see `model::Layout`).
    pub params: Vec<f32>,
    /// Training progress.
    pub progress: Progress,
}

/// Why a checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// I/O failure.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Not a checkpoint at all.
    #[error("{path} is not a checkpoint of this program (bad magic bytes)")]
    NotACheckpoint {
        /// File.
        path: PathBuf,
    },
    /// Written by a newer program.
    #[error(
        "{path} has checkpoint format version {found}; this program reads version {VERSION} (upgrade it to read newer files)"
    )]
    UnsupportedVersion {
        /// File.
        path: PathBuf,
        /// Version in the file.
        found: u32,
    },
    /// Shorter than its header says.
    #[error("{path} is truncated: {actual} bytes, the header promises {expected}")]
    Truncated {
        /// File.
        path: PathBuf,
        /// Bytes expected.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// Bytes changed after writing.
    #[error("{path} is corrupt: CRC-32 mismatch (stored {stored:08x}, computed {computed:08x})")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// CRC in the file.
        stored: u32,
        /// CRC of the content.
        computed: u32,
    },
    /// Structure does not decode or is inconsistent.
    #[error("{path} is malformed: {reason}")]
    Malformed {
        /// File.
        path: PathBuf,
        /// Details.
        reason: String,
    },
}

impl Checkpoint {
    /// Serialises to the file format.
    pub fn to_bytes(&self) -> Vec<u8> {
        let payload = postcard::to_stdvec(self).expect("checkpoint types always serialise");
        let mut out = Vec::with_capacity(HEADER + payload.len() + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&payload);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses and verifies the file format; `path` names the file in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Checkpoint, CheckpointError> {
        let path_buf = || path.to_path_buf();
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(CheckpointError::NotACheckpoint { path: path_buf() });
        }
        if bytes.len() < HEADER {
            return Err(CheckpointError::Truncated {
                path: path_buf(),
                expected: HEADER as u64 + 4,
                actual: bytes.len() as u64,
            });
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(CheckpointError::UnsupportedVersion { path: path_buf(), found: version });
        }
        let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
        let expected = (HEADER as u64).saturating_add(len).saturating_add(4);
        if (bytes.len() as u64) < expected {
            return Err(CheckpointError::Truncated { path: path_buf(), expected, actual: bytes.len() as u64 });
        }
        if (bytes.len() as u64) > expected {
            return Err(CheckpointError::Malformed {
                path: path_buf(),
                reason: format!("{} bytes of trailing data", bytes.len() as u64 - expected),
            });
        }
        let body_end = HEADER + len as usize;
        let stored = u32::from_le_bytes(bytes[body_end..].try_into().expect("4 bytes"));
        let computed = crc32fast::hash(&bytes[..body_end]);
        if stored != computed {
            return Err(CheckpointError::Corrupt { path: path_buf(), stored, computed });
        }
        let ckpt: Checkpoint = postcard::from_bytes(&bytes[HEADER..body_end])
            .map_err(|e| CheckpointError::Malformed { path: path_buf(), reason: e.to_string() })?;
        ckpt.check_consistency().map_err(|reason| CheckpointError::Malformed { path: path_buf(), reason })?;
        Ok(ckpt)
    }

    /// Model shape implied by the configuration and vocabulary.
    pub fn dims(&self) -> crate::model::Dims {
        crate::model::Dims { vocab: self.vocab.len(), dim: self.config.dim, layers: self.config.layers }
    }

    fn check_consistency(&self) -> Result<(), String> {
        self.config.validate().map_err(|e| e.to_string())?;
        let layout = crate::model::Layout::new(self.dims());
        if self.params.len() != layout.total {
            return Err(format!(
                "{} parameters, but V={} D={} layers={} needs {}",
                self.params.len(),
                self.vocab.len(),
                self.config.dim,
                self.config.layers,
                layout.total
            ));
        }
        if let Some(i) = self.params.iter().position(|v| !v.is_finite()) {
            return Err(format!("parameter {i} is not finite"));
        }
        let nh = self.config.batch * self.config.hidden;
        let states_ok = self.progress.layer_state.is_empty()
            || (self.progress.layer_state.len() == 2 * self.config.layers
                && self.progress.layer_state.iter().all(|s| s.len() == nh));
        if !states_ok {
            return Err("saved LSTM states do not match batch × hidden".into());
        }
        Ok(())
    }

    /// Reads and verifies a checkpoint file.
    pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io { path: path.to_path_buf(), source })?;
        Checkpoint::from_bytes(&bytes, path)
    }

    /// Writes atomically: temporary file, fsync, rename.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        write_atomic(path, &self.to_bytes())
    }
}

/// Writes `bytes` to `path` so that readers see either the old or the new file, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let io = |source| CheckpointError::Io { path: path.to_path_buf(), source };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = dir.join(name);
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        let config = Config::preset("tiny").unwrap();
        let vocab: Vec<String> = ["a", "b", "<eos>"].iter().map(|s| s.to_string()).collect();
        let layout = crate::model::Layout::new(crate::model::Dims { vocab: 3, dim: 16, layers: 2 });
        Checkpoint {
            params: (0..layout.total).map(|i| i as f32 * 1e-3).collect(),
            progress: Progress {
                epoch: 1,
                iter_in_epoch: 2,
                step: 3,
                lr: 5.0,
                best_val_ppl: Some(123.5),
                rng_state: 42,
                layer_state: vec![vec![0.5; 4 * 16]; 4],
                epoch_loss_sum: 1.0,
                epoch_loss_count: 1,
                elapsed_s: 2.0,
                finished: false,
            },
            config,
            vocab,
        }
    }

    #[test]
    fn round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.ckpt");
        let c = sample();
        c.save(&path).unwrap();
        assert_eq!(Checkpoint::load(&path).unwrap(), c);
        assert!(!dir.path().join("x.ckpt.tmp").exists());
    }

    #[test]
    fn every_corruption_is_reported() {
        let p = Path::new("m.ckpt");
        let good = sample().to_bytes();
        assert!(matches!(Checkpoint::from_bytes(b"PK\x03\x04zip!", p), Err(CheckpointError::NotACheckpoint { .. })));
        let mut newer = good.clone();
        newer[8] = 2;
        let err = Checkpoint::from_bytes(&newer, p).unwrap_err();
        assert!(matches!(err, CheckpointError::UnsupportedVersion { found: 2, .. }), "{err}");
        assert!(err.to_string().contains("version 2"));
        for cut in [10, HEADER, good.len() / 2, good.len() - 1] {
            assert!(
                matches!(Checkpoint::from_bytes(&good[..cut], p), Err(CheckpointError::Truncated { .. })),
                "cut {cut}"
            );
        }
        let mut flipped = good.clone();
        flipped[HEADER + 40] ^= 0x10;
        assert!(matches!(Checkpoint::from_bytes(&flipped, p), Err(CheckpointError::Corrupt { .. })));
        let mut longer = good.clone();
        longer.push(0);
        assert!(matches!(Checkpoint::from_bytes(&longer, p), Err(CheckpointError::Malformed { .. })));
        let err = Checkpoint::load(Path::new("/nonexistent/dir/last.ckpt")).unwrap_err().to_string();
        assert!(err.starts_with("/nonexistent/dir/last.ckpt: "), "{err}");
    }

    #[test]
    fn inconsistent_contents_are_malformed() {
        let mut c = sample();
        c.params.pop();
        let err = Checkpoint::from_bytes(&c.to_bytes(), Path::new("c")).unwrap_err().to_string();
        assert!(err.contains("parameters, but V=3 D=16 layers=2 needs"), "{err}");
        let mut c = sample();
        c.params[0] = f32::NAN;
        assert!(Checkpoint::from_bytes(&c.to_bytes(), Path::new("c")).unwrap_err().to_string().contains("not finite"));
    }
}
