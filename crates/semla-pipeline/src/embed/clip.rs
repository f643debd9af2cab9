//! `clip:DIR`: the official embedder, a Hugging Face `CLIPModel` folder
//! (`config.json`, `model.safetensors`, optional `preprocessor_config.json`);
//! `get_image_features` (the projected CLS token, not normalised) after exact
//! `CLIPImageProcessor` preprocessing.

use std::path::Path;

use candle_core::{Device, Tensor};
use semla_adapters::Adaptation;
use semla_data::{RgbImage, Sample};
use semla_models::clip::{ClipModel, ImageProcessor};

use super::{BuildContext, Embed, EmbedderKind, EmbedderSpec, fingerprint, rows};
use crate::error::{PipelineError, Result};

/// The registry entry.
pub const KIND: EmbedderKind = EmbedderKind {
    name: "clip",
    usage: "clip:DIR",
    needs_dir: true,
    takes_downscale: false,
    build,
};

fn build(spec: &EmbedderSpec, ctx: &BuildContext<'_>) -> Result<Box<dyn Embed>> {
    let Some(dir) = &spec.dir else {
        return Err(PipelineError::Invalid(
            "the clip embedder needs its model folder: clip:DIR".into(),
        ));
    };
    Ok(Box::new(ClipEmbedder::load(dir, spec, ctx.device)?))
}

/// The CLIP embedder of a model folder.
pub struct ClipEmbedder {
    model: ClipModel,
    processor: ImageProcessor,
    id: String,
    spec: EmbedderSpec,
}

impl ClipEmbedder {
    /// Loads a `CLIPModel` folder; its identity is a fingerprint of the folder.
    pub fn load(dir: &Path, spec: &EmbedderSpec, device: &Device) -> Result<Self> {
        let model = ClipModel::from_dir(dir, device)?;
        let processor_file = dir.join("preprocessor_config.json");
        let processor = if processor_file.is_file() {
            ImageProcessor::from_file(&processor_file)?
        } else {
            ImageProcessor::with_size(model.config().vision_config.image_size)
        };
        let id = format!("clip:{:016x}", fingerprint::folder_fingerprint(dir)?);
        Ok(Self {
            model,
            processor,
            id,
            spec: spec.clone(),
        })
    }

    fn features(&self, pixels: Vec<Tensor>, device: &Device) -> Result<Vec<Vec<f32>>> {
        let pixels = Tensor::stack(&pixels, 0)?.to_device(device)?;
        rows(
            &self
                .model
                .get_image_features(&pixels, &Adaptation::none())?,
        )
    }
}

impl Embed for ClipEmbedder {
    fn kind(&self) -> &'static str {
        KIND.name
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn spec(&self) -> &EmbedderSpec {
        &self.spec
    }

    /// Quantises each sample back to 8 bits (exact for samples of unresized
    /// photos) and applies CLIP's own preprocessing.
    fn embed_samples(&self, samples: &[&Sample], device: &Device) -> Result<Vec<Vec<f32>>> {
        if samples.is_empty() {
            return Ok(Vec::new());
        }
        let pixels = samples
            .iter()
            .map(|s| {
                self.processor
                    .preprocess_rgb(&s.to_rgb8(), s.height, s.width)
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        self.features(pixels, device)
    }

    fn embed_photo(&self, photo: &RgbImage, device: &Device) -> Result<Vec<f32>> {
        let (w, h) = photo.dimensions();
        let pixels = self
            .processor
            .preprocess_rgb(photo.as_raw(), h as usize, w as usize)?;
        self.features(vec![pixels], device)?
            .pop()
            .ok_or_else(|| PipelineError::Invalid("CLIP returned no feature".into()))
    }

    fn prefers_photos(&self) -> bool {
        true
    }
}
