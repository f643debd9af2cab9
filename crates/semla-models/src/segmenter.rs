//! The interface every segmentation model offers to the rest of semla
//! (retrieval, fusion, training, evaluation), so that a new backbone (CAT-Seg,
//! ...) can be added without changing its callers.
//!
//! A trained segmenter is stored as a model folder `M/` holding `config.json`
//! (a [`SegmenterConfig`], tagged by `"kind"`) and `model.safetensors` (the
//! [`Segmenter::named_tensors`]); [`save_segmenter`] writes one and
//! [`load_segmenter`] reads any kind back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use semla_adapters::{Adaptation, AdaptedConv2d, SiteInfo};

use crate::efficientnet::{EfficientLiteSeg, EfficientLiteSegConfig};
use crate::tiny::{TinySeg, TinySegConfig};

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

/// Configuration of any segmenter kind, as stored in a model folder's
/// `config.json`: `{"kind": "efficientnet-lite0-lraspp", "num_classes": 11, ...}`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind")]
pub enum SegmenterConfig {
    /// [`EfficientLiteSeg`]: EfficientNet-Lite0 + LR-ASPP.
    #[serde(rename = "efficientnet-lite0-lraspp")]
    EfficientLite0(EfficientLiteSegConfig),
    /// [`TinySeg`]: a few convolutions, for tests and demos.
    #[serde(rename = "tiny")]
    Tiny(TinySegConfig),
}

impl SegmenterConfig {
    /// Number of output classes.
    pub fn num_classes(&self) -> usize {
        match self {
            Self::EfficientLite0(c) => c.num_classes,
            Self::Tiny(c) => c.num_classes,
        }
    }

    /// Class names (may be empty).
    pub fn class_names(&self) -> &[String] {
        match self {
            Self::EfficientLite0(c) => &c.class_names,
            Self::Tiny(c) => &c.class_names,
        }
    }

    /// Builds the model of this configuration from `vb` (frozen tensors or a `VarMap`).
    pub fn build(&self, vb: &VarBuilder) -> Result<Box<dyn Segmenter>> {
        Ok(match self {
            Self::EfficientLite0(c) => Box::new(EfficientLiteSeg::new(vb, c)?),
            Self::Tiny(c) => Box::new(TinySeg::new(vb, c)?),
        })
    }
}

/// A segmenter of `config` with freshly initialised weights (Kaiming-normal
/// convolutions, zero biases), held as frozen plain tensors: for benchmarks
/// and tests that do not depend on trained weights.
pub fn random_segmenter(config: &SegmenterConfig, device: &Device) -> Result<Box<dyn Segmenter>> {
    let map = candle_nn::VarMap::new();
    config.build(&VarBuilder::from_varmap(&map, DType::F32, device))?;
    let tensors: HashMap<String, Tensor> = {
        let data = map
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
        data.iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect()
    };
    config.build(&VarBuilder::from_tensors(tensors, DType::F32, device))
}

/// File name of the configuration in a model folder.
pub const CONFIG_FILE: &str = "config.json";
/// File name of the weights in a model folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Errors of reading or writing a model folder.
#[derive(Debug, thiserror::Error)]
pub enum ModelDirError {
    /// A file could not be read or written.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// `config.json` is not a valid segmenter configuration.
    #[error("{path}: invalid segmenter configuration: {cause}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The parse error.
        cause: serde_json::Error,
    },
    /// The weights are unreadable or do not fit the configuration.
    #[error("{path}: {cause}")]
    Weights {
        /// The file.
        path: PathBuf,
        /// What is wrong (missing tensor, shape mismatch, corrupt file, ...).
        cause: candle_core::Error,
    },
}

/// Reads `dir/config.json`.
pub fn read_segmenter_config(dir: &Path) -> std::result::Result<SegmenterConfig, ModelDirError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|cause| ModelDirError::Io {
        path: path.clone(),
        cause,
    })?;
    serde_json::from_str(&text).map_err(|cause| ModelDirError::Config { path, cause })
}

/// Loads a model folder (`config.json` + `model.safetensors`) as frozen tensors
/// and builds the segmenter its `kind` names.
pub fn load_segmenter(
    dir: &Path,
    device: &Device,
) -> std::result::Result<Box<dyn Segmenter>, ModelDirError> {
    let config = read_segmenter_config(dir)?;
    let path = dir.join(WEIGHTS_FILE);
    if !path.is_file() {
        return Err(ModelDirError::Io {
            path,
            cause: std::io::Error::new(std::io::ErrorKind::NotFound, "model weights not found"),
        });
    }
    let tensors =
        candle_core::safetensors::load(&path, device).map_err(|cause| ModelDirError::Weights {
            path: path.clone(),
            cause,
        })?;
    let tensors: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, v)| v.to_dtype(DType::F32).map(|v| (k, v)))
        .collect::<Result<_>>()
        .map_err(|cause| ModelDirError::Weights {
            path: path.clone(),
            cause,
        })?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    config
        .build(&vb)
        .map_err(|cause| ModelDirError::Weights { path, cause })
}

/// Writes `model` as a model folder `dir` (created if needed): `config.json`
/// and `model.safetensors`, each written to a temporary file and renamed.
pub fn save_segmenter(model: &dyn Segmenter, dir: &Path) -> std::result::Result<(), ModelDirError> {
    std::fs::create_dir_all(dir).map_err(|cause| ModelDirError::Io {
        path: dir.to_path_buf(),
        cause,
    })?;
    let weights = dir.join(WEIGHTS_FILE);
    let tmp = dir.join(format!(".{WEIGHTS_FILE}.tmp"));
    let tensors: HashMap<String, Tensor> = model.named_tensors().into_iter().collect();
    candle_core::safetensors::save(&tensors, &tmp).map_err(|cause| ModelDirError::Weights {
        path: tmp.clone(),
        cause,
    })?;
    std::fs::rename(&tmp, &weights).map_err(|cause| ModelDirError::Io {
        path: weights.clone(),
        cause,
    })?;

    let config = dir.join(CONFIG_FILE);
    let tmp = dir.join(format!(".{CONFIG_FILE}.tmp"));
    let text =
        serde_json::to_string_pretty(&model.config()).map_err(|cause| ModelDirError::Config {
            path: config.clone(),
            cause,
        })?;
    std::fs::write(&tmp, text).map_err(|cause| ModelDirError::Io {
        path: tmp.clone(),
        cause,
    })?;
    std::fs::rename(&tmp, &config).map_err(|cause| ModelDirError::Io {
        path: config,
        cause,
    })
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

/// An RGB image as a normalised tensor `[1, 3, H, W]` (values scaled to `[0, 1]`
/// then normalised with `norm`).
pub fn rgb_to_tensor(
    img: &image::RgbImage,
    norm: Normalization,
    device: &Device,
) -> Result<Tensor> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut data = vec![0f32; 3 * h * w];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            data[c * h * w + i] = (px[c] as f32 / 255.0 - norm.mean[c]) / norm.std[c];
        }
    }
    Tensor::from_vec(data, (1, 3, h, w), device)
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
