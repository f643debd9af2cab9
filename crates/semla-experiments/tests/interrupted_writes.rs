//! An experiment's three files (`results.json`, `report.json`, `weights.jsonl`)
//! change together or not at all, whichever commit point a write is interrupted
//! at, and files of the folder that are not the experiment's stay. In a test
//! binary of its own: the failure injection is process-wide.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use semla_experiments::output::ImageRecord;
use semla_experiments::{ExperimentKind, ExperimentOutput, ExperimentSettings};
use semla_pipeline::{AdapterChoice, Fusion};
use semla_test_support::files::interrupt_everywhere;

fn output(miou: f64, adapter: &str) -> ExperimentOutput {
    ExperimentOutput {
        kind: ExperimentKind::Semla,
        fusion: Fusion::Weights,
        results: vec![("fog".into(), miou)],
        reports: Vec::new(),
        images: vec![ImageRecord {
            target: "fog".into(),
            image: "0001.png".into(),
            adapters: vec![AdapterChoice {
                name: adapter.into(),
                distance: Some(0.5),
                similarity: Some(0.5),
                weight: 1.0,
            }],
        }],
        predictions: Vec::new(),
    }
}

#[test]
fn interrupted_experiment_writes_keep_the_old_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("semla");
    let settings = ExperimentSettings::new(ExperimentKind::Semla);
    output(10.0, "rain").write(&out, &settings).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let points = interrupt_everywhere(dir.path(), &out, || {
        output(20.0, "snow").write(&out, &settings).is_ok()
    });
    assert!(points >= 1, "the folder swap is a commit point");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["fog"], 20.0);
    let weights = std::fs::read_to_string(out.join("weights.jsonl")).unwrap();
    assert!(
        weights.contains("snow") && !weights.contains("rain"),
        "{weights}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
}
