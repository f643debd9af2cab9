//! `semla adapter adapt`: a library adapter for a new domain from its
//! unlabeled images, by CLOUDS' self-training (an EMA teacher's pseudo-labels,
//! optionally refined by a promptable mask model), then its prototype, added
//! to the library like any trained adapter.

use std::path::PathBuf;

use anyhow::Context as _;
use candle_core::Device;
use semla_data::{DomainSource, UnlabeledSource};
use semla_selftrain::{
    EmaSettings, GraphSegments, PromptRefiner, PseudoLabelRefiner, PseudoLabelStats,
    RefineSettings, RegionGrowing, SamProposer, SegmentVote, SelfTrainSettings, Unclaimed,
    self_train_adapter,
};
use semla_train::lora::LoraTrainee;
use semla_train::trainer::Session;

use super::super::Context;
use super::super::common::{CatSegOptions, LoadedModel, ModelArg, resolve, split_library_path};
use super::super::train::{TrainOptions, TrainingBar, report};
use super::train::{LoraOptions, PrototypeFrom, refuse_existing, store_with_prototype};

/// How the teacher's pseudo-labels are refined.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefineChoice {
    /// The teacher's argmax as it is.
    None,
    /// Weight-free: seeded region growing at three colour tolerances.
    Grow,
    /// Weight-free: Felzenszwalb graph segments at three scales.
    Graph,
    /// Weight-free, without prompts: each image segment takes the teacher's majority label.
    Vote,
    /// SAM from `--sam-checkpoint` (CLOUDS' refinement).
    Sam,
}

/// What a pixel that no refined mask claims becomes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnclaimedChoice {
    /// Unsupervised (the official masks' coverage).
    Ignore,
    /// The teacher's label.
    Teacher,
}

/// The self-training options shared by `semla adapter adapt` and `semla
/// train adapt`: the target batch, the teacher's EMA, the refinement.
#[derive(clap::Args, Debug)]
pub struct SelfTrainOptions {
    /// The new domain (e.g. `camvid-fog`): only its images are read, never its labels.
    #[arg(long, value_name = "D")]
    pub domain: String,
    /// Dataset root of `--domain` and `--source-domain` (default: `$DETECTRON2_DATASETS`).
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,
    /// Resize every image to HEIGHTxWIDTH when loading (e.g. 96x128).
    #[arg(long, value_name = "HxW", value_parser = super::super::common::parse_size)]
    pub resize: Option<(usize, usize)>,
    /// A labelled domain mixed into every step (`--batch` images of it), as
    /// CLOUDS trains on source ground truth and target pseudo-labels together.
    /// Without it, only the target's pseudo-labels train.
    #[arg(long, value_name = "D")]
    pub source_domain: Option<String>,
    /// Unlabeled target images per step.
    #[arg(long, default_value_t = 2)]
    pub target_batch: usize,
    /// The teacher's EMA weight (official `ALPHA_EMA`).
    #[arg(long, default_value_t = 0.999)]
    pub ema_alpha: f64,
    /// The teacher updates every this many steps (official `ITERATION_UPDATE`).
    #[arg(long, default_value_t = 100)]
    pub ema_every: usize,
    /// Refinement of the pseudo-labels.
    #[arg(long, value_enum, default_value = "none")]
    pub refine: RefineChoice,
    /// SAM checkpoint for `--refine sam`: `sam_vit_b_01ec64.pth`-style or MobileSAM's
    /// `mobile_sam.pt` (CLOUDS' default), `.pth` or `.safetensors`.
    #[arg(long, value_name = "PTH")]
    pub sam_checkpoint: Option<PathBuf>,
    /// A component becomes a prompt when its area is above this (official `SAM.SIZE_THRESHOLD`).
    #[arg(long, default_value_t = 5000)]
    pub min_area: usize,
    /// Random points per prompt (official `SAM.NUM_POINTS`).
    #[arg(long, default_value_t = 5)]
    pub points: usize,
    /// What a pixel no refined mask claims becomes.
    #[arg(long, value_enum, default_value = "ignore")]
    pub unclaimed: UnclaimedChoice,
}

/// The data, refiner and settings of a self-training run.
pub struct SelfTrainInputs {
    /// The new domain's train images (labels never opened).
    pub target: UnlabeledSource,
    /// The labelled source's train split, when given.
    pub source: Option<DomainSource>,
    /// The refinement, when any.
    pub refiner: Option<Box<dyn PseudoLabelRefiner>>,
    /// Target batch and EMA.
    pub settings: SelfTrainSettings,
}

impl SelfTrainOptions {
    /// Opens the data and builds the refiner these options name.
    pub fn inputs(&self, device: &Device) -> anyhow::Result<SelfTrainInputs> {
        if self.refine != RefineChoice::Sam && self.sam_checkpoint.is_some() {
            anyhow::bail!("--sam-checkpoint is used by --refine sam only");
        }
        let domain = resolve(&self.domain, self.data_root.as_deref())?;
        let target = UnlabeledSource::new(
            domain.clone(),
            semla_data::domains::Split::Train,
            self.resize,
        )?;
        let source = match &self.source_domain {
            Some(name) => Some(DomainSource::new(
                resolve(name, self.data_root.as_deref())?,
                semla_data::domains::Split::Train,
                self.resize,
            )?),
            None => None,
        };
        let settings = RefineSettings {
            min_area_px: self.min_area,
            points_per_component: self.points,
            ignore: domain.ignore_value,
            void: None,
            unclaimed: match self.unclaimed {
                UnclaimedChoice::Ignore => Unclaimed::Ignore,
                UnclaimedChoice::Teacher => Unclaimed::Teacher,
            },
        };
        let refiner: Option<Box<dyn PseudoLabelRefiner>> = match self.refine {
            RefineChoice::None => None,
            RefineChoice::Grow => Some(Box::new(PromptRefiner {
                proposer: RegionGrowing::default(),
                settings,
            })),
            RefineChoice::Graph => Some(Box::new(PromptRefiner {
                proposer: GraphSegments::default(),
                settings,
            })),
            RefineChoice::Vote => Some(Box::new(SegmentVote {
                ignore: domain.ignore_value,
                ..SegmentVote::default()
            })),
            RefineChoice::Sam => {
                let Some(path) = &self.sam_checkpoint else {
                    anyhow::bail!("--refine sam needs --sam-checkpoint PTH");
                };
                let sam = semla_models::sam::Sam::load(path, None, device)
                    .with_context(|| format!("loading SAM from {}", path.display()))?;
                Some(Box::new(PromptRefiner {
                    proposer: SamProposer::new(sam)?,
                    settings,
                }))
            }
        };
        Ok(SelfTrainInputs {
            target,
            source,
            refiner,
            settings: SelfTrainSettings {
                target_per_step: self.target_batch,
                ema: EmaSettings {
                    alpha: self.ema_alpha,
                    every: self.ema_every,
                },
            },
        })
    }
}

/// Arguments of `semla adapter adapt`.
#[derive(clap::Args, Debug)]
pub struct AdaptArgs {
    /// Frozen base model folder, or `catseg:PATH`.
    #[arg(long, value_name = "DIR|catseg:PATH")]
    pub model: PathBuf,
    /// Where to save the adapter: `LIBRARY/NAME` (the library folder is created if needed).
    #[arg(long, value_name = "LIB/NAME")]
    pub out: PathBuf,
    #[command(flatten)]
    pub selftrain: SelfTrainOptions,
    #[command(flatten)]
    pub lora: LoraOptions,
    /// Images of the new domain averaged into the adapter's prototype.
    #[arg(long, default_value_t = 100)]
    pub prototype_images: usize,
    /// Replace an adapter of that name already in the library.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub train: TrainOptions,
    #[command(flatten)]
    pub catseg: CatSegOptions,
}

/// Runs `semla adapter adapt`.
pub fn run(args: AdaptArgs, ctx: &Context) -> anyhow::Result<()> {
    let device = ctx.device()?;
    let (library_dir, name) = split_library_path(&args.out)?;
    refuse_existing(&library_dir, &name, args.force)?;
    let inputs = args.selftrain.inputs(&device)?;
    let domain = inputs.target.domain().clone();
    let base = LoadedModel::load(&ModelArg::new(&args.model), &args.catseg, &device)?
        .for_domain(&domain)?;
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
    let lora = LoraTrainee::new(&base.sites(), &lora_settings, args.train.seed, &device)?;
    let (summary, stats) = {
        let mut bar = TrainingBar::new(config.steps);
        let result = self_train_adapter(
            base.as_ref(),
            &lora,
            &device,
            inputs
                .source
                .as_ref()
                .map(|s| s as &dyn semla_data::SampleSource),
            &inputs.target,
            inputs.refiner.as_deref(),
            &config,
            &inputs.settings,
            &session,
            &mut |p| bar.update(p),
        );
        bar.finish();
        result?
    };
    let adapter = lora.to_adapter(&name)?;
    let from = PrototypeFrom {
        model: &args.model,
        domain: &args.selftrain.domain,
        data_root: args.selftrain.data_root.as_deref(),
        images: args.prototype_images,
        resize: args.selftrain.resize,
    };
    store_with_prototype(&from, &library_dir, &adapter, &base, &device)?;
    if !ctx.json {
        eprintln!("{}", describe(&stats));
    }
    report(ctx, &args.out, &summary, "adapter")
}

/// One line on what the teacher's labelling did.
pub fn describe(stats: &PseudoLabelStats) -> String {
    format!(
        "pseudo-labels: {} target images, {} prompts, {} without a prompt, {:.1} % of pixels unsupervised; {} teacher updates",
        stats.images,
        stats.prompts,
        stats.fallbacks,
        100.0 * stats.ignored_px as f64 / stats.total_px.max(1) as f64,
        stats.teacher_updates
    )
}
