//! The one seeded random generator of semla: SplitMix64.
//!
//! Training draws its randomness from `(seed, step, stream)`
//! ([`SplitMix64::for_step`]), corruptions and the synthetic world hash their
//! seeds with [`mix64`], benchmarks draw their random weights from it. A
//! generator whose algorithm is fixed here (not a library's, which may change
//! between versions) keeps every run reproducible, and a resumed training run
//! needs no generator state beyond the seed and the step.

/// The golden-ratio increment of SplitMix64.
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64 (Steele, Lea, Flood 2014): 64 bits of state, full period.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator started at `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The generator for `stream` of training step `step` of a run seeded with `seed`.
    pub fn for_step(seed: u64, step: u64, stream: u64) -> Self {
        let a = mix64(seed ^ 0x5EB1_A000_0000_0000);
        let b = mix64(a ^ step.wrapping_mul(GOLDEN_GAMMA));
        Self::new(b ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        finalize(self.state)
    }

    /// A uniform float in `[0, 1)` (53 random bits).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform float in `[-1, 1)` with 24 random bits (benchmark and test weights).
    pub fn next_signed_f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// A uniform float in `[low, high)`.
    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.next_f64()
    }

    /// A uniform integer in `0..n` (`n > 0`; returns 0 when `n == 0`).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        // Multiply-shift reduction: bias below 2^-32 for the sizes used here.
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// `n` values uniform in `[-scale, scale)` ([`next_signed_f32`](Self::next_signed_f32)).
    pub fn signed_values(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| scale * self.next_signed_f32()).collect()
    }
}

/// `n` values `offset + scale * u`, `u` uniform in `[-1, 1)` ([`SplitMix64::next_signed_f32`]),
/// from the generator seeded with the FNV-1a hash of `name`: the random test and
/// benchmark weights of a named tensor, reproducible anywhere (the reference
/// scripts under `tools/reference/` implement the same recipe in numpy, with the
/// multiply and the add rounded separately in f32, as here).
pub fn named_values(name: &str, n: usize, scale: f32, offset: f32) -> Vec<f32> {
    let mut hash = crate::hash::Fnv::new();
    hash.write(name.as_bytes());
    let mut rng = SplitMix64::new(hash.finish());
    (0..n)
        .map(|_| {
            let scaled = scale * rng.next_signed_f32();
            offset + scaled
        })
        .collect()
}

/// SplitMix64's output function on `z + γ`: one generator step from state `z`,
/// used to hash seed components into one well-mixed seed.
pub fn mix64(z: u64) -> u64 {
    finalize(z.wrapping_add(GOLDEN_GAMMA))
}

fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_values_match_the_reference_scripts_recipe() {
        // Printed by tools/reference/catseg_reference.py (numpy) for this key.
        let v = named_values(
            "sem_seg_head.predictor.transformer.conv1.weight",
            4,
            0.247_435_82,
            0.0,
        );
        let bits: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
        assert_eq!(bits, [0x3d90_46a3, 0xbdeb_2bd4, 0xbcbe_e8c8, 0xbe1b_db36]);
    }

    #[test]
    fn splitmix_matches_reference_values() {
        // First outputs for seed 1234567 from the reference C implementation
        // (prng.di.unimi.it/splitmix64.c).
        let mut g = SplitMix64::new(1234567);
        assert_eq!(g.next_u64(), 6457827717110365317);
        assert_eq!(g.next_u64(), 3203168211198807973);
        assert_eq!(mix64(1234567), 6457827717110365317);
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut g = SplitMix64::new(7);
        let mut seen = [false; 5];
        for _ in 0..200 {
            let v = g.below(5);
            assert!(v < 5);
            seen[v] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(g.below(0), 0);
    }

    #[test]
    fn signed_values_stay_in_range() {
        let v = SplitMix64::new(3).signed_values(1000, 0.5);
        assert!(v.iter().all(|x| (-0.5..0.5).contains(x)));
        assert!(v.iter().any(|x| *x < -0.4) && v.iter().any(|x| *x > 0.4));
    }
}
