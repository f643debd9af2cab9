//! `semla data corrupt` and `semla data materialize`: photometric domain
//! shifts (ImageNet-C / Cityscapes-C style) applied to one photo or to a
//! whole dataset split.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use semla_data::corrupt::{Corruption, CorruptionKind};
use semla_data::domains::Split;
use semla_data::image_io::{read_rgb, write_rgb_png};
use serde::Serialize;

use super::super::Context;

/// Arguments of `semla data corrupt`.
#[derive(clap::Args, Debug)]
pub struct CorruptArgs {
    /// Corruption kind: gaussian_noise, shot_noise, impulse_noise, defocus_blur,
    /// motion_blur, snow, fog, rain, night, brightness, contrast, jpeg.
    #[arg(long)]
    pub kind: CorruptionKind,
    /// Severity, 1 (mild) to 5 (strong).
    #[arg(long)]
    pub severity: u32,
    /// Seed of the corruption's random stream (same seed, same output).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Input photo.
    pub input: PathBuf,
    /// Output PNG (written to a temporary file, then renamed).
    pub output: PathBuf,
}

/// Arguments of `semla data materialize`.
#[derive(clap::Args, Debug)]
pub struct MaterializeArgs {
    /// Source domain, e.g. `camvid`, `camvid/0016E5`, `cs-normal`.
    #[arg(long)]
    pub domain: String,
    /// Split to corrupt.
    #[arg(long, default_value = "val")]
    pub split: Split,
    /// Corruption kind (see `semla data corrupt --help`).
    #[arg(long)]
    pub kind: CorruptionKind,
    /// Severity, 1 to 5.
    #[arg(long)]
    pub severity: u32,
    /// Seed; image number `i` of the split uses the stream of (seed, kind, severity, i).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Dataset root (default: `$DETECTRON2_DATASETS`).
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Output folder, written in CamVid layout: `<split>/` holds the corrupted
    /// images (PNG, same stems), `<split>annot/` the label files, copied unchanged.
    #[arg(long)]
    pub out: PathBuf,
}

/// What `materialize` wrote.
#[derive(Serialize)]
struct MaterializeReport {
    domain: String,
    split: Split,
    corruption: String,
    seed: u64,
    images: usize,
    images_dir: PathBuf,
    labels_dir: PathBuf,
}

/// `semla data corrupt`.
pub fn run_corrupt(args: CorruptArgs, ctx: &Context) -> anyhow::Result<()> {
    let corruption = Corruption::new(args.kind, args.severity, args.seed)?;
    let image = read_rgb(&args.input)?;
    let corrupted = corruption
        .apply(&image, 0)
        .with_context(|| format!("corrupting {}", args.input.display()))?;
    write_rgb_png(&args.output, &corrupted)?;
    if ctx.json {
        ctx.print_json(&serde_json::json!({
            "input": args.input,
            "output": args.output,
            "corruption": corruption.name(),
            "seed": args.seed,
        }))?;
    } else {
        println!(
            "{} -> {} ({}, seed {})",
            args.input.display(),
            args.output.display(),
            corruption.name(),
            args.seed
        );
    }
    Ok(())
}

/// `semla data materialize`.
pub fn run_materialize(args: MaterializeArgs, ctx: &Context) -> anyhow::Result<()> {
    let corruption = Corruption::new(args.kind, args.severity, args.seed)?;
    let domain = super::super::common::resolve(&args.domain, args.data_root.as_deref())?;
    let samples = domain.pairs(args.split)?;
    if samples.is_empty() {
        bail!("domain {} has no {} images", domain.name, args.split);
    }
    let images_dir = args.out.join(args.split.as_str());
    let labels_dir = args.out.join(format!("{}annot", args.split.as_str()));
    for dir in [&images_dir, &labels_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let bar = indicatif::ProgressBar::new(samples.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} [{elapsed} < {eta}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{} {}", domain.name, corruption.name()));
    for (index, sample) in samples.iter().enumerate() {
        let stem = sample
            .image
            .file_stem()
            .with_context(|| format!("{}: no file name", sample.image.display()))?;
        let image = domain.load_image(sample)?;
        let corrupted = corruption
            .apply(&image, index as u64)
            .with_context(|| format!("corrupting {}", sample.image.display()))?;
        write_rgb_png(&images_dir.join(stem).with_extension("png"), &corrupted)?;
        let label_name = Path::new(stem).with_extension(
            sample
                .label
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("png"),
        );
        copy_atomically(&sample.label, &labels_dir.join(label_name))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let report = MaterializeReport {
        domain: domain.name.clone(),
        split: args.split,
        corruption: corruption.name(),
        seed: args.seed,
        images: samples.len(),
        images_dir,
        labels_dir,
    };
    if ctx.json {
        ctx.print_json(&report)?;
    } else {
        println!(
            "{} {} images of {} under {} written to {} (labels unchanged in {})",
            report.images,
            report.split,
            report.domain,
            report.corruption,
            report.images_dir.display(),
            report.labels_dir.display()
        );
    }
    Ok(())
}

/// Copies `from` to `to` atomically, so a reader never sees a half-written
/// label file.
fn copy_atomically(from: &Path, to: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    semla_core::fs::write_atomic(to, &bytes)?;
    Ok(())
}
