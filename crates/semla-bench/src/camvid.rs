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
use candle_nn::VarMap;
use semla_core::Progress;
use semla_core::fs::write_atomic;
use semla_data::domains::{Split, resolve_domain};
use semla_data::{DomainSource, InMemorySource, Sample, SampleSource};
use semla_experiments::{ExperimentKind, ExperimentSettings};
use semla_models::SegmenterConfig;
use semla_models::efficientnet::{EfficientLiteSegConfig, pretrained_varmap};
use semla_pipeline::{EmbedderSpec, Semla, SemlaSettings, SourceLibrary};
use semla_retrieval::RetrievalParams;
use semla_train::augment::AugmentConfig;
use semla_train::lora::LoraSettings;
use serde::Serialize;

use crate::error::{BenchError, Result};
use crate::leave_one_out::{TABLE_METHODS, run_leave_one_out, targets};
use crate::library_build::{BuildData, LibraryPlan, TrainRecipe, build_library};
use crate::present::markdown::{render_markdown, render_tuning};
use crate::table::{ResultsTable, assemble, summarise};
use crate::tuning::{Tuning, tune_retrieval};

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
    /// The query embedder's kind: the base model's early channel statistics
    /// (`style`, the default: they tell the shifts apart, see `docs/benchmarks.md`)
    /// or its pooled deep features (`backbone`).
    pub embedder: String,
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
            embedder: "style".to_string(),
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
                    Err(BenchError::Invalid(
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

/// A study's data: CamVid domains loaded from the dataset root (the source's
/// train frames for the base, `train_images` of each domain's for its adapter).
pub(crate) struct CamVidData<'a> {
    pub data_root: &'a Path,
    pub weights: &'a Path,
    pub image_size: (usize, usize),
    pub train_images: Option<usize>,
}

impl BuildData for CamVidData<'_> {
    fn base_source(&mut self, progress: &mut dyn Progress) -> Result<InMemorySource> {
        load_domain(
            self.data_root,
            SOURCE_DOMAIN,
            Split::Train,
            self.image_size,
            Frames::Spaced(None),
            progress,
        )
    }

    fn domain_source(
        &mut self,
        _: usize,
        name: &str,
        progress: &mut dyn Progress,
    ) -> Result<InMemorySource> {
        load_domain(
            self.data_root,
            name,
            Split::Train,
            self.image_size,
            Frames::Spaced(self.train_images),
            progress,
        )
    }

    fn pretrained(&mut self, device: &Device) -> Result<Option<VarMap>> {
        let weights = self.weights;
        let map = pretrained_varmap(weights, device).map_err(|e| {
            BenchError::Invalid(format!(
                "loading the ImageNet weights {}: {e}",
                weights.display()
            ))
        })?;
        Ok(Some(map))
    }
}

/// Checks a study's domain list: at least two (leave-one-out needs a
/// library left), each a valid adapter name.
pub(crate) fn check_domains(domains: &[String]) -> Result<()> {
    if domains.len() < 2 {
        return Err(BenchError::Invalid(
            "the benchmark needs at least two target domains".into(),
        ));
    }
    if let Some(bad) = domains.iter().find(|d| d.contains(['/', '\\'])) {
        return Err(BenchError::Invalid(format!(
            "domain `{bad}` contains `/`: name the domains as adapters can be named (camvid-fog3, not camvid/fog3)"
        )));
    }
    Ok(())
}

/// What a CamVid study builds its library with: the EfficientNet-Lite0
/// segmenter over `classes`, the two trainings, LoRA on every site
/// (`rank`, `alpha`), flips as the only augmentation, checkpoints every 50
/// steps and reuse of what an earlier run left.
pub(crate) fn camvid_library_plan(
    classes: Vec<String>,
    base: TrainRecipe,
    adapter: TrainRecipe,
    rank: usize,
    alpha: f64,
    embedder: EmbedderSpec,
    seed: u64,
) -> LibraryPlan {
    let mut model_config = EfficientLiteSegConfig::new(classes.len());
    model_config.class_names = classes;
    LibraryPlan {
        source: SOURCE_DOMAIN.to_string(),
        model: SegmenterConfig::EfficientLite0(model_config),
        base,
        adapter,
        augment: AugmentConfig {
            min_scale: 1.0,
            max_scale: 1.0,
            flip_probability: 0.5,
            crop: None,
        },
        checkpoint_every: Some(50),
        lora: LoraSettings {
            rank,
            alpha,
            targets: Vec::new(),
            use_rslora: false,
        },
        embedder,
        prototype_batch: 8,
        reuse: true,
        seed,
    }
}

/// Runs the benchmark into `out_dir`.
pub fn run_camvid_bench(
    config: &CamVidBenchConfig,
    device: &Device,
    out_dir: &Path,
    progress: &mut dyn Progress,
) -> Result<CamVidBenchOutcome> {
    let started = Instant::now();
    let mut phases = crate::machine::Phases::new();
    let mut reused = Vec::new();
    let device = device.clone();
    check_domains(&config.domains)?;
    std::fs::create_dir_all(out_dir).map_err(|e| BenchError::io(out_dir, e))?;
    let size = config.image_size;

    // 1-2. The base model on clear daytime frames, one adapter and one prototype
    // per domain.
    let embedder: EmbedderSpec = format!("{}@{}", config.embedder, config.embed_downscale.max(1))
        .parse()
        .map_err(BenchError::Invalid)?;
    let classes = resolve_domain(SOURCE_DOMAIN, &config.data_root)?.classes;
    let recipe = |steps, lr| TrainRecipe {
        steps,
        lr,
        batch_size: config.batch_size,
    };
    let plan = camvid_library_plan(
        classes.clone(),
        recipe(config.base_steps, config.base_lr),
        recipe(config.adapter_steps, config.adapter_lr),
        config.rank,
        config.alpha,
        embedder,
        config.seed,
    );
    let built = build_library(
        &plan,
        &config.domains,
        &mut CamVidData {
            data_root: &config.data_root,
            weights: &config.weights,
            image_size: size,
            train_images: config.train_images,
        },
        out_dir,
        &device,
        progress,
    )?;
    phases.extend(&built.phases);
    reused.extend(built.reused.iter().cloned());

    // 3. SemLA's top-k and temperature, tuned on train frames no adapter saw.
    let class_names = classes;
    let sources = SourceLibrary::open(&built.library_dir, &config.domains, true)?;
    let semla = Semla::new(
        built.base.clone(),
        sources,
        Some(built.embedder),
        SemlaSettings {
            retrieval: config.retrieval,
            ..SemlaSettings::default()
        },
        &device,
    )?;
    let embedder_id = semla
        .embedder()
        .map(|e| e.id().to_string())
        .unwrap_or_default();
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
                    && t.embedder == embedder_id
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
                let targets = targets(&config.domains, &tune_sets, &class_names);
                let tuning = tune_retrieval(
                    &semla,
                    &targets,
                    &base_settings,
                    config.tune_images,
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
    phases.end("tuning");

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
    phases.end("loading evaluation frames");

    // 5. The experiments, leave-one-out.
    let targets = targets(&config.domains, &eval_sets, &class_names);
    let outputs = run_leave_one_out(
        &semla,
        &targets,
        &TABLE_METHODS,
        &ExperimentSettings {
            params: retrieval,
            ..base_settings
        },
        Some(&out_dir.join("experiments").join(config.eval_split.as_str())),
        progress,
    )?;
    let results: Vec<(String, Vec<(String, f64)>)> = outputs
        .into_iter()
        .map(|(method, output)| (method, output.results))
        .collect();
    phases.end("experiments");

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
        "phases": phases.list(),
        "reused": reused,
        "retrieval": retrieval,
        "tuning": tuning,
        "load_average_at_end": crate::machine::load_average(),
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
        phases: phases.list().to_vec(),
        reused,
        retrieval,
        tuning,
    })
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
