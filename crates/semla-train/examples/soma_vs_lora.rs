//! SoMA-initialised adapters against standard LoRA at the same rank, alpha,
//! steps and learning rate, on the synthetic street world.
//!
//! A tiny segmenter is trained on the `clear` domain; then, for each target
//! domain, one adapter per method is trained on that domain's training images
//! and every model is scored (mIoU, cityscapes definition) on the domain's
//! validation images. Methods:
//!
//! - `lora`: PEFT init (Kaiming-uniform A, zero B), constant AdamW decay 0.01;
//! - `lora+cos`: the same with SoMA's cosine weight-decay annealing;
//! - `soma`: SoMA init (minor components, frozen residual) with the annealing.
//!
//! ```text
//! cargo run --release -p semla-train --example soma_vs_lora -- [--steps 150] [--base-steps 600] [--rank 4] [--seed 0] [--quick]
//! ```
//!
//! Prints a table and, on the last line, the same numbers as JSON.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use candle_core::Device;
use candle_nn::{VarBuilder, VarMap};
use semla_adapters::Adaptation;
use semla_data::synthetic::{NUM_CLASSES, Split, SyntheticWorld};
use semla_data::{InMemorySource, Sample};
use semla_experiments::evaluate;
use semla_metrics::Definition;
use semla_models::tiny::TinySegConfig;
use semla_models::{Segmenter, SegmenterConfig};
use semla_train::augment::AugmentConfig;
use semla_train::lora::{LoraSettings, LoraTrainee};
use semla_train::runs::{adapter_trainee, reseed_varmap, train_base};
use semla_train::soma::{SomaSettings, SomaTrainee, WeightDecayAnneal, train_annealed, train_soma};
use semla_train::trainer::{Session, TrainConfig};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const IGNORE: u32 = 255;
const WIDTH: u32 = 64;
const HEIGHT: u32 = 48;

fn domain_source(domain: &str, split: Split, count: usize) -> Result<InMemorySource> {
    let mut samples = Vec::with_capacity(count);
    for index in 0..count {
        let s = SyntheticWorld::generate_named(domain, split, index as u64, WIDTH, HEIGHT)?;
        let labels: Vec<u32> = s.labels.iter().map(|&l| u32::from(l)).collect();
        samples.push(Sample::from_rgb8(
            s.image.as_raw(),
            labels,
            HEIGHT as usize,
            WIDTH as usize,
        ));
    }
    Ok(InMemorySource::new(samples, NUM_CLASSES, IGNORE))
}

fn run_config(steps: usize, lr: f64, seed: u64) -> TrainConfig {
    let mut c = TrainConfig::new(steps, 8, lr);
    c.augment = AugmentConfig {
        crop: Some((HEIGHT as usize, WIDTH as usize)),
        min_scale: 1.0,
        max_scale: 1.25,
        ..AugmentConfig::default()
    };
    c.seed = seed;
    c
}

fn miou(model: &dyn Segmenter, adaptation: &Adaptation, source: &InMemorySource) -> Result<f64> {
    let report = evaluate(
        model,
        adaptation,
        source,
        Definition::Cityscapes,
        None,
        &Device::Cpu,
        &mut semla_core::NoProgress,
    )?;
    Ok(report.miou())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str, default: usize| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let quick = args.iter().any(|a| a == "--quick");
    let steps = get("--steps", if quick { 20 } else { 150 });
    let base_steps = get("--base-steps", if quick { 50 } else { 600 });
    let rank = get("--rank", 4);
    // Seed of the adapters' batches and LoRA init (the base model is always the same).
    let seed = get("--seed", 0) as u64;
    let train_images = get("--train-images", if quick { 16 } else { 64 });
    let val_images = get("--val-images", if quick { 8 } else { 40 });
    let alpha = 2.0 * rank as f64;
    let lr = 5e-3;
    let device = Device::Cpu;
    let started = std::time::Instant::now();

    // Base model on the source domain.
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &device);
    let config = SegmenterConfig::Tiny(TinySegConfig {
        num_classes: NUM_CLASSES,
        width: 16,
        class_names: Vec::new(),
    });
    let trained = config.build(&vb)?;
    reseed_varmap(&varmap, 7, &Default::default())?;
    let source = domain_source("clear", Split::Train, 2 * train_images)?;
    let summary = train_base(
        trained.as_ref(),
        &varmap,
        &device,
        &source,
        &run_config(base_steps, 1e-2, 1),
        &Session::default(),
        &mut |_| {},
    )?;
    eprintln!(
        "base: {} steps on clear in {:.1} s, final loss {:.3}",
        base_steps,
        summary.seconds,
        summary.losses.last().copied().unwrap_or(f32::NAN)
    );
    // A frozen copy (plain tensors) is the base every adapter starts from.
    let tensors: std::collections::HashMap<_, _> = trained
        .named_tensors()
        .into_iter()
        .map(|(k, v)| (k, v.detach()))
        .collect();
    let base = config.build(&VarBuilder::from_tensors(
        tensors,
        candle_core::DType::F32,
        &device,
    ))?;

    let lora_settings = LoraSettings {
        rank,
        alpha,
        ..Default::default()
    };
    let mut rows = Vec::new();
    println!(
        "rank {rank}, alpha {alpha}, {steps} steps, lr {lr}, batch 8, {WIDTH}x{HEIGHT}, {train_images} train / {val_images} val images per domain"
    );
    println!(
        "{:<10} {:>8} {:>8} {:>10} {:>8}",
        "domain", "base", "lora", "lora+cos", "soma"
    );
    let domains = if quick {
        vec!["clear", "fog"]
    } else {
        vec![
            "clear", "overcast", "night", "fog", "rain", "snow", "sunset", "desert",
        ]
    };
    for (d, domain) in domains.iter().enumerate() {
        let train = domain_source(domain, Split::Train, train_images)?;
        let val = domain_source(domain, Split::Val, val_images)?;
        let config = run_config(steps, lr, 100 + d as u64 + 1000 * seed);
        let base_miou = miou(base.as_ref(), &Adaptation::none(), &val)?;

        let plain = |decay: Option<WeightDecayAnneal>| -> Result<f64> {
            let lora = LoraTrainee::new(&base.sites(), &lora_settings, 3 + seed, &device)?;
            let trainee = adapter_trainee(base.as_ref(), &lora, &device);
            train_annealed(
                &trainee,
                &train,
                &config,
                decay,
                &Session::default(),
                &mut |_| {},
            )?;
            miou(base.as_ref(), lora.adaptation(), &val)
        };
        let lora_miou = plain(None)?;
        let lora_cos_miou = plain(Some(WeightDecayAnneal::soma(steps)))?;

        let soma = SomaTrainee::new(
            base.as_ref(),
            &SomaSettings {
                lora: lora_settings.clone(),
                freeze_blocks: 0,
            },
            3,
            &device,
        )?;
        train_soma(
            &soma,
            &device,
            &train,
            &config,
            Some(WeightDecayAnneal::soma(steps)),
            &Session::default(),
            &mut |_| {},
        )?;
        // Scored as stored: the rank-2r adapter on the ORIGINAL base.
        let adapter = soma.to_adapter(domain)?;
        let adaptation = Adaptation::from_adapters(&[&adapter], &[vec![1.0]])?;
        let soma_miou = miou(base.as_ref(), &adaptation, &val)?;
        println!(
            "{:<10} {:>8.2} {:>8.2} {:>10.2} {:>8.2}",
            domain,
            100.0 * base_miou,
            100.0 * lora_miou,
            100.0 * lora_cos_miou,
            100.0 * soma_miou
        );
        rows.push(serde_json::json!({
            "domain": domain,
            "base": base_miou,
            "lora": lora_miou,
            "lora_cosine_wd": lora_cos_miou,
            "soma": soma_miou,
        }));
    }
    let mean = |key: &str| {
        rows.iter().filter_map(|r| r[key].as_f64()).sum::<f64>() / rows.len().max(1) as f64
    };
    println!(
        "{:<10} {:>8.2} {:>8.2} {:>10.2} {:>8.2}",
        "mean",
        100.0 * mean("base"),
        100.0 * mean("lora"),
        100.0 * mean("lora_cosine_wd"),
        100.0 * mean("soma")
    );
    eprintln!("total {:.1} s", started.elapsed().as_secs_f64());
    println!(
        "{}",
        serde_json::json!({"rank": rank, "alpha": alpha, "steps": steps, "lr": lr, "seed": seed, "rows": rows})
    );
    Ok(())
}
