//! Building a SemLA library from nothing, the one pipeline the demo and the
//! CamVid benchmark share:
//!
//! 1. a base segmenter trained on the source domain (`OUT/model`);
//! 2. one LoRA adapter per domain on the frozen base (`OUT/library/<domain>`);
//! 3. each domain's prototype from its training images with the study's
//!    embedder, recorded with the library.
//!
//! With [`LibraryPlan::reuse`], what an earlier run left in `OUT` is reused (a
//! model, adapters, prototypes made by the same embedder) and interrupted
//! trainings resume from their checkpoints (`OUT/checkpoints`). Every random
//! draw comes from the plan's seed (the base: `seed`; adapter `i`:
//! `seed + 1000 + i`), so a run and its resumption build the same library.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use candle_nn::VarMap;
use semla_adapters::{Adapter, AdapterLibrary};
use semla_core::Progress;
use semla_data::InMemorySource;
use semla_models::{Segmenter, SegmenterConfig, load_segmenter, save_segmenter};
use semla_pipeline::embed::BuildContext;
use semla_pipeline::prototype::{EmbedOptions, record_prototypes, source_prototype};
use semla_pipeline::{Embed, EmbedderSpec};
use semla_train::augment::AugmentConfig;
use semla_train::lora::{LoraSettings, LoraTrainee};
use semla_train::runs::{build_trainable, train_adapter, train_base};
use semla_train::trainer::{Session, TrainConfig};

use crate::error::{BenchError, Result};

/// How one training stage runs.
#[derive(Clone, Copy, Debug)]
pub struct TrainRecipe {
    /// Optimizer steps.
    pub steps: usize,
    /// Peak learning rate (AdamW, warmup-cosine).
    pub lr: f64,
    /// Images per step.
    pub batch_size: usize,
}

/// Everything that sets what [`build_library`] makes.
#[derive(Clone, Debug)]
pub struct LibraryPlan {
    /// The source domain the base model is trained on (for progress).
    pub source: String,
    /// The base model to build.
    pub model: SegmenterConfig,
    /// Base training.
    pub base: TrainRecipe,
    /// Adapter training (per domain).
    pub adapter: TrainRecipe,
    /// Random scale / flip of both trainings.
    pub augment: AugmentConfig,
    /// Checkpoint every this many steps (with `reuse`).
    pub checkpoint_every: Option<usize>,
    /// Rank, alpha and targets of the adapters.
    pub lora: LoraSettings,
    /// The embedder of the prototypes, built on the base model.
    pub embedder: EmbedderSpec,
    /// Images embedded per forward pass for the prototypes.
    pub prototype_batch: usize,
    /// Reuse what an earlier run left and resume interrupted trainings.
    pub reuse: bool,
    /// Seed of everything.
    pub seed: u64,
}

/// Where the data of a build comes from.
pub trait BuildData {
    /// The base model's training samples (the source domain).
    fn base_source(&mut self, progress: &mut dyn Progress) -> Result<InMemorySource>;
    /// The training samples of domain `index` (`name`), for its adapter and prototype.
    fn domain_source(
        &mut self,
        index: usize,
        name: &str,
        progress: &mut dyn Progress,
    ) -> Result<InMemorySource>;
    /// The pretrained variables the base starts from, if any.
    fn pretrained(&mut self, _device: &Device) -> Result<Option<VarMap>> {
        Ok(None)
    }
}

/// What [`build_library`] made.
pub struct BuiltLibrary {
    /// The base model (loaded back from `OUT/model`, frozen).
    pub base: Arc<dyn Segmenter>,
    /// `OUT/library`.
    pub library_dir: PathBuf,
    /// The prototypes' embedder.
    pub embedder: Box<dyn Embed>,
    /// What was reused from an earlier run.
    pub reused: Vec<String>,
    /// Seconds per phase (`base`, `adapters and prototypes`).
    pub phases: Vec<(String, f64)>,
}

fn train_config(recipe: &TrainRecipe, plan: &LibraryPlan, seed: u64) -> TrainConfig {
    let mut config = TrainConfig::new(recipe.steps, recipe.batch_size, recipe.lr);
    config.seed = seed;
    config.augment = plan.augment;
    config.checkpoint_every = plan.checkpoint_every;
    config
}

fn session<'a>(plan: &LibraryPlan, checkpoint: &'a Path) -> Session<'a> {
    if plan.reuse {
        Session {
            checkpoint_dir: Some(checkpoint),
            resume: true,
            stop_at: None,
        }
    } else {
        Session::default()
    }
}

/// Builds (or, with `reuse`, completes) the library of `domains` in `out_dir`
/// (see the module documentation).
pub fn build_library(
    plan: &LibraryPlan,
    domains: &[String],
    data: &mut dyn BuildData,
    out_dir: &Path,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<BuiltLibrary> {
    let mut phases = Vec::new();
    let mut reused = Vec::new();
    let started = Instant::now();

    // 1. The base model on the source domain.
    let model_dir = out_dir.join("model");
    let have_model = model_dir
        .join(semla_models::model_dir::CONFIG_FILE)
        .is_file()
        && model_dir
            .join(semla_models::model_dir::WEIGHTS_FILE)
            .is_file();
    if plan.reuse && have_model {
        reused.push("model".to_string());
        progress.note(&format!(
            "reusing the base model in {}",
            model_dir.display()
        ));
    } else {
        let source = data.base_source(progress)?;
        let pretrained = data.pretrained(device)?;
        let (model, varmap) = build_trainable(&plan.model, pretrained, plan.seed, device)?;
        let train = train_config(&plan.base, plan, plan.seed);
        let checkpoint = out_dir.join("checkpoints").join("model");
        progress.begin(
            &format!("training the base model on {}", plan.source),
            plan.base.steps as u64,
        );
        train_base(
            model.as_ref(),
            &varmap,
            device,
            &source,
            &train,
            &session(plan, &checkpoint),
            &mut |p| progress.training_step(p.step, p.loss),
        )?;
        progress.end();
        save_segmenter(model.as_ref(), &model_dir)?;
    }
    let base: Arc<dyn Segmenter> = Arc::from(load_segmenter(&model_dir, device)?);
    phases.push(("base".to_string(), started.elapsed().as_secs_f64()));

    // 2. One adapter and one prototype per domain.
    let started = Instant::now();
    let library_dir = out_dir.join("library");
    let embedder = plan.embedder.build(&BuildContext {
        device,
        model: Some(&base),
    })?;
    let adapters = AdapterPlan {
        library_dir: &library_dir,
        embedder: embedder.as_ref(),
        prototype_batch: plan.prototype_batch,
        reuse: plan.reuse,
    };
    reused.extend(build_adapters(
        &adapters,
        domains,
        &mut |i, name, progress| data.domain_source(i, name, progress),
        &mut |i, name, train_set, progress| {
            let seed = plan.seed.wrapping_add(1000 + i as u64);
            let lora = LoraTrainee::new(&base.sites(), &plan.lora, seed, device)?;
            let train = train_config(&plan.adapter, plan, seed);
            let checkpoint = out_dir.join("checkpoints").join(name);
            progress.begin(
                &format!("training adapter {name}"),
                plan.adapter.steps as u64,
            );
            train_adapter(
                base.as_ref(),
                &lora,
                device,
                train_set,
                &train,
                &session(plan, &checkpoint),
                &mut |p| progress.training_step(p.step, p.loss),
            )?;
            progress.end();
            Ok(lora.to_adapter(name)?)
        },
        device,
        progress,
    )?);
    phases.push((
        "adapters and prototypes".to_string(),
        started.elapsed().as_secs_f64(),
    ));
    Ok(BuiltLibrary {
        base,
        library_dir,
        embedder,
        reused,
        phases,
    })
}

/// Where [`build_adapters`] puts a library and how it makes the prototypes.
pub struct AdapterPlan<'a> {
    /// The library folder (created when missing).
    pub library_dir: &'a Path,
    /// The prototypes' embedder.
    pub embedder: &'a dyn Embed,
    /// Images embedded per forward pass for the prototypes.
    pub prototype_batch: usize,
    /// Reuse adapters (and prototypes of the same embedder) already there.
    pub reuse: bool,
}

/// The training samples of domain `index` (`name`).
pub type DomainData<'a> = dyn FnMut(usize, &str, &mut dyn Progress) -> Result<InMemorySource> + 'a;

/// Trains domain `index`'s (`name`'s) adapter on its training samples.
pub type TrainDomain<'a> =
    dyn FnMut(usize, &str, &InMemorySource, &mut dyn Progress) -> Result<Adapter> + 'a;

/// One adapter and one prototype per domain in `plan.library_dir`, however
/// the adapters are trained (with labels, or self-trained without): what is
/// there already is reused with [`AdapterPlan::reuse`], each new adapter is
/// added as soon as it is trained, and the prototypes (of `train`'s samples,
/// images only) are recorded after every domain, so an interrupted build
/// keeps what it made. Returns what was reused.
pub fn build_adapters(
    plan: &AdapterPlan<'_>,
    domains: &[String],
    data: &mut DomainData<'_>,
    train: &mut TrainDomain<'_>,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<Vec<String>> {
    let library_dir = plan.library_dir;
    let embedder = plan.embedder;
    let mut reused = Vec::new();
    std::fs::create_dir_all(library_dir).map_err(|e| BenchError::io(library_dir, e))?;
    // Prototypes made by another embedder (say, another downscale) are recomputed.
    let record = AdapterLibrary::open(library_dir)?.record().cloned();
    let same_embedder = record
        .as_ref()
        .is_none_or(|r| r.embedder_id == embedder.id());
    let mut prototypes = Vec::new();
    for (i, name) in domains.iter().enumerate() {
        let library = AdapterLibrary::open(library_dir)?;
        let have_adapter = plan.reuse && library.names().contains(&name.as_str());
        let have_prototype =
            have_adapter && same_embedder && library.entry(name).is_ok_and(|e| e.has_prototype());
        if have_adapter && have_prototype {
            reused.push(format!("adapter {name}"));
            let count = record
                .as_ref()
                .and_then(|r| r.images.get(name).copied())
                .unwrap_or(0);
            prototypes.push((name.clone(), library.prototype(name)?, count));
            continue;
        }
        let train_set = data(i, name, progress)?;
        if have_adapter {
            reused.push(format!("adapter {name} (prototype recomputed)"));
        } else {
            let adapter = train(i, name, &train_set, progress)?;
            let mut library = AdapterLibrary::open(library_dir)?;
            library.add(&adapter, None)?;
        }
        let (prototype, count) = source_prototype(
            embedder,
            &train_set,
            &EmbedOptions {
                batch_size: plan.prototype_batch,
                ..EmbedOptions::default()
            },
            name,
            device,
            progress,
        )?;
        prototypes.push((name.clone(), prototype, count));
        // Record after every domain, so that an interrupted run keeps what it has
        // (with a new embedder, only once all are made: the record is all-or-nothing).
        if same_embedder {
            record_prototypes(library_dir, &prototypes, embedder)?;
        }
    }
    record_prototypes(library_dir, &prototypes, embedder)?;
    Ok(reused)
}
