//! SAM against the official `segment_anything` code on a tiny random model:
//! `tools/reference/sam_reference.py` wrote `tests/fixtures/sam/`; the weights
//! are regenerated here from `keys_sam_tiny.json` (`semla_core::rng::named_values`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use semla_models::sam::{EncoderArgs, ImageEmbedding, Prediction, Prompt, Sam, SamConfig};
use semla_test_support::max_abs_diff_slices;

const TOLERANCE: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sam")
}

fn weights() -> HashMap<String, Tensor> {
    semla_test_support::tensors_from_keys(&fixtures().join("keys_sam_tiny.json"))
}

fn shapes(tensors: &HashMap<String, Tensor>) -> HashMap<String, Vec<usize>> {
    tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect()
}

fn encoder_args() -> EncoderArgs {
    EncoderArgs::from_file(&fixtures().join("encoder.json")).unwrap()
}

/// The model, built once for every test of this file.
fn model() -> &'static Sam {
    static MODEL: OnceLock<Sam> = OnceLock::new();
    MODEL.get_or_init(|| {
        let tensors = weights();
        let config = SamConfig::from_shapes(&shapes(&tensors), Some(&encoder_args())).unwrap();
        Sam::from_tensors(tensors, config, &Device::Cpu).unwrap()
    })
}

fn reference() -> &'static HashMap<String, Tensor> {
    static OUT: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    OUT.get_or_init(|| {
        candle_core::safetensors::load(
            fixtures().join("outputs_sam_tiny.safetensors"),
            &Device::Cpu,
        )
        .unwrap()
    })
}

fn expected(key: &str) -> Vec<f32> {
    let t = reference()
        .get(key)
        .unwrap_or_else(|| panic!("the fixture has no {key}"));
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn rgb(name: &str) -> (Vec<u8>, usize, usize) {
    let img = semla_data::image_io::read_rgb(&fixtures().join(format!("{name}.png"))).unwrap();
    let (w, h) = img.dimensions();
    (img.into_raw(), h as usize, w as usize)
}

fn embedding(name: &str) -> &'static ImageEmbedding {
    static IMAGE: OnceLock<ImageEmbedding> = OnceLock::new();
    static PORTRAIT: OnceLock<ImageEmbedding> = OnceLock::new();
    let cell = if name == "image" { &IMAGE } else { &PORTRAIT };
    cell.get_or_init(|| {
        let (rgb, h, w) = rgb(name);
        model().set_image(&rgb, h, w).unwrap()
    })
}

/// The prompt cases of `summary.json`, as the script ran them.
fn cases() -> Vec<(String, String, Prompt, bool)> {
    let text = std::fs::read_to_string(fixtures().join("summary.json")).unwrap();
    let summary: serde_json::Value = serde_json::from_str(&text).unwrap();
    let pairs = |v: &serde_json::Value| -> Vec<[f64; 2]> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|p| [p[0].as_f64().unwrap(), p[1].as_f64().unwrap()])
            .collect()
    };
    summary["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let prompt = Prompt {
                points: pairs(&c["points"]),
                labels: c["labels"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|l| l.as_i64().unwrap() as i32)
                    .collect(),
                bbox: c["box"].as_array().map(|b| {
                    let v: Vec<f64> = b.iter().map(|x| x.as_f64().unwrap()).collect();
                    [v[0], v[1], v[2], v[3]]
                }),
                mask_input: c["mask_input"]
                    .as_bool()
                    .unwrap()
                    .then(|| semla_core::rng::named_values("mask_input", 256 * 256, 8.0, 0.0)),
            };
            (
                c["name"].as_str().unwrap().to_string(),
                c["image"].as_str().unwrap().to_string(),
                prompt,
                c["multimask"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// Every 4th row and column of the low-resolution logits `[M, 64, 64]`.
fn low_res_sub(prediction: &Prediction) -> Vec<f32> {
    let side = semla_models::sam::LOW_RES_SIZE;
    let mut out = Vec::new();
    for m in 0..prediction.masks {
        for y in (0..side).step_by(4) {
            for x in (0..side).step_by(4) {
                out.push(prediction.low_res_logits[(m * side + y) * side + x]);
            }
        }
    }
    out
}

#[test]
fn the_dimensions_come_from_the_shapes_and_agree_with_encoder_json() {
    let tensors = weights();
    let inferred = SamConfig::from_shapes(&shapes(&tensors), None).unwrap();
    assert_eq!(inferred.encoder.args, encoder_args());
    assert_eq!(inferred.decoder.transformer_dim, 256);
    assert_eq!(inferred.decoder.mlp_dim, 2048);
    assert_eq!(inferred.decoder.depth, 2);
    assert_eq!(inferred.released_name(), None);
    let mut wrong = encoder_args();
    wrong.encoder_global_attn_indexes = vec![0];
    let message = SamConfig::from_shapes(&shapes(&tensors), Some(&wrong)).unwrap_err();
    assert!(message.contains("does not fit the checkpoint"), "{message}");
}

#[test]
fn resizing_equals_pillow_and_the_embedding_equals_the_official_encoder() {
    for name in ["image", "portrait"] {
        let (rgb, h, w) = rgb(name);
        let (resized, (rh, rw)) = semla_models::sam::transforms::resize_longest_side(&rgb, h, w);
        let mut sub = Vec::new();
        for y in (0..rh).step_by(16) {
            for x in (0..rw).step_by(16) {
                sub.extend(
                    resized[(y * rw + x) * 3..][..3]
                        .iter()
                        .map(|&v| f32::from(v)),
                );
            }
        }
        assert_eq!(
            sub,
            expected(&format!("{name}.resized_sub")),
            "{name}: resize"
        );

        let features = &embedding(name).features;
        assert_eq!(features.dims(), &[1, 256, 64, 64]);
        let sub = features
            .squeeze(0)
            .unwrap()
            .reshape((256, 8, 8, 8, 8))
            .unwrap()
            .narrow(2, 0, 1)
            .unwrap()
            .narrow(4, 0, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let diff = max_abs_diff_slices(&sub, &expected(&format!("{name}.embedding_sub")));
        assert!(diff < TOLERANCE, "{name}: embedding differs by {diff}");
        let mean = features
            .squeeze(0)
            .unwrap()
            .flatten_from(1)
            .unwrap()
            .mean(1)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let diff = max_abs_diff_slices(&mean, &expected(&format!("{name}.embedding_mean")));
        assert!(diff < TOLERANCE, "{name}: embedding mean differs by {diff}");
    }
}

#[test]
fn every_prompt_case_equals_the_official_predictor() {
    let cases = cases();
    assert_eq!(cases.len(), 6);
    for (name, image, prompt, multimask) in cases {
        let got = model()
            .predict(embedding(&image), &prompt, multimask)
            .unwrap();
        let want = reference()[&format!("{name}.logits")].dims().to_vec();
        assert_eq!(vec![got.masks, got.height, got.width], want, "{name}");
        for (part, values) in [
            ("logits", got.logits.clone()),
            ("iou", got.iou.clone()),
            ("low_res_sub", low_res_sub(&got)),
        ] {
            let diff = max_abs_diff_slices(&values, &expected(&format!("{name}.{part}")));
            assert!(diff < TOLERANCE, "{name}.{part} differs by {diff}");
        }
        // The thresholded masks are the logits' signs.
        let binary = got.binary_masks();
        assert!(
            binary
                .iter()
                .zip(&got.logits)
                .all(|(&b, &l)| (b == 1) == (l > 0.0))
        );
    }
}

#[test]
fn a_batch_of_prompts_equals_the_official_batched_call_and_each_single_call() {
    let text = std::fs::read_to_string(fixtures().join("summary.json")).unwrap();
    let summary: serde_json::Value = serde_json::from_str(&text).unwrap();
    let prompts: Vec<Prompt> = summary["batch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Prompt {
            points: c["points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| [p[0].as_f64().unwrap(), p[1].as_f64().unwrap()])
                .collect(),
            labels: c["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_i64().unwrap() as i32)
                .collect(),
            bbox: Some({
                let b: Vec<f64> = c["box"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect();
                [b[0], b[1], b[2], b[3]]
            }),
            mask_input: None,
        })
        .collect();
    let image = embedding("image");
    let batch = model().predict_batch(image, &prompts, true).unwrap();
    let logits: Vec<f32> = batch.iter().flat_map(|p| p.logits.clone()).collect();
    let iou: Vec<f32> = batch.iter().flat_map(|p| p.iou.clone()).collect();
    let diff = max_abs_diff_slices(&logits, &expected("batch.logits"));
    assert!(diff < TOLERANCE, "batch logits differ by {diff}");
    let diff = max_abs_diff_slices(&iou, &expected("batch.iou"));
    assert!(diff < TOLERANCE, "batch IoU differs by {diff}");
    for (prompt, batched) in prompts.iter().zip(&batch) {
        let single = model().predict(image, prompt, true).unwrap();
        let diff = max_abs_diff_slices(&single.logits, &batched.logits);
        assert!(diff < 1e-5, "single vs batched: {diff}");
    }
}

#[test]
fn bad_prompts_are_refused_with_what_is_wrong() {
    let image = embedding("image");
    let refuse = |prompt: Prompt| {
        model()
            .predict(image, &prompt, true)
            .unwrap_err()
            .to_string()
    };
    let m = refuse(Prompt {
        points: vec![[1.0, 2.0]],
        labels: vec![],
        ..Prompt::default()
    });
    assert!(m.contains("1 points but 0 labels"), "{m}");
    let m = refuse(Prompt {
        points: vec![[1.0, 2.0]],
        labels: vec![2],
        ..Prompt::default()
    });
    assert!(m.contains("label 2"), "{m}");
    let m = refuse(Prompt {
        points: vec![[f64::NAN, 2.0]],
        labels: vec![1],
        ..Prompt::default()
    });
    assert!(m.contains("not finite"), "{m}");
    let m = refuse(Prompt {
        bbox: Some([0.0, 0.0, 4.0, 4.0]),
        mask_input: Some(vec![0.0; 10]),
        ..Prompt::default()
    });
    assert!(m.contains("mask input of 10 values"), "{m}");
    let mixed = [
        Prompt {
            points: vec![[1.0, 2.0]],
            labels: vec![1],
            ..Prompt::default()
        },
        Prompt {
            points: vec![[1.0, 2.0], [3.0, 4.0]],
            labels: vec![1, 1],
            ..Prompt::default()
        },
    ];
    let m = model()
        .predict_batch(image, &mixed, true)
        .unwrap_err()
        .to_string();
    assert!(m.contains("same number of points"), "{m}");
    let m = model().set_image(&[0; 11], 2, 2).unwrap_err().to_string();
    assert!(m.contains("needs 12 bytes, got 11"), "{m}");
}
