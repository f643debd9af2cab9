//! The experiment engine on a tiny synthetic setup: 3 domains of the
//! synthetic world at 32x24, a random tiny segmenter (untrained: every check
//! here is an identity, not a learning result) and random rank-2 adapters.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use semla_adapters::{Adapter, AdapterLibrary, EmbedderRecord};
use semla_core::NoProgress;
use semla_data::synthetic::render_source as render_domain;
use semla_data::{InMemorySource, SampleSource};
use semla_experiments::{
    ExperimentError, ExperimentKind, ExperimentSettings, Target, evaluate, run_experiment,
};
use semla_metrics::Definition;
use semla_models::tiny::TinySegConfig;
use semla_models::{Segmenter, SegmenterConfig, load_segmenter, save_segmenter};
use semla_pipeline::embed::segmenter::SegmenterEmbedder;
use semla_pipeline::mixture::{AdapterChoice, argmax_maps, batch_mixture, mixture_scores};
use semla_pipeline::prototype::{EmbedOptions, record_prototypes, source_prototype};
use semla_pipeline::{Embed, EmbedderSpec, Fusion, Semla, SemlaSettings, SourceLibrary};
use semla_test_support::max_abs_diff;
use semla_train::lora::{LoraSettings, LoraTrainee};

const DOMAINS: [&str; 3] = ["clear", "night", "fog"];
const W: u32 = 32;
const H: u32 = 24;

struct Setup {
    _dir: tempfile::TempDir,
    library: std::path::PathBuf,
    model: Arc<dyn Segmenter>,
    val: Vec<InMemorySource>,
}

fn seeded(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            scale * ((state >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0)
        })
        .collect()
}

fn random_adapter(model: &dyn Segmenter, name: &str, seed: u64) -> Adapter {
    let settings = LoraSettings {
        rank: 2,
        alpha: 4.0,
        ..LoraSettings::default()
    };
    let lora = LoraTrainee::new(&model.sites(), &settings, seed, &Device::Cpu).unwrap();
    let mut adapter = lora.to_adapter(name).unwrap();
    for (i, site) in adapter.sites.values_mut().enumerate() {
        let dims = site.b.dims().to_vec();
        let n: usize = dims.iter().product();
        site.b =
            Tensor::from_vec(seeded(n, seed * 31 + i as u64, 0.5), dims, &Device::Cpu).unwrap();
    }
    adapter
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::Cpu;
    let config = SegmenterConfig::Tiny(TinySegConfig {
        num_classes: semla_data::synthetic::NUM_CLASSES,
        width: 4,
        class_names: Vec::new(),
    });
    let (trainable, _varmap) =
        semla_train::runs::build_trainable(&config, None, 3, &device).unwrap();
    let model_dir = dir.path().join("model");
    save_segmenter(trainable.as_ref(), &model_dir).unwrap();
    let model: Arc<dyn Segmenter> = Arc::from(load_segmenter(&model_dir, &device).unwrap());
    let library = dir.path().join("library");
    std::fs::create_dir_all(&library).unwrap();
    let mut lib = AdapterLibrary::open(&library).unwrap();
    let mut train = Vec::new();
    let mut val = Vec::new();
    for (i, name) in DOMAINS.iter().enumerate() {
        lib.add(&random_adapter(model.as_ref(), name, 10 + i as u64), None)
            .unwrap();
        train.push(render_domain(name, semla_data::synthetic::Split::Train, 3, W, H).unwrap());
        val.push(render_domain(name, semla_data::synthetic::Split::Val, 4, W, H).unwrap());
    }
    let embedder = SegmenterEmbedder::backbone(model.clone(), 1).unwrap();
    let prototypes: Vec<(String, Vec<f32>, usize)> = DOMAINS
        .iter()
        .zip(&train)
        .map(|(name, source)| {
            let (p, n) = source_prototype(
                &embedder,
                source,
                &EmbedOptions::default(),
                name,
                &device,
                &mut NoProgress,
            )
            .unwrap();
            (name.to_string(), p, n)
        })
        .collect();
    record_prototypes(&library, &prototypes, &embedder).unwrap();
    Setup {
        _dir: dir,
        library,
        model,
        val,
    }
}

fn targets(setup: &Setup) -> Vec<Target<'_>> {
    DOMAINS
        .iter()
        .zip(&setup.val)
        .map(|(name, source)| Target {
            name: name.to_string(),
            source: source as &dyn SampleSource,
            definition: Definition::Detectron2,
            class_names: Vec::new(),
            model: None,
        })
        .collect()
}

fn names() -> Vec<String> {
    DOMAINS.iter().map(|s| s.to_string()).collect()
}

fn semla(setup: &Setup, embedder: Box<dyn Embed>) -> Result<Semla, ExperimentError> {
    let library = SourceLibrary::open(&setup.library, &names(), true)?;
    Ok(Semla::new(
        setup.model.clone(),
        library,
        Some(embedder),
        SemlaSettings::default(),
        &Device::Cpu,
    )?)
}

fn run(setup: &Setup, settings: &ExperimentSettings) -> semla_experiments::ExperimentOutput {
    let embedder = SegmenterEmbedder::backbone(setup.model.clone(), 1).unwrap();
    let semla = semla(setup, Box::new(embedder)).unwrap();
    run_experiment(&semla, &targets(setup), settings, &mut NoProgress).unwrap()
}

/// The library's record check of a query by `embedder` of dimension `dimension`.
fn check_library_embedder(
    library: &Path,
    embedder: &dyn Embed,
    dimension: usize,
) -> Result<(), semla_adapters::AdapterError> {
    AdapterLibrary::open(library)?.check_query(Some(embedder.id()), dimension)
}

#[test]
fn semla_outputs_have_the_official_and_documented_shapes() {
    let setup = setup();
    let settings = ExperimentSettings {
        remove_target_adapter: true,
        batch_size: 3,
        ..ExperimentSettings::new(ExperimentKind::Semla)
    };
    let output = run(&setup, &settings);
    let out = setup._dir.path().join("out");
    output.write(&out, &settings).unwrap();

    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let results = results.as_object().unwrap();
    assert_eq!(results.keys().cloned().collect::<Vec<_>>(), names());
    for v in results.values() {
        let v = v.as_f64().unwrap();
        assert!((0.0..=100.0).contains(&v));
    }

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["experiment"], "semla");
    let targets = report["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 3);
    for (t, name) in targets.iter().zip(DOMAINS) {
        assert_eq!(t["target"], name);
        assert_eq!(t["definition"], "detectron2");
        assert_eq!(t["images"], 4);
        assert_eq!(t["per_class_iou"].as_array().unwrap().len(), 10);
        assert!(t["seconds_per_image"].as_f64().unwrap() > 0.0);
        assert_eq!(t["miou_percent"].as_f64(), results[name].as_f64());
    }

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("weights.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 12, "one line per image");
    for line in &lines {
        let target = line["target"].as_str().unwrap();
        let adapters = line["adapters"].as_array().unwrap();
        assert_eq!(adapters.len(), 2, "leave-one-out leaves 2 candidates");
        assert!(adapters.iter().all(|a| a["name"] != target));
        let sum: f64 = adapters.iter().map(|a| a["weight"].as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-12);
        let d: Vec<f64> = adapters
            .iter()
            .map(|a| a["distance"].as_f64().unwrap())
            .collect();
        assert!(d[0] <= d[1], "nearest first");
        let s0 = adapters[0]["similarity"].as_f64().unwrap();
        assert!((s0 - 1.0 / d[0]).abs() < 1e-12);
    }
}

#[test]
fn oracle_equals_evaluating_the_target_adapter_directly() {
    let setup = setup();
    let settings = ExperimentSettings {
        remove_target_adapter: true, // ignored by oracle, as officially
        ..ExperimentSettings::new(ExperimentKind::Oracle)
    };
    let output = run(&setup, &settings);
    let library = AdapterLibrary::open(&setup.library).unwrap();
    for (i, name) in DOMAINS.iter().enumerate() {
        let adapter = library.load(name).unwrap();
        let adaptation = semla_adapters::apply::adaptation_for(&[&adapter], &[vec![1.0]]).unwrap();
        let direct = evaluate(
            setup.model.as_ref(),
            &adaptation,
            &setup.val[i],
            Definition::Detectron2,
            None,
            &Device::Cpu,
            &mut NoProgress,
        )
        .unwrap();
        assert_eq!(output.results[i].0, *name);
        assert!(
            (output.results[i].1 - 100.0 * direct.miou()).abs() < 1e-9,
            "{name}: {} vs {}",
            output.results[i].1,
            100.0 * direct.miou()
        );
        let records: Vec<_> = output.images.iter().filter(|r| r.target == *name).collect();
        assert!(
            records
                .iter()
                .all(|r| r.adapters.len() == 1 && r.adapters[0].name == *name)
        );
    }
    // And oracle differs from zero-shot: the adapters do change the model.
    let zero = run(&setup, &ExperimentSettings::new(ExperimentKind::ZeroShot));
    assert!(zero.images.iter().all(|r| r.adapters.is_empty()));
}

#[test]
fn uniform_weights_are_one_over_n() {
    let setup = setup();
    for (remove, n) in [(false, 3usize), (true, 2)] {
        let settings = ExperimentSettings {
            remove_target_adapter: remove,
            ..ExperimentSettings::new(ExperimentKind::Uniform)
        };
        let output = run(&setup, &settings);
        for record in &output.images {
            assert_eq!(record.adapters.len(), n);
            for a in &record.adapters {
                assert_eq!(a.weight, 1.0 / n as f64);
                assert!(a.distance.is_none());
            }
            if remove {
                assert!(record.adapters.iter().all(|a| a.name != record.target));
            }
        }
    }
}

#[test]
fn a_mixed_batch_equals_its_images_run_one_by_one() {
    let setup = setup();
    let library = SourceLibrary::open(&setup.library, &names(), false).unwrap();
    let model = setup.model.as_ref();
    // Four images with four different mixtures over different adapter subsets.
    let samples: Vec<_> = (0..4)
        .map(|i| setup.val[i % 3].sample(i / 3).unwrap())
        .collect();
    let choice = |name: &str, weight: f64| AdapterChoice::weighted(name, weight);
    let mixtures = [
        vec![choice("clear", 0.7), choice("night", 0.3)],
        vec![choice("fog", 1.0)],
        vec![
            choice("night", 0.2),
            choice("fog", 0.5),
            choice("clear", 0.3),
        ],
        vec![],
    ];
    for fusion in [Fusion::Weights, Fusion::Outputs] {
        let refs: Vec<&[AdapterChoice]> = mixtures.iter().map(Vec::as_slice).collect();
        let (union, rows) = batch_mixture(&refs);
        assert_eq!(union, ["clear", "night", "fog"]);
        let adapters: Vec<&Adapter> = union.iter().map(|n| library.adapter(n).unwrap()).collect();
        let batch_refs: Vec<_> = samples.iter().collect();
        let images = model
            .normalization()
            .batch(&batch_refs, &Device::Cpu)
            .unwrap();
        // Image 3 has no adapter: in the batch it gets all-zero weights, which
        // with weight fusion is the base model; late fusion of nothing is not
        // defined, so it is left out there.
        let count = if fusion == Fusion::Weights { 4 } else { 3 };
        let images = images.narrow(0, 0, count).unwrap();
        let batch = mixture_scores(model, &images, &adapters, &rows[..count], fusion).unwrap();
        for (n, mixture) in mixtures.iter().enumerate().take(count) {
            let single_images = images.narrow(0, n, 1).unwrap();
            let (names, single_rows) = batch_mixture(&[mixture.as_slice()]);
            let single_adapters: Vec<&Adapter> =
                names.iter().map(|n| library.adapter(n).unwrap()).collect();
            let single = mixture_scores(
                model,
                &single_images,
                &single_adapters,
                &single_rows,
                fusion,
            )
            .unwrap();
            let diff = max_abs_diff(&batch.narrow(0, n, 1).unwrap(), &single);
            assert!(diff < 1e-4, "{fusion:?} image {n}: max difference {diff}");
        }
        if fusion == Fusion::Weights {
            let base = model
                .forward(
                    &images.narrow(0, 3, 1).unwrap(),
                    &semla_adapters::Adaptation::none(),
                )
                .unwrap();
            let maps = argmax_maps(&batch.narrow(0, 3, 1).unwrap()).unwrap();
            assert_eq!(maps, argmax_maps(&base).unwrap());
        }
    }
}

#[test]
fn late_fusion_is_the_weighted_average_of_softmax_outputs() {
    let setup = setup();
    let library = SourceLibrary::open(&setup.library, &names(), false).unwrap();
    let model = setup.model.as_ref();
    let sample = setup.val[1].sample(0).unwrap();
    let images = model
        .normalization()
        .batch(&[&sample], &Device::Cpu)
        .unwrap();
    let a = library.adapter("clear").unwrap();
    let b = library.adapter("fog").unwrap();
    let fused = mixture_scores(
        model,
        &images,
        &[a, b],
        &[vec![0.25, 0.75]],
        Fusion::Outputs,
    )
    .unwrap();
    let probs = |adapter: &Adapter| {
        let adaptation = semla_adapters::apply::adaptation_for(&[adapter], &[vec![1.0]]).unwrap();
        candle_nn::ops::softmax(&model.forward(&images, &adaptation).unwrap(), 1).unwrap()
    };
    let expected = ((probs(a) * 0.25).unwrap() + (probs(b) * 0.75).unwrap()).unwrap();
    let diff = max_abs_diff(&fused, &expected);
    assert!(diff < 1e-6, "{diff}");
}

#[test]
fn a_query_from_another_embedder_is_refused() {
    let setup = setup();
    let record = EmbedderRecord::read(&setup.library).unwrap().unwrap();
    assert_eq!(record.embedder, "backbone");
    assert_eq!(
        record.dimension, 16,
        "tiny width 4: head has 4 * 4 channels"
    );
    assert_eq!(record.images["night"], 3);
    let same = SegmenterEmbedder::backbone(setup.model.clone(), 1).unwrap();
    check_library_embedder(&setup.library, &same, 16).unwrap();
    let err = check_library_embedder(&setup.library, &same, 12).unwrap_err();
    assert!(err.to_string().contains("dimension"), "{err}");

    // The same backbone on downscaled images is another embedder: refused, and its
    // embedding is the full-size backbone's of the average-pooled batch.
    let half = SegmenterEmbedder::backbone(setup.model.clone(), 2).unwrap();
    assert_ne!(half.id(), same.id());
    let err = check_library_embedder(&setup.library, &half, 16).unwrap_err();
    assert!(err.to_string().contains("embedder"), "{err}");
    let sample = setup.val[0].sample(0).unwrap();
    let pooled = {
        let batch = setup
            .model
            .normalization()
            .batch(&[&sample], &Device::Cpu)
            .unwrap();
        let pooled = batch.avg_pool2d(2).unwrap();
        setup
            .model
            .embed(&pooled)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let embedded = half.embed_samples(&[&sample], &Device::Cpu).unwrap();
    let full = same.embed_samples(&[&sample], &Device::Cpu).unwrap();
    assert_eq!(embedded[0], pooled);
    assert_ne!(embedded[0], full[0]);
    assert!(SegmenterEmbedder::backbone(setup.model.clone(), 0).is_err());

    let config = SegmenterConfig::Tiny(TinySegConfig::new(semla_data::synthetic::NUM_CLASSES));
    let (other, _) = semla_train::runs::build_trainable(&config, None, 99, &Device::Cpu).unwrap();
    let other = SegmenterEmbedder::backbone(Arc::from(other), 1).unwrap();
    let err = check_library_embedder(&setup.library, &other, 16).unwrap_err();
    assert!(err.to_string().contains("embedder"), "{err}");

    // The semla experiment refuses it too, before scoring anything.
    let result = semla(&setup, Box::new(other)).and_then(|semla| {
        run_experiment(
            &semla,
            &targets(&setup),
            &ExperimentSettings::new(ExperimentKind::Semla),
            &mut NoProgress,
        )
    });
    assert!(result.is_err());
}

#[test]
fn clip_embedder_matches_transformers_features_from_files_and_samples() {
    // The tiny CLIP fixture of semla-models, with the `get_image_features`
    // transformers computed for its two photos.
    let clip = Path::new(env!("CARGO_MANIFEST_DIR")).join("../semla-models/tests/fixtures/clip");
    let outputs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(clip.join("tiny/outputs.json")).unwrap())
            .unwrap();
    let spec: EmbedderSpec = format!("clip:{}", clip.join("tiny").display())
        .parse()
        .unwrap();
    let embedder = spec
        .build(&semla_pipeline::embed::BuildContext {
            device: &Device::Cpu,
            model: None,
        })
        .unwrap();
    assert_eq!(embedder.kind(), "clip");
    assert!(embedder.id().starts_with("clip:"));
    for (i, photo) in ["photo_a.png", "photo_b.png"].iter().enumerate() {
        let expected: Vec<f32> = outputs["image_features"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let path = clip.join(photo);
        let img = semla_data::image_io::read_rgb(&path).unwrap();
        let from_file = embedder.embed_photo(&img, &Device::Cpu).unwrap();
        let sample = semla_data::Sample::from_photo(&img);
        let from_sample = embedder
            .embed_samples(&[&sample], &Device::Cpu)
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(from_file.len(), expected.len());
        for ((a, b), e) in from_file.iter().zip(&from_sample).zip(&expected) {
            assert!(
                (a - e).abs() < 1e-4 * (1.0 + e.abs()),
                "{photo}: {a} vs {e}"
            );
            assert_eq!(a, b, "{photo}: file and sample paths see the same pixels");
        }
    }
}

#[test]
fn shards_merge_into_the_whole_run_whatever_their_count() {
    use semla_experiments::shard::{Fingerprint, Shard, ShardPart, assignment};
    use semla_experiments::{merge_parts, run_shard};

    let setup = setup();
    // 12 images named #0..#11: sorted by id, #10 and #11 come before #2.
    let night = render_domain("night", semla_data::synthetic::Split::Val, 12, W, H).unwrap();
    let targets = vec![
        Target {
            name: "night".into(),
            source: &night,
            definition: Definition::Detectron2,
            class_names: Vec::new(),
            model: None,
        },
        Target {
            name: "fog".into(),
            source: &setup.val[2],
            definition: Definition::Cityscapes,
            class_names: Vec::new(),
            model: None,
        },
    ];
    let settings = ExperimentSettings {
        remove_target_adapter: true,
        batch_size: 3,
        ..ExperimentSettings::new(ExperimentKind::Semla)
    };
    let embedder = SegmenterEmbedder::backbone(setup.model.clone(), 1).unwrap();
    let semla = semla(&setup, Box::new(embedder)).unwrap();
    let whole = run_experiment(&semla, &targets, &settings, &mut NoProgress).unwrap();
    let inputs = Fingerprint::of_inputs(
        &setup._dir.path().join("model"),
        &setup.library,
        &names(),
        &settings,
        &serde_json::json!({}),
    )
    .unwrap();
    let without_timings = |output: &semla_experiments::ExperimentOutput| {
        let mut report: serde_json::Value =
            serde_json::from_str(&output.report_json(&settings)).unwrap();
        for target in report["targets"].as_array_mut().unwrap() {
            target["seconds"] = serde_json::Value::Null;
            target["seconds_per_image"] = serde_json::Value::Null;
        }
        report
    };
    // 13 shards for 12 images: one shard has no night image, nine no fog image.
    for count in [1, 3, 5, 13] {
        let parts: Vec<(std::path::PathBuf, ShardPart)> = (0..count)
            .rev()
            .map(|i| {
                let shard = Shard::new(i, count).unwrap();
                let part = run_shard(&semla, &targets, &settings, shard, &inputs, &mut NoProgress)
                    .unwrap();
                (format!("part-{i}").into(), part)
            })
            .collect();
        let merged = merge_parts(&parts).unwrap();
        assert_eq!(merged.shards, count);
        assert_eq!(
            merged.output.results_json(),
            whole.results_json(),
            "{count}"
        );
        assert_eq!(
            merged.output.weights_jsonl(),
            whole.weights_jsonl(),
            "{count}"
        );
        assert_eq!(without_timings(&merged.output), without_timings(&whole));
        assert_eq!(merged.output.results, whole.results);
    }

    // Shard 1 of 3 holds the sorted positions 1, 4, 7, 10: #1, #2, #5, #8.
    let ids: Vec<String> = (0..12).map(|i| format!("#{i}")).collect();
    let owner = assignment(&ids, 3);
    let mine: Vec<usize> = (0..12).filter(|&i| owner[i] == 1).collect();
    assert_eq!(mine, [1, 2, 5, 8]);
    let part = run_shard(
        &semla,
        &targets,
        &settings,
        Shard::new(1, 3).unwrap(),
        &inputs,
        &mut NoProgress,
    )
    .unwrap();
    assert_eq!(part.targets[0].images, ["#1", "#2", "#5", "#8"]);
    // Written and read back, a part is what it was (floats bit for bit).
    let dir = setup._dir.path().join("shard-1");
    let file = part.write(&dir).unwrap();
    assert_eq!(file, dir.join("shard.json"));
    assert_eq!(ShardPart::read(&dir).unwrap(), part);
    assert_eq!(ShardPart::read(&file).unwrap(), part);

    // Another top-k is another fingerprint.
    let top3 = ExperimentSettings {
        params: semla_retrieval::RetrievalParams {
            top_k: 3,
            ..settings.params
        },
        ..settings.clone()
    };
    let other = Fingerprint::of_inputs(
        &setup._dir.path().join("model"),
        &setup.library,
        &names(),
        &top3,
        &serde_json::json!({}),
    )
    .unwrap();
    assert!(other.difference(&inputs).unwrap().contains("settings"));
    assert_eq!(inputs.difference(&inputs.clone()), None);

    // A copy of the model folder elsewhere is the same model (its training
    // checkpoints aside); one changed file makes it another.
    let model = setup._dir.path().join("model");
    let copy = setup._dir.path().join("elsewhere/model");
    std::fs::create_dir_all(copy.join("checkpoint")).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(model.join(file), copy.join(file)).unwrap();
    }
    std::fs::write(copy.join("checkpoint/state.json"), "{}").unwrap();
    let of = |model: &Path| {
        Fingerprint::of_inputs(
            model,
            &setup.library,
            &names(),
            &settings,
            &serde_json::json!({}),
        )
        .unwrap()
    };
    assert_eq!(of(&copy), inputs);
    let mut config = std::fs::read_to_string(copy.join("config.json")).unwrap();
    config.push('\n');
    std::fs::write(copy.join("config.json"), config).unwrap();
    assert!(of(&copy).difference(&inputs).unwrap().contains("models"));
}
