//! `semla bench clouds`: CLOUDS-style self-training on CamVid domain shifts,
//! and SemLA over a library grown without labels.
//!
//! 1. The base segmenter on the clear daytime frames and one *oracle* adapter
//!    per target domain trained with its labels (the `bench camvid` library,
//!    [`build_library`]).
//! 2. Per target domain and refinement (none, then each weight-free refiner):
//!    a *label-free* adapter self-trained on the domain's train frames with
//!    their labels wiped ([`InMemorySource::into_unlabeled`]), an EMA teacher
//!    and the labelled daytime frames mixed in
//!    ([`semla_selftrain::self_train_adapter`]); its prototype from the same
//!    unlabeled images. One library per refinement in `OUT/label-free/<name>`.
//!    And, the official case, each domain's head (the LR-ASPP decoder on the
//!    frozen backbone) self-trained the same way into a model of its own.
//! 3. The quality of the pseudo-labels themselves: the base model's (the
//!    teacher at step 0) raw and refined pseudo-labels on train frames of each
//!    domain scored against the real labels, with pictures.
//! 4. On the held-out frames: zero-shot, each label-free adapter (and head)
//!    on its own domain, SemLA over each label-free library leave-one-out, SemLA over
//!    the labelled library, and the oracle.
//!
//! Resumable as `bench camvid`: models and adapters in `OUT` are reused, an
//! interrupted training resumes from its checkpoint.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use semla_adapters::Adaptation;
use semla_core::fs::write_atomic;
use semla_core::{Progress, SplitMix64};
use semla_data::domains::{Split, resolve_domain};
use semla_data::{InMemorySource, SampleSource};
use semla_experiments::{ExperimentKind, ExperimentSettings, Target};
use semla_models::{Segmenter, load_segmenter, save_segmenter};
use semla_pipeline::embed::BuildContext;
use semla_pipeline::{EmbedderSpec, Fusion, Semla, SemlaSettings, SourceLibrary};
use semla_retrieval::RetrievalParams;
use semla_selftrain::quality::{draw_labels, panel_grid};
use semla_selftrain::{
    EmaSettings, GraphSegments, PromptRefiner, PseudoLabelRefiner, PseudoLabelScore,
    PseudoLabelStats, RefineSettings, RegionGrowing, SegmentVote, SelfTrainSettings, Student,
    Unclaimed, mean_score, score_pseudo_label, self_train, self_train_adapter,
};
use semla_train::augment::AugmentConfig;
use semla_train::lora::LoraTrainee;
use semla_train::runs::with_trainable_part;
use semla_train::trainer::{Session, TrainConfig};
use serde::Serialize;

use crate::camvid::{
    CamVidData, Frames, SOURCE_DOMAIN, camvid_library_plan, check_domains, load_domain,
};
use crate::error::{BenchError, Result};
use crate::leave_one_out::{run_leave_one_out, targets};
use crate::library_build::{AdapterPlan, TrainRecipe, build_adapters, build_library};
use crate::present::markdown::render_table;
use crate::table::{ResultsTable, assemble, summarise};

/// The default target domains: the real dusk sequence and four corruptions
/// (fog, night, rain, snow) at severity 3.
pub fn default_domains() -> Vec<String> {
    ["dusk", "fog3", "night3", "rain3", "snow3"]
        .iter()
        .map(|d| format!("camvid-{d}"))
        .collect()
}

/// A weight-free way of refining the teacher's pseudo-labels (no SAM
/// checkpoint exists on a machine without downloads).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightFreeRefiner {
    /// CLOUDS' prompting with seeded region growing ([`RegionGrowing`]).
    Grow,
    /// CLOUDS' prompting with graph segments ([`GraphSegments`]).
    Graph,
    /// A vote of the teacher's labels inside image segments, no prompts
    /// ([`SegmentVote`]).
    Vote,
}

impl WeightFreeRefiner {
    /// Its name in folders and table rows.
    pub fn name(self) -> &'static str {
        match self {
            Self::Grow => "grow",
            Self::Graph => "graph",
            Self::Vote => "vote",
        }
    }

    /// The refiner, with `prompting`'s settings for the prompting kinds.
    fn build(self, prompting: &RefineSettings) -> Box<dyn PseudoLabelRefiner> {
        match self {
            Self::Grow => Box::new(PromptRefiner {
                proposer: RegionGrowing::default(),
                settings: prompting.clone(),
            }),
            Self::Graph => Box::new(PromptRefiner {
                proposer: GraphSegments::default(),
                settings: prompting.clone(),
            }),
            Self::Vote => Box::new(SegmentVote {
                ignore: prompting.ignore,
                ..SegmentVote::default()
            }),
        }
    }
}

impl std::str::FromStr for WeightFreeRefiner {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "grow" => Ok(Self::Grow),
            "graph" => Ok(Self::Graph),
            "vote" => Ok(Self::Vote),
            other => Err(format!("unknown refiner `{other}` (grow, graph or vote)")),
        }
    }
}

/// Everything that sets the size of the benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct CloudsBenchConfig {
    /// The CamVid dataset root (the folder holding `camvid/`).
    pub data_root: PathBuf,
    /// The ImageNet EfficientNet-Lite0 `.pth` the backbone starts from.
    pub weights: PathBuf,
    /// Target domains (each gets an oracle and label-free adapters).
    pub domains: Vec<String>,
    /// Split evaluated.
    pub eval_split: Split,
    /// Input size `(height, width)`; every image is resized to it. Default
    /// 96x128: a quarter of `bench camvid`'s pixels, since every domain is
    /// trained `1 + 1 + refiners` times.
    pub image_size: (usize, usize),
    /// Base training steps. Default 240.
    pub base_steps: usize,
    /// Base learning rate. Default 2e-3.
    pub base_lr: f64,
    /// Steps of each adapter, oracle and label-free alike. Default 80.
    pub adapter_steps: usize,
    /// Learning rate of each adapter. Default 3e-3.
    pub adapter_lr: f64,
    /// Images per step of the base and the oracle adapters; labelled
    /// daytime images per self-training step. Default 4.
    pub batch_size: usize,
    /// Unlabeled target images per self-training step. Default 2.
    pub target_per_step: usize,
    /// The teacher's EMA. Default alpha 0.99 every 10 steps: the official
    /// 0.999 every 100 would update an 80-step run's teacher never.
    pub ema: EmaSettings,
    /// The weight-free refinements trained and scored besides none. Default
    /// `[grow, vote]`.
    pub refiners: Vec<WeightFreeRefiner>,
    /// A teacher region becomes a prompt above this many pixels. Default
    /// 300 (CLOUDS' 5000 is for 768x768 images).
    pub min_area_px: usize,
    /// Points per prompt. Default 5 (official).
    pub points_per_component: usize,
    /// Also self-train each domain's head (the official CLOUDS case: the
    /// LR-ASPP decoder on the frozen backbone, no refinement) into a model
    /// of its own, `OUT/label-free/head/<domain>`. Default `true`.
    pub head: bool,
    /// Pixels no mask claims keep the teacher's label (`true`, the default:
    /// the official rule leaves them unsupervised and loses a third of the
    /// pixels with a weight-free proposer, see `docs/clouds.md`).
    pub unclaimed_from_teacher: bool,
    /// Training images per domain at most (evenly spaced). Default 96.
    pub train_images: Option<usize>,
    /// Evaluation images per domain at most (evenly spaced). Default 50.
    pub eval_images: Option<usize>,
    /// Train frames per domain whose pseudo-labels are scored. Default 12.
    pub quality_images: usize,
    /// LoRA rank. Default 8.
    pub rank: usize,
    /// LoRA alpha. Default 16.
    pub alpha: f64,
    /// The query embedder (`style` or `backbone`). Default `style`.
    pub embedder: String,
    /// The embedder's average-pool factor. Default 2.
    pub embed_downscale: usize,
    /// SemLA's retrieval (not tuned here). Default top-3, T = 0.05.
    pub retrieval: RetrievalParams,
    /// Seed of everything. Default 7.
    pub seed: u64,
}

impl CloudsBenchConfig {
    /// The defaults: the documented run (5 domains, about 20 minutes from
    /// scratch on 2 cores in a release build).
    pub fn new(data_root: PathBuf, weights: PathBuf) -> Self {
        Self {
            data_root,
            weights,
            domains: default_domains(),
            eval_split: Split::Val,
            image_size: (96, 128),
            base_steps: 240,
            base_lr: 2e-3,
            adapter_steps: 80,
            adapter_lr: 3e-3,
            batch_size: 4,
            target_per_step: 2,
            ema: EmaSettings {
                alpha: 0.99,
                every: 10,
            },
            refiners: vec![WeightFreeRefiner::Grow, WeightFreeRefiner::Vote],
            min_area_px: 300,
            points_per_component: 5,
            unclaimed_from_teacher: true,
            head: true,
            train_images: Some(96),
            eval_images: Some(50),
            quality_images: 12,
            rank: 8,
            alpha: 16.0,
            embedder: "style".to_string(),
            embed_downscale: 2,
            retrieval: RetrievalParams {
                top_k: 3,
                temperature: 0.05,
                ..RetrievalParams::default()
            },
            seed: 7,
        }
    }

    fn refine_settings(&self, ignore: u16) -> RefineSettings {
        RefineSettings {
            min_area_px: self.min_area_px,
            points_per_component: self.points_per_component,
            ignore,
            void: None,
            unclaimed: if self.unclaimed_from_teacher {
                Unclaimed::Teacher
            } else {
                Unclaimed::Ignore
            },
        }
    }
}

/// The pseudo-labels of one domain, scored (means over its quality frames).
#[derive(Clone, Debug, Serialize)]
pub struct DomainQuality {
    /// The domain.
    pub domain: String,
    /// Frames scored.
    pub images: usize,
    /// The teacher's argmax.
    pub raw: PseudoLabelScore,
    /// `(refiner, score)` per refiner, in config order.
    pub refined: Vec<(String, PseudoLabelScore)>,
    /// The picture of its first frames (image, truth, raw, refined...).
    pub picture: PathBuf,
}

/// What the benchmark produced.
#[derive(Clone, Debug, Serialize)]
pub struct CloudsBenchOutcome {
    /// Methods x domains (mIoU %).
    pub table: ResultsTable,
    /// Pseudo-label quality per domain.
    pub quality: Vec<DomainQuality>,
    /// `(library, domain, statistics)` of each label-free training this run
    /// or an earlier one did (`None`: trained before statistics were kept).
    pub self_training: Vec<(String, String, Option<PseudoLabelStats>)>,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Seconds per phase.
    pub phases: Vec<(String, f64)>,
    /// Which parts were reused from an earlier run.
    pub reused: Vec<String>,
}

/// The training settings of every label-free run of domain `index`: the
/// same seed whatever is trained and refined, so runs differ only in that.
fn selftrain_config(config: &CloudsBenchConfig, index: usize) -> TrainConfig {
    let mut train = TrainConfig::new(config.adapter_steps, config.batch_size, config.adapter_lr);
    train.seed = config.seed.wrapping_add(2000 + index as u64);
    train.augment = AugmentConfig {
        min_scale: 1.0,
        max_scale: 1.0,
        flip_probability: 0.5,
        crop: None,
    };
    train.checkpoint_every = Some(50);
    train
}

/// Writes `stats` of the run `<what>-<domain>` into `dir`.
fn write_stats(dir: &Path, what: &str, domain: &str, stats: &PseudoLabelStats) -> Result<()> {
    let path = dir.join(format!("{what}-{domain}.json"));
    write_atomic(
        &path,
        serde_json::to_string_pretty(stats)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    Ok(())
}

/// The label-free libraries: no refinement, then each refiner.
fn variants(config: &CloudsBenchConfig) -> Vec<(String, Option<WeightFreeRefiner>)> {
    let mut list = vec![("none".to_string(), None)];
    for &r in &config.refiners {
        list.push((r.name().to_string(), Some(r)));
    }
    list
}

/// A table row name: `prefix` for no refinement, `prefix-<refiner>` otherwise.
fn row(prefix: &str, variant: &str) -> String {
    if variant == "none" {
        prefix.to_string()
    } else {
        format!("{prefix}-{variant}")
    }
}

/// Runs the benchmark into `out_dir`.
pub fn run_clouds_bench(
    config: &CloudsBenchConfig,
    device: &Device,
    out_dir: &Path,
    progress: &mut dyn Progress,
) -> Result<CloudsBenchOutcome> {
    let started = Instant::now();
    let mut phases = crate::machine::Phases::new();
    let device = device.clone();
    check_domains(&config.domains)?;
    let mut seen = std::collections::BTreeSet::new();
    if let Some(twice) = config.refiners.iter().find(|r| !seen.insert(r.name())) {
        return Err(BenchError::Invalid(format!(
            "refiner `{}` is listed twice",
            twice.name()
        )));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| BenchError::io(out_dir, e))?;
    let size = config.image_size;

    // 1. The base model and the oracle adapters (with labels).
    let embedder: EmbedderSpec = format!("{}@{}", config.embedder, config.embed_downscale.max(1))
        .parse()
        .map_err(BenchError::Invalid)?;
    let source_domain = resolve_domain(SOURCE_DOMAIN, &config.data_root)?;
    let classes = source_domain.classes.clone();
    let ignore = source_domain.ignore_value;
    let palette = source_domain.palette;
    let recipe = |lr| TrainRecipe {
        steps: config.adapter_steps,
        lr,
        batch_size: config.batch_size,
    };
    let plan = camvid_library_plan(
        classes.clone(),
        TrainRecipe {
            steps: config.base_steps,
            lr: config.base_lr,
            batch_size: config.batch_size,
        },
        recipe(config.adapter_lr),
        config.rank,
        config.alpha,
        embedder.clone(),
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
    let mut reused = built.reused.clone();
    let base = built.base.clone();

    // 2. The label-free libraries.
    let prompting = config.refine_settings(ignore);
    let mut daytime: Option<InMemorySource> = None;
    let mut self_training = Vec::new();
    let stats_dir = out_dir.join("pseudo-labels").join("training");
    std::fs::create_dir_all(&stats_dir).map_err(|e| BenchError::io(&stats_dir, e))?;
    for (variant, refiner) in variants(config) {
        let library_dir = out_dir.join("label-free").join(&variant);
        let refiner = refiner.map(|r| r.build(&prompting));
        let adapters = AdapterPlan {
            library_dir: &library_dir,
            embedder: built.embedder.as_ref(),
            prototype_batch: plan.prototype_batch,
            reuse: true,
        };
        let made = build_adapters(
            &adapters,
            &config.domains,
            &mut |_, name, progress| {
                Ok(load_domain(
                    &config.data_root,
                    name,
                    Split::Train,
                    size,
                    Frames::Spaced(config.train_images),
                    progress,
                )?
                .into_unlabeled())
            },
            &mut |i, name, target, progress| {
                if daytime.is_none() {
                    daytime = Some(load_domain(
                        &config.data_root,
                        SOURCE_DOMAIN,
                        Split::Train,
                        size,
                        Frames::Spaced(config.train_images),
                        progress,
                    )?);
                }
                let source = daytime.as_ref().map(|s| s as &dyn SampleSource);
                let train = selftrain_config(config, i);
                let lora = LoraTrainee::new(&base.sites(), &plan.lora, train.seed, &device)?;
                let checkpoint = out_dir
                    .join("checkpoints")
                    .join(format!("label-free-{variant}"))
                    .join(name);
                progress.begin(
                    &format!("self-training adapter {name} (refinement: {variant})"),
                    config.adapter_steps as u64,
                );
                let (_, stats) = self_train_adapter(
                    base.as_ref(),
                    &lora,
                    &device,
                    source,
                    target,
                    refiner.as_deref(),
                    &train,
                    &SelfTrainSettings {
                        target_per_step: config.target_per_step,
                        ema: config.ema,
                    },
                    &Session {
                        checkpoint_dir: Some(&checkpoint),
                        resume: true,
                        stop_at: None,
                    },
                    &mut |p| progress.training_step(p.step, p.loss),
                )?;
                progress.end();
                write_stats(&stats_dir, &variant, name, &stats)?;
                Ok(lora.to_adapter(name)?)
            },
            &device,
            progress,
        )?;
        reused.extend(
            made.into_iter()
                .map(|r| format!("label-free {variant}: {r}")),
        );
        for name in &config.domains {
            let stats = std::fs::read(stats_dir.join(format!("{variant}-{name}.json")))
                .ok()
                .and_then(|bytes| serde_json::from_slice::<PseudoLabelStats>(&bytes).ok());
            self_training.push((variant.clone(), name.clone(), stats));
        }
    }
    phases.end("label-free adapters");

    // 2b. The official case: each domain's head self-trained into a model.
    let mut heads: Vec<Arc<dyn Segmenter>> = Vec::new();
    if config.head {
        let model_config = base.config();
        for (i, name) in config.domains.iter().enumerate() {
            let dir = out_dir.join("label-free").join("head").join(name);
            let done = dir.join(semla_models::model_dir::CONFIG_FILE).is_file()
                && dir.join(semla_models::model_dir::WEIGHTS_FILE).is_file();
            if done {
                reused.push(format!("label-free head {name}"));
            } else {
                let target = load_domain(
                    &config.data_root,
                    name,
                    Split::Train,
                    size,
                    Frames::Spaced(config.train_images),
                    progress,
                )?
                .into_unlabeled();
                if daytime.is_none() {
                    daytime = Some(load_domain(
                        &config.data_root,
                        SOURCE_DOMAIN,
                        Split::Train,
                        size,
                        Frames::Spaced(config.train_images),
                        progress,
                    )?);
                }
                let (model, params) = with_trainable_part(
                    base.as_ref(),
                    &|weight| model_config.is_head_weight(weight),
                    &device,
                )?;
                let checkpoint = out_dir
                    .join("checkpoints")
                    .join("label-free-head")
                    .join(name);
                progress.begin(
                    &format!("self-training the head on {name}"),
                    config.adapter_steps as u64,
                );
                let (_, stats) = self_train(
                    Student::Weights {
                        model: model.as_ref(),
                        params: &params,
                    },
                    &device,
                    daytime.as_ref().map(|s| s as &dyn SampleSource),
                    &target,
                    None,
                    &selftrain_config(config, i),
                    &SelfTrainSettings {
                        target_per_step: config.target_per_step,
                        ema: config.ema,
                    },
                    &Session {
                        checkpoint_dir: Some(&checkpoint),
                        resume: true,
                        stop_at: None,
                    },
                    &mut |p| progress.training_step(p.step, p.loss),
                )?;
                progress.end();
                write_stats(&stats_dir, "head", name, &stats)?;
                save_segmenter(model.as_ref(), &dir)?;
            }
            heads.push(Arc::from(load_segmenter(&dir, &device)?));
            let stats = std::fs::read(stats_dir.join(format!("head-{name}.json")))
                .ok()
                .and_then(|bytes| serde_json::from_slice::<PseudoLabelStats>(&bytes).ok());
            self_training.push(("head".to_string(), name.clone(), stats));
        }
        phases.end("label-free heads");
    }

    // 3. The pseudo-labels themselves.
    let quality = score_pseudo_labels(
        config,
        base.as_ref(),
        &prompting,
        palette,
        &out_dir.join("pseudo-labels"),
        &device,
        progress,
    )?;
    phases.end("pseudo-label quality");

    // 4. Held-out frames: every library's rows.
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
    let targets = targets(&config.domains, &eval_sets, &classes);
    let settings = ExperimentSettings {
        params: config.retrieval,
        batch_size: 8,
        ..ExperimentSettings::new(ExperimentKind::Semla)
    };
    let experiments = out_dir.join("experiments").join(config.eval_split.as_str());
    let semla_over = |library_dir: &Path| -> Result<Semla> {
        let sources = SourceLibrary::open(library_dir, &config.domains, true)?;
        let embedder = embedder.build(&BuildContext {
            device: &device,
            model: Some(&base),
        })?;
        Ok(Semla::new(
            Arc::clone(&base),
            sources,
            Some(embedder),
            SemlaSettings {
                retrieval: config.retrieval,
                ..SemlaSettings::default()
            },
            &device,
        )?)
    };
    let mut rows: Vec<(String, Vec<(String, f64)>)> = Vec::new();
    let labelled = run_leave_one_out(
        &semla_over(&built.library_dir)?,
        &targets,
        &[
            (ExperimentKind::ZeroShot, Fusion::Weights),
            (ExperimentKind::Semla, Fusion::Weights),
            (ExperimentKind::Oracle, Fusion::Weights),
        ],
        &settings,
        Some(&experiments.join("labelled")),
        progress,
    )?;
    let mut labelled = labelled.into_iter().map(|(_, o)| o.results);
    let (zero_shot, semla_labelled, oracle) = (
        labelled.next().unwrap_or_default(),
        labelled.next().unwrap_or_default(),
        labelled.next().unwrap_or_default(),
    );
    rows.push(("zeroshot".to_string(), zero_shot));
    let mut head_row = None;
    if !heads.is_empty() {
        let head_targets: Vec<Target<'_>> = targets
            .iter()
            .zip(&heads)
            .map(|(t, model)| Target {
                name: t.name.clone(),
                source: t.source,
                definition: t.definition,
                class_names: t.class_names.clone(),
                model: Some(Arc::clone(model)),
            })
            .collect();
        let outputs = run_leave_one_out(
            &semla_over(&built.library_dir)?,
            &head_targets,
            &[(ExperimentKind::ZeroShot, Fusion::Weights)],
            &settings,
            Some(&experiments.join("label-free-head")),
            progress,
        )?;
        head_row = Some((
            "selftrain-head".to_string(),
            outputs
                .into_iter()
                .next()
                .map(|(_, o)| o.results)
                .unwrap_or_default(),
        ));
    }
    let mut semla_rows = Vec::new();
    for (variant, _) in variants(config) {
        let outputs = run_leave_one_out(
            &semla_over(&out_dir.join("label-free").join(&variant))?,
            &targets,
            &[
                (ExperimentKind::Oracle, Fusion::Weights),
                (ExperimentKind::Semla, Fusion::Weights),
            ],
            &settings,
            Some(&experiments.join(format!("label-free-{variant}"))),
            progress,
        )?;
        let mut outputs = outputs.into_iter().map(|(_, o)| o.results);
        rows.push((
            row("selftrain", &variant),
            outputs.next().unwrap_or_default(),
        ));
        semla_rows.push((
            row("semla-label-free", &variant),
            outputs.next().unwrap_or_default(),
        ));
    }
    rows.extend(head_row);
    rows.extend(semla_rows);
    rows.push(("semla-labelled".to_string(), semla_labelled));
    rows.push(("oracle".to_string(), oracle));
    phases.end("experiments");

    let table = assemble(&config.domains, &rows);
    let markdown = format!(
        "mIoU (%) on the {split} frames; `selftrain*`: each domain's label-free adapter on it; \
         `semla-label-free*`: SemLA over the label-free library without the target's own adapter; \
         `semla-labelled`: the same over the oracle adapters.\n\n{}\n{}",
        render_table(&table, false),
        render_quality(&quality),
        split = config.eval_split
    );
    write_atomic(
        &out_dir.join(format!("table-{}.md", config.eval_split)),
        markdown.as_bytes(),
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let summary = serde_json::json!({
        "config": config,
        "table": table,
        "summary": summarise(&table),
        "pseudo_label_quality": quality,
        "self_training": self_training,
        "seconds": seconds,
        "phases": phases.list(),
        "reused": reused,
        "load_average_at_end": crate::machine::load_average(),
    });
    write_atomic(
        &out_dir.join(format!("summary-{}.json", config.eval_split)),
        serde_json::to_string_pretty(&summary)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    Ok(CloudsBenchOutcome {
        table,
        quality,
        self_training,
        seconds,
        phases: phases.list().to_vec(),
        reused,
    })
}

/// Frames drawn per domain picture.
const PICTURE_FRAMES: usize = 2;

/// Scores the base model's raw and refined pseudo-labels on
/// `config.quality_images` train frames of each domain, and draws the first
/// [`PICTURE_FRAMES`] of each into `dir/<domain>.png`.
fn score_pseudo_labels(
    config: &CloudsBenchConfig,
    teacher: &dyn Segmenter,
    prompting: &RefineSettings,
    palette: semla_data::domains::palette::Palette,
    dir: &Path,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<Vec<DomainQuality>> {
    std::fs::create_dir_all(dir).map_err(|e| BenchError::io(dir, e))?;
    let refiners: Vec<(String, Box<dyn PseudoLabelRefiner>)> = config
        .refiners
        .iter()
        .map(|r| (r.name().to_string(), r.build(prompting)))
        .collect();
    let ignore = prompting.ignore;
    let colour = |c: u16| palette.color(c, None);
    let mut all = Vec::new();
    for (d, name) in config.domains.iter().enumerate() {
        let frames = load_domain(
            &config.data_root,
            name,
            Split::Train,
            config.image_size,
            Frames::Spaced(Some(config.quality_images.max(1))),
            progress,
        )?;
        let mut raw_scores = Vec::new();
        let mut refined_scores: Vec<Vec<PseudoLabelScore>> = vec![Vec::new(); refiners.len()];
        let mut picture_rows = Vec::new();
        progress.begin(
            &format!("scoring pseudo-labels of {name}"),
            frames.len() as u64,
        );
        for i in 0..frames.len() {
            let sample = frames.sample(i)?;
            let (width, height) = (sample.width, sample.height);
            let truth: Vec<u16> = sample
                .labels
                .iter()
                .map(|&t| u16::try_from(t).unwrap_or(ignore))
                .collect();
            let images = teacher.normalization().batch(&[&sample], device)?;
            let raw: Vec<u16> = teacher
                .forward(&images, &Adaptation::none())?
                .argmax(1)?
                .to_dtype(DType::U32)?
                .flatten_all()?
                .to_vec1::<u32>()?
                .into_iter()
                .map(|c| u16::try_from(c).unwrap_or(ignore))
                .collect();
            let photo = sample.to_photo()?;
            raw_scores.push(score_pseudo_label(&raw, &truth, ignore));
            let mut panels = vec![
                photo.clone(),
                draw_labels(&truth, width, height, ignore, colour),
                draw_labels(&raw, width, height, ignore, colour),
            ];
            for (k, (_, refiner)) in refiners.iter().enumerate() {
                let mut rng = SplitMix64::for_step(config.seed, (d * 1000 + i) as u64, 0);
                let refined = refiner.refine(&photo, &raw, &mut rng)?.labels;
                refined_scores[k].push(score_pseudo_label(&refined, &truth, ignore));
                panels.push(draw_labels(&refined, width, height, ignore, colour));
            }
            if i < PICTURE_FRAMES {
                picture_rows.push(panels);
            }
            progress.set(i as u64 + 1);
        }
        progress.end();
        let picture = dir.join(format!("{name}.png"));
        let mut png = Vec::new();
        panel_grid(&picture_rows)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| BenchError::Invalid(format!("encoding {}: {e}", picture.display())))?;
        write_atomic(&picture, &png)?;
        all.push(DomainQuality {
            domain: name.clone(),
            images: frames.len(),
            raw: mean_score(&raw_scores),
            refined: refiners
                .iter()
                .zip(&refined_scores)
                .map(|((n, _), s)| (n.clone(), mean_score(s)))
                .collect(),
            picture,
        });
    }
    Ok(all)
}

/// The pseudo-label quality as a Markdown table: mIoU per domain, and the
/// mean mIoU, coverage and precision.
pub fn render_quality(quality: &[DomainQuality]) -> String {
    let Some(first) = quality.first() else {
        return String::new();
    };
    let mut out = format!(
        "Pseudo-labels of the base model (the teacher at step 0) on {} train frames per domain, against the real labels (mIoU over the classes present, an unsupervised pixel counting as a miss):\n\n| pseudo-label |",
        first.images
    );
    for q in quality {
        out.push_str(&format!(" {} |", q.domain));
    }
    out.push_str(" mean mIoU | coverage | precision |\n|---|");
    for _ in quality {
        out.push_str("---:|");
    }
    out.push_str("---:|---:|---:|\n");
    let mut line = |name: &str, pick: &dyn Fn(&DomainQuality) -> Option<PseudoLabelScore>| {
        let scores: Vec<PseudoLabelScore> = quality.iter().filter_map(pick).collect();
        out.push_str(&format!("| {name} |"));
        for s in &scores {
            out.push_str(&format!(" {:.3} |", s.miou));
        }
        let m = mean_score(&scores);
        out.push_str(&format!(
            " **{:.3}** | {:.2} | {:.3} |\n",
            m.miou, m.coverage, m.precision
        ));
    };
    line("raw", &|q| Some(q.raw));
    for (k, (name, _)) in first.refined.iter().enumerate() {
        line(&format!("refined: {name}"), &|q| {
            q.refined.get(k).map(|(_, s)| *s)
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_domains_resolve_and_can_name_adapters() {
        let domains = default_domains();
        check_domains(&domains).unwrap();
        for name in &domains {
            assert!(
                semla_data::domains::corrupted::parse_name(name).is_some(),
                "{name}"
            );
        }
    }

    #[test]
    fn refiner_names_round_trip() {
        for r in [
            WeightFreeRefiner::Grow,
            WeightFreeRefiner::Graph,
            WeightFreeRefiner::Vote,
        ] {
            assert_eq!(r.name().parse::<WeightFreeRefiner>().unwrap(), r);
        }
        assert!("sam".parse::<WeightFreeRefiner>().is_err());
        assert_eq!(row("selftrain", "none"), "selftrain");
        assert_eq!(row("selftrain", "grow"), "selftrain-grow");
    }

    #[test]
    fn quality_table_by_hand() {
        let score = |miou| PseudoLabelScore {
            miou,
            coverage: 1.0,
            precision: 0.5,
        };
        let quality = vec![
            DomainQuality {
                domain: "a".into(),
                images: 3,
                raw: score(0.2),
                refined: vec![("vote".into(), score(0.4))],
                picture: PathBuf::new(),
            },
            DomainQuality {
                domain: "b".into(),
                images: 3,
                raw: score(0.4),
                refined: vec![("vote".into(), score(0.2))],
                picture: PathBuf::new(),
            },
        ];
        let text = render_quality(&quality);
        assert!(
            text.contains("| raw | 0.200 | 0.400 | **0.300** | 1.00 | 0.500 |"),
            "{text}"
        );
        assert!(
            text.contains("| refined: vote | 0.400 | 0.200 | **0.300** |"),
            "{text}"
        );
        assert_eq!(render_quality(&[]), "");
    }
}
