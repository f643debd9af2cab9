//! SoMA: initial factors against torch's SVD, step-0 equivalence with the base
//! model, the rank-2r storage against PEFT, bake, extract, weight-decay
//! annealing and resume.
//!
//! Fixtures: `tests/fixtures/soma/soma_reference.safetensors`, written by
//! `tools/reference/soma_reference.py`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use semla_adapters::{Adaptation, Adapter, peft};
use semla_models::{load_segmenter, save_segmenter};
use semla_test_support::{max_abs, max_abs_diff};
use semla_train::augment::AugmentConfig;
use semla_train::lora::LoraSettings;
use semla_train::soma::{
    SomaSettings, SomaTrainee, WeightDecayAnneal, bake, extract, minor_components, storage_config,
    storage_site, train_soma,
};
use semla_train::trainer::{Session, TrainConfig};

fn fixture() -> HashMap<String, Tensor> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/soma/soma_reference.safetensors");
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap()
}

/// `s B A` with the factors flattened to matrices, reshaped like `weight`.
fn scaled_product(a: &Tensor, b: &Tensor, s: f64, weight: &Tensor) -> Tensor {
    let r = a.dim(0).unwrap();
    let out = b.dim(0).unwrap();
    let a2 = a.reshape((r, ())).unwrap();
    let b2 = b.reshape((out, r)).unwrap();
    (b2.matmul(&a2).unwrap() * s)
        .unwrap()
        .reshape(weight.dims())
        .unwrap()
}

#[test]
fn initial_factors_match_torch_svd() {
    let fx = fixture();
    // (case, r, alpha): the table of `svd_cases` in the reference script.
    for (case, r, alpha) in [
        ("linear_tall", 2, 2.0),
        ("linear_wide", 3, 6.0),
        ("conv1x1", 2, 4.0),
        ("conv3x3", 2, 1.0),
    ] {
        let s = alpha / r as f64;
        let w = &fx[&format!("{case}.weight")];
        let parts = minor_components(w, r, s).unwrap();
        let sigma: Vec<f32> = fx[&format!("{case}.sigma")].to_vec1().unwrap();
        assert_eq!(parts.singular_values.len(), sigma.len(), "{case}");
        for (got, want) in parts.singular_values.iter().zip(&sigma) {
            assert!(
                (*got as f32 - want).abs() < 1e-5,
                "{case}: sigma {got} vs {want}"
            );
        }
        let a0 = &fx[&format!("{case}.a0")];
        let b0 = &fx[&format!("{case}.b0")];
        assert_eq!(parts.a0.dims(), a0.dims(), "{case}");
        assert_eq!(parts.b0.dims(), b0.dims(), "{case}");
        // Each component is defined up to a sign: compare magnitudes, and the
        // sign-invariant product and residual.
        assert!(
            max_abs_diff(&parts.a0.abs().unwrap(), &a0.abs().unwrap()) < 1e-5,
            "{case} |A0|"
        );
        assert!(
            max_abs_diff(&parts.b0.abs().unwrap(), &b0.abs().unwrap()) < 1e-5,
            "{case} |B0|"
        );
        let sb0a0 = scaled_product(&parts.a0, &parts.b0, s, w);
        assert!(
            max_abs_diff(&sb0a0, &fx[&format!("{case}.sb0a0")]) < 1e-5,
            "{case} sB0A0"
        );
        assert!(
            max_abs_diff(&parts.residual, &fx[&format!("{case}.residual")]) < 1e-5,
            "{case} residual"
        );
        // Residual + minor part = W, and the minor part is not trivially zero.
        let rebuilt = (&parts.residual + &sb0a0).unwrap();
        assert!(max_abs_diff(&rebuilt, w) < 1e-5, "{case}");
        assert!(max_abs(&sb0a0) > 1e-3, "{case}: minor part is empty");
    }
}

#[test]
fn rank_2r_storage_matches_the_peft_merge() {
    let fx = fixture();
    let (r, alpha) = (2usize, 3.0f64);
    let s = alpha / r as f64;
    let dir = tempfile::tempdir().unwrap();
    let mut sites = std::collections::BTreeMap::new();
    for name in ["head", "classifier", "conv3", "proj"] {
        let w = &fx[&format!("peft.{name}.weight")];
        let parts = minor_components(w, r, s).unwrap();
        let a = &fx[&format!("peft.{name}.a")];
        let b = &fx[&format!("peft.{name}.b")];
        sites.insert(
            name.to_string(),
            storage_site(a, b, &parts.a0, &parts.b0).unwrap(),
        );
    }
    let config = storage_config(r, s, sites.keys().cloned().collect());
    assert_eq!(config.r, 4);
    assert_eq!(config.lora_alpha, 6.0);
    let adapter = Adapter {
        name: "soma".into(),
        config,
        sites,
    };
    peft::save_adapter(dir.path(), &adapter).unwrap();
    let loaded = peft::load_adapter(dir.path()).unwrap();
    for name in ["head", "classifier", "conv3", "proj"] {
        assert!((loaded.scale_for(name) - s).abs() < 1e-12);
        let w = &fx[&format!("peft.{name}.weight")];
        let delta = loaded.sites[name]
            .delta_weight(loaded.scale_for(name))
            .unwrap();
        let merged = (w + delta).unwrap();
        let err = max_abs_diff(&merged, &fx[&format!("peft.{name}.merged")]);
        assert!(err < 1e-5, "{name}: {err}");
    }
}

fn soma_settings(rank: usize, alpha: f64, freeze_blocks: usize) -> SomaSettings {
    SomaSettings {
        lora: LoraSettings {
            rank,
            alpha,
            ..Default::default()
        },
        freeze_blocks,
    }
}

fn images(seed: u64) -> Tensor {
    let source = common::toy_task(2, 32, seed, [0.0, 0.0, 0.0]);
    let mut data = Vec::new();
    for i in 0..2 {
        data.extend(semla_data::SampleSource::sample(&source, i).unwrap().image);
    }
    Tensor::from_vec(data, (2, 3, 32, 32), &Device::Cpu).unwrap()
}

#[test]
fn step_zero_equals_the_base_model() {
    let (trained, _varmap) = common::trainable_tiny(8, 5);
    let base = common::frozen_copy(trained.as_ref());
    let soma = SomaTrainee::new(base.as_ref(), &soma_settings(2, 4.0, 0), 1, &Device::Cpu).unwrap();
    assert_eq!(soma.lora().sites().len(), 3);
    // The residual model really differs from the base...
    let base_w: HashMap<String, Tensor> = base.named_tensors().into_iter().collect();
    for (key, w) in soma.model().named_tensors() {
        let diff = max_abs_diff(&w, &base_w[&key]);
        let is_site = ["head.weight", "classifier.weight", "skip.weight"].contains(&key.as_str());
        assert_eq!(diff > 1e-4, is_site, "{key}: {diff}");
    }
    // ... but residual + s B0 A0 gives the base model's outputs.
    let x = images(9);
    let want = base.forward(&x, &Adaptation::none()).unwrap();
    let without = soma.model().forward(&x, &Adaptation::none()).unwrap();
    let got = soma.model().forward(&x, soma.lora().adaptation()).unwrap();
    let err = max_abs_diff(&got, &want);
    assert!(err < 1e-5, "step-0 output differs by {err}");
    assert!(max_abs_diff(&without, &want) > 1e-3);
    // The stored adapter of an untrained SoMA is a zero update.
    let adapter = soma.to_adapter("zero").unwrap();
    assert_eq!(adapter.config.r, 4);
    for (path, site) in &adapter.sites {
        let delta = site.delta_weight(adapter.scale_for(path)).unwrap();
        assert!(max_abs(&delta) < 1e-6, "{path}");
    }
}

#[test]
fn freeze_blocks_skips_the_tiny_head() {
    let (trained, _varmap) = common::trainable_tiny(8, 5);
    let base = common::frozen_copy(trained.as_ref());
    // Blocks of the tiny segmenter: stem 0, down1 1, down2 2, head 3.
    let soma = SomaTrainee::new(base.as_ref(), &soma_settings(2, 2.0, 4), 1, &Device::Cpu).unwrap();
    let mut paths: Vec<&str> = soma
        .lora()
        .sites()
        .iter()
        .map(|s| s.site.path.as_str())
        .collect();
    paths.sort();
    assert_eq!(paths, vec!["classifier", "skip"]);
    let base_head = &base
        .named_tensors()
        .into_iter()
        .find(|(k, _)| k == "head.weight")
        .unwrap()
        .1;
    let head = &soma
        .model()
        .named_tensors()
        .into_iter()
        .find(|(k, _)| k == "head.weight")
        .unwrap()
        .1;
    assert_eq!(max_abs_diff(head, base_head), 0.0);
    let soma3 =
        SomaTrainee::new(base.as_ref(), &soma_settings(2, 2.0, 3), 1, &Device::Cpu).unwrap();
    assert_eq!(soma3.lora().sites().len(), 3);
}

fn short_run(steps: usize) -> TrainConfig {
    let mut config = TrainConfig::new(steps, 2, 2e-2);
    config.warmup_steps = 0;
    config.augment = AugmentConfig {
        crop: Some((32, 32)),
        ..AugmentConfig::default()
    };
    config.seed = 11;
    config
}

#[test]
fn stored_adapter_and_bake_reproduce_the_trained_model() {
    let (trained, _varmap) = common::trainable_tiny(8, 5);
    let base = common::frozen_copy(trained.as_ref());
    let source = common::toy_task(8, 32, 4, [0.2, -0.1, 0.1]);
    let soma = SomaTrainee::new(base.as_ref(), &soma_settings(2, 4.0, 0), 1, &Device::Cpu).unwrap();
    let init_a = soma.lora().sites()[0].a.as_tensor().copy().unwrap();
    train_soma(
        &soma,
        &Device::Cpu,
        &source,
        &short_run(4),
        Some(WeightDecayAnneal::soma(4)),
        &Session::default(),
        &mut |_| {},
    )
    .unwrap();
    assert!(max_abs_diff(soma.lora().sites()[0].a.as_tensor(), &init_a) > 1e-4);

    let x = images(21);
    let want = soma.model().forward(&x, soma.lora().adaptation()).unwrap();
    // Not trivially the base model.
    let base_out = base.forward(&x, &Adaptation::none()).unwrap();
    assert!(max_abs_diff(&want, &base_out) > 1e-3);

    // Rank-2r adapter through a PEFT folder, applied factored to the original base.
    let dir = tempfile::tempdir().unwrap();
    let adapter_dir = dir.path().join("soma");
    peft::save_adapter(&adapter_dir, &soma.to_adapter("soma").unwrap()).unwrap();
    let adapter = peft::load_adapter(&adapter_dir).unwrap();
    let adaptation = Adaptation::from_adapters(&[&adapter], &[vec![1.0]]).unwrap();
    let got = base.forward(&x, &adaptation).unwrap();
    let err = max_abs_diff(&got, &want);
    assert!(
        err < 1e-5,
        "stored adapter on the original base differs by {err}"
    );

    // Bake, write a model folder, read it back: equal to the run-time application.
    let mut baked = common::frozen_copy(base.as_ref());
    bake(baked.as_mut(), &adapter).unwrap();
    let model_dir = dir.path().join("baked");
    save_segmenter(baked.as_ref(), &model_dir).unwrap();
    let reloaded = load_segmenter(&model_dir, &Device::Cpu).unwrap();
    let baked_out = reloaded.forward(&x, &Adaptation::none()).unwrap();
    let err = max_abs_diff(&baked_out, &got);
    assert!(
        err < 1e-5,
        "baked model differs from the run-time adapter by {err}"
    );
}

#[test]
fn annealed_decay_is_applied_after_each_step() {
    let (trained, _varmap) = common::trainable_tiny(8, 5);
    let base = common::frozen_copy(trained.as_ref());
    let source = common::toy_task(8, 32, 4, [0.2, -0.1, 0.1]);
    let config = short_run(1);
    let run = |decay: Option<WeightDecayAnneal>| {
        let soma =
            SomaTrainee::new(base.as_ref(), &soma_settings(2, 4.0, 0), 1, &Device::Cpu).unwrap();
        let mut plain = config.clone();
        plain.optimizer.weight_decay = 0.0;
        train_soma(
            &soma,
            &Device::Cpu,
            &source,
            &plain,
            decay,
            &Session::default(),
            &mut |_| {},
        )
        .unwrap();
        soma.lora().factors()
    };
    let decay = WeightDecayAnneal {
        start: 0.5,
        end: 0.0,
        total_steps: 1,
    };
    let without = run(None);
    let with = run(Some(decay));
    // One step at lr 2e-2 with lambda(0) = 0.5: every factor scaled by 0.99.
    for ((path, a0, b0), (_, a1, b1)) in without.iter().zip(&with) {
        let want_a = (a0 * 0.99).unwrap();
        let want_b = (b0 * 0.99).unwrap();
        assert!(max_abs_diff(a1, &want_a) < 1e-7, "{path}");
        assert!(max_abs_diff(b1, &want_b) < 1e-7, "{path}");
        assert!(max_abs_diff(a1, a0) > 1e-6, "{path}");
    }
}

#[test]
fn resumed_annealed_run_matches_an_uninterrupted_one() {
    let (trained, _varmap) = common::trainable_tiny(8, 5);
    let base = common::frozen_copy(trained.as_ref());
    let source = common::toy_task(8, 32, 4, [0.2, -0.1, 0.1]);
    let mut config = short_run(4);
    config.checkpoint_every = Some(2);
    let decay = Some(WeightDecayAnneal::soma(4));
    let fresh = || SomaTrainee::new(base.as_ref(), &soma_settings(2, 4.0, 0), 1, &Device::Cpu);

    let straight = fresh().unwrap();
    train_soma(
        &straight,
        &Device::Cpu,
        &source,
        &config,
        decay,
        &Session::default(),
        &mut |_| {},
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let first = fresh().unwrap();
    let session = Session {
        checkpoint_dir: Some(dir.path()),
        resume: true,
        stop_at: Some(2),
    };
    train_soma(
        &first,
        &Device::Cpu,
        &source,
        &config,
        decay,
        &session,
        &mut |_| {},
    )
    .unwrap();
    let second = fresh().unwrap();
    let session = Session {
        stop_at: None,
        ..session
    };
    let summary = train_soma(
        &second,
        &Device::Cpu,
        &source,
        &config,
        decay,
        &session,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(summary.start_step, 2);
    for ((path, a0, b0), (_, a1, b1)) in straight
        .lora()
        .factors()
        .iter()
        .zip(second.lora().factors().iter())
    {
        assert!(max_abs_diff(a0, a1) < 1e-7, "{path}");
        assert!(max_abs_diff(b0, b1) < 1e-7, "{path}");
    }
}

#[test]
fn extract_recovers_a_known_low_rank_delta() {
    let (trained, _varmap) = common::trainable_tiny(8, 5);
    let base = common::frozen_copy(trained.as_ref());
    let mut tuned = common::frozen_copy(base.as_ref());
    // Rank-2 deltas at `head` ([32, 32, 1, 1]) and `skip` ([4, 16, 1, 1]); `classifier` unchanged.
    let mut known = HashMap::new();
    for (path, out, inp, seed) in [("head", 32usize, 32usize, 1u64), ("skip", 4, 16, 2)] {
        let mut rng = semla_core::SplitMix64::new(seed);
        let b: Vec<f32> = (0..out * 2)
            .map(|_| rng.uniform(-0.3, 0.3) as f32)
            .collect();
        let a: Vec<f32> = (0..2 * inp)
            .map(|_| rng.uniform(-0.3, 0.3) as f32)
            .collect();
        let b = Tensor::from_vec(b, (out, 2), &Device::Cpu).unwrap();
        let a = Tensor::from_vec(a, (2, inp), &Device::Cpu).unwrap();
        let delta = b.matmul(&a).unwrap().reshape((out, inp, 1, 1)).unwrap();
        tuned.merge_delta(path, &delta).unwrap();
        known.insert(path.to_string(), delta);
    }
    let extraction = extract(base.as_ref(), tuned.as_ref(), 2, 0.0, "extracted").unwrap();
    let adapter = &extraction.adapter;
    assert_eq!(adapter.config.r, 2);
    assert_eq!(adapter.config.lora_alpha, 2.0);
    let mut paths: Vec<&String> = adapter.sites.keys().collect();
    paths.sort();
    assert_eq!(paths, vec!["head", "skip"]);
    assert!(extraction.uncaptured.is_empty());
    for (path, delta) in &known {
        let got = adapter.sites[path]
            .delta_weight(adapter.scale_for(path))
            .unwrap();
        let err = max_abs_diff(&got, delta);
        assert!(err < 1e-5, "{path}: {err}");
    }
    for site in &extraction.sites {
        assert!(
            site.residual_norm < 1e-5 * site.delta_norm.max(1.0),
            "{site:?}"
        );
    }
    // A rank-1 extraction misses the second component, and a changed non-site
    // weight is reported as not carried.
    let mut tuned2 = common::frozen_copy(tuned.as_ref());
    let mut tensors: HashMap<String, Tensor> = tuned2.named_tensors().into_iter().collect();
    let stem = (&tensors["stem.bias"] + 0.5).unwrap();
    tensors.insert("stem.bias".into(), stem);
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    tuned2 = tuned2.config().build(&vb).unwrap();
    let rank1 = extract(base.as_ref(), tuned2.as_ref(), 1, 0.0, "r1").unwrap();
    assert_eq!(rank1.uncaptured.len(), 1);
    assert_eq!(rank1.uncaptured[0].key, "stem.bias");
    assert!(rank1.sites.iter().all(|s| s.residual_norm > 1e-3));
}

#[test]
fn efficientnet_step_zero_with_frozen_blocks() {
    // Random weights (no download): EfficientNet-Lite0 + LR-ASPP, 5 classes.
    let varmap = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let config = semla_models::SegmenterConfig::EfficientLite0(
        semla_models::efficientnet::EfficientLiteSegConfig::new(5),
    );
    let trained = config.build(&vb).unwrap();
    let base = common::frozen_copy(trained.as_ref());
    // Targets in block 1 (frozen), block 2 and the decoder; the SVD of the
    // large late-block weights (seconds each) is left to the CLI run.
    let mut settings = soma_settings(4, 4.0, 2);
    settings.lora.targets = vec![
        "_blocks.1._project_conv".into(),
        "_blocks.2._project_conv".into(),
        "decoder.high_classifier".into(),
    ];
    let soma = SomaTrainee::new(base.as_ref(), &settings, 1, &Device::Cpu).unwrap();
    let mut paths: Vec<&str> = soma
        .lora()
        .sites()
        .iter()
        .map(|s| s.site.path.as_str())
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        vec!["_blocks.2._project_conv", "decoder.high_classifier"]
    );
    let x = (Tensor::randn(0f32, 1.0, (1, 3, 64, 64), &Device::Cpu).unwrap() * 0.5).unwrap();
    let want = base.forward(&x, &Adaptation::none()).unwrap();
    let got = soma.model().forward(&x, soma.lora().adaptation()).unwrap();
    let without = soma.model().forward(&x, &Adaptation::none()).unwrap();
    let scale = max_abs(&want).max(1.0);
    let err = max_abs_diff(&got, &want);
    assert!(
        err < 1e-5 * scale,
        "step-0 output differs by {err} (logit scale {scale})"
    );
    assert!(max_abs_diff(&without, &want) > 1e-4 * scale);
}
