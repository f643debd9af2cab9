//! Seeded augmentation of training samples: random scale, crop and
//! horizontal flip; the photometric distortion of CLOUDS' student; DACS'
//! strong colour jitter and blur.

use semla_core::SplitMix64;
use semla_data::samples::{Sample, resample};

/// Augmentation settings. Defaults: scale in `[0.5, 2.0]`, flip with
/// probability 0.5, crop to the configured size.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AugmentConfig {
    /// Smallest random scale factor.
    pub min_scale: f64,
    /// Largest random scale factor.
    pub max_scale: f64,
    /// Probability of a horizontal flip.
    pub flip_probability: f64,
    /// Output `(height, width)`; `None` keeps the sample's own size.
    pub crop: Option<(usize, usize)>,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            min_scale: 0.5,
            max_scale: 2.0,
            flip_probability: 0.5,
            crop: None,
        }
    }
}

impl AugmentConfig {
    /// No augmentation at all (for evaluation-like training and tests).
    pub fn none() -> Self {
        Self {
            min_scale: 1.0,
            max_scale: 1.0,
            flip_probability: 0.0,
            crop: None,
        }
    }
}

/// Rescales `sample` by a random factor (bilinear for the image, nearest for
/// the labels), takes a random crop of the configured size (padding with 0 and
/// `ignore` where the scaled image is smaller), and flips it horizontally with
/// the configured probability.
pub fn augment(
    sample: &Sample,
    config: &AugmentConfig,
    ignore: u32,
    rng: &mut SplitMix64,
) -> Sample {
    let scale = if config.max_scale > config.min_scale {
        rng.uniform(config.min_scale, config.max_scale)
    } else {
        config.min_scale
    };
    let (out_h, out_w) = config.crop.unwrap_or((sample.height, sample.width));
    let scaled_h = ((sample.height as f64 * scale).round() as usize).max(1);
    let scaled_w = ((sample.width as f64 * scale).round() as usize).max(1);
    let top = rng.below(scaled_h.saturating_sub(out_h) + 1);
    let left = rng.below(scaled_w.saturating_sub(out_w) + 1);
    let flip = rng.next_f64() < config.flip_probability;

    resample(
        sample,
        (scaled_h, scaled_w),
        (out_h, out_w),
        (top, left),
        flip,
        ignore,
    )
}

/// The photometric distortion a self-training student sees: detectron2's
/// `ColorAugSSDTransform` (SSD's colour augmentation), which CLOUDS applies to
/// the student's view. Each step with probability 1/2: a brightness shift in
/// `[-32, 32] / 255`; then, in one of the two official orders (chosen with
/// probability 1/2), contrast, saturation, hue or saturation, hue, contrast:
/// a contrast factor in `[0.5, 1.5]`, an HSV saturation factor in `[0.5, 1.5]`,
/// a hue shift of a whole number in `[-18, 18]` of OpenCV's 2-degree hue units
/// (up to 36 degrees), values clamped to `[0, 1]` after each step. The original
/// rounds to `uint8` and runs OpenCV's 8-bit HSV conversion between steps; this
/// computes in floating point. Labels and geometry are untouched.
pub fn photometric(sample: &Sample, rng: &mut SplitMix64) -> Sample {
    let distortion = ColorDistortion::draw(rng);
    let pixels = sample.height * sample.width;
    let mut out = sample.clone();
    for p in 0..pixels {
        let rgb = [0, 1, 2].map(|c| f64::from(sample.image[c * pixels + p]));
        for (c, v) in distortion.apply(rgb).iter().enumerate() {
            out.image[c * pixels + p] = *v as f32;
        }
    }
    out
}

/// One draw of [`photometric`]'s parameters (`None`: the step is skipped).
#[derive(Clone, Copy, Debug, PartialEq)]
struct ColorDistortion {
    /// Added to every channel.
    brightness: Option<f64>,
    /// Contrast before saturation and hue (else after).
    contrast_first: bool,
    /// Multiplies every channel.
    contrast: Option<f64>,
    /// Multiplies the HSV saturation.
    saturation: Option<f64>,
    /// Added to the hue, in turns.
    hue_turns: Option<f64>,
}

impl ColorDistortion {
    fn draw(rng: &mut SplitMix64) -> Self {
        let coin = |rng: &mut SplitMix64| rng.next_f64() < 0.5;
        let brightness = coin(rng).then(|| rng.uniform(-32.0, 32.0) / 255.0);
        let contrast_first = coin(rng);
        let contrast = coin(rng).then(|| rng.uniform(0.5, 1.5));
        let saturation = coin(rng).then(|| rng.uniform(0.5, 1.5));
        // OpenCV's 8-bit hue runs over 0..180, two degrees a unit.
        let hue_turns = coin(rng).then(|| (rng.below(37) as f64 - 18.0) * 2.0 / 360.0);
        Self {
            brightness,
            contrast_first,
            contrast,
            saturation,
            hue_turns,
        }
    }

    /// The distortion of one RGB pixel in `[0, 1]`.
    fn apply(&self, mut rgb: [f64; 3]) -> [f64; 3] {
        let scale = |rgb: &mut [f64; 3], alpha: f64| {
            for v in rgb.iter_mut() {
                *v = (*v * alpha).clamp(0.0, 1.0);
            }
        };
        if let Some(delta) = self.brightness {
            for v in &mut rgb {
                *v = (*v + delta).clamp(0.0, 1.0);
            }
        }
        if let (true, Some(alpha)) = (self.contrast_first, self.contrast) {
            scale(&mut rgb, alpha);
        }
        if self.saturation.is_some() || self.hue_turns.is_some() {
            // In floating point the saturation step leaves hue and value as they
            // are, so both steps share one HSV round trip.
            let (h, sat, val) = rgb_to_hsv(rgb);
            let sat = self
                .saturation
                .map_or(sat, |alpha| (sat * alpha).clamp(0.0, 1.0));
            let h = self
                .hue_turns
                .map_or(h, |turns| (h + turns).rem_euclid(1.0));
            rgb = hsv_to_rgb(h, sat, val).map(|v| v.clamp(0.0, 1.0));
        }
        if let (false, Some(alpha)) = (self.contrast_first, self.contrast) {
            scale(&mut rgb, alpha);
        }
        rgb
    }
}

/// DACS' strong augmentation of a mixed image (`strong_transform`, after the
/// one-mix): a colour jitter, then a Gaussian blur. Defaults are the official
/// ones: jitter strength 0.2 applied when a uniform draw exceeds 0.2 (so with
/// probability 0.8), blur when a draw exceeds 0.5.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StrongAugment {
    /// `s` of kornia's `ColorJitter(brightness=s, contrast=s, saturation=s, hue=s)`.
    pub jitter_strength: f64,
    /// The jitter is applied when a uniform draw exceeds this (`color_jitter_p`).
    pub jitter_threshold: f64,
    /// Whether the blur may be applied (when a uniform draw exceeds 0.5).
    pub blur: bool,
}

impl Default for StrongAugment {
    fn default() -> Self {
        Self {
            jitter_strength: 0.2,
            jitter_threshold: 0.2,
            blur: true,
        }
    }
}

/// [`StrongAugment`] of `sample`'s image (labels untouched), seeded by `rng`.
///
/// The jitter, in kornia's fixed order: brightness `+ U(-s, s)`, contrast
/// `x U(1-s, 1+s)`, saturation (a blend with the pixel's grey value by
/// `U(1-s, 1+s)`), hue (a rotation of the hue circle by `U(-s, s)` turns,
/// kornia's `hue_factor * 2 pi` radians), each clamped to `[0, 1]`. The blur: sigma `U(0.15, 1.15)`, an odd kernel of about a tenth
/// of each side (the official size formula), reflected borders.
pub fn strong_augment(sample: &Sample, settings: &StrongAugment, rng: &mut SplitMix64) -> Sample {
    let jitter_draw = rng.next_f64();
    let blur_draw = rng.next_f64();
    let mut out = sample.clone();
    if jitter_draw > settings.jitter_threshold && settings.jitter_strength > 0.0 {
        let s = settings.jitter_strength;
        let brightness = rng.uniform(-s, s);
        let contrast = rng.uniform((1.0 - s).max(0.0), 1.0 + s);
        let saturation = rng.uniform((1.0 - s).max(0.0), 1.0 + s);
        let hue_turns = rng.uniform(-s, s);
        jitter(&mut out, brightness, contrast, saturation, hue_turns);
    }
    if settings.blur && blur_draw > 0.5 {
        let sigma = rng.uniform(0.15, 1.15);
        gaussian_blur(&mut out, sigma);
    }
    out
}

fn jitter(sample: &mut Sample, brightness: f64, contrast: f64, saturation: f64, hue_turns: f64) {
    let pixels = sample.height * sample.width;
    for p in 0..pixels {
        let mut rgb = [0f64; 3];
        for (c, v) in rgb.iter_mut().enumerate() {
            let x = f64::from(sample.image[c * pixels + p]);
            *v = ((x + brightness).clamp(0.0, 1.0) * contrast).clamp(0.0, 1.0);
        }
        let grey = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2];
        for v in &mut rgb {
            *v = (grey + saturation * (*v - grey)).clamp(0.0, 1.0);
        }
        let (h, sat, val) = rgb_to_hsv(rgb);
        let rgb = hsv_to_rgb((h + hue_turns).rem_euclid(1.0), sat, val);
        for (c, v) in rgb.iter().enumerate() {
            sample.image[c * pixels + p] = v.clamp(0.0, 1.0) as f32;
        }
    }
}

/// `(hue in [0, 1) turns, saturation, value)` of an RGB triple in `[0, 1]`.
fn rgb_to_hsv([r, g, b]: [f64; 3]) -> (f64, f64, f64) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let delta = max - min;
    let hue = if delta <= 0.0 {
        0.0
    } else if max == r {
        ((g - b) / delta).rem_euclid(6.0) / 6.0
    } else if max == g {
        ((b - r) / delta + 2.0) / 6.0
    } else {
        ((r - g) / delta + 4.0) / 6.0
    };
    let saturation = if max <= 0.0 { 0.0 } else { delta / max };
    (hue, saturation, max)
}

fn hsv_to_rgb(hue: f64, saturation: f64, value: f64) -> [f64; 3] {
    let h6 = hue * 6.0;
    let sector = h6.floor();
    let f = h6 - sector;
    let p = value * (1.0 - saturation);
    let q = value * (1.0 - saturation * f);
    let t = value * (1.0 - saturation * (1.0 - f));
    match (sector as i64).rem_euclid(6) {
        0 => [value, t, p],
        1 => [q, value, p],
        2 => [p, value, t],
        3 => [p, q, value],
        4 => [t, p, value],
        _ => [value, p, q],
    }
}

/// The official odd kernel size for a side of `n` pixels:
/// `floor(ceil(0.1 n) - 0.5 + ceil(0.1 n) mod 2)`, at least 1.
fn blur_kernel_size(n: usize) -> usize {
    let tenth = (0.1 * n as f64).ceil();
    ((tenth - 0.5 + tenth % 2.0).floor() as usize).max(1)
}

/// A separable Gaussian blur of every channel, borders reflected (kornia's default).
fn gaussian_blur(sample: &mut Sample, sigma: f64) {
    let (h, w) = (sample.height, sample.width);
    let kernel = |size: usize| -> Vec<f64> {
        let half = (size / 2) as f64;
        let raw: Vec<f64> = (0..size)
            .map(|i| (-((i as f64 - half).powi(2)) / (2.0 * sigma * sigma)).exp())
            .collect();
        let total: f64 = raw.iter().sum();
        raw.into_iter().map(|k| k / total).collect()
    };
    let reflect = |i: isize, n: usize| -> usize {
        if n == 1 {
            return 0;
        }
        let period = 2 * (n as isize - 1);
        let m = i.rem_euclid(period);
        (if m >= n as isize { period - m } else { m }) as usize
    };
    let (ky, kx) = (kernel(blur_kernel_size(h)), kernel(blur_kernel_size(w)));
    let pixels = h * w;
    let mut row_pass = vec![0f64; pixels];
    for c in 0..3 {
        let plane = &mut sample.image[c * pixels..(c + 1) * pixels];
        let half = (kx.len() / 2) as isize;
        for y in 0..h {
            for x in 0..w {
                row_pass[y * w + x] = kx
                    .iter()
                    .enumerate()
                    .map(|(k, weight)| {
                        let xx = reflect(x as isize + k as isize - half, w);
                        weight * f64::from(plane[y * w + xx])
                    })
                    .sum();
            }
        }
        let half = (ky.len() / 2) as isize;
        for y in 0..h {
            for x in 0..w {
                let v: f64 = ky
                    .iter()
                    .enumerate()
                    .map(|(k, weight)| {
                        let yy = reflect(y as isize + k as isize - half, h);
                        weight * row_pass[yy * w + x]
                    })
                    .sum();
                plane[y * w + x] = v as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_colour_distortion_follows_the_ssd_steps_by_hand() {
        let none = ColorDistortion {
            brightness: None,
            contrast_first: false,
            contrast: None,
            saturation: None,
            hue_turns: None,
        };
        let close = |a: [f64; 3], b: [f64; 3]| a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-12);
        assert_eq!(none.apply([0.2, 0.4, 0.6]), [0.2, 0.4, 0.6]);
        // Red turned by 36 degrees (18 OpenCV units): hue 0.1, so (1, 0.6, 0).
        let hue = ColorDistortion {
            hue_turns: Some(0.1),
            ..none
        };
        assert!(close(hue.apply([1.0, 0.0, 0.0]), [1.0, 0.6, 0.0]));
        // Then half the saturation: (1, 1 - 0.5 * 0.4, 0.5).
        let both = ColorDistortion {
            saturation: Some(0.5),
            ..hue
        };
        assert!(close(both.apply([1.0, 0.0, 0.0]), [1.0, 0.8, 0.5]));
        // Brightness clamps.
        let bright = ColorDistortion {
            brightness: Some(0.2),
            ..none
        };
        assert!(close(bright.apply([0.9, 0.1, 0.0]), [1.0, 0.3, 0.2]));
        // The order matters once contrast clips: first, (0.8, 0.2, 0.2) x 1.5 ->
        // (1, 0.3, 0.3) (S 0.7), half saturation -> (1, 0.65, 0.65); last, half
        // saturation of (0.8, 0.2, 0.2) (S 0.75) -> (0.8, 0.5, 0.5), x 1.5 -> (1, 0.75, 0.75).
        let first = ColorDistortion {
            contrast_first: true,
            contrast: Some(1.5),
            saturation: Some(0.5),
            ..none
        };
        assert!(close(first.apply([0.8, 0.2, 0.2]), [1.0, 0.65, 0.65]));
        let last = ColorDistortion {
            contrast_first: false,
            ..first
        };
        assert!(close(last.apply([0.8, 0.2, 0.2]), [1.0, 0.75, 0.75]));
        // Every step is drawn now and then, hue shifts in whole 2-degree units.
        let mut rng = SplitMix64::new(3);
        let draws: Vec<ColorDistortion> =
            (0..400).map(|_| ColorDistortion::draw(&mut rng)).collect();
        for d in &draws {
            if let Some(turns) = d.hue_turns {
                let units = turns * 180.0;
                assert!((units - units.round()).abs() < 1e-9 && units.abs() <= 18.0 + 1e-9);
            }
        }
        let share = |f: &dyn Fn(&ColorDistortion) -> bool| {
            draws.iter().filter(|d| f(d)).count() as f64 / draws.len() as f64
        };
        for s in [
            share(&|d| d.brightness.is_some()),
            share(&|d| d.contrast_first),
            share(&|d| d.contrast.is_some()),
            share(&|d| d.saturation.is_some()),
            share(&|d| d.hue_turns.is_some()),
        ] {
            assert!((0.4..0.6).contains(&s), "{s}");
        }
    }

    #[test]
    fn photometric_keeps_labels_and_range_and_is_seeded() {
        let s = Sample {
            image: (0..3 * 12).map(|i| i as f32 / 36.0).collect(),
            labels: (0..12).collect(),
            height: 3,
            width: 4,
        };
        let mut changed = false;
        for seed in 0..8 {
            let a = photometric(&s, &mut SplitMix64::new(seed));
            assert_eq!(a, photometric(&s, &mut SplitMix64::new(seed)));
            assert_eq!(a.labels, s.labels);
            assert!(a.image.iter().all(|v| (0.0..=1.0).contains(v)));
            changed |= a.image != s.image;
        }
        assert!(changed);
    }

    fn ramp(h: usize, w: usize) -> Sample {
        let pixels = h * w;
        let mut image = vec![0f32; 3 * pixels];
        let mut labels = vec![0u32; pixels];
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    image[c * pixels + y * w + x] = (x + 10 * y + 100 * c) as f32;
                }
                labels[y * w + x] = (x + 10 * y) as u32;
            }
        }
        Sample {
            image,
            labels,
            height: h,
            width: w,
        }
    }

    #[test]
    fn strong_augment_keeps_labels_range_and_grey_stays_grey_under_hue() {
        let s = ramp(6, 7);
        let mut unit = s.clone();
        for v in &mut unit.image {
            *v = (*v / 400.0).min(1.0);
        }
        let mut changed = false;
        for seed in 0..16 {
            let a = strong_augment(&unit, &StrongAugment::default(), &mut SplitMix64::new(seed));
            assert_eq!(a.labels, unit.labels);
            assert!(a.image.iter().all(|v| (0.0..=1.0).contains(v)));
            changed |= a.image != unit.image;
        }
        assert!(changed);
        // A hue rotation leaves grey pixels alone and cycles pure red.
        let mut grey = Sample {
            image: vec![0.5; 3],
            labels: vec![0],
            height: 1,
            width: 1,
        };
        jitter(&mut grey, 0.0, 1.0, 1.0, 0.3);
        assert!(grey.image.iter().all(|v| (v - 0.5).abs() < 1e-6));
        let mut red = Sample {
            image: vec![1.0, 0.0, 0.0],
            labels: vec![0],
            height: 1,
            width: 1,
        };
        jitter(&mut red, 0.0, 1.0, 1.0, 1.0 / 3.0);
        assert!(
            (red.image[1] - 1.0).abs() < 1e-6 && red.image[0].abs() < 1e-6,
            "{:?}",
            red.image
        );
    }

    #[test]
    fn blur_kernel_follows_the_official_formula_and_keeps_constants() {
        // ceil(0.1 n) even -> minus one; odd -> itself.
        assert_eq!(blur_kernel_size(96), 9);
        assert_eq!(blur_kernel_size(128), 13);
        assert_eq!(blur_kernel_size(512), 51);
        assert_eq!(blur_kernel_size(5), 1);
        let mut flat = Sample {
            image: vec![0.25; 3 * 20],
            labels: vec![0; 20],
            height: 4,
            width: 5,
        };
        gaussian_blur(&mut flat, 0.8);
        assert!(flat.image.iter().all(|v| (v - 0.25).abs() < 1e-6));
        // An impulse spreads symmetrically and keeps its mass (no border reached).
        let (h, w) = (21, 21);
        let mut impulse = Sample {
            image: vec![0.0; 3 * h * w],
            labels: vec![0; h * w],
            height: h,
            width: w,
        };
        impulse.image[10 * w + 10] = 1.0;
        gaussian_blur(&mut impulse, 1.0);
        let plane = &impulse.image[..h * w];
        let mass: f32 = plane.iter().sum();
        assert!((mass - 1.0).abs() < 1e-5);
        assert!((plane[10 * w + 9] - plane[10 * w + 11]).abs() < 1e-7);
        assert!((plane[9 * w + 10] - plane[10 * w + 9]).abs() < 1e-7);
        assert!(plane[10 * w + 10] > plane[10 * w + 9]);
    }

    #[test]
    fn identity_when_disabled() {
        let s = ramp(4, 5);
        let out = augment(&s, &AugmentConfig::none(), 255, &mut SplitMix64::new(1));
        assert_eq!(out, s);
    }

    #[test]
    fn flip_mirrors_image_and_labels() {
        let s = ramp(3, 4);
        let cfg = AugmentConfig {
            flip_probability: 1.0,
            ..AugmentConfig::none()
        };
        let out = augment(&s, &cfg, 255, &mut SplitMix64::new(1));
        for y in 0..3 {
            for x in 0..4 {
                assert_eq!(out.labels[y * 4 + x], s.labels[y * 4 + (3 - x)]);
                assert_eq!(out.image[12 + y * 4 + x], s.image[12 + y * 4 + (3 - x)]);
            }
        }
    }

    #[test]
    fn upscale_by_two_repeats_labels_and_pads_with_ignore() {
        let s = ramp(2, 2);
        // Scale exactly 2, crop 5x5 > 4x4 scaled: the crop sits at (0, 0) and the rest is padding.
        let cfg = AugmentConfig {
            min_scale: 2.0,
            max_scale: 2.0,
            flip_probability: 0.0,
            crop: Some((5, 5)),
        };
        let out = augment(&s, &cfg, 255, &mut SplitMix64::new(3));
        assert_eq!(out.labels[0], 0);
        assert_eq!(out.labels[1], 0);
        assert_eq!(out.labels[2], 1);
        assert_eq!(out.labels[2 * 5 + 3], 11);
        assert_eq!(out.labels[4], 255);
        assert_eq!(out.labels[4 * 5], 255);
        // Bilinear at scaled pixel 1 -> source x = 0.25: 0.75 * 0 + 0.25 * 1.
        assert!((out.image[1] - 0.25).abs() < 1e-6);
    }

    #[test]
    fn same_seed_same_result() {
        let s = ramp(8, 8);
        let cfg = AugmentConfig {
            crop: Some((5, 6)),
            ..AugmentConfig::default()
        };
        let a = augment(&s, &cfg, 255, &mut SplitMix64::new(9));
        let b = augment(&s, &cfg, 255, &mut SplitMix64::new(9));
        assert_eq!(a, b);
        assert_eq!((a.height, a.width), (5, 6));
    }
}
