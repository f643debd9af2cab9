//! CLIP zero-shot as a [`ConceptClassifier`]: each concept's text embedding is
//! the normalised mean of its prompt templates' normalised text features
//! (CLIP's prompt ensembling), and a patch's logit for a concept is
//! `exp(logit_scale) * cos(image features, concept embedding)`, the
//! `logits_per_image` of `transformers`' `CLIPModel`. CSI itself queries
//! with the raw concept strings: the template `"{}"` alone.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{Device, Tensor};
use image::RgbImage;
use semla_adapters::Adaptation;
use semla_models::clip::{ClipModel, ClipTokenizer, ImageProcessor, Padding};

use crate::classify::ConceptClassifier;
use crate::error::{CsiError, Result};

/// The templates of CLIP's ImageNet prompt ensemble that fit street scenes.
pub const STREET_TEMPLATES: [&str; 4] = [
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of the {} in the street.",
];

/// CLIP zero-shot classification of patches.
pub struct ClipZeroShot {
    model: ClipModel,
    tokenizer: ClipTokenizer,
    processor: ImageProcessor,
    templates: Vec<String>,
    device: Device,
    /// Normalised concept embeddings already computed, by concept string.
    text_cache: Mutex<HashMap<String, Vec<f32>>>,
}

fn model_error(e: impl std::fmt::Display) -> CsiError {
    CsiError::Model {
        model: "CLIP".into(),
        message: e.to_string(),
    }
}

impl ClipZeroShot {
    /// Zero-shot over `model` (which needs its text tower) with `templates`
    /// (each holding one `{}` for the concept) and CLIP's image processor.
    pub fn new(model: ClipModel, templates: &[&str], device: &Device) -> Result<Self> {
        if !model.has_text_model() {
            return Err(model_error(
                "the checkpoint has no text tower to embed concepts with",
            ));
        }
        if templates.is_empty() || templates.iter().any(|t| t.matches("{}").count() != 1) {
            return Err(CsiError::Invalid(
                "each prompt template needs exactly one `{}` for the concept".into(),
            ));
        }
        let size = model.config().vision_config.image_size;
        Ok(Self {
            model,
            tokenizer: ClipTokenizer::new().map_err(model_error)?,
            processor: ImageProcessor::with_size(size),
            templates: templates.iter().map(|t| t.to_string()).collect(),
            device: device.clone(),
            text_cache: Mutex::new(HashMap::new()),
        })
    }

    /// The normalised ensemble embedding of `concept`.
    fn concept_embedding(&self, concept: &str) -> Result<Vec<f32>> {
        if let Some(hit) = self
            .text_cache
            .lock()
            .ok()
            .and_then(|c| c.get(concept).cloned())
        {
            return Ok(hit);
        }
        let context = self.model.config().text_config.max_position_embeddings;
        let ids: Vec<u32> = self
            .templates
            .iter()
            .flat_map(|t| {
                self.tokenizer
                    .encode_context(&t.replace("{}", concept), context, Padding::Zeros)
            })
            .collect();
        let ids = Tensor::from_vec(ids, (self.templates.len(), context), &self.device)?;
        let features = self
            .model
            .get_text_features(&ids, &Adaptation::none())?
            .to_vec2::<f32>()?;
        let dim = features.first().map_or(0, Vec::len);
        let mut mean = vec![0f32; dim];
        for row in &features {
            for (m, v) in mean.iter_mut().zip(normalised(row)) {
                *m += v / features.len() as f32;
            }
        }
        let embedding = normalised(&mean);
        if let Ok(mut cache) = self.text_cache.lock() {
            cache.insert(concept.to_string(), embedding.clone());
        }
        Ok(embedding)
    }
}

/// `v / |v|` (zeros stay zeros).
fn normalised(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter().map(|x| x / norm).collect()
    } else {
        v.to_vec()
    }
}

impl ConceptClassifier for ClipZeroShot {
    fn score(&self, patches: &[RgbImage], concepts: &[String]) -> Result<Vec<Vec<f32>>> {
        let texts = concepts
            .iter()
            .map(|c| self.concept_embedding(c))
            .collect::<Result<Vec<_>>>()?;
        let scale = self.model.logit_scale().exp() as f32;
        let mut rows = Vec::with_capacity(patches.len());
        for chunk in patches.chunks(8) {
            let pixels = chunk
                .iter()
                .map(|p| {
                    self.processor
                        .preprocess_rgb(p.as_raw(), p.height() as usize, p.width() as usize)
                        .map_err(model_error)?
                        .to_device(&self.device)
                        .map_err(CsiError::from)
                })
                .collect::<Result<Vec<_>>>()?;
            let features = self
                .model
                .get_image_features(&Tensor::stack(&pixels, 0)?, &Adaptation::none())?
                .to_vec2::<f32>()?;
            for image in &features {
                let image = normalised(image);
                rows.push(
                    texts
                        .iter()
                        .map(|t| scale * t.iter().zip(&image).map(|(a, b)| a * b).sum::<f32>())
                        .collect(),
                );
            }
        }
        Ok(rows)
    }

    fn name(&self) -> String {
        format!("CLIP zero-shot ({} prompt templates)", self.templates.len())
    }
}
