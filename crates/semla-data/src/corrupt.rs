//! Photometric domain shifts: ImageNet-C / Cityscapes-C style corruptions.
//!
//! The definitions and per-severity constants follow Hendrycks & Dietterich,
//! "Benchmarking Neural Network Robustness to Common Corruptions and
//! Perturbations" (ICLR 2019), whose `make_imagenet_c.py` gives one parameter
//! tuple per severity 1..=5. As in Cityscapes-C (Michaelis et al. 2019,
//! "Benchmarking Robustness in Object Detection"), they are applied at the
//! image's native resolution: pixel-sized constants (blur radii, zoom factors)
//! are used as published, and the fog fractal is generated on the next power of
//! two covering the image. Two kinds are not part of ImageNet-C and are defined
//! here: `rain` (streaks plus darkening and haze) and `night` (gamma darkening
//! plus Poisson-Gaussian sensor noise), the latter replacing ImageNet-C's
//! `frost`, which needs photographs of frost we do not ship.
//!
//! Every corruption works on an [`RgbImage`] converted to `f32` in `[0, 1]` and
//! is deterministic: the random stream is a [`StdRng`] seeded from
//! `(seed, kind, severity, image_index)` only (see [`Corruption::apply`]).
//! Corruptions never move pixels between classes, so label maps stay valid
//! unchanged.

mod kernels;
mod plasma;

use std::fmt;
use std::str::FromStr;

use image::RgbImage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use kernels::FloatImage;
pub use plasma::plasma_fractal;

/// What can go wrong when naming or applying a corruption.
#[derive(Debug, thiserror::Error)]
pub enum CorruptError {
    /// The kind part of a name is not one of [`CorruptionKind::ALL`].
    #[error("unknown corruption kind `{name}` (known: {known})")]
    UnknownKind {
        /// The kind given.
        name: String,
        /// The known kinds, comma-separated.
        known: String,
    },
    /// A corruption name without a trailing severity digit, like `fog`.
    #[error(
        "corruption name `{name}` has no severity: expected a kind followed by 1-5, like `fog3`"
    )]
    MissingSeverity {
        /// The name given.
        name: String,
    },
    /// Severity outside `1..=5`.
    #[error("corruption severity {severity} is out of range: expected 1 to 5")]
    BadSeverity {
        /// The severity given.
        severity: u32,
    },
    /// The image has no pixels.
    #[error("cannot corrupt an empty image ({width}x{height})")]
    EmptyImage {
        /// Its width.
        width: u32,
        /// Its height.
        height: u32,
    },
    /// The JPEG round trip failed.
    #[error("JPEG compression failed: {0}")]
    Jpeg(#[from] image::ImageError),
}

/// The corruption families. Names are the ImageNet-C ones (snake case).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CorruptionKind {
    /// Additive white Gaussian noise.
    GaussianNoise,
    /// Poisson (photon) noise.
    ShotNoise,
    /// Salt-and-pepper noise.
    ImpulseNoise,
    /// Out-of-focus lens: convolution with an anti-aliased disk.
    DefocusBlur,
    /// Camera shake: one-sided Gaussian streak at a random angle.
    MotionBlur,
    /// Falling snow flakes plus whitening.
    Snow,
    /// Haze from a diamond-square plasma fractal.
    Fog,
    /// Rain streaks, darkening and haze (not in ImageNet-C; defined here).
    Rain,
    /// Dark night with sensor noise (not in ImageNet-C; defined here).
    Night,
    /// HSV value shift.
    Brightness,
    /// Contrast reduction towards the per-channel mean.
    Contrast,
    /// JPEG compression artefacts.
    Jpeg,
}

impl CorruptionKind {
    /// Every kind, in a stable order (also used to derive random streams).
    pub const ALL: [CorruptionKind; 12] = [
        CorruptionKind::GaussianNoise,
        CorruptionKind::ShotNoise,
        CorruptionKind::ImpulseNoise,
        CorruptionKind::DefocusBlur,
        CorruptionKind::MotionBlur,
        CorruptionKind::Snow,
        CorruptionKind::Fog,
        CorruptionKind::Rain,
        CorruptionKind::Night,
        CorruptionKind::Brightness,
        CorruptionKind::Contrast,
        CorruptionKind::Jpeg,
    ];

    /// The snake-case name used on the command line and in domain names.
    pub fn name(self) -> &'static str {
        match self {
            CorruptionKind::GaussianNoise => "gaussian_noise",
            CorruptionKind::ShotNoise => "shot_noise",
            CorruptionKind::ImpulseNoise => "impulse_noise",
            CorruptionKind::DefocusBlur => "defocus_blur",
            CorruptionKind::MotionBlur => "motion_blur",
            CorruptionKind::Snow => "snow",
            CorruptionKind::Fog => "fog",
            CorruptionKind::Rain => "rain",
            CorruptionKind::Night => "night",
            CorruptionKind::Brightness => "brightness",
            CorruptionKind::Contrast => "contrast",
            CorruptionKind::Jpeg => "jpeg",
        }
    }

    fn index(self) -> u64 {
        Self::ALL.iter().position(|&k| k == self).unwrap_or(0) as u64
    }

    fn known_names() -> String {
        Self::ALL
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for CorruptionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CorruptionKind {
    type Err = CorruptError;

    /// Accepts the snake-case name; `jpeg_compression` is an alias of `jpeg`.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let lower = name.trim().to_ascii_lowercase().replace('-', "_");
        if lower == "jpeg_compression" {
            return Ok(CorruptionKind::Jpeg);
        }
        Self::ALL
            .iter()
            .copied()
            .find(|k| k.name() == lower)
            .ok_or_else(|| CorruptError::UnknownKind {
                name: name.to_string(),
                known: Self::known_names(),
            })
    }
}

/// A fully specified photometric domain shift: kind, severity `1..=5` and the
/// seed of its random stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Corruption {
    /// Which shift.
    pub kind: CorruptionKind,
    /// How strong, `1..=5` (ImageNet-C's severities).
    pub severity: u8,
    /// Seed of the random stream (mixed with each image's index).
    pub seed: u64,
}

impl Corruption {
    /// Checks the severity (`1..=5`).
    pub fn new(kind: CorruptionKind, severity: u32, seed: u64) -> Result<Self, CorruptError> {
        if !(1..=5).contains(&severity) {
            return Err(CorruptError::BadSeverity { severity });
        }
        Ok(Self {
            kind,
            severity: severity as u8,
            seed,
        })
    }

    /// Parses a domain-style name such as `fog3`, `night2`, `gaussian_noise5`
    /// (kind name immediately followed by the severity digit; seed 0).
    pub fn parse(name: &str) -> Result<Self, CorruptError> {
        let trimmed = name.trim();
        let digits = trimmed
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if digits == 0 {
            return Err(CorruptError::MissingSeverity {
                name: name.to_string(),
            });
        }
        let (kind_part, severity_part) = trimmed.split_at(trimmed.len() - digits);
        let kind_part = kind_part.trim_end_matches(['_', '-']);
        let kind: CorruptionKind = kind_part.parse()?;
        let severity: u32 = severity_part
            .parse()
            .map_err(|_| CorruptError::BadSeverity { severity: u32::MAX })?;
        Self::new(kind, severity, 0)
    }

    /// The same corruption with another seed.
    pub fn with_seed(self, seed: u64) -> Self {
        Self { seed, ..self }
    }

    /// The domain-style name, like `fog3`.
    pub fn name(&self) -> String {
        format!("{}{}", self.kind.name(), self.severity)
    }

    /// The random stream of image number `image_index` under this corruption:
    /// a [`StdRng`] seeded by mixing `(seed, kind, severity, image_index)`.
    pub fn rng(&self, image_index: u64) -> StdRng {
        let mut state = semla_core::rng::mix64(self.seed ^ 0x5345_4d4c_4143_4f52);
        state =
            semla_core::rng::mix64(state ^ self.kind.index().wrapping_mul(0x9E37_79B9_7F4A_7C15));
        state = semla_core::rng::mix64(
            state ^ u64::from(self.severity).wrapping_mul(0xD1B5_4A32_D192_ED03),
        );
        state = semla_core::rng::mix64(state ^ image_index.wrapping_mul(0xA24B_AED4_963E_E407));
        StdRng::seed_from_u64(state)
    }

    /// Corrupts image number `image_index` of a domain (use the image's index
    /// in its split so that every image gets its own noise, reproducibly).
    pub fn apply(&self, image: &RgbImage, image_index: u64) -> Result<RgbImage, CorruptError> {
        let (width, height) = image.dimensions();
        if width == 0 || height == 0 {
            return Err(CorruptError::EmptyImage { width, height });
        }
        if !(1..=5).contains(&self.severity) {
            return Err(CorruptError::BadSeverity {
                severity: u32::from(self.severity),
            });
        }
        let s = usize::from(self.severity - 1);
        let mut rng = self.rng(image_index);
        if self.kind == CorruptionKind::Jpeg {
            return jpeg(image, JPEG_QUALITY[s]);
        }
        let mut x = FloatImage::from_rgb(image);
        match self.kind {
            CorruptionKind::GaussianNoise => {
                gaussian_noise(&mut x, GAUSSIAN_NOISE_STD[s], &mut rng)
            }
            CorruptionKind::ShotNoise => shot_noise(&mut x, SHOT_NOISE_PHOTONS[s], &mut rng),
            CorruptionKind::ImpulseNoise => {
                impulse_noise(&mut x, IMPULSE_NOISE_AMOUNT[s], &mut rng)
            }
            CorruptionKind::DefocusBlur => {
                let (radius, alias_blur) = DEFOCUS_BLUR[s];
                x = x.convolve(&kernels::disk_kernel(radius, alias_blur));
            }
            CorruptionKind::MotionBlur => {
                let (radius, sigma) = MOTION_BLUR[s];
                let angle = rng.random_range(-45.0..45.0);
                x = motion_blur(&x, radius, sigma, angle);
            }
            CorruptionKind::Snow => x = snow(&x, &SNOW[s], &mut rng),
            CorruptionKind::Fog => fog(&mut x, FOG[s], &mut rng),
            CorruptionKind::Rain => x = rain(&x, &RAIN[s], &mut rng),
            CorruptionKind::Night => night(&mut x, &NIGHT[s], &mut rng),
            CorruptionKind::Brightness => brightness(&mut x, BRIGHTNESS[s]),
            CorruptionKind::Contrast => contrast(&mut x, CONTRAST[s]),
            CorruptionKind::Jpeg => {}
        }
        Ok(x.to_rgb())
    }
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.kind.name(), self.severity)
    }
}

impl FromStr for Corruption {
    type Err = CorruptError;
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::parse(name)
    }
}

/// One-call form: corrupts `image` with `kind` at `severity` (`1..=5`) using
/// the random stream of `seed` (image index 0).
pub fn corrupt(
    image: &RgbImage,
    kind: CorruptionKind,
    severity: u32,
    seed: u64,
) -> Result<RgbImage, CorruptError> {
    Corruption::new(kind, severity, seed)?.apply(image, 0)
}

// ---------------------------------------------------------------------------
// Per-severity constants. ImageNet-C values are quoted from make_imagenet_c.py.
// ---------------------------------------------------------------------------

/// `gaussian_noise`: `x + N(0, c^2)` per channel, `c` = std in `[0, 1]` units.
const GAUSSIAN_NOISE_STD: [f32; 5] = [0.08, 0.12, 0.18, 0.26, 0.38];
/// `shot_noise`: `Poisson(x * c) / c`, `c` = photons at full scale.
const SHOT_NOISE_PHOTONS: [f32; 5] = [60.0, 25.0, 12.0, 5.0, 3.0];
/// `impulse_noise`: fraction of channel values set to 0 or 1 (half each).
const IMPULSE_NOISE_AMOUNT: [f32; 5] = [0.03, 0.06, 0.09, 0.17, 0.27];
/// `defocus_blur`: `(disk radius px, Gaussian anti-alias sigma)`.
const DEFOCUS_BLUR: [(u32, f32); 5] = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)];
/// `motion_blur`: ImageMagick `(radius, sigma)`; angle uniform in `[-45, 45)` degrees.
const MOTION_BLUR: [(u32, f32); 5] = [(10, 3.0), (15, 5.0), (15, 8.0), (15, 12.0), (20, 15.0)];
/// `fog`: `(fog strength t, plasma wibble decay)`; see [`fog`].
const FOG: [(f32, f32); 5] = [(1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)];
/// `brightness`: added to HSV value.
const BRIGHTNESS: [f32; 5] = [0.1, 0.2, 0.3, 0.4, 0.5];
/// `contrast`: factor on the deviation from the per-channel image mean.
const CONTRAST: [f32; 5] = [0.4, 0.3, 0.2, 0.1, 0.05];
/// `jpeg`: encoder quality.
const JPEG_QUALITY: [u8; 5] = [25, 18, 15, 10, 7];

/// `snow` parameters, ImageNet-C order.
struct SnowParams {
    /// Mean and std of the Gaussian flake field.
    loc: f32,
    scale: f32,
    /// Zoom of the flake field (bigger flakes).
    zoom: f32,
    /// Field values below this are no flake.
    threshold: f32,
    /// Motion blur of the flakes (radius, sigma), angle uniform in `[-135, -45)`.
    blur_radius: u32,
    blur_sigma: f32,
    /// Weight of the original image against its whitened version.
    blend: f32,
}

const SNOW: [SnowParams; 5] = [
    SnowParams {
        loc: 0.1,
        scale: 0.3,
        zoom: 3.0,
        threshold: 0.5,
        blur_radius: 10,
        blur_sigma: 4.0,
        blend: 0.8,
    },
    SnowParams {
        loc: 0.2,
        scale: 0.3,
        zoom: 2.0,
        threshold: 0.5,
        blur_radius: 12,
        blur_sigma: 4.0,
        blend: 0.7,
    },
    SnowParams {
        loc: 0.55,
        scale: 0.3,
        zoom: 4.0,
        threshold: 0.9,
        blur_radius: 12,
        blur_sigma: 8.0,
        blend: 0.7,
    },
    SnowParams {
        loc: 0.55,
        scale: 0.3,
        zoom: 4.5,
        threshold: 0.85,
        blur_radius: 12,
        blur_sigma: 8.0,
        blend: 0.65,
    },
    SnowParams {
        loc: 0.55,
        scale: 0.3,
        zoom: 2.5,
        threshold: 0.85,
        blur_radius: 12,
        blur_sigma: 12.0,
        blend: 0.55,
    },
];

/// `rain` parameters (our definition; see [`rain`]).
struct RainParams {
    /// Streaks per pixel.
    density: f32,
    /// Streak length as a fraction of the image height.
    length: f32,
    /// Streak opacity.
    alpha: f32,
    /// Fraction of light lost to the overcast sky.
    darken: f32,
    /// Weight of the grey haze veil.
    haze: f32,
}

const RAIN: [RainParams; 5] = [
    RainParams {
        density: 0.002,
        length: 0.05,
        alpha: 0.35,
        darken: 0.08,
        haze: 0.04,
    },
    RainParams {
        density: 0.004,
        length: 0.07,
        alpha: 0.4,
        darken: 0.14,
        haze: 0.08,
    },
    RainParams {
        density: 0.007,
        length: 0.09,
        alpha: 0.45,
        darken: 0.2,
        haze: 0.12,
    },
    RainParams {
        density: 0.011,
        length: 0.11,
        alpha: 0.5,
        darken: 0.26,
        haze: 0.16,
    },
    RainParams {
        density: 0.016,
        length: 0.13,
        alpha: 0.55,
        darken: 0.32,
        haze: 0.2,
    },
];

/// `night` parameters (our definition; see [`night`]).
struct NightParams {
    /// Gamma of the tone curve (darkens mid-tones more than highlights).
    gamma: f32,
    /// Exposure gain after the gamma.
    gain: f32,
    /// Photons at full scale (Poisson part: fewer photons, more noise).
    photons: f32,
    /// Read-noise std in `[0, 1]` units (Gaussian part).
    read_std: f32,
}

const NIGHT: [NightParams; 5] = [
    NightParams {
        gamma: 1.4,
        gain: 0.6,
        photons: 200.0,
        read_std: 0.01,
    },
    NightParams {
        gamma: 1.8,
        gain: 0.45,
        photons: 100.0,
        read_std: 0.015,
    },
    NightParams {
        gamma: 2.2,
        gain: 0.35,
        photons: 50.0,
        read_std: 0.02,
    },
    NightParams {
        gamma: 2.6,
        gain: 0.25,
        photons: 25.0,
        read_std: 0.025,
    },
    NightParams {
        gamma: 3.0,
        gain: 0.18,
        photons: 12.0,
        read_std: 0.03,
    },
];

// ---------------------------------------------------------------------------
// The corruptions.
// ---------------------------------------------------------------------------

/// Standard normal sample (Box-Muller).
fn standard_normal(rng: &mut StdRng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// Poisson sample: Knuth's product method for small means, a rounded normal
/// approximation (error below 1% in the std) for means above 64.
fn poisson(lambda: f32, rng: &mut StdRng) -> f32 {
    if lambda <= 0.0 {
        return 0.0;
    }
    if lambda > 64.0 {
        return (lambda + lambda.sqrt() * standard_normal(rng))
            .round()
            .max(0.0);
    }
    let limit = (-f64::from(lambda)).exp();
    let mut product: f64 = rng.random();
    let mut count = 0.0;
    while product > limit {
        product *= rng.random::<f64>();
        count += 1.0;
    }
    count
}

/// ImageNet-C `gaussian_noise`: `clip(x + N(0, std^2))`.
fn gaussian_noise(x: &mut FloatImage, std: f32, rng: &mut StdRng) {
    for v in &mut x.data {
        *v = (*v + std * standard_normal(rng)).clamp(0.0, 1.0);
    }
}

/// ImageNet-C `shot_noise`: `clip(Poisson(x * photons) / photons)`.
fn shot_noise(x: &mut FloatImage, photons: f32, rng: &mut StdRng) {
    for v in &mut x.data {
        *v = (poisson(*v * photons, rng) / photons).clamp(0.0, 1.0);
    }
}

/// ImageNet-C `impulse_noise` (scikit-image `s&p`): each channel value is,
/// with probability `amount`, replaced by 1 or 0 with equal chance.
fn impulse_noise(x: &mut FloatImage, amount: f32, rng: &mut StdRng) {
    for v in &mut x.data {
        if rng.random::<f32>() < amount {
            *v = if rng.random::<bool>() { 1.0 } else { 0.0 };
        }
    }
}

/// ImageMagick's `MotionBlurImage` as used by ImageNet-C: a one-sided kernel
/// of `2 * radius + 1` taps, tap `i` weighted `exp(-i^2 / (2 sigma^2))`
/// (normalised) and offset by `round(i * (cos a, sin a))` pixels, edges clamped.
fn motion_blur(x: &FloatImage, radius: u32, sigma: f32, angle_degrees: f32) -> FloatImage {
    let taps = 2 * radius as usize + 1;
    let (sin_a, cos_a) = angle_degrees.to_radians().sin_cos();
    let mut weights: Vec<f32> = (0..taps)
        .map(|i| (-((i * i) as f32) / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = weights.iter().sum();
    weights.iter_mut().for_each(|w| *w /= total);
    let offsets: Vec<(i64, i64)> = (0..taps)
        .map(|i| {
            (
                (i as f32 * cos_a).round() as i64,
                (i as f32 * sin_a).round() as i64,
            )
        })
        .collect();
    let mut out = FloatImage::zeros(x.width, x.height, x.channels);
    let (w, h) = (x.width as i64, x.height as i64);
    for y in 0..h {
        for xx in 0..w {
            let o = x.index(xx as usize, y as usize);
            for (weight, &(dx, dy)) in weights.iter().zip(&offsets) {
                let sx = (xx + dx).clamp(0, w - 1) as usize;
                let sy = (y + dy).clamp(0, h - 1) as usize;
                let s = x.index(sx, sy);
                for c in 0..x.channels {
                    out.data[o + c] += weight * x.data[s + c];
                }
            }
        }
    }
    out
}

/// ImageNet-C `snow`: a Gaussian field `N(loc, scale^2)` is zoomed (centre crop
/// of `1/zoom`, bilinear), thresholded, motion-blurred at an angle in
/// `[-135, -45)`; the image is whitened,
/// `x' = blend * x + (1 - blend) * max(x, 1.5 * gray(x) + 0.5)`, and the flakes
/// plus their 180° rotation are added: `clip(x' + f + rot180(f))`.
fn snow(x: &FloatImage, p: &SnowParams, rng: &mut StdRng) -> FloatImage {
    let (w, h) = (x.width, x.height);
    let mut field = FloatImage::zeros(w, h, 1);
    for v in &mut field.data {
        *v = p.loc + p.scale * standard_normal(rng);
    }
    let mut flakes = field.clipped_zoom(p.zoom);
    for v in &mut flakes.data {
        *v = if *v < p.threshold {
            0.0
        } else {
            v.clamp(0.0, 1.0)
        };
    }
    // ImageNet-C stores the flake layer as an 8-bit PNG before blurring.
    for v in &mut flakes.data {
        *v = (*v * 255.0).floor() / 255.0;
    }
    let angle = rng.random_range(-135.0..-45.0);
    let flakes = motion_blur(&flakes, p.blur_radius, p.blur_sigma, angle);
    let mut out = x.clone();
    for py in 0..h {
        for px in 0..w {
            let o = x.index(px, py);
            let gray = 0.299 * x.data[o] + 0.587 * x.data[o + 1] + 0.114 * x.data[o + 2];
            let flake = flakes.data[py * w + px] + flakes.data[(h - 1 - py) * w + (w - 1 - px)];
            for c in 0..3 {
                let v = x.data[o + c];
                let whitened = p.blend * v + (1.0 - p.blend) * v.max(gray * 1.5 + 0.5);
                out.data[o + c] = (whitened + flake).clamp(0.0, 1.0);
            }
        }
    }
    out
}

/// ImageNet-C `fog`: with `m = max(x)` over the image and `F` a plasma fractal
/// in `[0, 1]` (diamond-square, wibble decay `decay`, on the next power of two
/// covering the image, cropped top-left),
/// `x' = clip((x + t * F) * m / (m + t))`.
fn fog(x: &mut FloatImage, (strength, decay): (f32, f32), rng: &mut StdRng) {
    let size = x.width.max(x.height).next_power_of_two().max(2);
    let map = plasma_fractal(size, decay, rng);
    let max_val = x.data.iter().copied().fold(0.0f32, f32::max);
    let scale = max_val / (max_val + strength);
    for py in 0..x.height {
        for px in 0..x.width {
            let f = strength * map[py * size + px];
            let o = x.index(px, py);
            for c in 0..3 {
                x.data[o + c] = ((x.data[o + c] + f) * scale).clamp(0.0, 1.0);
            }
        }
    }
}

/// Rain (our definition, in the spirit of ImageNet-C's weather corruptions):
///
/// 1. the scene loses light to the overcast sky: `x1 = (1 - darken) * x`;
/// 2. a grey veil: `x2 = (1 - haze) * x1 + haze * 0.6`;
/// 3. `density * W * H` streaks of length `length * H` (±30%), all at one angle
///    drawn from `N(0, 8°)` around vertical, 1 px wide, each of opacity
///    `alpha * U(0.5, 1)`, are accumulated (max) into a layer `r`, softened by a
///    one-pixel box blur along the streak;
/// 4. the streaks are screened in with a pale blue-grey colour `k`:
///    `x' = 1 - (1 - x2) * (1 - r * k)`.
fn rain(x: &FloatImage, p: &RainParams, rng: &mut StdRng) -> FloatImage {
    let (w, h) = (x.width, x.height);
    let angle = (8.0 * standard_normal(rng)).to_radians();
    let (sin_a, cos_a) = angle.sin_cos();
    let mut layer = vec![0.0f32; w * h];
    let count = (p.density * (w * h) as f32).round() as usize;
    for _ in 0..count {
        let x0 = rng.random::<f32>() * w as f32;
        let y0 = rng.random::<f32>() * h as f32;
        let len = p.length * h as f32 * rng.random_range(0.7..1.3);
        let opacity = p.alpha * rng.random_range(0.5..1.0);
        let steps = len.ceil().max(1.0) as usize;
        for s in 0..=steps {
            let t = s as f32;
            let px = (x0 + t * sin_a).round();
            let py = (y0 + t * cos_a).round();
            if px < 0.0 || py < 0.0 || px >= w as f32 || py >= h as f32 {
                continue;
            }
            let cell = &mut layer[py as usize * w + px as usize];
            // Streaks fade towards their tail like real motion-blurred drops.
            let fade = 1.0 - 0.5 * t / steps as f32;
            *cell = cell.max(opacity * fade);
        }
    }
    let tint = [0.78f32, 0.82, 0.88];
    let mut out = x.clone();
    for py in 0..h {
        for px in 0..w {
            let below = layer[(py + 1).min(h - 1) * w + px];
            let above = layer[py.saturating_sub(1) * w + px];
            let r = (0.5 * layer[py * w + px] + 0.25 * (above + below)).min(1.0);
            let o = x.index(px, py);
            for (c, k) in tint.iter().enumerate() {
                let x1 = (1.0 - p.darken) * x.data[o + c];
                let x2 = (1.0 - p.haze) * x1 + p.haze * 0.6;
                out.data[o + c] = (1.0 - (1.0 - x2) * (1.0 - r * k)).clamp(0.0, 1.0);
            }
        }
    }
    out
}

/// Dark night with sensor noise (our definition): a gamma tone curve and an
/// exposure gain darken the scene, `d = gain * x^gamma`; the sensor then sees
/// `photons * d` photons (Poisson) and adds Gaussian read noise:
/// `x' = clip(Poisson(photons * d) / photons + N(0, read_std^2))`.
/// Severity raises gamma and lowers gain and photon count.
fn night(x: &mut FloatImage, p: &NightParams, rng: &mut StdRng) {
    for v in &mut x.data {
        let dark = p.gain * v.powf(p.gamma);
        let shot = poisson(dark * p.photons, rng) / p.photons;
        *v = (shot + p.read_std * standard_normal(rng)).clamp(0.0, 1.0);
    }
}

/// ImageNet-C `brightness`: HSV value `V = max(r, g, b)` becomes
/// `V' = min(V + c, 1)` with hue and saturation kept, which is the same as
/// scaling RGB by `V' / V` (a black pixel becomes grey `V'`).
fn brightness(x: &mut FloatImage, shift: f32) {
    for px in x.data.chunks_exact_mut(3) {
        let v = px[0].max(px[1]).max(px[2]);
        let target = (v + shift).min(1.0);
        if v <= 0.0 {
            px.iter_mut().for_each(|c| *c = target);
        } else {
            let k = target / v;
            px.iter_mut().for_each(|c| *c = (*c * k).clamp(0.0, 1.0));
        }
    }
}

/// ImageNet-C `contrast`: `clip((x - mean_c) * c + mean_c)` with `mean_c` the
/// mean of channel `c` over the image.
fn contrast(x: &mut FloatImage, factor: f32) {
    let n = (x.width * x.height) as f64;
    let mut means = [0.0f64; 3];
    for px in x.data.chunks_exact(3) {
        for c in 0..3 {
            means[c] += f64::from(px[c]);
        }
    }
    let means = means.map(|m| (m / n) as f32);
    for px in x.data.chunks_exact_mut(3) {
        for c in 0..3 {
            px[c] = ((px[c] - means[c]) * factor + means[c]).clamp(0.0, 1.0);
        }
    }
}

/// ImageNet-C `jpeg_compression`: encode at `quality` and decode again.
fn jpeg(image: &RgbImage, quality: u8) -> Result<RgbImage, CorruptError> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality).encode_image(image)?;
    let decoded = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)?;
    Ok(decoded.to_rgb8())
}

#[cfg(test)]
mod tests;
