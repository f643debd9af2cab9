//! `semla data`: look at domains and label maps.
//!
//! - `semla data stats DOMAIN [--split S] [--data-root R]`: images, sizes and the class
//!   histogram of a domain's splits.
//! - `semla data show LABEL.png --palette <dataset> --out OUT.png [--image IMG] [--alpha A]`:
//!   a label map in the dataset's colours, optionally blended over its photo.
//! - `semla data corrupt` / `semla data materialize`: domain shifts, in [`shift`].

pub mod shift;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use semla_data::domains::palette::{blend, colorize};
use semla_data::domains::{Domain, DomainError, Palette, Split};
use semla_data::image_io::{image_size, read_rgb, write_rgb_png};
use semla_data::labels::read_label_map;
use serde::Serialize;

use super::Context;

/// Arguments of `semla data`.
#[derive(clap::Args, Debug)]
pub struct DataArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: DataCommand,
}

/// The `semla data` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum DataCommand {
    /// Image count, image sizes and class histogram of a domain.
    Stats(StatsArgs),
    /// Colour a label map with a dataset's palette, optionally over its photo.
    Show(ShowArgs),
    /// Apply a photometric domain shift (ImageNet-C style) to one photo.
    Corrupt(shift::CorruptArgs),
    /// Write a whole corrupted split (images corrupted, labels copied unchanged).
    Materialize(shift::MaterializeArgs),
}

/// `semla data`: dispatches to the subcommand.
pub fn run(args: DataArgs, ctx: &Context) -> anyhow::Result<()> {
    match args.command {
        DataCommand::Stats(stats) => run_stats(stats, ctx),
        DataCommand::Show(show) => run_show(show, ctx),
        DataCommand::Corrupt(corrupt) => shift::run_corrupt(corrupt, ctx),
        DataCommand::Materialize(args) => shift::run_materialize(args, ctx),
    }
}

/// Arguments of `semla data stats`.
#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// Domain name, e.g. `camvid`, `camvid/0001TP`, `cs-normal`, `acdc-fog`.
    pub domain: String,
    /// Only this split (train, val or test); default: every split present.
    #[arg(long)]
    pub split: Option<Split>,
    /// Dataset root; default: the DETECTRON2_DATASETS environment variable.
    #[arg(long)]
    pub data_root: Option<PathBuf>,
}

/// Statistics of one split.
#[derive(Serialize)]
struct SplitStats {
    split: Split,
    images: usize,
    /// `"WxH"` → number of images.
    image_sizes: BTreeMap<String, usize>,
    /// Label maps whose size differs from their image's.
    label_size_mismatches: usize,
    /// Pixels per class, in class order.
    class_pixels: Vec<u64>,
    ignored_pixels: u64,
    /// Pixels whose value is neither a class nor the ignore value.
    other_pixels: u64,
}

/// Statistics of a domain.
#[derive(Serialize)]
struct DomainStats {
    domain: String,
    classes: Vec<String>,
    ignore_value: u16,
    evaluator: semla_data::domains::EvaluatorKind,
    layout: String,
    /// Images the domain prototype is computed from (`None` if that folder is missing).
    prototype_images: Option<usize>,
    splits: Vec<SplitStats>,
}

fn run_stats(args: StatsArgs, ctx: &Context) -> anyhow::Result<()> {
    let domain = super::common::resolve(&args.domain, args.data_root.as_deref())?;
    let splits: Vec<Split> = match args.split {
        Some(split) => vec![split],
        None => Split::ALL.to_vec(),
    };
    let mut stats = Vec::new();
    for split in splits {
        match split_stats(&domain, split) {
            Ok(s) => stats.push(s),
            // Without --split, a split whose folder is absent is simply not there.
            Err(DomainError::MissingFolder { .. } | DomainError::MissingFile { .. })
                if args.split.is_none() => {}
            Err(err) => return Err(err.into()),
        }
    }
    if stats.is_empty() {
        anyhow::bail!(
            "domain {} has no split (expected layout: {})",
            domain.name,
            domain.layout.describe()
        );
    }
    let report = DomainStats {
        domain: domain.name.clone(),
        classes: domain.classes.clone(),
        ignore_value: domain.ignore_value,
        evaluator: domain.evaluator,
        layout: domain.layout.describe(),
        prototype_images: domain.train_images().ok().map(|images| images.len()),
        splits: stats,
    };
    if ctx.json {
        ctx.print_json(&report)
    } else {
        print_stats(&report);
        Ok(())
    }
}

fn split_stats(domain: &Domain, split: Split) -> Result<SplitStats, DomainError> {
    let pairs = domain.pairs(split)?;
    let mut stats = SplitStats {
        split,
        images: pairs.len(),
        image_sizes: BTreeMap::new(),
        label_size_mismatches: 0,
        class_pixels: vec![0; domain.num_classes()],
        ignored_pixels: 0,
        other_pixels: 0,
    };
    for sample in &pairs {
        // The header is enough for files; layouts that make images load them.
        let (width, height) = if sample.image.is_file() {
            image_size(&sample.image)?
        } else {
            domain.load_image(sample)?.dimensions()
        };
        *stats
            .image_sizes
            .entry(format!("{width}x{height}"))
            .or_default() += 1;
        let label = domain.load_label(sample)?;
        if (label.width, label.height) != (width, height) {
            stats.label_size_mismatches += 1;
        }
        for &value in &label.values {
            if value == domain.ignore_value {
                stats.ignored_pixels += 1;
            } else if let Some(count) = stats.class_pixels.get_mut(value as usize) {
                *count += 1;
            } else {
                stats.other_pixels += 1;
            }
        }
    }
    Ok(stats)
}

fn print_stats(report: &DomainStats) {
    println!(
        "domain {}: {} classes, ignore {}, evaluator {:?}",
        report.domain,
        report.classes.len(),
        report.ignore_value,
        report.evaluator
    );
    println!("layout: {}", report.layout);
    match report.prototype_images {
        Some(n) => println!("prototype images: {n}"),
        None => println!("prototype images: folder missing"),
    }
    for split in &report.splits {
        let sizes: Vec<String> = split
            .image_sizes
            .iter()
            .map(|(size, n)| format!("{size} x{n}"))
            .collect();
        println!(
            "\n[{}] {} images; sizes: {}; label/image size mismatches: {}",
            split.split,
            split.images,
            if sizes.is_empty() {
                "-".to_string()
            } else {
                sizes.join(", ")
            },
            split.label_size_mismatches
        );
        let total: u64 =
            split.class_pixels.iter().sum::<u64>() + split.ignored_pixels + split.other_pixels;
        let share = |n: u64| {
            if total == 0 {
                0.0
            } else {
                100.0 * n as f64 / total as f64
            }
        };
        for (class, (name, &pixels)) in report.classes.iter().zip(&split.class_pixels).enumerate() {
            println!(
                "  {class:>3} {name:<24} {pixels:>12} {:>6.2}%",
                share(pixels)
            );
        }
        println!(
            "  ign {:<24} {:>12} {:>6.2}%",
            "(ignore value)",
            split.ignored_pixels,
            share(split.ignored_pixels)
        );
        if split.other_pixels > 0 {
            println!(
                "  !!! {:<24} {:>12} {:>6.2}%",
                "(not a class)",
                split.other_pixels,
                share(split.other_pixels)
            );
        }
    }
}

/// Arguments of `semla data show`.
#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// The label map (PNG, raw class indices).
    pub label: PathBuf,
    /// Photo to blend the colours over (same size as the label map).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Weight of the label colours when blending over `--image` (0..1).
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f32,
    /// Dataset whose colours to use: `cityscapes` (also acdc, muses, bdd), `camvid`, or
    /// any other name for a generic deterministic palette.
    #[arg(long)]
    pub palette: String,
    /// Value drawn black; default: 11 for camvid, 255 otherwise.
    #[arg(long)]
    pub ignore: Option<u16>,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
}

fn run_show(args: ShowArgs, ctx: &Context) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.alpha) {
        anyhow::bail!("--alpha must be between 0 and 1, got {}", args.alpha);
    }
    let palette = Palette::for_dataset(&args.palette);
    let ignore = args.ignore.unwrap_or(match palette {
        Palette::CamVid => semla_data::domains::camvid::CAMVID_IGNORE,
        _ => 255,
    });
    let label = read_label_map(&args.label)?;
    let mut picture = colorize(&label, palette, Some(ignore));
    if let Some(image_path) = &args.image {
        let photo = read_rgb(image_path)?;
        picture = blend(&picture, &photo, args.alpha, image_path)?;
    }
    write_rgb_png(&args.out, &picture)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let summary = ShowSummary {
        out: &args.out,
        palette,
        ignore,
        width: label.width,
        height: label.height,
        blended: args.image.is_some(),
    };
    if ctx.json {
        ctx.print_json(&summary)
    } else {
        println!(
            "wrote {} ({}x{}, {:?} palette{})",
            args.out.display(),
            label.width,
            label.height,
            palette,
            if summary.blended {
                ", blended over the photo"
            } else {
                ""
            }
        );
        Ok(())
    }
}

#[derive(Serialize)]
struct ShowSummary<'a> {
    out: &'a Path,
    palette: Palette,
    ignore: u16,
    width: u32,
    height: u32,
    blended: bool,
}
