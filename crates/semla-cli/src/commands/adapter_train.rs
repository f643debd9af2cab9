//! `semla adapter train`: trains a LoRA adapter on a frozen base model and
//! saves it, in PEFT format with its domain prototype, into a library folder.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use candle_core::Device;
use semla_adapters::AdapterLibrary;
use semla_models::segmenter::load_segmenter;
use semla_train::lora::{LoraSettings, LoraTrainee};
use semla_train::runs::{mean_embedding, train_adapter};
use semla_train::trainer::Session;

use super::Context;
use super::train::{DataOptions, TrainOptions, TrainingBar, report};

/// Arguments of `semla adapter train`.
#[derive(clap::Args, Debug)]
pub struct AdapterTrainArgs {
    /// Frozen base model folder (`config.json`, `model.safetensors`).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Where to save the adapter: `LIBRARY/NAME` (the library folder is created if needed).
    #[arg(long, value_name = "LIB/NAME")]
    pub out: PathBuf,
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
    /// Training images averaged into the adapter's prototype (the base model's embedding).
    #[arg(long, default_value_t = 100)]
    pub prototype_images: usize,
    #[command(flatten)]
    pub data: DataOptions,
    #[command(flatten)]
    pub train: TrainOptions,
    /// `--init lora|soma`, `--freeze-blocks`, weight-decay annealing (see `adapter_tools`).
    #[command(flatten)]
    pub init: super::adapter_tools::InitOptions,
}

/// Splits `LIB/NAME` into the library folder and the adapter name.
pub fn split_library_path(path: &Path) -> anyhow::Result<(PathBuf, String)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && !n.starts_with('.'))
        .with_context(|| {
            format!(
                "`{}` does not end in an adapter name (expected LIB/NAME)",
                path.display()
            )
        })?;
    let library = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok((library.to_path_buf(), name.to_string()))
}

/// Runs `semla adapter train`.
pub fn run(args: AdapterTrainArgs, ctx: &Context) -> anyhow::Result<()> {
    let device = Device::Cpu;
    let (library_dir, name) = split_library_path(&args.out)?;
    let base = load_segmenter(&args.model, &device)?;
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
    if args.init.is_custom() {
        return super::adapter_tools::train_with_init(&args, base.as_ref(), ctx);
    }
    let settings = LoraSettings {
        rank: args.rank,
        alpha: args.alpha,
        targets: args.targets.clone(),
        use_rslora: args.rslora,
    };
    let lora = LoraTrainee::new(&base.sites(), &settings, args.train.seed, &device)?;
    let config = args.train.config();
    std::fs::create_dir_all(&library_dir)
        .with_context(|| format!("creating the library folder {}", library_dir.display()))?;
    let checkpoint = library_dir.join(".checkpoints").join(&name);
    let session = Session {
        checkpoint_dir: Some(&checkpoint),
        resume: args.train.resume,
        stop_at: None,
    };
    let summary = {
        let mut bar = TrainingBar::new(config.steps);
        let result = train_adapter(
            base.as_ref(),
            &lora,
            &device,
            &source,
            &config,
            &session,
            &mut |p| bar.update(p),
        );
        bar.finish();
        result?
    };
    let prototype_source = DataOptions {
        split: semla_data::domains::Split::Train,
        ..args.data.clone()
    }
    .source()?;
    let prototype = mean_embedding(
        base.as_ref(),
        &prototype_source,
        args.prototype_images,
        &device,
    )?;
    let adapter = lora.to_adapter(&name)?;
    let mut library = AdapterLibrary::open(&library_dir)?;
    library.add(&adapter, Some(&prototype))?;
    report(ctx, &args.out, &summary, "adapter")
}
