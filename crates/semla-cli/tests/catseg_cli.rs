//! `semla segment --model catseg:PATH ... --save-probabilities` and `semla model
//! convert` on the tiny random CAT-Seg whose outputs the official code wrote
//! (`crates/semla-models/tests/fixtures/catseg/`, see
//! `tools/reference/catseg_reference.py`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use semla_test_support::cli;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../semla-models/tests/fixtures/catseg")
}

/// The tiny L model's checkpoint as a `.safetensors` file of its official keys.
fn write_checkpoint(dir: &Path) -> PathBuf {
    let tensors = semla_test_support::tensors_from_keys(&fixtures().join("keys_tiny_l.json"));
    let path = dir.join("model_final.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    path
}

fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let array = semla_adapters::npz::parse_npy(&bytes).unwrap();
    (array.shape, array.data)
}

fn reference(name: &str) -> HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(fixtures().join(name), &candle_core::Device::Cpu).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn segment_writes_the_official_probabilities_with_an_adapter_and_after_convert() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = write_checkpoint(dir.path());
    let classes = dir.path().join("classes.txt");
    std::fs::write(&classes, "road\ncar, automobile\ntraffic light\n").unwrap();
    let image = fixtures().join("image.png");
    let yaml = fixtures().join("tiny_l.yaml");
    let out = dir.path().join("out");
    let model = format!("catseg:{}", checkpoint.display());
    let (ok, _, stderr) = cli::semla_text(&[
        "segment",
        "--model",
        &model,
        "--catseg-config",
        yaml.to_str().unwrap(),
        "--classes-file",
        classes.to_str().unwrap(),
        "--adapter",
        fixtures().join("adapter_tiny_l").to_str().unwrap(),
        "--save-probabilities",
        "--out",
        out.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let (shape, probs) = read_npy(&out.join("image_probs.npy"));
    assert_eq!(shape, [3, 150, 200]);
    let want = reference("outputs_tiny_l_adapter.safetensors");
    let want_probs: Vec<f32> = want["probabilities"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let err = max_diff(&probs, &want_probs);
    assert!(
        err < 1e-4,
        "probabilities differ from the official PeftModel by {err}"
    );
    let labels = semla_data::labels::read_label_map(&out.join("image.png")).unwrap();
    assert_eq!((labels.width, labels.height), (200, 150));
    // Class ids are the argmax of the written probabilities.
    for (i, &label) in labels.values.iter().enumerate().step_by(97) {
        let column: Vec<f32> = (0..3).map(|c| probs[c * 30_000 + i]).collect();
        let best = (0..3)
            .max_by(|&a, &b| column[a].total_cmp(&column[b]))
            .unwrap();
        assert_eq!(label as usize, best, "pixel {i}");
    }
    assert!(out.join("image_mask.png").is_file() && out.join("image_overlay.png").is_file());

    // Converted into a model folder, the model loads without its YAML and
    // segments as the official base model at another record size.
    let folder = dir.path().join("catseg-tiny");
    let (ok, _, stderr) = cli::semla_text(&[
        "model",
        "convert",
        "--model",
        &model,
        "--catseg-config",
        yaml.to_str().unwrap(),
        "--out",
        folder.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let folder_spec = format!("catseg:{}", folder.display());
    let run = |out: &Path, extra: &[&str]| {
        let mut v = vec![
            "segment",
            "--model",
            &folder_spec,
            "--classes-file",
            classes.to_str().unwrap(),
        ];
        v.extend_from_slice(extra);
        v.extend([
            "--save-probabilities",
            "--out",
            out.to_str().unwrap(),
            image.to_str().unwrap(),
        ]);
        let (ok, _, stderr) = cli::semla_text(&v);
        assert!(ok, "{stderr}");
        read_npy(&out.join("image_probs.npy"))
    };
    let (_, probs) = run(&dir.path().join("out2"), &[]);
    let base: Vec<f32> = reference("outputs_tiny_l.safetensors")["probabilities"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let err = max_diff(&probs, &base);
    assert!(
        err < 1e-4,
        "the converted model differs from the official base model by {err}"
    );
    // --output-size is the record size of the official post-processing.
    let (shape, _) = run(&dir.path().join("out3"), &["--output-size", "75x100"]);
    assert_eq!(shape, [3, 75, 100]);
}

#[test]
fn catseg_without_classes_or_with_a_bad_checkpoint_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = write_checkpoint(dir.path());
    let model = format!("catseg:{}", checkpoint.display());
    let yaml = fixtures().join("tiny_l.yaml");
    let image = fixtures().join("image.png");
    let out = dir.path().join("out");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "segment",
            "--model",
            &model,
            "--catseg-config",
            yaml.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v.extend([
            "--out".into(),
            out.display().to_string(),
            image.display().to_string(),
        ]);
        v
    };
    let run = |v: Vec<String>| {
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        cli::semla_text(&refs)
    };
    let (ok, _, stderr) = run(args(&[]));
    assert!(!ok && stderr.contains("--classes"), "{stderr}");
    let truncated = dir.path().join("cut.pth");
    std::fs::write(&truncated, b"PK\x03\x04 not a zip").unwrap();
    let bad = format!("catseg:{}", truncated.display());
    let (ok, _, stderr) = cli::semla_text(&[
        "segment",
        "--model",
        &bad,
        "--classes",
        "road",
        "--out",
        out.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("cut.pth"), "{stderr}");
    assert!(!out.exists(), "a failed run wrote its output folder");
}

/// The tiny L CAT-Seg as a model folder segmenting the synthetic world's classes.
fn write_catseg_folder(dir: &Path) -> PathBuf {
    let tensors = semla_test_support::tensors_from_keys(&fixtures().join("keys_tiny_l.json"));
    let shapes = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    let mut config =
        semla_models::catseg::CatSegConfig::from_yaml(&fixtures().join("tiny_l.yaml"), &shapes)
            .unwrap();
    config.class_names = semla_data::synthetic::CLASS_NAMES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let model =
        semla_models::catseg::from_tensors(tensors, &config, &candle_core::Device::Cpu).unwrap();
    let path = dir.join("catseg-tiny");
    semla_models::save_segmenter(&model, &path).unwrap();
    path
}

/// `semla eval --experiment MODE` over `targets` with the library's recorded embedder.
fn experiment(
    mode: &str,
    model: &[&str],
    lib: &str,
    targets: &str,
    out: &Path,
) -> serde_json::Value {
    let mut args = vec!["eval", "--experiment", mode];
    args.extend_from_slice(model);
    args.extend_from_slice(&[
        "--library",
        lib,
        "--sources",
        SOURCES,
        "--targets",
        targets,
        "--limit",
        "1",
        "--resize",
        "48x64",
        "--out",
        out.to_str().unwrap(),
    ]);
    if mode == "uniform" || mode == "semla" {
        args.push("--remove-target-adapter");
    }
    cli::semla_json(&args);
    serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap()
}

const SOURCES: &str = "synthetic-clear,synthetic-night,synthetic-fog";

#[test]
fn the_four_experiments_run_on_cat_seg_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = write_checkpoint(dir.path());
    let yaml = fixtures().join("tiny_l.yaml");
    let spec = format!("catseg:{}", checkpoint.display());
    // No --classes: each target segments its own domain's classes.
    let catseg = [
        "--model",
        spec.as_str(),
        "--catseg-config",
        yaml.to_str().unwrap(),
    ];
    let model_dir = write_catseg_folder(dir.path());
    let model = semla_models::load_segmenter(&model_dir, &candle_core::Device::Cpu).unwrap();
    assert_eq!(model.num_classes(), semla_data::synthetic::NUM_CLASSES);
    // One random adapter per source over the official sites, embedded by the
    // separate CLIP the official code uses (a tiny Hugging Face CLIP folder).
    let root = dir.path().join("loradb");
    std::fs::create_dir_all(&root).unwrap();
    let mut library = semla_adapters::AdapterLibrary::open(&root).unwrap();
    for (i, name) in SOURCES.split(',').enumerate() {
        let adapter =
            semla_adapters::Adapter::random(name, &model.sites(), 2, 10 + i as u64).unwrap();
        library.add(&adapter, None).unwrap();
    }
    let lib = root.to_str().unwrap();
    let clip =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../semla-models/tests/fixtures/clip/tiny");
    cli::semla_json(&[
        "library",
        "embed",
        "--library",
        lib,
        "--sources",
        SOURCES,
        "--embedder",
        &format!("clip:{}", clip.display()),
        "--limit",
        "2",
        "--resize",
        "48x64",
    ]);
    let targets = "synthetic-night,synthetic-fog";
    let mut zeroshot = None;
    for mode in ["zeroshot", "oracle", "uniform", "semla"] {
        let out = dir.path().join(mode);
        let results = experiment(mode, &catseg, lib, targets, &out);
        for target in targets.split(',') {
            let miou = results[target].as_f64();
            assert!(
                miou.is_some_and(|v| (0.0..=100.0).contains(&v)),
                "{mode}: {results}"
            );
        }
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap())
                .unwrap();
        let text = report.to_string();
        assert!(
            text.contains(semla_data::synthetic::CLASS_NAMES[1]),
            "{text}"
        );
        let lines = std::fs::read_to_string(out.join("weights.jsonl")).unwrap();
        assert_eq!(lines.lines().count(), 2, "{mode}");
        if mode == "semla" {
            // The target's own adapter is removed; the others are weighted per image.
            for line in lines.lines() {
                let record: serde_json::Value = serde_json::from_str(line).unwrap();
                let names: Vec<&str> = record["adapters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a["name"].as_str().unwrap())
                    .collect();
                assert_eq!(names.len(), 2, "{line}");
                let target = record["target"].as_str().unwrap();
                assert!(!names.contains(&target), "{line}");
            }
        }
        if mode == "zeroshot" {
            zeroshot = Some(results);
        }
    }
    // The converted folder (its class list fixed to the same names) scores the same.
    let out = dir.path().join("zeroshot-folder");
    let folder = ["--model", model_dir.to_str().unwrap()];
    let results = experiment("zeroshot", &folder, lib, targets, &out);
    let zeroshot = zeroshot.unwrap();
    for target in targets.split(',') {
        let (a, b) = (
            results[target].as_f64().unwrap(),
            zeroshot[target].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-9, "{target}: folder {a} vs catseg: {b}");
    }
}

#[test]
fn adapter_train_on_cat_seg_writes_a_peft_adapter_that_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = write_checkpoint(dir.path());
    let yaml = fixtures().join("tiny_l.yaml");
    let spec = format!("catseg:{}", checkpoint.display());
    let out = dir.path().join("lib/night");
    let report = cli::semla_json(&[
        "adapter",
        "train",
        "--model",
        &spec,
        "--catseg-config",
        yaml.to_str().unwrap(),
        "--domain",
        "synthetic-night",
        "--resize",
        "48x64",
        "--steps",
        "2",
        "--batch",
        "1",
        "--lr",
        "1e-3",
        "--warmup",
        "0",
        "--clip",
        "0.01",
        "--rank",
        "2",
        "--alpha",
        "4",
        "--targets",
        "mlp.c_fc,attention.attention.q",
        "--prototype-images",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    let losses = report["losses"].as_array().unwrap();
    assert_eq!(losses.len(), 2, "{report}");
    // BCE with logits over 2 synthetic classes and more starts near ln 2 per term.
    for loss in losses {
        let loss = loss.as_f64().unwrap();
        assert!(loss.is_finite() && loss > 0.0 && loss < 5.0, "{report}");
    }
    let adapter = semla_adapters::peft::load_adapter(&out).unwrap();
    assert_eq!(adapter.config.r, 2);
    let tensors = semla_test_support::tensors_from_keys(&fixtures().join("keys_tiny_l.json"));
    let sites = adapter.sites.keys().cloned().collect::<Vec<_>>();
    assert!(
        sites
            .iter()
            .all(|s| s.ends_with("mlp.c_fc") || s.ends_with("attention.attention.q")),
        "{sites:?}"
    );
    // Both towers' MLPs and the class attention, every one a module of the checkpoint.
    assert!(sites.iter().any(|s| s.contains("visual.transformer")));
    assert!(sites.iter().any(|s| s.contains("clip_model.transformer")));
    assert!(
        sites
            .iter()
            .any(|s| s.contains("predictor.transformer.layers"))
    );
    for site in &sites {
        assert!(
            tensors.keys().any(|k| k.starts_with(site.as_str())),
            "{site} is not a module of the checkpoint"
        );
    }
    // B starts at zero: after two steps it has moved.
    assert!(
        adapter
            .sites
            .values()
            .any(|s| semla_test_support::max_abs(&s.b) > 0.0)
    );
    // The library holds the adapter with a prototype, and the adapter evaluates.
    let library = semla_adapters::AdapterLibrary::open(&dir.path().join("lib")).unwrap();
    assert!(library.contains("night"));
    let eval = cli::semla_json(&[
        "eval",
        "--model",
        &spec,
        "--catseg-config",
        yaml.to_str().unwrap(),
        "--adapter",
        out.to_str().unwrap(),
        "--domain",
        "synthetic-night",
        "--limit",
        "1",
        "--resize",
        "48x64",
    ]);
    let miou = eval["miou"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&miou), "{eval}");
}

#[test]
fn adapter_merge_of_cat_seg_adapters_segments_as_their_weighted_mixture() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = write_checkpoint(dir.path());
    let yaml = fixtures().join("tiny_l.yaml");
    let spec = format!("catseg:{}", checkpoint.display());
    let classes = dir.path().join("classes.txt");
    std::fs::write(&classes, "road\ncar, automobile\ntraffic light\n").unwrap();
    let mut model =
        semla_models::catseg::checkpoint::load(&checkpoint, Some(&yaml), &candle_core::Device::Cpu)
            .unwrap();
    model
        .set_classes(&semla_models::catseg::classes::read_classes_file(&classes).unwrap())
        .unwrap();
    let sites = semla_models::Segmenter::sites(&model);
    let root = dir.path().join("lib");
    std::fs::create_dir_all(&root).unwrap();
    let mut library = semla_adapters::AdapterLibrary::open(&root).unwrap();
    let adapters: Vec<semla_adapters::Adapter> = ["fog", "night"]
        .iter()
        .enumerate()
        .map(|(i, name)| semla_adapters::Adapter::random(*name, &sites, 2, 40 + i as u64).unwrap())
        .collect();
    for adapter in &adapters {
        library.add(adapter, None).unwrap();
    }
    let merged = dir.path().join("merged");
    cli::semla_json(&[
        "adapter",
        "merge",
        "--library",
        root.to_str().unwrap(),
        "--weights",
        "fog=0.7,night=0.3",
        "--combination",
        "cat",
        "--out",
        merged.to_str().unwrap(),
    ]);
    let out = dir.path().join("out");
    let image = fixtures().join("image.png");
    let (ok, _, stderr) = cli::semla_text(&[
        "segment",
        "--model",
        &spec,
        "--catseg-config",
        yaml.to_str().unwrap(),
        "--classes-file",
        classes.to_str().unwrap(),
        "--adapter",
        merged.to_str().unwrap(),
        "--save-probabilities",
        "--out",
        out.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let (shape, got) = read_npy(&out.join("image_probs.npy"));
    // The mixture applied factored in-process, as SemLA fuses per image.
    let rgb = semla_data::image_io::read_rgb(&image).unwrap();
    let pixels = semla_models::Segmenter::normalization(&model)
        .image(&rgb, &candle_core::Device::Cpu)
        .unwrap();
    let refs: Vec<&semla_adapters::Adapter> = adapters.iter().collect();
    let adaptation = semla_adapters::Adaptation::from_adapters(&refs, &[vec![0.7, 0.3]]).unwrap();
    let (h, w) = (rgb.height() as usize, rgb.width() as usize);
    let want = model.probabilities(&pixels, (h, w), &adaptation).unwrap();
    assert_eq!(shape, vec![3, h, w]);
    let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    let diff = max_diff(&got, &want);
    assert!(diff < 1e-4, "merged adapter vs factored mixture: {diff}");
    // And the mixture is not the base model's output.
    let base = model
        .probabilities(&pixels, (h, w), &semla_adapters::Adaptation::none())
        .unwrap();
    let base: Vec<f32> = base.flatten_all().unwrap().to_vec1().unwrap();
    let moved = max_diff(&base, &want);
    assert!(moved > 1e-3, "the adapters change nothing: {moved}");
    eprintln!("merged vs mixture {diff:.2e}; mixture vs base {moved:.2e}");
}
