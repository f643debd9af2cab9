//! `semla adapter merge` and `semla library list/show` on the peft fixture
//! library of semla-adapters (expected deltas from Python peft).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::path::{Path, PathBuf};

use semla_adapters::peft;
use semla_test_support::cli::{semla, semla_error as error, semla_json as json};
use semla_test_support::max_abs_diff;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../semla-adapters/tests/fixtures/peft")
}

fn library() -> String {
    fixtures().join("library").display().to_string()
}

#[test]
fn merge_cat_writes_peft_adapter_with_peft_deltas() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("nested/mix");
    let out_s = out.display().to_string();
    let lib = library();
    let report = json(&[
        "adapter",
        "merge",
        "--library",
        &lib,
        "--weights",
        "alpha_plain=0.6,beta_rslora=-0.3,gamma_pattern=0.9",
        "--combination",
        "cat",
        "--out",
        &out_s,
    ]);
    assert_eq!(report["r"], 16);
    assert_eq!(report["combination"], "cat");
    assert_eq!(report["adapters"][1]["weight"], -0.3);
    let merged = peft::load_adapter(&out).unwrap();
    assert_eq!(merged.name, "mix");
    let expected = candle_core::safetensors::load(
        fixtures().join("expected.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    for site in ["conv1", "conv2", "fc1", "fc2"] {
        let delta = merged.sites[site]
            .delta_weight(merged.scale_for(site))
            .unwrap();
        let want = &expected[&format!("cat.{site}.delta")];
        let diff = max_abs_diff(&delta, want);
        assert!(diff < 1e-5, "{site}: {diff}");
    }
    // Only the folder itself was created beside nothing else (no temporary folder left).
    assert_eq!(
        std::fs::read_dir(tmp.path().join("nested"))
            .unwrap()
            .count(),
        1
    );
}

#[test]
fn merge_rejects_bad_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m").display().to_string();
    let lib = library();
    let base = [
        "adapter",
        "merge",
        "--library",
        lib.as_str(),
        "--out",
        out.as_str(),
        "--weights",
    ];
    let run = |weights: &str, extra: &[&str]| {
        let mut args: Vec<&str> = base.to_vec();
        args.push(weights);
        args.extend_from_slice(extra);
        error(&args)
    };
    let err = run("fog=1", &[]);
    assert!(
        err.contains("\"fog\"")
            && err.contains("available: alpha_plain, beta_rslora, delta_plain, gamma_pattern"),
        "{err}"
    );
    assert!(run("", &[]).contains("--weights is empty"));
    assert!(run("alpha_plain=inf", &[]).contains("not finite"));
    assert!(
        run("alpha_plain=1,beta_rslora=1", &["--combination", "linear"]).contains("equal ranks")
    );
    assert!(run("alpha_plain=1", &["--combination", "ties"]).contains("unknown combination"));
    assert!(!Path::new(&out).exists());
    let err = error(&["library", "list", "/nonexistent/lib"]);
    assert!(err.contains("/nonexistent/lib"), "{err}");
}

#[test]
fn library_list_and_show() {
    let lib = library();
    let listing = json(&["library", "list", &lib]);
    assert_eq!(listing["count"], 4);
    let gamma = &listing["adapters"][3];
    assert_eq!(gamma["name"], "gamma_pattern");
    assert_eq!(gamma["ranks"], serde_json::json!([2, 4]));
    assert_eq!(gamma["prototype_dim"], 16);
    assert_eq!(listing["adapters"][2]["prototype_dim"], Value::Null);
    let show = json(&["library", "show", &lib, "gamma_pattern"]);
    assert_eq!(show["site_count"], 3);
    assert_eq!(show["parameter_count"], 312);
    let fc2 = show["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["path"] == "fc2")
        .unwrap();
    assert_eq!(fc2["rank"], 2);
    assert_eq!(fc2["scale"], 2.0);
    assert_eq!(show["config"]["alpha_pattern"]["conv1"], 12);
    let text = semla(&["library", "list", &lib]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("4 adapters"));
    let err = error(&["library", "show", &lib, "nope"]);
    assert!(err.contains("available: alpha_plain"), "{err}");
}
