//! What several commands share: the flags naming what SemLA runs on, progress
//! bars for the library's progress reports, name lists, domain resolution, `HxW`
//! sizes and `LIB/NAME` paths.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressStyle};
use semla_core::Progress;
use semla_data::domains::{Domain, EvaluatorKind, data_root, resolve_domain};
use semla_metrics::Definition;
use semla_pipeline::config::read_domain_list;

/// What SemLA runs on, for `semla segment` and `semla serve`: model, library,
/// candidates, embedder and SemLA's defaults.
#[derive(clap::Args, Debug, Clone)]
pub struct PipelineOptions {
    /// Base model: a model folder (`config.json`, `model.safetensors`), or
    /// `catseg:PATH` for CAT-Seg (the official `model_final.pth`, a `.safetensors`
    /// file of its keys, or a folder `semla model convert` wrote).
    #[arg(long, value_name = "DIR|catseg:PATH")]
    pub model: PathBuf,
    /// Adapter library with prototypes (SemLA's retrieval; `semla segment` without
    /// it runs the model alone, or with `--adapter`).
    #[arg(long, value_name = "DIR")]
    pub library: Option<PathBuf>,
    /// Candidate adapters (file or comma-separated names; default: all with a prototype).
    #[arg(long, value_name = "FILE|A,B,..")]
    pub sources: Option<String>,
    /// Query embedder (default: the one recorded with the library, else `backbone`).
    #[arg(long, value_name = "E")]
    pub embedder: Option<semla_pipeline::EmbedderSpec>,
    /// SemLA settings (`semla_config.yaml` or JSON; default: official values).
    #[arg(long, value_name = "FILE")]
    pub semla_config: Option<PathBuf>,
    /// Number of adapters to fuse (overrides the config).
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Softmax temperature (overrides the config).
    #[arg(long, value_name = "T")]
    pub temperature: Option<f64>,
    #[command(flatten)]
    pub catseg: CatSegOptions,
}

/// CAT-Seg's inputs: its official configuration and the open vocabulary.
#[derive(clap::Args, Debug, Clone)]
pub struct CatSegOptions {
    /// The official CAT-Seg YAML (`configs/vitl_336.yaml`, with its `_BASE_`);
    /// without it, every dimension comes from the checkpoint's shapes.
    #[arg(long, value_name = "YAML")]
    pub catseg_config: Option<PathBuf>,
    /// CAT-Seg's classes: comma-separated names, or an official list by domain
    /// or JSON name (`cs19`, `acdc-night`, `ade150`, ...).
    #[arg(long, value_name = "A,B,..|LIST", conflicts_with = "classes_file")]
    pub classes: Option<String>,
    /// CAT-Seg's classes from a file: one name per line, or an official JSON list.
    #[arg(long, value_name = "FILE")]
    pub classes_file: Option<PathBuf>,
    /// When CAT-Seg computes the class text embeddings: per adapter mixture, or
    /// once with the first image's mixture as the official code caches them.
    #[arg(long, value_name = "WHEN", default_value = "per-mixture")]
    pub text_cache: TextCacheArg,
}

/// `--text-cache`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum TextCacheArg {
    /// Text embeddings with each image's own mixture.
    PerMixture,
    /// Computed once, with the first image's mixture (the official code's cache).
    FirstImage,
}

impl CatSegOptions {
    /// The class list given (`None` when neither flag is).
    pub fn class_names(&self) -> anyhow::Result<Option<Vec<String>>> {
        use semla_models::catseg::classes;
        if let Some(file) = &self.classes_file {
            return Ok(Some(
                classes::read_classes_file(file).map_err(anyhow::Error::msg)?,
            ));
        }
        self.classes
            .as_deref()
            .map(|arg| classes::parse_classes_arg(arg).map_err(anyhow::Error::msg))
            .transpose()
    }

    /// Loads CAT-Seg from `path` with these options (a class list required).
    pub fn load(
        &self,
        path: &Path,
        device: &candle_core::Device,
    ) -> anyhow::Result<semla_models::catseg::CatSeg> {
        self.load_with(path, device, true)
    }

    /// Loads CAT-Seg from `path`; without a class list only if `require_classes` is false.
    pub fn load_with(
        &self,
        path: &Path,
        device: &candle_core::Device,
        require_classes: bool,
    ) -> anyhow::Result<semla_models::catseg::CatSeg> {
        let mut model =
            semla_models::catseg::checkpoint::load(path, self.catseg_config.as_deref(), device)
                .context("loading CAT-Seg")?;
        match self.class_names()? {
            Some(names) => model.set_classes(&names)?,
            None if require_classes && model.catseg_config().class_names.is_empty() => {
                bail!("CAT-Seg segments the classes it is given: pass --classes or --classes-file")
            }
            None => {}
        }
        model.set_text_cache(match self.text_cache {
            TextCacheArg::PerMixture => semla_models::catseg::TextCache::PerMixture,
            TextCacheArg::FirstImage => semla_models::catseg::TextCache::FirstImage,
        });
        Ok(model)
    }

    /// CAT-Seg's class list on `domain`: the flags' list, else the official list
    /// of the domain's name (SemLA's 20 domains), else the dataset's class names
    /// (its labels' order, so the predictions score against them).
    pub fn classes_for(&self, domain: &Domain) -> anyhow::Result<Vec<String>> {
        if let Some(names) = self.class_names()? {
            return Ok(names);
        }
        if let Some(list) = semla_models::catseg::classes::official_classes(&domain.name) {
            return Ok(list.iter().map(|s| s.to_string()).collect());
        }
        if domain.classes.is_empty() {
            bail!(
                "domain {} names no classes for CAT-Seg: pass --classes or --classes-file",
                domain.name
            );
        }
        Ok(domain.classes.clone())
    }
}

/// `--model` of the commands that take a model folder or `catseg:PATH`.
pub enum ModelArg {
    /// A model folder (`config.json`, `model.safetensors`), its classes fixed.
    Folder(PathBuf),
    /// CAT-Seg from a checkpoint or converted folder: open vocabulary.
    CatSeg(PathBuf),
}

impl ModelArg {
    /// Parses `DIR` or `catseg:PATH`.
    pub fn new(model: &Path) -> Self {
        match model.to_str().and_then(|s| s.strip_prefix("catseg:")) {
            Some(path) => Self::CatSeg(PathBuf::from(path)),
            None => Self::Folder(model.to_path_buf()),
        }
    }

    /// The file or folder named (without a `catseg:` prefix).
    pub fn path(&self) -> &Path {
        match self {
            Self::Folder(path) | Self::CatSeg(path) => path,
        }
    }
}

/// A loaded `--model`: CAT-Seg keeps its type, so each domain can get its own
/// class list.
pub enum LoadedModel {
    /// Any segmenter with a fixed class list.
    Fixed(std::sync::Arc<dyn semla_models::Segmenter>),
    /// CAT-Seg, with the options that choose its classes.
    CatSeg(Box<semla_models::catseg::CatSeg>, CatSegOptions),
}

impl LoadedModel {
    /// Loads `model` (CAT-Seg with `catseg`'s options, its class list chosen per domain).
    pub fn load(
        model: &ModelArg,
        catseg: &CatSegOptions,
        device: &candle_core::Device,
    ) -> anyhow::Result<Self> {
        Ok(match model {
            ModelArg::Folder(dir) => Self::Fixed(std::sync::Arc::from(
                semla_models::load_segmenter(dir, device).context("loading the model")?,
            )),
            ModelArg::CatSeg(path) => Self::CatSeg(
                Box::new(catseg.load_with(path, device, false)?),
                catseg.clone(),
            ),
        })
    }

    /// The segmenter for `domain`: CAT-Seg set to [`CatSegOptions::classes_for`]
    /// (sharing its weights), any other model as it is.
    pub fn for_domain(
        &self,
        domain: &Domain,
    ) -> anyhow::Result<std::sync::Arc<dyn semla_models::Segmenter>> {
        Ok(match self {
            Self::Fixed(model) => std::sync::Arc::clone(model),
            Self::CatSeg(model, options) => {
                let classes = options.classes_for(domain)?;
                std::sync::Arc::new(
                    model
                        .with_classes(&classes)
                        .with_context(|| format!("CAT-Seg's classes for {}", domain.name))?,
                )
            }
        })
    }
}

impl PipelineOptions {
    /// The CAT-Seg checkpoint when `--model catseg:PATH` names one.
    pub fn catseg_path(&self) -> Option<PathBuf> {
        self.model
            .to_str()
            .and_then(|s| s.strip_prefix("catseg:"))
            .map(PathBuf::from)
    }

    /// The model's file or folder (without a `catseg:` prefix).
    pub fn model_path(&self) -> PathBuf {
        self.catseg_path().unwrap_or_else(|| self.model.clone())
    }

    /// The model, loaded.
    pub fn load_model(
        &self,
        device: &candle_core::Device,
    ) -> anyhow::Result<std::sync::Arc<dyn semla_models::Segmenter>> {
        if let Some(path) = self.catseg_path() {
            return Ok(std::sync::Arc::new(self.catseg.load(&path, device)?));
        }
        Ok(std::sync::Arc::from(
            semla_models::load_segmenter(&self.model, device).context("loading the model")?,
        ))
    }

    /// The library folder (required for SemLA's retrieval).
    pub fn library(&self) -> anyhow::Result<&Path> {
        self.library
            .as_deref()
            .context("--library is required: SemLA retrieves adapters from a library")
    }

    /// The candidate names given (`None`: every adapter with a prototype).
    pub fn source_names(&self) -> anyhow::Result<Option<Vec<String>>> {
        self.sources.as_deref().map(name_list).transpose()
    }

    /// The candidate adapters with their prototypes.
    pub fn open_library(&self) -> anyhow::Result<semla_pipeline::SourceLibrary> {
        use semla_pipeline::SourceLibrary;
        let library = match self.source_names()? {
            Some(names) => SourceLibrary::open(self.library()?, &names, true)?,
            None => SourceLibrary::open_with_prototypes(self.library()?)?,
        };
        Ok(library)
    }

    /// SemLA's settings: the config file with the flags' overrides.
    pub fn config(&self) -> anyhow::Result<semla_pipeline::config::SemlaConfig> {
        Ok(semla_pipeline::config::SemlaConfig::resolve(
            self.semla_config.as_deref(),
            self.top_k,
            self.temperature,
            None,
        )?)
    }
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
            // A name no layout owns is the error, whatever the root.
            Err(unknown @ semla_data::domains::DomainError::UnknownDomain { .. }) => {
                Err(unknown.into())
            }
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

/// Parses `HxW` (e.g. `96x128`).
pub fn parse_size(text: &str) -> Result<(usize, usize), String> {
    let (h, w) = text
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("`{text}` is not HEIGHTxWIDTH"))?;
    let h: usize = h
        .trim()
        .parse()
        .map_err(|_| format!("bad height in `{text}`"))?;
    let w: usize = w
        .trim()
        .parse()
        .map_err(|_| format!("bad width in `{text}`"))?;
    if h == 0 || w == 0 {
        return Err(format!("`{text}`: sizes must be positive"));
    }
    Ok((h, w))
}

/// Checks, before any work, that `out` can be the output folder: absent, or a
/// folder (never a file), with a parent that can hold it.
pub fn check_out_folder(out: &Path) -> anyhow::Result<()> {
    if out.exists() && !out.is_dir() {
        bail!("{} exists and is not a folder", out.display());
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty())
        && parent.exists()
        && !parent.is_dir()
    {
        bail!("{} is not a folder", parent.display());
    }
    Ok(())
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

/// indicatif progress bars on stderr for the libraries' progress reports.
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

impl Progress for Bars {
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

/// Progress as timestamped lines on stderr (for logs: `nohup`, redirections).
#[derive(Default)]
pub struct LogProgress {
    label: String,
    total: u64,
    last_logged: u64,
    message: String,
    started: Option<Instant>,
}

impl Progress for LogProgress {
    fn begin(&mut self, label: &str, total: u64) {
        self.label = label.to_string();
        self.total = total;
        self.last_logged = 0;
        self.message.clear();
        self.started = Some(Instant::now());
        eprintln!("[{}] {label} ({total})", stamp());
    }

    fn set(&mut self, done: u64) {
        let step = (self.total / 10).max(1);
        if done >= self.last_logged + step && done < self.total {
            self.last_logged = done;
            eprintln!(
                "[{}]   {} {done}/{} {}",
                stamp(),
                self.label,
                self.total,
                self.message
            );
        }
    }

    fn message(&mut self, text: &str) {
        self.message = text.to_string();
    }

    fn end(&mut self) {
        let seconds = self
            .started
            .map(|s| s.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        eprintln!(
            "[{}]   {} done in {seconds:.1} s {}",
            stamp(),
            self.label,
            self.message
        );
    }

    fn note(&mut self, text: &str) {
        eprintln!("[{}] {text}", stamp());
    }
}

/// Seconds since the Unix epoch, as `HH:MM:SS` UTC.
fn stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

/// Bars on a terminal, timestamped lines otherwise (logs, redirections).
pub fn stderr_progress() -> Box<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Box::new(Bars::new())
    } else {
        Box::new(LogProgress::default())
    }
}
