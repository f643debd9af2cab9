//! `backbone[:DIR][@F]` and `style[:DIR][@F]`: embedders made of a segmenter.
//!
//! - `backbone`: [`Segmenter::embed`], the pooled deep features of the base model.
//! - `style`: [`Segmenter::embed_style`], the per-channel mean and standard
//!   deviation of its early feature maps (contrast, colour, noise, blur).
//!
//! Both see the samples normalised for the segmenter (one size per batch);
//! `@F` average-pools them by `F` in each direction first, so the embedding
//! costs about `1 / F^2` of the full-size one. Without `DIR`, the segmenter is
//! the one the command runs.

use std::sync::Arc;

use candle_core::Device;
use semla_data::Sample;
use semla_models::{Segmenter, load_segmenter};

use super::{BuildContext, Embed, EmbedderKind, EmbedderSpec, fingerprint, rows};
use crate::error::{PipelineError, Result};

/// The `backbone` registry entry.
pub const BACKBONE: EmbedderKind = EmbedderKind {
    name: "backbone",
    usage: "backbone[:MODEL_DIR][@F]",
    needs_dir: false,
    takes_downscale: true,
    build: build_backbone,
};

/// The `style` registry entry.
pub const STYLE: EmbedderKind = EmbedderKind {
    name: "style",
    usage: "style[:MODEL_DIR][@F]",
    needs_dir: false,
    takes_downscale: true,
    build: build_style,
};

fn build_backbone(spec: &EmbedderSpec, ctx: &BuildContext<'_>) -> Result<Box<dyn Embed>> {
    build(spec, ctx, Summary::Pooled)
}

fn build_style(spec: &EmbedderSpec, ctx: &BuildContext<'_>) -> Result<Box<dyn Embed>> {
    build(spec, ctx, Summary::Style)
}

fn build(spec: &EmbedderSpec, ctx: &BuildContext<'_>, summary: Summary) -> Result<Box<dyn Embed>> {
    let model: Arc<dyn Segmenter> = match (&spec.dir, ctx.model) {
        (Some(dir), _) => Arc::from(load_segmenter(dir, ctx.device)?),
        (None, Some(model)) => Arc::clone(model),
        (None, None) => {
            return Err(PipelineError::Invalid(format!(
                "the `{spec}` embedder needs a segmenter: name its folder ({}:MODEL_DIR) or give the command a --model",
                spec.kind
            )));
        }
    };
    Ok(Box::new(SegmenterEmbedder::new(
        model,
        summary,
        spec.downscale,
        spec.clone(),
    )?))
}

/// What a segmenter embedder takes from the segmenter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Summary {
    /// `backbone`: pooled deep features.
    Pooled,
    /// `style`: early channel statistics.
    Style,
}

impl Summary {
    fn kind(self) -> &'static str {
        match self {
            Self::Pooled => BACKBONE.name,
            Self::Style => STYLE.name,
        }
    }
}

/// A segmenter embedder (`backbone` or `style`).
pub struct SegmenterEmbedder {
    model: Arc<dyn Segmenter>,
    summary: Summary,
    downscale: usize,
    id: String,
    spec: EmbedderSpec,
}

impl SegmenterEmbedder {
    /// The `summary` of `model`'s features of images average-pooled by
    /// `downscale` (`>= 1`) in each direction; `spec` is what the library records.
    pub fn new(
        model: Arc<dyn Segmenter>,
        summary: Summary,
        downscale: usize,
        spec: EmbedderSpec,
    ) -> Result<Self> {
        if downscale == 0 {
            return Err(PipelineError::Invalid(
                "the backbone embedder's downscale factor must be at least 1".into(),
            ));
        }
        let fingerprint = fingerprint::model_fingerprint(model.as_ref())?;
        let kind = summary.kind();
        let id = if downscale > 1 {
            format!("{kind}:{fingerprint:016x}@{downscale}")
        } else {
            format!("{kind}:{fingerprint:016x}")
        };
        Ok(Self {
            model,
            summary,
            downscale,
            id,
            spec,
        })
    }

    /// `backbone` of `model` (the command's own model, the spec `backbone[@F]`).
    pub fn backbone(model: Arc<dyn Segmenter>, downscale: usize) -> Result<Self> {
        Self::of_command_model(model, Summary::Pooled, downscale)
    }

    /// `style` of `model` (the spec `style[@F]`).
    pub fn style(model: Arc<dyn Segmenter>, downscale: usize) -> Result<Self> {
        Self::of_command_model(model, Summary::Style, downscale)
    }

    fn of_command_model(
        model: Arc<dyn Segmenter>,
        summary: Summary,
        downscale: usize,
    ) -> Result<Self> {
        let spec = EmbedderSpec {
            kind: summary.kind(),
            dir: None,
            downscale: downscale.max(1),
        };
        Self::new(model, summary, downscale, spec)
    }
}

impl Embed for SegmenterEmbedder {
    fn kind(&self) -> &'static str {
        self.summary.kind()
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn spec(&self) -> &EmbedderSpec {
        &self.spec
    }

    fn embed_samples(&self, samples: &[&Sample], device: &Device) -> Result<Vec<Vec<f32>>> {
        if samples.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = self.model.normalization().batch(samples, device)?;
        if self.downscale > 1 {
            let (_, _, h, w) = batch.dims4()?;
            if h < self.downscale || w < self.downscale {
                return Err(PipelineError::Invalid(format!(
                    "a {h}x{w} image is too small to embed at 1/{} of its size",
                    self.downscale
                )));
            }
            batch = batch.avg_pool2d(self.downscale)?;
        }
        rows(&match self.summary {
            Summary::Pooled => self.model.embed(&batch)?,
            Summary::Style => self.model.embed_style(&batch)?,
        })
    }
}
