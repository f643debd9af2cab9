//! `semla adapter bake` (merge an adapter into a model folder) and
//! `semla adapter extract` (the best rank-R adapter of a fine-tuned model).
//! The mechanisms live in [`semla_train::soma`].

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use semla_adapters::{Adapter, AdapterLibrary, peft};
use semla_models::{Segmenter, load_segmenter, save_segmenter};
use semla_train::soma::{bake, extract};
use serde::Serialize;

use super::super::Context;
use super::super::common::split_library_path;

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
    /// Replace an adapter of that name already in the library (its prototype too).
    #[arg(long)]
    pub force: bool,
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
    let device = ctx.device()?;
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

/// Writes a model folder atomically: staged beside `out`, then swapped in whole
/// ([`semla_core::StagedDir`]; an existing folder is replaced only with `force`).
fn write_model_dir(model: &dyn Segmenter, out: &Path, force: bool) -> anyhow::Result<()> {
    if out.exists() && !force {
        bail!(
            "{} already exists (use --force to replace it)",
            out.display()
        );
    }
    let staged = semla_core::StagedDir::new(out)?;
    save_segmenter(model, staged.path())?;
    staged.commit()?;
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
    let device = ctx.device()?;
    let (library_dir, name) = split_library_path(&args.out)?;
    super::train::refuse_existing(&library_dir, &name, args.force)?;
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
    library.replace(&extraction.adapter, None)?;
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
