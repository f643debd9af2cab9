//! `semla train base`: trains a whole segmenter on a domain's training split;
//! `semla train adapt`: self-trains a model's head on a new domain's
//! unlabeled images (CLOUDS); and the training options shared with `semla
//! adapter train` and `semla adapter adapt`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressStyle};
use semla_data::DomainSource;
use semla_data::domains::Split;
use semla_models::efficientnet::{EfficientLiteSegConfig, pretrained_varmap};
use semla_models::tiny::TinySegConfig;
use semla_models::{SegmenterConfig, save_segmenter};
use semla_train::augment::AugmentConfig;
use semla_train::optim::AdamWConfig;
use semla_train::runs::{build_trainable, train_base};
use semla_train::trainer::{Progress, Session, TrainConfig, TrainSummary};

use super::Context;

/// Arguments of `semla train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    #[command(subcommand)]
    command: TrainCommand,
}

#[derive(clap::Subcommand, Debug)]
enum TrainCommand {
    /// Train every weight of a segmenter (optionally from a pretrained backbone).
    Base(BaseArgs),
    /// CLOUDS' self-training of a model's head on a new domain's unlabeled
    /// images (the backbone frozen, an EMA teacher of the head): a new model folder.
    Adapt(HeadAdaptArgs),
}

/// Arguments of `semla train adapt`.
#[derive(clap::Args, Debug)]
pub struct HeadAdaptArgs {
    /// The model folder to start from (left as it is).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Output model folder (`config.json`, `model.safetensors`; checkpoints in `checkpoint/`).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace the model already in `--out` (without it, an existing model is
    /// refused unless `--resume` continues its training).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub selftrain: super::adapter::adapt::SelfTrainOptions,
    #[command(flatten)]
    pub train: TrainOptions,
}

/// Model kinds `semla train base` can build.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ModelKind {
    /// The tiny segmenter (a few convolutions; seconds to train).
    Tiny,
    /// EfficientNet-Lite0 backbone with an LR-ASPP head.
    #[value(name = "efficientnet-lite0")]
    EfficientNetLite0,
}

/// Where the training images come from.
#[derive(clap::Args, Debug, Clone)]
pub struct DataOptions {
    /// Domain name (e.g. `camvid`, `camvid/0001TP`, `acdc-fog`).
    #[arg(long, value_name = "D")]
    pub domain: String,
    /// Dataset root (default: `$DETECTRON2_DATASETS`).
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,
    /// Split to train on.
    #[arg(long, default_value = "train", value_name = "SPLIT")]
    pub split: Split,
    /// Resize every image to HEIGHTxWIDTH when loading (e.g. 96x128).
    #[arg(long, value_name = "HxW", value_parser = super::common::parse_size)]
    pub resize: Option<(usize, usize)>,
}

impl DataOptions {
    /// The sample source these options name.
    pub fn source(&self) -> anyhow::Result<DomainSource> {
        let domain = super::common::resolve(&self.domain, self.data_root.as_deref())?;
        Ok(DomainSource::new(domain, self.split, self.resize)?)
    }
}

/// Optimisation options shared by `semla train base` and `semla adapter train`.
#[derive(clap::Args, Debug, Clone)]
pub struct TrainOptions {
    /// Optimizer steps.
    #[arg(long, default_value_t = 1000)]
    pub steps: usize,
    /// Images per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Final learning rate of the cosine decay.
    #[arg(long, default_value_t = 0.0)]
    pub min_lr: f64,
    /// Linear warmup steps (default: 5 % of the steps).
    #[arg(long)]
    pub warmup: Option<usize>,
    /// AdamW decoupled weight decay.
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Clip gradients to this global L2 norm (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Random crop HEIGHTxWIDTH after scaling (default: the image's own size).
    #[arg(long, value_name = "HxW", value_parser = super::common::parse_size)]
    pub crop: Option<(usize, usize)>,
    /// Smallest random scale.
    #[arg(long, default_value_t = 0.5)]
    pub min_scale: f64,
    /// Largest random scale.
    #[arg(long, default_value_t = 2.0)]
    pub max_scale: f64,
    /// Do not flip images horizontally.
    #[arg(long)]
    pub no_flip: bool,
    /// Seed of every random choice (initialisation, batches, augmentation).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write a checkpoint every N steps (always at the end).
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<usize>,
    /// Continue from the checkpoint of an earlier run with the same output, if any.
    #[arg(long)]
    pub resume: bool,
}

impl TrainOptions {
    /// The training configuration of these options.
    pub fn config(&self) -> TrainConfig {
        let mut c = TrainConfig::new(self.steps, self.batch, self.lr);
        c.min_lr = self.min_lr;
        if let Some(w) = self.warmup {
            c.warmup_steps = w;
        }
        c.optimizer = AdamWConfig {
            weight_decay: self.weight_decay,
            ..AdamWConfig::default()
        };
        c.max_grad_norm = (self.clip > 0.0).then_some(self.clip);
        c.augment = AugmentConfig {
            min_scale: self.min_scale,
            max_scale: self.max_scale,
            flip_probability: if self.no_flip { 0.0 } else { 0.5 },
            crop: self.crop,
        };
        c.seed = self.seed;
        c.checkpoint_every = self.checkpoint_every;
        c
    }
}

/// Arguments of `semla train base`.
#[derive(clap::Args, Debug)]
pub struct BaseArgs {
    /// Which model to build.
    #[arg(long, value_enum)]
    pub model_kind: ModelKind,
    /// Pretrained EfficientNet-Lite0 `.pth` for the backbone (efficientnet-lite0 only).
    #[arg(long, value_name = "PTH")]
    pub weights: Option<PathBuf>,
    /// Channels of the tiny segmenter's stem.
    #[arg(long, default_value_t = 16)]
    pub width: usize,
    /// Output model folder (`config.json`, `model.safetensors`; checkpoints in `checkpoint/`).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace the model already in `--out` (without it, an existing model is
    /// refused unless `--resume` continues its training).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub data: DataOptions,
    #[command(flatten)]
    pub train: TrainOptions,
}

/// Runs `semla train`.
pub fn run(args: TrainArgs, ctx: &Context) -> anyhow::Result<()> {
    match args.command {
        TrainCommand::Base(args) => run_base(args, ctx),
        TrainCommand::Adapt(args) => run_adapt(args, ctx),
    }
}

/// Refuses to overwrite the model in `out` unless `force` (or `resume`, which continues it).
fn refuse_existing_model(out: &Path, force: bool, resume: bool) -> anyhow::Result<()> {
    super::common::check_out_folder(out)?;
    if out.join(semla_models::model_dir::CONFIG_FILE).exists() && !force && !resume {
        bail!(
            "{} already holds a model (--force replaces it, --resume continues its training)",
            out.display()
        );
    }
    Ok(())
}

fn run_adapt(args: HeadAdaptArgs, ctx: &Context) -> anyhow::Result<()> {
    let device = ctx.device()?;
    refuse_existing_model(&args.out, args.force, args.train.resume)?;
    let same = |a: &Path, b: &Path| {
        a.canonicalize()
            .ok()
            .is_some_and(|a| b.canonicalize().ok() == Some(a))
    };
    if same(&args.model, &args.out) {
        bail!("--out is the --model folder: write the adapted model elsewhere");
    }
    let inputs = args.selftrain.inputs(&device)?;
    let start = semla_models::load_segmenter(&args.model, &device)
        .with_context(|| format!("loading the model {}", args.model.display()))?;
    let config = start.config();
    let (model, params) = semla_train::runs::with_trainable_part(
        start.as_ref(),
        &|name| config.is_head_weight(name),
        &device,
    )?;
    drop(start);
    let train_config = args.train.config();
    let checkpoint = args.out.join("checkpoint");
    let session = Session {
        checkpoint_dir: Some(&checkpoint),
        resume: args.train.resume,
        stop_at: None,
    };
    let (summary, stats) = {
        let mut bar = TrainingBar::new(train_config.steps);
        let result = semla_selftrain::self_train(
            semla_selftrain::Student::Weights {
                model: model.as_ref(),
                params: &params,
            },
            &device,
            inputs
                .source
                .as_ref()
                .map(|s| s as &dyn semla_data::SampleSource),
            &inputs.target,
            inputs.refiner.as_deref(),
            &train_config,
            &inputs.settings,
            &session,
            &mut |p| bar.update(p),
        );
        bar.finish();
        result?
    };
    save_segmenter(model.as_ref(), &args.out)?;
    if !ctx.json {
        eprintln!("{}", super::adapter::adapt::describe(&stats));
    }
    report(ctx, &args.out, &summary, "model")
}

fn run_base(args: BaseArgs, ctx: &Context) -> anyhow::Result<()> {
    let device = ctx.device()?;
    refuse_existing_model(&args.out, args.force, args.train.resume)?;
    let source = args.data.source()?;
    let domain = source.domain();
    let classes = domain.classes.clone();
    let config = match args.model_kind {
        ModelKind::Tiny => {
            if args.weights.is_some() {
                bail!("--weights applies to efficientnet-lite0 only");
            }
            SegmenterConfig::Tiny(TinySegConfig {
                num_classes: classes.len(),
                width: args.width,
                class_names: classes,
            })
        }
        ModelKind::EfficientNetLite0 => {
            let mut c = EfficientLiteSegConfig::new(classes.len());
            c.class_names = classes;
            SegmenterConfig::EfficientLite0(c)
        }
    };
    let pretrained = match &args.weights {
        Some(pth) => Some(
            pretrained_varmap(pth, &device)
                .with_context(|| format!("loading pretrained weights {}", pth.display()))?,
        ),
        None => None,
    };
    let (model, varmap) = build_trainable(&config, pretrained, args.train.seed, &device)
        .context("building the model")?;
    let train_config = args.train.config();
    let checkpoint = args.out.join("checkpoint");
    let session = Session {
        checkpoint_dir: Some(&checkpoint),
        resume: args.train.resume,
        stop_at: None,
    };
    let summary = {
        let mut bar = TrainingBar::new(train_config.steps);
        let result = train_base(
            model.as_ref(),
            &varmap,
            &device,
            &source,
            &train_config,
            &session,
            &mut |p| bar.update(p),
        );
        bar.finish();
        result?
    };
    save_segmenter(model.as_ref(), &args.out)?;
    report(ctx, &args.out, &summary, "model")
}

/// The progress bar of a training run: step, loss, speed and ETA.
pub struct TrainingBar {
    bar: ProgressBar,
    smoothed_loss: Option<f32>,
}

impl TrainingBar {
    /// A bar for `total` steps, drawn on stderr.
    pub fn new(total: usize) -> Self {
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}  {per_sec}  eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(Duration::from_millis(250));
        Self {
            bar,
            smoothed_loss: None,
        }
    }

    /// Shows a step's progress.
    pub fn update(&mut self, p: &Progress) {
        let smoothed = match self.smoothed_loss {
            Some(s) => 0.9 * s + 0.1 * p.loss,
            None => p.loss,
        };
        self.smoothed_loss = Some(smoothed);
        self.bar.set_position(p.step as u64);
        self.bar
            .set_message(format!("loss {smoothed:.4}  lr {:.2e}", p.lr));
    }

    /// Leaves the bar in its final state.
    pub fn finish(&self) {
        self.bar.finish();
    }
}

/// Prints the outcome of a run.
pub fn report(ctx: &Context, out: &Path, summary: &TrainSummary, what: &str) -> anyhow::Result<()> {
    let tail = summary.losses.len().min(20);
    let final_loss = if tail == 0 {
        None
    } else {
        Some(
            summary.losses[summary.losses.len() - tail..]
                .iter()
                .sum::<f32>()
                / tail as f32,
        )
    };
    if ctx.json {
        ctx.print_json(&serde_json::json!({
            "output": out,
            "start_step": summary.start_step,
            "end_step": summary.end_step,
            "seconds": summary.seconds,
            "final_loss_mean_last_20": final_loss,
            "losses": summary.losses,
        }))
    } else {
        println!(
            "{what} written to {} (steps {}..{}, {:.1} s{})",
            out.display(),
            summary.start_step,
            summary.end_step,
            summary.seconds,
            final_loss
                .map(|l| format!(", loss over the last steps {l:.4}"))
                .unwrap_or_default()
        );
        Ok(())
    }
}
