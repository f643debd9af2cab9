//! Hash-based value noise and a tiny fast random stream for per-pixel effects.

pub(crate) use semla_core::rng::mix64;

/// A hash of a lattice point to `[0, 1)`.
#[inline]
pub(crate) fn hash2(x: i32, y: i32, seed: u32) -> f32 {
    let mut h = (x as u32).wrapping_mul(0x8da6_b343)
        ^ (y as u32).wrapping_mul(0xd816_3841)
        ^ seed.wrapping_mul(0xcb1a_b31f);
    h ^= h >> 13;
    h = h.wrapping_mul(0x5bd1_e995);
    h ^= h >> 15;
    (h & 0x00ff_ffff) as f32 / 16_777_216.0
}

/// Smooth value noise in `[0, 1)`: lattice hashes, smoothstep-interpolated.
#[inline]
pub(crate) fn value_noise(x: f32, y: f32, seed: u32) -> f32 {
    let (fx, fy) = (x.floor(), y.floor());
    let (ix, iy) = (fx as i32, fy as i32);
    let (tx, ty) = (x - fx, y - fy);
    let (sx, sy) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
    let a = hash2(ix, iy, seed);
    let b = hash2(ix + 1, iy, seed);
    let c = hash2(ix, iy + 1, seed);
    let d = hash2(ix + 1, iy + 1, seed);
    (a + (b - a) * sx) + ((c + (d - c) * sx) - (a + (b - a) * sx)) * sy
}

/// Two octaves of value noise, in `[0, 1)`.
#[inline]
pub(crate) fn fbm2(x: f32, y: f32, seed: u32) -> f32 {
    (2.0 * value_noise(x, y, seed) + value_noise(2.03 * x + 17.1, 2.03 * y - 5.3, seed ^ 0x55))
        / 3.0
}

/// Xorshift64* stream for per-pixel sensor noise (fast, seeded, portable).
pub(crate) struct FastRng(u64);

impl FastRng {
    pub fn new(seed: u64) -> Self {
        Self(mix64(seed) | 1)
    }

    #[inline]
    pub fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32) / 16_777_216.0
    }

    /// Approximately standard normal (sum of four uniforms, rescaled).
    #[inline]
    pub fn normal(&mut self) -> f32 {
        (self.next_f32() + self.next_f32() + self.next_f32() + self.next_f32() - 2.0) * 1.732
    }
}
