//! `semla metrics`: mIoU of predicted label maps against ground truth.
//!
//! `--pred` and `--gt` are two PNG label maps, or two folders whose `*.png` files are
//! paired in sorted file-name order (the counts must match). The whole set is
//! accumulated into one confusion matrix, as SemLA's evaluators do over a split.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use semla_data::labels::read_label_map;
use semla_metrics::{ConfusionMatrix, Definition, MetricsError, Scores};
use serde::Serialize;

use super::Context;

/// Arguments of `semla metrics`.
#[derive(clap::Args, Debug)]
pub struct MetricsArgs {
    /// Predicted label map (PNG) or folder of them.
    #[arg(long)]
    pub pred: PathBuf,
    /// Ground-truth label map (PNG) or folder of them.
    #[arg(long)]
    pub gt: PathBuf,
    /// Number of classes K; class indices are 0..K.
    #[arg(long)]
    pub num_classes: usize,
    /// Ground-truth value excluded from scoring. Other ground-truth values outside 0..K
    /// are excluded too, with a warning.
    #[arg(long, default_value_t = 255)]
    pub ignore: u16,
    /// mIoU definition: `cityscapes` (cityscapesScripts: a class predicted but absent from
    /// the ground truth counts with IoU 0) or `detectron2` (such classes are left out).
    #[arg(long, default_value = "detectron2")]
    pub definition: Definition,
}

/// `semla metrics`: scores in percent (text, or JSON with `--json`).
pub fn run(args: MetricsArgs, ctx: &Context) -> anyhow::Result<()> {
    let pairs = pair_inputs(&args.pred, &args.gt)?;
    let mut matrix = ConfusionMatrix::new(args.num_classes);
    for (pred, gt) in &pairs {
        accumulate_pair(&mut matrix, pred, gt, args.ignore)?;
    }
    let scores = matrix.scores(args.definition);
    let report = MetricsReport::new(&args, pairs.len(), &scores);
    if ctx.json {
        ctx.print_json(&report)
    } else {
        print_text(&report);
        Ok(())
    }
}

/// The (prediction, ground truth) files to compare.
fn pair_inputs(pred: &Path, gt: &Path) -> anyhow::Result<Vec<(PathBuf, PathBuf)>> {
    match (pred.is_dir(), gt.is_dir()) {
        (false, false) => Ok(vec![(pred.to_path_buf(), gt.to_path_buf())]),
        (true, true) => {
            let preds = sorted_pngs(pred)?;
            let gts = sorted_pngs(gt)?;
            if preds.len() != gts.len() {
                bail!(
                    "{} has {} PNG files but {} has {}: cannot pair them",
                    pred.display(),
                    preds.len(),
                    gt.display(),
                    gts.len()
                );
            }
            if preds.is_empty() {
                bail!("no PNG files in {}", pred.display());
            }
            Ok(preds.into_iter().zip(gts).collect())
        }
        _ => bail!(
            "--pred {} and --gt {} must both be files or both be folders",
            pred.display(),
            gt.display()
        ),
    }
}

/// The `*.png` files of `dir`, sorted by name.
fn sorted_pngs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        let is_png = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("png"));
        if is_png && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Adds one pair to the matrix; warns once per file about invalid ground truth.
fn accumulate_pair(
    matrix: &mut ConfusionMatrix,
    pred: &Path,
    gt: &Path,
    ignore: u16,
) -> anyhow::Result<()> {
    let prediction = read_label_map(pred)?;
    let truth = read_label_map(gt)?;
    if (prediction.width, prediction.height) != (truth.width, truth.height) {
        bail!(
            "{} is {}x{} but its ground truth {} is {}x{}",
            pred.display(),
            prediction.width,
            prediction.height,
            gt.display(),
            truth.width,
            truth.height
        );
    }
    let report = matrix
        .accumulate(&prediction.values, &truth.values, Some(ignore))
        .map_err(|err| match err {
            MetricsError::PredictionOutOfRange {
                value,
                pixel,
                num_classes,
            } => anyhow::anyhow!(
                "{}: predicted value {value} at (x {}, y {}) is not a class (expected 0..{num_classes})",
                pred.display(),
                pixel % prediction.width.max(1) as usize,
                pixel / prediction.width.max(1) as usize
            ),
            other => anyhow::anyhow!("{}: {other}", pred.display()),
        })?;
    if report.invalid_ground_truth > 0 {
        tracing::warn!(
            file = %gt.display(),
            pixels = report.invalid_ground_truth,
            "ground-truth values outside 0..{} that are not the ignore value {ignore}: counted as ignored",
            matrix.num_classes()
        );
    }
    Ok(())
}

/// One class in the report (percentages).
#[derive(Serialize)]
struct ClassReport {
    class: usize,
    iou: Option<f64>,
    accuracy: Option<f64>,
    ground_truth_pixels: u64,
    predicted_pixels: u64,
}

/// What `semla metrics` prints; scores in percent.
#[derive(Serialize)]
struct MetricsReport {
    definition: Definition,
    num_classes: usize,
    ignore: u16,
    images: usize,
    miou: Option<f64>,
    pixel_accuracy: Option<f64>,
    mean_accuracy: Option<f64>,
    frequency_weighted_iou: Option<f64>,
    scored_classes: usize,
    counted_pixels: u64,
    ignored_pixels: u64,
    invalid_ground_truth_pixels: u64,
    per_class: Vec<ClassReport>,
}

fn percent(value: Option<f64>) -> Option<f64> {
    value.map(|v| 100.0 * v)
}

impl MetricsReport {
    fn new(args: &MetricsArgs, images: usize, scores: &Scores) -> Self {
        Self {
            definition: scores.definition,
            num_classes: args.num_classes,
            ignore: args.ignore,
            images,
            miou: percent(scores.mean_iou),
            pixel_accuracy: percent(scores.pixel_accuracy),
            mean_accuracy: percent(scores.mean_accuracy),
            frequency_weighted_iou: percent(scores.frequency_weighted_iou),
            scored_classes: scores.scored_classes,
            counted_pixels: scores.counted_pixels,
            ignored_pixels: scores.ignored_pixels,
            invalid_ground_truth_pixels: scores.invalid_ground_truth_pixels,
            per_class: scores
                .classes
                .iter()
                .map(|c| ClassReport {
                    class: c.class,
                    iou: percent(c.iou),
                    accuracy: percent(c.accuracy),
                    ground_truth_pixels: c.ground_truth_pixels,
                    predicted_pixels: c.predicted_pixels,
                })
                .collect(),
        }
    }
}

fn format_percent(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
}

fn print_text(report: &MetricsReport) {
    println!(
        "{} image(s), {} classes, definition {:?}: {} pixels counted, {} ignored, {} invalid ground truth",
        report.images,
        report.num_classes,
        report.definition,
        report.counted_pixels,
        report.ignored_pixels,
        report.invalid_ground_truth_pixels
    );
    println!(
        "mIoU {} over {} classes | pixel acc {} | mean acc {} | fwIoU {}",
        format_percent(report.miou),
        report.scored_classes,
        format_percent(report.pixel_accuracy),
        format_percent(report.mean_accuracy),
        format_percent(report.frequency_weighted_iou)
    );
    println!(
        "{:>5} {:>7} {:>7} {:>12} {:>12}",
        "class", "IoU", "acc", "gt pixels", "pred pixels"
    );
    for c in &report.per_class {
        println!(
            "{:>5} {:>7} {:>7} {:>12} {:>12}",
            c.class,
            format_percent(c.iou),
            format_percent(c.accuracy),
            c.ground_truth_pixels,
            c.predicted_pixels
        );
    }
}
