//! Seeded random scale, crop and horizontal flip of a training sample.

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

/// The photometric distortion a self-training student sees (after
/// Mask2Former's `ColorAugSSDTransform`, which CLOUDS applies to the student's
/// view): each with probability 1/2, a brightness shift in `[-32, 32] / 255`,
/// a contrast factor in `[0.5, 1.5]` and a saturation factor in `[0.5, 1.5]`
/// (a blend with the pixel's luma, where the original scales HSV saturation),
/// values clamped to `[0, 1]`. The hue shift of the original is not applied.
/// Labels and geometry are untouched.
pub fn photometric(sample: &Sample, rng: &mut SplitMix64) -> Sample {
    let brightness = (rng.next_f64() < 0.5).then(|| rng.uniform(-32.0, 32.0) / 255.0);
    let contrast = (rng.next_f64() < 0.5).then(|| rng.uniform(0.5, 1.5));
    let saturation = (rng.next_f64() < 0.5).then(|| rng.uniform(0.5, 1.5));
    let pixels = sample.height * sample.width;
    let mut out = sample.clone();
    for p in 0..pixels {
        let mut rgb = [0f64; 3];
        for (c, v) in rgb.iter_mut().enumerate() {
            *v = f64::from(sample.image[c * pixels + p]);
            if let Some(delta) = brightness {
                *v += delta;
            }
            if let Some(alpha) = contrast {
                *v *= alpha;
            }
            *v = v.clamp(0.0, 1.0);
        }
        if let Some(alpha) = saturation {
            let luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2];
            for v in &mut rgb {
                *v = (luma + alpha * (*v - luma)).clamp(0.0, 1.0);
            }
        }
        for (c, v) in rgb.iter().enumerate() {
            out.image[c * pixels + p] = *v as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
