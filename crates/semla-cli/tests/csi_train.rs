//! `semla csi train` end to end on the synthetic world (no shared data): a
//! tiny base trained on clear scenes whose "traffic sign" labels are merged
//! into "pole", then DACS on foggy scenes with CSI's relabeling back into
//! "traffic sign" (the classifier: the tiny random CLIP fixture, so the
//! pipeline runs whole, not well); the model, the report and its picture,
//! resuming, a library adapter, and clear errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use semla_test_support::cli::semla_text_in;

const SMALL: [&str; 6] = ["--resize", "36x48", "--crop", "36x48", "--batch", "1"];

fn clip_fixture() -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../semla-models/tests/fixtures/clip/tiny");
    format!("clip:{}", dir.display())
}

const YAML: &str = "
relabeling_cfg:
  - [traffic sign, pole, [components, 0.0, 0.0]]
range_of_relabel_with_mapping_info: [0, 100]
";

fn csi_args(steps: &str, output: &[&str], extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--json",
        "csi",
        "train",
        "--model",
        "m",
        "--source-domain",
        "synthetic-clear",
        "--domain",
        "synthetic-fog",
        "--source-merge",
        "traffic sign=pole",
        "--relabel",
        "csi.yaml",
        "--steps",
        steps,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push("--classifier".into());
    args.push(clip_fixture());
    args.extend(
        output
            .iter()
            .chain(SMALL.iter())
            .chain(extra)
            .map(|s| s.to_string()),
    );
    args
}

fn run(dir: &std::path::Path, args: &[String]) -> (bool, String, String) {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    semla_text_in(dir, &refs)
}

#[test]
fn csi_train_writes_a_model_and_its_relabeling_report_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("csi.yaml"), YAML).unwrap();
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

    let (ok, stdout, stderr) = run(dir.path(), &csi_args("2", &["--out", "adapted"], &[]));
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["end_step"], 2);
    let adapted = dir.path().join("adapted");
    assert!(adapted.join("config.json").is_file() && adapted.join("model.safetensors").is_file());
    let csi: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(adapted.join("csi-report.json")).unwrap())
            .unwrap();
    assert_eq!(csi["targets"][0]["class"], "traffic sign");
    assert_eq!(csi["targets"][0]["source"], "pole");
    assert!(csi["classifier"].as_str().unwrap().contains("CLIP"));
    assert!(csi["targets"][0]["stats"]["detected"].as_u64().is_some());

    // Resume to 4 steps.
    let (ok, stdout, stderr) = run(
        dir.path(),
        &csi_args("4", &["--out", "adapted"], &["--resume"]),
    );
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (report["start_step"].as_u64(), report["end_step"].as_u64()),
        (Some(2), Some(4))
    );
    // An existing model is refused without --force or --resume.
    let (ok, _, stderr) = run(dir.path(), &csi_args("2", &["--out", "adapted"], &[]));
    assert!(!ok && stderr.contains("already holds a model"), "{stderr}");

    // A library adapter (LoRA on the frozen base), its report beside the library.
    let (ok, _, stderr) = run(
        dir.path(),
        &csi_args(
            "2",
            &["--adapter", "lib/fog"],
            &["--rank", "2", "--prototype-images", "2"],
        ),
    );
    assert!(ok, "{stderr}");
    assert!(dir.path().join("lib/fog/adapter_config.json").is_file());
    assert!(
        dir.path()
            .join("lib/.reports/fog/csi-report.json")
            .is_file()
    );
}

#[test]
fn csi_train_refuses_what_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("csi.yaml"), YAML).unwrap();
    std::fs::write(
        dir.path().join("owl.yaml"),
        "relabeling_cfg: [[traffic sign, pole, [owlvit, 0.1, 0.5]]]\nrange_of_relabel_with_mapping_info: [0, 9]",
    )
    .unwrap();
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
        "1",
        "--out",
        "m",
    ];
    base.extend(SMALL);
    assert!(semla_text_in(dir.path(), &base).0);
    let fails = |args: Vec<String>, needle: &str| {
        let (ok, _, stderr) = run(dir.path(), &args);
        assert!(
            !ok && stderr.contains(needle),
            "expected `{needle}` in: {stderr}"
        );
    };
    let mut owl = csi_args("1", &["--out", "a"], &[]);
    let at = owl.iter().position(|a| a == "csi.yaml").unwrap();
    owl[at] = "owl.yaml".into();
    fails(owl, "owlvit");
    let mut no_classifier = csi_args("1", &["--out", "a"], &[]);
    let at = no_classifier
        .iter()
        .position(|a| a == "--classifier")
        .unwrap();
    no_classifier.drain(at..at + 2);
    fails(no_classifier, "--classifier");
    fails(
        csi_args("1", &["--out", "a", "--adapter", "lib/x"], &[]),
        "cannot be used with",
    );
    let mut bad_merge = csi_args("1", &["--out", "a"], &[]);
    let at = bad_merge
        .iter()
        .position(|a| a == "traffic sign=pole")
        .unwrap();
    bad_merge[at] = "unicorn=pole".into();
    fails(bad_merge, "unknown class");
    let mut missing = csi_args("1", &["--out", "a"], &[]);
    let at = missing.iter().position(|a| a == "csi.yaml").unwrap();
    missing[at] = "nope.yaml".into();
    fails(missing, "nope.yaml");
}
