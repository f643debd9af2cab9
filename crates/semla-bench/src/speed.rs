//! `semla bench speed`: what SemLA costs per image, and at library scale.
//!
//! Per image (batch 1), for CLIP ViT-B/16 at 224 px (random weights; 5 rank-8 LoRA
//! adapters on `q_proj`, `v_proj`, `fc1`, `fc2` of every vision layer) and for the CamVid
//! segmenter (EfficientNet-Lite0 + LR-ASPP; 5 rank-8 adapters on every site):
//!
//! - `plain`: the base model's forward;
//! - `semla`: the full SemLA path — query embedding (a forward of the unadapted
//!   embedder), retrieval over the prototypes, factored fusion of the top-k adapters
//!   ([`Adaptation::from_adapters`]) and the adapted forward;
//! - `semla-given-embedding`: the same without the embedding (what SemLA adds when the
//!   query embedding is already at hand, e.g. shared with another stage);
//! - `merge`: the merge-per-image path the official code takes — fused weight updates
//!   `delta W` per site added to the weights, forward, then removed.
//!
//! At library scale: a generated library of small adapters with prototypes; the time to
//! open it, to read every prototype, the retrieval latency per query, and the resident
//! memory (`VmRSS`).
//!
//! Every timing is the median of repeated runs after warm-ups, with the machine's load
//! average read next to it.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use semla_adapters::apply::delta_weights;
use semla_adapters::{Adaptation, Adapter, AdapterLibrary, SiteInfo};
use semla_core::{Progress, SplitMix64};
use semla_models::clip::{ClipConfig, ClipModel};
use semla_models::efficientnet::EfficientLiteSegConfig;
use semla_models::{Segmenter, SegmenterConfig, random_segmenter};
use semla_pipeline::mixture::{AdapterChoice, batch_mixture, retrieve};
use semla_retrieval::{Prototype, PrototypeSet, RetrievalParams};
use serde::Serialize;

use crate::error::{BenchError, Result};
use crate::machine::{load_average, resident_bytes};

/// One timed path.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Timing {
    /// Model (`clip-vit-b16-224`, `efficientnet-lite0-lraspp-HxW`).
    pub model: String,
    /// Path (`plain`, `semla`, `semla-given-embedding`, `merge`).
    pub path: String,
    /// Median seconds per image.
    pub median_s: f64,
    /// Fastest run, seconds.
    pub min_s: f64,
    /// Runs timed.
    pub runs: usize,
    /// Ratio of the median to the same model's `plain` median.
    pub vs_plain: f64,
    /// 1-minute load average when the runs ended.
    pub load_average: Option<f64>,
    /// The process's peak resident memory during one run of this path alone
    /// (`VmHWM` reset just before it), bytes: everything loaded for the whole
    /// benchmark so far stays resident in it, so compare paths of one model.
    #[serde(default)]
    pub peak_resident_bytes: Option<u64>,
    /// Resident memory just before that run, bytes: the peak minus it is the
    /// path's own working memory.
    #[serde(default)]
    pub resident_before_bytes: Option<u64>,
}

/// The figures [`time_round_robin`] takes of one path.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PathTiming {
    /// Median seconds of the timed runs.
    pub median_s: f64,
    /// Fastest timed run, seconds.
    pub min_s: f64,
    /// Peak resident memory of one extra run of the path alone, bytes (`None`
    /// where `VmHWM` cannot be reset or read).
    pub peak_resident_bytes: Option<u64>,
    /// Resident memory just before that run, bytes.
    pub resident_before_bytes: Option<u64>,
}

/// The library-scale figures.
#[derive(Clone, Debug, Serialize)]
pub struct LibraryScale {
    /// Adapters in the library.
    pub adapters: usize,
    /// Prototype dimension.
    pub dimension: usize,
    /// Seconds to write the generated library (not a SemLA cost; for reference).
    pub write_s: f64,
    /// Seconds for `AdapterLibrary::open` (lists folders, reads configs and headers).
    pub open_s: f64,
    /// Seconds to read every prototype into a `PrototypeSet`.
    pub prototypes_s: f64,
    /// Median seconds per retrieval (top-k over all prototypes).
    pub retrieval_median_s: f64,
    /// Median seconds to load the retrieved top-k adapters' weights.
    pub load_top_k_median_s: f64,
    /// `VmRSS` before opening, bytes.
    pub rss_before: Option<u64>,
    /// `VmRSS` with the library open and every prototype in memory, bytes.
    pub rss_after: Option<u64>,
    /// Load average at the end.
    pub load_average: Option<f64>,
}

/// Settings of the speed benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct SpeedConfig {
    /// Timed runs per path.
    pub runs: usize,
    /// Segmenter input `(height, width)`.
    pub segmenter_size: (usize, usize),
    /// Adapters in the per-image benchmarks.
    pub adapters: usize,
    /// LoRA rank.
    pub rank: usize,
    /// Adapters fused per image (top-k).
    pub top_k: usize,
    /// The segmenter's `semla-style` path embeds the image average-pooled by this
    /// factor in each direction (1: full size; default 2, as `bench camvid`).
    pub embed_downscale: usize,
    /// Adapters in the library-scale benchmark (0: skip it).
    pub library_adapters: usize,
    /// Whether to time CLIP ViT-B/16.
    pub clip: bool,
    /// Whether to time the segmenter.
    pub segmenter: bool,
}

impl Default for SpeedConfig {
    fn default() -> Self {
        Self {
            runs: 10,
            segmenter_size: (360, 480),
            adapters: 5,
            rank: 8,
            top_k: 3,
            embed_downscale: 2,
            library_adapters: 10_000,
            clip: true,
            segmenter: true,
        }
    }
}

/// Median and minimum of `runs` calls of `f` after 2 warm-ups.
pub fn time_median(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    time_round_robin(runs, 1, |_| f())?
        .pop()
        .map(|t| (t.median_s, t.min_s))
        .ok_or_else(|| BenchError::Invalid("no timing was taken".into()))
}

/// Random prototypes, one per adapter, and a query near the first one.
fn prototypes(names: &[String], dim: usize, seed: u64) -> Result<(PrototypeSet, Vec<f32>)> {
    let mut rng = SplitMix64::new(seed);
    let list: Vec<Prototype> = names
        .iter()
        .map(|n| Prototype::new(n.clone(), rng.signed_values(dim, 1.0)))
        .collect();
    let first = list.first().ok_or_else(|| {
        BenchError::Invalid("the speed benchmark needs at least one adapter".into())
    })?;
    let query: Vec<f32> = first
        .embedding
        .iter()
        .map(|v| v + 0.1 * rng.next_signed_f32())
        .collect();
    Ok((PrototypeSet::new(list)?, query))
}

/// The first prototype of a set (the stored embedding of the `semla-given-embedding` path).
fn first_prototype(set: &PrototypeSet) -> Result<Vec<f32>> {
    set.prototypes()
        .first()
        .map(|p| p.embedding.clone())
        .ok_or_else(|| BenchError::Invalid("no prototype".into()))
}

/// SemLA's mixture for `query` (the pipeline's retrieval): the chosen adapters
/// and their weights.
fn mixture<'a>(
    set: &PrototypeSet,
    adapters: &'a [Adapter],
    query: &[f32],
    top_k: usize,
) -> Result<(Vec<&'a Adapter>, Vec<f64>)> {
    let params = RetrievalParams {
        top_k,
        ..RetrievalParams::default()
    };
    let chosen: Vec<AdapterChoice> = retrieve(set, query, &params, &[])?;
    let (names, mut rows) = batch_mixture(&[chosen.as_slice()]);
    let picked = names
        .iter()
        .map(|name| {
            adapters
                .iter()
                .find(|a| &a.name == name)
                .ok_or_else(|| BenchError::Invalid(format!("no adapter {name}")))
        })
        .collect::<Result<_>>()?;
    Ok((picked, rows.pop().unwrap_or_default()))
}

fn push(out: &mut Vec<Timing>, model: &str, path: &str, timing: PathTiming, runs: usize) {
    let median = timing.median_s;
    let plain = out
        .iter()
        .find(|t| t.model == model && t.path == "plain")
        .map(|t| t.median_s)
        .unwrap_or(median);
    out.push(Timing {
        model: model.to_string(),
        path: path.to_string(),
        median_s: median,
        min_s: timing.min_s,
        runs,
        vs_plain: median / plain,
        load_average: load_average(),
        peak_resident_bytes: timing.peak_resident_bytes,
        resident_before_bytes: timing.resident_before_bytes,
    });
}

/// Times CLIP ViT-B/16 at 224 px.
pub fn time_clip(
    config: &SpeedConfig,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<Vec<Timing>> {
    let device = device.clone();
    let cfg = ClipConfig::vit_b16();
    let tensors = semla_models::clip::random_vision_weights(&cfg, &device)?;
    let model = ClipModel::new(
        &VarBuilder::from_tensors(tensors.clone(), DType::F32, &device),
        &cfg,
    )?;
    let sites: Vec<SiteInfo> = model
        .sites()
        .into_iter()
        .filter(|s| {
            let leaf = s.path.rsplit('.').next().unwrap_or("");
            s.path.starts_with("vision_model.encoder")
                && ["q_proj", "v_proj", "fc1", "fc2"].contains(&leaf)
        })
        .collect();
    let names: Vec<String> = (0..config.adapters).map(|i| format!("domain{i}")).collect();
    let adapters: Vec<Adapter> = names
        .iter()
        .enumerate()
        .map(|(i, n)| Ok(Adapter::random(n, &sites, config.rank, 100 + i as u64)?))
        .collect::<Result<_>>()?;
    let (set, _) = prototypes(&names, cfg.projection_dim, 1)?;
    let pixels = Tensor::randn(0f32, 1.0, (1, 3, 224, 224), &device)?;
    let none = Adaptation::none();
    let label = "clip-vit-b16-224";
    let mut out = Vec::new();
    let runs = config.runs;
    const PATHS: [&str; 4] = ["plain", "semla", "semla-given-embedding", "merge"];
    progress.begin(
        "timing CLIP ViT-B/16 (4 paths, round-robin)",
        PATHS.len() as u64,
    );
    let stored = first_prototype(&set)?;
    let timings = time_round_robin(runs, PATHS.len(), |path| {
        let query: Vec<f32> = match PATHS[path] {
            "plain" => {
                model.get_image_features(&pixels, &none)?;
                return Ok(());
            }
            "merge" => {
                // Merge per image: ΔW of the mixture added to the base weights (a model
                // built on the merged tensors: the weights are written, as peft's merge
                // writes them), forward; the unmerged base stays untouched (peft's
                // delete/unmerge).
                let (picked, weights) = mixture(&set, &adapters, &stored, config.top_k)?;
                let deltas = delta_weights(&picked, &weights)?;
                let mut merged = tensors.clone();
                for (site, delta) in deltas {
                    let key = format!("{site}.weight");
                    let base = merged
                        .get(&key)
                        .ok_or_else(|| BenchError::Invalid(format!("no weight {key}")))?;
                    let sum = (base + delta)?;
                    merged.insert(key, sum);
                }
                let model =
                    ClipModel::new(&VarBuilder::from_tensors(merged, DType::F32, &device), &cfg)?;
                model.get_image_features(&pixels, &none)?;
                return Ok(());
            }
            "semla" => model
                .get_image_features(&pixels, &none)?
                .flatten_all()?
                .to_vec1()?,
            _ => stored.clone(),
        };
        let (picked, weights) = mixture(&set, &adapters, &query, config.top_k)?;
        let adaptation = Adaptation::from_adapters(&picked, &[weights])?;
        model.get_image_features(&pixels, &adaptation)?;
        Ok(())
    })?;
    for (path, timing) in PATHS.iter().zip(timings) {
        push(&mut out, label, path, timing, runs);
    }
    progress.set(PATHS.len() as u64);
    progress.end();
    Ok(out)
}

/// Times the EfficientNet-Lite0 + LR-ASPP segmenter (11 classes) at `config.segmenter_size`.
pub fn time_segmenter(
    config: &SpeedConfig,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<Vec<Timing>> {
    let device = device.clone();
    let mut seg_config = EfficientLiteSegConfig::new(11);
    seg_config.class_names = Vec::new();
    let mut model = random_segmenter(&SegmenterConfig::EfficientLite0(seg_config), &device)?;
    let sites = model.sites();
    let names: Vec<String> = (0..config.adapters).map(|i| format!("domain{i}")).collect();
    let adapters: Vec<Adapter> = names
        .iter()
        .enumerate()
        .map(|(i, n)| Ok(Adapter::random(n, &sites, config.rank, 200 + i as u64)?))
        .collect::<Result<_>>()?;
    let (h, w) = config.segmenter_size;
    let images = Tensor::randn(0f32, 1.0, (1, 3, h, w), &device)?;
    let dim = model.embed(&images)?.dim(1)?;
    let (set, _) = prototypes(&names, dim, 2)?;
    let none = Adaptation::none();
    let label = format!("efficientnet-lite0-lraspp-{h}x{w}");
    let mut out = Vec::new();
    let runs = config.runs;
    let downscale = config.embed_downscale.max(1);
    let style_dim = model.embed_style(&images)?.dim(1)?;
    let (style_set, _) = prototypes(&names, style_dim, 3)?;
    let stored = first_prototype(&set)?;
    const PATHS: [&str; 5] = [
        "plain",
        "semla",
        "semla-style",
        "semla-given-embedding",
        "merge",
    ];
    progress.begin(
        &format!("timing the segmenter at {h}x{w} (5 paths, round-robin)"),
        PATHS.len() as u64,
    );
    let timings = time_round_robin(runs, PATHS.len(), |path| {
        // The SemLA paths differ only in the query: the pooled backbone features, the
        // style statistics (of the image pooled by `downscale`), or a stored embedding.
        let (prototypes, query): (&PrototypeSet, Vec<f32>) = match PATHS[path] {
            "plain" => {
                model.forward(&images, &none)?;
                return Ok(());
            }
            "merge" => {
                // Merge per image: add ΔW to every site, forward, subtract it again.
                let (picked, weights) = mixture(&set, &adapters, &stored, config.top_k)?;
                let deltas = delta_weights(&picked, &weights)?;
                for (site, delta) in &deltas {
                    model.merge_delta(site, delta)?;
                }
                model.forward(&images, &none)?;
                for (site, delta) in &deltas {
                    model.merge_delta(site, &delta.neg()?)?;
                }
                return Ok(());
            }
            "semla" => (&set, model.embed(&images)?.flatten_all()?.to_vec1()?),
            "semla-style" => {
                let pooled = if downscale > 1 {
                    images.avg_pool2d(downscale)?
                } else {
                    images.clone()
                };
                (
                    &style_set,
                    model.embed_style(&pooled)?.flatten_all()?.to_vec1()?,
                )
            }
            _ => (&set, stored.clone()),
        };
        let (picked, weights) = mixture(prototypes, &adapters, &query, config.top_k)?;
        let adaptation = Adaptation::from_adapters(&picked, &[weights])?;
        model.forward(&images, &adaptation)?;
        Ok(())
    })?;
    for (path, timing) in PATHS.iter().zip(timings) {
        push(&mut out, &label, path, timing, runs);
    }
    progress.set(PATHS.len() as u64);
    progress.end();
    Ok(out)
}

/// The CAT-Seg sizes `semla bench speed --catseg` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatSegSize {
    /// CAT-Seg B: CLIP ViT-B/16 @ 384.
    B,
    /// CAT-Seg L: CLIP ViT-L/14 @ 336 (the paper's).
    L,
}

impl CatSegSize {
    fn config(self) -> semla_models::catseg::CatSegConfig {
        match self {
            Self::B => semla_models::catseg::CatSegConfig::vitb_384(),
            Self::L => semla_models::catseg::CatSegConfig::vitl_336(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::B => "b",
            Self::L => "l",
        }
    }
}

/// The image and record sizes of the CAT-Seg rows: a Cityscapes frame
/// (1024x2048) whose record is 512x1024, SemLA's Cityscapes path.
pub const CATSEG_IMAGE: (usize, usize) = (1024, 2048);
/// See [`CATSEG_IMAGE`].
pub const CATSEG_RECORD: (usize, usize) = (512, 1024);

/// Times CAT-Seg at its real `size` (random weights, the 19 Cityscapes classes,
/// the official sliding window on a [`CATSEG_IMAGE`] image to a
/// [`CATSEG_RECORD`] record), batch 1:
///
/// - `plain`: the base model;
/// - `semla`: the query embedded by a separate CLIP ViT-L/14 at 224 px (the
///   official embedder; random weights, an already preprocessed 224x224 input),
///   retrieval over 5 prototypes, the factored mixture of the top 3 of
///   `config.adapters` rank-`config.rank` adapters over every official site, and
///   the adapted forward (its class text embeddings computed under the mixture).
///
/// Also returns the largest of the paths' peak resident memories (each
/// measured on a lone run, everything loaded so far resident).
pub fn time_catseg(
    config: &SpeedConfig,
    size: CatSegSize,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<(Vec<Timing>, Option<u64>)> {
    let device = device.clone();
    let mut model = semla_models::catseg::random::random_catseg(&size.config(), &device)?;
    let classes: Vec<String> = semla_data::domains::classes::CITYSCAPES_19
        .iter()
        .map(|s| s.to_string())
        .collect();
    model.set_classes(&classes)?;
    let sites = model.sites();
    let names: Vec<String> = (0..config.adapters).map(|i| format!("domain{i}")).collect();
    let adapters: Vec<Adapter> = names
        .iter()
        .enumerate()
        .map(|(i, n)| Ok(Adapter::random(n, &sites, config.rank, 300 + i as u64)?))
        .collect::<Result<_>>()?;
    let clip_cfg = ClipConfig::vit_l14();
    let clip = ClipModel::new(
        &VarBuilder::from_tensors(
            semla_models::clip::random_vision_weights(&clip_cfg, &device)?,
            DType::F32,
            &device,
        ),
        &clip_cfg,
    )?;
    let (set, _) = prototypes(&names, clip_cfg.projection_dim, 4)?;
    let (h, w) = CATSEG_IMAGE;
    let image = Tensor::randn(0f32, 1.0, (1, 3, h, w), &device)?;
    let query_pixels = Tensor::randn(0f32, 1.0, (1, 3, 224, 224), &device)?;
    let none = Adaptation::none();
    let label = format!("catseg-{}-{h}x{w}", size.name());
    const PATHS: [&str; 2] = ["plain", "semla"];
    progress.begin(
        &format!(
            "timing CAT-Seg {} at its real size (2 paths, round-robin)",
            size.name()
        ),
        PATHS.len() as u64,
    );
    let timings = time_round_robin(config.runs, PATHS.len(), |path| {
        let adaptation = if PATHS[path] == "plain" {
            none.clone()
        } else {
            let query: Vec<f32> = clip
                .get_image_features(&query_pixels, &none)?
                .flatten_all()?
                .to_vec1()?;
            let (picked, weights) = mixture(&set, &adapters, &query, config.top_k)?;
            Adaptation::from_adapters(&picked, &[weights])?
        };
        model.probabilities(&image, CATSEG_RECORD, &adaptation)?;
        Ok(())
    })?;
    let mut out = Vec::new();
    for (path, timing) in PATHS.iter().zip(timings) {
        push(&mut out, &label, path, timing, config.runs);
    }
    progress.set(PATHS.len() as u64);
    progress.end();
    let peak = out.iter().filter_map(|t| t.peak_resident_bytes).max();
    Ok((out, peak))
}

/// Median and minimum time of each of `paths` paths, run round-robin (`step(0)`,
/// `step(1)`, ..., then again) for 2 warm-up rounds and `runs` timed ones, so that
/// a change of machine load touches every path alike; then one more run of each
/// path alone with the peak resident memory reset before it, for its peak.
pub fn time_round_robin(
    runs: usize,
    paths: usize,
    mut step: impl FnMut(usize) -> Result<()>,
) -> Result<Vec<PathTiming>> {
    for _ in 0..2 {
        for path in 0..paths {
            step(path)?;
        }
    }
    let mut times = vec![Vec::with_capacity(runs.max(1)); paths];
    for _ in 0..runs.max(1) {
        for (path, samples) in times.iter_mut().enumerate() {
            let t = Instant::now();
            step(path)?;
            samples.push(t.elapsed().as_secs_f64());
        }
    }
    let mut out = Vec::with_capacity(paths);
    for (path, mut samples) in times.into_iter().enumerate() {
        let resident_before_bytes = resident_bytes();
        let reset = crate::machine::reset_peak_resident();
        step(path)?;
        let peak_resident_bytes = if reset {
            crate::machine::peak_resident_bytes()
        } else {
            None
        };
        samples.sort_by(f64::total_cmp);
        out.push(PathTiming {
            median_s: samples[samples.len() / 2],
            min_s: samples[0],
            peak_resident_bytes,
            resident_before_bytes,
        });
    }
    Ok(out)
}

/// Generates a library of `count` small adapters (one 64x64 rank-4 Linear site each)
/// with `dim`-dimensional prototypes under `root` (which must not exist or be empty),
/// then measures opening it, reading its prototypes, and retrieving.
pub fn library_scale(
    root: &Path,
    count: usize,
    dim: usize,
    runs: usize,
    progress: &mut dyn Progress,
) -> Result<LibraryScale> {
    std::fs::create_dir_all(root).map_err(|e| BenchError::io(root, e))?;
    let site = SiteInfo {
        path: "layers.0.proj".into(),
        kind: semla_adapters::SiteKind::Linear,
        in_features: 64,
        out_features: 64,
    };
    let started = Instant::now();
    {
        let mut library = AdapterLibrary::open(root)?;
        let existing = library.len();
        progress.begin(
            &format!("writing a library of {count} adapters"),
            count as u64,
        );
        let mut rng = SplitMix64::new(3);
        for i in existing..count {
            let name = format!("domain{i:05}");
            let adapter = Adapter::random(&name, std::slice::from_ref(&site), 4, i as u64)?;
            let prototype = rng.signed_values(dim, 1.0);
            library.add(&adapter, Some(&prototype))?;
            if i % 100 == 0 {
                progress.set(i as u64);
            }
        }
        progress.end();
    }
    let write_s = started.elapsed().as_secs_f64();
    let rss_before = resident_bytes();
    let t = Instant::now();
    let library = AdapterLibrary::open(root)?;
    let open_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut list = Vec::with_capacity(library.len());
    for name in library.names() {
        list.push(Prototype::new(name, library.prototype(name)?));
    }
    let set = PrototypeSet::new(list)?;
    let prototypes_s = t.elapsed().as_secs_f64();
    let rss_after = resident_bytes();
    let query = SplitMix64::new(4).signed_values(dim, 1.0);
    let params = RetrievalParams {
        top_k: 3,
        ..RetrievalParams::default()
    };
    let (retrieval_median_s, _) = time_median(runs, || {
        set.retrieve(&query, &params, &[])?;
        Ok(())
    })?;
    let chosen = set.retrieve(&query, &params, &[])?;
    let (load_top_k_median_s, _) = time_median(runs, || {
        for s in &chosen {
            library.load(&s.name)?;
        }
        Ok(())
    })?;
    Ok(LibraryScale {
        adapters: library.len(),
        dimension: dim,
        write_s,
        open_s,
        prototypes_s,
        retrieval_median_s,
        load_top_k_median_s,
        rss_before,
        rss_after,
        load_average: load_average(),
    })
}

/// A PyTorch + peft reference timing (from `tools/reference/semla_speed.py`'s JSON).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ReferenceTiming {
    /// Model label, as in [`Timing::model`].
    pub model: String,
    /// Path, as in [`Timing::path`].
    pub path: String,
    /// Median seconds per image.
    pub median_s: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_adapters_fit_linear_and_conv_sites() {
        let device = Device::Cpu;
        let model = tiny_model(&device);
        let sites = model.sites();
        let adapter = Adapter::random("a", &sites, 2, 1).unwrap();
        semla_adapters::apply::check_adapters_fit(&[&adapter], &sites).unwrap();
        let images = Tensor::zeros((1, 3, 16, 16), DType::F32, &device).unwrap();
        let adaptation = Adaptation::from_adapters(&[&adapter], &[vec![1.0]]).unwrap();
        let out = model.forward(&images, &adaptation).unwrap();
        assert_eq!(out.dims(), &[1, 3, 16, 16]);
    }

    #[test]
    fn small_library_scale_run_finds_every_adapter() {
        let dir = tempfile::tempdir().unwrap();
        let scale = library_scale(dir.path(), 12, 8, 2, &mut semla_core::NoProgress).unwrap();
        assert_eq!(scale.adapters, 12);
        assert_eq!(scale.dimension, 8);
        assert!(scale.retrieval_median_s > 0.0);
    }
    fn tiny_model(device: &Device) -> Box<dyn semla_models::Segmenter> {
        let config = SegmenterConfig::Tiny(semla_models::tiny::TinySegConfig {
            num_classes: 3,
            width: 4,
            class_names: Vec::new(),
        });
        random_segmenter(&config, device).unwrap_or_else(|e| panic!("tiny model: {e}"))
    }
}
