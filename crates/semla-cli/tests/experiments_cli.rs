//! `semla library embed`, `semla library retrieve`, `semla eval --experiment`
//! and `semla segment` on generated synthetic domains (no files needed) with
//! an untrained tiny segmenter and random adapters written by the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::path::{Path, PathBuf};

use candle_core::Device;
use semla_adapters::AdapterLibrary;
use semla_adapters::npz::read_npz_array;
use semla_models::tiny::TinySegConfig;
use semla_models::{SegmenterConfig, save_segmenter};
use semla_test_support::cli::{semla, semla_error as error_of, semla_json as ok_json};
use semla_train::lora::{LoraSettings, LoraTrainee};
use serde_json::Value;

const SOURCES: &str = "synthetic-clear,synthetic-night,synthetic-fog";

/// A random tiny model (width 4, seed) saved as a model folder.
fn write_model(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let config = SegmenterConfig::Tiny(TinySegConfig {
        num_classes: semla_data::synthetic::NUM_CLASSES,
        width: 4,
        class_names: Vec::new(),
    });
    let (model, _) = semla_train::runs::build_trainable(&config, None, seed, &Device::Cpu).unwrap();
    let path = dir.join(name);
    save_segmenter(model.as_ref(), &path).unwrap();
    path
}

/// One random rank-2 adapter per source, without prototypes.
fn write_library(dir: &Path, model: &Path) -> PathBuf {
    let model = semla_models::load_segmenter(model, &Device::Cpu).unwrap();
    let root = dir.join("loradb");
    std::fs::create_dir_all(&root).unwrap();
    let mut library = AdapterLibrary::open(&root).unwrap();
    let settings = LoraSettings {
        rank: 2,
        alpha: 4.0,
        ..LoraSettings::default()
    };
    for (i, name) in SOURCES.split(',').enumerate() {
        let lora = LoraTrainee::new(&model.sites(), &settings, i as u64, &Device::Cpu).unwrap();
        let mut adapter = lora.to_adapter(name).unwrap();
        for site in adapter.sites.values_mut() {
            site.b = (site.b.ones_like().unwrap() * (0.1 * (i as f64 + 1.0))).unwrap();
        }
        library.add(&adapter, None).unwrap();
    }
    root
}

fn embed(library: &Path, model: &Path) -> Value {
    embed_with(library, &format!("backbone:{}", model.display()))
}

fn embed_with(library: &Path, embedder: &str) -> Value {
    ok_json(&[
        "library",
        "embed",
        "--library",
        library.to_str().unwrap(),
        "--sources",
        SOURCES,
        "--embedder",
        embedder,
        "--limit",
        "4",
        "--resize",
        "48x64",
    ])
}

#[test]
fn embedded_prototypes_are_official_npz_and_retrieve_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path(), "model", 1);
    let library = write_library(dir.path(), &model);
    let report = embed(&library, &model);
    let dimension = report["record"]["dimension"].as_u64().unwrap() as usize;
    assert_eq!(dimension, 16);
    assert_eq!(report["record"]["embedder"], "backbone");
    assert!(library.join("semla_library.json").is_file());

    for name in SOURCES.split(',') {
        let npz = library.join(name).join(format!("{name}_statistics.npz"));
        let array = read_npz_array(&npz, "train_average_embedding").unwrap();
        assert_eq!(array.shape, [1, dimension], "{name}");
        assert_eq!(report["record"]["images"][name], 4);

        // Retrieval with a prototype as the query finds that prototype at
        // distance 0 and gives it all the weight.
        let query = dir.path().join(format!("{name}.npy"));
        std::fs::write(
            &query,
            semla_adapters::npz::encode_npy(&[1, dimension], &array.data),
        )
        .unwrap();
        let retrieved = ok_json(&[
            "library",
            "retrieve",
            "--library",
            library.to_str().unwrap(),
            "--embedding",
            query.to_str().unwrap(),
        ]);
        let first = &retrieved["selections"][0];
        assert_eq!(first["name"], name);
        assert_eq!(first["distance"].as_f64(), Some(0.0));
        assert_eq!(first["weight"].as_f64(), Some(1.0));
    }

    // A query image embedded by the same backbone is accepted (a night scene
    // retrieves the night adapter first); another backbone is refused.
    let night = dir.path().join("night.png");
    semla_data::synthetic::SyntheticWorld::generate_named(
        "night",
        semla_data::synthetic::Split::Test,
        0,
        64,
        48,
    )
    .unwrap()
    .image
    .save(&night)
    .unwrap();
    let same = format!("backbone:{}", model.display());
    let retrieved = ok_json(&[
        "library",
        "retrieve",
        "--library",
        library.to_str().unwrap(),
        "--image",
        night.to_str().unwrap(),
        "--embedder",
        &same,
    ]);
    assert_eq!(retrieved["selections"][0]["name"], "synthetic-night");
    let other = write_model(dir.path(), "other", 5);
    let err = error_of(&[
        "library",
        "retrieve",
        "--library",
        library.to_str().unwrap(),
        "--image",
        night.to_str().unwrap(),
        "--embedder",
        &format!("backbone:{}", other.display()),
    ]);
    assert!(err.contains("embedder"), "{err}");

    // The prototype is the mean of the backbone embeddings of the first 4
    // training images at 48x64, as the library API computes it.
    let domain = semla_data::domains::resolve_domain("synthetic-night", Path::new("")).unwrap();
    let source =
        semla_data::DomainSource::new(domain, semla_data::domains::Split::Train, Some((48, 64)))
            .unwrap();
    let loaded = semla_models::load_segmenter(&model, &Device::Cpu).unwrap();
    let expected: Vec<f32> = {
        use semla_data::SampleSource as _;
        let mut sum: Vec<f64> = Vec::new();
        for i in 0..4 {
            let sample = source.sample(i).unwrap();
            let image = loaded
                .normalization()
                .batch(&[&sample], &Device::Cpu)
                .unwrap();
            let e: Vec<f32> = loaded
                .embed(&image)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            sum.resize(e.len(), 0.0);
            for (s, v) in sum.iter_mut().zip(e) {
                *s += f64::from(v);
            }
        }
        sum.iter().map(|s| (s / 4.0) as f32).collect()
    };
    let stored = read_npz_array(
        &library.join("synthetic-night/synthetic-night_statistics.npz"),
        "train_average_embedding",
    )
    .unwrap();
    for (a, b) in expected.iter().zip(&stored.data) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}

#[test]
fn experiments_write_official_results_and_refuse_another_embedder() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path(), "model", 2);
    let library = write_library(dir.path(), &model);
    embed(&library, &model);
    let lib = library.to_str().unwrap();
    let m = model.to_str().unwrap();
    let common = [
        "eval",
        "--model",
        m,
        "--library",
        lib,
        "--sources",
        SOURCES,
        "--targets",
        "synthetic-night,synthetic-fog",
        "--limit",
        "3",
        "--resize",
        "48x64",
        "--batch",
        "2",
    ];
    for (mode, extra) in [
        ("zeroshot", vec![]),
        ("oracle", vec![]),
        ("uniform", vec!["--remove-target-adapter"]),
        ("semla", vec!["--remove-target-adapter"]),
        (
            "semla",
            vec!["--remove-target-adapter", "--fusion", "outputs"],
        ),
    ] {
        let out = dir.path().join(format!("{mode}-{}", extra.len()));
        let mut args: Vec<&str> = common.to_vec();
        args.extend(["--experiment", mode, "--out", out.to_str().unwrap()]);
        args.extend(extra.iter().copied());
        let report = ok_json(&args);
        let results: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap())
                .unwrap();
        let keys: Vec<&String> = results.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["synthetic-night", "synthetic-fog"], "{mode}");
        assert_eq!(report["results"], results);
        let lines = std::fs::read_to_string(out.join("weights.jsonl")).unwrap();
        assert_eq!(lines.lines().count(), 6, "{mode}: 3 images x 2 targets");
        assert!(out.join("report.json").is_file());
    }

    // --split picks the frames evaluated: the test frames are other images.
    let images_of = |split: &str| -> Vec<String> {
        let out = dir.path().join(format!("zeroshot-{split}"));
        let mut args: Vec<&str> = common.to_vec();
        args.extend([
            "--experiment",
            "zeroshot",
            "--split",
            split,
            "--out",
            out.to_str().unwrap(),
        ]);
        ok_json(&args);
        std::fs::read_to_string(out.join("weights.jsonl"))
            .unwrap()
            .lines()
            .map(|line| {
                let record: Value = serde_json::from_str(line).unwrap();
                record["image"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let (val, test) = (images_of("val"), images_of("test"));
    assert_eq!((val.len(), test.len()), (6, 6));
    assert!(
        val.iter().all(|image| !test.contains(image)),
        "{val:?} {test:?}"
    );

    // A query embedder other than the one that made the prototypes is refused.
    let other = write_model(dir.path(), "other", 3);
    let out = dir.path().join("refused");
    let mut args: Vec<&str> = common.to_vec();
    let embedder = format!("backbone:{}", other.display());
    args.extend([
        "--experiment",
        "semla",
        "--out",
        out.to_str().unwrap(),
        "--embedder",
        &embedder,
    ]);
    let err = error_of(&args);
    assert!(err.contains("embedder"), "{err}");
    assert!(!out.join("results.json").exists());

    // The style embedder (early channel statistics, here on half-size images):
    // recorded with the prototypes and used by the experiment without being named.
    let style = format!("style:{m}@2");
    embed_with(&library, &style);
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(library.join("semla_library.json")).unwrap())
            .unwrap();
    assert_eq!(record["embedder"], "style");
    // The folder is recorded relative to the library, which can then be moved.
    assert_eq!(record["embedder_spec"], "style:../model@2");
    assert_eq!(record["format"], "semla-library/2");
    assert_eq!(
        record["dimension"], 8,
        "tiny width 4: mean and std of 4 stem channels"
    );
    let out = dir.path().join("semla-style");
    let mut args: Vec<&str> = common.to_vec();
    args.extend([
        "--experiment",
        "semla",
        "--remove-target-adapter",
        "--out",
        out.to_str().unwrap(),
    ]);
    ok_json(&args);
    assert_eq!(
        std::fs::read_to_string(out.join("weights.jsonl"))
            .unwrap()
            .lines()
            .count(),
        6
    );
    embed(&library, &model);

    // semla segment: a mask and an overlay per image, and the adapters used.
    let image = dir.path().join("fog.png");
    let sample = semla_data::synthetic::SyntheticWorld::generate_named(
        "fog",
        semla_data::synthetic::Split::Test,
        0,
        64,
        48,
    )
    .unwrap();
    sample.image.save(&image).unwrap();
    let seg_out = dir.path().join("segment");
    let segmented = ok_json(&[
        "segment",
        "--model",
        m,
        "--library",
        lib,
        "--top-k",
        "2",
        "--out",
        seg_out.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    let first = &segmented["images"][0];
    assert_eq!(first["adapters"].as_array().unwrap().len(), 2);
    let mask = semla_data::image_io::read_rgb(Path::new(first["mask"].as_str().unwrap())).unwrap();
    assert_eq!((mask.width(), mask.height()), (64, 48));
    assert!(Path::new(first["overlay"].as_str().unwrap()).is_file());
    assert_eq!(segmented["combination"], "cat");

    // The config's combination_type is honoured (PEFT's linear merge per image),
    // and one semla cannot fuse exactly is refused, not silently replaced.
    let config = dir.path().join("semla_config.yaml");
    std::fs::write(&config, "combination_type: linear\ntop_k: 2\n").unwrap();
    let linear = ok_json(&[
        "segment",
        "--model",
        m,
        "--library",
        lib,
        "--semla-config",
        config.to_str().unwrap(),
        "--out",
        seg_out.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    assert_eq!(linear["combination"], "linear");
    assert_eq!(linear["images"][0]["adapters"], first["adapters"]);
    std::fs::write(&config, "combination_type: ties\n").unwrap();
    let out = semla(&[
        "segment",
        "--model",
        m,
        "--library",
        lib,
        "--semla-config",
        config.to_str().unwrap(),
        "--out",
        seg_out.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ties") && err.contains("combination"), "{err}");
}
