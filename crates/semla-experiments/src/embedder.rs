//! Image embedders for retrieval: what turns an image into the vector that is
//! compared with the domain prototypes.
//!
//! - `clip:DIR` ([`Embedder::Clip`]): the official embedder, a Hugging Face
//!   `CLIPModel` folder; `get_image_features` (projected CLS token, not
//!   normalised) after `CLIPImageProcessor` preprocessing.
//! - `backbone` ([`Embedder::Backbone`]): the segmenter's own pooled base
//!   features ([`Segmenter::embed`]), on the image exactly as the segmenter sees it.
//! - `style`: the same segmenter's early-layer channel statistics
//!   ([`Segmenter::embed_style`]): what a shift does to an image (contrast, colour,
//!   noise, blur) more than what the image shows, for a fraction of a forward pass.
//!
//! Both segmenter embedders take an optional suffix `@F`: the image is
//! average-pooled by `F` in each direction first.
//!
//! Every embedder has an identity ([`Embedder::id`]) that changes with its
//! weights, so a library can refuse queries from another embedder.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use semla_adapters::Adaptation;
use semla_models::clip::{ClipModel, ImageProcessor};
use semla_models::segmenter::Segmenter;
use semla_train::data::Sample;

use crate::error::{ExperimentError, Result};

/// An embedder as named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EmbedderSpec {
    /// `clip:DIR`: a Hugging Face `CLIPModel` folder.
    Clip(PathBuf),
    /// `backbone` or `backbone:MODEL_DIR` (pooled features), `style` or
    /// `style:MODEL_DIR` (early channel statistics), of the segmenter in
    /// `MODEL_DIR`, else of the model the command runs; with a suffix `@F`
    /// (`backbone@4`, `style:MODEL_DIR@2`), of the image average-pooled by `F`
    /// in each direction first.
    Backbone {
        /// The segmenter folder, or `None` for the model the command runs.
        model: Option<PathBuf>,
        /// Downscale factor of the embedded image (1: the image as given).
        downscale: usize,
        /// Which summary of the segmenter's features.
        summary: BackboneSummary,
    },
}

/// What a segmenter embedder takes from the segmenter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackboneSummary {
    /// `backbone`: [`Segmenter::embed`], pooled deep features.
    Pooled,
    /// `style`: [`Segmenter::embed_style`], early channel statistics.
    Style,
}

impl BackboneSummary {
    /// The spec prefix and embedder kind: `backbone` or `style`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pooled => "backbone",
            Self::Style => "style",
        }
    }
}

impl std::str::FromStr for BackboneSummary {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "backbone" => Ok(Self::Pooled),
            "style" => Ok(Self::Style),
            other => Err(format!(
                "unknown segmenter embedder `{other}` (backbone or style)"
            )),
        }
    }
}

impl EmbedderSpec {
    /// `backbone` (the command's own model, full resolution).
    pub fn backbone() -> Self {
        Self::Backbone {
            model: None,
            downscale: 1,
            summary: BackboneSummary::Pooled,
        }
    }
}

impl std::str::FromStr for EmbedderSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        for summary in [BackboneSummary::Pooled, BackboneSummary::Style] {
            let prefix = summary.as_str();
            let Some(rest) = s.strip_prefix(prefix) else {
                continue;
            };
            if !(rest.is_empty() || rest.starts_with(':') || rest.starts_with('@')) {
                continue;
            }
            let (body, downscale) = match rest.rsplit_once('@') {
                Some((body, factor)) => match factor.parse::<usize>() {
                    Ok(f) if f >= 1 => (body, f),
                    _ => {
                        return Err(format!(
                            "`{s}`: the downscale factor after `@` must be a whole number >= 1"
                        ));
                    }
                },
                None => (rest, 1),
            };
            let model = match body.strip_prefix(':') {
                Some("") => return Err(format!("`{s}`: `{prefix}:` needs a model folder")),
                Some(dir) => Some(PathBuf::from(dir)),
                None => None,
            };
            return Ok(Self::Backbone {
                model,
                downscale,
                summary,
            });
        }
        if let Some(dir) = s.strip_prefix("clip:")
            && !dir.is_empty()
        {
            return Ok(Self::Clip(PathBuf::from(dir)));
        }
        Err(format!(
            "unknown embedder `{s}` (expected clip:DIR, backbone[:MODEL_DIR][@F] or style[:MODEL_DIR][@F])"
        ))
    }
}

impl std::fmt::Display for EmbedderSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Clip(dir) => write!(f, "clip:{}", dir.display()),
            Self::Backbone {
                model,
                downscale,
                summary,
            } => {
                f.write_str(summary.as_str())?;
                if let Some(dir) = model {
                    write!(f, ":{}", dir.display())?;
                }
                if *downscale > 1 {
                    write!(f, "@{downscale}")?;
                }
                Ok(())
            }
        }
    }
}

/// The official CLIP embedder.
pub struct ClipEmbedder {
    model: ClipModel,
    processor: ImageProcessor,
    id: String,
    dir: PathBuf,
}

impl ClipEmbedder {
    /// Loads a `CLIPModel` folder (`config.json`, `model.safetensors`,
    /// optional `preprocessor_config.json`).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let model = ClipModel::from_dir(dir, device)?;
        let processor_file = dir.join("preprocessor_config.json");
        let processor = if processor_file.is_file() {
            ImageProcessor::from_file(&processor_file)?
        } else {
            let size = model.config().vision_config.image_size;
            ImageProcessor::with_size(size)
        };
        let id = format!("clip:{:016x}", folder_fingerprint(dir)?);
        Ok(Self {
            model,
            processor,
            id,
            dir: dir.to_path_buf(),
        })
    }

    /// The model folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// An image embedder (see the module documentation). `'m` borrows the
/// segmenter of the backbone embedder.
pub enum Embedder<'m> {
    /// CLIP `get_image_features`.
    Clip(Box<ClipEmbedder>),
    /// The segmenter's own pooled features.
    Backbone {
        /// The segmenter.
        model: &'m dyn Segmenter,
        /// Its identity (a fingerprint of its weights, and the downscale factor).
        id: String,
        /// The image is average-pooled by this factor in each direction before the
        /// backbone sees it (1: not at all): the query embedding then costs about
        /// `1 / downscale^2` of a full backbone pass.
        downscale: usize,
        /// Pooled deep features or early channel statistics.
        summary: BackboneSummary,
    },
}

impl<'m> Embedder<'m> {
    /// The backbone embedder of `model`.
    pub fn backbone(model: &'m dyn Segmenter) -> Result<Self> {
        Self::backbone_downscaled(model, 1)
    }

    /// The backbone embedder of `model` on images average-pooled by `downscale`
    /// (`>= 1`) in each direction.
    pub fn backbone_downscaled(model: &'m dyn Segmenter, downscale: usize) -> Result<Self> {
        Self::segmenter(model, BackboneSummary::Pooled, downscale)
    }

    /// A segmenter embedder: `summary` of `model`'s features of images
    /// average-pooled by `downscale` (`>= 1`) in each direction.
    pub fn segmenter(
        model: &'m dyn Segmenter,
        summary: BackboneSummary,
        downscale: usize,
    ) -> Result<Self> {
        if downscale == 0 {
            return Err(ExperimentError::Invalid(
                "the backbone embedder's downscale factor must be at least 1".into(),
            ));
        }
        let id = backbone_id(summary, model_fingerprint(model)?, downscale);
        Ok(Self::Backbone {
            model,
            id,
            downscale,
            summary,
        })
    }

    /// The CLIP embedder of a model folder.
    pub fn clip(dir: &Path, device: &Device) -> Result<Self> {
        Ok(Self::Clip(Box::new(ClipEmbedder::load(dir, device)?)))
    }

    /// `clip` or `backbone`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Clip(_) => "clip",
            Self::Backbone { summary, .. } => summary.as_str(),
        }
    }

    /// The identity recorded with a library's prototypes: the kind and a
    /// fingerprint of the weights (`backbone:0123abcd...`).
    pub fn id(&self) -> &str {
        match self {
            Self::Clip(c) => &c.id,
            Self::Backbone { id, .. } => id,
        }
    }

    /// Embeds a batch of samples (`[3, H, W]` RGB in `[0, 1]` each, as the
    /// segmenter sees them), one vector `[D]` per sample.
    ///
    /// The backbone embeds the samples normalised for the segmenter (all
    /// samples must then have one size); CLIP quantises each sample back to
    /// 8 bits (exact for unresized images) and applies its own preprocessing.
    pub fn embed_samples(&self, samples: &[&Sample], device: &Device) -> Result<Vec<Vec<f32>>> {
        if samples.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Self::Backbone {
                model,
                downscale,
                summary,
                ..
            } => {
                let mut batch = normalized_batch(samples, model.normalization(), device)?;
                if *downscale > 1 {
                    let (_, _, h, w) = batch.dims4()?;
                    if h < *downscale || w < *downscale {
                        return Err(ExperimentError::Invalid(format!(
                            "a {h}x{w} image is too small to embed at 1/{downscale} of its size"
                        )));
                    }
                    batch = batch.avg_pool2d(*downscale)?;
                }
                rows(&match summary {
                    BackboneSummary::Pooled => model.embed(&batch)?,
                    BackboneSummary::Style => model.embed_style(&batch)?,
                })
            }
            Self::Clip(clip) => {
                let mut pixels = Vec::with_capacity(samples.len());
                for sample in samples {
                    let rgb = sample_to_rgb8(sample);
                    pixels.push(clip.processor.preprocess_rgb(
                        &rgb,
                        sample.height,
                        sample.width,
                    )?);
                }
                let pixels = Tensor::stack(&pixels, 0)?.to_device(device)?;
                rows(
                    &clip
                        .model
                        .get_image_features(&pixels, &Adaptation::none())?,
                )
            }
        }
    }

    /// Embeds an image file as the official code does for CLIP (the file
    /// itself, PIL-style RGB conversion); the backbone embeds the decoded
    /// image at its own size.
    pub fn embed_file(&self, path: &Path, device: &Device) -> Result<Vec<f32>> {
        match self {
            Self::Clip(clip) => {
                let pixels = clip.processor.preprocess_file(path)?.unsqueeze(0)?;
                let pixels = pixels.to_device(device)?;
                let mut out = rows(
                    &clip
                        .model
                        .get_image_features(&pixels, &Adaptation::none())?,
                )?;
                out.pop()
                    .ok_or_else(|| ExperimentError::Invalid("CLIP returned no feature".into()))
            }
            Self::Backbone { .. } => {
                let img = semla_data::labels::read_rgb(path)
                    .map_err(|e| ExperimentError::Invalid(format!("{}: {e}", path.display())))?;
                let (w, h) = (img.width() as usize, img.height() as usize);
                let sample = Sample::from_rgb8(img.as_raw(), vec![0; w * h], h, w);
                let mut out = self.embed_samples(&[&sample], device)?;
                out.pop().ok_or_else(|| {
                    ExperimentError::Invalid("the backbone returned no feature".into())
                })
            }
        }
    }
}

/// The identity ([`Embedder::id`]) of the embedder a spec names, without
/// keeping it: `clip:DIR` from the folder's fingerprint, `backbone:DIR` from
/// the model's weights (`backbone` alone names no model: `None`).
pub fn spec_id(spec: &EmbedderSpec, device: &Device) -> Result<Option<String>> {
    Ok(match spec {
        EmbedderSpec::Clip(dir) => Some(format!("clip:{:016x}", folder_fingerprint(dir)?)),
        EmbedderSpec::Backbone {
            model: Some(dir),
            downscale,
            summary,
        } => {
            let model = semla_models::segmenter::load_segmenter(dir, device)?;
            Some(backbone_id(
                *summary,
                model_fingerprint(model.as_ref())?,
                *downscale,
            ))
        }
        EmbedderSpec::Backbone { model: None, .. } => None,
    })
}

/// `backbone:<fingerprint>` (or `style:...`), with `@<downscale>` when the image
/// is downscaled.
fn backbone_id(summary: BackboneSummary, fingerprint: u64, downscale: usize) -> String {
    let kind = summary.as_str();
    if downscale > 1 {
        format!("{kind}:{fingerprint:016x}@{downscale}")
    } else {
        format!("{kind}:{fingerprint:016x}")
    }
}

/// Samples `[3, H, W]` in `[0, 1]` as one normalised batch `[N, 3, H, W]`.
/// Every sample must have the size of the first.
pub fn normalized_batch(
    samples: &[&Sample],
    norm: semla_models::segmenter::Normalization,
    device: &Device,
) -> Result<Tensor> {
    let Some(first) = samples.first() else {
        return Err(ExperimentError::Invalid("empty batch".into()));
    };
    let (h, w) = (first.height, first.width);
    let pixels = h * w;
    let mut data = Vec::with_capacity(samples.len() * 3 * pixels);
    for (n, sample) in samples.iter().enumerate() {
        if (sample.height, sample.width) != (h, w) || sample.image.len() != 3 * pixels {
            return Err(ExperimentError::Invalid(format!(
                "batch image {n} is {}x{}, the first is {h}x{w}",
                sample.height, sample.width
            )));
        }
        for (c, plane) in sample.image.chunks_exact(pixels).enumerate() {
            data.extend(plane.iter().map(|v| (v - norm.mean[c]) / norm.std[c]));
        }
    }
    Ok(Tensor::from_vec(data, (samples.len(), 3, h, w), device)?)
}

/// A sample's image as interleaved 8-bit RGB (`round(v * 255)`).
pub fn sample_to_rgb8(sample: &Sample) -> Vec<u8> {
    let pixels = sample.height * sample.width;
    let mut rgb = vec![0u8; 3 * pixels];
    for c in 0..3 {
        for (p, v) in sample.image[c * pixels..(c + 1) * pixels]
            .iter()
            .enumerate()
        {
            rgb[3 * p + c] = (v * 255.0).round().clamp(0.0, 255.0) as u8;
        }
    }
    rgb
}

fn rows(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    let t = t.to_dtype(DType::F32)?;
    let (n, _) = t.dims2()?;
    let t = t.to_device(&Device::Cpu)?;
    (0..n).map(|i| Ok(t.get(i)?.to_vec1::<f32>()?)).collect()
}

/// FNV-1a, 64 bits.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A fingerprint of every weight of a segmenter (names, shapes and values).
pub fn model_fingerprint(model: &dyn Segmenter) -> Result<u64> {
    let mut tensors = model.named_tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut hash = Fnv::new();
    for (name, tensor) in tensors {
        hash.write(name.as_bytes());
        for d in tensor.dims() {
            hash.write(&(*d as u64).to_le_bytes());
        }
        let values: Vec<f32> = tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        for v in values {
            hash.write(&v.to_le_bytes());
        }
    }
    Ok(hash.0)
}

/// A fingerprint of a model folder: `config.json`, and for each weights file
/// its name, size and first and last MiB (cheap for multi-GB checkpoints).
pub fn folder_fingerprint(dir: &Path) -> Result<u64> {
    let mut hash = Fnv::new();
    let config = dir.join("config.json");
    let text = std::fs::read(&config).map_err(|e| ExperimentError::io(&config, e))?;
    hash.write(&text);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ExperimentError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    const CHUNK: u64 = 1 << 20;
    for file in files {
        let mut f = std::fs::File::open(&file).map_err(|e| ExperimentError::io(&file, e))?;
        let len = f
            .metadata()
            .map_err(|e| ExperimentError::io(&file, e))?
            .len();
        hash.write(
            file.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        hash.write(&len.to_le_bytes());
        let mut buf = Vec::new();
        (&mut f)
            .take(CHUNK)
            .read_to_end(&mut buf)
            .map_err(|e| ExperimentError::io(&file, e))?;
        if len > 2 * CHUNK {
            use std::io::Seek as _;
            f.seek(std::io::SeekFrom::Start(len - CHUNK))
                .map_err(|e| ExperimentError::io(&file, e))?;
            f.take(CHUNK)
                .read_to_end(&mut buf)
                .map_err(|e| ExperimentError::io(&file, e))?;
        }
        hash.write(&buf);
    }
    Ok(hash.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        for text in [
            "backbone",
            "backbone:models/base",
            "clip:weights/clip",
            "backbone@4",
            "backbone:models/base@2",
            "style",
            "style@2",
            "style:models/base",
        ] {
            let spec: EmbedderSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
        }
        assert_eq!(
            "backbone:m@4".parse::<EmbedderSpec>().unwrap(),
            EmbedderSpec::Backbone {
                model: Some(PathBuf::from("m")),
                downscale: 4,
                summary: BackboneSummary::Pooled,
            }
        );
        assert!("backbone@0".parse::<EmbedderSpec>().is_err());
        assert!("backbone@x".parse::<EmbedderSpec>().is_err());
        assert!("backbone:".parse::<EmbedderSpec>().is_err());
        assert!("backbones".parse::<EmbedderSpec>().is_err());
        assert!("styles".parse::<EmbedderSpec>().is_err());
        assert!("clip:".parse::<EmbedderSpec>().is_err());
        assert!("resnet".parse::<EmbedderSpec>().is_err());
    }

    #[test]
    fn rgb8_round_trip_is_exact() {
        let rgb: Vec<u8> = (0..2 * 3 * 3).map(|i| (i * 14) as u8).collect();
        let sample = Sample::from_rgb8(&rgb, vec![0; 6], 2, 3);
        assert_eq!(sample_to_rgb8(&sample), rgb);
    }
}
