//! `semla bench camvid`: SemLA on real CamVid domain shifts.
//!
//! 1. Domains: the dusk sequence (`camvid-dusk`, its last 20 train frames held out) and
//!    ImageNet-C style corruptions of the daytime frames (`camvid-fog3`, ...), all
//!    generated on the fly from any CamVid root (see `semla_data::domains::corrupted`).
//! 2. A base segmenter (EfficientNet-Lite0 from ImageNet weights + LR-ASPP) trained on
//!    the clear daytime train frames (`camvid-day`).
//! 3. One LoRA adapter per domain on its train frames; prototypes from the base
//!    model's early channel statistics (`style`; `backbone` on request).
//! 4. Zero-shot, uniform, SemLA (weight and late fusion) and oracle, leave-one-out,
//!    on the held-out frames of every domain; a Table-1 style summary.
//!
//! Resumable: a model in `OUT/model` and adapters already in `OUT/library` are reused;
//! an interrupted base or adapter training resumes from its checkpoint.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use semla_adapters::AdapterLibrary;
use semla_data::domains::{Split, resolve_domain};
use semla_metrics::Definition;
use semla_models::efficientnet::{EfficientLiteSegConfig, pretrained_varmap};
use semla_models::segmenter::{Segmenter, SegmenterConfig, load_segmenter, save_segmenter};
use semla_retrieval::RetrievalParams;
use semla_train::augment::AugmentConfig;
use semla_train::data::{DomainSource, InMemorySource, Sample, SampleSource};
use semla_train::lora::{LoraSettings, LoraTrainee};
use semla_train::runs::{build_trainable, train_adapter, train_base};
use semla_train::trainer::{Session, TrainConfig};
use serde::Serialize;

use super::table::{assemble, render_markdown, summarise};
use crate::embedder::{BackboneSummary, Embedder, EmbedderSpec};
use crate::error::{ExperimentError, Result, write_atomic};
use crate::progress::Progress;
use crate::prototypes::{EmbedOptions, LibraryRecord, record_prototypes, source_prototype};
use crate::run::{
    ExperimentKind, ExperimentSettings, Fusion, SourceLibrary, TABLE_METHODS, Target,
    run_leave_one_out,
};
use crate::table::ResultsTable;

/// The source (clear daytime) domain the base model is trained on.
pub const SOURCE_DOMAIN: &str = "camvid-day";

/// The corruption kinds of the default domains.
pub const DEFAULT_CORRUPTIONS: [&str; 7] = [
    "fog",
    "rain",
    "snow",
    "night",
    "contrast",
    "motion_blur",
    "gaussian_noise",
];

/// The severities of each default corruption kind. Two per kind, so that under
/// leave-one-out every corrupted target still has a relative in the library (as the
/// paper's library has several fog, night, rain and snow sources).
pub const DEFAULT_SEVERITIES: [u8; 2] = [3, 5];

/// The default target domains: the real dusk sequence and seven corruption kinds at
/// severities 3 and 5 (15 domains).
pub fn default_domains() -> Vec<String> {
    let mut domains = vec!["camvid-dusk".to_string()];
    for severity in DEFAULT_SEVERITIES {
        for kind in DEFAULT_CORRUPTIONS {
            domains.push(format!("camvid-{kind}{severity}"));
        }
    }
    domains
}

/// Temperatures tried when SemLA's retrieval is tuned.
pub const TUNE_TEMPERATURES: [f64; 6] = [0.02, 0.05, 0.1, 0.2, 0.5, 1.0];

/// Top-k values tried when SemLA's retrieval is tuned (top-1 is tried once: the
/// temperature does not change a one-adapter mixture).
pub const TUNE_TOP_K: [usize; 4] = [1, 2, 3, 5];

/// Everything that sets the size of the benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct CamVidBenchConfig {
    /// The CamVid dataset root (the folder holding `camvid/`).
    pub data_root: PathBuf,
    /// The ImageNet EfficientNet-Lite0 `.pth` the backbone starts from.
    pub weights: PathBuf,
    /// Target domains (each gets an adapter).
    pub domains: Vec<String>,
    /// Split evaluated (`val`: CamVid val for corruptions, the held-out dusk frames).
    pub eval_split: Split,
    /// Input size `(height, width)`; every image is resized to it.
    pub image_size: (usize, usize),
    /// Base training steps.
    pub base_steps: usize,
    /// Base learning rate (AdamW, warmup-cosine).
    pub base_lr: f64,
    /// Adapter training steps per domain.
    pub adapter_steps: usize,
    /// Adapter learning rate.
    pub adapter_lr: f64,
    /// Images per training step.
    pub batch_size: usize,
    /// Training images per domain at most (evenly spaced over the split); `None`: all.
    pub train_images: Option<usize>,
    /// Evaluation images per domain at most (evenly spaced); `None`: all.
    pub eval_images: Option<usize>,
    /// LoRA rank.
    pub rank: usize,
    /// The query embedder: the base model's early channel statistics (`style`, the
    /// default: they tell the shifts apart, see `docs/benchmarks.md`) or its pooled
    /// deep features (`backbone`).
    pub embedder: BackboneSummary,
    /// The embedder sees each image average-pooled by this factor in each
    /// direction (1: full size; default 2, a quarter of the pixels, as accurate as
    /// full size here and four times cheaper); prototypes and queries alike.
    pub embed_downscale: usize,
    /// LoRA alpha.
    pub alpha: f64,
    /// SemLA's retrieval settings (similarity always; top-k and temperature when
    /// `tune_images` is 0).
    pub retrieval: RetrievalParams,
    /// Frames per domain on which SemLA's top-k and temperature are tuned
    /// ([`TUNE_TOP_K`] x [`TUNE_TEMPERATURES`], h-mean of leave-one-out SemLA): train
    /// frames that no adapter was trained on, never evaluation frames. 0: no tuning.
    pub tune_images: usize,
    /// Seed of everything.
    pub seed: u64,
}

impl CamVidBenchConfig {
    /// The defaults: the documented run (15 domains, `style@2` embedder, tuning; about
    /// 40 minutes from scratch on 2 idle cores in a release build).
    pub fn new(data_root: PathBuf, weights: PathBuf) -> Self {
        Self {
            data_root,
            weights,
            domains: default_domains(),
            eval_split: Split::Val,
            image_size: (192, 256),
            base_steps: 240,
            base_lr: 2e-3,
            adapter_steps: 80,
            adapter_lr: 3e-3,
            batch_size: 4,
            train_images: Some(96),
            eval_images: Some(50),
            rank: 8,
            embedder: BackboneSummary::Style,
            embed_downscale: 2,
            alpha: 16.0,
            retrieval: RetrievalParams {
                top_k: 3,
                temperature: 0.05,
                ..RetrievalParams::default()
            },
            tune_images: 12,
            seed: 7,
        }
    }
}

/// What the benchmark produced.
#[derive(Clone, Debug, Serialize)]
pub struct CamVidBenchOutcome {
    /// Methods x domains.
    pub table: ResultsTable,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Seconds per phase.
    pub phases: Vec<(String, f64)>,
    /// Which parts were reused from an earlier run.
    pub reused: Vec<String>,
    /// The retrieval settings SemLA was evaluated with (tuned or given).
    pub retrieval: RetrievalParams,
    /// The tuning grid's results, when tuning ran.
    pub tuning: Option<Tuning>,
}

/// One point of the tuning grid.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct TuningPoint {
    /// Adapters fused per image.
    pub top_k: usize,
    /// Softmax temperature.
    pub temperature: f64,
    /// Harmonic mean over the targets of leave-one-out SemLA mIoU (%) on the tuning
    /// frames.
    pub h_mean: f64,
    /// Per-target mIoU (%), in domain order.
    pub miou_percent: Vec<f64>,
}

/// SemLA's retrieval tuned on frames outside the evaluation split.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Tuning {
    /// The embedder of the prototypes ([`Embedder::id`]).
    pub embedder: String,
    /// The domains tuned over, in order.
    pub domains: Vec<String>,
    /// Frames per domain.
    pub images: usize,
    /// Every grid point, in the order tried.
    pub points: Vec<TuningPoint>,
    /// Index into `points` of the best h-mean (the first on ties).
    pub best: usize,
}

/// `count` indices spread evenly over `0..len` (all when `count >= len`).
pub fn evenly_spaced(len: usize, count: Option<usize>) -> Vec<usize> {
    match count {
        Some(n) if n < len => (0..n).map(|i| i * len / n).collect(),
        _ => (0..len).collect(),
    }
}

/// `count` indices spread evenly over those of `0..len` that
/// `evenly_spaced(len, used)` does not pick (the frames an adapter was not trained
/// on); over all of `0..len` when it picks every index.
pub fn held_out_spaced(len: usize, used: Option<usize>, count: usize) -> Vec<usize> {
    let taken = evenly_spaced(len, used);
    let mut rest: Vec<usize> = (0..len)
        .filter(|i| taken.binary_search(i).is_err())
        .collect();
    if rest.is_empty() {
        rest = (0..len).collect();
    }
    evenly_spaced(rest.len(), Some(count))
        .into_iter()
        .map(|i| rest[i])
        .collect()
}

/// Which frames of a split to load.
#[derive(Clone, Copy, Debug)]
pub enum Frames {
    /// `evenly_spaced(len, count)`.
    Spaced(Option<usize>),
    /// `held_out_spaced(len, used, count)`.
    HeldOut {
        /// Frames per domain used for adapter training.
        used: Option<usize>,
        /// Frames wanted.
        count: usize,
    },
}

/// Loads the chosen samples of `domain` / `split` (resized to `size`) into memory, on
/// two threads: corruptions are applied once per image, not once per training step.
pub fn load_domain(
    data_root: &Path,
    domain: &str,
    split: Split,
    size: (usize, usize),
    frames: Frames,
    progress: &mut dyn Progress,
) -> Result<InMemorySource> {
    let resolved = resolve_domain(domain, data_root)?;
    let source = DomainSource::new(resolved, split, Some(size))?;
    let indices = match frames {
        Frames::Spaced(count) => evenly_spaced(source.len(), count),
        Frames::HeldOut { used, count } => held_out_spaced(source.len(), used, count),
    };
    progress.begin(
        &format!("loading {domain} ({split}, {} images)", indices.len()),
        indices.len() as u64,
    );
    let threads = 2usize;
    let chunks: Vec<Vec<usize>> = (0..threads)
        .map(|t| indices.iter().copied().skip(t).step_by(threads).collect())
        .collect();
    let loaded: Vec<Result<Vec<(usize, Sample)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                let source = &source;
                scope.spawn(move || -> Result<Vec<(usize, Sample)>> {
                    chunk.iter().map(|&i| Ok((i, source.sample(i)?))).collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(ExperimentError::Invalid(
                        "an image loader thread panicked".into(),
                    ))
                })
            })
            .collect()
    });
    let mut samples: Vec<(usize, Sample)> = Vec::with_capacity(indices.len());
    for part in loaded {
        samples.extend(part?);
    }
    samples.sort_by_key(|(i, _)| *i);
    progress.set(indices.len() as u64);
    progress.end();
    Ok(InMemorySource::new(
        samples.into_iter().map(|(_, s)| s).collect(),
        source.num_classes(),
        source.ignore_label(),
    ))
}

fn train_config(steps: usize, batch: usize, lr: f64, seed: u64) -> TrainConfig {
    let mut config = TrainConfig::new(steps, batch, lr);
    config.seed = seed;
    config.augment = AugmentConfig {
        min_scale: 1.0,
        max_scale: 1.0,
        flip_probability: 0.5,
        crop: None,
    };
    config.checkpoint_every = Some(50);
    config
}

/// Runs the benchmark into `out_dir`.
pub fn run_camvid_bench(
    config: &CamVidBenchConfig,
    out_dir: &Path,
    progress: &mut dyn Progress,
) -> Result<CamVidBenchOutcome> {
    let started = Instant::now();
    let mut phases: Vec<(String, f64)> = Vec::new();
    let mut reused = Vec::new();
    let mut phase_start = Instant::now();
    let mut phase = |name: &str, phase_start: &mut Instant| {
        phases.push((name.to_string(), phase_start.elapsed().as_secs_f64()));
        *phase_start = Instant::now();
    };
    let device = Device::Cpu;
    if config.domains.len() < 2 {
        return Err(ExperimentError::Invalid(
            "the benchmark needs at least two target domains".into(),
        ));
    }
    if let Some(bad) = config.domains.iter().find(|d| d.contains(['/', '\\'])) {
        return Err(ExperimentError::Invalid(format!(
            "domain `{bad}` contains `/`: name the domains as adapters can be named (camvid-fog3, not camvid/fog3)"
        )));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| ExperimentError::io(out_dir, e))?;
    let size = config.image_size;

    // 1. The base model on clear daytime frames.
    let model_dir = out_dir.join("model");
    if model_dir.join("config.json").is_file() && model_dir.join("model.safetensors").is_file() {
        reused.push("model".to_string());
        progress.note(&format!(
            "reusing the base model in {}",
            model_dir.display()
        ));
    } else {
        let source = load_domain(
            &config.data_root,
            SOURCE_DOMAIN,
            Split::Train,
            size,
            Frames::Spaced(None),
            progress,
        )?;
        let classes = resolve_domain(SOURCE_DOMAIN, &config.data_root)?.classes;
        let mut model_config = EfficientLiteSegConfig::new(classes.len());
        model_config.class_names = classes;
        let model_config = SegmenterConfig::EfficientLite0(model_config);
        let pretrained = pretrained_varmap(&config.weights, &device).map_err(|e| {
            ExperimentError::Invalid(format!(
                "loading the ImageNet weights {}: {e}",
                config.weights.display()
            ))
        })?;
        let (model, varmap) =
            build_trainable(&model_config, Some(pretrained), config.seed, &device)?;
        let train = train_config(
            config.base_steps,
            config.batch_size,
            config.base_lr,
            config.seed,
        );
        let checkpoint = out_dir.join("checkpoints").join("model");
        progress.begin(
            &format!("training the base model on {SOURCE_DOMAIN}"),
            config.base_steps as u64,
        );
        train_base(
            model.as_ref(),
            &varmap,
            &device,
            &source,
            &train,
            &Session {
                checkpoint_dir: Some(&checkpoint),
                resume: true,
                stop_at: None,
            },
            &mut |p| progress.training_step(p.step, p.loss),
        )?;
        progress.end();
        save_segmenter(model.as_ref(), &model_dir)?;
    }
    let base = load_segmenter(&model_dir, &device)?;
    phase("base", &mut phase_start);

    // 2. One adapter per domain (prototypes from the same training images).
    let library_dir = out_dir.join("library");
    std::fs::create_dir_all(&library_dir).map_err(|e| ExperimentError::io(&library_dir, e))?;
    let embedder = Embedder::segmenter(base.as_ref(), config.embedder, config.embed_downscale)?;
    let embedder_spec = EmbedderSpec::Backbone {
        model: None,
        downscale: config.embed_downscale,
        summary: config.embedder,
    }
    .to_string();
    // Prototypes made by another embedder (say, another downscale) are recomputed.
    let same_embedder =
        LibraryRecord::read(&library_dir)?.is_none_or(|record| record.embedder_id == embedder.id());
    let settings = LoraSettings {
        rank: config.rank,
        alpha: config.alpha,
        targets: Vec::new(),
        use_rslora: false,
    };
    let mut prototypes = Vec::new();
    for (i, name) in config.domains.iter().enumerate() {
        let library = AdapterLibrary::open(&library_dir)?;
        let have_adapter = library.names().contains(&name.as_str());
        let have_prototype = have_adapter
            && same_embedder
            && library
                .entry(name)
                .map(|e| e.has_prototype())
                .unwrap_or(false);
        if have_adapter && have_prototype {
            reused.push(format!("adapter {name}"));
            prototypes.push((name.clone(), library.prototype(name)?, 0));
            continue;
        }
        let train_set = load_domain(
            &config.data_root,
            name,
            Split::Train,
            size,
            Frames::Spaced(config.train_images),
            progress,
        )?;
        if !have_adapter {
            let seed = config.seed.wrapping_add(1000 + i as u64);
            let lora = LoraTrainee::new(&base.sites(), &settings, seed, &device)?;
            let train = train_config(
                config.adapter_steps,
                config.batch_size,
                config.adapter_lr,
                seed,
            );
            let checkpoint = out_dir.join("checkpoints").join(name);
            progress.begin(
                &format!("training adapter {name}"),
                config.adapter_steps as u64,
            );
            train_adapter(
                base.as_ref(),
                &lora,
                &device,
                &train_set,
                &train,
                &Session {
                    checkpoint_dir: Some(&checkpoint),
                    resume: true,
                    stop_at: None,
                },
                &mut |p| progress.training_step(p.step, p.loss),
            )?;
            progress.end();
            let mut library = AdapterLibrary::open(&library_dir)?;
            library.add(&lora.to_adapter(name)?, None)?;
        } else {
            reused.push(format!("adapter {name} (prototype recomputed)"));
        }
        let (prototype, count) = source_prototype(
            &embedder,
            &train_set,
            &EmbedOptions {
                batch_size: 8,
                ..EmbedOptions::default()
            },
            name,
            &device,
            progress,
        )?;
        prototypes.push((name.clone(), prototype, count));
        // Record after every domain, so that an interrupted run keeps what it has
        // (with a new embedder, only once all are made: the record is all-or-nothing).
        if same_embedder {
            record_prototypes(&library_dir, &prototypes, &embedder, &embedder_spec)?;
        }
    }
    record_prototypes(&library_dir, &prototypes, &embedder, &embedder_spec)?;
    phase("adapters and prototypes", &mut phase_start);

    // 3. SemLA's top-k and temperature, tuned on train frames no adapter saw.
    let class_names = resolve_domain(SOURCE_DOMAIN, &config.data_root)?.classes;
    let sources = SourceLibrary::open(&library_dir, &config.domains, true)?;
    let base_settings = ExperimentSettings {
        params: config.retrieval,
        batch_size: 8,
        ..ExperimentSettings::new(ExperimentKind::Semla)
    };
    let tuning = if config.tune_images > 0 {
        let tuning_path = out_dir.join("tuning.json");
        let earlier: Option<Tuning> = std::fs::read(&tuning_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .filter(|t: &Tuning| {
                t.domains == config.domains
                    && t.images == config.tune_images
                    && t.embedder == embedder.id()
            });
        let tuning = match earlier {
            Some(tuning) => {
                reused.push("tuning".to_string());
                tuning
            }
            None => {
                let mut tune_sets = Vec::new();
                for name in &config.domains {
                    tune_sets.push(load_domain(
                        &config.data_root,
                        name,
                        Split::Train,
                        size,
                        Frames::HeldOut {
                            used: config.train_images,
                            count: config.tune_images,
                        },
                        progress,
                    )?);
                }
                let targets = make_targets(&config.domains, &tune_sets, &class_names);
                let tuning = tune_retrieval(
                    base.as_ref(),
                    &sources,
                    &embedder,
                    &targets,
                    &base_settings,
                    config.tune_images,
                    &device,
                    progress,
                )?;
                write_atomic(
                    &tuning_path,
                    serde_json::to_string_pretty(&tuning)
                        .unwrap_or_default()
                        .as_bytes(),
                )?;
                tuning
            }
        };
        Some(tuning)
    } else {
        None
    };
    let mut retrieval = config.retrieval;
    if let Some(best) = tuning.as_ref().and_then(|t| t.points.get(t.best)) {
        retrieval.top_k = best.top_k;
        retrieval.temperature = best.temperature;
        progress.note(&format!(
            "tuned: top-k {}, T = {} (h-mean {:.1} on the tuning frames)",
            best.top_k, best.temperature, best.h_mean
        ));
    }
    phase("tuning", &mut phase_start);

    // 4. The held-out frames of every domain.
    let mut eval_sets = Vec::new();
    for name in &config.domains {
        eval_sets.push(load_domain(
            &config.data_root,
            name,
            config.eval_split,
            size,
            Frames::Spaced(config.eval_images),
            progress,
        )?);
    }
    phase("loading evaluation frames", &mut phase_start);

    // 5. The experiments, leave-one-out.
    let targets = make_targets(&config.domains, &eval_sets, &class_names);
    let outputs = run_leave_one_out(
        base.as_ref(),
        &sources,
        &embedder,
        &targets,
        &TABLE_METHODS,
        &ExperimentSettings {
            params: retrieval,
            ..base_settings
        },
        Some(&out_dir.join("experiments").join(config.eval_split.as_str())),
        &device,
        progress,
    )?;
    let results: Vec<(String, Vec<(String, f64)>)> = outputs
        .into_iter()
        .map(|(method, output)| (method, output.results))
        .collect();
    phase("experiments", &mut phase_start);

    let table = assemble(&config.domains, &results);
    let mut markdown = render_markdown(&table);
    if let Some(tuning) = &tuning {
        markdown.push('\n');
        markdown.push_str(&render_tuning(tuning));
    }
    write_atomic(
        &out_dir.join(format!("table-{}.md", config.eval_split)),
        markdown.as_bytes(),
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let summary = serde_json::json!({
        "config": config,
        "table": table,
        "summary": summarise(&table),
        "seconds": seconds,
        "phases": phases,
        "reused": reused,
        "retrieval": retrieval,
        "tuning": tuning,
        "load_average_at_end": super::load_average(),
    });
    write_atomic(
        &out_dir.join(format!("summary-{}.json", config.eval_split)),
        serde_json::to_string_pretty(&summary)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    Ok(CamVidBenchOutcome {
        table,
        seconds,
        phases,
        reused,
        retrieval,
        tuning,
    })
}

fn make_targets<'a>(
    domains: &[String],
    sets: &'a [InMemorySource],
    class_names: &[String],
) -> Vec<Target<'a>> {
    domains
        .iter()
        .zip(sets)
        .map(|(name, source)| Target {
            name: name.clone(),
            source: source as &dyn SampleSource,
            definition: Definition::Detectron2,
            class_names: class_names.to_vec(),
        })
        .collect()
}

/// The grid of (top-k, temperature) tried: top-1 once, then every larger top-k with
/// every temperature.
pub fn tuning_grid() -> Vec<(usize, f64)> {
    let mut grid = Vec::new();
    for k in TUNE_TOP_K {
        if k == 1 {
            grid.push((1, TUNE_TEMPERATURES[0]));
        } else {
            grid.extend(TUNE_TEMPERATURES.iter().map(|&t| (k, t)));
        }
    }
    grid
}

/// Runs leave-one-out SemLA (weight fusion) over `targets` at every point of
/// [`tuning_grid`] and picks the best harmonic mean.
#[allow(clippy::too_many_arguments)]
pub fn tune_retrieval(
    model: &dyn Segmenter,
    sources: &SourceLibrary,
    embedder: &Embedder<'_>,
    targets: &[Target<'_>],
    base_settings: &ExperimentSettings,
    images: usize,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<Tuning> {
    let mut points = Vec::new();
    for (top_k, temperature) in tuning_grid() {
        let settings = ExperimentSettings {
            params: RetrievalParams {
                top_k,
                temperature,
                ..base_settings.params
            },
            ..base_settings.clone()
        };
        let mut outputs = run_leave_one_out(
            model,
            sources,
            embedder,
            targets,
            &[(ExperimentKind::Semla, Fusion::Weights)],
            &settings,
            None,
            device,
            progress,
        )?;
        let (_, output) = outputs
            .pop()
            .ok_or_else(|| ExperimentError::Invalid("the tuning run produced no output".into()))?;
        let miou_percent: Vec<f64> = output.results.iter().map(|(_, v)| *v).collect();
        let h_mean = harmonic_mean(&miou_percent);
        progress.note(&format!(
            "tuning: top-k {top_k}, T = {temperature}: h-mean {h_mean:.2}"
        ));
        points.push(TuningPoint {
            top_k,
            temperature,
            h_mean,
            miou_percent,
        });
    }
    let best = points
        .iter()
        .enumerate()
        .fold(None::<(usize, f64)>, |best, (i, p)| match best {
            Some((_, h)) if h >= p.h_mean => best,
            _ => Some((i, p.h_mean)),
        })
        .map_or(0, |(i, _)| i);
    Ok(Tuning {
        embedder: embedder.id().to_string(),
        domains: targets.iter().map(|t| t.name.clone()).collect(),
        images,
        points,
        best,
    })
}

/// The harmonic mean of percentages (0 when any is 0 or the list is empty).
fn harmonic_mean(values: &[f64]) -> f64 {
    if values.is_empty() || values.iter().any(|&v| v <= 0.0) {
        return 0.0;
    }
    values.len() as f64 / values.iter().map(|v| 1.0 / v).sum::<f64>()
}

/// The tuning grid as a Markdown table: h-mean on the tuning frames per top-k
/// (rows) and temperature (columns), the chosen point in bold.
pub fn render_tuning(tuning: &Tuning) -> String {
    let mut out = format!(
        "SemLA h-mean (%) on {} tuning frames per domain (train frames no adapter was trained on; leave-one-out; top-1 does not depend on T):\n\n| top-k |",
        tuning.images
    );
    for t in TUNE_TEMPERATURES {
        out.push_str(&format!(" T = {t} |"));
    }
    out.push_str("\n|---|");
    for _ in TUNE_TEMPERATURES {
        out.push_str("---:|");
    }
    out.push('\n');
    for k in TUNE_TOP_K {
        out.push_str(&format!("| {k} |"));
        for t in TUNE_TEMPERATURES {
            let found =
                tuning.points.iter().enumerate().find(|(_, p)| {
                    p.top_k == k && (p.temperature == t || (k == 1 && p.top_k == 1))
                });
            match found {
                // Top-1 is one point shown under every temperature; bold it once.
                Some((i, p)) if i == tuning.best && p.temperature == t => {
                    out.push_str(&format!(" **{:.1}** |", p.h_mean))
                }
                Some((_, p)) => out.push_str(&format!(" {:.1} |", p.h_mean)),
                None => out.push_str(" - |"),
            }
        }
        out.push('\n');
    }
    out
}

/// The benchmark's bar chart: one group per domain plus the h-mean, one bar per method.
pub fn camvid_chart(table: &ResultsTable, split: &str) -> super::chart::BarChart {
    let mut groups = table.domains.clone();
    groups.push("h-mean".into());
    let series = table
        .rows
        .iter()
        .map(|row| {
            let mut values = row.miou_percent.clone();
            values.push(table.h_mean(&row.method));
            (row.method.clone(), values)
        })
        .collect();
    super::chart::BarChart {
        title: format!("SemLA on CamVid domain shifts ({split} frames, leave-one-out)"),
        unit: "mIoU %".into(),
        groups,
        series,
        decimals: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evenly_spaced_indices() {
        assert_eq!(evenly_spaced(10, Some(5)), vec![0, 2, 4, 6, 8]);
        assert_eq!(evenly_spaced(3, Some(5)), vec![0, 1, 2]);
        assert_eq!(evenly_spaced(4, None), vec![0, 1, 2, 3]);
        assert_eq!(evenly_spaced(7, Some(3)), vec![0, 2, 4]);
    }

    #[test]
    fn held_out_frames_avoid_the_training_frames() {
        // 10 frames, 5 used for training (0, 2, 4, 6, 8): the rest are the odd ones.
        assert_eq!(held_out_spaced(10, Some(5), 3), vec![1, 3, 7]);
        assert_eq!(held_out_spaced(10, Some(5), 9), vec![1, 3, 5, 7, 9]);
        // All used: fall back to every frame.
        assert_eq!(held_out_spaced(4, None, 2), vec![0, 2]);
        assert_eq!(held_out_spaced(4, Some(8), 2), vec![0, 2]);
        let train = evenly_spaced(305, Some(96));
        let held = held_out_spaced(305, Some(96), 12);
        assert_eq!(held.len(), 12);
        assert!(held.iter().all(|i| !train.contains(i)));
    }

    #[test]
    fn tuning_grid_tries_top_one_once() {
        let grid = tuning_grid();
        assert_eq!(grid.iter().filter(|(k, _)| *k == 1).count(), 1);
        assert_eq!(
            grid.len(),
            1 + (TUNE_TOP_K.len() - 1) * TUNE_TEMPERATURES.len()
        );
        assert!((harmonic_mean(&[10.0, 40.0]) - 16.0).abs() < 1e-12);
        assert_eq!(harmonic_mean(&[10.0, 0.0]), 0.0);
    }

    #[test]
    fn default_domains_resolve_and_can_name_adapters() {
        let domains = default_domains();
        assert!(domains.len() >= 8);
        for name in &domains {
            assert!(!name.contains('/'));
            assert!(
                semla_data::domains::corrupted::parse_name(name).is_some(),
                "{name}"
            );
        }
    }
}
