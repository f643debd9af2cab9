//! `semla adapter adapt` end to end on the synthetic world (no shared data
//! needed): a tiny base trained on clear scenes, an adapter self-trained on
//! foggy ones without their labels, refined by region growing, added to a
//! library with its prototype; resumable; clear errors for bad choices.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use semla_test_support::cli::semla_text_in;

const SMALL: [&str; 6] = ["--resize", "36x48", "--crop", "36x48", "--batch", "1"];

fn adapt_args<'a>(steps: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--json",
        "adapter",
        "adapt",
        "--model",
        "m",
        "--out",
        "lib/fog",
        "--domain",
        "synthetic-fog",
        "--source-domain",
        "synthetic-clear",
        "--refine",
        "grow",
        "--min-area",
        "50",
        "--ema-every",
        "2",
        "--target-batch",
        "2",
        "--rank",
        "2",
        "--prototype-images",
        "2",
        "--steps",
        steps,
    ];
    args.extend(SMALL);
    args.extend(extra);
    args
}

#[test]
fn adapt_self_trains_an_adapter_into_the_library_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut base = vec![
        "train",
        "base",
        "--model-kind",
        "tiny",
        "--width",
        "4",
        "--domain",
        "synthetic-clear",
        "--steps",
        "3",
        "--out",
        "m",
    ];
    base.extend(SMALL);
    let (ok, _, stderr) = semla_text_in(dir.path(), &base);
    assert!(ok, "{stderr}");

    // Two steps, then two more from the checkpoint.
    let (ok, stdout, stderr) = semla_text_in(dir.path(), &adapt_args("2", &[]));
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["end_step"], 2);
    let (ok, stdout, stderr) =
        semla_text_in(dir.path(), &adapt_args("4", &["--resume", "--force"]));
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (report["start_step"].as_u64(), report["end_step"].as_u64()),
        (Some(2), Some(4))
    );
    let lib = dir.path().join("lib");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(lib.join("fog/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["r"], 2);
    assert!(lib.join("fog/adapter_model.safetensors").is_file());
    assert!(lib.join("fog/fog_statistics.npz").is_file());
    assert!(lib.join(".checkpoints/fog/run_state.safetensors").is_file());

    // The prototype was made by the embedder the library records.
    let record = std::fs::read_to_string(lib.join("semla_library.json")).unwrap();
    assert!(record.contains("backbone"), "{record}");

    // An existing name is refused without --force; SAM needs its checkpoint.
    let (ok, _, stderr) = semla_text_in(dir.path(), &adapt_args("1", &[]));
    assert!(!ok && stderr.contains("already holds"), "{stderr}");
    let mut sam = adapt_args("1", &["--force"]);
    let refine = sam.iter().position(|a| *a == "grow").unwrap();
    sam[refine] = "sam";
    let (ok, _, stderr) = semla_text_in(dir.path(), &sam);
    assert!(!ok && stderr.contains("--sam-checkpoint"), "{stderr}");
}

#[test]
fn train_adapt_self_trains_the_head_into_a_new_model_folder() {
    let dir = tempfile::tempdir().unwrap();
    let mut base = vec![
        "train",
        "base",
        "--model-kind",
        "tiny",
        "--width",
        "4",
        "--domain",
        "synthetic-clear",
        "--steps",
        "2",
        "--out",
        "m",
    ];
    base.extend(SMALL);
    let (ok, _, stderr) = semla_text_in(dir.path(), &base);
    assert!(ok, "{stderr}");
    let mut adapt = vec![
        "--json",
        "train",
        "adapt",
        "--model",
        "m",
        "--out",
        "m-fog",
        "--domain",
        "synthetic-fog",
        "--source-domain",
        "synthetic-clear",
        "--refine",
        "vote",
        "--ema-every",
        "1",
        "--steps",
        "2",
        "--lr",
        "0.05",
    ];
    adapt.extend(SMALL);
    let (ok, stdout, stderr) = semla_text_in(dir.path(), &adapt);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["end_step"], 2);

    // The head moved, the backbone did not, the starting model is untouched.
    let weights = |folder: &str| {
        candle_core::safetensors::load(
            dir.path().join(folder).join("model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap()
    };
    let (before, after) = (weights("m"), weights("m-fog"));
    assert_eq!(before.len(), after.len());
    for (name, value) in &before {
        let moved = semla_test_support::max_abs_diff(value, &after[name]) > 0.0;
        let head = ["head.", "classifier.", "skip."]
            .iter()
            .any(|p| name.starts_with(p));
        assert_eq!(moved, head, "{name}");
    }
    assert!(
        dir.path()
            .join("m-fog/checkpoint/run_state.safetensors")
            .is_file()
    );

    // The new model is a model like any other.
    let (ok, stdout, stderr) = semla_text_in(
        dir.path(),
        &[
            "--json",
            "eval",
            "--model",
            "m-fog",
            "--domain",
            "synthetic-fog",
            "--split",
            "val",
            "--resize",
            "36x48",
        ],
    );
    assert!(ok, "{stderr}");
    let eval: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(eval["miou"].as_f64().is_some(), "{eval}");

    // Existing output and the model's own folder are refused.
    let (ok, _, stderr) = semla_text_in(dir.path(), &adapt);
    assert!(!ok && stderr.contains("already holds"), "{stderr}");
    let mut onto_itself = adapt.clone();
    let out = onto_itself.iter().position(|a| *a == "m-fog").unwrap();
    onto_itself[out] = "m";
    onto_itself.push("--force");
    let (ok, _, stderr) = semla_text_in(dir.path(), &onto_itself);
    assert!(!ok && stderr.contains("--model folder"), "{stderr}");
}
