//! Time of one adapter training step (forward, loss, backward, AdamW) on a
//! frozen base, with the frozen layers' input-only backward on and off
//! (`semla_adapters::frozen`), for the tiny segmenter and the
//! EfficientNet-Lite0 segmenter. Run with
//! `cargo bench -p semla-train --bench adapter_step [-- STEPS]`.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use semla_models::efficientnet::EfficientLiteSegConfig;
use semla_models::segmenter::{Segmenter, SegmenterConfig};
use semla_models::tiny::TinySegConfig;
use semla_train::lora::{LoraSettings, LoraTrainee};
use semla_train::optim::{AdamW, AdamWConfig};
use semla_train::runs::{adapter_trainee, build_trainable};
use semla_train::trainer::{Batch, loss_and_gradients};

fn frozen(config: &SegmenterConfig) -> Box<dyn Segmenter> {
    let (model, _varmap): (Box<dyn Segmenter>, VarMap) =
        build_trainable(config, None, 1, &Device::Cpu).unwrap();
    let tensors: HashMap<String, Tensor> = model
        .named_tensors()
        .into_iter()
        .map(|(k, v)| (k, v.detach().copy().unwrap()))
        .collect();
    config
        .build(&VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu))
        .unwrap()
}

fn batch(n: usize, h: usize, w: usize, classes: u32) -> Batch {
    let images = Tensor::randn(0f32, 1.0, (n, 3, h, w), &Device::Cpu).unwrap();
    let labels: Vec<u32> = (0..n * h * w).map(|i| (i as u32 / 7) % classes).collect();
    Batch {
        images,
        labels: Tensor::from_vec(labels, (n, h, w), &Device::Cpu).unwrap(),
    }
}

/// Mean seconds per step over `steps` steps after one warm-up step.
fn time_steps(base: &dyn Segmenter, batch: &Batch, steps: usize) -> f64 {
    let lora = LoraTrainee::new(&base.sites(), &LoraSettings::default(), 0, &Device::Cpu).unwrap();
    let trainee = adapter_trainee(base, &lora, &Device::Cpu);
    let mut opt = AdamW::new(&trainee.params, AdamWConfig::default()).unwrap();
    let mut run = || {
        let (_, grads) = loss_and_gradients(&trainee, batch, 255).unwrap();
        opt.step(&grads, 1e-3, 1.0).unwrap();
    };
    run();
    let start = Instant::now();
    for _ in 0..steps {
        run();
    }
    start.elapsed().as_secs_f64() / steps as f64
}

fn main() {
    let steps: usize = std::env::args()
        .filter_map(|a| a.parse().ok())
        .next()
        .unwrap_or(5);
    let models = [
        (
            "tiny (width 16)",
            SegmenterConfig::Tiny(TinySegConfig::new(11)),
        ),
        (
            "efficientnet-lite0 + lraspp",
            SegmenterConfig::EfficientLite0(EfficientLiteSegConfig::new(11)),
        ),
    ];
    println!("adapter training step, batch 4, 96x128 (HxW), LoRA r=8 on every site, {steps} steps");
    for (name, config) in models {
        let base = frozen(&config);
        let b = batch(4, 96, 128, 11);
        // Alternate the two settings so that warm-up and allocator effects
        // do not favour either; keep the best of two rounds of each.
        let (mut plain, mut with_op) = (f64::MAX, f64::MAX);
        for _ in 0..2 {
            semla_adapters::frozen::set_enabled(false);
            plain = plain.min(time_steps(base.as_ref(), &b, steps));
            semla_adapters::frozen::set_enabled(true);
            with_op = with_op.min(time_steps(base.as_ref(), &b, steps));
        }
        println!(
            "{name:30} plain candle ops {:7.1} ms   frozen op {:7.1} ms   speed-up {:.2}x",
            plain * 1e3,
            with_op * 1e3,
            plain / with_op
        );
    }
}
