//! Hostile and broken inputs through the `semla` binary: each gives a clear
//! error naming the file and what is wrong, a non-zero exit, bounded memory, and
//! nothing half-written; a broken entry of a library does not take the rest down;
//! an interrupted write leaves the previous content. Every input is generated here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use semla_adapters::AdapterLibrary;
use semla_data::image_io::write_rgb_png;
use semla_data::labels::{LabelMap, write_label_map};
use semla_data::{Rgb, RgbImage};
use semla_models::tiny::TinySegConfig;
use semla_models::{SegmenterConfig, save_segmenter};
use semla_test_support::cli::{semla, semla_error, semla_json, semla_text_in};
use semla_test_support::files::{snapshot, temporary_names};
use semla_test_support::png::claiming_size;
use semla_train::lora::{LoraSettings, LoraTrainee};

const SOURCES: [&str; 3] = ["synthetic-clear", "synthetic-night", "synthetic-fog"];

/// A random tiny model, a library of three rank-2 adapters with backbone
/// prototypes, and a photo.
struct Fixture {
    dir: tempfile::TempDir,
    model: PathBuf,
    library: PathBuf,
    photo: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = SegmenterConfig::Tiny(TinySegConfig {
            num_classes: semla_data::synthetic::NUM_CLASSES,
            width: 4,
            class_names: Vec::new(),
        });
        let (trained, _) =
            semla_train::runs::build_trainable(&config, None, 1, &Device::Cpu).unwrap();
        let model = dir.path().join("model");
        save_segmenter(trained.as_ref(), &model).unwrap();
        let library = dir.path().join("lib");
        std::fs::create_dir_all(&library).unwrap();
        let mut lib = AdapterLibrary::open(&library).unwrap();
        let settings = LoraSettings {
            rank: 2,
            alpha: 4.0,
            ..LoraSettings::default()
        };
        for (i, name) in SOURCES.iter().enumerate() {
            let lora =
                LoraTrainee::new(&trained.sites(), &settings, i as u64, &Device::Cpu).unwrap();
            let mut adapter = lora.to_adapter(name).unwrap();
            for site in adapter.sites.values_mut() {
                site.b = (site.b.ones_like().unwrap() * (0.1 * (i as f64 + 1.0))).unwrap();
            }
            lib.add(&adapter, None).unwrap();
        }
        semla_json(&[
            "library",
            "embed",
            "--library",
            library.to_str().unwrap(),
            "--embedder",
            &format!("backbone:{}", model.display()),
            "--limit",
            "2",
            "--resize",
            "24x32",
        ]);
        let photo = dir.path().join("photo.png");
        write_rgb_png(
            &photo,
            &RgbImage::from_fn(32, 24, |x, y| Rgb([(x * 7) as u8, (y * 9) as u8, 80])),
        )
        .unwrap();
        Self {
            dir,
            model,
            library,
            photo,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn segment(&self, images: &[&Path], extra: &[&str]) -> std::process::Output {
        let out = self.path("masks");
        let mut args = vec![
            "segment",
            "--model",
            self.model.to_str().unwrap(),
            "--library",
            self.library.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.extend(images.iter().map(|p| p.to_str().unwrap()));
        semla(&args)
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every file under `dir` with its bytes.
/// A valid PNG file whose header claims `width x height`.
fn png_claiming(path: &Path, width: u32, height: u32, label: bool) {
    if label {
        write_label_map(path, &LabelMap::filled(1, 1, 1)).unwrap();
    } else {
        write_rgb_png(path, &RgbImage::new(1, 1)).unwrap();
    }
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, claiming_size(bytes, width, height)).unwrap();
}

#[test]
fn broken_and_hostile_images_are_clear_errors() {
    let f = Fixture::new();
    // A JPEG cut after its headers, a PNG claiming 100000 x 100000 pixels, text.
    let mut jpeg = std::io::Cursor::new(Vec::new());
    RgbImage::from_pixel(64, 48, Rgb([10, 200, 30]))
        .write_to(&mut jpeg, image::ImageFormat::Jpeg)
        .unwrap();
    let jpeg = jpeg.into_inner();
    let sos = jpeg.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    let truncated = f.path("truncated.jpg");
    std::fs::write(&truncated, &jpeg[..sos + 12]).unwrap();
    let huge = f.path("huge.png");
    png_claiming(&huge, 100_000, 100_000, false);
    let text = f.path("notes.png");
    std::fs::write(&text, "not an image").unwrap();
    for (image, needle) in [
        (&truncated, "JPEG"),
        (&huge, "--max-pixels"),
        (&text, "notes.png"),
    ] {
        let out = f.segment(&[image], &[]);
        assert!(!out.status.success(), "{} was accepted", image.display());
        let err = stderr(&out);
        assert!(
            err.contains(image.file_name().unwrap().to_str().unwrap()) && err.contains(needle),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    // Nothing was written for the failed runs.
    assert!(!f.path("masks").exists());

    // --keep-going: the good image is segmented, the bad ones are reported, the
    // exit status says that some failed, and the JSON lists both.
    let out = f.segment(&[&f.photo, &truncated, &huge], &["--keep-going", "--json"]);
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["images"].as_array().unwrap().len(), 1);
    assert_eq!(report["errors"].as_array().unwrap().len(), 2);
    assert!(f.path("masks/photo_mask.png").is_file());
    let err: serde_json::Value = serde_json::from_str(stderr(&out).trim()).unwrap();
    assert!(err["error"].as_str().unwrap().contains("2 of 3"), "{err}");

    // A resize that would allocate gigabytes.
    let out = f.segment(&[&f.photo], &["--resize", "20000x20000"]);
    assert!(stderr(&out).contains("--max-pixels"), "{}", stderr(&out));
    // Negative numbers parse, and are then refused by the setting's own check.
    let out = f.segment(&[&f.photo], &["--temperature", "-1"]);
    let err = stderr(&out);
    assert!(
        !out.status.success()
            && err.contains("temperature")
            && !err.contains("unexpected argument"),
        "{err}"
    );
    assert!(temporary_names(f.dir.path()).is_empty());
}

#[test]
fn segment_writes_label_maps_that_metrics_scores_by_name() {
    let f = Fixture::new();
    let labels = f.path("labels");
    let out = f.segment(&[&f.photo], &["--labels", labels.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let map = semla_data::labels::read_label_map(&labels.join("photo.png")).unwrap();
    assert_eq!((map.width, map.height), (32, 24));
    // Ground truth under the same name scores; a differently named file is refused.
    let gt = f.path("gt");
    std::fs::create_dir_all(&gt).unwrap();
    write_label_map(&gt.join("photo.png"), &map).unwrap();
    let scores = semla_json(&[
        "metrics",
        "--pred",
        labels.to_str().unwrap(),
        "--gt",
        gt.to_str().unwrap(),
        "--num-classes",
        "10",
    ]);
    assert_eq!(scores["miou"], 100.0);
    std::fs::rename(gt.join("photo.png"), gt.join("other.png")).unwrap();
    let err = semla_error(&[
        "metrics",
        "--pred",
        labels.to_str().unwrap(),
        "--gt",
        gt.to_str().unwrap(),
        "--num-classes",
        "10",
    ]);
    assert!(
        err.contains("photo.png") && err.contains("other.png"),
        "{err}"
    );
    // Label maps claiming a huge size, and a class count that would not fit in memory.
    let big = f.path("big.png");
    png_claiming(&big, 100_000, 100_000, true);
    let small = f.path("small.png");
    write_label_map(&small, &LabelMap::filled(1, 1, 1)).unwrap();
    let err = semla_error(&[
        "metrics",
        "--pred",
        big.to_str().unwrap(),
        "--gt",
        small.to_str().unwrap(),
        "--num-classes",
        "10",
    ]);
    assert!(
        err.contains("big.png") && err.contains("--max-pixels"),
        "{err}"
    );
    let err = semla_error(&[
        "metrics",
        "--pred",
        small.to_str().unwrap(),
        "--gt",
        small.to_str().unwrap(),
        "--num-classes",
        "100000000",
    ]);
    assert!(err.contains("--max-classes"), "{err}");
}

#[test]
fn a_broken_adapter_leaves_the_rest_of_the_library_usable() {
    let f = Fixture::new();
    // Truncate one adapter's weights.
    let weights = f.library.join("synthetic-fog/adapter_model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let listing = semla_json(&["library", "list", f.library.to_str().unwrap()]);
    assert_eq!(listing["count"], 2);
    let broken = listing["broken"].as_array().unwrap();
    assert_eq!(broken.len(), 1);
    assert_eq!(broken[0]["name"], "synthetic-fog");
    assert!(
        broken[0]["error"]
            .as_str()
            .unwrap()
            .contains("adapter_model.safetensors")
    );
    // Segmenting without it works, by default and by name; naming it fails.
    let out = f.segment(&[&f.photo], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = f.segment(
        &[&f.photo],
        &["--sources", "synthetic-clear,synthetic-night"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = f.segment(&[&f.photo], &["--sources", "synthetic-clear,synthetic-fog"]);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("synthetic-fog"),
        "{err}"
    );
    // Evaluating another adapter works; the broken one is a clear error.
    let eval = |adapter: &str| {
        semla(&[
            "eval",
            "--model",
            f.model.to_str().unwrap(),
            "--adapter",
            f.library.join(adapter).to_str().unwrap(),
            "--domain",
            "synthetic-night",
            "--resize",
            "24x32",
            "--limit",
            "2",
        ])
    };
    assert!(eval("synthetic-night").status.success());
    let out = eval("synthetic-fog");
    assert!(!out.status.success() && stderr(&out).contains("adapter_model.safetensors"));
    // An empty evaluation is an error, not 0 %.
    let err = semla_error(&[
        "eval",
        "--model",
        f.model.to_str().unwrap(),
        "--domain",
        "synthetic-night",
        "--limit",
        "0",
    ]);
    assert!(err.contains("no image to evaluate"), "{err}");
}

#[test]
fn out_of_range_weights_are_refused_not_segmented() {
    let f = Fixture::new();
    // Factors of 3e38 (finite, but the update overflows) and lora_alpha 1e308.
    let weights = f.library.join("synthetic-night/adapter_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    for t in tensors.values_mut() {
        *t = (t.ones_like().unwrap() * 3e38).unwrap();
    }
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let config = f.library.join("synthetic-clear/adapter_config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["lora_alpha"] = serde_json::json!(1e308);
    std::fs::write(&config, json.to_string()).unwrap();
    for name in ["synthetic-night", "synthetic-clear"] {
        let out = f.segment(&[&f.photo], &["--sources", name]);
        let err = stderr(&out);
        assert!(!out.status.success() && err.contains(name), "{name}: {err}");
    }
    // A model with a NaN weight is refused when it is loaded.
    let model_weights = f.model.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&model_weights, &Device::Cpu).unwrap();
    let bias = tensors.get_mut("classifier.bias").unwrap();
    let n = bias.dim(0).unwrap();
    *bias = Tensor::from_vec(vec![f32::NAN; n], n, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&tensors, &model_weights).unwrap();
    let err = semla_error(&[
        "eval",
        "--model",
        f.model.to_str().unwrap(),
        "--domain",
        "synthetic-night",
        "--limit",
        "1",
    ]);
    assert!(
        err.contains("classifier.bias") && err.contains("NaN"),
        "{err}"
    );
}

#[test]
fn outputs_are_not_overwritten_without_force() {
    let f = Fixture::new();
    let lib = f.library.to_str().unwrap();
    // A merge into one of its own inputs is refused, even with --force.
    let into_input = f.library.join("synthetic-night");
    let before = snapshot(&f.library);
    let err = semla_error(&[
        "adapter",
        "merge",
        "--library",
        lib,
        "--weights",
        "synthetic-night=0.5,synthetic-clear=0.5",
        "--out",
        into_input.to_str().unwrap(),
        "--force",
    ]);
    assert!(err.contains("one of the adapters being merged"), "{err}");
    assert_eq!(snapshot(&f.library), before);
    // An existing folder needs --force.
    let merged = f.path("merged");
    let merge = |force: bool| {
        let mut args = vec![
            "adapter",
            "merge",
            "--library",
            lib,
            "--weights",
            "synthetic-night=1",
            "--out",
            merged.to_str().unwrap(),
        ];
        if force {
            args.push("--force");
        }
        semla(&args)
    };
    assert!(merge(false).status.success());
    let out = merge(false);
    assert!(!out.status.success() && stderr(&out).contains("--force"));
    assert!(merge(true).status.success());
    // Training an adapter over an existing one needs --force, checked before training.
    let err = semla_error(&[
        "adapter",
        "train",
        "--model",
        f.model.to_str().unwrap(),
        "--domain",
        "synthetic-night",
        "--out",
        f.library.join("synthetic-night").to_str().unwrap(),
        "--steps",
        "1",
    ]);
    assert!(err.contains("--force"), "{err}");
    // A rank no site can hold is refused before any allocation.
    let err = semla_error(&[
        "adapter",
        "train",
        "--model",
        f.model.to_str().unwrap(),
        "--domain",
        "synthetic-night",
        "--out",
        f.path("lib2/night").to_str().unwrap(),
        "--rank",
        "100000",
        "--steps",
        "1",
        "--resize",
        "24x32",
    ]);
    assert!(err.contains("rank 100000"), "{err}");
    // train base over an existing model needs --force (or --resume).
    let err = semla_error(&[
        "train",
        "base",
        "--model-kind",
        "tiny",
        "--domain",
        "synthetic-clear",
        "--steps",
        "1",
        "--out",
        f.model.to_str().unwrap(),
    ]);
    assert!(err.contains("--force"), "{err}");
}

#[test]
fn a_moved_library_works_from_another_folder() {
    let f = Fixture::new();
    // The record names the model relative to the library: move both together
    // and run from somewhere else.
    let moved = f.path("elsewhere");
    std::fs::create_dir_all(&moved).unwrap();
    std::fs::rename(&f.library, moved.join("lib")).unwrap();
    std::fs::rename(&f.model, moved.join("model")).unwrap();
    let cwd = f.path("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let (ok, _, err) = semla_text_in(
        &cwd,
        &[
            "segment",
            "--model",
            moved.join("model").to_str().unwrap(),
            "--library",
            moved.join("lib").to_str().unwrap(),
            "--out",
            "masks",
            f.photo.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert!(cwd.join("masks/photo_mask.png").is_file());
    // The library alone moved: the command's model is used when it is the one
    // the record names.
    let alone = f.path("alone");
    std::fs::rename(moved.join("lib"), &alone).unwrap();
    let (ok, _, err) = semla_text_in(
        &cwd,
        &[
            "segment",
            "--model",
            moved.join("model").to_str().unwrap(),
            "--library",
            alone.to_str().unwrap(),
            "--out",
            "masks2",
            f.photo.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
}

#[test]
fn errors_are_json_with_json() {
    let err = semla_error(&[
        "--json",
        "segment",
        "--model",
        "nowhere",
        "--library",
        "x",
        "--out",
        "o",
        "p.png",
    ]);
    let value: serde_json::Value = serde_json::from_str(err.trim()).unwrap();
    assert!(
        value["error"].as_str().unwrap().contains("nowhere"),
        "{err}"
    );
    let err = semla_error(&["--json", "segment", "--no-such-flag"]);
    let value: serde_json::Value = serde_json::from_str(err.trim()).unwrap();
    assert!(
        value["error"].as_str().unwrap().contains("--no-such-flag"),
        "{err}"
    );
}

#[test]
fn an_interrupted_library_embed_leaves_the_old_prototypes() {
    let f = Fixture::new();
    let before = snapshot(&f.library);
    let embed = |limit: &str| {
        std::process::Command::new(semla_test_support::cli::binary())
            .args([
                "library",
                "embed",
                "--library",
                f.library.to_str().unwrap(),
                "--embedder",
                &format!("style:{}", f.model.display()),
                "--limit",
                limit,
                "--resize",
                "96x128",
            ])
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // A signal may land before the library's one swap (nothing changed) or
    // after it, while the process exits (the whole new library in place):
    // never anything in between. Interrupted states are checked against both
    // once the complete new library is known.
    let mut interrupted = Vec::new();
    for delay_ms in [50u64, 150, 300, 600] {
        let mut child = embed("40");
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let status = child.wait().unwrap();
        assert!(
            temporary_names(f.dir.path()).is_empty(),
            "after {delay_ms} ms"
        );
        if !status.success() {
            // 128 + SIGTERM from the handler (or the signal itself, before it was installed).
            assert!(matches!(status.code(), Some(143) | None), "{status}");
            interrupted.push((delay_ms, snapshot(&f.library)));
        }
    }
    assert!(
        !interrupted.is_empty(),
        "no run was interrupted: make the embedding longer"
    );
    assert!(embed("40").wait().unwrap().success());
    let complete = snapshot(&f.library);
    assert_ne!(complete, before, "the embedding changes the library");
    for (delay_ms, state) in &interrupted {
        assert!(
            *state == before || *state == complete,
            "interrupted after {delay_ms} ms: neither the old library nor the whole new one"
        );
    }
    // An uninterrupted run replaces every prototype and the record together.
    assert!(embed("2").wait().unwrap().success());
    let record = AdapterLibrary::open(&f.library)
        .unwrap()
        .record()
        .cloned()
        .unwrap();
    assert_eq!(record.embedder, "style");
}

#[test]
fn unknown_domains_and_empty_evaluations_are_named_as_such() {
    let f = Fixture::new();
    let model = f.model.to_str().unwrap();
    // Without a dataset root, a name no layout owns is "unknown", not "no root".
    let err = semla_error(&["eval", "--model", model, "--domain", "nosuch/fog"]);
    assert!(err.contains("unknown domain `nosuch/fog`"), "{err}");
    let err = semla_error(&["eval", "--model", model, "--domain", "camvid/0001TP"]);
    assert!(err.contains("no dataset root"), "{err}");
    // Nothing to evaluate is an error, not 0 %.
    let err = semla_error(&[
        "eval",
        "--model",
        model,
        "--domain",
        "synthetic/fog",
        "--limit",
        "0",
    ]);
    assert!(err.contains("no image to evaluate"), "{err}");
}

/// `--device`: the CPU runs; CUDA in a build without the `cuda` feature is a
/// clear error that writes nothing; a device that does not exist is refused by
/// name; `--version` says which features are compiled in.
#[test]
fn devices_are_named_opened_or_refused_clearly() {
    let f = Fixture::new();
    let out = f.segment(&[&f.photo], &["--device", "cpu"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::remove_dir_all(f.path("masks")).unwrap();
    let version = semla(&["--version"]);
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    assert!(version.contains("features:"), "{version}");
    if version.contains("cuda") {
        return; // a CUDA build: the refusal below does not apply
    }
    let out = f.segment(&[&f.photo], &["--device", "cuda:1"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("cuda:1") && err.contains("--features cuda"),
        "{err}"
    );
    assert!(!f.path("masks").exists(), "a refused device left output");
    let out = f.segment(&[&f.photo], &["--device", "tpu"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("expected cpu, cuda, cuda:N or auto"), "{err}");
}
