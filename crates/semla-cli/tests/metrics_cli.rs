//! `semla metrics` end to end on label maps the test writes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::path::Path;

use semla_data::labels::{LabelMap, write_label_map};
use semla_test_support::cli::semla_text as semla;

fn write_row(path: &Path, values: &[u16]) {
    let map = LabelMap {
        width: values.len() as u32,
        height: 1,
        values: values.to_vec(),
    };
    write_label_map(path, &map).unwrap();
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn close(value: &serde_json::Value, expected: f64) -> bool {
    value.as_f64().is_some_and(|v| (v - expected).abs() < 1e-9)
}

/// gt 0 0 0 1 1 255 255 / pred 0 0 1 1 2 2 0 (3 classes): class 2 is predicted but absent
/// from the ground truth. IoU 2/3, 1/3 and (cityscapes) 0; ignored pixels never count.
#[test]
fn two_files_both_definitions() {
    let dir = tempfile::tempdir().unwrap();
    let (pred, gt) = (dir.path().join("pred.png"), dir.path().join("gt.png"));
    write_row(&gt, &[0, 0, 0, 1, 1, 255, 255]);
    write_row(&pred, &[0, 0, 1, 1, 2, 2, 0]);
    let p = pred.to_str().unwrap();
    let g = gt.to_str().unwrap();

    let base = [
        "--json",
        "metrics",
        "--pred",
        p,
        "--gt",
        g,
        "--num-classes",
        "3",
    ];
    let (ok, out, err) = semla(&[&base[..], &["--definition", "cityscapes"]].concat());
    assert!(ok, "{err}");
    let v = json(&out);
    assert!(close(&v["miou"], 100.0 / 3.0), "{v}");
    assert!(close(&v["per_class"][2]["iou"], 0.0), "{v}");
    assert!(close(&v["pixel_accuracy"], 60.0), "{v}");
    assert_eq!(v["counted_pixels"], 5);
    assert_eq!(v["ignored_pixels"], 2);
    assert_eq!(v["images"], 1);

    let (ok, out, err) = semla(&[&base[..], &["--definition", "detectron2"]].concat());
    assert!(ok, "{err}");
    let v = json(&out);
    assert!(close(&v["miou"], 50.0), "{v}");
    assert!(v["per_class"][2]["iou"].is_null(), "{v}");
    assert!(
        close(&v["mean_accuracy"], 100.0 * (2.0 / 3.0 + 0.5) / 2.0),
        "{v}"
    );

    // Human-readable output.
    let (ok, out, _) = semla(&["metrics", "--pred", p, "--gt", g, "--num-classes", "3"]);
    assert!(ok);
    assert!(out.contains("mIoU 50.00"), "{out}");
}

/// Two folders paired by name less their shared tails (`_pred`, `_gt`),
/// accumulated as one matrix:
/// a: gt 0 1 / pred 0 1; b: gt 1 1 / pred 0 1.
/// class 0: tp 1, gt 1, pred 2 -> 1/2; class 1: tp 2, gt 3, pred 2 -> 2/3.
#[test]
fn folders_are_one_confusion_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let (preds, gts) = (dir.path().join("pred"), dir.path().join("gt"));
    std::fs::create_dir_all(&preds).unwrap();
    std::fs::create_dir_all(&gts).unwrap();
    write_row(&gts.join("a_gt.png"), &[0, 1]);
    write_row(&preds.join("a_pred.png"), &[0, 1]);
    write_row(&gts.join("b_gt.png"), &[1, 1]);
    write_row(&preds.join("b_pred.png"), &[0, 1]);
    let args = [
        "--json",
        "metrics",
        "--pred",
        preds.to_str().unwrap(),
        "--gt",
        gts.to_str().unwrap(),
        "--num-classes",
        "2",
    ];
    let (ok, out, err) = semla(&args);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(v["images"], 2);
    assert!(close(&v["miou"], 100.0 * (0.5 + 2.0 / 3.0) / 2.0), "{v}");
    assert!(close(&v["pixel_accuracy"], 75.0), "{v}");

    // A file without its partner is an error naming it.
    write_row(&gts.join("c_gt.png"), &[1, 1]);
    let (ok, _, err) = semla(&args);
    assert!(!ok);
    assert!(
        err.contains("no partner") && err.contains("ground truth without prediction: c_gt.png"),
        "{err}"
    );
}

#[test]
fn bad_prediction_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (pred, gt) = (dir.path().join("bad_pred.png"), dir.path().join("gt.png"));
    write_row(&gt, &[0, 1, 1]);
    write_row(&pred, &[0, 1, 5]);
    let (ok, _, err) = semla(&[
        "metrics",
        "--pred",
        pred.to_str().unwrap(),
        "--gt",
        gt.to_str().unwrap(),
        "--num-classes",
        "2",
    ]);
    assert!(!ok);
    assert!(
        err.contains("bad_pred.png") && err.contains("value 5"),
        "{err}"
    );

    // A size mismatch names both files.
    write_row(&pred, &[0, 1]);
    let (ok, _, err) = semla(&[
        "metrics",
        "--pred",
        pred.to_str().unwrap(),
        "--gt",
        gt.to_str().unwrap(),
        "--num-classes",
        "2",
    ]);
    assert!(!ok);
    assert!(
        err.contains("bad_pred.png") && err.contains("gt.png"),
        "{err}"
    );
}

/// A ground-truth value outside the classes that is not the ignore value is counted as
/// ignored, with one warning for the file.
#[test]
fn invalid_ground_truth_is_ignored_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (pred, gt) = (dir.path().join("pred.png"), dir.path().join("odd_gt.png"));
    write_row(&gt, &[0, 7, 7, 1, 255]);
    write_row(&pred, &[0, 0, 1, 1, 1]);
    let (ok, out, err) = semla(&[
        "--json",
        "metrics",
        "--pred",
        pred.to_str().unwrap(),
        "--gt",
        gt.to_str().unwrap(),
        "--num-classes",
        "2",
        "--ignore",
        "255",
    ]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(v["invalid_ground_truth_pixels"], 2);
    assert_eq!(v["ignored_pixels"], 1);
    assert_eq!(v["counted_pixels"], 2);
    assert!(close(&v["miou"], 100.0), "{v}");
    assert_eq!(err.matches("odd_gt.png").count(), 1, "{err}");
    assert!(err.contains("WARN"), "{err}");
}
