//! `semla eval`: mIoU of a model (optionally with one adapter of a library)
//! on a domain split; with `--experiment`, SemLA's experiments
//! (`experiment.rs`), one shard of them with `--shard I/N`, and
//! `semla eval merge` of the shards' parts.

use std::path::PathBuf;

use anyhow::Context as _;
use semla_adapters::{Adaptation, AdapterLibrary, apply::check_adapters_fit};
use semla_data::domains::Split;
use semla_experiments::{EvalReport, evaluate};
use semla_metrics::Definition;

use super::Context;
use super::common::{
    Bars, CatSegOptions, LoadedModel, ModelArg, definition_of, parse_size, resolve,
    split_library_path,
};
use super::train::DataOptions;

/// Arguments of `semla eval`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct EvalArgs {
    /// `semla eval merge`: join the parts of a sharded experiment.
    #[command(subcommand)]
    pub action: Option<EvalAction>,
    /// Model folder (`config.json`, `model.safetensors`), or `catseg:PATH` for
    /// CAT-Seg (the official `model_final.pth`, a `.safetensors` file of its keys,
    /// or a converted folder), whose classes are each domain's (`--classes` to
    /// choose them).
    #[arg(long, value_name = "DIR|catseg:PATH", required = true)]
    pub model: Option<PathBuf>,
    /// Apply one adapter of a library: `LIBRARY/NAME`.
    #[arg(long, value_name = "LIB/NAME")]
    pub adapter: Option<PathBuf>,
    /// Domain name (e.g. `camvid/0001TP`).
    #[arg(long, value_name = "D", required_unless_present = "experiment")]
    pub domain: Option<String>,
    /// Dataset root (default: `$DETECTRON2_DATASETS`).
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,
    /// Split to evaluate.
    #[arg(long, default_value = "val", value_name = "SPLIT")]
    pub split: Split,
    /// Resize every image to HEIGHTxWIDTH before the model (labels too).
    #[arg(long, value_name = "HxW", value_parser = parse_size)]
    pub resize: Option<(usize, usize)>,
    /// Evaluate only the first N images.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// mIoU definition (default: the domain's official evaluator).
    #[arg(long, value_name = "DEF")]
    pub definition: Option<Definition>,
    /// SemLA's official experiments (`--experiment MODE`, see `semla_experiments::run`).
    #[command(flatten)]
    pub experiment: super::experiment::ExperimentOptions,
    #[command(flatten)]
    pub catseg: CatSegOptions,
}

/// What `semla eval` does instead of evaluating.
#[derive(clap::Subcommand, Debug)]
pub enum EvalAction {
    /// Merge the parts of an experiment run in shards (`--shard I/N`) into the
    /// results.json, report.json and weights.jsonl of the whole run.
    Merge(MergeArgs),
}

/// Arguments of `semla eval merge`.
#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// The shards' output folders (or their `shard.json` files): all N parts
    /// of one run, in any order.
    #[arg(required = true, value_name = "PARTS")]
    pub parts: Vec<PathBuf>,
    /// Output folder for results.json, report.json and weights.jsonl.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Loads `LIB/NAME` as the adaptation of a single adapter with weight 1.
pub fn single_adapter(
    path: &std::path::Path,
    model_sites: &[semla_adapters::SiteInfo],
) -> anyhow::Result<Adaptation> {
    let (library_dir, name) = split_library_path(path)?;
    let library = AdapterLibrary::open(&library_dir)?;
    let adapter = library.load(&name)?;
    check_adapters_fit(&[&adapter], model_sites)?;
    Ok(semla_adapters::apply::adaptation_for(
        &[&adapter],
        &[vec![1.0]],
    )?)
}

/// Evaluates the model, adapter and data these arguments name.
pub fn evaluate_args(args: &EvalArgs, ctx: &Context) -> anyhow::Result<EvalReport> {
    let device = ctx.device()?;
    let domain = args
        .domain
        .clone()
        .context("--domain is required (or run an --experiment)")?;
    let data = DataOptions {
        domain: domain.clone(),
        data_root: args.data_root.clone(),
        split: args.split,
        resize: args.resize,
    };
    // The model and the adapter before the images are listed: an adapter that
    // does not fit fails first. CAT-Seg's classes come from the domain.
    let described = resolve(&domain, args.data_root.as_deref())?;
    let model = LoadedModel::load(&ModelArg::new(model_of(args)?), &args.catseg, &device)?
        .for_domain(&described)?;
    let adaptation = match &args.adapter {
        Some(path) => single_adapter(path, &model.sites())?,
        None => Adaptation::none(),
    };
    let source = data.source()?;
    let definition = args
        .definition
        .unwrap_or_else(|| definition_of(source.domain()));
    let report = evaluate(
        model.as_ref(),
        &adaptation,
        &source,
        definition,
        args.limit,
        &device,
        &mut Bars::new(),
    )
    .with_context(|| format!("evaluating on {domain} ({})", args.split))?;
    Ok(report)
}

/// `--model` (clap requires it unless a subcommand is given).
fn model_of(args: &EvalArgs) -> anyhow::Result<&std::path::Path> {
    args.model.as_deref().context("--model is required")
}

/// Runs `semla eval`.
pub fn run(args: EvalArgs, ctx: &Context) -> anyhow::Result<()> {
    if let Some(EvalAction::Merge(merge)) = &args.action {
        return super::experiment::merge(&merge.parts, &merge.out, ctx);
    }
    if args.experiment.experiment.is_some() {
        let common = super::experiment::EvalCommon {
            model: model_of(&args)?,
            data_root: args.data_root.as_deref(),
            resize: args.resize,
            split: args.split,
            limit: args.limit,
            definition: args.definition,
            catseg: &args.catseg,
        };
        return super::experiment::run(&args.experiment, &common, ctx);
    }
    let report = evaluate_args(&args, ctx)?;
    if ctx.json {
        return ctx.print_json(&serde_json::json!({
            "model": args.model,
            "adapter": args.adapter,
            "domain": args.domain,
            "split": args.split,
            "images": report.images,
            "miou": report.scores.mean_iou,
            "scores": report.scores,
        }));
    }
    println!(
        "mIoU {:.2} % on {} ({}, {} images)",
        100.0 * report.miou(),
        args.domain.as_deref().unwrap_or_default(),
        args.split,
        report.images
    );
    Ok(())
}
