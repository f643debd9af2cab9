//! `semla bench speed --reference-command` and `semla bench chart` on its output,
//! with every model skipped (the timed paths are benchmarks, not tests).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use semla_test_support::cli;

#[test]
fn reference_command_timings_are_recorded_and_charted() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("speed");
    let printed = r#"{"timings": [{"model": "catseg-b-1024x2048", "path": "plain", "median_s": 50.5}], "threads": 2}"#;
    let command = format!("echo '{printed}'");
    let result = cli::semla_json(&[
        "bench",
        "speed",
        "--out",
        out.to_str().unwrap(),
        "--runs",
        "1",
        "--skip-clip",
        "--skip-segmenter",
        "--library-adapters",
        "0",
        "--reference-command",
        &command,
    ]);
    assert_eq!(result["reference"][0]["median_s"], 50.5, "{result}");
    assert_eq!(result["reference_run"]["threads"], 2, "{result}");
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("speed.json")).unwrap()).unwrap();
    assert_eq!(written["reference"], result["reference"]);

    // A failing command, or one printing no timings, fails the run.
    for bad in ["exit 3", "echo not-json", r#"echo '{"timings": 5}'"#] {
        let (ok, _, stderr) = cli::semla_text(&[
            "bench",
            "speed",
            "--out",
            dir.path().join("bad").to_str().unwrap(),
            "--skip-clip",
            "--skip-segmenter",
            "--library-adapters",
            "0",
            "--reference-command",
            bad,
        ]);
        assert!(!ok, "{bad}");
        assert!(stderr.contains("reference command"), "{bad}: {stderr}");
    }
}
