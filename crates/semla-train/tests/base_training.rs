//! Base training really learns: a few hundred steps on a generated toy task
//! cut the loss and reach a good mIoU on held-out images.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

mod common;

use candle_core::Device;
use semla_adapters::Adaptation;
use semla_experiments::evaluate;
use semla_metrics::Definition;
use semla_train::augment::AugmentConfig;
use semla_train::runs::train_base;
use semla_train::trainer::{Session, TrainConfig};

#[test]
fn base_training_learns_the_toy_task() {
    let train = common::toy_task(64, 32, 1, [0.0; 3]);
    let held_out = common::toy_task(16, 32, 2, [0.0; 3]);
    let (model, varmap) = common::trainable_tiny(8, 11);
    let before = evaluate(
        model.as_ref(),
        &Adaptation::none(),
        &held_out,
        Definition::Detectron2,
        None,
        &Device::Cpu,
        &mut semla_core::NoProgress,
    )
    .unwrap();
    let mut config = TrainConfig::new(200, 4, 1e-2);
    config.warmup_steps = 10;
    config.seed = 5;
    config.augment = AugmentConfig {
        min_scale: 0.75,
        max_scale: 1.25,
        flip_probability: 0.5,
        crop: Some((32, 32)),
    };
    let mut reported = 0;
    let summary = train_base(
        model.as_ref(),
        &varmap,
        &Device::Cpu,
        &train,
        &config,
        &Session::default(),
        &mut |p| {
            reported += 1;
            assert_eq!(p.step, reported);
        },
    )
    .unwrap();
    assert_eq!(reported, 200);
    let first: f32 = summary.losses[..20].iter().sum::<f32>() / 20.0;
    let last: f32 = summary.losses[180..].iter().sum::<f32>() / 20.0;
    let after = evaluate(
        model.as_ref(),
        &Adaptation::none(),
        &held_out,
        Definition::Detectron2,
        None,
        &Device::Cpu,
        &mut semla_core::NoProgress,
    )
    .unwrap();
    eprintln!(
        "loss {first:.3} -> {last:.3}; held-out mIoU {:.3} -> {:.3}",
        before.miou(),
        after.miou()
    );
    assert!(last < 0.3 * first, "loss only went from {first} to {last}");
    assert!(
        after.miou() > 0.75,
        "held-out mIoU {} (before training {})",
        after.miou(),
        before.miou()
    );
}
