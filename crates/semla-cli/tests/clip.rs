//! `semla clip` end to end on the tiny CLIP fixture of semla-models.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::path::{Path, PathBuf};

use semla_test_support::cli::semla_text as semla;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../semla-models/tests/fixtures/clip")
}

fn floats(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(items) => items.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap()],
        _ => panic!("not numbers"),
    }
}

#[test]
fn tokenize_prints_ids_per_text() {
    let (ok, stdout, stderr) = semla(&[
        "--json",
        "clip",
        "tokenize",
        "a photo of a road.",
        "sidewalk",
        "--padding",
        "eot",
    ]);
    assert!(ok, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    let ids: Vec<u64> = v[0]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(&ids[..8], &[49406, 320, 1125, 539, 320, 1759, 269, 49407]);
    assert_eq!(ids.len(), 77);
    assert_eq!(ids[76], 49407);
    assert_eq!(v[1]["text"], "sidewalk");
}

#[test]
fn image_and_text_features_match_transformers() {
    let model = fixtures().join("tiny");
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("outputs.json")).unwrap())
            .unwrap();
    let image = fixtures().join("photo_a.png");
    let (ok, stdout, stderr) = semla(&[
        "--json",
        "clip",
        "image-features",
        "--model",
        model.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    let got = floats(&v[0]["features"]);
    let expected = floats(&want["image_features"][0]);
    assert_eq!(got.len(), expected.len());
    assert!(got.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-4));

    let (ok, stdout, stderr) = semla(&[
        "--json",
        "clip",
        "text-features",
        "--model",
        model.to_str().unwrap(),
        "a photo of a road.",
    ]);
    assert!(ok, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    let got = floats(&v[0]["features"]);
    let expected = floats(&want["text_features"][0]);
    assert!(got.iter().zip(&expected).all(|(a, b)| (a - b).abs() < 1e-4));
}

#[test]
fn missing_model_folder_is_reported() {
    let (ok, _, stderr) = semla(&[
        "clip",
        "image-features",
        "--model",
        "no/such/model",
        "x.png",
    ]);
    assert!(!ok);
    assert!(stderr.contains("no/such/model/config.json"), "{stderr}");
}
