//! Mixtures of adapters: which adapters an image uses with which weights
//! ([`AdapterChoice`], one list per image), how they are chosen ([`Mode`]), and
//! how a batch of images with their own mixtures is scored.
//!
//! Scoring ([`mixture_scores`]):
//!
//! - **weight fusion with `cat`** (the official method) is applied factored
//!   ([`Adaptation::from_adapters`]): no model weight is changed, and one batch
//!   may hold images with different mixtures: the batch's adaptation stacks the
//!   union of the adapters its images selected, with a zero weight where an
//!   image did not select one. When a batch shares one mixture, each site picks
//!   whichever of `W + ΔW` and the factored update costs fewer multiply-adds
//!   ([`semla_adapters::FactoredSite::merge_is_cheaper`]), a per-forward choice
//!   that leaves the stored weights untouched;
//! - **weight fusion with `linear` or `svd`** (PEFT's other `combination_type`s)
//!   merges each image's adapters into one adapter first
//!   ([`semla_adapters::fusion::merge`]) and runs the image with it alone. This
//!   costs a merge per image (for `svd`, a QR and a small SVD per site) and a
//!   forward per image, where `cat` costs neither;
//! - **late fusion** (`Fusion::Outputs`) runs every selected adapter alone and
//!   averages the class probabilities (softmax per adapter) with the image's
//!   weights.

use candle_core::{D, DType, Tensor};
use semla_adapters::{Adaptation, Adapter, Combination};
use semla_models::Segmenter;
use semla_retrieval::{PrototypeSet, RetrievalParams, Selection};
use serde::{Deserialize, Serialize};

use crate::error::{PipelineError, Result};
use crate::library::SourceLibrary;

/// One adapter of an image's mixture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdapterChoice {
    /// Adapter (source domain) name.
    pub name: String,
    /// Distance of the image's embedding to the prototype (retrieval only).
    pub distance: Option<f64>,
    /// Similarity used for ranking (retrieval only).
    pub similarity: Option<f64>,
    /// Mixing weight.
    pub weight: f64,
}

impl AdapterChoice {
    /// An adapter with a weight and no retrieval scores.
    pub fn weighted(name: impl Into<String>, weight: f64) -> Self {
        Self {
            name: name.into(),
            distance: None,
            similarity: None,
            weight,
        }
    }
}

impl From<Selection> for AdapterChoice {
    fn from(s: Selection) -> Self {
        Self {
            name: s.name,
            distance: Some(s.distance),
            similarity: Some(s.similarity),
            weight: s.weight,
        }
    }
}

/// How the adapters of an image are chosen.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Mode {
    /// SemLA: per image, the nearest prototypes, temperature-softmax weights.
    #[default]
    Semla,
    /// The base model, no adapter.
    ZeroShot,
    /// Every candidate adapter with weight `1 / N`.
    Uniform,
    /// These adapters with these weights, for every image.
    Adapters(Vec<AdapterChoice>),
}

impl Mode {
    /// Whether the mode looks at the image (needs an embedder).
    pub fn needs_embedding(&self) -> bool {
        matches!(self, Self::Semla)
    }
}

/// How the selected adapters are combined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fusion {
    /// Weight-space fusion (PEFT's `combination_type`; `cat` is exact and
    /// applied factored): the official method.
    #[default]
    Weights,
    /// Late fusion: weighted average of the adapters' class probabilities.
    Outputs,
}

impl Fusion {
    /// `weights` or `outputs`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Weights => "weights",
            Self::Outputs => "outputs",
        }
    }
}

impl std::str::FromStr for Fusion {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "weights" => Ok(Self::Weights),
            "outputs" => Ok(Self::Outputs),
            other => Err(format!(
                "unknown fusion `{other}` (expected weights or outputs)"
            )),
        }
    }
}

/// The uniform mixture over the library's sources minus `exclude`.
pub fn uniform(library: &SourceLibrary, exclude: &[&str]) -> Result<Vec<AdapterChoice>> {
    let candidates: Vec<&String> = library
        .sources()
        .iter()
        .filter(|s| !exclude.contains(&s.as_str()))
        .collect();
    if candidates.is_empty() {
        return Err(PipelineError::Invalid(format!(
            "no candidate adapter left (excluded: {})",
            exclude.join(", ")
        )));
    }
    let weight = 1.0 / candidates.len() as f64;
    Ok(candidates
        .into_iter()
        .map(|name| AdapterChoice::weighted(name.clone(), weight))
        .collect())
}

/// SemLA's mixture for one query embedding: the top-k prototypes of
/// `prototypes` minus `exclude`, temperature-softmax weights.
pub fn retrieve(
    prototypes: &PrototypeSet,
    embedding: &[f32],
    params: &RetrievalParams,
    exclude: &[&str],
) -> Result<Vec<AdapterChoice>> {
    Ok(prototypes
        .retrieve(embedding, params, exclude)?
        .into_iter()
        .map(AdapterChoice::from)
        .collect())
}

/// The per-image mixtures of one batch as a union of adapters and weight rows
/// (`rows[n][i]`: the weight of adapter `i` of the union for image `n`).
pub fn batch_mixture(mixtures: &[&[AdapterChoice]]) -> (Vec<String>, Vec<Vec<f64>>) {
    let mut names: Vec<String> = Vec::new();
    for mixture in mixtures {
        for choice in *mixture {
            if !names.contains(&choice.name) {
                names.push(choice.name.clone());
            }
        }
    }
    let rows = mixtures
        .iter()
        .map(|mixture| {
            names
                .iter()
                .map(|n| {
                    mixture
                        .iter()
                        .filter(|c| &c.name == n)
                        .map(|c| c.weight)
                        .sum()
                })
                .collect()
        })
        .collect();
    (names, rows)
}

/// The scores of a mixture over a batch: `images` `[N, 3, H, W]`
/// (normalised), `adapters` the union of the batch's adapters, `rows[n][i]`
/// the weight of `adapters[i]` for image `n` (one row: the whole batch).
///
/// With [`Fusion::Weights`] returns the logits `[N, C, H, W]` of the model
/// with the factored (`cat`) mixture; with [`Fusion::Outputs`], the weighted
/// sum of the per-adapter softmax probabilities `[N, C, H, W]`. No adapter:
/// the base model's logits.
pub fn mixture_scores(
    model: &dyn Segmenter,
    images: &Tensor,
    adapters: &[&Adapter],
    rows: &[Vec<f64>],
    fusion: Fusion,
) -> Result<Tensor> {
    if adapters.is_empty() {
        return Ok(model.forward(images, &Adaptation::none())?);
    }
    let n = images.dim(0)?;
    if rows.len() != 1 && rows.len() != n {
        return Err(PipelineError::Invalid(format!(
            "{} weight rows for a batch of {n} images",
            rows.len()
        )));
    }
    if let Some(row) = rows.iter().find(|r| r.len() != adapters.len()) {
        return Err(PipelineError::Invalid(format!(
            "a weight row has {} weights for {} adapters",
            row.len(),
            adapters.len()
        )));
    }
    match fusion {
        Fusion::Weights => {
            let adaptation = Adaptation::from_adapters(adapters, rows)?;
            Ok(model.forward(images, &adaptation)?)
        }
        Fusion::Outputs => {
            let mut total: Option<Tensor> = None;
            for (i, adapter) in adapters.iter().enumerate() {
                let weights: Vec<f32> = (0..n)
                    .map(|b| rows[if rows.len() == 1 { 0 } else { b }][i] as f32)
                    .collect();
                if weights.iter().all(|w| *w == 0.0) {
                    continue;
                }
                let adaptation = Adaptation::from_adapters(&[*adapter], &[vec![1.0]])?;
                let logits = model.forward(images, &adaptation)?;
                let probabilities = candle_nn::ops::softmax(&logits, 1)?;
                let w = Tensor::from_vec(weights, (n, 1, 1, 1), images.device())?
                    .to_dtype(probabilities.dtype())?;
                let term = probabilities.broadcast_mul(&w)?;
                total = Some(match total {
                    Some(t) => (t + term)?,
                    None => term,
                });
            }
            total.ok_or_else(|| {
                PipelineError::Invalid("every adapter of the mixture has weight 0".into())
            })
        }
    }
}

/// The logits `[N, C, H, W]` of a batch whose images each run with the one
/// adapter [`semla_adapters::fusion::merge`] makes of their mixture
/// (`combination` `linear` or `svd`; `cat` is exact and cheaper factored:
/// [`mixture_scores`]). An image without adapters runs the base model.
pub fn merged_scores(
    model: &dyn Segmenter,
    images: &Tensor,
    library: &SourceLibrary,
    mixtures: &[&[AdapterChoice]],
    combination: Combination,
) -> Result<Tensor> {
    let n = images.dim(0)?;
    if mixtures.len() != n {
        return Err(PipelineError::Invalid(format!(
            "{} mixtures for a batch of {n} images",
            mixtures.len()
        )));
    }
    let mut out = Vec::with_capacity(n);
    for (i, mixture) in mixtures.iter().enumerate() {
        let image = images.narrow(0, i, 1)?;
        if mixture.is_empty() {
            out.push(model.forward(&image, &Adaptation::none())?);
            continue;
        }
        let adapters: Vec<&Adapter> = mixture
            .iter()
            .map(|c| library.adapter(&c.name))
            .collect::<Result<_>>()?;
        let weights: Vec<f64> = mixture.iter().map(|c| c.weight).collect();
        let merged = semla_adapters::merge(&adapters, &weights, combination, None)?;
        let adaptation = Adaptation::from_adapters(&[&merged], &[vec![1.0]])?;
        out.push(model.forward(&image, &adaptation)?);
    }
    Ok(Tensor::cat(&out, 0)?)
}

/// Arg-max classes of scores `[N, C, H, W]`: one `H * W` map per image.
pub fn argmax_maps(scores: &Tensor) -> Result<Vec<Vec<u16>>> {
    let (n, _, _, _) = scores.dims4()?;
    let classes = scores.argmax(1)?.to_dtype(DType::U32)?;
    (0..n)
        .map(|i| {
            let v: Vec<u32> = classes.get(i)?.flatten_all()?.to_vec1()?;
            Ok(v.into_iter()
                .map(|c| c.min(u16::MAX as u32) as u16)
                .collect())
        })
        .collect()
}

/// The softmax over classes of `[N, C, H, W]` logits.
pub fn class_probabilities(logits: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax(logits, D::Minus(3))?)
}
