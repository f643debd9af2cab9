//! The per-image path against hand-composed references: a seeded tiny
//! segmenter (untrained: every check is an identity, not a learning result),
//! three random rank-2 adapters on the synthetic world's styles, backbone
//! prototypes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::sync::Arc;

use candle_core::{Device, Tensor};
use semla_adapters::{Adaptation, Adapter, AdapterLibrary, Combination};
use semla_core::NoProgress;
use semla_data::synthetic::{Split, render_source};
use semla_data::{InMemorySource, Sample, SampleSource};
use semla_models::tiny::TinySegConfig;
use semla_models::{Segmenter, SegmenterConfig};
use semla_pipeline::embed::segmenter::SegmenterEmbedder;
use semla_pipeline::mixture::argmax_maps;
use semla_pipeline::prototype::{EmbedOptions, record_prototypes, source_prototype};
use semla_pipeline::{
    AdapterChoice, Embed, Fusion, Mode, Request, Semla, SemlaSettings, SourceLibrary,
};
use semla_retrieval::RetrievalParams;
use semla_test_support::max_abs_diff;

const DOMAINS: [&str; 3] = ["clear", "night", "fog"];

struct Setup {
    _dir: tempfile::TempDir,
    model: Arc<dyn Segmenter>,
    library: std::path::PathBuf,
    val: Vec<InMemorySource>,
}

fn names() -> Vec<String> {
    DOMAINS.iter().map(|s| s.to_string()).collect()
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::Cpu;
    let config = SegmenterConfig::Tiny(TinySegConfig {
        num_classes: semla_data::synthetic::NUM_CLASSES,
        width: 4,
        class_names: Vec::new(),
    });
    let (trainable, _) = semla_train::runs::build_trainable(&config, None, 5, &device).unwrap();
    let model_dir = dir.path().join("model");
    semla_models::save_segmenter(trainable.as_ref(), &model_dir).unwrap();
    let model: Arc<dyn Segmenter> =
        Arc::from(semla_models::load_segmenter(&model_dir, &device).unwrap());
    let library = dir.path().join("library");
    std::fs::create_dir_all(&library).unwrap();
    let mut lib = AdapterLibrary::open(&library).unwrap();
    let embedder = SegmenterEmbedder::backbone(model.clone(), 1).unwrap();
    let mut prototypes = Vec::new();
    let mut val = Vec::new();
    for (i, name) in DOMAINS.iter().enumerate() {
        // Large factors, so that mixtures visibly change the logits.
        let mut adapter = Adapter::random(*name, &model.sites(), 2, 40 + i as u64).unwrap();
        for site in adapter.sites.values_mut() {
            site.b = (&site.b * 40.0).unwrap();
        }
        lib.add(&adapter, None).unwrap();
        let train = render_source(name, Split::Train, 3, 32, 24).unwrap();
        let (p, n) = source_prototype(
            &embedder,
            &train,
            &EmbedOptions::default(),
            name,
            &device,
            &mut NoProgress,
        )
        .unwrap();
        prototypes.push((name.to_string(), p, n));
        val.push(render_source(name, Split::Val, 3, 32, 24).unwrap());
    }
    record_prototypes(&library, &prototypes, &embedder).unwrap();
    Setup {
        _dir: dir,
        model,
        library,
        val,
    }
}

fn semla(setup: &Setup, settings: SemlaSettings) -> Semla {
    let library = SourceLibrary::open(&setup.library, &names(), true).unwrap();
    let embedder = SegmenterEmbedder::backbone(setup.model.clone(), 1).unwrap();
    Semla::new(
        setup.model.clone(),
        library,
        Some(Box::new(embedder)),
        settings,
        &Device::Cpu,
    )
    .unwrap()
}

fn sample(setup: &Setup, domain: usize, index: usize) -> Sample {
    setup.val[domain].sample(index).unwrap()
}

/// Logits of the model with one adapter applied alone at weight 1.
fn logits_with(model: &dyn Segmenter, images: &Tensor, adapter: &Adapter) -> Tensor {
    let adaptation = Adaptation::from_adapters(&[adapter], &[vec![1.0]]).unwrap();
    model.forward(images, &adaptation).unwrap()
}

#[test]
fn one_image_is_the_hand_composed_semla_path() {
    let setup = setup();
    let params = RetrievalParams {
        top_k: 2,
        temperature: 0.5,
        ..RetrievalParams::default()
    };
    let semla = semla(
        &setup,
        SemlaSettings {
            retrieval: params,
            ..SemlaSettings::default()
        },
    );
    let library = AdapterLibrary::open(&setup.library).unwrap();
    let device = Device::Cpu;
    let s = sample(&setup, 1, 0);
    let photo = s.to_photo().unwrap();
    let prediction = semla
        .segment(
            &photo,
            &Request {
                probabilities: true,
                ..Request::semla()
            },
        )
        .unwrap();

    // By hand: the backbone embedding, the retrieval maths, the factored cat
    // fusion, the forward pass, the arg-max.
    let images = setup.model.normalization().batch(&[&s], &device).unwrap();
    let embedding: Vec<f32> = setup
        .model
        .embed(&images)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let prototypes = semla_pipeline::library::load_prototypes(&library, &names()).unwrap();
    let picks = prototypes.retrieve(&embedding, &params, &[]).unwrap();
    assert_eq!(prediction.adapters.len(), 2);
    for (got, want) in prediction.adapters.iter().zip(&picks) {
        assert_eq!(got.name, want.name);
        assert!((got.weight - want.weight).abs() < 1e-12);
        assert_eq!(got.distance, Some(want.distance));
    }
    let adapters: Vec<Adapter> = picks
        .iter()
        .map(|p| library.load(&p.name).unwrap())
        .collect();
    let refs: Vec<&Adapter> = adapters.iter().collect();
    let weights: Vec<f64> = picks.iter().map(|p| p.weight).collect();
    let adaptation = Adaptation::from_adapters(&refs, &[weights]).unwrap();
    let logits = setup.model.forward(&images, &adaptation).unwrap();
    assert_eq!(
        prediction.labels,
        argmax_maps(&logits).unwrap().pop().unwrap()
    );
    let probabilities = candle_nn::ops::softmax(&logits, 1).unwrap();
    let got = Tensor::from_vec(
        prediction.probabilities.clone().unwrap(),
        probabilities.dims(),
        &device,
    )
    .unwrap();
    assert!(max_abs_diff(&got, &probabilities) < 1e-6);
    assert_eq!((prediction.height, prediction.width), (24, 32));
    assert_eq!(prediction.class_pixels(10).iter().sum::<usize>(), 24 * 32);
    assert_eq!(prediction.timings.images, 1);
    assert!(prediction.timings.forward_s > 0.0 && prediction.timings.embed_s > 0.0);

    // The photo path and the sample path agree.
    let from_sample = semla
        .segment_samples(&[&s], &Request::semla())
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(from_sample.labels, prediction.labels);
    assert_eq!(from_sample.adapters, prediction.adapters);
}

#[test]
fn every_image_of_a_batch_keeps_its_own_mixture() {
    let setup = setup();
    let semla = semla(&setup, SemlaSettings::default());
    let samples: Vec<Sample> = (0..3).map(|d| sample(&setup, d, 1)).collect();
    let refs: Vec<&Sample> = samples.iter().collect();
    let request = Request {
        retrieval: Some(RetrievalParams {
            top_k: 2,
            temperature: 0.2,
            ..RetrievalParams::default()
        }),
        ..Request::semla()
    };
    let batch = semla.segment_samples(&refs, &request).unwrap();
    assert_eq!(batch.len(), 3);
    let mut distinct = std::collections::BTreeSet::new();
    for (s, in_batch) in samples.iter().zip(&batch) {
        let alone = semla
            .segment_samples(&[s], &request)
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(in_batch.adapters, alone.adapters);
        assert_eq!(in_batch.labels, alone.labels);
        assert_eq!(in_batch.timings.images, 3);
        distinct.insert(format!("{:?}", in_batch.adapters));
    }
    assert!(distinct.len() > 1, "the three styles share one mixture");
}

#[test]
fn static_modes_and_leave_one_out() {
    let setup = setup();
    let semla = semla(&setup, SemlaSettings::default());
    let s = sample(&setup, 2, 0);
    let images = setup
        .model
        .normalization()
        .batch(&[&s], &Device::Cpu)
        .unwrap();
    let zero = semla
        .segment_samples(&[&s], &Request::mode(Mode::ZeroShot))
        .unwrap()
        .pop()
        .unwrap();
    assert!(zero.adapters.is_empty());
    let base = setup.model.forward(&images, &Adaptation::none()).unwrap();
    assert_eq!(zero.labels, argmax_maps(&base).unwrap().pop().unwrap());

    let uniform = semla
        .segment_samples(
            &[&s],
            &Request {
                exclude: vec!["fog".into()],
                ..Request::mode(Mode::Uniform)
            },
        )
        .unwrap()
        .pop()
        .unwrap();
    let names: Vec<&str> = uniform.adapters.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["clear", "night"]);
    assert!(uniform.adapters.iter().all(|a| a.weight == 0.5));

    let retrieved = semla
        .segment_samples(
            &[&s],
            &Request {
                exclude: vec!["fog".into()],
                ..Request::semla()
            },
        )
        .unwrap()
        .pop()
        .unwrap();
    assert!(retrieved.adapters.iter().all(|a| a.name != "fog"));
    let err = semla
        .segment_samples(
            &[&s],
            &Request::mode(Mode::Adapters(vec![AdapterChoice::weighted("snow", 1.0)])),
        )
        .unwrap_err();
    assert!(err.to_string().contains("snow"), "{err}");
}

#[test]
fn combination_type_linear_and_svd_are_honoured() {
    let setup = setup();
    let library = AdapterLibrary::open(&setup.library).unwrap();
    let device = Device::Cpu;
    let s = sample(&setup, 0, 2);
    let images = setup.model.normalization().batch(&[&s], &device).unwrap();
    let mixture = vec![
        AdapterChoice::weighted("night", 0.7),
        AdapterChoice::weighted("fog", 0.3),
    ];
    let adapters = [library.load("night").unwrap(), library.load("fog").unwrap()];
    let refs: Vec<&Adapter> = adapters.iter().collect();
    let probabilities = |combination: Combination| {
        let semla = semla(
            &setup,
            SemlaSettings {
                combination,
                ..SemlaSettings::default()
            },
        );
        let p = semla
            .segment_samples(
                &[&s],
                &Request {
                    probabilities: true,
                    ..Request::mode(Mode::Adapters(mixture.clone()))
                },
            )
            .unwrap()
            .pop()
            .unwrap();
        Tensor::from_vec(p.probabilities.unwrap(), (1, 10, 24, 32), &device).unwrap()
    };
    let cat = probabilities(Combination::Cat);
    for combination in [Combination::Linear, Combination::Svd] {
        // By hand: PEFT's merge of the two adapters, then the merged adapter alone.
        let merged = semla_adapters::merge(&refs, &[0.7, 0.3], combination, None).unwrap();
        let want = candle_nn::ops::softmax(&logits_with(setup.model.as_ref(), &images, &merged), 1)
            .unwrap();
        let got = probabilities(combination);
        assert!(max_abs_diff(&got, &want) < 1e-5, "{combination}");
        assert!(
            max_abs_diff(&got, &cat) > 1e-4,
            "{combination} gave the same result as cat: the setting was ignored"
        );
    }
    // Late fusion runs each adapter alone: the weighted average of their softmax.
    let semla = semla(&setup, SemlaSettings::default());
    let late = semla
        .segment_samples(
            &[&s],
            &Request {
                fusion: Some(Fusion::Outputs),
                probabilities: true,
                ..Request::mode(Mode::Adapters(mixture.clone()))
            },
        )
        .unwrap()
        .pop()
        .unwrap();
    let late = Tensor::from_vec(late.probabilities.unwrap(), (1, 10, 24, 32), &device).unwrap();
    let softmax =
        |a: &Adapter| candle_nn::ops::softmax(&logits_with(setup.model.as_ref(), &images, a), 1);
    let want = ((softmax(&adapters[0]).unwrap() * 0.7).unwrap()
        + (softmax(&adapters[1]).unwrap() * 0.3).unwrap())
    .unwrap();
    assert!(max_abs_diff(&late, &want) < 1e-6);
}

#[test]
fn a_library_refuses_an_embedder_it_was_not_made_by() {
    let setup = setup();
    let library = SourceLibrary::open(&setup.library, &names(), true).unwrap();
    let half = SegmenterEmbedder::backbone(setup.model.clone(), 2).unwrap();
    assert_ne!(
        half.id(),
        SegmenterEmbedder::backbone(setup.model.clone(), 1)
            .unwrap()
            .id()
    );
    let err = Semla::new(
        setup.model.clone(),
        library,
        Some(Box::new(half)),
        SemlaSettings::default(),
        &Device::Cpu,
    )
    .err()
    .expect("a downscaled backbone is another embedder");
    assert!(err.to_string().contains("embedder"), "{err}");
    // Without an embedder, the static modes still work and SemLA says what is missing.
    let library = SourceLibrary::open(&setup.library, &names(), false).unwrap();
    let plain = Semla::new(
        setup.model.clone(),
        library,
        None,
        SemlaSettings::default(),
        &Device::Cpu,
    )
    .unwrap();
    let s = sample(&setup, 0, 0);
    assert!(
        plain
            .segment_samples(&[&s], &Request::mode(Mode::Uniform))
            .is_ok()
    );
    let err = plain.segment_samples(&[&s], &Request::semla()).unwrap_err();
    assert!(err.to_string().contains("embedder"), "{err}");
}

#[test]
fn photos_of_a_batch_are_segmented_as_alone_and_one_size_is_required() {
    let setup = setup();
    let semla = semla(&setup, SemlaSettings::default());
    let photos: Vec<_> = (0..3)
        .map(|d| sample(&setup, d, 2).to_photo().unwrap())
        .collect();
    let refs: Vec<_> = photos.iter().collect();
    let request = Request::semla();
    let batch = semla.segment_photos(&refs, &request).unwrap();
    for (photo, in_batch) in photos.iter().zip(&batch) {
        let alone = semla.segment(photo, &request).unwrap();
        assert_eq!(in_batch.adapters, alone.adapters);
        assert_eq!(in_batch.labels, alone.labels);
        assert_eq!(in_batch.timings.images, 3);
    }
    let small = semla_data::RgbImage::new(16, 12);
    let err = semla
        .segment_photos(&[&photos[0], &small], &request)
        .unwrap_err()
        .to_string();
    assert!(err.contains("one size") && err.contains("16x12"), "{err}");
    assert!(semla.segment_photos(&[], &request).unwrap().is_empty());
}

#[test]
fn adapters_in_memory_are_the_library_mixture() {
    let setup = setup();
    let semla = semla(&setup, SemlaSettings::default());
    let s = sample(&setup, 2, 0);
    let library = SourceLibrary::open(&setup.library, &names(), false).unwrap();
    let (fog, night) = (
        library.adapter("fog").unwrap(),
        library.adapter("night").unwrap(),
    );
    let mixture = vec![
        AdapterChoice::weighted("fog", 0.7),
        AdapterChoice::weighted("night", 0.3),
    ];
    let from_library = semla
        .segment_samples(&[&s], &Request::mode(Mode::Adapters(mixture.clone())))
        .unwrap()
        .pop()
        .unwrap();
    let in_memory = semla_pipeline::semla::segment_with_adapters(
        setup.model.as_ref(),
        &[&s],
        &[fog, night],
        &[0.7, 0.3],
        true,
        &Device::Cpu,
    )
    .unwrap()
    .pop()
    .unwrap();
    assert_eq!(in_memory.labels, from_library.labels);
    assert_eq!(in_memory.adapters, mixture);
    let probabilities = in_memory.probabilities.unwrap();
    let pixels = s.height * s.width;
    assert_eq!(
        probabilities.len(),
        semla_data::synthetic::NUM_CLASSES * pixels
    );
    let total: f32 = (0..semla_data::synthetic::NUM_CLASSES)
        .map(|c| probabilities[c * pixels])
        .sum();
    assert!((total - 1.0).abs() < 1e-5, "{total}");
    // No adapter: the base model; a weight count that does not match: an error.
    let base = semla_pipeline::semla::segment_with_adapters(
        setup.model.as_ref(),
        &[&s],
        &[],
        &[],
        false,
        &Device::Cpu,
    )
    .unwrap()
    .pop()
    .unwrap();
    let zero = semla
        .segment_samples(&[&s], &Request::mode(Mode::ZeroShot))
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(base.labels, zero.labels);
    assert!(
        semla_pipeline::semla::segment_with_adapters(
            setup.model.as_ref(),
            &[&s],
            &[fog],
            &[0.5, 0.5],
            false,
            &Device::Cpu,
        )
        .is_err()
    );
}
