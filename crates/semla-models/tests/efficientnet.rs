//! EfficientNet-Lite0 against the PyTorch reference (fixture from
//! `tools/reference/efficientnet_reference.py`), and the segmenters' adapter
//! sites, gradients and model folders.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use semla_adapters::{Adaptation, FactoredSite, SiteKind};
use semla_models::efficientnet::{self, EfficientLiteSeg, EfficientLiteSegConfig};
use semla_models::tiny::{TinySeg, TinySegConfig};
use semla_models::{Segmenter, load_segmenter, save_segmenter};
use semla_test_support::{max_abs, max_abs_diff};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/efficientnet");

fn weights() -> Option<PathBuf> {
    semla_test_support::shared::path("weights/efficientnet-lite0-57934424.pth")
}

/// max |a - b| / max |b|
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let diff = max_abs_diff(a, b);
    let scale = max_abs(b);
    diff / scale.max(1e-12)
}

#[test]
fn features_and_logits_match_pytorch_reference() {
    let Some(weights) = weights() else { return };
    let dev = Device::Cpu;
    let reference =
        candle_core::safetensors::load(Path::new(FIXTURES).join("reference.safetensors"), &dev)
            .unwrap();
    let model = efficientnet::load_classifier_pth(&weights, &dev).unwrap();
    let input = &reference["input"];
    let feats = model.features(input, &Adaptation::none(), true).unwrap();

    let stem4 = feats.stem.narrow(1, 0, 4).unwrap();
    let checks = [
        ("stem_first4", stem4),
        ("stage2", feats.blocks[4].clone()),
        ("stage4", feats.blocks[10].clone()),
        ("head", feats.head.clone()),
        ("logits", model.classify(input).unwrap()),
    ];
    for (name, ours) in checks {
        let err = rel_err(&ours, &reference[name]);
        eprintln!("{name}: relative error {err:.2e}");
        assert!(err < 1e-4, "{name}: relative error {err}");
    }
}

#[test]
fn classifier_recognises_sample_photos_when_available() {
    // scikit-image's sample photos are not committed; point
    // SEMLA_SAMPLE_PHOTOS at a folder holding chelsea.png and coffee.png.
    let Some(weights) = weights() else { return };
    let Ok(dir) = std::env::var("SEMLA_SAMPLE_PHOTOS") else {
        eprintln!(
            "skipping: set SEMLA_SAMPLE_PHOTOS to scikit-image's data folder to run this test"
        );
        return;
    };
    let dev = Device::Cpu;
    let model = efficientnet::load_classifier_pth(&weights, &dev).unwrap();
    for (photo, class) in [("chelsea.png", 285), ("coffee.png", 967)] {
        let path = Path::new(&dir).join(photo);
        if !path.is_file() {
            eprintln!("skipping {photo}: not in {dir}");
            continue;
        }
        let input = efficientnet::load_classifier_image(&path, 224, &dev).unwrap();
        let logits = model.classify(&input).unwrap();
        let top = logits
            .squeeze(0)
            .unwrap()
            .argmax(0)
            .unwrap()
            .to_scalar::<u32>()
            .unwrap();
        assert_eq!(top as usize, class, "{photo}");
    }
}

#[test]
fn imagenet_class_names_are_complete() {
    let names = efficientnet::imagenet_classes();
    assert_eq!(names.len(), 1000);
    assert_eq!(names[285], "Egyptian cat");
    assert_eq!(names[967], "espresso");
}

/// A random image batch `[n, 3, h, w]`.
fn images(n: usize, h: usize, w: usize) -> Tensor {
    Tensor::randn(0f32, 1f32, (n, 3, h, w), &Device::Cpu).unwrap()
}

/// A model built over a fresh VarMap (random weights), then frozen into plain tensors.
fn frozen_from_varmap<M>(build: impl Fn(&VarBuilder) -> M) -> M {
    let map = VarMap::new();
    build(&VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu));
    let tensors = map
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    build(&VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu))
}

/// LoRA at `path` through the factored path equals the merged weights.
fn assert_factored_equals_merged(model: &(impl Segmenter + Clone), path: &str, x: &Tensor) {
    let info = model.sites().into_iter().find(|s| s.path == path).unwrap();
    let SiteKind::Conv2d(g) = info.kind else {
        panic!("{path} is not a conv site")
    };
    let (r1, r2) = (4, 2);
    let k = g.kernel_size;
    let a1 = Tensor::randn(0f32, 0.3, (r1, info.in_features, k, k), &Device::Cpu).unwrap();
    let b1 = Tensor::randn(0f32, 0.3, (info.out_features, r1, 1, 1), &Device::Cpu).unwrap();
    let a2 = Tensor::randn(0f32, 0.3, (r2, info.in_features, k, k), &Device::Cpu).unwrap();
    let b2 = Tensor::randn(0f32, 0.3, (info.out_features, r2, 1, 1), &Device::Cpu).unwrap();
    let site = FactoredSite::stack(&[(&a1, &b1, 2.0), (&a2, &b2, 0.5)], &[vec![0.7, 0.3]]).unwrap();
    let mut adaptation = Adaptation::none();
    adaptation.insert(path, site.clone());

    let factored = model.forward(x, &adaptation).unwrap();
    let base = model.forward(x, &Adaptation::none()).unwrap();
    let mut merged_model = model.clone();
    merged_model
        .merge_delta(path, &site.delta_weight(0).unwrap())
        .unwrap();
    let merged = merged_model.forward(x, &Adaptation::none()).unwrap();
    let err = rel_err(&factored, &merged);
    assert!(
        err < 1e-5,
        "{path}: factored vs merged relative error {err}"
    );
    // and the adapter really changes the output
    assert!(
        rel_err(&base, &merged) > 1e-3,
        "{path}: adapter had no effect"
    );
}

#[test]
fn efficientnet_lora_factored_equals_merged() {
    let cfg = EfficientLiteSegConfig::new(5);
    let model = frozen_from_varmap(|vb| EfficientLiteSeg::new(vb, &cfg).unwrap());
    let x = images(1, 64, 48);
    assert_eq!(
        model.forward(&x, &Adaptation::none()).unwrap().dims(),
        &[1, 5, 64, 48]
    );
    assert_eq!(model.embed(&x).unwrap().dims(), &[1, 1280]);
    // Mean and std of the stem's 32 channels and block 2's 24.
    let style = model.embed_style(&x).unwrap();
    assert_eq!(style.dims(), &[1, 112]);
    let deviations = style.narrow(1, 32, 32).unwrap().min_all().unwrap();
    assert!(deviations.to_scalar::<f32>().unwrap() > 0.0);
    for path in [
        "_blocks.3._project_conv",
        "_blocks.7._expand_conv",
        "decoder.cbr",
    ] {
        assert_factored_equals_merged(&model, path, &x);
    }
}

#[test]
fn tiny_lora_factored_equals_merged() {
    let cfg = TinySegConfig::new(4);
    let model = frozen_from_varmap(|vb| TinySeg::new(vb, &cfg).unwrap());
    let x = images(2, 48, 64);
    for path in ["head", "classifier", "skip"] {
        assert_factored_equals_merged(&model, path, &x);
    }
}

#[test]
fn efficientnet_sites_are_every_pointwise_conv() {
    let cfg = EfficientLiteSegConfig::new(3);
    let model = frozen_from_varmap(|vb| EfficientLiteSeg::new(vb, &cfg).unwrap());
    let sites = model.sites();
    // 15 expand + 16 project + head + 4 decoder convs
    assert_eq!(sites.len(), 15 + 16 + 1 + 4);
    assert_eq!(sites[0].path, "_blocks.0._project_conv");
    assert!(
        sites
            .iter()
            .all(|s| matches!(s.kind, SiteKind::Conv2d(g) if g.kernel_size == 1))
    );
    assert!(
        sites
            .iter()
            .any(|s| s.path == "_conv_head" && s.in_features == 320 && s.out_features == 1280)
    );
}

/// Every variable of a model built over a VarMap gets a non-zero gradient.
fn assert_all_vars_get_gradients<M: Segmenter>(build: impl Fn(&VarBuilder) -> M, x: &Tensor) {
    let map = VarMap::new();
    let model = build(&VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu));
    let logits = model.forward(x, &Adaptation::none()).unwrap();
    let probe = Tensor::randn(0f32, 1f32, logits.dims(), &Device::Cpu).unwrap();
    let grads = (logits * probe)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let data = map.data().lock().unwrap();
    assert!(!data.is_empty());
    for (name, var) in data.iter() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let norm = g
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "{name}: zero gradient");
    }
}

#[test]
fn tiny_every_variable_gets_a_gradient() {
    let cfg = TinySegConfig::new(3);
    assert_all_vars_get_gradients(|vb| TinySeg::new(vb, &cfg).unwrap(), &images(2, 32, 40));
}

#[test]
fn efficientnet_every_variable_gets_a_gradient() {
    let cfg = EfficientLiteSegConfig::new(3);
    assert_all_vars_get_gradients(
        |vb| EfficientLiteSeg::new(vb, &cfg).unwrap(),
        &images(1, 64, 64),
    );
}

#[test]
fn pretrained_varmap_builds_segmenter_with_pretrained_backbone() {
    let Some(weights) = weights() else { return };
    let dev = Device::Cpu;
    let map = efficientnet::pretrained_varmap(&weights, &dev).unwrap();
    let backbone_vars = map.all_vars().len();
    let cfg = EfficientLiteSegConfig::new(11);
    let seg =
        EfficientLiteSeg::new(&VarBuilder::from_varmap(&map, DType::F32, &dev), &cfg).unwrap();
    assert_eq!(
        map.all_vars().len(),
        backbone_vars + 8,
        "the decoder adds 4 weights + 4 biases"
    );
    // the segmenter's embedding is the classifier's pooled head feature
    let reference =
        candle_core::safetensors::load(Path::new(FIXTURES).join("reference.safetensors"), &dev)
            .unwrap();
    let emb = seg.embed(&reference["input"]).unwrap();
    let expected = reference["head"].mean(3).unwrap().mean(2).unwrap();
    assert!(rel_err(&emb, &expected) < 1e-4);
}

#[test]
fn model_folder_round_trip_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let x = images(1, 32, 48);
    for (sub, model) in [
        (
            "tiny",
            Box::new(frozen_from_varmap(|vb| {
                TinySeg::new(vb, &TinySegConfig::new(4)).unwrap()
            })) as Box<dyn Segmenter>,
        ),
        (
            "eff",
            Box::new(frozen_from_varmap(|vb| {
                EfficientLiteSeg::new(vb, &EfficientLiteSegConfig::new(4)).unwrap()
            })),
        ),
    ] {
        let path = dir.path().join(sub);
        save_segmenter(model.as_ref(), &path).unwrap();
        let loaded = load_segmenter(&path, &Device::Cpu).unwrap();
        assert_eq!(loaded.config(), model.config());
        let a = model.forward(&x, &Adaptation::none()).unwrap();
        let b = loaded.forward(&x, &Adaptation::none()).unwrap();
        assert_eq!(rel_err(&a, &b), 0.0);
    }
    // a config of an unknown kind names the file
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(
        bad.join("config.json"),
        r#"{"kind": "resnet", "num_classes": 3}"#,
    )
    .unwrap();
    let err = load_segmenter(&bad, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("resnet"),
        "{err}"
    );
    // weights that do not fit the config (tiny saved, more classes claimed)
    std::fs::copy(
        dir.path().join("tiny/model.safetensors"),
        bad.join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        bad.join("config.json"),
        r#"{"kind": "tiny", "num_classes": 7}"#,
    )
    .unwrap();
    let err = load_segmenter(&bad, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    // a truncated weights file
    std::fs::write(bad.join("model.safetensors"), b"\x10\x00\x00").unwrap();
    let err = load_segmenter(&bad, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn trainable_backbone_vars_are_vars() {
    // Built over a VarMap, the model's tensors are the map's variables (so an
    // optimiser over the map trains the model).
    let map = VarMap::new();
    let cfg = TinySegConfig::new(2);
    let model = TinySeg::new(
        &VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu),
        &cfg,
    )
    .unwrap();
    let names: Vec<String> = model.named_tensors().into_iter().map(|(k, _)| k).collect();
    let data = map.data().lock().unwrap();
    assert_eq!(names.len(), data.len());
    for n in &names {
        let v: &Var = data.get(n).unwrap();
        let t = model
            .named_tensors()
            .into_iter()
            .find(|(k, _)| k == n)
            .unwrap()
            .1;
        assert_eq!(t.id(), v.as_tensor().id(), "{n}");
    }
}

#[test]
fn tiny_segmenter_learns_a_colour_rule_in_a_few_steps() {
    use candle_nn::Optimizer;
    // Target: class 1 where the (normalised) red channel is above the green
    // one, on smooth images (upsampled noise) so the rule is visible at the
    // model's 1/4 output resolution.
    let dev = Device::Cpu;
    let x = semla_models::lraspp::resize_bilinear(&images(2, 6, 8), 48, 64).unwrap();
    let red = x.narrow(1, 0, 1).unwrap();
    let green = x.narrow(1, 1, 1).unwrap();
    let target = red
        .gt(&green)
        .unwrap()
        .squeeze(1)
        .unwrap()
        .to_dtype(DType::U32)
        .unwrap(); // [N, H, W]
    let map = VarMap::new();
    let model = TinySeg::new(
        &VarBuilder::from_varmap(&map, DType::F32, &dev),
        &TinySegConfig::new(2),
    )
    .unwrap();
    let mut opt = candle_nn::AdamW::new(
        map.all_vars(),
        candle_nn::ParamsAdamW {
            lr: 5e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let loss_of = |model: &TinySeg| {
        let logits = model.forward(&x, &Adaptation::none()).unwrap(); // [N, 2, H, W]
        let flat = logits
            .permute((0, 2, 3, 1))
            .unwrap()
            .reshape(((), 2))
            .unwrap();
        candle_nn::loss::cross_entropy(&flat, &target.flatten_all().unwrap()).unwrap()
    };
    let first = loss_of(&model).to_scalar::<f32>().unwrap();
    for _ in 0..40 {
        let loss = loss_of(&model);
        opt.backward_step(&loss).unwrap();
    }
    let last = loss_of(&model).to_scalar::<f32>().unwrap();
    assert!(last < 0.5 * first, "loss {first} -> {last}");
}
