//! SAM and MobileSAM against the official code on tiny random models:
//! `tools/reference/sam_reference.py` wrote `tests/fixtures/sam/` (the
//! `segment_anything` package) and `tests/fixtures/mobile_sam/` (the
//! ChaoningZhang/MobileSAM sources, TinyViT encoder); the weights are
//! regenerated here from the `keys_*.json` files (`semla_core::rng::named_values`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use semla_models::sam::{
    EncoderArgs, EncoderConfig, EncoderSpec, ImageEmbedding, Prediction, Prompt, Sam, SamConfig,
    TinyVitArgs,
};
use semla_test_support::max_abs_diff_slices;

const TOLERANCE: f32 = 1e-4;

/// Which reference model a check runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// SAM's ViT encoder (`_build_sam`).
    Sam,
    /// MobileSAM's TinyViT encoder.
    MobileSam,
}

use Variant::{MobileSam, Sam as ViTSam};

impl Variant {
    fn fixtures(self) -> PathBuf {
        let dir = match self {
            ViTSam => "sam",
            MobileSam => "mobile_sam",
        };
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(dir)
    }

    fn tag(self) -> &'static str {
        match self {
            ViTSam => "sam_tiny",
            MobileSam => "mobile_sam_tiny",
        }
    }
}

fn fixtures() -> PathBuf {
    ViTSam.fixtures()
}

fn weights(v: Variant) -> HashMap<String, Tensor> {
    semla_test_support::tensors_from_keys(&v.fixtures().join(format!("keys_{}.json", v.tag())))
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

/// `encoder.json` of a variant, as `--encoder-config` reads it.
fn encoder_spec(v: Variant) -> EncoderSpec {
    EncoderSpec::from_file(&v.fixtures().join("encoder.json")).unwrap()
}

/// The model, built once for every test of this file.
fn model_of(v: Variant) -> &'static Sam {
    static SAM: OnceLock<Sam> = OnceLock::new();
    static MOBILE: OnceLock<Sam> = OnceLock::new();
    let cell = if v == ViTSam { &SAM } else { &MOBILE };
    cell.get_or_init(|| {
        let tensors = weights(v);
        let config = SamConfig::from_shapes(&shapes(&tensors), Some(&encoder_spec(v))).unwrap();
        Sam::from_tensors(tensors, config, &Device::Cpu).unwrap()
    })
}

fn model() -> &'static Sam {
    model_of(ViTSam)
}

fn reference_of(v: Variant) -> &'static HashMap<String, Tensor> {
    static SAM: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    static MOBILE: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    let cell = if v == ViTSam { &SAM } else { &MOBILE };
    cell.get_or_init(|| {
        candle_core::safetensors::load(
            v.fixtures()
                .join(format!("outputs_{}.safetensors", v.tag())),
            &Device::Cpu,
        )
        .unwrap()
    })
}

fn expected_of(v: Variant, key: &str) -> Vec<f32> {
    let t = reference_of(v)
        .get(key)
        .unwrap_or_else(|| panic!("the {v:?} fixture has no {key}"));
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn expected(key: &str) -> Vec<f32> {
    expected_of(ViTSam, key)
}

fn rgb(v: Variant, name: &str) -> (Vec<u8>, usize, usize) {
    let img = semla_data::image_io::read_rgb(&v.fixtures().join(format!("{name}.png"))).unwrap();
    let (w, h) = img.dimensions();
    (img.into_raw(), h as usize, w as usize)
}

fn embedding_of(v: Variant, name: &str) -> &'static ImageEmbedding {
    static CELLS: [OnceLock<ImageEmbedding>; 4] = [const { OnceLock::new() }; 4];
    let cell = &CELLS[usize::from(v == MobileSam) * 2 + usize::from(name != "image")];
    cell.get_or_init(|| {
        let (rgb, h, w) = rgb(v, name);
        model_of(v).set_image(&rgb, h, w).unwrap()
    })
}

fn embedding(name: &str) -> &'static ImageEmbedding {
    embedding_of(ViTSam, name)
}

/// The prompt cases of a variant's `summary.json`, as the script ran them.
fn cases(v: Variant) -> Vec<(String, String, Prompt, bool)> {
    let text = std::fs::read_to_string(v.fixtures().join("summary.json")).unwrap();
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
    let tensors = weights(ViTSam);
    let inferred = SamConfig::from_shapes(&shapes(&tensors), None).unwrap();
    let EncoderConfig::Vit(encoder) = &inferred.encoder else {
        panic!("not read as SAM's ViT: {:?}", inferred.encoder)
    };
    assert_eq!(encoder.args, encoder_args());
    assert_eq!(inferred.decoder.transformer_dim, 256);
    assert_eq!(inferred.decoder.mlp_dim, 2048);
    assert_eq!(inferred.decoder.depth, 2);
    assert_eq!(inferred.released_name(), None);
    let mut wrong = encoder_args();
    wrong.encoder_global_attn_indexes = vec![0];
    let message =
        SamConfig::from_shapes(&shapes(&tensors), Some(&EncoderSpec::Vit(wrong))).unwrap_err();
    assert!(message.contains("does not fit the checkpoint"), "{message}");
    let message =
        SamConfig::from_shapes(&shapes(&tensors), EncoderSpec::released("vit_t").as_ref())
            .unwrap_err();
    assert!(
        message.contains("but the checkpoint is SAM's ViT"),
        "{message}"
    );
}

#[test]
fn resizing_equals_pillow_and_the_embedding_equals_the_official_encoder() {
    check_resizing_and_embeddings(ViTSam);
}

fn check_resizing_and_embeddings(v: Variant) {
    for name in ["image", "portrait"] {
        let (rgb, h, w) = rgb(v, name);
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
            expected_of(v, &format!("{name}.resized_sub")),
            "{name}: resize"
        );

        let features = &embedding_of(v, name).features;
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
        let diff = max_abs_diff_slices(&sub, &expected_of(v, &format!("{name}.embedding_sub")));
        assert!(
            diff < TOLERANCE,
            "{v:?} {name}: embedding differs by {diff}"
        );
        let mean = features
            .squeeze(0)
            .unwrap()
            .flatten_from(1)
            .unwrap()
            .mean(1)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let diff = max_abs_diff_slices(&mean, &expected_of(v, &format!("{name}.embedding_mean")));
        assert!(
            diff < TOLERANCE,
            "{v:?} {name}: embedding mean differs by {diff}"
        );
    }
}

#[test]
fn every_prompt_case_equals_the_official_predictor() {
    check_prompt_cases(ViTSam, 6);
}

fn check_prompt_cases(v: Variant, count: usize) {
    let cases = cases(v);
    assert_eq!(cases.len(), count);
    for (name, image, prompt, multimask) in cases {
        let got = model_of(v)
            .predict(embedding_of(v, &image), &prompt, multimask)
            .unwrap();
        let want = reference_of(v)[&format!("{name}.logits")].dims().to_vec();
        assert_eq!(vec![got.masks, got.height, got.width], want, "{name}");
        for (part, values) in [
            ("logits", got.logits.clone()),
            ("iou", got.iou.clone()),
            ("low_res_sub", low_res_sub(&got)),
        ] {
            let diff = max_abs_diff_slices(&values, &expected_of(v, &format!("{name}.{part}")));
            assert!(diff < TOLERANCE, "{v:?} {name}.{part} differs by {diff}");
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

#[test]
fn mobile_sam_is_recognised_and_its_tiny_vit_read_from_the_shapes() {
    let tensors = weights(MobileSam);
    let inferred = SamConfig::from_shapes(&shapes(&tensors), None).unwrap();
    let EncoderConfig::TinyVit(encoder) = &inferred.encoder else {
        panic!("not read as TinyViT: {:?}", inferred.encoder)
    };
    let EncoderSpec::TinyVit(given) = encoder_spec(MobileSam) else {
        panic!("encoder.json is not TinyViT's")
    };
    // Stage 0 has no attention: its heads and window are vit_t's when nothing says otherwise.
    let mut expected_args = given.clone();
    expected_args.num_heads[0] = TinyVitArgs::vit_t().num_heads[0];
    expected_args.window_sizes[0] = TinyVitArgs::vit_t().window_sizes[0];
    assert_eq!(encoder.args, expected_args);
    assert_eq!(encoder.hidden_widths, vec![32, 48, 64, 640]);
    assert_eq!(inferred.released_name(), None);
    assert_eq!(inferred.decoder.transformer_dim, 256);
    assert_eq!(given.stage_sides().unwrap(), vec![256, 128, 64, 64]);

    let mut wrong = given.clone();
    wrong.window_sizes[2] = 7;
    let message =
        SamConfig::from_shapes(&shapes(&tensors), Some(&EncoderSpec::TinyVit(wrong))).unwrap_err();
    assert!(message.contains("does not fit the checkpoint"), "{message}");
    let message = SamConfig::from_shapes(
        &shapes(&tensors),
        Some(&EncoderSpec::Vit(EncoderArgs::vit_b())),
    )
    .unwrap_err();
    assert!(
        message.contains("but the checkpoint is MobileSAM's TinyViT"),
        "{message}"
    );
    // The official blocks are built for fixed grid sides: a width that changes the
    // merge stride (320 keeps stride 1) is refused before any tensor is read.
    let mut layout = TinyVitArgs::vit_t();
    layout.embed_dims[3] = 256;
    let message = layout.stage_sides().unwrap_err();
    assert!(message.contains("stage 3"), "{message}");
    assert_eq!(
        TinyVitArgs::vit_t().stage_sides().unwrap(),
        vec![256, 128, 64, 64]
    );

    // A corrupt BatchNorm (negative variance) is refused at load, naming the tensor.
    let mut corrupt = tensors.clone();
    let key = "image_encoder.layers.1.blocks.0.local_conv.bn.running_var";
    corrupt.insert(key.into(), corrupt[key].affine(-1.0, 0.0).unwrap());
    let config = SamConfig::from_shapes(&shapes(&corrupt), None).unwrap();
    let message = Sam::from_tensors(corrupt, config, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains(key) && message.contains("negative variance"),
        "{message}"
    );

    // A config file with a misspelt TinyViT argument says what it expected.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("encoder.json");
    std::fs::write(
        &path,
        r#"{"embed_dims": [64, 128, 160, 320], "depth": [2, 2, 6, 2]}"#,
    )
    .unwrap();
    let message = EncoderSpec::from_file(&path).unwrap_err().to_string();
    assert!(
        message.contains("encoder.json") && message.contains("not a TinyViT encoder config"),
        "{message}"
    );
}

#[test]
fn the_tiny_vit_embedding_equals_the_official_mobile_sam_encoder() {
    check_resizing_and_embeddings(MobileSam);
}

#[test]
fn mobile_sam_prompt_cases_equal_the_official_predictor() {
    check_prompt_cases(MobileSam, 3);
}
