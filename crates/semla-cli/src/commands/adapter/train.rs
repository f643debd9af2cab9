//! `semla adapter train`: trains a LoRA adapter on a frozen base model and
//! saves it, in PEFT format with its domain prototype, into a library folder.
//!
//! Plain LoRA, or with `--init soma`, `--freeze-blocks` or weight-decay
//! annealing ([`super::soma::InitOptions`]). The prototype is made by the
//! embedder the library records (a new library: `backbone` of `--model`), so
//! the adapter joins the library's retrieval consistently.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use candle_core::Device;
use semla_adapters::{Adapter, AdapterLibrary};
use semla_core::NoProgress;
use semla_models::Segmenter;
use semla_pipeline::EmbedderSpec;
use semla_pipeline::embed::{BuildContext, identity};
use semla_pipeline::prototype::{EmbedOptions, domain_prototype};
use semla_train::lora::{LoraSettings, LoraTrainee};
use semla_train::runs::{adapter_trainee, train_adapter};
use semla_train::soma::{SomaSettings, SomaTrainee, adapted_sites, train_annealed, train_soma};
use semla_train::trainer::{Session, TrainSummary};

use super::super::Context;
use super::super::common::{CatSegOptions, LoadedModel, ModelArg, resolve, split_library_path};
use super::super::train::{DataOptions, TrainOptions, TrainingBar, report};
use super::soma::{InitChoice, InitOptions};

/// The LoRA hyper-parameters of a new adapter (`adapter train`, `adapter adapt`).
#[derive(clap::Args, Debug, Clone)]
pub struct LoraOptions {
    /// LoRA rank `r`.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// LoRA `alpha` (scale = alpha / r).
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    /// Use rsLoRA scaling (alpha / sqrt(r)).
    #[arg(long)]
    pub rslora: bool,
    /// Target module patterns, comma-separated (PEFT suffix matching; default: every adapter site).
    #[arg(long, value_delimiter = ',', value_name = "PATTERN,...")]
    pub targets: Vec<String>,
}

impl LoraOptions {
    /// The training crate's settings of these options.
    pub fn settings(&self) -> LoraSettings {
        LoraSettings {
            rank: self.rank,
            alpha: self.alpha,
            targets: self.targets.clone(),
            use_rslora: self.rslora,
        }
    }
}

/// Arguments of `semla adapter train`.
#[derive(clap::Args, Debug)]
pub struct AdapterTrainArgs {
    /// Frozen base model folder (`config.json`, `model.safetensors`), or
    /// `catseg:PATH` for CAT-Seg (trained as the official code does: the
    /// non-sliding forward, BCE with logits against one-hot targets), segmenting
    /// the domain's classes unless `--classes` chooses them.
    #[arg(long, value_name = "DIR|catseg:PATH")]
    pub model: PathBuf,
    /// Where to save the adapter: `LIBRARY/NAME` (the library folder is created if needed).
    #[arg(long, value_name = "LIB/NAME")]
    pub out: PathBuf,
    #[command(flatten)]
    pub lora: LoraOptions,
    /// Training images averaged into the adapter's prototype (with the embedder the
    /// library records; a new library: the base model's `backbone`).
    #[arg(long, default_value_t = 100)]
    pub prototype_images: usize,
    /// Replace an adapter of that name already in the library (its prototype too).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub data: DataOptions,
    #[command(flatten)]
    pub train: TrainOptions,
    /// `--init lora|soma`, `--freeze-blocks`, weight-decay annealing (see `soma`).
    #[command(flatten)]
    pub init: InitOptions,
    #[command(flatten)]
    pub catseg: CatSegOptions,
}

/// Runs `semla adapter train`.
pub fn run(args: AdapterTrainArgs, ctx: &Context) -> anyhow::Result<()> {
    let device = ctx.device()?;
    let (library_dir, name) = split_library_path(&args.out)?;
    refuse_existing(&library_dir, &name, args.force)?;
    let source = args.data.source()?;
    let model_arg = ModelArg::new(&args.model);
    let base = LoadedModel::load(&model_arg, &args.catseg, &device)?.for_domain(source.domain())?;
    semla_data::samples::check_classes(
        &source,
        base.num_classes(),
        &format!("domain {}", source.domain().name),
    )
    .map_err(|e| anyhow::anyhow!("{e} ({})", args.model.display()))?;
    let lora_settings = args.lora.settings();
    let config = args.train.config();
    std::fs::create_dir_all(&library_dir)
        .with_context(|| format!("creating the library folder {}", library_dir.display()))?;
    let checkpoint = library_dir.join(".checkpoints").join(&name);
    let session = Session {
        checkpoint_dir: Some(&checkpoint),
        resume: args.train.resume,
        stop_at: None,
    };
    let run = |f: &mut dyn FnMut(&mut TrainingBar) -> semla_train::error::Result<TrainSummary>| {
        let mut bar = TrainingBar::new(config.steps);
        let result = f(&mut bar);
        bar.finish();
        result
    };
    let options = &args.init;
    let (summary, adapter) = if !options.is_custom() {
        let lora = LoraTrainee::new(&base.sites(), &lora_settings, args.train.seed, &device)?;
        let summary = run(&mut |bar| {
            train_adapter(
                base.as_ref(),
                &lora,
                &device,
                &source,
                &config,
                &session,
                &mut |p| bar.update(p),
            )
        })?;
        (summary, lora.to_adapter(&name)?)
    } else {
        let settings = SomaSettings {
            lora: lora_settings,
            freeze_blocks: options.freeze_blocks,
        };
        let decay = options.anneal(config.steps)?;
        match options.init {
            InitChoice::Soma => {
                let soma = SomaTrainee::new(base.as_ref(), &settings, args.train.seed, &device)?;
                if !ctx.json {
                    eprintln!(
                        "SoMA: {} sites, rank {} (stored as rank {}), scale {}",
                        soma.lora().sites().len(),
                        args.lora.rank,
                        2 * args.lora.rank,
                        soma.scale()
                    );
                }
                let summary = run(&mut |bar| {
                    train_soma(
                        &soma,
                        &device,
                        &source,
                        &config,
                        decay,
                        &session,
                        &mut |p| bar.update(p),
                    )
                })?;
                (summary, soma.to_adapter(&name)?)
            }
            InitChoice::Lora => {
                let sites = adapted_sites(
                    base.as_ref(),
                    &settings.lora.targets,
                    settings.freeze_blocks,
                );
                let lora = LoraTrainee::new(&sites, &settings.lora, args.train.seed, &device)?;
                let trainee = adapter_trainee(base.as_ref(), &lora, &device);
                let summary = run(&mut |bar| {
                    train_annealed(&trainee, &source, &config, decay, &session, &mut |p| {
                        bar.update(p)
                    })
                })?;
                let mut adapter = lora.to_adapter(&name)?;
                // Name the adapted sites exactly, so frozen blocks stay untouched in PEFT too.
                adapter.config.target_modules = Some(semla_adapters::TargetModules::List(
                    adapter.sites.keys().cloned().collect(),
                ));
                (summary, adapter)
            }
        }
    };
    let from = PrototypeFrom {
        model: &args.model,
        domain: &args.data.domain,
        data_root: args.data.data_root.as_deref(),
        images: args.prototype_images,
        resize: args.data.resize,
    };
    store_with_prototype(&from, &library_dir, &adapter, &base, &device)?;
    report(ctx, &args.out, &summary, "adapter")
}

/// Before any training: an adapter `name` already in the library is refused
/// unless `force` replaces it.
pub fn refuse_existing(
    library_dir: &std::path::Path,
    name: &str,
    force: bool,
) -> anyhow::Result<()> {
    if force || !library_dir.is_dir() {
        return Ok(());
    }
    if AdapterLibrary::open(library_dir)?.contains(name) {
        anyhow::bail!(
            "the library {} already holds an adapter {name} (--force replaces it and its prototype)",
            library_dir.display()
        );
    }
    Ok(())
}

/// Where a new adapter's prototype comes from.
pub struct PrototypeFrom<'a> {
    /// The `--model` argument (its folder's `backbone` embeds for a library
    /// that records no embedder).
    pub model: &'a std::path::Path,
    /// The domain whose training images are averaged.
    pub domain: &'a str,
    /// Its dataset root.
    pub data_root: Option<&'a std::path::Path>,
    /// At most this many images.
    pub images: usize,
    /// Resize before embedding.
    pub resize: Option<(usize, usize)>,
}

/// Adds `adapter` to the library with its prototype: made by the embedder the
/// library records (a library without one: the base model's `backbone`). A
/// library whose other prototypes are of unknown origin (an official `loradb`)
/// gets the prototype unrecorded too.
pub fn store_with_prototype(
    from: &PrototypeFrom<'_>,
    library_dir: &std::path::Path,
    adapter: &Adapter,
    base: &Arc<dyn Segmenter>,
    device: &Device,
) -> anyhow::Result<()> {
    let mut library = AdapterLibrary::open(library_dir)?;
    let unrecorded = library.record().is_none()
        && library
            .entries()
            .any(|e| e.has_prototype() && e.name != adapter.name);
    // CAT-Seg's checkpoint is no model folder: its backbone embedder is built on
    // the loaded model.
    let default_dir = match ModelArg::new(from.model) {
        ModelArg::Folder(dir) => Some(dir),
        ModelArg::CatSeg(_) => None,
    };
    let spec = EmbedderSpec::resolve(None, library.record(), library_dir)
        .with_default_dir(default_dir.as_deref());
    let embedder = spec
        .build(&BuildContext {
            device,
            model: Some(base),
        })
        .with_context(|| format!("building the prototype embedder {spec}"))?;
    let domain = resolve(from.domain, from.data_root)?;
    let options = EmbedOptions {
        limit: Some(from.images),
        resize: from.resize,
        ..EmbedOptions::default()
    };
    let (prototype, count) = domain_prototype(
        embedder.as_ref(),
        &domain,
        &options,
        device,
        &mut NoProgress,
    )?;
    if unrecorded {
        tracing::warn!(
            "{} holds prototypes of an unrecorded embedder: the prototype of {} ({spec}) is not recorded either",
            library_dir.display(),
            adapter.name
        );
        library.replace(adapter, Some(&prototype))?;
    } else {
        library.replace(adapter, None)?;
        library.set_prototypes(
            &identity(embedder.as_ref(), library_dir),
            &[(adapter.name.clone(), prototype, count)],
        )?;
    }
    Ok(())
}
