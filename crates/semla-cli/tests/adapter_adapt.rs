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
