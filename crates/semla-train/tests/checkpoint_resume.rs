//! Train K steps, checkpoint, resume in a fresh process state, train K more:
//! the same as 2K steps straight.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

mod common;

use candle_core::Device;
use semla_test_support::max_abs_diff as max_tensor_diff;
use semla_train::augment::AugmentConfig;
use semla_train::lora::{LoraSettings, LoraTrainee};
use semla_train::runs::{train_adapter, train_base};
use semla_train::trainer::{CheckpointPaths, Session, TrainConfig, read_checkpoint_state};

fn config() -> TrainConfig {
    let mut c = TrainConfig::new(12, 2, 5e-3);
    c.warmup_steps = 3;
    c.seed = 99;
    c.augment = AugmentConfig {
        crop: Some((24, 24)),
        ..AugmentConfig::default()
    };
    c
}

fn max_abs_diff(a: &[(String, Vec<u32>)], b: &[(String, Vec<u32>)]) -> f32 {
    let mut worst = 0f32;
    for ((na, va), (nb, vb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        for (x, y) in va.iter().zip(vb) {
            worst = worst.max((f32::from_bits(*x) - f32::from_bits(*y)).abs());
        }
    }
    worst
}

#[test]
fn base_training_resumes_exactly() {
    let source = common::toy_task(10, 32, 7, [0.0; 3]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config();

    let (straight, straight_map) = common::trainable_tiny(8, 5);
    let full = train_base(
        straight.as_ref(),
        &straight_map,
        &Device::Cpu,
        &source,
        &cfg,
        &Session::default(),
        &mut |_| {},
    )
    .unwrap();

    let (first, first_map) = common::trainable_tiny(8, 5);
    let session = Session {
        checkpoint_dir: Some(dir.path()),
        resume: true,
        stop_at: Some(6),
    };
    let part1 = train_base(
        first.as_ref(),
        &first_map,
        &Device::Cpu,
        &source,
        &cfg,
        &session,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!((part1.start_step, part1.end_step), (0, 6));
    let state = read_checkpoint_state(dir.path()).unwrap();
    assert_eq!(
        (state.step, state.seed, state.optimizer_updates),
        (6, 99, 6)
    );

    // A new model with different initial weights: everything must come from the checkpoint.
    let (resumed, resumed_map) = common::trainable_tiny(8, 1234);
    let session = Session {
        checkpoint_dir: Some(dir.path()),
        resume: true,
        stop_at: None,
    };
    let part2 = train_base(
        resumed.as_ref(),
        &resumed_map,
        &Device::Cpu,
        &source,
        &cfg,
        &session,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!((part2.start_step, part2.end_step), (6, 12));

    let losses: Vec<f32> = part1.losses.iter().chain(&part2.losses).copied().collect();
    for (a, b) in losses.iter().zip(&full.losses) {
        assert!(
            (a - b).abs() <= 1e-5 * b.abs().max(1.0),
            "losses {losses:?} vs {:?}",
            full.losses
        );
    }
    let diff = max_abs_diff(
        &common::weight_bits(resumed.as_ref()),
        &common::weight_bits(straight.as_ref()),
    );
    assert!(
        diff < 1e-5,
        "resumed weights differ from straight training by {diff}"
    );
    // No temporary file is left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
}

#[test]
fn adapter_training_resumes_exactly_and_rejects_a_mixed_checkpoint() {
    let source = common::toy_task(10, 32, 8, [0.1, 0.0, -0.1]);
    let (model, _) = common::trainable_tiny(8, 6);
    let base = common::frozen_copy(model.as_ref());
    let settings = LoraSettings {
        rank: 2,
        alpha: 4.0,
        ..Default::default()
    };
    let cfg = config();
    let dev = Device::Cpu;

    let straight = LoraTrainee::new(&base.sites(), &settings, 3, &dev).unwrap();
    let full = train_adapter(
        base.as_ref(),
        &straight,
        &dev,
        &source,
        &cfg,
        &Session::default(),
        &mut |_| {},
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let first = LoraTrainee::new(&base.sites(), &settings, 3, &dev).unwrap();
    let session = Session {
        checkpoint_dir: Some(dir.path()),
        resume: true,
        stop_at: Some(6),
    };
    train_adapter(
        base.as_ref(),
        &first,
        &dev,
        &source,
        &cfg,
        &session,
        &mut |_| {},
    )
    .unwrap();
    let paths = CheckpointPaths::new(dir.path());
    let good_optimizer = std::fs::read(&paths.optimizer).unwrap();

    let resumed = LoraTrainee::new(&base.sites(), &settings, 77, &dev).unwrap();
    let session = Session {
        checkpoint_dir: Some(dir.path()),
        resume: true,
        stop_at: None,
    };
    let part2 = train_adapter(
        base.as_ref(),
        &resumed,
        &dev,
        &source,
        &cfg,
        &session,
        &mut |_| {},
    )
    .unwrap();
    for (a, b) in part2.losses.iter().zip(&full.losses[6..]) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0));
    }
    for ((pa, a1, b1), (_, a2, b2)) in resumed.factors().iter().zip(straight.factors()) {
        for (x, y) in [(a1, &a2), (b1, &b2)] {
            let d: f32 = max_tensor_diff(x, y);
            assert!(d < 1e-5, "{pa}: resumed factors differ by {d}");
        }
    }

    // The checkpoint now holds step 12; put back the step-6 optimizer file:
    // the set is inconsistent and resuming must refuse it.
    std::fs::write(&paths.optimizer, good_optimizer).unwrap();
    let again = LoraTrainee::new(&base.sites(), &settings, 3, &dev).unwrap();
    let mut longer = cfg.clone();
    longer.steps = 14;
    let err = train_adapter(
        base.as_ref(),
        &again,
        &dev,
        &source,
        &longer,
        &session,
        &mut |_| {},
    )
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("optimizer.safetensors") && message.contains("incomplete checkpoint"),
        "{message}"
    );
}
