//! The diamond-square plasma fractal of ImageNet-C's `fog`.

use rand::Rng;
use rand::rngs::StdRng;

/// A `size x size` (power of two, at least 2) toroidal plasma fractal,
/// row-major, normalised to `[0, 1]`, by the diamond-square algorithm as
/// published with ImageNet-C: start from `m[0, 0] = 0`, step `s = size`,
/// amplitude `wibble = 100`; while `s >= 2`:
///
/// - squares: each centre `(i s + s/2, j s + s/2)` gets the mean of its four
///   corners plus `wibble * U(-wibble, wibble)`;
/// - diamonds: each edge midpoint gets the mean of its two corner and two
///   centre neighbours (indices wrap around) plus the same kind of noise;
/// - `s /= 2`, `wibble /= decay`.
///
/// A larger `decay` makes the fine detail fainter (smoother fog).
pub fn plasma_fractal(size: usize, decay: f32, rng: &mut StdRng) -> Vec<f32> {
    let n = size.max(2).next_power_of_two();
    let mut m = vec![0.0f64; n * n];
    let mut step = n;
    let mut wibble = 100.0f64;
    let decay = f64::from(decay.max(1e-3));
    let at = |y: usize, x: usize| (y % n) * n + (x % n);
    while step >= 2 {
        let half = step / 2;
        let cells = n / step;
        let noise = |rng: &mut StdRng| wibble * rng.random_range(-wibble..wibble);
        // Squares.
        for i in 0..cells {
            for j in 0..cells {
                let (y, x) = (i * step, j * step);
                let sum = m[at(y, x)]
                    + m[at(y + step, x)]
                    + m[at(y, x + step)]
                    + m[at(y + step, x + step)];
                m[at(y + half, x + half)] = sum / 4.0 + noise(rng);
            }
        }
        // Diamonds: the midpoints of the top edges, then of the left edges.
        for i in 0..cells {
            for j in 0..cells {
                let (y, x) = (i * step, j * step);
                let centre_below = m[at(y + half, x + half)];
                let centre_above = m[at(y + n - half, x + half)];
                let sum = centre_below + centre_above + m[at(y, x)] + m[at(y, x + step)];
                m[at(y, x + half)] = sum / 4.0 + noise(rng);
            }
        }
        for i in 0..cells {
            for j in 0..cells {
                let (y, x) = (i * step, j * step);
                let centre_right = m[at(y + half, x + half)];
                let centre_left = m[at(y + half, x + n - half)];
                let sum = centre_right + centre_left + m[at(y, x)] + m[at(y + step, x)];
                m[at(y + half, x)] = sum / 4.0 + noise(rng);
            }
        }
        step /= 2;
        wibble /= decay;
    }
    let min = m.iter().copied().fold(f64::INFINITY, f64::min);
    let max = m.iter().copied().fold(f64::NEG_INFINITY, f64::max) - min;
    let max = if max > 0.0 { max } else { 1.0 };
    m.iter().map(|&v| ((v - min) / max) as f32).collect()
}
