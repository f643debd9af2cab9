//! Time of one adapter training step (forward, loss, backward, AdamW) on a
//! frozen base, with the frozen layers' input-only backward on and off
//! (`semla_adapters::frozen`), for the tiny segmenter and the
//! EfficientNet-Lite0 segmenter. Run with
//! `cargo bench -p semla-train --bench adapter_step [-- STEPS]`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use semla_models::efficientnet::EfficientLiteSegConfig;
use semla_models::tiny::TinySegConfig;
use semla_models::{Segmenter, SegmenterConfig};
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
        weights: None,
    }
}

/// Median seconds per step and gradient-store size (f32 values held after
/// backward) with the frozen path off and on. The two settings alternate step
/// by step so that load from other processes hits both alike.
fn measure(base: &dyn Segmenter, batch: &Batch, steps: usize) -> [(f64, usize); 2] {
    let lora = LoraTrainee::new(&base.sites(), &LoraSettings::default(), 0, &Device::Cpu).unwrap();
    let trainee = adapter_trainee(base, &lora, &Device::Cpu);
    let mut opt = AdamW::new(&trainee.params, AdamWConfig::default()).unwrap();
    let mut times = [Vec::new(), Vec::new()];
    let mut stored = [0usize; 2];
    for i in 0..2 * (steps + 1) {
        let enabled = i % 2 == 1;
        semla_adapters::frozen::set_enabled(enabled);
        let start = Instant::now();
        let (_, grads) = loss_and_gradients(&trainee, batch, 255).unwrap();
        opt.step(&grads, 1e-3, 1.0).unwrap();
        let elapsed = start.elapsed().as_secs_f64();
        stored[enabled as usize] = grads
            .get_ids()
            .filter_map(|id| grads.get_id(*id))
            .map(|t| t.elem_count())
            .sum();
        if i >= 2 {
            times[enabled as usize].push(elapsed);
        }
    }
    semla_adapters::frozen::set_enabled(true);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    [
        (median(&mut times[0]), stored[0]),
        (median(&mut times[1]), stored[1]),
    ]
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
        let [(plain, plain_stored), (with_op, op_stored)] = measure(base.as_ref(), &b, steps);
        println!(
            "{name:28} median step: plain candle ops {:7.1} ms, frozen op {:7.1} ms ({:.2}x); \
             gradients held: {:.1} M -> {:.1} M values",
            plain * 1e3,
            with_op * 1e3,
            plain / with_op,
            plain_stored as f64 / 1e6,
            op_stored as f64 / 1e6
        );
    }
}
