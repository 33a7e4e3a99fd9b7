//! One-pass sampling from softmax(z / T) over a stream of logits (Gumbel-max): the word with
//! the largest `z/T − ln(−ln u)`, `u` uniform in (0, 1), is a sample of that distribution. No
//! normaliser and no second pass, so logits can be produced and dropped one at a time.

use crate::Rng;

/// Running Gumbel-max choice. A temperature of 0 (or below) picks the largest logit.
#[derive(Debug, Clone, Copy)]
pub struct GumbelMax {
    temperature: f32,
    best: (f32, u32),
}

impl GumbelMax {
    /// An empty choice at `temperature`.
    pub fn new(temperature: f32) -> Self {
        GumbelMax { temperature, best: (f32::NEG_INFINITY, 0) }
    }

    /// Offers word `id` with logit `z`; draws one uniform from `rng` when sampling.
    #[inline]
    pub fn push(&mut self, id: u32, z: f32, rng: &mut Rng) {
        let key = if self.temperature > 0.0 {
            // u ∈ (0, 1]: the Gumbel noise −ln(−ln u) is finite (or +∞ at u = 1, still a key).
            let u = rng.next_f64().max(f64::MIN_POSITIVE);
            z / self.temperature - libm::log(-libm::log(u)) as f32
        } else {
            z
        };
        if key > self.best.0 {
            self.best = (key, id);
        }
    }

    /// The chosen word (0 if nothing was offered).
    pub fn winner(&self) -> u32 {
        self.best.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_temperature_is_argmax_and_draws_nothing() {
        let mut rng = Rng::new(3);
        let mut g = GumbelMax::new(0.0);
        for (id, z) in [(0, 1.0), (1, 3.0), (2, -2.0)] {
            g.push(id, z, &mut rng);
        }
        assert_eq!(g.winner(), 1);
        assert_eq!(rng, Rng::new(3));
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        let logits = [0.0f32, 1.0, 2.0];
        let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        let mut rng = Rng::new(11);
        let mut counts = [0usize; 3];
        let n = 30_000;
        for _ in 0..n {
            let mut g = GumbelMax::new(1.0);
            for (id, &l) in logits.iter().enumerate() {
                g.push(id as u32, l, &mut rng);
            }
            counts[g.winner() as usize] += 1;
        }
        for (c, &l) in counts.iter().zip(&logits) {
            let p = f64::from(l).exp() / z;
            assert!((*c as f64 / n as f64 - p).abs() < 0.01, "{counts:?}");
        }
    }
}
