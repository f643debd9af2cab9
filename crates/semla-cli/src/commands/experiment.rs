//! `semla eval --experiment zeroshot|oracle|uniform|semla`: SemLA's official
//! experiments over target domains (the engine is
//! [`semla_experiments::run`]; this module parses and reports), and the
//! progress bars shared by the experiment commands.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use semla_data::domains::{Domain, EvaluatorKind, Split, data_root, resolve_domain};
use semla_experiments::embedder::{Embedder, EmbedderSpec};
use semla_experiments::prototypes::LibraryRecord;
use semla_experiments::run::{
    ExperimentKind, ExperimentSettings, Fusion, SourceLibrary, Target, run_experiment,
};
use semla_metrics::Definition;
use semla_models::segmenter::{Segmenter, load_segmenter};
use semla_retrieval::{SemlaConfig, read_domain_list};
use semla_train::data::DomainSource;

use super::Context;

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
    /// Output folder for results.json, report.json and weights.jsonl.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
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
}

/// A list given as a YAML/JSON file or as comma-separated names.
pub fn name_list(value: &str) -> anyhow::Result<Vec<String>> {
    let path = Path::new(value);
    let names = if path.is_file() {
        read_domain_list(path)?
    } else {
        value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    if names.is_empty() {
        bail!("`{value}` names no domain");
    }
    Ok(names)
}

/// Resolves a domain name under `--data-root` / `DETECTRON2_DATASETS`;
/// generated domains (the synthetic world) need no dataset root.
pub fn resolve(name: &str, explicit_root: Option<&Path>) -> anyhow::Result<Domain> {
    match data_root(explicit_root) {
        Ok(root) => Ok(resolve_domain(name, &root)?),
        Err(no_root) => match resolve_domain(name, Path::new("")) {
            Ok(domain) => Ok(domain),
            Err(_) => Err(no_root.into()),
        },
    }
}

/// The official mIoU definition of a domain.
pub fn definition_of(domain: &Domain) -> Definition {
    match domain.evaluator {
        EvaluatorKind::CityscapesScript => Definition::Cityscapes,
        EvaluatorKind::Detectron2 => Definition::Detectron2,
    }
}

/// The embedder named by `spec` (default: the library's recorded one, else
/// the model's backbone). `model` is the segmenter the command runs.
pub fn make_embedder<'m>(
    spec: Option<&EmbedderSpec>,
    library: Option<&Path>,
    model: &'m dyn Segmenter,
    loaded: &'m mut Option<Box<dyn Segmenter>>,
    device: &Device,
) -> anyhow::Result<(Embedder<'m>, String)> {
    let recorded = match library {
        Some(root) => {
            LibraryRecord::read(root)?.and_then(|r| r.embedder_spec.parse::<EmbedderSpec>().ok())
        }
        None => None,
    };
    let spec = spec
        .cloned()
        .or(recorded)
        .unwrap_or(EmbedderSpec::backbone());
    let embedder = match &spec {
        EmbedderSpec::Clip(dir) => Embedder::clip(dir, device)
            .with_context(|| format!("loading the CLIP embedder {}", dir.display()))?,
        EmbedderSpec::Backbone {
            model: None,
            downscale,
            summary,
        } => Embedder::segmenter(model, *summary, *downscale)?,
        EmbedderSpec::Backbone {
            model: Some(dir),
            downscale,
            summary,
        } => {
            let other = load_segmenter(dir, device)
                .with_context(|| format!("loading the backbone embedder {}", dir.display()))?;
            let slot: &'m mut Box<dyn Segmenter> = Option::insert(loaded, other);
            let other: &'m dyn Segmenter = &**slot;
            Embedder::segmenter(other, *summary, *downscale)?
        }
    };
    Ok((embedder, spec.to_string()))
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
    let device = Device::Cpu;
    let model = load_segmenter(common.model, &device)
        .with_context(|| format!("loading the model {}", common.model.display()))?;
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
        .with_context(|| format!("opening the adapter library {}", library_dir.display()))?;
    let mut domain_sources = Vec::new();
    for name in &target_names {
        let domain = resolve(name, common.data_root)?;
        let definition = common.definition.unwrap_or_else(|| definition_of(&domain));
        let classes = domain.classes.clone();
        let source = DomainSource::new(domain, common.split, common.resize)
            .with_context(|| format!("target domain {name} ({})", common.split))?;
        domain_sources.push((name.clone(), source, definition, classes));
    }
    let targets: Vec<Target<'_>> = domain_sources
        .iter()
        .map(|(name, source, definition, classes)| Target {
            name: name.clone(),
            source,
            definition: *definition,
            class_names: classes.clone(),
        })
        .collect();
    let mut loaded = None;
    let embedder = if kind == ExperimentKind::Semla {
        Some(make_embedder(
            options.embedder.as_ref(),
            Some(library_dir),
            model.as_ref(),
            &mut loaded,
            &device,
        )?)
    } else {
        None
    };
    let mut bars = Bars::new();
    let output = run_experiment(
        model.as_ref(),
        &library,
        embedder.as_ref().map(|(e, _)| e),
        &targets,
        &settings,
        &device,
        &mut bars,
    )?;
    output.write(out, &settings)?;
    if ctx.json {
        return ctx.print_json(&serde_json::json!({
            "experiment": kind,
            "fusion": options.fusion,
            "embedder": embedder.as_ref().map(|(_, s)| s),
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

/// indicatif progress bars on stderr for the experiment engine.
pub struct Bars {
    bar: Option<ProgressBar>,
}

impl Bars {
    /// No bar yet.
    pub fn new() -> Self {
        Self { bar: None }
    }
}

impl Default for Bars {
    fn default() -> Self {
        Self::new()
    }
}

impl semla_experiments::progress::Progress for Bars {
    fn begin(&mut self, label: &str, total: u64) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:<44} [{bar:30}] {pos:>4}/{len:<4} {elapsed:>4} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        self.bar = Some(bar);
    }

    fn set(&mut self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }

    fn message(&mut self, text: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(text.to_string());
        }
    }

    fn end(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }

    fn note(&mut self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }
}
