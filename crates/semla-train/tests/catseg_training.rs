//! One CAT-Seg training step against the official code: the tiny L model of
//! `semla-models/tests/fixtures/catseg` under `adapter_tiny_l` loaded trainable
//! by peft, `CATSeg.forward` in training mode on the fixture photo and
//! `train_labels.png`, then `backward`
//! (`tools/reference/catseg_reference.py`, `training_fixture`). The loss and
//! the gradient of every LoRA factor must match.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use semla_models::Segmenter;
use semla_models::catseg::{CatSeg, CatSegConfig};
use semla_train::lora::{LoraSettings, LoraTrainee, peft_key};
use semla_train::runs::adapter_trainee;
use semla_train::trainer::{Batch, loss_and_gradients};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../semla-models/tests/fixtures/catseg")
}

fn tiny_l() -> CatSeg {
    let tensors = semla_test_support::tensors_from_keys(&fixtures().join("keys_tiny_l.json"));
    let shapes = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    let config = CatSegConfig::from_yaml(&fixtures().join("tiny_l.yaml"), &shapes).unwrap();
    let mut model = semla_models::catseg::from_tensors(tensors, &config, &Device::Cpu).unwrap();
    let classes: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("classes.json")).unwrap())
            .unwrap();
    model.set_classes(&classes).unwrap();
    model
}

#[test]
fn a_catseg_lora_step_has_the_official_loss_and_gradients() {
    let model = tiny_l();
    let adapter = semla_adapters::peft::load_adapter(&fixtures().join("adapter_tiny_l")).unwrap();
    let settings = LoraSettings {
        rank: adapter.config.r,
        alpha: adapter.config.lora_alpha,
        targets: adapter.sites.keys().cloned().collect(),
        use_rslora: false,
    };
    let lora = LoraTrainee::new(&model.sites(), &settings, 0, &Device::Cpu).unwrap();
    assert_eq!(lora.sites().len(), adapter.sites.len());
    // Start from the adapter's factors, as `PeftModel.from_pretrained(is_trainable=True)`.
    for site in lora.sites() {
        let factors = &adapter.sites[&site.site.path];
        site.a.set(&factors.a).unwrap();
        site.b.set(&factors.b).unwrap();
    }

    let rgb = semla_data::image_io::read_rgb(&fixtures().join("image.png")).unwrap();
    let images = model.normalization().image(&rgb, &Device::Cpu).unwrap();
    let labels = semla_data::labels::read_label_map(&fixtures().join("train_labels.png")).unwrap();
    let (h, w) = (labels.height as usize, labels.width as usize);
    let labels = Tensor::from_vec(
        labels
            .values
            .iter()
            .map(|&v| u32::from(v))
            .collect::<Vec<_>>(),
        (1, h, w),
        &Device::Cpu,
    )
    .unwrap();
    let trainee = adapter_trainee(&model, &lora, &Device::Cpu);
    let (loss, grads) = loss_and_gradients(
        &trainee,
        &Batch {
            images,
            labels,
            weights: None,
        },
        255,
    )
    .unwrap();

    let want: HashMap<String, Tensor> = candle_core::safetensors::load(
        fixtures().join("training_tiny_l_adapter.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let want_loss: Vec<f32> = want["loss"].to_vec1().unwrap();
    eprintln!("loss {loss} (official {})", want_loss[0]);
    assert!(
        (loss - want_loss[0]).abs() < 1e-5,
        "loss {loss} vs {}",
        want_loss[0]
    );

    let (mut worst, mut zero_sites) = (0f32, 0);
    for site in lora.sites() {
        for (factor, var) in [("A", &site.a), ("B", &site.b)] {
            let key = format!("grad.{}", peft_key(&site.site.path, factor));
            let expected = &want[&key];
            let scale = semla_test_support::max_abs(expected);
            // A factor the forward never reads (the inert q/k/v LoRAs of SemLA's
            // CLIP attention) has no gradient on either side.
            let got = match grads.get(var.as_tensor()) {
                Some(g) => g.clone(),
                None => var.as_tensor().zeros_like().unwrap(),
            };
            let err = semla_test_support::max_abs_diff(&got, expected);
            eprintln!("{key:<110} max abs {err:.2e} (scale {scale:.2e})");
            assert!(
                // 1e-6 absolute: 1e-4 of the largest gradient (about 1e-2);
                // float32 accumulation leaves up to about 1e-7 here.
                err <= 1e-6,
                "{key}: {err} vs scale {scale}"
            );
            worst = worst.max(err);
            if scale == 0.0 {
                zero_sites += 1;
            }
        }
    }
    eprintln!("worst gradient error {worst:.2e}");
    // The two q/v LoRAs of the CLIP attention: A and B each.
    assert_eq!(zero_sites, 4);
}
