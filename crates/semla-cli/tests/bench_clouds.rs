//! `semla bench clouds` end to end on real CamVid frames at a toy size:
//! its files, its rows, its reuse of everything on a second run, and its
//! refusals. (Its figures are a benchmark, `docs/clouds.md`; here the run is
//! seconds long and only the contract is checked.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use semla_test_support::cli::{semla_error, semla_json};

fn toy_run(root: &str, out: &str) -> Vec<String> {
    [
        "bench",
        "clouds",
        "--data",
        root,
        "--out",
        out,
        "--domains",
        "camvid-dusk,camvid-fog3",
        "--refiners",
        "vote",
        "--image-size",
        "64x64",
        "--steps",
        "3",
        "--adapter-steps",
        "3",
        "--batch",
        "2",
        "--target-batch",
        "1",
        "--ema-every",
        "1",
        "--train-images",
        "3",
        "--eval-images",
        "3",
        "--quality-images",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn the_toy_benchmark_writes_its_tables_and_reuses_everything() {
    let Some(root) = semla_test_support::shared::data_root_with("camvid") else {
        return;
    };
    if semla_test_support::shared::path("weights/efficientnet-lite0-57934424.pth").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("clouds");
    // No --weights: found beside the data root (`DATA/../weights`).
    let args = toy_run(root.to_str().unwrap(), out.to_str().unwrap());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let first = semla_json(&args);

    let rows: Vec<&str> = first["table"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        rows,
        [
            "zeroshot",
            "selftrain",
            "selftrain-vote",
            "selftrain-head",
            "semla-label-free",
            "semla-label-free-vote",
            "semla-labelled",
            "oracle"
        ]
    );
    for row in first["table"]["rows"].as_array().unwrap() {
        for v in row["miou_percent"].as_array().unwrap() {
            let v = v.as_f64().unwrap();
            assert!((0.0..=100.0).contains(&v), "{row}");
        }
    }
    // Pseudo-label quality: one entry per domain, raw and vote, a picture each.
    let quality = first["pseudo_label_quality"].as_array().unwrap();
    assert_eq!(quality.len(), 2);
    for q in quality {
        assert_eq!(q["images"], 2);
        let raw = q["raw"]["miou"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&raw));
        assert_eq!(q["raw"]["coverage"].as_f64().unwrap(), 1.0);
        assert_eq!(q["refined"][0][0], "vote");
        let picture = std::path::PathBuf::from(q["picture"].as_str().unwrap());
        let image = image::open(&picture).unwrap();
        // Two frames, four panels of 64x64 (image, truth, raw, vote).
        assert_eq!(
            (image.width(), image.height()),
            (4 * 64 + 3 * 4, 2 * 64 + 4)
        );
    }
    // Every label-free training (two adapters and a head per domain)
    // labelled 3 steps x 1 target image.
    let trainings = first["self_training"].as_array().unwrap();
    assert_eq!(trainings.len(), 6);
    for t in trainings {
        assert_eq!(t[2]["images"], 3, "{t}");
        assert_eq!(t[2]["teacher_updates"], 3, "{t}");
    }
    for domain in ["camvid-dusk", "camvid-fog3"] {
        let model = out.join("label-free/head").join(domain);
        assert!(model.join("config.json").is_file() && model.join("model.safetensors").is_file());
    }
    for variant in ["none", "vote"] {
        for domain in ["camvid-dusk", "camvid-fog3"] {
            let folder = out.join("label-free").join(variant).join(domain);
            assert!(folder.join("adapter_model.safetensors").is_file());
            assert!(
                folder.join(format!("{domain}_statistics.npz")).is_file(),
                "{folder:?} has no prototype"
            );
        }
    }
    let markdown = std::fs::read_to_string(out.join("table-val.md")).unwrap();
    assert!(markdown.contains("| semla-label-free-vote |"), "{markdown}");
    assert!(markdown.contains("| refined: vote |"), "{markdown}");

    // Again: nothing retrained, the same table.
    let second = semla_json(&args);
    let reused: Vec<&str> = second["reused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(reused.contains(&"model"), "{reused:?}");
    assert!(
        reused.contains(&"label-free vote: adapter camvid-fog3"),
        "{reused:?}"
    );
    assert!(
        reused.contains(&"label-free head camvid-dusk"),
        "{reused:?}"
    );
    assert_eq!(reused.len(), 1 + 2 + 2 * 2 + 2, "{reused:?}");
    assert_eq!(first["table"], second["table"]);
}

#[test]
fn bad_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let out = out.to_str().unwrap();
    let data = dir.path().to_str().unwrap();
    let weights = dir.path().join("w.pth");
    std::fs::write(&weights, b"not a checkpoint").unwrap();
    let weights = weights.to_str().unwrap();
    let base = ["bench", "clouds", "--data", data, "--out", out];
    let err = semla_error(&base);
    assert!(err.contains("--weights"), "{err}");
    let with_weights = [&base[..], &["--weights", weights]].concat();
    let err = semla_error(&[&with_weights[..], &["--domains", "camvid-dusk"]].concat());
    assert!(err.contains("at least two"), "{err}");
    let err = semla_error(&[&with_weights[..], &["--refiners", "vote,vote"]].concat());
    assert!(err.contains("twice"), "{err}");
    let err = semla_error(&[&with_weights[..], &["--refiners", "sam"]].concat());
    assert!(err.contains("grow, graph or vote"), "{err}");
}
