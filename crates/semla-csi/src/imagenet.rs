//! A real concept classifier without CLIP weights: the ImageNet
//! EfficientNet-Lite0, whose 1000 classes are mapped onto concept strings.
//!
//! A concept's logit is the log of the summed softmax mass of its ImageNet
//! classes (up to the image's constant log-partition, which cancels in any
//! softmax over concepts): `log sum_{k in concept} exp(l_k)`. Concepts the map
//! does not know (ImageNet has no "sky", "road" or "tree") score `-inf`, so
//! they never win a restricted softmax and a category with only such
//! concepts fails the check.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use image::RgbImage;
use image::imageops::FilterType;
use semla_models::Normalization;
use semla_models::efficientnet::{EfficientNetLite0, imagenet_classes, load_classifier_pth};

use crate::classify::ConceptClassifier;
use crate::error::{CsiError, Result};

/// The default concept map: each concept string and the ImageNet classes
/// (by their names in `imagenet_classes.txt`) that depict it. People have no
/// ImageNet class, so "person" is what people wear and carry.
pub const DEFAULT_CONCEPT_MAP: &[(&str, &[&str])] = &[
    (
        "building",
        &[
            "church",
            "mosque",
            "palace",
            "monastery",
            "library",
            "prison",
            "cinema",
            "castle",
            "dome",
            "boathouse",
            "greenhouse",
            "barn",
            "stupa",
            "triumphal arch",
            "water tower",
        ],
    ),
    (
        "shop",
        &[
            "bakery",
            "barbershop",
            "bookshop",
            "butcher shop",
            "restaurant",
            "shoe shop",
            "tobacco shop",
            "toyshop",
        ],
    ),
    (
        "house",
        &[
            "patio",
            "tile roof",
            "sliding door",
            "window screen",
            "window shade",
        ],
    ),
    ("pole", &["pole", "maypole", "totem pole"]),
    ("flagpole", &["flagpole"]),
    ("street sign", &["street sign"]),
    ("traffic light", &["traffic light"]),
    ("fence", &["picket fence", "worm fence", "chainlink fence"]),
    (
        "car",
        &[
            "beach wagon",
            "cab",
            "convertible",
            "jeep",
            "limousine",
            "minivan",
            "racer",
            "sports car",
        ],
    ),
    ("van", &["minibus", "moving van", "police van", "ambulance"]),
    (
        "truck",
        &["pickup", "garbage truck", "tow truck", "trailer truck"],
    ),
    ("bus", &["school bus", "trolleybus"]),
    (
        "person",
        &[
            "jean",
            "jersey",
            "suit",
            "trench coat",
            "cardigan",
            "sweatshirt",
            "miniskirt",
            "fur coat",
            "abaya",
            "cloak",
            "poncho",
            "lab coat",
            "military uniform",
            "pajama",
            "backpack",
            "umbrella",
        ],
    ),
    (
        "bicycle",
        &[
            "mountain bike",
            "bicycle-built-for-two",
            "tricycle",
            "unicycle",
        ],
    ),
    ("scooter", &["moped", "motor scooter"]),
];

/// The ImageNet EfficientNet-Lite0 as a [`ConceptClassifier`].
pub struct ImageNetConcepts {
    model: EfficientNetLite0,
    /// Concept string -> ImageNet class indices.
    concept_classes: BTreeMap<String, Vec<usize>>,
    /// Patches are resized to `input_px x input_px`.
    input_px: u32,
    device: Device,
}

impl ImageNetConcepts {
    /// Loads the classifier from the official ImageNet `.pth` with
    /// [`DEFAULT_CONCEPT_MAP`]; patches are resized to `input_px` square
    /// (224: the resolution it was trained at).
    pub fn from_pth(path: &Path, input_px: u32, device: &Device) -> Result<Self> {
        let model = load_classifier_pth(path, device).map_err(|e| CsiError::Model {
            model: format!("EfficientNet-Lite0 classifier {}", path.display()),
            message: e.to_string(),
        })?;
        Self::new(model, DEFAULT_CONCEPT_MAP, input_px, device)
    }

    /// A classifier over `model` (built with its `_fc` head) and `map`.
    pub fn new(
        model: EfficientNetLite0,
        map: &[(&str, &[&str])],
        input_px: u32,
        device: &Device,
    ) -> Result<Self> {
        if input_px < 32 {
            return Err(CsiError::Invalid(format!(
                "the classifier's input must be at least 32 px, got {input_px}"
            )));
        }
        let names = imagenet_classes();
        let mut concept_classes = BTreeMap::new();
        for (concept, classes) in map {
            let indices = classes
                .iter()
                .map(|c| {
                    names.iter().position(|n| n == c).ok_or_else(|| {
                        CsiError::Invalid(format!(
                            "the concept map names `{c}`, which is not an ImageNet class"
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            concept_classes.insert(concept.to_string(), indices);
        }
        Ok(Self {
            model,
            concept_classes,
            input_px,
            device: device.clone(),
        })
    }

    /// The ImageNet classes behind `concept` (empty when it is unknown).
    pub fn classes_of(&self, concept: &str) -> &[usize] {
        self.concept_classes
            .get(concept)
            .map_or(&[], |v| v.as_slice())
    }

    /// ImageNet logits `[patches, 1000]`.
    fn imagenet_logits(&self, patches: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        let mut rows = Vec::with_capacity(patches.len());
        // A few patches at a time bound the activations' memory.
        for chunk in patches.chunks(8) {
            let inputs = chunk
                .iter()
                .map(|p| {
                    let resized = image::imageops::resize(
                        p,
                        self.input_px,
                        self.input_px,
                        FilterType::Triangle,
                    );
                    Normalization::IMAGENET.image(&resized, &self.device)
                })
                .collect::<candle_core::Result<Vec<Tensor>>>()?;
            let batch = Tensor::cat(&inputs, 0)?;
            rows.extend(self.model.classify(&batch)?.to_vec2::<f32>()?);
        }
        Ok(rows)
    }
}

/// `log sum exp` of `values` (`-inf` when empty).
fn log_sum_exp(values: impl Iterator<Item = f32> + Clone) -> f32 {
    let max = values.clone().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return f32::NEG_INFINITY;
    }
    max + values.map(|v| (v - max).exp()).sum::<f32>().ln()
}

impl ConceptClassifier for ImageNetConcepts {
    fn score(&self, patches: &[RgbImage], concepts: &[String]) -> Result<Vec<Vec<f32>>> {
        if patches.iter().any(|p| p.width() == 0 || p.height() == 0) {
            return Err(CsiError::Invalid(
                "an empty patch cannot be classified".into(),
            ));
        }
        let logits = self.imagenet_logits(patches)?;
        Ok(logits
            .iter()
            .map(|row| {
                concepts
                    .iter()
                    .map(|c| log_sum_exp(self.classes_of(c).iter().map(|&k| row[k])))
                    .collect()
            })
            .collect())
    }

    fn name(&self) -> String {
        format!(
            "ImageNet EfficientNet-Lite0 ({} px) with a concept map",
            self.input_px
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_sum_exp_by_hand() {
        let v = [1.0f32, 2.0, 3.0];
        let expected = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((f64::from(log_sum_exp(v.iter().copied())) - expected).abs() < 1e-5);
        assert_eq!(log_sum_exp(std::iter::empty()), f32::NEG_INFINITY);
    }

    #[test]
    fn default_map_names_only_real_imagenet_classes() {
        let names = imagenet_classes();
        for (concept, classes) in DEFAULT_CONCEPT_MAP {
            for c in *classes {
                assert!(names.contains(c), "{concept}: {c}");
            }
        }
    }
}
