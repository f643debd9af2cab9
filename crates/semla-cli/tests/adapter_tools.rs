//! `semla adapter bake` and `semla adapter extract` on a tiny model folder
//! and adapter written by the test (no data needed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use semla_adapters::{Adapter, LoraConfig, peft};
use semla_test_support::cli::semla;
use semla_test_support::max_abs_diff;
use serde_json::Value;

/// Deterministic pseudo-random values in `[-0.5, 0.5)`.
fn values(count: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// A tiny segmenter folder (width 4, 3 classes) with random weights.
fn write_tiny_model(dir: &Path) -> HashMap<String, Tensor> {
    std::fs::create_dir_all(dir).unwrap();
    let shapes: [(&str, Vec<usize>); 12] = [
        ("stem.weight", vec![4, 3, 3, 3]),
        ("stem.bias", vec![4]),
        ("down1.weight", vec![8, 4, 3, 3]),
        ("down1.bias", vec![8]),
        ("down2.weight", vec![16, 8, 3, 3]),
        ("down2.bias", vec![16]),
        ("head.weight", vec![16, 16, 1, 1]),
        ("head.bias", vec![16]),
        ("classifier.weight", vec![3, 16, 1, 1]),
        ("classifier.bias", vec![3]),
        ("skip.weight", vec![3, 8, 1, 1]),
        ("skip.bias", vec![3]),
    ];
    let mut tensors = HashMap::new();
    for (i, (name, shape)) in shapes.iter().enumerate() {
        let n: usize = shape.iter().product();
        let t = Tensor::from_vec(values(n, i as u64 + 1), shape.as_slice(), &Device::Cpu).unwrap();
        tensors.insert(name.to_string(), t);
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"kind": "tiny", "num_classes": 3, "width": 4}"#,
    )
    .unwrap();
    tensors
}

/// A rank-2 adapter (alpha 4, scale 2) on `head` and `skip` (or on `extra`
/// sites given by name and shape).
fn write_adapter(dir: &Path, sites: &[(&str, usize, usize)]) -> Adapter {
    let sites = sites.iter().enumerate().map(|(i, (path, out, inp))| {
        (
            path.to_string(),
            (
                values(2 * inp, 100 + i as u64),
                vec![2, *inp, 1, 1],
                values(out * 2, 200 + i as u64),
                vec![*out, 2, 1, 1],
            ),
        )
    });
    let adapter = Adapter::from_host("delta", LoraConfig::new(2, 4.0), sites).unwrap();
    peft::save_adapter(dir, &adapter).unwrap();
    adapter
}

#[test]
fn bake_merges_and_extract_recovers_the_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let base_dir = tmp.path().join("base");
    let base = write_tiny_model(&base_dir);
    let adapter_dir = tmp.path().join("adapter");
    let adapter = write_adapter(&adapter_dir, &[("head", 16, 16), ("skip", 3, 8)]);
    let baked_dir = tmp.path().join("models").join("baked");
    let s = |p: &Path| p.to_str().unwrap().to_string();

    let out = semla(&[
        "--json",
        "adapter",
        "bake",
        "--model",
        &s(&base_dir),
        "--adapter",
        &s(&adapter_dir),
        "--out",
        &s(&baked_dir),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["sites"], serde_json::json!(["head", "skip"]));
    let baked =
        candle_core::safetensors::load(baked_dir.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(baked.len(), base.len());
    for (key, w) in &base {
        let path = key.trim_end_matches(".weight");
        let want = match adapter.sites.get(path) {
            Some(site) if key.ends_with(".weight") => {
                (w + site.delta_weight(adapter.scale_for(path)).unwrap()).unwrap()
            }
            _ => w.clone(),
        };
        assert!(max_abs_diff(&baked[key], &want) < 1e-6, "{key}");
        if adapter.sites.contains_key(path) && key.ends_with(".weight") {
            assert!(max_abs_diff(&baked[key], w) > 1e-3, "{key} did not change");
        }
    }
    // No leftovers from the atomic write.
    let names: Vec<String> = std::fs::read_dir(baked_dir.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["baked".to_string()]);

    // An existing output is refused without --force.
    let again = semla(&[
        "adapter",
        "bake",
        "--model",
        &s(&base_dir),
        "--adapter",
        &s(&adapter_dir),
        "--out",
        &s(&baked_dir),
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    // Extract the difference back, at the adapter's rank.
    let lib = tmp.path().join("lib");
    let out = semla(&[
        "--json",
        "adapter",
        "extract",
        "--base",
        &s(&base_dir),
        "--tuned",
        &s(&baked_dir),
        "--rank",
        "2",
        "--out",
        &s(&lib.join("recovered")),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["sites"].as_array().unwrap().len(), 2);
    assert_eq!(report["not_carried"].as_array().unwrap().len(), 0);
    let recovered = peft::load_adapter(&lib.join("recovered")).unwrap();
    assert_eq!(recovered.config.r, 2);
    assert_eq!(recovered.config.lora_alpha, 2.0);
    let mut paths: Vec<&String> = recovered.sites.keys().collect();
    paths.sort();
    assert_eq!(paths, vec!["head", "skip"]);
    for (path, site) in &adapter.sites {
        let want = site.delta_weight(adapter.scale_for(path)).unwrap();
        let got = recovered.sites[path]
            .delta_weight(recovered.scale_for(path))
            .unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-5, "{path}");
    }
}

#[test]
fn bake_rejects_an_adapter_that_does_not_fit() {
    let tmp = tempfile::tempdir().unwrap();
    let base_dir = tmp.path().join("base");
    write_tiny_model(&base_dir);
    let adapter_dir = tmp.path().join("adapter");
    write_adapter(&adapter_dir, &[("neck", 16, 16)]);
    let out_dir = tmp.path().join("baked");
    let out = semla(&[
        "adapter",
        "bake",
        "--model",
        base_dir.to_str().unwrap(),
        "--adapter",
        adapter_dir.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("neck"), "{err}");
    assert!(!out_dir.exists());
}

/// `semla adapter train --init soma --freeze-blocks 4` on real CamVid frames
/// (skipped when `../shared/data/camvid` is absent): the library gets a
/// rank-2r adapter on the unfrozen sites only; with a vanishing learning rate
/// the trained factors stay at A0, B0 and the stored update is (almost) zero.
#[test]
fn soma_training_from_the_cli_stores_a_rank_2r_adapter() {
    let Some(root) = semla_test_support::shared::data_root_with("camvid") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let base_dir = tmp.path().join("base");
    write_tiny_model(&base_dir);
    // The tiny model above has 3 classes; CamVid needs 11: rewrite its classifier layers.
    let mut tensors =
        candle_core::safetensors::load(base_dir.join("model.safetensors"), &Device::Cpu).unwrap();
    for (name, shape) in [
        ("classifier.weight", vec![11, 16, 1, 1]),
        ("classifier.bias", vec![11]),
        ("skip.weight", vec![11, 8, 1, 1]),
        ("skip.bias", vec![11]),
    ] {
        let n: usize = shape.iter().product();
        tensors.insert(
            name.to_string(),
            Tensor::from_vec(values(n, 50 + n as u64), shape, &Device::Cpu).unwrap(),
        );
    }
    candle_core::safetensors::save(&tensors, base_dir.join("model.safetensors")).unwrap();
    std::fs::write(
        base_dir.join("config.json"),
        r#"{"kind": "tiny", "num_classes": 11, "width": 4}"#,
    )
    .unwrap();
    let lib = tmp.path().join("lib");
    let out = semla(&[
        "--json",
        "adapter",
        "train",
        "--model",
        base_dir.to_str().unwrap(),
        "--out",
        lib.join("dusk").to_str().unwrap(),
        "--domain",
        "camvid/0001TP",
        "--data-root",
        root.to_str().unwrap(),
        "--resize",
        "36x48",
        "--crop",
        "36x48",
        "--batch",
        "1",
        "--steps",
        "1",
        "--lr",
        "1e-12",
        "--rank",
        "2",
        "--alpha",
        "4",
        "--init",
        "soma",
        "--freeze-blocks",
        "4",
        "--prototype-images",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let adapter = peft::load_adapter(&lib.join("dusk")).unwrap();
    assert_eq!(adapter.config.r, 4);
    assert_eq!(adapter.config.lora_alpha, 8.0);
    let mut paths: Vec<&String> = adapter.sites.keys().collect();
    paths.sort();
    // `head` is block 3 of the tiny segmenter: frozen.
    assert_eq!(paths, vec!["classifier", "skip"]);
    for (path, site) in &adapter.sites {
        assert_eq!(site.a.dims()[0], 4);
        let delta = site.delta_weight(adapter.scale_for(path)).unwrap();
        let zero = delta.zeros_like().unwrap();
        assert!(max_abs_diff(&delta, &zero) < 1e-5, "{path}");
        // The factors themselves are not zero: [A; -A0] with A = A0.
        let a_norm = max_abs_diff(&site.a, &site.a.zeros_like().unwrap());
        assert!(a_norm > 1e-3, "{path}");
    }
    assert!(lib.join("dusk").join("dusk_statistics.npz").is_file());
}
