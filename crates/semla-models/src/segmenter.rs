//! The interface every segmentation model offers to the rest of semla
//! (retrieval, fusion, training, evaluation), so that a new backbone (CAT-Seg,
//! ...) can be added without changing its callers, and the input normalisation
//! every model declares ([`Normalization`]). Model folders and the registry of
//! kinds are in [`crate::model_dir`].

use candle_core::{Device, Result, Tensor};
use semla_adapters::{Adaptation, AdaptedConv2d, SiteInfo};
use semla_data::{RgbImage, Sample};

use crate::config::SegmenterConfig;

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
    pub const IMAGENET: Self = Self {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };

    /// Samples `[3, H, W]` in `[0, 1]` as one normalised batch `[N, 3, H, W]`
    /// (`(v - mean[c]) / std[c]`). Every sample must have the size of the first.
    pub fn batch(&self, samples: &[&Sample], device: &Device) -> Result<Tensor> {
        let Some(first) = samples.first() else {
            candle_core::bail!("empty batch");
        };
        let (h, w) = (first.height, first.width);
        let pixels = h * w;
        let mut data = Vec::with_capacity(samples.len() * 3 * pixels);
        for (n, sample) in samples.iter().enumerate() {
            if (sample.height, sample.width) != (h, w) || sample.image.len() != 3 * pixels {
                candle_core::bail!(
                    "batch image {n} is {}x{}, the first is {h}x{w}",
                    sample.height,
                    sample.width
                );
            }
            for (c, plane) in sample.image.chunks_exact(pixels).enumerate() {
                data.extend(plane.iter().map(|v| (v - self.mean[c]) / self.std[c]));
            }
        }
        Tensor::from_vec(data, (samples.len(), 3, h, w), device)
    }

    /// An 8-bit RGB image as a normalised tensor `[1, 3, H, W]` (values scaled to
    /// `[0, 1]`, then normalised), in one pass.
    pub fn image(&self, img: &RgbImage, device: &Device) -> Result<Tensor> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let mut data = vec![0f32; 3 * h * w];
        for (i, px) in img.pixels().enumerate() {
            for c in 0..3 {
                data[c * h * w + i] = (px[c] as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        Tensor::from_vec(data, (1, 3, h, w), device)
    }
}

/// The loss a segmenter's [`Segmenter::training_logits`] are trained with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrainingObjective {
    /// Softmax cross-entropy over the classes, averaged over the pixels that are
    /// not ignored.
    #[default]
    SoftmaxCrossEntropy,
    /// One sigmoid per class: binary cross-entropy with logits against one-hot
    /// targets, averaged over every pixel and class; an ignored pixel gets an
    /// all-zero target and still counts (CAT-Seg's training loss).
    SigmoidOneHot,
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

    /// The logits training backpropagates through: `[N, 3, H, W]` -> `[N, C, H, W]`,
    /// differentiable with respect to the adaptation's factors, trained with
    /// [`Segmenter::training_objective`]. Default: [`Segmenter::forward`]. A model
    /// whose inference differs from its training forward (CAT-Seg's sliding
    /// window, fused kernels) overrides it.
    fn training_logits(&self, images: &Tensor, adaptation: &Adaptation) -> Result<Tensor> {
        self.forward(images, adaptation)
    }

    /// The loss [`Segmenter::training_logits`] are trained with.
    fn training_objective(&self) -> TrainingObjective {
        TrainingObjective::SoftmaxCrossEntropy
    }

    /// A pooled embedding of each image from the base model's own features
    /// (the `backbone` embedder of SemLA's retrieval): `[N, 3, H, W]` -> `[N, D]`.
    fn embed(&self, images: &Tensor) -> Result<Tensor>;

    /// Style statistics of each image: the per-channel mean and standard deviation
    /// of the base model's early feature maps (the layers before the first adapter
    /// site, or the first few blocks), `[N, 3, H, W]` -> `[N, D]`.
    ///
    /// They describe contrast, colour, noise and blur more than scene content, which
    /// is what tells domain shifts apart; and they cost only the early layers.
    fn embed_style(&self, images: &Tensor) -> Result<Tensor>;

    /// The adapter sites of the model, in a stable order.
    fn sites(&self) -> Vec<SiteInfo>;

    /// Adds a dense weight update to the base weight of the site at `path`
    /// (the merged path of fusion). `delta` has the base weight's shape.
    fn merge_delta(&mut self, path: &str, delta: &Tensor) -> Result<()>;

    /// Every weight of the model as `(checkpoint key, tensor)`, for saving.
    fn named_tensors(&self) -> Vec<(String, Tensor)>;

    /// The configuration that rebuilds this model (the `config.json` of its folder).
    fn config(&self) -> SegmenterConfig;
}

/// Per-channel mean and standard deviation of `[N, C, H, W]` feature maps,
/// concatenated as `[N, 2C]` (means first). The standard deviation is the
/// population one, with `1e-6` added to the variance.
pub fn channel_statistics(features: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = features.dims4()?;
    let flat = features.reshape((n, c, h * w))?;
    let mean = flat.mean_keepdim(2)?; // [N, C, 1]
    let var = flat.broadcast_sub(&mean)?.sqr()?.mean(2)?; // [N, C]
    let std = (var + 1e-6)?.sqrt()?;
    Tensor::cat(&[&mean.squeeze(2)?, &std], 1)
}

/// Adds `delta` to the weight of the site at `path` among `sites`
/// (shared by the models' [`Segmenter::merge_delta`]).
pub(crate) fn merge_into_sites(
    sites: Vec<&mut AdaptedConv2d>,
    path: &str,
    delta: &Tensor,
) -> Result<()> {
    for site in sites {
        if site.path() == path {
            let merged = (site.weight() + delta.to_dtype(site.weight().dtype())?)?;
            return site.set_weight(merged);
        }
    }
    candle_core::bail!("the model has no adapter site `{path}`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_statistics_are_means_then_population_deviations() {
        // One image, two channels of four pixels: [1, 2, 3, 4] and [5, 5, 5, 5].
        let x = Tensor::new(&[1f32, 2., 3., 4., 5., 5., 5., 5.], &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 2, 2))
            .unwrap();
        let stats = channel_statistics(&x).unwrap().to_vec2::<f32>().unwrap();
        // Variance of [1, 2, 3, 4] is 1.25; of a constant, 0 (+ 1e-6).
        let want = [2.5, 5.0, (1.25f32 + 1e-6).sqrt(), 1e-3];
        for (got, want) in stats[0].iter().zip(want) {
            assert!((got - want).abs() < 1e-5, "{stats:?}");
        }
    }
}
