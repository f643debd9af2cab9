//! `semla eval --experiment zeroshot|oracle|uniform|semla`: SemLA's official
//! experiments over target domains (the engine is [`semla_experiments`]; this
//! module parses and reports), one shard of them (`--shard I/N`), and
//! `semla eval merge` of the shards' parts (`semla_experiments::shard`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use semla_data::DomainSource;
use semla_data::domains::Split;
use semla_experiments::shard::PART_FILE;
use semla_experiments::{
    ExperimentKind, ExperimentSettings, Fingerprint, Shard, ShardPart, Target, merge_parts,
    run_experiment, run_shard,
};
use semla_metrics::Definition;
use semla_models::Segmenter;
use semla_pipeline::config::SemlaConfig;
use semla_pipeline::{EmbedderSpec, Fusion, Semla, SourceLibrary};

use super::Context;
use super::common::{Bars, LoadedModel, ModelArg, definition_of, name_list, resolve};

/// The experiment options of `semla eval` (flattened into its arguments).
#[derive(clap::Args, Debug, Clone)]
pub struct ExperimentOptions {
    /// Run an official experiment over --targets instead of evaluating one domain.
    #[arg(long, value_name = "MODE", requires_all = ["library", "sources", "targets", "out"])]
    pub experiment: Option<ExperimentKind>,
    /// Adapter library folder (SemLA's `loradb` layout).
    #[arg(long, value_name = "DIR")]
    pub library: Option<PathBuf>,
    /// Source domains = candidate adapters, in order: a `source_domains.yaml`
    /// / JSON list, or comma-separated names.
    #[arg(long, value_name = "FILE|A,B,..")]
    pub sources: Option<String>,
    /// Target domains: a `target_domains.yaml` / JSON list, or comma-separated names.
    #[arg(long, value_name = "FILE|A,B,..")]
    pub targets: Option<String>,
    /// SemLA settings (`semla_config.yaml` or JSON; default: official values).
    #[arg(long, value_name = "FILE")]
    pub semla_config: Option<PathBuf>,
    /// Leave each target's own adapter out of the candidates (not for oracle).
    #[arg(long)]
    pub remove_target_adapter: bool,
    /// `weights`: exact weight-space fusion (official); `outputs`: late fusion
    /// of the adapters' class probabilities (ablation).
    #[arg(long, default_value = "weights", value_name = "HOW")]
    pub fusion: Fusion,
    /// Query embedder for semla: `clip:DIR`, `backbone` (the --model's),
    /// `backbone:DIR`, `style[:DIR]`, each segmenter one with an optional `@F`
    /// downscale (default: the one recorded with the library's prototypes, else
    /// `backbone`).
    #[arg(long, value_name = "E")]
    pub embedder: Option<EmbedderSpec>,
    /// Images per forward pass (same-size images only).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub batch: usize,
    /// Output folder for results.json, report.json and weights.jsonl (with
    /// --shard: for the shard's part, `shard.json`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Evaluate only shard I of N (0-based) of each target's images (sorted by
    /// id, the k-th goes to shard k mod N) and write its part to --out;
    /// `semla eval merge` joins the N parts into the whole run's files.
    #[arg(long, value_name = "I/N", requires = "experiment")]
    pub shard: Option<Shard>,
}

/// What `semla eval` shares with the experiment.
pub struct EvalCommon<'a> {
    /// `--model`.
    pub model: &'a Path,
    /// `--data-root`.
    pub data_root: Option<&'a Path>,
    /// `--resize`.
    pub resize: Option<(usize, usize)>,
    /// `--split`: the split of every target domain evaluated.
    pub split: Split,
    /// `--limit`.
    pub limit: Option<usize>,
    /// `--definition`.
    pub definition: Option<Definition>,
    /// CAT-Seg's options (`--model catseg:PATH`).
    pub catseg: &'a super::common::CatSegOptions,
}

/// Runs `semla eval --experiment ...`.
pub fn run(
    options: &ExperimentOptions,
    common: &EvalCommon<'_>,
    ctx: &Context,
) -> anyhow::Result<()> {
    let Some(kind) = options.experiment else {
        bail!("no --experiment given");
    };
    let (Some(library_dir), Some(sources), Some(targets), Some(out)) = (
        &options.library,
        &options.sources,
        &options.targets,
        &options.out,
    ) else {
        bail!("--experiment needs --library, --sources, --targets and --out");
    };
    // Before any work: an --out that cannot be written fails now, not after it.
    super::common::check_out_folder(out)?;
    let device = ctx.device()?;
    let model_arg = ModelArg::new(common.model);
    let loaded = LoadedModel::load(&model_arg, common.catseg, &device)?;
    let sources = name_list(sources)?;
    let target_names = name_list(targets)?;
    let config = match &options.semla_config {
        Some(path) => SemlaConfig::from_path(path)?,
        None => SemlaConfig::default(),
    };
    let settings = ExperimentSettings {
        fusion: options.fusion,
        params: config.retrieval_params(),
        remove_target_adapter: options.remove_target_adapter,
        batch_size: options.batch.max(1),
        limit: common.limit,
        ..ExperimentSettings::new(kind)
    };
    let library = SourceLibrary::open(library_dir, &sources, kind == ExperimentKind::Semla)
        .context("opening the adapter library")?;
    let mut domain_sources = Vec::new();
    for name in &target_names {
        let domain = resolve(name, common.data_root)?;
        let definition = common.definition.unwrap_or_else(|| definition_of(&domain));
        // CAT-Seg segments each target's own class list; other models their fixed one.
        let (classes, own_model) = match &loaded {
            LoadedModel::Fixed(_) => (domain.classes.clone(), None),
            LoadedModel::CatSeg(..) => {
                let model = loaded.for_domain(&domain)?;
                let classes = common.catseg.classes_for(&domain)?;
                (classes, Some(model))
            }
        };
        let source = DomainSource::new(domain, common.split, common.resize)
            .with_context(|| format!("target domain {name} ({})", common.split))?;
        domain_sources.push((name.clone(), source, definition, classes, own_model));
    }
    // The pipeline's model: the first target's (CAT-Seg's class list matters
    // only to the targets, each of which has its own).
    let model: Arc<dyn Segmenter> = match (&loaded, domain_sources.first()) {
        (LoadedModel::Fixed(model), _) => Arc::clone(model),
        (LoadedModel::CatSeg(..), Some((.., Some(own)))) => Arc::clone(own),
        (LoadedModel::CatSeg(..), _) => bail!("--targets names no domain"),
    };
    let targets: Vec<Target<'_>> = domain_sources
        .iter()
        .map(|(name, source, definition, classes, own_model)| Target {
            name: name.clone(),
            source,
            definition: *definition,
            class_names: classes.clone(),
            model: own_model.clone(),
        })
        .collect();
    let semla = if kind == ExperimentKind::Semla {
        Semla::with_embedder_spec(
            model,
            library,
            options.embedder.as_ref(),
            config.settings(),
            &device,
        )?
    } else {
        Semla::new(model, library, None, config.settings(), &device)?
    };
    let embedder = semla.embedder().map(|e| e.spec().to_string());
    let mut bars = Bars::new();
    if let Some(shard) = options.shard {
        // Everything else that changes the results: parts of runs that differ
        // in any of it refuse to merge.
        let extra = serde_json::json!({
            "semla_config": config,
            "embedder": semla.embedder().map(|e| e.id().to_string()),
            "split": common.split,
            "resize": common.resize,
            "definition": common.definition,
            "catseg_config": common.catseg.catseg_config,
            "text_cache": format!("{:?}", common.catseg.text_cache),
        });
        let inputs =
            Fingerprint::of_inputs(model_arg.path(), library_dir, &sources, &settings, &extra)
                .context("fingerprinting the model and the library")?;
        let part = run_shard(&semla, &targets, &settings, shard, &inputs, &mut bars)?;
        let path = part.write(out)?;
        return report_shard(&part, &path, ctx);
    }
    let output = run_experiment(&semla, &targets, &settings, &mut bars)?;
    output.write(out, &settings)?;
    if ctx.json {
        return ctx.print_json(&serde_json::json!({
            "experiment": kind,
            "fusion": options.fusion,
            "embedder": embedder,
            "combination": config.combination_type,
            "out": out,
            "results": output.results.iter().map(|(t, v)| (t.clone(), serde_json::json!(v))).collect::<serde_json::Map<String, serde_json::Value>>(),
            "targets": output.reports,
        }));
    }
    println!(
        "{} ({} fusion):",
        settings.method_name(),
        options.fusion.as_str()
    );
    for report in &output.reports {
        println!(
            "  {:<20} mIoU {:6.2} %  ({} images, {:.3} s/image, {:?})",
            report.target,
            report.miou_percent,
            report.images,
            report.seconds_per_image,
            report.definition
        );
    }
    println!("results in {}", out.display());
    Ok(())
}

/// Reports the part a shard wrote.
fn report_shard(part: &ShardPart, path: &Path, ctx: &Context) -> anyhow::Result<()> {
    let targets: Vec<serde_json::Value> = part
        .targets
        .iter()
        .zip(&part.fingerprint.targets)
        .map(|(t, listed)| {
            serde_json::json!({
                "target": t.target,
                "images": t.images.len(),
                "of": listed.images,
                "seconds": t.seconds,
            })
        })
        .collect();
    if ctx.json {
        return ctx.print_json(&serde_json::json!({
            "shard": part.shard,
            "part": path,
            "targets": targets,
        }));
    }
    println!(
        "{} shard {} ({} fusion):",
        part.settings.to_settings().method_name(),
        part.shard,
        part.settings.fusion.as_str()
    );
    for (t, listed) in part.targets.iter().zip(&part.fingerprint.targets) {
        println!(
            "  {:<20} {} of {} images ({:.1} s)",
            t.target,
            t.images.len(),
            listed.images,
            t.seconds
        );
    }
    println!(
        "part in {} (merge all {} with `semla eval merge`)",
        path.display(),
        part.shard.count
    );
    Ok(())
}

/// Runs `semla eval merge PARTS... --out DIR`.
pub fn merge(parts: &[PathBuf], out: &Path, ctx: &Context) -> anyhow::Result<()> {
    super::common::check_out_folder(out)?;
    let mut read = Vec::with_capacity(parts.len());
    for path in parts {
        let part = ShardPart::read(path)?;
        let file = if path.is_dir() {
            path.join(PART_FILE)
        } else {
            path.clone()
        };
        read.push((file, part));
    }
    let merged = merge_parts(&read)?;
    merged.output.write(out, &merged.settings)?;
    if ctx.json {
        return ctx.print_json(&serde_json::json!({
            "experiment": merged.settings.kind,
            "fusion": merged.settings.fusion,
            "shards": merged.shards,
            "out": out,
            "results": merged.output.results.iter().map(|(t, v)| (t.clone(), serde_json::json!(v))).collect::<serde_json::Map<String, serde_json::Value>>(),
            "targets": merged.output.reports,
        }));
    }
    println!(
        "{} ({} fusion), {} shards merged:",
        merged.settings.method_name(),
        merged.settings.fusion.as_str(),
        merged.shards
    );
    for report in &merged.output.reports {
        println!(
            "  {:<20} mIoU {:6.2} %  ({} images, {:?})",
            report.target, report.miou_percent, report.images, report.definition
        );
    }
    println!("results in {}", out.display());
    Ok(())
}
