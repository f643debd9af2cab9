//! `semla csi train`: DACS self-training towards a target domain whose
//! taxonomy the source labels lack, with CSI's relabeling of the teacher's
//! pseudo-labels inside boxes a classifier agrees with. Writes a model
//! folder (`--out`) or a library adapter (`--adapter`), and the relabeling
//! report (`csi-report.json`, `csi-boxes.png`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use semla_csi::classify::ClassifierSpec;
use semla_csi::report::write_report;
use semla_csi::train::{CsiOutcome, Relabeling};
use semla_csi::{CsiConfig, Taxonomy};
use semla_data::domains::Split;
use semla_data::{DomainSource, RemappedSource, UnlabeledSource};
use semla_models::{Segmenter, save_segmenter};
use semla_selftrain::{DacsSettings, Student};
use semla_train::lora::LoraTrainee;
use semla_train::trainer::Session;

use super::Context;
use super::adapter::train::{LoraOptions, PrototypeFrom, refuse_existing, store_with_prototype};
use super::common::{CatSegOptions, LoadedModel, ModelArg, resolve, split_library_path};
use super::train::{TrainOptions, TrainingBar, report};

/// Arguments of `semla csi`.
#[derive(clap::Args, Debug)]
pub struct CsiArgs {
    #[command(subcommand)]
    command: CsiCommand,
}

#[derive(clap::Subcommand, Debug)]
enum CsiCommand {
    /// DACS on an unlabeled target with CSI's relabeling into classes the
    /// source labels lack: a model folder or a library adapter, and a report.
    Train(Box<CsiTrainArgs>),
}

/// What a DACS student trains of a model folder.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trains {
    /// Every weight (DAFormer's DACS).
    All,
    /// The head only, the backbone frozen.
    Head,
}

/// Arguments of `semla csi train`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("output").required(true).args(["out", "adapter"])))]
pub struct CsiTrainArgs {
    /// The model folder to start from (left as it is), or `catseg:PATH` with `--adapter`.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Write the adapted model to this folder.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Train a LoRA adapter on the frozen model instead and add it to a
    /// library as `LIBRARY/NAME`, with its prototype.
    #[arg(long, value_name = "LIB/NAME")]
    pub adapter: Option<PathBuf>,
    /// With `--out`: what trains.
    #[arg(long, value_enum, default_value = "all")]
    pub trains: Trains,
    /// The relabeling config (YAML: `relabeling_cfg` tuples and the collect
    /// and relabel windows, in the official form).
    #[arg(long, value_name = "YAML")]
    pub relabel: Option<PathBuf>,
    /// Plain DACS, no relabeling (the baseline).
    #[arg(long, conflicts_with = "relabel")]
    pub no_relabel: bool,
    /// The classifier: `imagenet:PTH` (the ImageNet EfficientNet-Lite0 with
    /// its concept map), `clip:DIR` (CLIP zero-shot on the raw concept
    /// strings, as CSI) or `clip-templates:DIR` (with prompt templates).
    #[arg(long, value_name = "KIND:PATH")]
    pub classifier: Option<ClassifierSpec>,
    /// Side in pixels the ImageNet classifier resizes each box to.
    #[arg(long, default_value_t = 224)]
    pub classifier_px: u32,
    /// The labelled source domain (e.g. `camvid-day`).
    #[arg(long, value_name = "D")]
    pub source_domain: String,
    /// The unlabeled target domain (e.g. `camvid-dusk`): only its images are read.
    #[arg(long, value_name = "D")]
    pub domain: String,
    /// Source classes labelled as another (coarse labels from fine ones), e.g. `Bicyclist=Pedestrian,SignSymbol=Pole`.
    #[arg(long, value_name = "FROM=INTO,...")]
    pub source_merge: Option<String>,
    /// Source classes left unlabelled (an open class), e.g. `Bicyclist`.
    #[arg(long, value_name = "CLASS,...")]
    pub source_drop: Option<String>,
    /// Dataset root of both domains (default: `$DETECTRON2_DATASETS`).
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,
    /// Resize every image to HEIGHTxWIDTH when loading.
    #[arg(long, value_name = "HxW", value_parser = super::common::parse_size)]
    pub resize: Option<(usize, usize)>,
    /// The teacher's EMA ceiling (the ramp is `min(1 - 1/(t+1), alpha)`).
    #[arg(long, default_value_t = 0.999)]
    pub ema_alpha: f64,
    /// Top probability of a confident pseudo-labelled pixel.
    #[arg(long, default_value_t = 0.968)]
    pub pseudo_threshold: f32,
    /// Where the relabeling report goes (default: `--out`, or `LIB/.reports/NAME`).
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Replace an existing output.
    #[arg(long)]
    pub force: bool,
    /// Images of the target averaged into the adapter's prototype (`--adapter`).
    #[arg(long, default_value_t = 100)]
    pub prototype_images: usize,
    #[command(flatten)]
    pub lora: LoraOptions,
    #[command(flatten)]
    pub train: TrainOptions,
    #[command(flatten)]
    pub catseg: CatSegOptions,
}

/// Runs `semla csi`.
pub fn run(args: CsiArgs, ctx: &Context) -> anyhow::Result<()> {
    match args.command {
        CsiCommand::Train(args) => run_train(*args, ctx),
    }
}

/// The taxonomy of a domain: CamVid's built-in one, or one category per
/// class named by the class itself.
fn taxonomy_for(classes: &[String]) -> Taxonomy {
    let camvid = Taxonomy::camvid();
    if camvid.classes == classes {
        return camvid;
    }
    Taxonomy {
        classes: classes.to_vec(),
        categories: classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.clone(), vec![i]))
            .collect(),
        concepts: classes.iter().map(|c| vec![c.to_lowercase()]).collect(),
    }
}

fn run_train(args: CsiTrainArgs, ctx: &Context) -> anyhow::Result<()> {
    let device = ctx.device()?;
    let target_domain = resolve(&args.domain, args.data_root.as_deref())?;
    let source_domain = resolve(&args.source_domain, args.data_root.as_deref())?;
    if source_domain.classes != target_domain.classes {
        bail!(
            "{} and {} label different classes: CSI needs one label space (coarse source labels come from --source-merge / --source-drop)",
            args.source_domain,
            args.domain
        );
    }
    let taxonomy = taxonomy_for(&target_domain.classes);
    let relabeling_config = match (&args.relabel, args.no_relabel) {
        (Some(path), false) => Some(CsiConfig::from_file(path, &taxonomy)?),
        (None, true) => None,
        _ => bail!("give --relabel YAML, or --no-relabel for plain DACS"),
    };
    let classifier = match (&relabeling_config, &args.classifier) {
        (Some(_), Some(spec)) => {
            let spec = match spec {
                ClassifierSpec::ImageNet { weights, .. } => ClassifierSpec::ImageNet {
                    weights: weights.clone(),
                    input_px: args.classifier_px,
                },
                other => other.clone(),
            };
            Some(spec.load(&device)?)
        }
        (Some(_), None) => bail!("--relabel needs --classifier imagenet:PTH or clip:DIR"),
        (None, Some(_)) => bail!("--classifier is used with --relabel only"),
        (None, None) => None,
    };
    let merges = match &args.source_merge {
        Some(text) => taxonomy.parse_merges(text)?,
        None => Vec::new(),
    };
    let drops = match &args.source_drop {
        Some(text) => taxonomy.parse_classes(text)?,
        None => Vec::new(),
    };
    let ignore = u32::from(source_domain.ignore_value);
    let source = RemappedSource::new(
        DomainSource::new(source_domain, Split::Train, args.resize)?,
        taxonomy.coarse_label_map(&merges, &drops, ignore),
    );
    let target = UnlabeledSource::new(target_domain.clone(), Split::Train, args.resize)?;
    let dacs = DacsSettings {
        alpha: args.ema_alpha,
        pseudo_threshold: args.pseudo_threshold,
        ..DacsSettings::default()
    };
    let relabeling = match (relabeling_config, classifier.as_deref()) {
        (Some(config), Some(classifier)) => Some(Relabeling { config, classifier }),
        _ => None,
    };
    let train_config = args.train.config();
    let palette = target_domain.palette;
    let ignore16 = target_domain.ignore_value;
    let run = |student: Student<'_>, checkpoint: &Path| -> anyhow::Result<CsiOutcome> {
        let session = Session {
            checkpoint_dir: Some(checkpoint),
            resume: args.train.resume,
            stop_at: None,
        };
        let mut bar = TrainingBar::new(train_config.steps);
        let result = semla_csi::train::train(
            student,
            &device,
            &source,
            &target,
            relabeling.as_ref(),
            &train_config,
            &dacs,
            &session,
            &mut |p| bar.update(p),
        );
        bar.finish();
        Ok(result?)
    };
    let write = |outcome: &CsiOutcome, dir: &Path| -> anyhow::Result<()> {
        if let Some((report, examples)) = &outcome.relabeling {
            write_report(dir, report, examples, ignore16, |c| {
                palette.color(c, Some(ignore16))
            })
            .with_context(|| format!("writing the relabeling report to {}", dir.display()))?;
            if !ctx.json {
                for t in &report.targets {
                    eprintln!(
                        "{} <- {}: {} boxes, {} kept, {} px relabeled",
                        t.class,
                        t.source.as_deref().unwrap_or("(none found)"),
                        t.stats.detected,
                        t.stats.kept,
                        t.stats.relabeled_px
                    );
                }
            }
        }
        if !ctx.json {
            eprintln!(
                "DACS: {} target images, mean confidence weight {:.3}, {} teacher updates",
                outcome.dacs.images, outcome.dacs.mean_weight, outcome.dacs.teacher_updates
            );
        }
        Ok(())
    };
    match (&args.out, &args.adapter) {
        (Some(out), None) => {
            super::common::check_out_folder(out)?;
            if out.join(semla_models::model_dir::CONFIG_FILE).exists()
                && !args.force
                && !args.train.resume
            {
                bail!(
                    "{} already holds a model (--force replaces it, --resume continues its training)",
                    out.display()
                );
            }
            let start = semla_models::load_segmenter(&args.model, &device)
                .with_context(|| format!("loading the model {}", args.model.display()))?;
            let config = start.config();
            let trains = args.trains;
            let (model, params) = semla_train::runs::with_trainable_part(
                start.as_ref(),
                &|name| trains == Trains::All || config.is_head_weight(name),
                &device,
            )?;
            drop(start);
            let outcome = run(
                Student::Weights {
                    model: model.as_ref(),
                    params: &params,
                },
                &out.join("checkpoint"),
            )?;
            save_segmenter(model.as_ref(), out)?;
            write(&outcome, args.report.as_deref().unwrap_or(out))?;
            report(ctx, out, &outcome.summary, "model")
        }
        (None, Some(adapter)) => {
            let (library_dir, name) = split_library_path(adapter)?;
            refuse_existing(&library_dir, &name, args.force)?;
            let base: Arc<dyn Segmenter> =
                LoadedModel::load(&ModelArg::new(&args.model), &args.catseg, &device)?
                    .for_domain(&target_domain)?;
            std::fs::create_dir_all(&library_dir).with_context(|| {
                format!("creating the library folder {}", library_dir.display())
            })?;
            let lora = LoraTrainee::new(
                &base.sites(),
                &args.lora.settings(),
                args.train.seed,
                &device,
            )?;
            let outcome = run(
                Student::Adapter {
                    base: base.as_ref(),
                    lora: &lora,
                },
                &library_dir.join(".checkpoints").join(&name),
            )?;
            let stored = lora.to_adapter(&name)?;
            let from = PrototypeFrom {
                model: &args.model,
                domain: &args.domain,
                data_root: args.data_root.as_deref(),
                images: args.prototype_images,
                resize: args.resize,
            };
            store_with_prototype(&from, &library_dir, &stored, &base, &device)?;
            let report_dir = args
                .report
                .clone()
                .unwrap_or_else(|| library_dir.join(".reports").join(&name));
            write(&outcome, &report_dir)?;
            report(ctx, adapter, &outcome.summary, "adapter")
        }
        _ => bail!("give exactly one of --out and --adapter"),
    }
}
