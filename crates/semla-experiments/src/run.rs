//! The experiment engine: SemLA's four official modes (`zeroshot`,
//! `oracle`, `uniform`, `semla`) and the late-fusion ablation, over target
//! domains, with the official `results.json` and richer `report.json` /
//! `weights.jsonl` outputs.
//!
//! Mixtures are applied in the factored form ([`Adaptation::from_adapters`]):
//! no model weight is changed, and one batch may hold images with different
//! mixtures: the batch's adaptation stacks the union of the adapters its
//! images selected, with a zero weight where an image did not select one.
//! When a batch shares one mixture, each site picks whichever of `W + ΔW` and
//! the factored update costs fewer multiply-adds
//! ([`semla_adapters::FactoredSite::merge_is_cheaper`]), a per-forward choice that
//! leaves the stored weights untouched.
//! `--fusion outputs` instead runs every selected adapter alone and averages
//! the class probabilities (softmax per adapter) with the image's weights.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{D, DType, Device, Tensor};
use semla_adapters::{Adaptation, Adapter, AdapterLibrary, apply::check_adapters_fit};
use semla_metrics::{ConfusionMatrix, Definition};
use semla_models::segmenter::Segmenter;
use semla_retrieval::{PrototypeSet, RetrievalParams};
use semla_train::data::{Sample, SampleSource};
use serde::{Deserialize, Serialize};

use crate::embedder::{Embedder, normalized_batch};
use crate::error::{ExperimentError, Result, write_atomic};
use crate::progress::Progress;
use crate::prototypes::{check_library_embedder, load_prototypes};

/// The experiment modes of `experiments.py --experiment`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExperimentKind {
    /// The base model, no adapter.
    ZeroShot,
    /// The target domain's own adapter alone.
    Oracle,
    /// Every candidate adapter with weight `1 / N`.
    Uniform,
    /// Per image: nearest prototypes, temperature-softmax weights, fusion.
    Semla,
}

impl ExperimentKind {
    /// Every mode, in the paper's row order.
    pub const ALL: [ExperimentKind; 4] = [Self::ZeroShot, Self::Uniform, Self::Semla, Self::Oracle];

    /// `zeroshot`, `oracle`, `uniform` or `semla`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ZeroShot => "zeroshot",
            Self::Oracle => "oracle",
            Self::Uniform => "uniform",
            Self::Semla => "semla",
        }
    }
}

impl std::fmt::Display for ExperimentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ExperimentKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "zeroshot" | "zero-shot" => Ok(Self::ZeroShot),
            "oracle" => Ok(Self::Oracle),
            "uniform" => Ok(Self::Uniform),
            "semla" => Ok(Self::Semla),
            other => Err(format!(
                "unknown experiment `{other}` (expected zeroshot, oracle, uniform or semla)"
            )),
        }
    }
}

/// How the selected adapters are combined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fusion {
    /// Exact weight-space fusion (PEFT `cat`), applied factored: the official method.
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

/// What to run.
#[derive(Clone, Debug)]
pub struct ExperimentSettings {
    /// The mode.
    pub kind: ExperimentKind,
    /// Weight-space or output-space fusion (only changes `uniform` and `semla`).
    pub fusion: Fusion,
    /// Retrieval settings of `semla` (official: euclidean, top-k 5, T 0.05).
    pub params: RetrievalParams,
    /// Leave the target's own adapter out of the candidates (not for `oracle`).
    pub remove_target_adapter: bool,
    /// Images per forward pass (images of one size only; default 1).
    pub batch_size: usize,
    /// Evaluate only the first images of each target.
    pub limit: Option<usize>,
    /// Keep the predicted label maps of the first this many images of each
    /// target (for reports).
    pub keep_predictions: usize,
}

impl ExperimentSettings {
    /// The official settings of a mode: weight fusion, official retrieval
    /// parameters, target adapter kept, batch size 1.
    pub fn new(kind: ExperimentKind) -> Self {
        Self {
            kind,
            fusion: Fusion::Weights,
            params: RetrievalParams::default(),
            remove_target_adapter: false,
            batch_size: 1,
            limit: None,
            keep_predictions: 0,
        }
    }

    /// The method's name in tables: the mode, with `-outputs` for late fusion.
    pub fn method_name(&self) -> String {
        match (self.kind, self.fusion) {
            (ExperimentKind::Uniform | ExperimentKind::Semla, Fusion::Outputs) => {
                format!("{}-outputs", self.kind)
            }
            _ => self.kind.to_string(),
        }
    }
}

/// The candidate adapters of an experiment, in source order, loaded once.
pub struct SourceLibrary {
    root: PathBuf,
    sources: Vec<String>,
    adapters: BTreeMap<String, Adapter>,
    prototypes: Option<PrototypeSet>,
}

impl SourceLibrary {
    /// Loads the adapters `sources` (in candidate order) of the library at
    /// `root`, and their prototypes when `with_prototypes`.
    pub fn open(root: &Path, sources: &[String], with_prototypes: bool) -> Result<Self> {
        let library = AdapterLibrary::open(root)?;
        if sources.is_empty() {
            return Err(ExperimentError::Invalid(format!(
                "no source domain given for the library {}",
                root.display()
            )));
        }
        let mut adapters = BTreeMap::new();
        for name in sources {
            if adapters.contains_key(name) {
                return Err(ExperimentError::Invalid(format!(
                    "source `{name}` is listed twice"
                )));
            }
            adapters.insert(name.clone(), library.load(name)?);
        }
        let prototypes = if with_prototypes {
            Some(load_prototypes(&library, sources)?)
        } else {
            None
        };
        Ok(Self {
            root: root.to_path_buf(),
            sources: sources.to_vec(),
            adapters,
            prototypes,
        })
    }

    /// The library folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Source names in candidate order.
    pub fn sources(&self) -> &[String] {
        &self.sources
    }

    /// The adapter `name`.
    pub fn adapter(&self, name: &str) -> Result<&Adapter> {
        self.adapters.get(name).ok_or_else(|| {
            ExperimentError::Invalid(format!(
                "adapter `{name}` is not among the sources ({})",
                self.sources.join(", ")
            ))
        })
    }

    /// The prototypes (if loaded).
    pub fn prototypes(&self) -> Option<&PrototypeSet> {
        self.prototypes.as_ref()
    }

    /// Checks that every adapter fits the model's sites.
    pub fn check_fits(&self, model: &dyn Segmenter) -> Result<()> {
        let adapters: Vec<&Adapter> = self.adapters.values().collect();
        Ok(check_adapters_fit(&adapters, &model.sites())?)
    }
}

/// One target domain to evaluate.
pub struct Target<'a> {
    /// Target name (also the adapter name compared for removal and oracle).
    pub name: String,
    /// Its evaluation samples.
    pub source: &'a dyn SampleSource,
    /// The mIoU definition of its official evaluator.
    pub definition: Definition,
    /// Class names (may be empty).
    pub class_names: Vec<String>,
}

/// One adapter of an image's mixture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdapterChoice {
    /// Adapter (source domain) name.
    pub name: String,
    /// Distance of the image's embedding to the prototype (`semla` only).
    pub distance: Option<f64>,
    /// Similarity used for ranking (`semla` only).
    pub similarity: Option<f64>,
    /// Mixing weight.
    pub weight: f64,
}

/// The mixture used for one image (a line of `weights.jsonl`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Target domain.
    pub target: String,
    /// The image (file name or sample id).
    pub image: String,
    /// Selected adapters, most similar first; empty for `zeroshot`.
    pub adapters: Vec<AdapterChoice>,
}

/// IoU of one class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassIou {
    /// Class index.
    pub class: usize,
    /// Class name (empty if unknown).
    pub name: String,
    /// IoU in percent; `None` when the class does not count under the definition.
    pub iou_percent: Option<f64>,
}

/// Per-target details (an entry of `report.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetReport {
    /// Target domain.
    pub target: String,
    /// The mIoU definition (`cityscapes` or `detectron2`).
    pub definition: Definition,
    /// Images evaluated.
    pub images: usize,
    /// mIoU in percent.
    pub miou_percent: f64,
    /// Pixel accuracy in percent.
    pub pixel_accuracy_percent: Option<f64>,
    /// Per-class IoU.
    pub per_class_iou: Vec<ClassIou>,
    /// Wall time of the target (loading, embedding, retrieval, segmentation).
    pub seconds: f64,
    /// `seconds / images`.
    pub seconds_per_image: f64,
}

/// A kept prediction (see [`ExperimentSettings::keep_predictions`]).
#[derive(Clone, Debug)]
pub struct KeptPrediction {
    /// Target domain.
    pub target: String,
    /// Sample index in the target's source.
    pub index: usize,
    /// Predicted class per pixel, `[H, W]` row-major.
    pub classes: Vec<u16>,
    /// `H`.
    pub height: usize,
    /// `W`.
    pub width: usize,
}

/// Everything an experiment produced.
#[derive(Clone, Debug)]
pub struct ExperimentOutput {
    /// The mode.
    pub kind: ExperimentKind,
    /// The fusion.
    pub fusion: Fusion,
    /// mIoU in percent per target, in target order.
    pub results: Vec<(String, f64)>,
    /// Per-target details.
    pub reports: Vec<TargetReport>,
    /// One record per image.
    pub images: Vec<ImageRecord>,
    /// Kept predictions.
    pub predictions: Vec<KeptPrediction>,
}

impl ExperimentOutput {
    /// `results.json` in the official shape: `{target: mIoU percent}`,
    /// indented by 4 like `json.dump(..., indent=4)`.
    pub fn results_json(&self) -> String {
        let map: serde_json::Map<String, serde_json::Value> = self
            .results
            .iter()
            .map(|(t, v)| (t.clone(), serde_json::json!(v)))
            .collect();
        to_json_indent4(&serde_json::Value::Object(map))
    }

    /// `report.json`: the settings and every target's details.
    pub fn report_json(&self, settings: &ExperimentSettings) -> String {
        let value = serde_json::json!({
            "experiment": self.kind,
            "fusion": self.fusion,
            "method": settings.method_name(),
            "retrieval": settings.params,
            "remove_target_adapter": settings.remove_target_adapter,
            "batch_size": settings.batch_size,
            "targets": self.reports,
        });
        to_json_indent4(&value)
    }

    /// `weights.jsonl`: one JSON object per image.
    pub fn weights_jsonl(&self) -> String {
        let mut out = String::new();
        for record in &self.images {
            // Serialising plain data cannot fail.
            out.push_str(&serde_json::to_string(record).unwrap_or_default());
            out.push('\n');
        }
        out
    }

    /// Writes `results.json`, `report.json` and `weights.jsonl` into `dir`
    /// (created if needed; each file atomic).
    pub fn write(&self, dir: &Path, settings: &ExperimentSettings) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ExperimentError::io(dir, e))?;
        write_atomic(&dir.join("results.json"), self.results_json().as_bytes())?;
        write_atomic(
            &dir.join("report.json"),
            self.report_json(settings).as_bytes(),
        )?;
        write_atomic(&dir.join("weights.jsonl"), self.weights_jsonl().as_bytes())
    }

    /// The record of image `index` of `target`'s evaluation order, if kept.
    pub fn mixture(&self, target: &str, image: &str) -> Option<&ImageRecord> {
        self.images
            .iter()
            .find(|r| r.target == target && r.image == image)
    }
}

fn to_json_indent4(value: &serde_json::Value) -> String {
    let mut buf = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, formatter);
    // Serialising a Value into a Vec cannot fail.
    let _ = value.serialize(&mut ser);
    String::from_utf8(buf).unwrap_or_default()
}

/// The scores of a mixture over a batch: `images` `[N, 3, H, W]`
/// (normalised), `adapters` the union of the batch's adapters, `rows[n][i]`
/// the weight of `adapters[i]` for image `n` (one row: the whole batch).
///
/// With [`Fusion::Weights`] returns the logits `[N, C, H, W]` of the model
/// with the factored mixture; with [`Fusion::Outputs`], the weighted sum of
/// the per-adapter softmax probabilities `[N, C, H, W]`. No adapter: the
/// base model's logits.
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
        return Err(ExperimentError::Invalid(format!(
            "{} weight rows for a batch of {n} images",
            rows.len()
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
            match total {
                Some(t) => Ok(t),
                None => Err(ExperimentError::Invalid(
                    "every adapter of the mixture has weight 0".into(),
                )),
            }
        }
    }
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

/// The per-image mixtures of one batch as a union of adapters and weight rows.
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

/// Chooses the adapters of one image (or of every image, for the static
/// modes) and their weights.
pub struct Mixer<'l> {
    library: &'l SourceLibrary,
    settings: &'l ExperimentSettings,
}

impl<'l> Mixer<'l> {
    /// A mixer over `library` for `settings`.
    pub fn new(library: &'l SourceLibrary, settings: &'l ExperimentSettings) -> Self {
        Self { library, settings }
    }

    fn excluded<'t>(&self, target: &'t str) -> Vec<&'t str> {
        if self.settings.remove_target_adapter && self.library.sources.iter().any(|s| s == target) {
            vec![target]
        } else {
            Vec::new()
        }
    }

    /// The mixture of the modes that do not look at the image; `None` for `semla`.
    pub fn static_mixture(&self, target: &str) -> Result<Option<Vec<AdapterChoice>>> {
        Ok(match self.settings.kind {
            ExperimentKind::ZeroShot => Some(Vec::new()),
            ExperimentKind::Oracle => {
                self.library.adapter(target).map_err(|_| {
                    ExperimentError::Invalid(format!(
                        "oracle needs the target's own adapter, but `{target}` is not among the sources ({})",
                        self.library.sources.join(", ")
                    ))
                })?;
                Some(vec![AdapterChoice {
                    name: target.to_string(),
                    distance: None,
                    similarity: None,
                    weight: 1.0,
                }])
            }
            ExperimentKind::Uniform => {
                let exclude = self.excluded(target);
                let candidates: Vec<&String> = self
                    .library
                    .sources
                    .iter()
                    .filter(|s| !exclude.contains(&s.as_str()))
                    .collect();
                if candidates.is_empty() {
                    return Err(ExperimentError::Invalid(format!(
                        "no candidate adapter left for target `{target}`"
                    )));
                }
                let weight = 1.0 / candidates.len() as f64;
                Some(
                    candidates
                        .into_iter()
                        .map(|name| AdapterChoice {
                            name: name.clone(),
                            distance: None,
                            similarity: None,
                            weight,
                        })
                        .collect(),
                )
            }
            ExperimentKind::Semla => None,
        })
    }

    /// SemLA's mixture for one embedding of an image of `target`.
    pub fn retrieve(&self, target: &str, embedding: &[f32]) -> Result<Vec<AdapterChoice>> {
        let Some(prototypes) = self.library.prototypes() else {
            return Err(ExperimentError::Invalid(
                "semla needs the library's prototypes".into(),
            ));
        };
        let exclude = self.excluded(target);
        let selections = prototypes.retrieve(embedding, &self.settings.params, &exclude)?;
        Ok(selections
            .into_iter()
            .map(|s| AdapterChoice {
                name: s.name,
                distance: Some(s.distance),
                similarity: Some(s.similarity),
                weight: s.weight,
            })
            .collect())
    }
}

/// Runs one experiment over `targets`.
///
/// `embedder` is required for `semla` (its identity is checked against the
/// library's record before the first retrieval). Images are batched up to
/// `settings.batch_size` while they share one size.
pub fn run_experiment(
    model: &dyn Segmenter,
    library: &SourceLibrary,
    embedder: Option<&Embedder<'_>>,
    targets: &[Target<'_>],
    settings: &ExperimentSettings,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<ExperimentOutput> {
    library.check_fits(model)?;
    if settings.kind == ExperimentKind::Semla && embedder.is_none() {
        return Err(ExperimentError::Invalid(
            "the semla experiment needs an embedder".into(),
        ));
    }
    let mixer = Mixer::new(library, settings);
    let mut output = ExperimentOutput {
        kind: settings.kind,
        fusion: settings.fusion,
        results: Vec::new(),
        reports: Vec::new(),
        images: Vec::new(),
        predictions: Vec::new(),
    };
    let mut embedder_checked = false;
    let batch_size = settings.batch_size.max(1);
    for target in targets {
        let started = Instant::now();
        let num_classes = model.num_classes();
        if target.source.num_classes() != num_classes {
            return Err(ExperimentError::Invalid(format!(
                "target {} has {} classes but the model predicts {num_classes}",
                target.name,
                target.source.num_classes()
            )));
        }
        let static_mixture = mixer.static_mixture(&target.name)?;
        let ignore = u16::try_from(target.source.ignore_label()).ok();
        let total = settings
            .limit
            .unwrap_or(usize::MAX)
            .min(target.source.len());
        if total == 0 {
            return Err(ExperimentError::Invalid(format!(
                "target {} has no image to evaluate",
                target.name
            )));
        }
        progress.begin(
            &format!("{} on {}", settings.method_name(), target.name),
            total as u64,
        );
        let mut confusion = ConfusionMatrix::new(num_classes);
        let mut pending: Vec<(usize, Sample)> = Vec::new();
        let flush = |pending: &mut Vec<(usize, Sample)>,
                     output: &mut ExperimentOutput,
                     confusion: &mut ConfusionMatrix,
                     embedder_checked: &mut bool|
         -> Result<()> {
            if pending.is_empty() {
                return Ok(());
            }
            let samples: Vec<&Sample> = pending.iter().map(|(_, s)| s).collect();
            let mixtures: Vec<Vec<AdapterChoice>> = match &static_mixture {
                Some(m) => vec![m.clone(); samples.len()],
                None => {
                    let embedder = embedder.ok_or_else(|| {
                        ExperimentError::Invalid("the semla experiment needs an embedder".into())
                    })?;
                    let embeddings = embedder.embed_samples(&samples, device)?;
                    if !*embedder_checked {
                        let dim = embeddings.first().map_or(0, Vec::len);
                        check_library_embedder(library.root(), embedder, dim)?;
                        *embedder_checked = true;
                    }
                    embeddings
                        .iter()
                        .map(|e| mixer.retrieve(&target.name, e))
                        .collect::<Result<_>>()?
                }
            };
            let refs: Vec<&[AdapterChoice]> = mixtures.iter().map(Vec::as_slice).collect();
            let (names, rows) = batch_mixture(&refs);
            let adapters: Vec<&Adapter> = names
                .iter()
                .map(|n| library.adapter(n))
                .collect::<Result<_>>()?;
            let images = normalized_batch(&samples, model.normalization(), device)?;
            let scores = mixture_scores(model, &images, &adapters, &rows, settings.fusion)?;
            let maps = argmax_maps(&scores)?;
            for (((index, sample), map), mixture) in pending.iter().zip(maps).zip(mixtures) {
                let truth: Vec<u16> = sample
                    .labels
                    .iter()
                    .map(|&l| l.min(u16::MAX as u32) as u16)
                    .collect();
                confusion.accumulate(&map, &truth, ignore).map_err(|e| {
                    ExperimentError::Invalid(format!("{}: {e}", target.source.describe(*index)))
                })?;
                output.images.push(ImageRecord {
                    target: target.name.clone(),
                    image: target.source.describe(*index),
                    adapters: mixture,
                });
                if *index < settings.keep_predictions {
                    output.predictions.push(KeptPrediction {
                        target: target.name.clone(),
                        index: *index,
                        classes: map,
                        height: sample.height,
                        width: sample.width,
                    });
                }
            }
            pending.clear();
            Ok(())
        };
        for index in 0..total {
            let sample = target.source.sample(index)?;
            sample.check(&target.source.describe(index))?;
            let fits = pending
                .first()
                .is_none_or(|(_, s)| (s.height, s.width) == (sample.height, sample.width));
            if !fits || pending.len() == batch_size {
                flush(
                    &mut pending,
                    &mut output,
                    &mut confusion,
                    &mut embedder_checked,
                )?;
            }
            pending.push((index, sample));
            if pending.len() == batch_size {
                flush(
                    &mut pending,
                    &mut output,
                    &mut confusion,
                    &mut embedder_checked,
                )?;
            }
            progress.set(index as u64 + 1);
        }
        flush(
            &mut pending,
            &mut output,
            &mut confusion,
            &mut embedder_checked,
        )?;
        progress.end();
        let scores = confusion.scores(target.definition);
        let seconds = started.elapsed().as_secs_f64();
        let miou_percent = 100.0 * scores.mean_iou.unwrap_or(0.0);
        output.results.push((target.name.clone(), miou_percent));
        output.reports.push(TargetReport {
            target: target.name.clone(),
            definition: target.definition,
            images: total,
            miou_percent,
            pixel_accuracy_percent: scores.pixel_accuracy.map(|a| 100.0 * a),
            per_class_iou: scores
                .classes
                .iter()
                .map(|c| ClassIou {
                    class: c.class,
                    name: target.class_names.get(c.class).cloned().unwrap_or_default(),
                    iou_percent: c.iou.map(|v| 100.0 * v),
                })
                .collect(),
            seconds,
            seconds_per_image: seconds / total as f64,
        });
    }
    Ok(output)
}

/// The softmax over classes of `[N, C, H, W]` logits (exposed for tests of late fusion).
pub fn class_probabilities(logits: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax(logits, D::Minus(3))?)
}

/// The five methods of a Table-1 style comparison, as (mode, fusion): zero-shot,
/// uniform merge, SemLA with late fusion, SemLA with weight fusion, oracle.
pub const TABLE_METHODS: [(ExperimentKind, Fusion); 5] = [
    (ExperimentKind::ZeroShot, Fusion::Weights),
    (ExperimentKind::Uniform, Fusion::Weights),
    (ExperimentKind::Semla, Fusion::Outputs),
    (ExperimentKind::Semla, Fusion::Weights),
    (ExperimentKind::Oracle, Fusion::Weights),
];

/// Runs each of `methods` over `targets`, leave-one-out (the target's own adapter
/// is removed from the candidates, except for `oracle`), with the same retrieval
/// parameters and batch size; each method's outputs go to `out_dir/<method>` when
/// `out_dir` is given. Returns `(method name, output)` in `methods` order.
#[allow(clippy::too_many_arguments)]
pub fn run_leave_one_out(
    model: &dyn Segmenter,
    library: &SourceLibrary,
    embedder: &Embedder<'_>,
    targets: &[Target<'_>],
    methods: &[(ExperimentKind, Fusion)],
    base_settings: &ExperimentSettings,
    out_dir: Option<&Path>,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<Vec<(String, ExperimentOutput)>> {
    let mut outputs = Vec::with_capacity(methods.len());
    for &(kind, fusion) in methods {
        let settings = ExperimentSettings {
            kind,
            fusion,
            remove_target_adapter: true,
            ..base_settings.clone()
        };
        let method = settings.method_name();
        let output = run_experiment(
            model,
            library,
            Some(embedder),
            targets,
            &settings,
            device,
            progress,
        )?;
        if let Some(dir) = out_dir {
            output.write(&dir.join(&method), &settings)?;
        }
        outputs.push((method, output));
    }
    Ok(outputs)
}
