//! Host trainer for the 2-layer tied LSTM language model ("BetterRnnlm").
//!
//! Owns what needs `std`: data loading ([`data`]), presets ([`config`]), the fast threaded GEMM
//! ([`gemm`]), the model's buffers and call order ([`model`]), checkpoints ([`checkpoint`]), the
//! training loop ([`training`]), its parameter update ([`update`]) and the evaluation softmax's
//! `exp` with fused multiply-adds ([`fast_exp`]). The mathematics itself is `lstm-core`'s.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod export;
pub mod fast_exp;
pub mod gemm;
pub mod grad_demo;
pub mod model;
pub mod quantized;
pub mod training;
pub mod update;

pub use checkpoint::Checkpoint;
pub use config::Config;
pub use data::Corpus;
pub use training::{RunOptions, train};
