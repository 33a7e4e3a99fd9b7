//! A seeded, reproducible, `no_std` pseudo-random generator (SplitMix64).
//!
//! Its whole state is one `u64`, so a checkpoint stores it and training resumes with the exact
//! same dropout masks. Every target produces the same stream.

/// SplitMix64 (Steele, Lea, Flood 2014): passes BigCrush, one add and three mixes per output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator whose stream is determined by `seed`.
    pub const fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// The internal state, for checkpoints.
    pub const fn state(&self) -> u64 {
        self.state
    }

    /// Restores a generator from [`Rng::state`].
    pub const fn from_state(state: u64) -> Self {
        Rng { state }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 24 bits of resolution (every value exactly representable).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// Uniform in [0, 1) with 53 bits of resolution.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal N(0, 1) by Box–Muller (one value per call, the sine half discarded so
    /// the state stays a single `u64`).
    pub fn normal(&mut self) -> f32 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]
        let u2 = self.next_f64();
        (libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(core::f64::consts::TAU * u2)) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_stream() {
        // First outputs of SplitMix64 seeded with 1234567 (reference implementation values).
        let mut r = Rng::new(1_234_567);
        assert_eq!(r.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(r.next_u64(), 3_203_168_211_198_807_973);
    }

    #[test]
    fn uniform_and_normal_moments() {
        let mut r = Rng::new(7);
        let n = 20_000;
        let (mut s, mut s2, mut u) = (0.0f64, 0.0f64, 0.0f64);
        for _ in 0..n {
            let z = f64::from(r.normal());
            s += z;
            s2 += z * z;
            let x = r.next_f32();
            assert!((0.0..1.0).contains(&x));
            u += f64::from(x);
        }
        let mean = s / n as f64;
        assert!(mean.abs() < 0.03, "normal mean {mean}");
        assert!((s2 / n as f64 - 1.0).abs() < 0.05, "normal variance");
        assert!((u / n as f64 - 0.5).abs() < 0.01, "uniform mean");
    }

    #[test]
    fn state_round_trip() {
        let mut a = Rng::new(99);
        a.next_u64();
        let mut b = Rng::from_state(a.state());
        assert_eq!(a.next_u64(), b.next_u64());
    }
}
