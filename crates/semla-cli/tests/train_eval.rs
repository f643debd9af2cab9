//! `semla train base`, `semla adapter train` and `semla eval` end to end on
//! real CamVid frames (skipped when `../shared/data/camvid` is absent).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use semla_test_support::cli::semla_text_in;
use std::path::PathBuf;

fn data_root() -> Option<PathBuf> {
    semla_test_support::shared::data_root_with("camvid")
}

#[test]
fn train_resume_adapter_and_eval_on_camvid() {
    let Some(root) = data_root() else { return };
    let root = root.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let small = [
        "--data-root",
        root,
        "--resize",
        "36x48",
        "--crop",
        "36x48",
        "--batch",
        "2",
    ];
    let mut train = vec![
        "--json",
        "train",
        "base",
        "--model-kind",
        "tiny",
        "--width",
        "4",
        "--domain",
        "camvid/0001TP",
    ];
    train.extend(small);
    train.extend(["--steps", "4", "--out", "m", "--checkpoint-every", "2"]);
    let (ok, stdout, stderr) = semla_text_in(dir.path(), &train);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["end_step"], 4);
    assert!(
        dir.path().join("m/config.json").is_file()
            && dir.path().join("m/model.safetensors").is_file()
    );

    // Resume the same run with more steps: it starts where the checkpoint stopped.
    let steps_at = train.iter().position(|s| *s == "--steps").unwrap() + 1;
    let mut resume = train.clone();
    resume[steps_at] = "6";
    resume.push("--resume");
    let (ok, stdout, stderr) = semla_text_in(dir.path(), &resume);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (report["start_step"].as_u64(), report["end_step"].as_u64()),
        (Some(4), Some(6))
    );

    let mut adapter = vec![
        "adapter",
        "train",
        "--model",
        "m",
        "--domain",
        "camvid/0001TP",
        "--rank",
        "2",
    ];
    adapter.extend(small);
    adapter.extend([
        "--steps",
        "3",
        "--out",
        "lib/dusk",
        "--prototype-images",
        "2",
        "--targets",
        "classifier,skip",
    ]);
    let (ok, _, stderr) = semla_text_in(dir.path(), &adapter);
    assert!(ok, "{stderr}");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("lib/dusk/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["r"], 2);
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["classifier", "skip"])
    );
    assert!(dir.path().join("lib/dusk/dusk_statistics.npz").is_file());

    let eval = [
        "--json",
        "eval",
        "--model",
        "m",
        "--adapter",
        "lib/dusk",
        "--domain",
        "camvid/0001TP",
        "--data-root",
        root,
        "--split",
        "train",
        "--resize",
        "36x48",
        "--limit",
        "3",
    ];
    let (ok, stdout, stderr) = semla_text_in(dir.path(), &eval);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["images"], 3);
    let miou = report["miou"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&miou));
    assert_eq!(report["scores"]["classes"].as_array().unwrap().len(), 11);

    let (ok, _, stderr) = semla_text_in(
        dir.path(),
        &[
            "eval",
            "--model",
            "m",
            "--adapter",
            "lib/nope",
            "--domain",
            "camvid/0001TP",
            "--data-root",
            root,
        ],
    );
    assert!(!ok);
    assert!(stderr.contains("nope"), "{stderr}");
}
