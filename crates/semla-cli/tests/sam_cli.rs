//! `semla sam predict` on the tiny random SAM and MobileSAM whose outputs the
//! official predictors wrote (`crates/semla-models/tests/fixtures/sam/` and
//! `.../mobile_sam/`, see `tools/reference/sam_reference.py`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::path::{Path, PathBuf};

use semla_test_support::{cli, max_abs_diff_slices};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../semla-models/tests/fixtures/sam")
}

fn fixture(name: &str) -> String {
    fixtures().join(name).display().to_string()
}

/// The tiny SAM as a `.safetensors` file of its official state-dict keys.
fn write_checkpoint(dir: &Path) -> PathBuf {
    let tensors = semla_test_support::tensors_from_keys(&fixtures().join("keys_sam_tiny.json"));
    let path = dir.join("sam_tiny.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    path
}

fn reference(key: &str) -> Vec<f32> {
    let outputs = candle_core::safetensors::load(
        fixtures().join("outputs_sam_tiny.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    outputs[key].flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn predict_writes_the_official_logits_the_best_mask_and_the_iou() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = write_checkpoint(dir.path());
    let out = dir.path().join("out");
    // The fixture's "two_points" case: a foreground and a background point.
    let (ok, stdout, stderr) = cli::semla_text(&[
        "sam",
        "predict",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--encoder-config",
        &fixture("encoder.json"),
        "--points",
        "20,15;60.5,40",
        "--labels",
        "1,0",
        "--out",
        out.to_str().unwrap(),
        &fixture("image.png"),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("IoU predictions"), "{stdout}");

    let bytes = std::fs::read(out.join("image_logits.npy")).unwrap();
    let logits = semla_adapters::npz::parse_npy(&bytes).unwrap();
    assert_eq!(logits.shape, vec![3, 57, 83]);
    let diff = max_abs_diff_slices(&logits.data, &reference("two_points.logits"));
    assert!(
        diff < 1e-4,
        "logits differ from the official predictor by {diff}"
    );

    let bytes = std::fs::read(out.join("image_masks.npy")).unwrap();
    let masks = semla_adapters::npz::parse_npy(&bytes).unwrap();
    assert!(
        bytes.starts_with(b"\x93NUMPY") && String::from_utf8_lossy(&bytes[..80]).contains("'|u1'")
    );
    assert_eq!(masks.shape, vec![3, 57, 83]);
    let thresholded: Vec<f32> = logits
        .data
        .iter()
        .map(|&v| f32::from(u8::from(v > 0.0)))
        .collect();
    assert_eq!(masks.data, thresholded);
    let bytes = std::fs::read(out.join("image_iou.npy")).unwrap();
    let iou_npy = semla_adapters::npz::parse_npy(&bytes).unwrap();
    assert_eq!(iou_npy.shape, vec![3]);
    let diff = max_abs_diff_slices(&iou_npy.data, &reference("two_points.iou"));
    assert!(
        diff < 1e-4,
        "IoU differs from the official predictor by {diff}"
    );

    let records: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("predictions.json")).unwrap()).unwrap();
    let iou: Vec<f32> = records[0]["iou"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let diff = max_abs_diff_slices(&iou, &reference("two_points.iou"));
    assert!(diff < 1e-4, "IoU differs by {diff}");
    let best = iou
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0;
    assert_eq!(records[0]["best_mask"], best);

    let mask = semla_data::labels::read_label_map(&out.join("image_mask.png")).unwrap();
    let plane = 57 * 83;
    let expected: Vec<u16> = logits.data[best * plane..(best + 1) * plane]
        .iter()
        .map(|&v| u16::from(v > 0.0))
        .collect();
    assert_eq!(mask.values, expected);
}

#[test]
fn a_box_alone_with_one_mask_and_bad_prompts_or_checkpoints_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = write_checkpoint(dir.path());
    let checkpoint = checkpoint.to_str().unwrap();
    let image = fixture("image.png");
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();

    // The fixture's "point_box" case, single mask.
    let (ok, _, stderr) = cli::semla_text(&[
        "sam",
        "predict",
        "--checkpoint",
        checkpoint,
        "--points",
        "41,30",
        "--box",
        "10,8,70,50",
        "--single-mask",
        "--out",
        out,
        &image,
    ]);
    assert!(ok, "{stderr}");
    let bytes = std::fs::read(Path::new(out).join("image_logits.npy")).unwrap();
    let logits = semla_adapters::npz::parse_npy(&bytes).unwrap();
    assert_eq!(logits.shape, vec![1, 57, 83]);
    let diff = max_abs_diff_slices(&logits.data, &reference("point_box.logits"));
    assert!(diff < 1e-4, "point_box logits differ by {diff}");

    let fails = |extra: &[&str]| {
        let mut args = vec!["sam", "predict", "--checkpoint", checkpoint];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--out", out, &image]);
        let (ok, _, stderr) = cli::semla_text(&args);
        assert!(!ok, "{extra:?} should fail");
        stderr
    };
    let m = fails(&[]);
    assert!(m.contains("give a prompt"), "{m}");
    let m = fails(&["--points", "1,2;3"]);
    assert!(m.contains("\"3\" is not x,y"), "{m}");
    let m = fails(&["--points", "1,2", "--labels", "1,1"]);
    assert!(m.contains("2 labels for 1 points"), "{m}");
    let m = fails(&["--points", "1,2", "--labels", "2"]);
    assert!(m.contains("neither 1"), "{m}");
    let m = fails(&["--box", "9,9,1,1"]);
    assert!(m.contains("x1 must not be left of x0"), "{m}");
    let m = fails(&["--points", "1,2", "--encoder-config", "vit_b"]);
    assert!(m.contains("does not fit the checkpoint"), "{m}");

    // A truncated checkpoint names its file; the earlier output stays whole.
    let bytes = std::fs::read(checkpoint).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, _, stderr) = cli::semla_text(&[
        "sam",
        "predict",
        "--checkpoint",
        truncated.to_str().unwrap(),
        "--points",
        "1,2",
        "--out",
        out,
        &image,
    ]);
    assert!(!ok);
    assert!(stderr.contains("truncated.safetensors"), "{stderr}");
    assert!(Path::new(out).join("image_logits.npy").exists());

    // A checkpoint of another model says it is not SAM.
    let other = dir.path().join("other.safetensors");
    let tensors = std::collections::HashMap::from([(
        "w".to_string(),
        candle_core::Tensor::zeros(2, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
    )]);
    candle_core::safetensors::save(&tensors, &other).unwrap();
    let (ok, _, stderr) = cli::semla_text(&[
        "sam",
        "predict",
        "--checkpoint",
        other.to_str().unwrap(),
        "--points",
        "1,2",
        "--out",
        out,
        &image,
    ]);
    assert!(!ok);
    assert!(stderr.contains("not a SAM model"), "{stderr}");
}

#[test]
fn a_mobile_sam_checkpoint_is_recognised_and_predicts_the_official_logits() {
    let mobile =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../semla-models/tests/fixtures/mobile_sam");
    let dir = tempfile::tempdir().unwrap();
    let tensors = semla_test_support::tensors_from_keys(&mobile.join("keys_mobile_sam_tiny.json"));
    let checkpoint = dir.path().join("mobile_sam_tiny.safetensors");
    candle_core::safetensors::save(&tensors, &checkpoint).unwrap();
    let outputs = candle_core::safetensors::load(
        mobile.join("outputs_mobile_sam_tiny.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let want = |key: &str| -> Vec<f32> { outputs[key].flatten_all().unwrap().to_vec1().unwrap() };
    let image = mobile.join("image.png").display().to_string();
    let encoder = mobile.join("encoder.json").display().to_string();
    // With its encoder config and without one (TinyViT is recognised from the keys).
    for extra in [vec!["--encoder-config", encoder.as_str()], vec![]] {
        let out = dir.path().join(format!("out{}", extra.len()));
        let mut args = vec![
            "sam",
            "predict",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
        ];
        args.extend(extra.iter().copied());
        args.extend([
            "--points",
            "20,15;60.5,40",
            "--labels",
            "1,0",
            "--out",
            out.to_str().unwrap(),
            &image,
        ]);
        let (ok, _, stderr) = cli::semla_text(&args);
        assert!(ok, "{stderr}");
        let bytes = std::fs::read(out.join("image_logits.npy")).unwrap();
        let logits = semla_adapters::npz::parse_npy(&bytes).unwrap();
        assert_eq!(logits.shape, vec![3, 57, 83]);
        let diff = max_abs_diff_slices(&logits.data, &want("two_points.logits"));
        assert!(diff < 1e-4, "MobileSAM logits differ by {diff}");
        let bytes = std::fs::read(out.join("image_iou.npy")).unwrap();
        let iou = semla_adapters::npz::parse_npy(&bytes).unwrap();
        let diff = max_abs_diff_slices(&iou.data, &want("two_points.iou"));
        assert!(diff < 1e-4, "MobileSAM IoU differs by {diff}");
    }
    // The released MobileSAM's arguments do not fit the tiny checkpoint; SAM's do not either.
    for (config, says) in [
        ("vit_t", "does not fit the checkpoint"),
        ("vit_b", "the checkpoint is MobileSAM's TinyViT"),
    ] {
        let out = dir.path().join("refused");
        let (ok, _, stderr) = cli::semla_text(&[
            "sam",
            "predict",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--encoder-config",
            config,
            "--points",
            "1,2",
            "--out",
            out.to_str().unwrap(),
            &image,
        ]);
        assert!(!ok && stderr.contains(says), "{config}: {stderr}");
        assert!(!out.exists());
    }
}
