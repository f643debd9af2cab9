//! CLIP against the fixtures of `tools/reference/clip_reference.py`
//! (transformers 4.46, PIL, PEFT and a copy of OpenAI's SimpleTokenizer).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use semla_adapters::{Adaptation, FactoredSite};
use semla_data::image_io::read_rgb as load_rgb;
use semla_models::clip::preprocess::pil_resize;
use semla_models::clip::{
    ClipModel, ClipTokenizer, DenseTokens, ImageProcessor, Kernels, Padding, Resample,
};
use semla_test_support::max_abs_diff;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip")
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(items) => items.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap() as f32],
        other => panic!("not a number array: {other}"),
    }
}

fn assert_close(name: &str, got: &Tensor, want: &Value, tol: f32) {
    let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    let want = floats(want);
    assert_eq!(got.len(), want.len(), "{name}: length");
    let max = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max <= tol, "{name}: max abs diff {max} > {tol}");
}

fn tiny() -> ClipModel {
    ClipModel::from_dir(&fixtures().join("tiny"), &Device::Cpu).unwrap()
}

fn pixels(processor: &ImageProcessor, names: &[&str]) -> Tensor {
    let items: Vec<Tensor> = names
        .iter()
        .map(|n| {
            processor
                .preprocess_file(&fixtures().join(format!("photo_{n}.png")))
                .unwrap()
        })
        .collect();
    Tensor::stack(&items, 0).unwrap()
}

#[test]
fn tokenizer_matches_openai_simple_tokenizer() {
    let tok = ClipTokenizer::new().unwrap();
    assert_eq!(tok.vocab_size(), 49_408);
    let fixture = read_json(&fixtures().join("tokenizer_ids.json"));
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    let mut hf_checked = 0;
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            tok.encode_context(text, 77, Padding::Zeros),
            want,
            "text {text:?}"
        );
        if case["hf_agrees"].as_bool().unwrap() {
            let hf: Vec<u32> = case["hf_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(
                tok.encode_context(text, 77, Padding::EndOfText),
                hf,
                "text {text:?} (HF padding)"
            );
            hf_checked += 1;
        }
    }
    assert!(hf_checked >= 20);
}

#[test]
fn tokenizer_known_ids_and_decode() {
    let tok = ClipTokenizer::new().unwrap();
    assert_eq!(
        tok.encode("a photo of a road."),
        vec![320, 1125, 539, 320, 1759, 269]
    );
    assert_eq!(
        tok.encode_context("sidewalk", 5, Padding::Zeros),
        vec![49406, 23278, 49407, 0, 0]
    );
    assert_eq!(
        tok.encode_context("sidewalk", 5, Padding::EndOfText),
        vec![49406, 23278, 49407, 49407, 49407]
    );
    // Truncation keeps the end of text as the last id.
    let long = tok.encode_context(&"road ".repeat(200), 77, Padding::Zeros);
    assert_eq!(long.len(), 77);
    assert_eq!(long[76], 49407);
    assert_eq!(
        tok.decode(&tok.encode("A Photo of   a ROAD.")),
        "a photo of a road . "
    );
    assert_eq!(tok.token_to_id("road</w>"), Some(1759));
}

#[test]
fn pil_bicubic_resize_is_bit_exact() {
    for name in ["a", "b"] {
        let src = load_rgb(&fixtures().join(format!("photo_{name}.png"))).unwrap();
        let want = load_rgb(&fixtures().join(format!("resized_{name}.png"))).unwrap();
        let (w, h) = src.dimensions();
        let (ow, oh) = want.dimensions();
        assert_eq!(
            ImageProcessor::default().resized_size(h as usize, w as usize),
            (oh as usize, ow as usize)
        );
        let got = pil_resize(
            src.as_raw(),
            h as usize,
            w as usize,
            oh as usize,
            ow as usize,
            Resample::Bicubic,
        );
        let diff = got
            .iter()
            .zip(want.as_raw())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(diff, 0, "photo_{name}: {diff} bytes differ from PIL");
    }
}

#[test]
fn preprocessing_matches_clip_image_processor() {
    let fixture = read_json(&fixtures().join("preprocess.json"));
    let processor = ImageProcessor::default();
    for name in ["a", "b"] {
        let rec = &fixture[name];
        let t = processor
            .preprocess_file(&fixtures().join(format!("photo_{name}.png")))
            .unwrap();
        assert_eq!(t.dims(), &[3, 224, 224]);
        let values: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        for (i, want) in rec["sample_index"]
            .as_array()
            .unwrap()
            .iter()
            .zip(floats(&rec["sample_value"]))
        {
            let got = values[i.as_u64().unwrap() as usize];
            assert!(
                (got - want).abs() < 1e-6,
                "photo_{name}[{i}]: {got} vs {want}"
            );
        }
        let sum: f64 = values.iter().map(|&v| v as f64).sum();
        let want_sum = rec["sum"].as_f64().unwrap();
        assert!(
            (sum - want_sum).abs() < 1e-2,
            "photo_{name}: sum {sum} vs {want_sum}"
        );
    }
}

#[test]
fn preprocessor_config_json_is_read() {
    let json: Value = serde_json::json!({
        "crop_size": {"height": 336, "width": 336},
        "do_center_crop": true, "do_normalize": true, "do_resize": true,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3, "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": 336}
    });
    let p = ImageProcessor::from_json(&json, Path::new("preprocessor_config.json")).unwrap();
    assert_eq!(p, ImageProcessor::with_size(336));
    let bad = serde_json::json!({"resample": 0});
    let err = ImageProcessor::from_json(&bad, Path::new("x/preprocessor_config.json")).unwrap_err();
    assert!(
        err.to_string().contains("x/preprocessor_config.json"),
        "{err}"
    );
}

#[test]
fn image_features_and_dense_tokens_match_transformers() {
    let model = tiny();
    let out = read_json(&fixtures().join("tiny/outputs.json"));
    let px = pixels(&ImageProcessor::default(), &["a", "b"]);
    let none = Adaptation::none();
    assert_close(
        "image_features",
        &model.get_image_features(&px, &none).unwrap(),
        &out["image_features"],
        1e-4,
    );
    let vis = model.vision_forward(&px, &none).unwrap();
    assert_eq!((vis.grid_height, vis.grid_width), (7, 7));
    assert_close(
        "pooled_output",
        &model.pooled_output(&vis).unwrap(),
        &out["pooled_output"],
        1e-4,
    );
    let first = |t: Tensor| t.get(0).unwrap();
    assert_close(
        "last_hidden_state",
        &first(vis.last_hidden_state.clone()),
        &out["last_hidden_state_a"],
        1e-4,
    );
    let dense = |kind| first(model.dense_tokens(&vis, kind, &none).unwrap());
    assert_close(
        "dense post-LN",
        &dense(DenseTokens::PostLayerNorm),
        &out["dense_post_layernorm_a"],
        1e-4,
    );
    assert_close(
        "dense projected",
        &dense(DenseTokens::Projected),
        &out["dense_projected_a"],
        1e-4,
    );
    let map = model
        .dense_feature_map(&vis, DenseTokens::LastHidden, &none)
        .unwrap();
    assert_eq!(map.dims(), &[2, 32, 7, 7]);
    // The map's (row 2, column 3) is patch token 2*7+3.
    let a = map
        .get(0)
        .unwrap()
        .narrow(1, 2, 1)
        .unwrap()
        .narrow(2, 3, 1)
        .unwrap()
        .flatten_all()
        .unwrap();
    let b = vis
        .last_hidden_state
        .get(0)
        .unwrap()
        .get(1 + 2 * 7 + 3)
        .unwrap();
    assert_eq!(a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
}

#[test]
fn intermediate_layer_outputs_match_transformers_hidden_states() {
    let model = tiny();
    let out = read_json(&fixtures().join("tiny/outputs.json"));
    let px = pixels(&ImageProcessor::default(), &["a"]);
    let none = Adaptation::none();
    let vis = model
        .vision_forward_with_layers(&px, &none, &[0, 1])
        .unwrap();
    assert_eq!(vis.layer_outputs.len(), 2);
    assert_close(
        "layer 0",
        &vis.layer_outputs[0].get(0).unwrap(),
        &out["layer0_output_a"],
        1e-4,
    );
    // The last layer's output is the last hidden state.
    assert_close(
        "layer 1",
        &vis.layer_outputs[1].get(0).unwrap(),
        &out["last_hidden_state_a"],
        1e-4,
    );
    assert!(model.vision_forward_with_layers(&px, &none, &[2]).is_err());
}

#[test]
fn other_input_sizes_interpolate_position_embeddings_like_transformers() {
    let model = tiny();
    let out = read_json(&fixtures().join("tiny/outputs.json"));
    let none = Adaptation::none();
    let px = pixels(&ImageProcessor::with_size(288), &["a"]);
    let vis = model.vision_forward(&px, &none).unwrap();
    assert_eq!((vis.grid_height, vis.grid_width), (9, 9));
    assert_close(
        "288 hidden",
        &vis.last_hidden_state.get(0).unwrap(),
        &out["last_hidden_state_288_a"],
        1e-4,
    );
    assert_close(
        "288 features",
        &model.image_features_from(&vis, &none).unwrap(),
        &out["image_features_288_a"],
        1e-4,
    );
    let rect = ImageProcessor {
        crop_size: Some((224, 288)),
        ..ImageProcessor::default()
    };
    let px = pixels(&rect, &["a"]);
    let vis = model.vision_forward(&px, &none).unwrap();
    assert_eq!((vis.grid_height, vis.grid_width), (7, 9));
    assert_close(
        "224x288 hidden",
        &vis.last_hidden_state.get(0).unwrap(),
        &out["last_hidden_state_224x288_a"],
        1e-4,
    );
    assert_close(
        "224x288 features",
        &model.image_features_from(&vis, &none).unwrap(),
        &out["image_features_224x288_a"],
        1e-4,
    );
}

#[test]
fn text_features_match_transformers() {
    let model = tiny();
    let tok = ClipTokenizer::new().unwrap();
    let out = read_json(&fixtures().join("tiny/outputs.json"));
    let texts: Vec<&str> = out["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let ids: Vec<u32> = texts
        .iter()
        .flat_map(|t| tok.encode_context(t, 77, Padding::Zeros))
        .collect();
    let want_ids: Vec<u32> = floats(&out["text_ids"]).iter().map(|&v| v as u32).collect();
    assert_eq!(ids, want_ids);
    let ids = Tensor::from_vec(ids, (texts.len(), 77), &Device::Cpu).unwrap();
    let none = Adaptation::none();
    let feats = model.get_text_features(&ids, &none).unwrap();
    assert_close("text_features", &feats, &out["text_features"], 1e-4);
    // Padding with EOT instead of zeros pools the same token.
    let eot: Vec<u32> = texts
        .iter()
        .flat_map(|t| tok.encode_context(t, 77, Padding::EndOfText))
        .collect();
    let eot = Tensor::from_vec(eot, (texts.len(), 77), &Device::Cpu).unwrap();
    assert_close(
        "text_features (EOT padding)",
        &model.get_text_features(&eot, &none).unwrap(),
        &out["text_features"],
        1e-4,
    );
    assert!((model.logit_scale() - out["logit_scale"].as_f64().unwrap()).abs() < 1e-3);
}

#[test]
fn peft_lora_on_checkpoint_paths_matches_peft() {
    let model = tiny();
    let dir = fixtures().join("tiny_lora");
    let out = read_json(&dir.join("outputs.json"));
    let scaling = out["scaling"].as_f64().unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    let site_paths: Vec<String> = model.sites().into_iter().map(|s| s.path).collect();
    let mut adaptation = Adaptation::none();
    for (key, a) in &tensors {
        let Some(path) = key
            .strip_prefix("base_model.model.")
            .and_then(|k| k.strip_suffix(".lora_A.weight"))
        else {
            continue;
        };
        assert!(
            site_paths.iter().any(|p| p == path),
            "PEFT module {path} is not a site of the model"
        );
        let b = &tensors[&format!("base_model.model.{path}.lora_B.weight")];
        let (a, b) = (
            a.to_dtype(DType::F32).unwrap(),
            b.to_dtype(DType::F32).unwrap(),
        );
        adaptation.insert(
            path,
            FactoredSite::stack(&[(&a, &b, scaling)], &[vec![1.0]]).unwrap(),
        );
    }
    // q, v, fc1, fc2 in both layers of both towers.
    assert_eq!(adaptation.paths().count(), 16);
    let px = pixels(&ImageProcessor::default(), &["a"]);
    let feats = model.get_image_features(&px, &adaptation).unwrap();
    assert_close(
        "LoRA image features",
        &feats,
        &out["image_features_a"],
        1e-4,
    );
    let base = model.get_image_features(&px, &Adaptation::none()).unwrap();
    let moved = max_abs_diff(&feats, &base);
    assert!(moved > 1e-2, "the adapter must change the features");

    // Per-image mixtures in one batch: weight 1 for the first image, 0 for the second.
    let mut per_image = Adaptation::none();
    for path in adaptation.paths() {
        let site = adaptation.get(path).unwrap();
        let stacked =
            FactoredSite::stack(&[(&site.a, &site.b, scaling)], &[vec![1.0], vec![0.0]]).unwrap();
        per_image.insert(path, stacked);
    }
    let batch = Tensor::cat(&[&px, &px], 0).unwrap();
    let both = model.get_image_features(&batch, &per_image).unwrap();
    assert_close(
        "batch image 0 (adapted)",
        &both.get(0).unwrap(),
        &out["image_features_a"],
        1e-4,
    );
    let base_row = base.get(0).unwrap();
    let diff = (both.get(1).unwrap() - base_row)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert!(
        diff.to_scalar::<f32>().unwrap() < 1e-5,
        "weight 0 must remove the adapter"
    );
}

#[test]
fn composed_kernels_agree_and_backpropagate_to_every_adapter_factor() {
    let mut model = tiny();
    let px = pixels(&ImageProcessor::default(), &["a"]);
    let tok = ClipTokenizer::new().unwrap();
    let ids = Tensor::from_vec(
        tok.encode_context("a photo of a road.", 77, Padding::Zeros),
        (1, 77),
        &Device::Cpu,
    )
    .unwrap();
    let none = Adaptation::none();
    let fused = model.get_image_features(&px, &none).unwrap();
    let fused_text = model.get_text_features(&ids, &none).unwrap();
    model.set_kernels(Kernels::Composed);
    let composed = model.get_image_features(&px, &none).unwrap();
    let composed_text = model.get_text_features(&ids, &none).unwrap();
    let diff = |a: &Tensor, b: &Tensor| max_abs_diff(a, b);
    assert!(diff(&fused, &composed) < 1e-5);
    assert!(diff(&fused_text, &composed_text) < 1e-5);

    // A trainable rank-2 adapter on every Linear site of both towers.
    let mut adaptation = Adaptation::none();
    let mut vars = Vec::new();
    for (i, site) in model.sites().into_iter().enumerate() {
        if site.path.ends_with("patch_embedding") {
            continue;
        }
        let a = Var::from_tensor(
            &Tensor::randn(0f32, 0.1, (2, site.in_features), &Device::Cpu).unwrap(),
        )
        .unwrap();
        // B non-zero too, so that A gets a gradient.
        let b = Var::from_tensor(
            &(Tensor::randn(0f32, 0.1, (site.out_features, 2), &Device::Cpu).unwrap()
                + 0.01 * (i as f64 + 1.0))
                .unwrap(),
        )
        .unwrap();
        adaptation.insert(
            site.path.clone(),
            FactoredSite::stack(&[(a.as_tensor(), b.as_tensor(), 1.0)], &[vec![1.0]]).unwrap(),
        );
        vars.push((site.path, a, b));
    }
    let img = model.get_image_features(&px, &adaptation).unwrap();
    let txt = model.get_text_features(&ids, &adaptation).unwrap();
    let loss =
        (img.sqr().unwrap().sum_all().unwrap() + txt.sqr().unwrap().sum_all().unwrap()).unwrap();
    let grads = loss.backward().unwrap();
    for (path, a, b) in &vars {
        for (name, v) in [("A", a), ("B", b)] {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{path}.{name}: no gradient"));
            let norm = g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0, "{path}.{name}: zero gradient");
        }
    }
    assert_eq!(vars.len(), 2 * 6 + 1 + 2 * 6 + 1);
}

#[test]
fn bad_inputs_give_clear_errors() {
    let err = ClipModel::from_dir(Path::new("no/such/clip"), &Device::Cpu).unwrap_err();
    assert!(
        err.to_string().contains("no/such/clip/config.json"),
        "{err}"
    );
    let model = tiny();
    let ids = Tensor::from_vec(vec![49406u32, 60000, 49407], (1, 3), &Device::Cpu).unwrap();
    let err = model
        .get_text_features(&ids, &Adaptation::none())
        .unwrap_err();
    assert!(err.to_string().contains("60000"), "{err}");
    let px = Tensor::zeros((1, 3, 16, 16), DType::F32, &Device::Cpu).unwrap();
    assert!(model.get_image_features(&px, &Adaptation::none()).is_err());
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.png");
    std::fs::write(&bad, b"not a png").unwrap();
    let err = ImageProcessor::default().preprocess_file(&bad).unwrap_err();
    assert!(err.to_string().contains("broken.png"), "{err}");
}

#[test]
fn vendored_vocabulary_is_openais_file() {
    let Some(shared) = semla_test_support::shared::path("weights/bpe_simple_vocab_16e6.txt.gz")
    else {
        return;
    };
    let original = std::fs::read(&shared).unwrap();
    let vendored = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/bpe_simple_vocab_16e6.txt.gz"),
    )
    .unwrap();
    assert!(
        original == vendored,
        "data/bpe_simple_vocab_16e6.txt.gz differs from the shared copy"
    );
}
