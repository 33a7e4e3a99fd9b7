//! The one implementation of the LSTM language-model mathematics.
//!
//! `no_std`, no allocator: every function works on caller-provided slices or on storage whose
//! size is fixed at construction. The trainer (host, std) and the firmware (Cortex-M) both call
//! this code, so the equations exist exactly once.
//!
//! Conventions:
//! - Matrices are row-major `f32` slices. A batch of `n` vectors of width `w` is an `n × w` matrix.
//! - Sequences are time-major: step `t` of a batch of `n` streams occupies rows `t·n .. (t+1)·n`.
//! - The LSTM pre-activation is fused, `A = x·Wx + h·Wh + b` of width `4H`, gate order
//!   **f, g, i, o** (forget, candidate, input, output).
//!
//! One concept per module, each with its own tests:
//! [`activation`], [`exp`], [`gemm`], [`cell`], [`layer`], [`embedding`], [`affine`], [`softmax`],
//! [`dropout`], [`rng`], [`optim`]; the int8 path: [`quant`] (per-row quantization, the paired
//! row layout and its Cortex-M4 kernels), [`exp_table`] (the integer softmax), [`format`] (the
//! exported model file, read in place) and [`predictor`] (next-word prediction with RAM
//! independent of V).
#![no_std]
// `unsafe` is denied everywhere but `quant::dsp` (single DSP instructions, Cortex-M4 only).
#![deny(unsafe_code)]

#[cfg(test)]
extern crate std;

pub mod activation;
pub mod affine;
pub mod cell;
pub mod dropout;
pub mod embedding;
pub mod exp;
pub mod exp_table;
pub mod format;
pub mod gemm;
pub mod layer;
pub mod optim;
pub mod predictor;
pub mod quant;
pub mod rng;
pub mod sampling;
pub mod softmax;

pub use format::{FormatError, QuantModel};
pub use gemm::{FixedRhsGemm, Gemm, Mat, NaiveGemm};
/// Re-exported so callers build `format::Payload` with the same `heapless` version.
pub use heapless;
pub use layer::{Lstm, LstmGrads, LstmWeights, PendingWeightGrads};
pub use predictor::{Candidate, PredictError, Predictor};
pub use rng::Rng;

/// Errors from the shape and state checks of the caller-buffer APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// A buffer's length differs from what the dimensions require.
    BufferLength {
        /// What the buffer holds.
        what: &'static str,
        /// Length the dimensions imply.
        expected: usize,
        /// Length given.
        actual: usize,
    },
    /// A token id is not below the vocabulary size.
    TokenOutOfRange {
        /// The offending id.
        id: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// `backward` was called without a fresh `forward` (the tape is consumed by `backward`).
    NoTape,
    /// More steps were asked for than the storage was built for.
    TooManySteps {
        /// Steps requested.
        steps: usize,
        /// Capacity.
        capacity: usize,
    },
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Error::BufferLength { what, expected, actual } => {
                write!(f, "{what}: expected {expected} values, got {actual}")
            }
            Error::TokenOutOfRange { id, vocab } => {
                write!(f, "token id {id} is outside the vocabulary of {vocab} words")
            }
            Error::NoTape => f.write_str("backward called without a forward pass to differentiate"),
            Error::TooManySteps { steps, capacity } => {
                write!(f, "{steps} steps requested but the layer holds at most {capacity}")
            }
        }
    }
}

impl core::error::Error for Error {}

/// Checks a buffer length, naming the buffer in the error.
pub(crate) fn check_len(what: &'static str, actual: usize, expected: usize) -> Result<(), Error> {
    if actual == expected { Ok(()) } else { Err(Error::BufferLength { what, expected, actual }) }
}
