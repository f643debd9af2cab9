//! `semla library retrieve --embedding` on a tiny library written by the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::path::{Path, PathBuf};

use semla_adapters::npz::{encode_npy, write_npz};
use semla_adapters::{Adapter, AdapterLibrary, LoraConfig};
use semla_test_support::cli::{semla, semla_error, semla_json};
use serde_json::Value;

/// A library of rank-1 adapters on one 2x2 linear site, with the given
/// prototypes (`None`: no prototype file).
fn write_library(dir: &Path, adapters: &[(&str, Option<&[f32]>)]) -> PathBuf {
    let root = dir.join("loradb");
    std::fs::create_dir_all(&root).unwrap();
    let mut library = AdapterLibrary::open(&root).unwrap();
    for (i, (name, prototype)) in adapters.iter().enumerate() {
        let scale = i as f32 + 1.0;
        let site = (
            "layer".to_string(),
            (vec![scale, 0.5], vec![1, 2], vec![0.25, -scale], vec![2, 1]),
        );
        let adapter = Adapter::from_host(*name, LoraConfig::new(1, 2.0), [site]).unwrap();
        library.add(&adapter, *prototype).unwrap();
    }
    root
}

fn write_query(dir: &Path, shape: &[usize], values: &[f32]) -> PathBuf {
    let path = dir.join("query.npy");
    std::fs::write(&path, encode_npy(shape, values)).unwrap();
    path
}

fn retrieve_json(args: &[&str]) -> Value {
    semla_json(&[&["library", "retrieve"], args].concat())
}

fn retrieve_error(args: &[&str]) -> String {
    semla_error(&[&["library", "retrieve"], args].concat())
}

fn selections(report: &Value) -> Vec<(String, f64, f64)> {
    report["selections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["distance"].as_f64().unwrap(),
                s["weight"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn retrieve_prints_the_top_k_with_softmax_weights() {
    let dir = tempfile::tempdir().unwrap();
    // Distances from the query (0, 0, 0): alpha 5, beta 1, gamma 2, delta 10.
    let library = write_library(
        dir.path(),
        &[
            ("alpha", Some(&[3.0, 4.0, 0.0])),
            ("beta", Some(&[0.0, 0.0, 1.0])),
            ("gamma", Some(&[0.0, 2.0, 0.0])),
            ("delta", Some(&[0.0, 6.0, 8.0])),
        ],
    );
    let query = write_query(dir.path(), &[1, 3], &[0.0, 0.0, 0.0]);
    let (lib, q) = (library.to_str().unwrap(), query.to_str().unwrap());

    let report = retrieve_json(&[
        "--library",
        lib,
        "--embedding",
        q,
        "--top-k",
        "3",
        "--temperature",
        "0.5",
    ]);
    assert_eq!(report["candidates"], 4);
    assert_eq!(report["dimension"], 3);
    assert_eq!(report["similarity"], "euclidean");
    let picks = selections(&report);
    let names: Vec<&str> = picks.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(names, ["beta", "gamma", "alpha"]);
    assert_eq!(
        picks.iter().map(|p| p.1).collect::<Vec<_>>(),
        [1.0, 2.0, 5.0]
    );
    // w ∝ exp((1/d) / T) with T = 0.5: exp(2), exp(1), exp(0.4).
    let e = [2.0f64.exp(), 1.0f64.exp(), 0.4f64.exp()];
    let z: f64 = e.iter().sum();
    for (pick, e) in picks.iter().zip(e) {
        assert!((pick.2 - e / z).abs() < 1e-12, "{pick:?}");
    }

    // Leave-one-out and the official defaults (top-5 of 3 candidates, T = 0.05).
    let report = retrieve_json(&["--library", lib, "--embedding", q, "--exclude", "beta"]);
    assert_eq!(report["candidates"], 3);
    let picks = selections(&report);
    let names: Vec<&str> = picks.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(names, ["gamma", "alpha", "delta"]);
    let e = [10.0f64.exp(), 4.0f64.exp(), 2.0f64.exp()];
    let z: f64 = e.iter().sum();
    for (pick, e) in picks.iter().zip(e) {
        assert!((pick.2 - e / z).abs() < 1e-12, "{pick:?}");
    }

    // The human-readable table names the adapters in rank order.
    let out = semla(&[
        "library",
        "retrieve",
        "--library",
        lib,
        "--embedding",
        q,
        "--top-k",
        "2",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let (b, g) = (text.find("beta").unwrap(), text.find("gamma").unwrap());
    assert!(b < g, "{text}");
    assert!(!text.contains("alpha"), "{text}");
}

#[test]
fn sources_and_config_files_set_order_and_settings() {
    let dir = tempfile::tempdir().unwrap();
    // zulu and alpha tie at distance 1; cosine picks by direction.
    let library = write_library(
        dir.path(),
        &[
            ("alpha", Some(&[1.0, 0.0])),
            ("zulu", Some(&[0.0, 1.0])),
            ("mike", Some(&[3.0, 3.0])),
        ],
    );
    let query = write_query(dir.path(), &[2], &[0.0, 0.0]);
    let sources = dir.path().join("source_domains.yaml");
    std::fs::write(&sources, "- zulu\n- mike\n- alpha\n").unwrap();
    let (lib, q, src) = (
        library.to_str().unwrap(),
        query.to_str().unwrap(),
        sources.to_str().unwrap(),
    );

    // Without --sources: library order (sorted names) breaks the tie.
    let report = retrieve_json(&["--library", lib, "--embedding", q, "--top-k", "1"]);
    assert_eq!(selections(&report)[0].0, "alpha");
    // With the official list: YAML order breaks it.
    let report = retrieve_json(&[
        "--library",
        lib,
        "--embedding",
        q,
        "--top-k",
        "1",
        "--sources",
        src,
    ]);
    assert_eq!(selections(&report)[0].0, "zulu");
    assert_eq!(selections(&report)[0].2, 1.0);

    // The official key `distance_measure_name` is honoured: cosine.
    let config = dir.path().join("semla_config.yaml");
    std::fs::write(
        &config,
        "distance_measure_name: cosine\ntemperature: 0.1\ntop_k: 2\ncombination_type: cat\n",
    )
    .unwrap();
    let query = write_query(dir.path(), &[2], &[2.0, 1.9]);
    let q = query.to_str().unwrap();
    let report = retrieve_json(&[
        "--library",
        lib,
        "--embedding",
        q,
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(report["similarity"], "cosine");
    assert_eq!(report["top_k"], 2);
    let names: Vec<String> = selections(&report).into_iter().map(|p| p.0).collect();
    assert_eq!(names, ["mike", "alpha"]);
    // A flag overrides the file.
    let report = retrieve_json(&[
        "--library",
        lib,
        "--embedding",
        q,
        "--config",
        config.to_str().unwrap(),
        "--top-k",
        "3",
    ]);
    assert_eq!(selections(&report).len(), 3);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let library = write_library(dir.path(), &[("alpha", Some(&[1.0, 0.0])), ("bare", None)]);
    let lib = library.to_str().unwrap();
    let query = write_query(dir.path(), &[2], &[0.0, 0.0]);
    let q = query.to_str().unwrap();

    // An adapter without a prototype file is named.
    let err = retrieve_error(&["--library", lib, "--embedding", q]);
    assert!(err.contains("bare"), "{err}");

    // Restricting the candidates with --sources avoids it; a wrong-size query
    // names the prototype.
    let sources = dir.path().join("sources.json");
    std::fs::write(&sources, r#"["alpha"]"#).unwrap();
    let src = sources.to_str().unwrap();
    let wide = write_query(dir.path(), &[1, 3], &[0.0, 0.0, 0.0]);
    let err = retrieve_error(&[
        "--library",
        lib,
        "--embedding",
        wide.to_str().unwrap(),
        "--sources",
        src,
    ]);
    assert!(err.contains("prototype 'alpha'"), "{err}");
    assert!(err.contains("dimension 2"), "{err}");

    // Unknown exclusion, bad temperature.
    let query = write_query(dir.path(), &[2], &[0.0, 0.0]);
    let q = query.to_str().unwrap();
    let err = retrieve_error(&[
        "--library",
        lib,
        "--embedding",
        q,
        "--sources",
        src,
        "--exclude",
        "alpah",
    ]);
    assert!(err.contains("alpah"), "{err}");
    let err = retrieve_error(&[
        "--library",
        lib,
        "--embedding",
        q,
        "--sources",
        src,
        "--temperature=-1",
    ]);
    assert!(err.contains("temperature"), "{err}");

    // A NaN in a prototype file names the file.
    let nan_path = library.join("alpha").join("alpha_statistics.npz");
    write_npz(
        &nan_path,
        &[("train_average_embedding", &[1, 2], &[f32::NAN, 0.0])],
    )
    .unwrap();
    let err = retrieve_error(&["--library", lib, "--embedding", q, "--sources", src]);
    assert!(err.contains("alpha_statistics.npz"), "{err}");

    // A query that is not an .npy file.
    let junk = dir.path().join("junk.npy");
    std::fs::write(&junk, b"not numpy").unwrap();
    let err = retrieve_error(&[
        "--library",
        lib,
        "--embedding",
        junk.to_str().unwrap(),
        "--sources",
        src,
    ]);
    assert!(err.contains("junk.npy"), "{err}");
}

/// A minimal RGB8 PNG: one IDAT of stored (uncompressed) deflate blocks.
fn write_png(path: &Path, width: u32, height: u32, rgb: &[u8]) {
    let mut raw = Vec::new();
    for row in rgb.chunks(3 * width as usize) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    let mut zlib = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        zlib.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        zlib.extend_from_slice(&len.to_le_bytes());
        zlib.extend_from_slice(&(!len).to_le_bytes());
        zlib.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &raw {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    zlib.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        png.extend_from_slice(&body);
        png.extend_from_slice(&semla_test_support::png::crc32(&body).to_be_bytes());
    };
    let mut header = Vec::new();
    header.extend_from_slice(&width.to_be_bytes());
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(b"IHDR", &header);
    chunk(b"IDAT", &zlib);
    chunk(b"IEND", &[]);
    std::fs::write(path, png).unwrap();
}

/// A tiny segmenter folder (`"kind": "tiny"`, width 2) with fixed weights.
fn write_tiny_segmenter(dir: &Path) -> PathBuf {
    use candle_core::{Device, Tensor};
    let model = dir.join("tiny-model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(
        model.join("config.json"),
        r#"{"kind": "tiny", "num_classes": 2, "width": 2}"#,
    )
    .unwrap();
    let shapes: [(&str, &[usize]); 12] = [
        ("stem.weight", &[2, 3, 3, 3]),
        ("stem.bias", &[2]),
        ("down1.weight", &[4, 2, 3, 3]),
        ("down1.bias", &[4]),
        ("down2.weight", &[8, 4, 3, 3]),
        ("down2.bias", &[8]),
        ("head.weight", &[8, 8, 1, 1]),
        ("head.bias", &[8]),
        ("classifier.weight", &[2, 8, 1, 1]),
        ("classifier.bias", &[2]),
        ("skip.weight", &[2, 4, 1, 1]),
        ("skip.bias", &[2]),
    ];
    let mut tensors = std::collections::HashMap::new();
    for (k, (name, shape)) in shapes.iter().enumerate() {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|i| ((i * 7 + k * 13) as f32 * 0.37).sin() * 0.5 + 0.1)
            .collect();
        let t = Tensor::from_vec(values, *shape, &Device::Cpu).unwrap();
        tensors.insert(name.to_string(), t);
    }
    candle_core::safetensors::save(&tensors, model.join("model.safetensors")).unwrap();
    model
}

#[test]
fn image_with_backbone_embedder_matches_the_embedding_path() {
    use semla_models::load_segmenter;
    let dir = tempfile::tempdir().unwrap();
    let model_dir = write_tiny_segmenter(dir.path());
    let (w, h) = (20u32, 16u32);
    let rgb: Vec<u8> = (0..w * h * 3).map(|i| ((i * 37) % 251) as u8).collect();
    let image = dir.path().join("query.png");
    write_png(&image, w, h, &rgb);

    // The embedding the library API gives for that image.
    let device = candle_core::Device::Cpu;
    let model = load_segmenter(&model_dir, &device).unwrap();
    let img = semla_data::image_io::read_rgb(&image).unwrap();
    assert_eq!(img.as_raw(), &rgb);
    let pixels = model.normalization().image(&img, &device).unwrap();
    let embedding: Vec<f32> = model
        .embed(&pixels)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(embedding.len(), 8);
    let shifted: Vec<f32> = embedding.iter().map(|v| v + 0.5).collect();
    let library = write_library(
        dir.path(),
        &[("other", Some(&shifted)), ("self", Some(&embedding))],
    );
    let lib = library.to_str().unwrap();
    let embedder = format!("backbone:{}", model_dir.display());

    let report = retrieve_json(&[
        "--library",
        lib,
        "--image",
        image.to_str().unwrap(),
        "--embedder",
        &embedder,
    ]);
    assert_eq!(report["dimension"], 8);
    let picks = selections(&report);
    assert_eq!(picks[0].0, "self");
    assert_eq!(picks[0].1, 0.0);
    assert_eq!(picks[0].2, 1.0);
    assert!(
        (picks[1].1 - (8.0f64 * 0.25).sqrt()).abs() < 1e-6,
        "{picks:?}"
    );

    // Same answer from the precomputed embedding.
    let query = write_query(dir.path(), &[1, 8], &embedding);
    let from_npy = retrieve_json(&["--library", lib, "--embedding", query.to_str().unwrap()]);
    assert_eq!(from_npy["selections"], report["selections"]);

    // A bad embedder spec and a missing --embedder are clear errors.
    let err = retrieve_error(&[
        "--library",
        lib,
        "--image",
        image.to_str().unwrap(),
        "--embedder",
        "resnet:x",
    ]);
    assert!(
        err.contains("clip:DIR") && err.contains("backbone"),
        "{err}"
    );
    // The style embedder (mean and std of the tiny model's stem channels) is
    // accepted, and its shorter query cannot be compared with 8-d prototypes.
    let style = format!("style:{}@2", model_dir.display());
    let err = retrieve_error(&[
        "--library",
        lib,
        "--image",
        image.to_str().unwrap(),
        "--embedder",
        &style,
    ]);
    assert!(err.contains("dimension"), "{err}");
    let err = retrieve_error(&["--library", lib, "--image", image.to_str().unwrap()]);
    assert!(err.contains("--embedder"), "{err}");
}

#[test]
fn image_with_clip_embedder_retrieves_by_transformers_features() {
    // The tiny CLIP fixture of semla-models, with the features transformers
    // computed for its two photos (rows 0 and 1 of `image_features`).
    let clip = Path::new(env!("CARGO_MANIFEST_DIR")).join("../semla-models/tests/fixtures/clip");
    let outputs: Value =
        serde_json::from_str(&std::fs::read_to_string(clip.join("tiny/outputs.json")).unwrap())
            .unwrap();
    let row = |i: usize| -> Vec<f32> {
        outputs["image_features"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect()
    };
    let (a, b) = (row(0), row(1));
    let between = a
        .iter()
        .zip(&b)
        .map(|(x, y)| f64::from(x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    let dir = tempfile::tempdir().unwrap();
    let library = write_library(dir.path(), &[("photo-a", Some(&a)), ("photo-b", Some(&b))]);
    let embedder = format!("clip:{}", clip.join("tiny").display());
    let report = retrieve_json(&[
        "--library",
        library.to_str().unwrap(),
        "--image",
        clip.join("photo_b.png").to_str().unwrap(),
        "--embedder",
        &embedder,
        "--temperature",
        "1",
    ]);
    assert_eq!(report["dimension"], 16);
    let picks = selections(&report);
    assert_eq!(picks[0].0, "photo-b");
    assert!(picks[0].1 < 1e-3, "{picks:?}");
    assert_eq!(picks[1].0, "photo-a");
    assert!(
        (picks[1].1 - between).abs() < 1e-3,
        "{picks:?} vs {between}"
    );
    assert!(picks[0].2 > 0.999, "{picks:?}");
}
