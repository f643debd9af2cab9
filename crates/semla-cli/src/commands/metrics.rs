//! `semla metrics`: mIoU of predicted label maps against ground truth.
//!
//! `--pred` and `--gt` are two PNG label maps, or two folders whose `*.png` files are
//! paired by file name, less a tail all names of a folder share (`a_pred.png` pairs
//! with `a_gt.png`, CamVid's `0001TP_006690.png` with `0001TP_006690_L.png`). Every
//! file must have its partner; the unmatched ones are named. The whole set is accumulated into one confusion matrix, as SemLA's
//! evaluators do over a split.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use semla_data::labels::read_label_map;
use semla_metrics::{ConfusionMatrix, Definition, MetricsError, Scores};
use serde::Serialize;

use super::Context;

/// Arguments of `semla metrics`.
#[derive(clap::Args, Debug)]
pub struct MetricsArgs {
    /// Predicted label map (PNG) or folder of them. Folders pair their files by
    /// name, less a tail all names of a folder share (`a_pred.png` with
    /// `a_gt.png`, CamVid's `X.png` with `X_L.png`); a file without a partner is
    /// an error.
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
    semla_core::limits::check_classes(args.num_classes as u64, "--num-classes")
        .map_err(anyhow::Error::msg)?;
    if args.num_classes == 0 {
        bail!("--num-classes must be at least 1");
    }
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
            if preds.is_empty() {
                bail!("no PNG files in {}", pred.display());
            }
            let (pred_keys, gt_keys) = (pairing_keys(&preds), pairing_keys(&gts));
            let unmatched = |from: &[PathBuf], keys: &[String], other: &[String]| -> Vec<String> {
                from.iter()
                    .zip(keys)
                    .filter(|(_, key)| !other.contains(key))
                    .map(|(p, _)| {
                        p.file_name()
                            .unwrap_or_default()
                            .to_string_lossy()
                            .into_owned()
                    })
                    .collect()
            };
            let lone_preds = unmatched(&preds, &pred_keys, &gt_keys);
            let lone_gts = unmatched(&gts, &gt_keys, &pred_keys);
            if !lone_preds.is_empty() || !lone_gts.is_empty() {
                let list = |names: &[String]| match names.len() {
                    0 => "none".to_string(),
                    n if n > 5 => format!("{} and {} more", names[..5].join(", "), n - 5),
                    _ => names.join(", "),
                };
                bail!(
                    "the files of {} and {} are paired by name, and some have no partner: \
                     predictions without ground truth: {}; ground truth without prediction: {}",
                    pred.display(),
                    gt.display(),
                    list(&lone_preds),
                    list(&lone_gts)
                );
            }
            let mut pairs = Vec::with_capacity(preds.len());
            for (pred_file, key) in preds.iter().zip(&pred_keys) {
                if let Some(i) = gt_keys.iter().position(|k| k == key) {
                    pairs.push((pred_file.clone(), gts[i].clone()));
                }
            }
            Ok(pairs)
        }
        _ => bail!(
            "--pred {} and --gt {} must both be files or both be folders",
            pred.display(),
            gt.display()
        ),
    }
}

/// The name each file of a folder is paired by: its stem, less the tail that all
/// stems of the folder share when it starts at a `_`, `-` or `.` (`_pred`, `_L` in
/// CamVid, `_gtFine_labelIds` in Cityscapes). Exact names pair as they are, since
/// two folders of equal names strip the same tail.
fn pairing_keys(files: &[PathBuf]) -> Vec<String> {
    let stems: Vec<String> = files
        .iter()
        .map(|p| {
            p.file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let Some(first) = stems.first() else {
        return Vec::new();
    };
    // The longest tail shared by every stem that starts at a separator and leaves
    // every stem a non-empty key.
    let shortest = stems.iter().map(String::len).min().unwrap_or(0);
    let tail_len = first
        .char_indices()
        .map(|(i, _)| first.len() - i)
        .filter(|&len| len < shortest)
        .filter(|&len| {
            let tail = &first[first.len() - len..];
            tail.starts_with(['_', '-', '.']) && stems.iter().all(|s| s.ends_with(tail))
        })
        .max()
        .unwrap_or(0);
    stems
        .into_iter()
        .map(|s| s[..s.len() - tail_len].to_string())
        .collect()
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

#[cfg(test)]
mod tests {
    use super::pairing_keys;
    use std::path::PathBuf;

    fn keys(names: &[&str]) -> Vec<String> {
        pairing_keys(&names.iter().map(PathBuf::from).collect::<Vec<_>>())
    }

    #[test]
    fn shared_tails_are_dropped_at_a_separator() {
        assert_eq!(keys(&["a_pred.png", "b_pred.png"]), ["a", "b"]);
        assert_eq!(keys(&["a_gt.png", "b_gt.png"]), ["a", "b"]);
        // CamVid: predictions under the image's name, labels with `_L`.
        assert_eq!(
            keys(&["0001TP_006690.png", "0001TP_006720.png"]),
            ["0001TP_006690", "0001TP_006720"]
        );
        assert_eq!(
            keys(&["0001TP_006690_L.png", "0001TP_006720_L.png"]),
            ["0001TP_006690", "0001TP_006720"]
        );
        // Cityscapes: every annotated frame is number 19 of its sequence.
        assert_eq!(
            keys(&[
                "aachen_000000_000019_gtFine_labelIds.png",
                "bonn_000001_000019_gtFine_labelIds.png"
            ]),
            ["aachen_000000", "bonn_000001"]
        );
        assert_eq!(
            keys(&[
                "aachen_000000_000019_leftImg8bit.png",
                "bonn_000001_000019_leftImg8bit.png"
            ]),
            ["aachen_000000", "bonn_000001"]
        );
        // A shared tail not starting at a separator stays.
        assert_eq!(keys(&["x10.png", "y10.png"]), ["x10", "y10"]);
        // One file: everything from its first separator is the shared tail.
        assert_eq!(keys(&["photo_gt.png"]), ["photo"]);
        assert_eq!(keys(&["photo.png"]), ["photo"]);
        assert!(keys(&[]).is_empty());
    }
}
