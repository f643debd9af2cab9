//! SoMA training options of `semla adapter train` (`--init soma`,
//! `--freeze-blocks`, weight-decay annealing), and the adapter tools
//! `semla adapter bake` (merge an adapter into a model folder) and
//! `semla adapter extract` (the best rank-R adapter of a fine-tuned model).
//! The mechanisms live in [`semla_train::soma`].

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use candle_core::Device;
use semla_adapters::{Adapter, AdapterLibrary, peft};
use semla_models::segmenter::{Segmenter, load_segmenter, save_segmenter};
use semla_train::lora::{LoraSettings, LoraTrainee};
use semla_train::runs::{adapter_trainee, mean_embedding};
use semla_train::soma::{
    SomaSettings, SomaTrainee, WeightDecayAnneal, adapted_sites, bake, extract, train_annealed,
    train_soma,
};
use semla_train::trainer::{Session, TrainSummary};
use serde::Serialize;

use super::Context;
use super::adapter_train::{AdapterTrainArgs, split_library_path};
use super::train::{DataOptions, TrainingBar, report};

/// How `semla adapter train` initialises the adapter.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InitChoice {
    /// PEFT's LoRA init: Kaiming-uniform A, zero B.
    Lora,
    /// SoMA: A and B from the r smallest singular triplets of each weight;
    /// the base trains on the principal residual; the adapter is saved as an
    /// exact rank-2r LoRA relative to the original base.
    Soma,
}

/// Weight-decay schedules.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecaySchedule {
    /// AdamW's constant `--weight-decay`.
    Constant,
    /// Cosine from `--wd-start` to `--wd-end` over the run (SoMA's recipe).
    Cosine,
}

/// Initialisation and regularisation options of `semla adapter train`.
#[derive(clap::Args, Debug, Clone)]
pub struct InitOptions {
    /// Adapter initialisation.
    #[arg(long, value_enum, default_value = "lora")]
    pub init: InitChoice,
    /// Put no adapter on sites in the first N blocks (EfficientNet:
    /// `_blocks.K` with K < N; tiny segmenter: stem 0, down1 1, down2 2, head 3).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub freeze_blocks: usize,
    /// Weight-decay schedule (default: cosine with `--init soma`, constant otherwise).
    #[arg(long, value_enum)]
    pub wd_schedule: Option<DecaySchedule>,
    /// Weight decay at the first step of the cosine schedule.
    #[arg(long, default_value_t = 0.05)]
    pub wd_start: f64,
    /// Weight decay at the end of the cosine schedule.
    #[arg(long, default_value_t = 1e-5)]
    pub wd_end: f64,
}

impl InitOptions {
    fn schedule(&self) -> DecaySchedule {
        self.wd_schedule.unwrap_or(match self.init {
            InitChoice::Soma => DecaySchedule::Cosine,
            InitChoice::Lora => DecaySchedule::Constant,
        })
    }

    /// Whether these options need [`train_with_init`] (anything but plain LoRA
    /// with a constant decay and every targeted site).
    pub fn is_custom(&self) -> bool {
        self.init != InitChoice::Lora
            || self.freeze_blocks > 0
            || self.schedule() == DecaySchedule::Cosine
    }

    fn anneal(&self, steps: usize) -> anyhow::Result<Option<WeightDecayAnneal>> {
        if self.schedule() == DecaySchedule::Constant {
            return Ok(None);
        }
        for (flag, v) in [("--wd-start", self.wd_start), ("--wd-end", self.wd_end)] {
            if !(v.is_finite() && v >= 0.0) {
                bail!("{flag} must be a non-negative number, got {v}");
            }
        }
        Ok(Some(WeightDecayAnneal {
            start: self.wd_start,
            end: self.wd_end,
            total_steps: steps,
        }))
    }
}

/// `semla adapter train` with SoMA init, frozen blocks or annealed weight
/// decay: trains, then stores the adapter (rank 2r for SoMA) with the base
/// model's prototype in the library, like plain LoRA training.
pub fn train_with_init(
    args: &AdapterTrainArgs,
    base: &dyn Segmenter,
    ctx: &Context,
) -> anyhow::Result<()> {
    let device = Device::Cpu;
    let (library_dir, name) = split_library_path(&args.out)?;
    let source = args.data.source()?;
    if source.domain().num_classes() != base.num_classes() {
        bail!(
            "domain {} has {} classes but the model {} predicts {}",
            source.domain().name,
            source.domain().num_classes(),
            args.model.display(),
            base.num_classes()
        );
    }
    let options = &args.init;
    let settings = SomaSettings {
        lora: LoraSettings {
            rank: args.rank,
            alpha: args.alpha,
            targets: args.targets.clone(),
            use_rslora: args.rslora,
        },
        freeze_blocks: options.freeze_blocks,
    };
    let config = args.train.config();
    let decay = options.anneal(config.steps)?;
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
    let (summary, adapter) = match options.init {
        InitChoice::Soma => {
            let soma = SomaTrainee::new(base, &settings, args.train.seed, &device)?;
            if !ctx.json {
                eprintln!(
                    "SoMA: {} sites, rank {} (stored as rank {}), scale {}",
                    soma.lora().sites().len(),
                    args.rank,
                    2 * args.rank,
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
            let sites = adapted_sites(base, &settings.lora.targets, settings.freeze_blocks);
            let lora = LoraTrainee::new(&sites, &settings.lora, args.train.seed, &device)?;
            let trainee = adapter_trainee(base, &lora, &device);
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
    };
    let prototype_source = DataOptions {
        split: semla_data::domains::Split::Train,
        ..args.data.clone()
    }
    .source()?;
    let prototype = mean_embedding(base, &prototype_source, args.prototype_images, &device)?;
    let mut library = AdapterLibrary::open(&library_dir)?;
    library.add(&adapter, Some(&prototype))?;
    report(ctx, &args.out, &summary, "adapter")
}

/// Arguments of `semla adapter bake`.
#[derive(clap::Args, Debug)]
pub struct BakeArgs {
    /// Base model folder (`config.json`, `model.safetensors`).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// The adapter: `LIB/NAME` in a library, or a PEFT adapter folder.
    #[arg(long, value_name = "LIB/NAME")]
    pub adapter: PathBuf,
    /// Output model folder (written to a temporary folder, then renamed).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace `--out` if it already exists.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `semla adapter extract`.
#[derive(clap::Args, Debug)]
pub struct ExtractArgs {
    /// The base model folder.
    #[arg(long, value_name = "DIR")]
    pub base: PathBuf,
    /// The fully fine-tuned model folder (same kind and shape as `--base`).
    #[arg(long, value_name = "DIR")]
    pub tuned: PathBuf,
    /// Rank of the adapter (`lora_alpha` = rank, i.e. scale 1).
    #[arg(long, value_name = "R")]
    pub rank: usize,
    /// Where to save it: `LIB/NAME` (the library folder is created if needed).
    #[arg(long, value_name = "LIB/NAME")]
    pub out: PathBuf,
    /// Sites whose largest absolute change is at most this are left out.
    #[arg(long, default_value_t = 0.0)]
    pub tolerance: f64,
}

/// Loads `LIB/NAME` from a library, or a PEFT folder directly.
fn load_adapter_arg(path: &Path) -> anyhow::Result<Adapter> {
    if path.join(peft::CONFIG_FILE).is_file() {
        return Ok(peft::load_adapter(path)?);
    }
    let (library_dir, name) = split_library_path(path)?;
    let library = AdapterLibrary::open(&library_dir)
        .with_context(|| format!("cannot open adapter library {}", library_dir.display()))?;
    Ok(library.load(&name)?)
}

#[derive(Serialize)]
struct BakeReport<'a> {
    out: &'a Path,
    adapter: &'a str,
    sites: Vec<&'a str>,
}

/// Runs `semla adapter bake`.
pub fn run_bake(args: BakeArgs, ctx: &Context) -> anyhow::Result<()> {
    let device = Device::Cpu;
    let mut model = load_segmenter(&args.model, &device)?;
    let adapter = load_adapter_arg(&args.adapter)?;
    bake(model.as_mut(), &adapter).with_context(|| {
        format!(
            "baking {} into {}",
            args.adapter.display(),
            args.model.display()
        )
    })?;
    write_model_dir(model.as_ref(), &args.out, args.force)?;
    let report = BakeReport {
        out: &args.out,
        adapter: &adapter.name,
        sites: adapter.sites.keys().map(String::as_str).collect(),
    };
    if ctx.json {
        ctx.print_json(&report)
    } else {
        println!(
            "baked adapter {} ({} sites) into {} -> {}",
            adapter.name,
            report.sites.len(),
            args.model.display(),
            args.out.display()
        );
        Ok(())
    }
}

/// Writes a model folder atomically: into a temporary sibling folder, then
/// renamed into place (an existing folder is replaced only with `force`).
fn write_model_dir(model: &dyn Segmenter, out: &Path, force: bool) -> anyhow::Result<()> {
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .with_context(|| format!("`{}` is not a folder name", out.display()))?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if out.exists() && !force {
        bail!(
            "{} already exists (use --force to replace it)",
            out.display()
        );
    }
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = parent.join(format!(".{name}.tmp{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    save_segmenter(model, &tmp)?;
    if out.exists() {
        let old = parent.join(format!(".{name}.old{}", std::process::id()));
        std::fs::rename(out, &old).with_context(|| format!("moving {} aside", out.display()))?;
        std::fs::rename(&tmp, out).with_context(|| format!("renaming into {}", out.display()))?;
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    } else {
        std::fs::rename(&tmp, out).with_context(|| format!("renaming into {}", out.display()))?;
    }
    Ok(())
}

#[derive(Serialize)]
struct ExtractReport<'a> {
    out: &'a Path,
    rank: usize,
    sites: &'a [semla_train::soma::ExtractedSite],
    not_carried: &'a [semla_train::soma::UncapturedWeight],
}

/// Runs `semla adapter extract`.
pub fn run_extract(args: ExtractArgs, ctx: &Context) -> anyhow::Result<()> {
    let device = Device::Cpu;
    let (library_dir, name) = split_library_path(&args.out)?;
    let base = load_segmenter(&args.base, &device)?;
    let tuned = load_segmenter(&args.tuned, &device)?;
    let extraction = extract(
        base.as_ref(),
        tuned.as_ref(),
        args.rank,
        args.tolerance,
        &name,
    )
    .with_context(|| {
        format!(
            "extracting {} relative to {}",
            args.tuned.display(),
            args.base.display()
        )
    })?;
    std::fs::create_dir_all(&library_dir)
        .with_context(|| format!("creating the library folder {}", library_dir.display()))?;
    let mut library = AdapterLibrary::open(&library_dir)?;
    library.add(&extraction.adapter, None)?;
    for w in &extraction.uncaptured {
        eprintln!(
            "warning: {} differs (max |diff| {:.3e}) but is not an adapter site; the adapter does not carry it",
            w.key, w.max_abs_diff
        );
    }
    let report = ExtractReport {
        out: &args.out,
        rank: args.rank,
        sites: &extraction.sites,
        not_carried: &extraction.uncaptured,
    };
    if ctx.json {
        return ctx.print_json(&report);
    }
    println!(
        "extracted a rank-{} adapter at {} sites -> {} (no prototype: add one before retrieval)",
        args.rank,
        extraction.sites.len(),
        args.out.display()
    );
    for s in &extraction.sites {
        println!(
            "  {:<40} |delta| {:.4e}  missed {:.4e}  rank kept {}",
            s.path, s.delta_norm, s.residual_norm, s.kept_rank
        );
    }
    Ok(())
}
