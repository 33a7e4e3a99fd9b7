//! `e^(−d/256)` in Q31 for integer `d`: the exponential of the int8 model's softmax.
//!
//! The quantized predictor keeps logits as integers in units of 1/256 nat ([`STEPS_PER_NAT`]),
//! so every softmax term is `e^(−d/256)` for an integer distance `d` below the running maximum:
//! one table read instead of a floating-point `exp` per vocabulary word, and identical bits on
//! every target because the table is built by integer arithmetic at compile time.
//!
//! Built by repeated multiplication in Q63 with `e^(−1/256)` in Q64; the truncation of 8192
//! steps stays below 2⁻⁴⁹ in Q31 units, so every entry is the correctly rounded
//! `round(2³¹·e^(−d/256))` (tested against `libm::exp`). Entries from `d ≈ 5,900` on are 0:
//! terms that far below the maximum are under 2⁻³² of it.

/// Logit units per nat.
pub const STEPS_PER_NAT: i32 = 256;
/// Table length: distances of 32 nats and more read the last entry (0).
pub const LEN: usize = 8192;
/// `2³¹`, the value of a term at the maximum (`d = 0`).
pub const ONE: u32 = 1 << 31;

/// `e^(−1/256)·2⁶⁴`, rounded (computed with 60 significant digits).
const STEP_Q64: u128 = 18_374_827_034_086_858_297;

const fn build() -> [u32; LEN] {
    let mut table = [0u32; LEN];
    let mut t: u128 = 1 << 63; // e^0 in Q63
    let mut d = 0;
    while d < LEN {
        table[d] = ((t + (1 << 31)) >> 32) as u32;
        t = (t * STEP_Q64) >> 64;
        d += 1;
    }
    table
}

/// `round(2³¹·e^(−d/256))` for `d < LEN`.
pub static EXP_NEG_Q31: [u32; LEN] = build();

/// `2³¹·e^(−d/256)`, rounded; 0 from [`LEN`] on.
#[inline(always)]
pub fn exp_neg(d: u32) -> u32 {
    EXP_NEG_Q31[(d as usize).min(LEN - 1)]
}

/// Running `Σ e^(y−R)` over a stream of integer logits (1/256 nat), `R` the maximum so far,
/// as a Q31 sum in u64: exact integer arithmetic, so every target agrees to the bit.
///
/// `limit` (≤ `max`) is for scans with a fast path: logits up to it only add a term; the
/// others go through the caller, who calls [`IntLse::push`] and may lower or raise `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntLse {
    /// Largest logit so far.
    pub max: i32,
    /// `Σ 2³¹·e^((y − max)/256)`, each term rounded.
    pub sum: u64,
    /// Fast-path bound for scans.
    pub limit: i32,
}

impl Default for IntLse {
    fn default() -> Self {
        IntLse::new()
    }
}

impl IntLse {
    /// No terms yet.
    pub const fn new() -> Self {
        IntLse { max: i32::MIN, sum: 0, limit: i32::MIN }
    }

    /// Adds `e^(y/256)`.
    #[inline(always)]
    pub fn push(&mut self, y: i32) {
        if y > self.max {
            // Rescale the terms so far to the new maximum, sum·e^(−(y−R)/256) rounded, and
            // add the new term (1).
            let scale = u128::from(exp_neg(y.wrapping_sub(self.max) as u32));
            self.sum = ((u128::from(self.sum) * scale + (1 << 30)) >> 31) as u64 + u64::from(ONE);
            self.max = y;
        } else {
            self.sum += u64::from(exp_neg(self.max.wrapping_sub(y) as u32));
        }
    }

    /// Probability of logit `y` (≤ the maximum).
    pub fn prob(&self, y: i32) -> f32 {
        exp_neg(self.max.wrapping_sub(y) as u32) as f32 / self.sum as f32
    }

    /// Natural log-probability of logit `y`, with the exact (not tabulated) numerator.
    pub fn log_prob(&self, y: i32) -> f32 {
        let d = f64::from(y) - f64::from(self.max);
        (d / f64::from(STEPS_PER_NAT) - libm::log(self.sum as f64 / f64::from(ONE))) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_is_correctly_rounded() {
        for (d, &v) in EXP_NEG_Q31.iter().enumerate() {
            let exact = libm::exp(-(d as f64) / 256.0) * 2f64.powi(31);
            assert!((f64::from(v) - exact).abs() <= 0.5 + 1e-6, "d = {d}: {v} vs {exact}");
        }
    }

    #[test]
    fn test_vectors() {
        // (d, entry): e^0, e^(−1/256), e^(−1), e^(−10), far tail.
        let vectors = [(0u32, 2_147_483_648u32), (1, 2_139_111_403), (256, 790_015_084), (2560, 97_496), (8191, 0)];
        for (d, want) in vectors {
            assert_eq!(exp_neg(d), want, "d = {d}");
        }
        assert_eq!(exp_neg(u32::MAX), 0);
        assert_eq!(exp_neg(0), ONE);
    }

    #[test]
    fn running_sum_matches_a_direct_sum() {
        let ys = [0i32, -300, 512, 511, -9000, 2000, 2000, -70_000];
        let mut lse = IntLse::new();
        ys.iter().for_each(|&y| lse.push(y));
        assert_eq!(lse.max, 2000);
        let direct: f64 = ys.iter().map(|&y| (f64::from(y - 2000) / 256.0).exp()).sum();
        let got = lse.sum as f64 / f64::from(ONE);
        assert!((got - direct).abs() < 1e-8, "{got} vs {direct}");
        assert!((f64::from(lse.prob(2000)) - 1.0 / direct).abs() < 1e-7);
        assert!((f64::from(lse.log_prob(-300)) - ((-2300.0 / 256.0) - direct.ln())).abs() < 1e-6);
    }
}
