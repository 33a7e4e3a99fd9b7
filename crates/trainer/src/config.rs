//! Training configuration: named presets from `presets.toml`, each overridable field by field.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The preset table, compiled in so the binary needs no file at run time.
pub const PRESETS_TOML: &str = include_str!("presets.toml");

/// Everything that defines a training run. Stored in every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Name of the preset this started from.
    pub preset: String,
    /// Embedding width D.
    pub dim: usize,
    /// LSTM hidden width H (must equal D: the output layer is tied to the embedding).
    pub hidden: usize,
    /// Number of stacked LSTM layers.
    pub layers: usize,
    /// Dropout probability between layers.
    pub dropout: f32,
    /// Parallel streams per iteration.
    pub batch: usize,
    /// Truncated-BPTT steps per iteration.
    pub time: usize,
    /// Initial SGD learning rate (divided by 4 whenever validation perplexity stalls).
    pub lr: f32,
    /// Global gradient-norm threshold.
    pub max_grad: f32,
    /// Number of epochs.
    pub epochs: usize,
    /// Seed for initialisation and dropout.
    #[serde(default = "default_seed")]
    pub seed: u64,
}

fn default_seed() -> u64 {
    1
}

/// Preset fields as written in `presets.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PresetEntry {
    dim: usize,
    hidden: usize,
    layers: usize,
    dropout: f32,
    batch: usize,
    time: usize,
    lr: f32,
    max_grad: f32,
    epochs: usize,
}

/// A configuration that cannot be trained, with the reason.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// No preset of that name.
    #[error("unknown preset `{name}` (available: {available})")]
    UnknownPreset {
        /// Requested name.
        name: String,
        /// Comma-separated list.
        available: String,
    },
    /// The tied output layer needs D = H.
    #[error(
        "the output layer is tied to the embedding, so the embedding width D={dim} must equal the hidden width H={hidden}"
    )]
    UntiableDims {
        /// D.
        dim: usize,
        /// H.
        hidden: usize,
    },
    /// A value outside its valid range.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

fn presets() -> BTreeMap<String, PresetEntry> {
    toml::from_str(PRESETS_TOML).expect("presets.toml is valid (checked by a unit test)")
}

/// Names of all presets.
pub fn preset_names() -> Vec<String> {
    presets().into_keys().collect()
}

impl Config {
    /// The named preset with seed 1.
    pub fn preset(name: &str) -> Result<Config, ConfigError> {
        let mut all = presets();
        let e = all.remove(name).ok_or_else(|| ConfigError::UnknownPreset {
            name: name.to_string(),
            available: preset_names().join(", "),
        })?;
        Ok(Config {
            preset: name.to_string(),
            dim: e.dim,
            hidden: e.hidden,
            layers: e.layers,
            dropout: e.dropout,
            batch: e.batch,
            time: e.time,
            lr: e.lr,
            max_grad: e.max_grad,
            epochs: e.epochs,
            seed: default_seed(),
        })
    }

    /// Checks that the configuration can be trained.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.dim != self.hidden {
            return Err(ConfigError::UntiableDims { dim: self.dim, hidden: self.hidden });
        }
        let positive = [("dim", self.dim), ("layers", self.layers), ("batch", self.batch), ("time", self.time)];
        for (field, v) in positive {
            if v == 0 {
                return Err(ConfigError::Invalid { field, reason: "must be at least 1".into() });
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ConfigError::Invalid {
                field: "dropout",
                reason: format!("{} is not in [0, 1)", self.dropout),
            });
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(ConfigError::Invalid { field: "lr", reason: format!("{} is not a positive number", self.lr) });
        }
        if !(self.max_grad.is_finite() && self.max_grad > 0.0) {
            return Err(ConfigError::Invalid {
                field: "max_grad",
                reason: format!("{} is not a positive number", self.max_grad),
            });
        }
        Ok(())
    }

    /// Names of the fields that differ from `other`, ignoring what a resumed run may change:
    /// `epochs` (extend the run), `lr` and `max_grad` (recover from divergence).
    pub fn differences(&self, other: &Config) -> Vec<String> {
        let mut out = Vec::new();
        let mut cmp = |name: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{name}: checkpoint has {a}, requested {b}"));
            }
        };
        cmp("preset", self.preset.clone(), other.preset.clone());
        cmp("dim", self.dim.to_string(), other.dim.to_string());
        cmp("hidden", self.hidden.to_string(), other.hidden.to_string());
        cmp("layers", self.layers.to_string(), other.layers.to_string());
        cmp("dropout", self.dropout.to_string(), other.dropout.to_string());
        cmp("batch", self.batch.to_string(), other.batch.to_string());
        cmp("time", self.time.to_string(), other.time.to_string());
        cmp("seed", self.seed.to_string(), other.seed.to_string());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_validate() {
        assert_eq!(preset_names(), ["book", "embedded", "small", "tiny"]);
        for name in preset_names() {
            Config::preset(&name).unwrap().validate().unwrap();
        }
        let e = Config::preset("embedded").unwrap();
        assert_eq!((e.dim, e.dropout, e.batch, e.time, e.lr, e.max_grad, e.epochs), (64, 0.2, 20, 35, 20.0, 0.25, 10));
        let b = Config::preset("book").unwrap();
        assert_eq!((b.dim, b.dropout, b.epochs), (650, 0.5, 40));
    }

    #[test]
    fn untied_dims_are_refused() {
        let mut c = Config::preset("tiny").unwrap();
        c.hidden = 32;
        let err = c.validate().unwrap_err();
        assert_eq!(err, ConfigError::UntiableDims { dim: 16, hidden: 32 });
        assert!(err.to_string().contains("D=16 must equal the hidden width H=32"));
    }

    #[test]
    fn unknown_preset_lists_the_known_ones() {
        let err = Config::preset("huge").unwrap_err().to_string();
        assert!(err.contains("huge") && err.contains("embedded"), "{err}");
    }
}
