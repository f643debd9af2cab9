//! CLIP zero-shot scores against `transformers`' CLIP on the tiny random
//! checkpoint that `tools/reference/clip_reference.py` made for the CLIP
//! tests: `logits_per_image = exp(logit_scale) * cos(image, text)` from the
//! reference's own image and text features.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use semla_adapters::Adaptation;
use semla_csi::classify::ConceptClassifier;
use semla_csi::clip::ClipZeroShot;
use semla_models::clip::{ClipModel, ClipTokenizer, Padding};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../semla-models/tests/fixtures/clip")
}

fn rows(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn unit(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn raw_concept_strings_score_as_transformers_logits_per_image() {
    let out: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tiny/outputs.json")).unwrap(),
    )
    .unwrap();
    let texts: Vec<String> = out["texts"].as_array().unwrap()[..3]
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let image_features = rows(&out["image_features"]);
    let text_features = rows(&out["text_features"]);
    let scale = out["logit_scale"].as_f64().unwrap().exp() as f32;
    let model = ClipModel::from_dir(&fixtures().join("tiny"), &Device::Cpu).unwrap();
    let clip = ClipZeroShot::new(model, &["{}"], &Device::Cpu).unwrap();
    let photos: Vec<_> = ["a", "b"]
        .iter()
        .map(|n| {
            image::open(fixtures().join(format!("photo_{n}.png")))
                .unwrap()
                .to_rgb8()
        })
        .collect();
    let got = clip.score(&photos, &texts).unwrap();
    for (i, row) in got.iter().enumerate() {
        for (j, &logit) in row.iter().enumerate() {
            let want = scale * dot(&unit(&image_features[i]), &unit(&text_features[j]));
            assert!(
                (logit - want).abs() < 1e-4,
                "image {i} text {j}: {logit} vs {want}"
            );
        }
    }
}

#[test]
fn templates_are_ensembled_as_the_normalised_mean_of_normalised_features() {
    let model = ClipModel::from_dir(&fixtures().join("tiny"), &Device::Cpu).unwrap();
    let tok = ClipTokenizer::new().unwrap();
    let templates = ["a photo of a {}.", "a blurry photo of a {}."];
    let ids: Vec<u32> = templates
        .iter()
        .flat_map(|t| tok.encode_context(&t.replace("{}", "bicycle"), 77, Padding::Zeros))
        .collect();
    let feats = model
        .get_text_features(
            &Tensor::from_vec(ids, (2, 77), &Device::Cpu).unwrap(),
            &Adaptation::none(),
        )
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let mean: Vec<f32> = unit(&feats[0])
        .iter()
        .zip(unit(&feats[1]))
        .map(|(a, b)| (a + b) / 2.0)
        .collect();
    let text = unit(&mean);
    let photo = image::open(fixtures().join("photo_a.png"))
        .unwrap()
        .to_rgb8();
    let image = model
        .get_image_features(
            &semla_models::clip::ImageProcessor::with_size(224)
                .preprocess_rgb(
                    photo.as_raw(),
                    photo.height() as usize,
                    photo.width() as usize,
                )
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
            &Adaptation::none(),
        )
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let want = model.logit_scale().exp() as f32 * dot(&unit(&image[0]), &text);
    let clip = ClipZeroShot::new(model, &templates, &Device::Cpu).unwrap();
    let got = clip.score(&[photo], &["bicycle".to_string()]).unwrap()[0][0];
    assert!((got - want).abs() < 1e-4, "{got} vs {want}");
    let model = ClipModel::from_dir(&fixtures().join("tiny"), &Device::Cpu).unwrap();
    assert!(ClipZeroShot::new(model, &["no placeholder"], &Device::Cpu).is_err());
}
