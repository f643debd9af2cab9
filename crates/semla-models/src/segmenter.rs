//! The interface every segmentation model offers to the rest of semla
//! (retrieval, fusion, training, evaluation), so that a new backbone (CAT-Seg,
//! ...) can be added without changing its callers.

use candle_core::{Result, Tensor};
use semla_adapters::{Adaptation, SiteInfo};

/// Per-channel normalisation applied to RGB values scaled to `[0, 1]`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalization {
    /// Mean per RGB channel.
    pub mean: [f32; 3],
    /// Standard deviation per RGB channel.
    pub std: [f32; 3],
}

impl Normalization {
    /// ImageNet statistics (torchvision convention).
    pub const IMAGENET: Self =
        Self { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
}

/// A semantic segmentation model with adapter sites.
pub trait Segmenter: Send + Sync {
    /// Number of output classes `C`.
    fn num_classes(&self) -> usize;

    /// How input images must be normalised before [`Segmenter::forward`].
    fn normalization(&self) -> Normalization;

    /// Per-class logits at input resolution.
    ///
    /// `images`: `[N, 3, H, W]` normalised RGB; returns `[N, C, H, W]`.
    /// `adaptation` carries the (possibly per-image) adapter mixture;
    /// `Adaptation::none()` runs the base model.
    fn forward(&self, images: &Tensor, adaptation: &Adaptation) -> Result<Tensor>;

    /// A pooled embedding of each image from the base model's own features
    /// (the `backbone` embedder of SemLA's retrieval): `[N, 3, H, W]` -> `[N, D]`.
    fn embed(&self, images: &Tensor) -> Result<Tensor>;

    /// The adapter sites of the model, in a stable order.
    fn sites(&self) -> Vec<SiteInfo>;

    /// Adds a dense weight update to the base weight of the site at `path`
    /// (the merged path of fusion). `delta` has the base weight's shape.
    fn merge_delta(&mut self, path: &str, delta: &Tensor) -> Result<()>;

    /// Every weight of the model as `(checkpoint key, tensor)`, for saving.
    fn named_tensors(&self) -> Vec<(String, Tensor)>;
}
