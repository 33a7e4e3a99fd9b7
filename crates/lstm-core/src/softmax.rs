//! Softmax and softmax cross-entropy, stable through log-sum-exp.
//!
//! Each row is three vectorisable passes: the maximum, `exp(z − max)` in place with its
//! fixed-order sum ([`crate::exp`]), then the normalisation.

use crate::exp::{
    exp, exp_of_sums_shifted_sum, exp_shifted_sum, exp_sum, exp_sum_of_sums_with, max as row_max, max_of_sums,
    scale_and_accumulate,
};

use crate::{Error, check_len};

/// Replaces `row` by softmax(row). The largest entry is subtracted first, so `exp` never
/// overflows; the result sums to 1 and lies in [0, 1].
pub fn softmax_in_place(row: &mut [f32]) {
    let max = row_max(row);
    let sum = exp_shifted_sum(row, max);
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// The first target outside the vocabulary, as an error.
pub fn check_targets(targets: &[u32], vocab: usize) -> Result<(), Error> {
    match targets.iter().find(|&&t| t as usize >= vocab) {
        Some(&bad) => Err(Error::TokenOutOfRange { id: bad, vocab }),
        None => Ok(()),
    }
}

/// `log Σ exp(row)`, stable.
pub fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row_max(row);
    max + libm::logf(exp_sum(row, max))
}

/// Mean cross-entropy of `logits` (`M × V`) against `targets` (`M`), without the gradient.
/// Returns the **sum** of the negative log-likelihoods (so callers can average over any span).
pub fn cross_entropy_sum(logits: &[f32], vocab: usize, targets: &[u32]) -> Result<f64, Error> {
    check_len("logits", logits.len(), targets.len() * vocab)?;
    check_targets(targets, vocab)?;
    let mut total = 0.0f64;
    for (row, &t) in logits.chunks_exact(vocab.max(1)).zip(targets) {
        total += f64::from(log_sum_exp(row) - row[t as usize]);
    }
    Ok(total)
}

/// Fused softmax cross-entropy forward and backward.
///
/// On entry `logits` (`M × V`) holds the scores; on exit it holds
/// `d loss / d logits = (softmax − onehot(target)) / M`, where loss is the mean negative
/// log-likelihood over the `M` positions. Returns that mean loss.
pub fn softmax_cross_entropy(logits: &mut [f32], vocab: usize, targets: &[u32]) -> Result<f32, Error> {
    let m = targets.len().max(1);
    let total = softmax_cross_entropy_scaled(logits, vocab, targets, 1.0 / m as f32)?;
    Ok((total / m as f64) as f32)
}

/// The same on a block of rows of a larger batch: the gradient is scaled by `scale` (1/M for
/// the whole batch) and the **sum** of the block's negative log-likelihoods is returned, so a
/// host can run blocks in parallel.
pub fn softmax_cross_entropy_scaled(
    logits: &mut [f32],
    vocab: usize,
    targets: &[u32],
    scale: f32,
) -> Result<f64, Error> {
    check_len("logits", logits.len(), targets.len() * vocab)?;
    check_targets(targets, vocab)?;
    let mut total = 0.0f64;
    for (row, &t) in logits.chunks_exact_mut(vocab.max(1)).zip(targets) {
        total += f64::from(softmax_cross_entropy_row(row, t as usize, scale));
    }
    Ok(total)
}

/// One row: returns `−log softmax(row)[t]` and leaves `scale·(softmax(row) − onehot(t))` in
/// `row`. `t` must be in range (checked by the callers).
#[inline]
fn softmax_cross_entropy_row(row: &mut [f32], t: usize, scale: f32) -> f32 {
    let max = row_max(row);
    softmax_cross_entropy_row_from(row, max, t, scale)
}

/// [`softmax_cross_entropy_row`] once the row's maximum is known.
#[inline]
fn softmax_cross_entropy_row_from(row: &mut [f32], max: f32, t: usize, scale: f32) -> f32 {
    let target_shifted = row[t] - max;
    let sum = exp_shifted_sum(row, max);
    let k = scale / sum;
    row.iter_mut().for_each(|v| *v *= k);
    row[t] -= scale;
    libm::logf(sum) - target_shifted
}

/// [`softmax_cross_entropy_scaled`] for an affine output whose bias has not been added yet:
/// each row of `scores` (`x·W`) gets `bias` added on the fly, and the bias gradient (the sum of
/// the rows of `d loss / d logits`) is added into `d_bias` in the pass that scales the row.
/// Three passes over a row (its maximum, `exp` with the sum, the gradient) instead of five.
pub fn softmax_cross_entropy_biased(
    scores: &mut [f32],
    bias: &[f32],
    targets: &[u32],
    scale: f32,
    d_bias: &mut [f32],
) -> Result<f64, Error> {
    softmax_cross_entropy_biased_by(&ReferencePasses, scores, bias, targets, scale, d_bias)
}

/// The three passes over a row of [`softmax_cross_entropy_biased`]. A host may supply its own
/// (wider vectors than the compiler picks, say); they must compute the reference's bits, which
/// the default methods are.
pub trait BiasedRowPasses {
    /// `max(a[i] + b[i])`: [`crate::exp::max_of_sums`].
    fn max_of_sums(&self, a: &[f32], b: &[f32]) -> f32 {
        max_of_sums(a, b)
    }

    /// `values[i] ← exp(values[i] + offsets[i] − shift)` and their sum:
    /// [`crate::exp::exp_of_sums_shifted_sum`].
    fn exp_of_sums_shifted_sum(&self, values: &mut [f32], offsets: &[f32], shift: f32) -> f32 {
        exp_of_sums_shifted_sum(values, offsets, shift)
    }

    /// `values[i] ← values[i]·k`, `totals[i] += values[i]`: [`crate::exp::scale_and_accumulate`].
    fn scale_and_accumulate(&self, values: &mut [f32], k: f32, totals: &mut [f32]) {
        scale_and_accumulate(values, k, totals);
    }
}

/// The portable passes of [`crate::exp`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ReferencePasses;

impl BiasedRowPasses for ReferencePasses {}

/// [`softmax_cross_entropy_biased`] with the row passes of `passes`.
pub fn softmax_cross_entropy_biased_by(
    passes: &impl BiasedRowPasses,
    scores: &mut [f32],
    bias: &[f32],
    targets: &[u32],
    scale: f32,
    d_bias: &mut [f32],
) -> Result<f64, Error> {
    let vocab = bias.len();
    check_len("logits", scores.len(), targets.len() * vocab)?;
    check_len("bias gradient", d_bias.len(), vocab)?;
    check_targets(targets, vocab)?;
    let mut total = 0.0f64;
    for (row, &t) in scores.chunks_exact_mut(vocab.max(1)).zip(targets) {
        let t = t as usize;
        let max = passes.max_of_sums(row, bias);
        let target_shifted = (row[t] + bias[t]) - max;
        let sum = passes.exp_of_sums_shifted_sum(row, bias, max);
        let k = scale / sum;
        // Around the target, whose gradient also loses `scale` before it joins `d_bias`.
        let (before, from_target) = row.split_at_mut(t);
        let (d_before, d_from_target) = d_bias.split_at_mut(t);
        passes.scale_and_accumulate(before, k, d_before);
        if let (Some((g, after)), Some((d, d_after))) = (from_target.split_first_mut(), d_from_target.split_first_mut())
        {
            *g = *g * k - scale;
            *d += *g;
            passes.scale_and_accumulate(after, k, d_after);
        }
        total += f64::from(libm::logf(sum) - target_shifted);
    }
    Ok(total)
}

/// [`cross_entropy_sum`] for scores without their bias (added on the fly, `scores` unchanged).
pub fn cross_entropy_sum_biased(scores: &[f32], bias: &[f32], targets: &[u32]) -> Result<f64, Error> {
    cross_entropy_sum_biased_with(scores, bias, targets, exp)
}

/// [`cross_entropy_sum_biased`] with another `exp` (a host's faster one, see the trainer's
/// `fast_exp`); with [`exp`] itself the two are the same function.
pub fn cross_entropy_sum_biased_with(
    scores: &[f32],
    bias: &[f32],
    targets: &[u32],
    e: impl Fn(f32) -> f32 + Copy,
) -> Result<f64, Error> {
    let vocab = bias.len();
    check_len("logits", scores.len(), targets.len() * vocab)?;
    check_targets(targets, vocab)?;
    let mut total = 0.0f64;
    for (row, &t) in scores.chunks_exact(vocab.max(1)).zip(targets) {
        let t_us = t as usize;
        // Max of the biased row, then Σ exp, neither storing anything.
        let max = max_of_sums(row, bias);
        let sum = exp_sum_of_sums_with(row, bias, max, e);
        total += f64::from(max + libm::logf(sum) - (row[t_us] + bias[t_us]));
    }
    Ok(total)
}

/// `log Σ exp` of one row computed piece by piece: each piece of the row (a range of the
/// vocabulary) gives its own maximum and shifted sum, and pieces merge in any fixed order. A host
/// can then compute scores for a slice of the vocabulary at a time, reduce them while they are
/// in cache, and never hold a whole `rows × V` matrix or stream the output weights once per row
/// block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartialLogSumExp {
    /// Largest entry seen (−∞ for none).
    max: f32,
    /// `Σ exp(entry − max)` over the entries seen.
    sum: f32,
}

impl PartialLogSumExp {
    /// Nothing seen yet: merging it changes nothing.
    pub const EMPTY: PartialLogSumExp = PartialLogSumExp { max: f32::NEG_INFINITY, sum: 0.0 };

    /// The piece `scores[i] + bias[i]` of a row (over the common length), without storing the
    /// sums. A NaN entry makes the piece, and whatever it merges into, NaN.
    pub fn of_biased(scores: &[f32], bias: &[f32]) -> PartialLogSumExp {
        PartialLogSumExp::of_biased_with(scores, bias, exp)
    }

    /// [`PartialLogSumExp::of_biased`] with another `exp` (see
    /// [`cross_entropy_sum_biased_with`]).
    pub fn of_biased_with(scores: &[f32], bias: &[f32], e: impl Fn(f32) -> f32) -> PartialLogSumExp {
        let max = max_of_sums(scores, bias);
        if max == f32::NEG_INFINITY {
            // Empty, all −∞, or all NaN (the maximum skips NaN).
            let nan = scores.iter().zip(bias).any(|(s, b)| (s + b).is_nan());
            return if nan { PartialLogSumExp { max: f32::NAN, sum: f32::NAN } } else { PartialLogSumExp::EMPTY };
        }
        PartialLogSumExp { max, sum: exp_sum_of_sums_with(scores, bias, max, e) }
    }

    /// Both pieces together: the sums rescaled to the larger maximum (so nothing overflows).
    #[must_use]
    pub fn merge(self, other: PartialLogSumExp) -> PartialLogSumExp {
        let (hi, lo) = if other.max > self.max { (other, self) } else { (self, other) };
        if lo.sum == 0.0 {
            return hi;
        }
        PartialLogSumExp { max: hi.max, sum: hi.sum + lo.sum * crate::exp::exp(lo.max - hi.max) }
    }

    /// `log Σ exp` over every entry merged (−∞ for none).
    pub fn value(self) -> f32 {
        if self.sum == 0.0 { f32::NEG_INFINITY } else { self.max + libm::logf(self.sum) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn uniform_logits_give_log_v() {
        let mut logits = [3.0f32; 8];
        let loss = softmax_cross_entropy(&mut logits, 4, &[1, 3]).unwrap();
        assert!((loss - libm::logf(4.0)).abs() < 1e-6);
        // Gradient: (1/4 − onehot)/2.
        assert!((logits[0] - 0.125).abs() < 1e-7 && (logits[1] + 0.375).abs() < 1e-7);
    }

    #[test]
    fn huge_logits_stay_finite() {
        let mut row = [1e30f32, -1e30, 0.0, 1e30];
        let loss = softmax_cross_entropy(&mut row.clone(), 4, &[1]).unwrap();
        assert!(loss.is_finite() && loss > 1e29);
        softmax_in_place(&mut row);
        assert_eq!(row, [0.5, 0.0, 0.0, 0.5]);
    }

    #[test]
    fn bad_target_is_an_error() {
        assert!(matches!(
            softmax_cross_entropy(&mut [0.0; 4], 4, &[4]),
            Err(Error::TokenOutOfRange { id: 4, vocab: 4 })
        ));
    }

    #[test]
    fn biased_variants_equal_adding_the_bias_first() {
        let (m, v) = (3usize, 70usize);
        let scores: std::vec::Vec<f32> = (0..m * v).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.3).collect();
        let bias: std::vec::Vec<f32> = (0..v).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
        let targets = [4u32, 69, 0];
        let mut with_bias: std::vec::Vec<f32> = scores.iter().enumerate().map(|(i, z)| z + bias[i % v]).collect();
        let want_sum = cross_entropy_sum(&with_bias, v, &targets).unwrap();
        let got_sum = cross_entropy_sum_biased(&scores, &bias, &targets).unwrap();
        assert!((want_sum - got_sum).abs() < 1e-5, "{want_sum} vs {got_sum}");
        let want = softmax_cross_entropy_scaled(&mut with_bias, v, &targets, 0.5).unwrap();
        let mut fused = scores.clone();
        let mut d_bias = std::vec![0.0f32; v];
        let got = softmax_cross_entropy_biased(&mut fused, &bias, &targets, 0.5, &mut d_bias).unwrap();
        assert_eq!(want, got);
        assert_eq!(with_bias, fused);
        for j in 0..v {
            let col: f32 = (0..m).map(|i| with_bias[i * v + j]).sum();
            assert!((col - d_bias[j]).abs() < 1e-6);
        }
    }

    /// Test vectors: (row, piece lengths); the merged pieces give the whole row's log-sum-exp
    /// within 2e−6 relative (one `exp` of 3e−7 per merge, a few additions).
    #[test]
    fn pieces_merge_to_the_whole_row() {
        let ramp: std::vec::Vec<f32> = (0..1000).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 0.02).collect();
        let cases: [(&[f32], &[usize]); 5] = [
            (&[1.0, 2.0, 3.0], &[1, 2]),
            (&[3.0, 2.0, 1.0], &[2, 1]),
            (&[-1e30, 1e30, 0.0, 1e30], &[1, 1, 2]),
            (&ramp, &[256, 256, 256, 232]),
            (&ramp, &[1, 999]),
        ];
        for (row, pieces) in cases {
            assert_eq!(pieces.iter().sum::<usize>(), row.len());
            let zeros = std::vec![0.0f32; row.len()];
            let want = log_sum_exp(row);
            let mut at = 0;
            let mut merged = PartialLogSumExp::EMPTY;
            for &len in pieces {
                let piece = PartialLogSumExp::of_biased(&row[at..at + len], &zeros[at..at + len]);
                merged = merged.merge(piece);
                at += len;
            }
            let got = merged.value();
            assert!((got - want).abs() <= 2e-6 * want.abs().max(1.0), "{pieces:?}: {got} vs {want}");
            // The empty piece is the identity on either side.
            assert_eq!(merged.merge(PartialLogSumExp::EMPTY), merged);
            assert_eq!(PartialLogSumExp::EMPTY.merge(merged), merged);
        }
        assert_eq!(PartialLogSumExp::of_biased(&[], &[]), PartialLogSumExp::EMPTY);
        // NaN is never lost, whichever side it merges from, even from a piece of NaN only.
        let fine = PartialLogSumExp::of_biased(&[1.0, 2.0], &[0.0, 0.0]);
        for bad in [[f32::NAN, 1.0], [f32::NAN, f32::NAN], [f32::NEG_INFINITY, f32::NAN]] {
            let nan = PartialLogSumExp::of_biased(&bad, &[0.0, 0.0]);
            for merged in [
                nan,
                fine.merge(nan),
                nan.merge(fine),
                PartialLogSumExp::EMPTY.merge(nan),
                nan.merge(PartialLogSumExp::EMPTY),
            ] {
                assert!(merged.value().is_nan(), "{bad:?}: {merged:?}");
            }
        }
        assert_eq!(PartialLogSumExp::EMPTY.value(), f32::NEG_INFINITY);
        // The bias is added before anything else.
        let biased = PartialLogSumExp::of_biased(&[1.0, 5.0], &[2.0, -2.0]).value();
        assert!((biased - log_sum_exp(&[3.0, 3.0])).abs() < 1e-6);
    }

    proptest! {
        #[test]
        fn softmax_finite_normalised(v in proptest::collection::vec(-3.0e38f32..3.0e38, 1..40)) {
            let mut row = v.clone();
            softmax_in_place(&mut row);
            let sum: f32 = row.iter().sum();
            prop_assert!(row.iter().all(|p| p.is_finite() && (0.0..=1.0).contains(p)));
            prop_assert!((sum - 1.0).abs() < 1e-4);
            let lse = log_sum_exp(&v);
            prop_assert!(lse.is_finite());
        }

        #[test]
        fn cross_entropy_finite_nonnegative(v in proptest::collection::vec(-1.0e30f32..1.0e30, 2..40), t in 0usize..2) {
            let mut row = v.clone();
            let loss = softmax_cross_entropy(&mut row, v.len(), &[t as u32]).unwrap();
            prop_assert!(loss.is_finite() && loss >= 0.0);
            prop_assert!(row.iter().all(|g| g.is_finite() && (-1.0..=1.0).contains(g)));
            let s = cross_entropy_sum(&v, v.len(), &[t as u32]).unwrap();
            prop_assert!((s as f32 - loss).abs() <= 1e-6 * loss.abs().max(1.0));
        }
    }
}
