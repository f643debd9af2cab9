//! `semla eval --experiment ... --shard I/N` and `semla eval merge`: three shards
//! merged give the whole run's files byte for byte, and sets that are not one
//! complete run are refused. On generated synthetic domains with an untrained
//! tiny segmenter and random adapters written by the test (no files needed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::path::{Path, PathBuf};

use candle_core::Device;
use semla_adapters::AdapterLibrary;
use semla_models::tiny::TinySegConfig;
use semla_models::{SegmenterConfig, save_segmenter};
use semla_test_support::cli::{semla_error, semla_json};
use semla_train::lora::{LoraSettings, LoraTrainee};
use serde_json::Value;

const SOURCES: &str = "synthetic-clear,synthetic-night,synthetic-fog";

/// A random tiny model (width 4) saved as a model folder.
fn write_model(dir: &Path) -> PathBuf {
    let config = SegmenterConfig::Tiny(TinySegConfig {
        num_classes: semla_data::synthetic::NUM_CLASSES,
        width: 4,
        class_names: Vec::new(),
    });
    let (model, _) = semla_train::runs::build_trainable(&config, None, 2, &Device::Cpu).unwrap();
    let path = dir.join("model");
    save_segmenter(model.as_ref(), &path).unwrap();
    path
}

/// One random rank-2 adapter per source, with prototypes from `library embed`.
fn write_library(dir: &Path, model: &Path) -> PathBuf {
    let loaded = semla_models::load_segmenter(model, &Device::Cpu).unwrap();
    let root = dir.join("loradb");
    std::fs::create_dir_all(&root).unwrap();
    let mut library = AdapterLibrary::open(&root).unwrap();
    let settings = LoraSettings {
        rank: 2,
        alpha: 4.0,
        ..LoraSettings::default()
    };
    for (i, name) in SOURCES.split(',').enumerate() {
        let lora = LoraTrainee::new(&loaded.sites(), &settings, i as u64, &Device::Cpu).unwrap();
        let mut adapter = lora.to_adapter(name).unwrap();
        for site in adapter.sites.values_mut() {
            site.b = (site.b.ones_like().unwrap() * (0.1 * (i as f64 + 1.0))).unwrap();
        }
        library.add(&adapter, None).unwrap();
    }
    semla_json(&[
        "library",
        "embed",
        "--library",
        root.to_str().unwrap(),
        "--sources",
        SOURCES,
        "--embedder",
        &format!("backbone:{}", model.display()),
        "--limit",
        "4",
        "--resize",
        "48x64",
    ]);
    root
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `report.json` without its timings (the only fields a merge cannot know).
fn report_without_timings(path: &Path) -> Value {
    let mut report: Value = serde_json::from_slice(&read(path)).unwrap();
    for target in report["targets"].as_array_mut().unwrap() {
        let target = target.as_object_mut().unwrap();
        assert!(target.remove("seconds").is_some());
        assert!(target.remove("seconds_per_image").is_some());
    }
    report
}

#[test]
fn three_shards_merge_into_the_whole_run_and_bad_sets_are_refused() {
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path());
    let library = write_library(dir.path(), &model);
    let config = dir.path().join("semla_config.yaml");
    std::fs::write(&config, "top_k: 2\ntemperature: 0.1\n").unwrap();
    let (m, lib, cfg) = (
        model.to_str().unwrap().to_string(),
        library.to_str().unwrap().to_string(),
        config.to_str().unwrap().to_string(),
    );
    // 7 images per target (3 + 2 + 2 over 3 shards), batches of 2: a shard's
    // batches hold other images than the whole run's.
    let run = |out: &Path, extra: &[&str]| -> Value {
        let mut args = vec![
            "eval",
            "--model",
            &m,
            "--library",
            &lib,
            "--sources",
            SOURCES,
            "--targets",
            "synthetic-night,synthetic-fog",
            "--limit",
            "7",
            "--resize",
            "48x64",
            "--batch",
            "2",
            "--experiment",
            "semla",
            "--remove-target-adapter",
            "--semla-config",
            &cfg,
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        semla_json(&args)
    };

    let whole = dir.path().join("whole");
    run(&whole, &[]);
    let shards: Vec<PathBuf> = (0..3)
        .map(|i| {
            let out = dir.path().join(format!("shard-{i}"));
            let report = run(&out, &["--shard", &format!("{i}/3")]);
            assert_eq!(report["shard"]["index"], i);
            assert_eq!(report["shard"]["count"], 3);
            let expected = if i == 0 { 3 } else { 2 };
            for target in report["targets"].as_array().unwrap() {
                assert_eq!(target["images"], expected, "{report}");
                assert_eq!(target["of"], 7);
            }
            // A shard writes its part only, never a partial results.json.
            assert!(out.join("shard.json").is_file());
            assert!(!out.join("results.json").exists());
            out
        })
        .collect();
    let part: Value = serde_json::from_slice(&read(&shards[1].join("shard.json"))).unwrap();
    assert_eq!(part["format"], "semla-shard/1");
    let night = &part["targets"][0];
    assert_eq!(night["target"], "synthetic-night");
    assert_eq!(night["images"].as_array().unwrap().len(), 2);
    assert_eq!(
        night["records"][0]["index"], 1,
        "sorted position 1 -> shard 1"
    );
    assert_eq!(night["confusion"]["counts"].as_array().unwrap().len(), 10);
    let fingerprint = part["fingerprint"].as_object().unwrap();
    for key in ["model", "library", "settings", "targets"] {
        assert!(fingerprint.contains_key(key), "{key}");
    }

    // In any order, the merge writes the whole run's files.
    let merged = dir.path().join("merged");
    let s = |i: usize| shards[i].to_str().unwrap().to_string();
    let report = semla_json(&[
        "eval",
        "merge",
        &s(2),
        &s(0),
        &shards[1].join("shard.json").to_string_lossy(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert_eq!(report["shards"], 3);
    for file in ["results.json", "weights.jsonl"] {
        assert_eq!(
            String::from_utf8(read(&merged.join(file))).unwrap(),
            String::from_utf8(read(&whole.join(file))).unwrap(),
            "{file} differs"
        );
    }
    assert_eq!(
        report_without_timings(&merged.join("report.json")),
        report_without_timings(&whole.join("report.json"))
    );
    let weights = String::from_utf8(read(&merged.join("weights.jsonl"))).unwrap();
    assert_eq!(weights.lines().count(), 14);

    // Sets that are not one complete run are refused, and write nothing.
    let refused = dir.path().join("refused");
    let merge_error = |parts: &[String]| -> String {
        let mut args = vec!["eval".to_string(), "merge".to_string()];
        args.extend(parts.iter().cloned());
        args.extend(["--out".to_string(), refused.to_str().unwrap().to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = semla_error(&args);
        assert!(
            !refused.exists(),
            "a refused merge wrote {}",
            refused.display()
        );
        err
    };
    let err = merge_error(&[s(0), s(2)]);
    assert!(err.contains("incomplete") && err.contains("1/3"), "{err}");
    let err = merge_error(&[s(0), s(1), s(1), s(2)]);
    assert!(err.contains("twice") && err.contains("1/3"), "{err}");

    // A shard run with another top-k has another fingerprint.
    let other = dir.path().join("shard-1-top3");
    let other_config = dir.path().join("top3.yaml");
    std::fs::write(&other_config, "top_k: 3\ntemperature: 0.1\n").unwrap();
    {
        let mut args = vec![
            "eval",
            "--model",
            &m,
            "--library",
            &lib,
            "--sources",
            SOURCES,
            "--targets",
            "synthetic-night,synthetic-fog",
            "--limit",
            "7",
            "--resize",
            "48x64",
            "--batch",
            "2",
            "--experiment",
            "semla",
            "--remove-target-adapter",
            "--out",
        ];
        let other_out = other.to_str().unwrap().to_string();
        let other_cfg = other_config.to_str().unwrap().to_string();
        args.extend([
            other_out.as_str(),
            "--semla-config",
            other_cfg.as_str(),
            "--shard",
            "1/3",
        ]);
        semla_json(&args);
    }
    let err = merge_error(&[s(0), other.to_str().unwrap().to_string(), s(2)]);
    assert!(
        err.contains("not parts of one run") && err.contains("settings"),
        "{err}"
    );
    // So does one of another --limit (another list of images).
    let limited = dir.path().join("shard-1-limit6");
    {
        let out = limited.to_str().unwrap().to_string();
        let args = [
            "eval",
            "--model",
            &m,
            "--library",
            &lib,
            "--sources",
            SOURCES,
            "--targets",
            "synthetic-night,synthetic-fog",
            "--limit",
            "6",
            "--resize",
            "48x64",
            "--batch",
            "2",
            "--experiment",
            "semla",
            "--remove-target-adapter",
            "--semla-config",
            &cfg,
            "--out",
            &out,
            "--shard",
            "1/3",
        ];
        semla_json(&args);
    }
    let err = merge_error(&[s(0), limited.to_str().unwrap().to_string(), s(2)]);
    assert!(err.contains("not parts of one run"), "{err}");

    // Parts relabelled (shards 1 and 2 swapped) hold images of other shards.
    let swapped: Vec<String> = [(1, 2), (2, 1)]
        .iter()
        .map(|&(from, to)| {
            let mut part: Value =
                serde_json::from_slice(&read(&shards[from].join("shard.json"))).unwrap();
            part["shard"]["index"] = to.into();
            let path = dir.path().join(format!("relabelled-{to}.json"));
            std::fs::write(&path, serde_json::to_vec_pretty(&part).unwrap()).unwrap();
            path.to_str().unwrap().to_string()
        })
        .collect();
    let err = merge_error(&[s(0), swapped[0].clone(), swapped[1].clone()]);
    assert!(err.contains("belongs to shard"), "{err}");

    // A part of a run of another shard count, a shard that does not exist, and
    // a file that is no part.
    let mut part: Value = serde_json::from_slice(&read(&shards[1].join("shard.json"))).unwrap();
    part["shard"]["count"] = 4.into();
    let of_four = dir.path().join("of-four.json");
    std::fs::write(&of_four, serde_json::to_vec(&part).unwrap()).unwrap();
    let err = merge_error(&[s(0), of_four.to_str().unwrap().to_string(), s(2)]);
    assert!(err.contains("different shard counts"), "{err}");
    let err = semla_error(&["eval", "--model", &m, "--shard", "3/3"]);
    assert!(err.contains("does not exist"), "{err}");
    let not_a_part = dir.path().join("not-a-part.json");
    std::fs::write(&not_a_part, "{\"format\": \"something-else\"}").unwrap();
    let err = merge_error(&[not_a_part.to_str().unwrap().to_string()]);
    assert!(
        err.contains("not-a-part.json") && err.contains("format"),
        "{err}"
    );
    eprintln!("shard merge test: {:.1} s", started.elapsed().as_secs_f64());
}
