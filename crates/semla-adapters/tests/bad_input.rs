//! Bad input gets a clear error naming the file and the problem, never a
//! panic; and the library lists large libraries from headers only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::collections::HashMap;
use std::path::Path;

use semla_adapters::library::write_prototype;
use semla_adapters::site::{Conv2dGeometry, SiteKind};
use semla_adapters::{Adapter, AdapterLibrary, LoraConfig, SiteInfo, peft};

/// Writes a safetensors file of raw tensors `(key, dtype, shape, bytes)`.
fn write_safetensors(path: &Path, tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(k, d, s, b)| {
            (
                k.to_string(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    std::fs::write(
        path,
        safetensors::tensor::serialize(views, Some(meta)).unwrap(),
    )
    .unwrap();
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn ones(n: usize) -> Vec<u8> {
    f32_bytes(&vec![0.5; n])
}

const A: &str = "base_model.model.enc.fc.lora_A.weight";
const B: &str = "base_model.model.enc.fc.lora_B.weight";

/// A library folder `root/name` with config rank `r` and the given tensors.
fn write_adapter(
    root: &Path,
    name: &str,
    r: usize,
    tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)],
) {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("adapter_config.json"),
        LoraConfig::new(r, 8.0).to_json_string(),
    )
    .unwrap();
    write_safetensors(&dir.join("adapter_model.safetensors"), tensors);
}

/// The error of the broken adapter `name` of the library at `root` (the library
/// itself opens).
fn broken_error(root: &std::path::Path, name: &str) -> String {
    let library = AdapterLibrary::open(root).unwrap();
    let broken = library.broken().find(|b| b.name == name).unwrap();
    assert!(library.entry(name).is_err());
    broken.error.clone()
}

/// Asserts that the library lists the adapter as broken (the rest of the library
/// stays usable) and that using or loading it fails, naming the file and `needle`.
fn assert_rejected(
    tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)],
    r: usize,
    needle: &str,
) {
    let tmp = tempfile::tempdir().unwrap();
    write_adapter(tmp.path(), "bad", r, tensors);
    let file = "bad/adapter_model.safetensors";
    let library = AdapterLibrary::open(tmp.path()).unwrap();
    let broken: Vec<_> = library.broken().collect();
    assert_eq!(broken.len(), 1);
    assert_eq!(broken[0].name, "bad");
    let err = &broken[0].error;
    assert!(err.contains(file) && err.contains(needle), "open: {err}");
    assert!(library.names().is_empty());
    let err = library.entry("bad").unwrap_err().to_string();
    assert!(err.contains(file) && err.contains(needle), "entry: {err}");
    let err = library.load("bad").unwrap_err().to_string();
    assert!(
        err.contains(file) && err.contains(needle),
        "library load: {err}"
    );
    let err = peft::load_adapter(&tmp.path().join("bad"))
        .unwrap_err()
        .to_string();
    assert!(err.contains(file) && err.contains(needle), "load: {err}");
}

use safetensors::Dtype::{F32, I32};

#[test]
fn missing_factor() {
    assert_rejected(&[(A, F32, vec![4, 6], ones(24))], 4, "lora_B is missing");
    assert_rejected(&[(B, F32, vec![5, 4], ones(20))], 4, "lora_A is missing");
}

#[test]
fn factors_that_do_not_chain() {
    assert_rejected(
        &[
            (A, F32, vec![4, 6], ones(24)),
            (B, F32, vec![5, 3], ones(15)),
        ],
        4,
        "do not chain",
    );
    assert_rejected(
        &[
            (A, F32, vec![4, 6, 2], ones(48)),
            (B, F32, vec![5, 4], ones(20)),
        ],
        4,
        "neither Linear",
    );
}

#[test]
fn rank_not_matching_the_config() {
    assert_rejected(
        &[
            (A, F32, vec![4, 6], ones(24)),
            (B, F32, vec![5, 4], ones(20)),
        ],
        8,
        "config gives r = 8",
    );
}

#[test]
fn non_float_dtype() {
    assert_rejected(
        &[
            (A, I32, vec![4, 6], vec![0; 96]),
            (B, F32, vec![5, 4], ones(20)),
        ],
        4,
        "non-float dtype",
    );
}

#[test]
fn nan_and_inf_values() {
    for bad in [f32::NAN, f32::INFINITY] {
        let mut a = vec![0.5f32; 24];
        a[7] = bad;
        let tmp = tempfile::tempdir().unwrap();
        write_adapter(
            tmp.path(),
            "bad",
            4,
            &[
                (A, F32, vec![4, 6], f32_bytes(&a)),
                (B, F32, vec![5, 4], ones(20)),
            ],
        );
        // The header is fine: listing works, loading the values fails.
        let lib = AdapterLibrary::open(tmp.path()).unwrap();
        let err = lib.load("bad").unwrap_err().to_string();
        assert!(
            err.contains("bad/adapter_model.safetensors")
                && err.contains("lora_A has 1 NaN or infinite"),
            "{err}"
        );
    }
}

#[test]
fn unexpected_keys_and_corrupt_files() {
    assert_rejected(
        &[
            (A, F32, vec![4, 6], ones(24)),
            (B, F32, vec![5, 4], ones(20)),
            ("base_model.model.enc.fc.weight", F32, vec![5, 6], ones(30)),
        ],
        4,
        "not a LoRA factor",
    );
    let tmp = tempfile::tempdir().unwrap();
    write_adapter(
        tmp.path(),
        "cut",
        4,
        &[
            (A, F32, vec![4, 6], ones(24)),
            (B, F32, vec![5, 4], ones(20)),
        ],
    );
    let file = tmp.path().join("cut/adapter_model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 10]).unwrap();
    let err = broken_error(tmp.path(), "cut");
    assert!(
        err.contains("cut/adapter_model.safetensors") && err.contains("truncated"),
        "{err}"
    );
    let err = peft::load_adapter(&tmp.path().join("cut"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cut/adapter_model.safetensors"), "{err}");
    std::fs::write(&file, b"abc").unwrap();
    let err = peft::load_adapter(&tmp.path().join("cut"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cut/adapter_model.safetensors"), "{err}");
    // A config that is not JSON.
    std::fs::write(tmp.path().join("cut/adapter_config.json"), "{").unwrap();
    let err = broken_error(tmp.path(), "cut");
    assert!(
        err.contains("cut/adapter_config.json") && err.contains("not valid JSON"),
        "{err}"
    );
    // No weights at all.
    std::fs::write(
        tmp.path().join("cut/adapter_config.json"),
        LoraConfig::new(4, 8.0).to_json_string(),
    )
    .unwrap();
    std::fs::remove_file(&file).unwrap();
    let err = broken_error(tmp.path(), "cut");
    assert!(
        err.contains("neither adapter_model.safetensors nor adapter_model.bin"),
        "{err}"
    );
}

fn small_adapter(name: &str) -> Adapter {
    let sites = vec![(
        "enc.fc".to_string(),
        (vec![0.5; 24], vec![4, 6], vec![0.25; 20], vec![5, 4]),
    )];
    Adapter::from_host(name, LoraConfig::new(4, 8.0), sites).unwrap()
}

#[test]
fn adapters_that_do_not_fit_the_model() {
    let adapter = small_adapter("a");
    let fits = [SiteInfo {
        path: "enc.fc".into(),
        kind: SiteKind::Linear,
        in_features: 6,
        out_features: 5,
    }];
    adapter.check_fits(&fits).unwrap();
    let other = [SiteInfo {
        path: "enc.other".into(),
        kind: SiteKind::Linear,
        in_features: 6,
        out_features: 5,
    }];
    let err = adapter.check_fits(&other).unwrap_err().to_string();
    assert!(
        err.contains("adapter a")
            && err.contains("site enc.fc does not exist")
            && err.contains("enc.other"),
        "{err}"
    );
    let wrong_shape = [SiteInfo {
        path: "enc.fc".into(),
        kind: SiteKind::Linear,
        in_features: 7,
        out_features: 5,
    }];
    let err = adapter.check_fits(&wrong_shape).unwrap_err().to_string();
    assert!(
        err.contains("do not fit") && err.contains("7 inputs"),
        "{err}"
    );
    let geometry = Conv2dGeometry {
        kernel_size: 3,
        stride: 1,
        padding: 1,
        dilation: 1,
    };
    let conv = [SiteInfo {
        path: "enc.fc".into(),
        kind: SiteKind::Conv2d(geometry),
        in_features: 6,
        out_features: 5,
    }];
    assert!(adapter.check_fits(&conv).is_err());
}

#[test]
fn unknown_adapter_names_list_the_available_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lib = AdapterLibrary::open(tmp.path()).unwrap();
    lib.add(&small_adapter("rain"), Some(&[1.0, 2.0])).unwrap();
    lib.add(&small_adapter("snow"), None).unwrap();
    let err = lib.load("fog").unwrap_err().to_string();
    assert!(
        err.contains("\"fog\"") && err.contains("available: rain, snow"),
        "{err}"
    );
    assert!(lib.prototype("fog").is_err());
    assert_eq!(lib.prototype("rain").unwrap(), vec![1.0, 2.0]);
    // Reopening finds the same adapters.
    let reopened = AdapterLibrary::open(tmp.path()).unwrap();
    assert_eq!(reopened.names(), ["rain", "snow"]);
    // A config without target_modules is saved with the site paths (peft needs them).
    assert_eq!(
        reopened.entry("rain").unwrap().config.target_modules,
        Some(semla_adapters::TargetModules::List(vec!["enc.fc".into()]))
    );
}

#[test]
fn bad_prototypes() {
    let tmp = tempfile::tempdir().unwrap();
    let err = write_prototype(tmp.path(), "x", &[1.0, f32::NAN])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("x_statistics.npz") && err.contains("NaN"),
        "{err}"
    );
    let mut lib = AdapterLibrary::open(tmp.path()).unwrap();
    lib.add(&small_adapter("x"), None).unwrap();
    let path = tmp.path().join("x/x_statistics.npz");
    // NaN written behind our back, a wrong shape, a wrong array name, not a zip.
    semla_adapters::npz::write_npz(
        &path,
        &[("train_average_embedding", &[1, 2], &[1.0, f32::NAN])],
    )
    .unwrap();
    let lib = AdapterLibrary::open(tmp.path()).unwrap();
    let err = lib.prototype("x").unwrap_err().to_string();
    assert!(
        err.contains("x_statistics.npz") && err.contains("NaN"),
        "{err}"
    );
    semla_adapters::npz::write_npz(&path, &[("train_average_embedding", &[2, 2], &[1.0; 4])])
        .unwrap();
    let err = lib.prototype("x").unwrap_err().to_string();
    assert!(err.contains("shape [2, 2]"), "{err}");
    semla_adapters::npz::write_npz(&path, &[("other", &[1, 2], &[1.0; 2])]).unwrap();
    let err = lib.prototype("x").unwrap_err().to_string();
    assert!(
        err.contains("no array \"train_average_embedding\"") && err.contains("other"),
        "{err}"
    );
    std::fs::write(&path, b"not a zip").unwrap();
    let err = lib.prototype("x").unwrap_err().to_string();
    assert!(
        err.contains("x_statistics.npz") && err.contains("not a valid npz"),
        "{err}"
    );
}

#[test]
fn a_thousand_adapters_list_from_headers() {
    let tmp = tempfile::tempdir().unwrap();
    // One adapter written by the library, hard-linked into 1,000 folders
    // (writing each one atomically fsyncs every file, which is slow).
    let mut t = AdapterLibrary::open(tmp.path()).unwrap();
    t.add(&small_adapter("template"), Some(&[0.5, 1.0, 2.0]))
        .unwrap();
    let template = tmp.path().join("template");
    for i in 1..1000 {
        let name = format!("domain-{i:04}");
        let dir = tmp.path().join(&name);
        std::fs::create_dir(&dir).unwrap();
        for file in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::hard_link(template.join(file), dir.join(file)).unwrap();
        }
        if i % 2 == 0 {
            std::fs::hard_link(
                template.join("template_statistics.npz"),
                dir.join(format!("{name}_statistics.npz")),
            )
            .unwrap();
        }
    }
    // A folder without a config is not an adapter; a stray file is ignored.
    std::fs::create_dir(tmp.path().join("notes")).unwrap();
    std::fs::write(tmp.path().join("README.md"), "library").unwrap();
    let lib = AdapterLibrary::open(tmp.path()).unwrap();
    assert_eq!(lib.len(), 1000);
    assert_eq!(lib.names()[0], "domain-0001");
    assert_eq!(lib.names()[998], "domain-0999");
    assert_eq!(lib.names()[999], "template");
    let entry = lib.entry("domain-0500").unwrap();
    assert!(entry.has_prototype());
    assert!(!lib.entry("domain-0501").unwrap().has_prototype());
    assert_eq!(entry.parameter_count(), 4 * 6 + 5 * 4);
    assert_eq!(lib.prototype("domain-0500").unwrap(), vec![0.5, 1.0, 2.0]);
    // No temporary files left behind by the atomic writes.
    let leftovers = std::fs::read_dir(tmp.path().join("domain-0500"))
        .unwrap()
        .count();
    assert_eq!(leftovers, 3);
}
