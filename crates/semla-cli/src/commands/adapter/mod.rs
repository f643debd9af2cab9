//! `semla adapter`: merge adapters of a library into one PEFT adapter
//! (`merge`), train one (`train`), merge one into a model (`bake`) or extract
//! one from a fine-tuned model (`extract`), or self-train one on a new
//! domain's unlabeled images (`adapt`).

pub mod adapt;
pub mod soma;
pub mod tools;
pub mod train;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use semla_adapters::{Adapter, AdapterLibrary, Combination, merge, peft};
use serde::Serialize;

use super::Context;

/// Arguments of `semla adapter`.
#[derive(clap::Args, Debug)]
pub struct AdapterArgs {
    #[command(subcommand)]
    pub command: AdapterCommand,
}

/// Subcommands of `semla adapter`.
#[derive(clap::Subcommand, Debug)]
pub enum AdapterCommand {
    /// Fuse weighted adapters of a library into one PEFT-format adapter folder.
    Merge(MergeArgs),
    /// Train a LoRA adapter on a frozen base model.
    Train(Box<train::AdapterTrainArgs>),
    /// Self-train a LoRA adapter on a new domain's unlabeled images (CLOUDS) and add it to a library.
    Adapt(Box<adapt::AdaptArgs>),
    /// Merge an adapter into a model's base weights and write a full model folder.
    Bake(tools::BakeArgs),
    /// The best rank-R adapter (truncated SVD of the weight difference) of a fine-tuned model.
    Extract(tools::ExtractArgs),
}

/// Arguments of `semla adapter merge`.
#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// Adapter library folder.
    #[arg(long, value_name = "DIR")]
    pub library: PathBuf,
    /// Adapters and weights: `NAME=W,NAME=W,...` (weights may be negative).
    #[arg(long, value_name = "NAME=W,...", allow_hyphen_values = true)]
    pub weights: String,
    /// How to combine: `cat` (exact, rank = sum of ranks), `linear` (PEFT's,
    /// equal ranks, not a weighted sum) or `svd` (truncated exact sum).
    #[arg(long, default_value = "cat")]
    pub combination: Combination,
    /// Rank of the `svd` result (default: the largest rank).
    #[arg(long, value_name = "R")]
    pub svd_rank: Option<usize>,
    /// Output folder (PEFT format: adapter_config.json, adapter_model.safetensors),
    /// written whole.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace `--out` if it exists (never one of the adapters being merged).
    #[arg(long)]
    pub force: bool,
}

/// Parses `NAME=W,NAME=W,...`: names unique, weights finite, at least one.
pub fn parse_weights(text: &str) -> anyhow::Result<Vec<(String, f64)>> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((name, weight)) = item.rsplit_once('=') else {
            bail!("--weights entry {item:?} is not NAME=WEIGHT")
        };
        let name = name.trim();
        let weight: f64 = weight
            .trim()
            .parse()
            .with_context(|| format!("--weights entry {item:?}: {weight:?} is not a number"))?;
        if !weight.is_finite() {
            bail!("--weights entry {item:?}: the weight is not finite");
        }
        if name.is_empty() {
            bail!("--weights entry {item:?} has an empty name");
        }
        if out.iter().any(|(n, _)| n == name) {
            bail!("--weights names adapter {name:?} twice");
        }
        out.push((name.to_string(), weight));
    }
    if out.is_empty() {
        bail!("--weights is empty: give at least one NAME=WEIGHT");
    }
    Ok(out)
}

#[derive(Serialize)]
struct MergeReport<'a> {
    out: &'a Path,
    combination: Combination,
    adapters: Vec<WeightedName<'a>>,
    r: usize,
    site_count: usize,
    parameter_count: usize,
}

#[derive(Serialize)]
struct WeightedName<'a> {
    name: &'a str,
    weight: f64,
}

/// Runs `semla adapter ...`.
pub fn run(args: AdapterArgs, ctx: &Context) -> anyhow::Result<()> {
    match args.command {
        AdapterCommand::Merge(args) => run_merge(args, ctx),
        AdapterCommand::Train(args) => train::run(*args, ctx),
        AdapterCommand::Adapt(args) => adapt::run(*args, ctx),
        AdapterCommand::Bake(args) => tools::run_bake(args, ctx),
        AdapterCommand::Extract(args) => tools::run_extract(args, ctx),
    }
}

fn run_merge(args: MergeArgs, ctx: &Context) -> anyhow::Result<()> {
    let weighted = parse_weights(&args.weights)?;
    let library = AdapterLibrary::open(&args.library)
        .with_context(|| format!("cannot open adapter library {}", args.library.display()))?;
    // Check every name, and where the result goes, before loading any tensor.
    let out = absolute(&args.out)?;
    for (name, _) in &weighted {
        let entry = library.entry(name)?;
        if absolute(&entry.dir)? == out {
            bail!(
                "--out {} is the folder of {name}, one of the adapters being merged: write the result elsewhere",
                args.out.display()
            );
        }
    }
    super::common::check_out_folder(&args.out)?;
    if args.out.exists() && !args.force {
        bail!(
            "{} already exists (--force replaces it)",
            args.out.display()
        );
    }
    let adapters: Vec<Adapter> = weighted
        .iter()
        .map(|(n, _)| library.load(n))
        .collect::<Result<_, _>>()?;
    let refs: Vec<&Adapter> = adapters.iter().collect();
    let weights: Vec<f64> = weighted.iter().map(|(_, w)| *w).collect();
    let mut merged = merge(&refs, &weights, args.combination, args.svd_rank)?;
    merged.name = args
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "merged".into());
    // The folder appears whole or not at all (an existing one only with --force).
    peft::save_adapter(&args.out, &merged)?;
    let report = MergeReport {
        out: &args.out,
        combination: args.combination,
        adapters: weighted
            .iter()
            .map(|(name, weight)| WeightedName {
                name,
                weight: *weight,
            })
            .collect(),
        r: merged.config.r,
        site_count: merged.sites.len(),
        parameter_count: merged.parameter_count(),
    };
    if ctx.json {
        return ctx.print_json(&report);
    }
    println!(
        "wrote {} ({} of {} adapters, r = {}, {} sites, {} parameters)",
        args.out.display(),
        args.combination,
        weighted.len(),
        report.r,
        report.site_count,
        report.parameter_count
    );
    Ok(())
}

/// `path` made absolute and normalised as far as it exists (its missing tail
/// kept), to tell whether two paths name one folder.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    let path =
        std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))?;
    let mut existing = path.as_path();
    let mut tail = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                tail.push(name.to_os_string());
                existing = parent;
            }
            _ => return Ok(path),
        }
    }
    let mut out = existing
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", existing.display()))?;
    out.extend(tail.iter().rev());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse_and_reject_bad_lists() {
        assert_eq!(
            parse_weights("a=0.5, b=-1").unwrap(),
            vec![("a".into(), 0.5), ("b".into(), -1.0)]
        );
        for (text, needle) in [
            ("", "empty"),
            (" , ", "empty"),
            ("a", "not NAME=WEIGHT"),
            ("a=x", "not a number"),
            ("a=NaN", "not finite"),
            ("a=inf", "not finite"),
            ("a=1,a=2", "twice"),
            ("=1", "empty name"),
        ] {
            let err = format!("{:#}", parse_weights(text).unwrap_err());
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
