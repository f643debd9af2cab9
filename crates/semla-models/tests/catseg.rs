//! CAT-Seg against the official code (SemLA's `catseg/` + detectron2 + peft) on
//! tiny random models: `tools/reference/catseg_reference.py` wrote the outputs in
//! `tests/fixtures/catseg/`; the weights are regenerated here from `keys_*.json`
//! with the recipe both sides share (`semla_core::rng::named_values`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use semla_adapters::Adaptation;
use semla_models::Segmenter;
use semla_models::catseg::{CatSeg, CatSegConfig, checkpoint, sliding};
use semla_test_support::max_abs_diff;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/catseg")
}

fn weights(keys: &str) -> HashMap<String, Tensor> {
    semla_test_support::tensors_from_keys(&fixtures().join(keys))
}

fn outputs(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join(name), &Device::Cpu).unwrap()
}

fn classes() -> Vec<String> {
    vec![
        "road".into(),
        "car, automobile".into(),
        "traffic light".into(),
    ]
}

fn model(variant: &str) -> CatSeg {
    let tensors = weights(&format!("keys_{variant}.json"));
    let shapes = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    let config =
        CatSegConfig::from_yaml(&fixtures().join(format!("{variant}.yaml")), &shapes).unwrap();
    let mut model = semla_models::catseg::from_tensors(tensors, &config, &Device::Cpu).unwrap();
    model.set_classes(&classes()).unwrap();
    model
}

/// The fixture photo, normalised as the model asks: `[3, 150, 200]`.
fn image(model: &CatSeg) -> Tensor {
    let rgb = semla_data::image_io::read_rgb(&fixtures().join("image.png")).unwrap();
    model
        .normalization()
        .image(&rgb, &Device::Cpu)
        .unwrap()
        .squeeze(0)
        .unwrap()
}

/// Max abs error and max error relative to the reference's largest magnitude.
fn check(name: &str, got: &Tensor, want: &Tensor, tol: f32) {
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    let err = max_abs_diff(got, want);
    let scale = semla_test_support::max_abs(want).max(1e-12);
    eprintln!(
        "{name:<22} max abs {err:.2e}  rel {:.2e}  (scale {scale:.3})",
        err / scale
    );
    assert!(err <= tol, "{name}: max abs error {err} > {tol}");
}

/// Argmax agrees wherever the reference's top two classes are apart by more than `gap`.
fn check_prediction(probs: &Tensor, want_probs: &Tensor, want: &Tensor, gap: f32) {
    let (t, h, w) = probs.dims3().unwrap();
    let p: Vec<f32> = probs.flatten_all().unwrap().to_vec1().unwrap();
    let q: Vec<f32> = want_probs.flatten_all().unwrap().to_vec1().unwrap();
    let labels: Vec<i64> = want.flatten_all().unwrap().to_vec1().unwrap();
    let (mut compared, mut wrong) = (0, 0);
    for i in 0..h * w {
        let column = |v: &[f32]| -> Vec<f32> { (0..t).map(|c| v[c * h * w + i]).collect() };
        let (ours, theirs) = (column(&p), column(&q));
        let mut sorted = theirs.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        if sorted[0] - sorted[1] <= gap {
            continue;
        }
        compared += 1;
        let argmax = (0..t).max_by(|&a, &b| ours[a].total_cmp(&ours[b])).unwrap();
        if argmax as i64 != labels[i] {
            wrong += 1;
        }
    }
    assert!(
        compared > h * w * 9 / 10,
        "only {compared} pixels are clear-cut"
    );
    assert_eq!(wrong, 0, "{wrong} of {compared} clear-cut pixels differ");
}

#[test]
fn tiny_l_matches_the_official_code_at_every_stage() {
    let model = model("tiny_l");
    let want = outputs("outputs_tiny_l.safetensors");
    let ids = model.token_ids().unwrap().to_dtype(DType::I64).unwrap();
    assert_eq!(
        ids.to_vec2::<i64>().unwrap(),
        want["token_ids"].to_vec2::<i64>().unwrap(),
        "token ids"
    );
    let text = model.text_embeddings(&Adaptation::none()).unwrap();
    check("text embeddings", &text, &want["text_embeddings"], 1e-5);

    let img = image(&model);
    let views = sliding::views(&img, 336).unwrap();
    assert_eq!(views.dims(), &[5, 3, 336, 336]);
    let text5 = text
        .unsqueeze(0)
        .unwrap()
        .broadcast_as((5, 3, 64))
        .unwrap()
        .contiguous()
        .unwrap();
    let out = model
        .forward_views(&views, &text5, &Adaptation::none())
        .unwrap();
    let global = |t: &Tensor| t.get(4).unwrap();
    check(
        "dense features",
        &global(&out.visual.features),
        &want["dense_features"],
        1e-4,
    );
    check(
        "guidance block 1",
        &global(&out.visual.guidance[0]),
        &want["guidance_0"],
        1e-4,
    );
    check(
        "guidance block 2",
        &global(&out.visual.guidance[1]),
        &want["guidance_1"],
        1e-4,
    );
    check(
        "cost volume",
        &global(&out.aggregator.cost),
        &want["cost_volume"],
        1e-5,
    );
    check(
        "logits (global)",
        &global(&out.aggregator.logits),
        &want["logits"],
        1e-4,
    );
    check(
        "logits (tile 0)",
        &out.aggregator.logits.get(0).unwrap(),
        &want["logits_tile0"],
        1e-4,
    );

    let probs = model
        .sliding_window_probabilities(&img, (150, 200), &Adaptation::none())
        .unwrap();
    check("probabilities", &probs, &want["probabilities"], 1e-4);
    check_prediction(&probs, &want["probabilities"], &want["prediction"], 1e-4);
}

#[test]
fn tiny_b_resizes_its_positions_and_matches_the_official_code() {
    let model = model("tiny_b");
    let want = outputs("outputs_tiny_b.safetensors");
    let text = model.text_embeddings(&Adaptation::none()).unwrap();
    check("text embeddings", &text, &want["text_embeddings"], 1e-5);
    let img = image(&model);
    let views = sliding::views(&img, 384).unwrap();
    let text5 = text
        .unsqueeze(0)
        .unwrap()
        .broadcast_as((5, 3, 64))
        .unwrap()
        .contiguous()
        .unwrap();
    let out = model
        .forward_views(&views, &text5, &Adaptation::none())
        .unwrap();
    check(
        "dense features",
        &out.visual.features.get(4).unwrap(),
        &want["dense_features"],
        1e-4,
    );
    check(
        "cost volume",
        &out.aggregator.cost.get(4).unwrap(),
        &want["cost_volume"],
        1e-5,
    );
    check(
        "logits (global)",
        &out.aggregator.logits.get(4).unwrap(),
        &want["logits"],
        1e-4,
    );
    let probs = model
        .sliding_window_probabilities(&img, (150, 200), &Adaptation::none())
        .unwrap();
    check("probabilities", &probs, &want["probabilities"], 1e-4);
    check_prediction(&probs, &want["probabilities"], &want["prediction"], 1e-4);
}

#[test]
fn a_peft_adapter_applies_as_the_official_peft_model() {
    let model = model("tiny_l");
    let want = outputs("outputs_tiny_l_adapter.safetensors");
    let adapter = semla_adapters::peft::load_adapter(&fixtures().join("adapter_tiny_l")).unwrap();
    adapter.check_fits(&model.sites()).unwrap();
    let adaptation = Adaptation::from_adapters(&[&adapter], &[vec![1.0]]).unwrap();
    let text = model.text_embeddings(&adaptation).unwrap();
    check("text embeddings", &text, &want["text_embeddings"], 1e-5);
    let img = image(&model);
    let probs = model
        .sliding_window_probabilities(&img, (150, 200), &adaptation)
        .unwrap();
    check("probabilities", &probs, &want["probabilities"], 1e-4);
    check_prediction(&probs, &want["probabilities"], &want["prediction"], 1e-4);
    // The official attention never runs the q/k/v LoRAs: applying them changes the result.
    let mut applied = model;
    let mut config = applied.catseg_config().clone();
    config.apply_qkv_lora = true;
    let tensors: HashMap<String, Tensor> = applied.named_tensors().into_iter().collect();
    applied = semla_models::catseg::from_tensors(tensors, &config, &Device::Cpu).unwrap();
    applied.set_classes(&classes()).unwrap();
    let other = applied
        .sliding_window_probabilities(&img, (150, 200), &adaptation)
        .unwrap();
    assert!(
        max_abs_diff(&other, &probs) > 1e-4,
        "q/k/v LoRAs had no effect when applied"
    );
}

#[test]
fn a_detectron2_checkpoint_reads_with_views_offsets_and_prefixes() {
    let got =
        checkpoint::read_tensors(&fixtures().join("checkpoint_views.pth"), &Device::Cpu).unwrap();
    let want = outputs("checkpoint_views.safetensors");
    for (name, tensor) in &want {
        let key = name.strip_prefix("module.").unwrap_or(name);
        let ours = got
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing from {:?}", got.keys()));
        assert_eq!(ours.dims(), tensor.dims(), "{key}");
        let diff = max_abs_diff(ours, &tensor.to_dtype(DType::F32).unwrap());
        assert_eq!(diff, 0.0, "{key}");
    }
    let shapes = checkpoint::read_shapes(&fixtures().join("checkpoint_views.pth")).unwrap();
    assert_eq!(shapes.len(), got.len());
}

#[test]
fn the_site_list_of_a_vit_l_model_is_the_official_214_lora_targets() {
    // Site paths depend on the block counts, not the widths: ViT-L's 24 visual and
    // 12 text blocks and 2 aggregator layers, at tiny widths.
    let clip = semla_models::catseg::CatSegClipConfig {
        vision_width: 64,
        vision_layers: 24,
        vision_heads: 1,
        patch_size: 14,
        pretrained_grid: 24,
        embed_dim: 32,
        text_width: 32,
        text_layers: 12,
        text_heads: 1,
        context_length: 77,
        vocab_size: 16,
    };
    let mut config = CatSegConfig::official("ViT-L/14@336px", clip);
    config.hidden_dim = 32;
    config.text_guidance_proj_dim = 16;
    config.appearance_guidance_proj_dim = 16;
    config.decoder_guidance_proj_dims = [16, 8];
    let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
    let model = CatSeg::new(&vb, &config).unwrap();
    let mut ours: Vec<String> = model.sites().into_iter().map(|s| s.path).collect();
    ours.sort();
    let text = std::fs::read_to_string(fixtures().join("target_modules_214.json")).unwrap();
    let mut official: Vec<String> = serde_json::from_str(&text).unwrap();
    official.sort();
    assert_eq!(official.len(), 214);
    assert_eq!(ours, official);
}

#[test]
fn per_image_mixtures_in_one_batch_equal_merging_each_mixture() {
    let mut base = model("tiny_l");
    // With the q/k/v sites live, a merged weight and a factored update mean the same.
    let mut config = base.catseg_config().clone();
    config.apply_qkv_lora = true;
    let tensors: HashMap<String, Tensor> = base.named_tensors().into_iter().collect();
    base = semla_models::catseg::from_tensors(tensors.clone(), &config, &Device::Cpu).unwrap();
    let a = semla_adapters::peft::load_adapter(&fixtures().join("adapter_tiny_l")).unwrap();
    let b = semla_adapters::Adapter::random("b", &base.sites(), 4, 7).unwrap();
    let weights = [vec![0.7, 0.3], vec![0.2, 0.8]];
    let img = image(&base);
    let flipped = img.flip(&[2]).unwrap();
    let batch = Tensor::stack(&[&img, &flipped], 0).unwrap();
    let adaptation = Adaptation::from_adapters(&[&a, &b], &weights).unwrap();
    let mixed = base.probabilities(&batch, (150, 200), &adaptation).unwrap();
    for (n, w) in weights.iter().enumerate() {
        let mut merged =
            semla_models::catseg::from_tensors(tensors.clone(), &config, &Device::Cpu).unwrap();
        merged.set_classes(&classes()).unwrap();
        for (path, delta) in semla_adapters::apply::delta_weights(&[&a, &b], w).unwrap() {
            merged.merge_delta(&path, &delta).unwrap();
        }
        let one = merged
            .probabilities(
                &batch.get(n).unwrap().unsqueeze(0).unwrap(),
                (150, 200),
                &Adaptation::none(),
            )
            .unwrap();
        check(
            &format!("image {n} mixed vs merged"),
            &mixed.get(n).unwrap(),
            &one.get(0).unwrap(),
            1e-4,
        );
    }
    // The two mixtures differ, so the check above compares different results.
    assert!(
        max_abs_diff(
            &mixed.get(0).unwrap(),
            &mixed.get(1).unwrap().flip(&[2]).unwrap()
        ) > 1e-3
    );
}
