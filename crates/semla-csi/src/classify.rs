//! The classifier interface (`score(patch, concepts) -> logits`, CLIP's role
//! in CSI) and CSI's check of a box: a softmax over only the concepts of the
//! target's category, the class owning the top concept must be the target,
//! and its probability (rounded to 4 decimals) must be above the threshold.

use std::path::PathBuf;

use candle_core::Device;
use image::RgbImage;

use crate::config::Taxonomy;
use crate::error::{CsiError, Result};

/// Scores image patches against concept strings.
pub trait ConceptClassifier {
    /// Logits `[patches][concepts]`: how well each concept describes each
    /// patch. A concept the classifier cannot score gets `-inf`.
    fn score(&self, patches: &[RgbImage], concepts: &[String]) -> Result<Vec<Vec<f32>>>;

    /// A short name for reports.
    fn name(&self) -> String;
}

/// Which classifier to load.
#[derive(Clone, Debug, PartialEq)]
pub enum ClassifierSpec {
    /// The ImageNet EfficientNet-Lite0 (`efficientnet-lite0-*.pth`) with the
    /// default concept map, patches resized to `input_px`.
    ImageNet {
        /// The `.pth`.
        weights: PathBuf,
        /// Patch side in pixels.
        input_px: u32,
    },
    /// CLIP zero-shot from a Hugging Face `CLIPModel` folder.
    Clip {
        /// The folder (`config.json`, `model.safetensors`).
        dir: PathBuf,
        /// Prompt templates, each with one `{}`.
        templates: Vec<String>,
    },
}

impl std::str::FromStr for ClassifierSpec {
    type Err = String;

    /// `imagenet:PTH` or `clip:DIR` (CLIP with the raw concept strings, as
    /// CSI queries it; `clip-templates:DIR` adds the street templates).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (kind, path) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}` is not imagenet:PTH, clip:DIR or clip-templates:DIR"))?;
        let path = PathBuf::from(path);
        match kind {
            "imagenet" => Ok(Self::ImageNet {
                weights: path,
                input_px: 224,
            }),
            "clip" => Ok(Self::Clip {
                dir: path,
                templates: vec!["{}".into()],
            }),
            "clip-templates" => Ok(Self::Clip {
                dir: path,
                templates: crate::clip::STREET_TEMPLATES
                    .iter()
                    .map(|t| t.to_string())
                    .collect(),
            }),
            other => Err(format!(
                "unknown classifier `{other}` (imagenet, clip or clip-templates)"
            )),
        }
    }
}

impl ClassifierSpec {
    /// Loads it.
    pub fn load(&self, device: &Device) -> Result<Box<dyn ConceptClassifier>> {
        match self {
            Self::ImageNet { weights, input_px } => Ok(Box::new(
                crate::imagenet::ImageNetConcepts::from_pth(weights, *input_px, device)?,
            )),
            Self::Clip { dir, templates } => {
                let model = semla_models::clip::ClipModel::from_dir(dir, device).map_err(|e| {
                    CsiError::Model {
                        model: format!("CLIP {}", dir.display()),
                        message: e.to_string(),
                    }
                })?;
                let templates: Vec<&str> = templates.iter().map(String::as_str).collect();
                Ok(Box::new(crate::clip::ClipZeroShot::new(
                    model, &templates, device,
                )?))
            }
        }
    }
}

/// The classifier's verdict on one patch.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct CategoryVerdict {
    /// The class owning the most probable concept.
    pub class: usize,
    /// That concept's probability among the category's concepts, rounded to
    /// 4 decimals (as the official code rounds it).
    pub confidence: f32,
}

/// CSI's restricted softmax: over the concepts (`logits`, one per entry of
/// `owners`) whose class is in `category`, the most probable one's class and
/// probability. `None` when the category has no concept the classifier can
/// score.
pub fn category_verdict(
    logits: &[f32],
    owners: &[usize],
    category: &[usize],
) -> Option<CategoryVerdict> {
    let inside: Vec<(usize, f32)> = logits
        .iter()
        .zip(owners)
        .filter(|(l, o)| category.contains(o) && l.is_finite())
        .map(|(&l, &o)| (o, l))
        .collect();
    let max = inside
        .iter()
        .map(|(_, l)| *l)
        .fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return None;
    }
    let total: f64 = inside.iter().map(|(_, l)| f64::from(l - max).exp()).sum();
    // The first concept among equals wins, as torch's argmax does.
    let (class, top) = inside
        .iter()
        .fold(None::<(usize, f32)>, |best, &(o, l)| match best {
            Some((_, b)) if b >= l => best,
            _ => Some((o, l)),
        })?;
    let probability = f64::from(top - max).exp() / total;
    Some(CategoryVerdict {
        class,
        confidence: ((probability * 1e4).round() / 1e4) as f32,
    })
}

/// CSI's `classification_confidence` validator: with no threshold, every box
/// passes (no prediction is made); otherwise the verdict's class must be the
/// target and its confidence strictly above the threshold.
pub fn passes_check(
    verdict: Option<CategoryVerdict>,
    target: usize,
    threshold: Option<f32>,
) -> bool {
    match threshold {
        None => true,
        Some(t) => verdict.is_some_and(|v| v.class == target && v.confidence > t),
    }
}

/// The classes of the category holding `class` in `taxonomy` (just `class`
/// when it has none).
pub fn category_classes(taxonomy: &Taxonomy, class: usize) -> Vec<usize> {
    taxonomy
        .category_of(class)
        .map_or_else(|| vec![class], |c| taxonomy.categories[c].1.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_restricted_to_the_category_and_not_summed_per_class() {
        // Concepts: 0 -> class 9, 1 -> class 10, 2 -> class 10, 3 -> class 8 (another category).
        let owners = [9, 10, 10, 8];
        let logits = [1.0f32, 0.5, 0.5, 10.0];
        let v = category_verdict(&logits, &owners, &[9, 10]).unwrap();
        // Class 10's two concepts together (0.27 + 0.27) outweigh class 9's
        // 0.45, but the top single concept decides: class 9.
        let e = [1f64.exp(), 0.5f64.exp(), 0.5f64.exp()];
        let p = e[0] / e.iter().sum::<f64>();
        assert_eq!(v.class, 9);
        assert_eq!(v.confidence, ((p * 1e4).round() / 1e4) as f32);
        // The out-of-category concept (logit 10) plays no part.
        assert!(v.confidence < 0.5);
        assert_eq!(
            category_verdict(&[f32::NEG_INFINITY; 2], &[9, 10], &[9, 10]),
            None
        );
    }

    #[test]
    fn check_needs_the_target_class_and_a_strictly_higher_confidence() {
        let v = Some(CategoryVerdict {
            class: 10,
            confidence: 0.5,
        });
        assert!(passes_check(v, 10, Some(0.4999)));
        assert!(!passes_check(v, 10, Some(0.5)));
        assert!(!passes_check(v, 9, Some(0.1)));
        assert!(passes_check(None, 10, None));
        assert!(passes_check(v, 9, None));
        assert!(!passes_check(None, 10, Some(0.1)));
    }

    #[test]
    fn rounding_to_four_decimals_can_fail_the_strict_check() {
        // p = 0.50004 rounds to 0.5, which is not above 0.5.
        let gap = (0.50004f64 / 0.49996).ln() as f32;
        let v = category_verdict(&[gap, 0.0], &[1, 2], &[1, 2]).unwrap();
        assert_eq!(v.confidence, 0.5);
        assert!(!passes_check(Some(v), 1, Some(0.5)));
    }
}
