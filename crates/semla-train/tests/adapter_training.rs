//! Adapter training on a frozen base: every LoRA tensor gets a gradient, the
//! base's weights never change (bitwise) and never get a gradient.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

mod common;

use candle_core::Device;
use semla_adapters::Adaptation;
use semla_experiments::evaluate;
use semla_metrics::Definition;
use semla_train::augment::AugmentConfig;
use semla_train::lora::{LoraSettings, LoraTrainee};
use semla_train::runs::{adapter_trainee, train_adapter, train_base};
use semla_train::trainer::{Session, TrainConfig, loss_and_gradients, make_batch};

fn grad_norm(grads: &candle_core::backprop::GradStore, t: &candle_core::Tensor) -> Option<f32> {
    grads.get(t).map(|g| {
        g.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .sqrt()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    })
}

#[test]
fn only_the_adapter_learns_and_the_base_stays_bitwise_frozen() {
    let (trained, _varmap) = common::trainable_tiny(8, 3);
    let base = common::frozen_copy(trained.as_ref());
    for (name, t) in base.named_tensors() {
        assert!(
            !t.is_variable() && !t.track_op(),
            "{name} of the frozen base tracks gradients"
        );
    }
    let before = common::weight_bits(base.as_ref());
    let settings = LoraSettings {
        rank: 4,
        alpha: 8.0,
        ..Default::default()
    };
    let lora = LoraTrainee::new(&base.sites(), &settings, 1, &Device::Cpu).unwrap();
    assert_eq!(lora.sites().len(), base.sites().len());
    let source = common::toy_task(16, 32, 3, [0.15, -0.1, 0.05]);
    let mut config = TrainConfig::new(6, 2, 1e-2);
    config.augment = AugmentConfig {
        crop: Some((32, 32)),
        ..AugmentConfig::default()
    };
    let trainee = adapter_trainee(base.as_ref(), &lora, &Device::Cpu);
    let batch = make_batch(&source, &config, &trainee.normalization, 0, &Device::Cpu).unwrap();

    // At initialisation B = 0, so only B has a gradient (dL/dA = B^T ... = 0).
    let (_, grads) = loss_and_gradients(&trainee, &batch, common::IGNORE).unwrap();
    for (name, var) in lora.params() {
        let norm = grad_norm(&grads, var.as_tensor()).unwrap_or(0.0);
        if name.contains("lora_B") {
            assert!(norm > 0.0, "{name} has no gradient at initialisation");
        } else {
            assert_eq!(
                norm, 0.0,
                "{name}: A's gradient must vanish while B is zero"
            );
        }
    }
    for (name, t) in base.named_tensors() {
        assert!(
            grads.get(&t).is_none(),
            "the gradient store holds a gradient for frozen {name}"
        );
    }
    drop(grads);

    train_adapter(
        base.as_ref(),
        &lora,
        &Device::Cpu,
        &source,
        &config,
        &Session::default(),
        &mut |_| {},
    )
    .unwrap();

    let (_, grads) = loss_and_gradients(&trainee, &batch, common::IGNORE).unwrap();
    for (name, var) in lora.params() {
        let norm = grad_norm(&grads, var.as_tensor()).unwrap_or(0.0);
        assert!(
            norm > 0.0 && norm.is_finite(),
            "{name} has gradient norm {norm} after training"
        );
    }
    for (name, t) in base.named_tensors() {
        assert!(
            grads.get(&t).is_none(),
            "the gradient store holds a gradient for frozen {name}"
        );
    }
    assert_eq!(
        common::weight_bits(base.as_ref()),
        before,
        "a frozen weight changed"
    );
    for s in lora.sites() {
        let b: Vec<f32> = s.b.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            b.iter().any(|&v| v != 0.0),
            "B of {} did not move",
            s.site.path
        );
    }
}

/// An adapter trained on a shifted domain improves the frozen base there,
/// which the base's own training never saw.
#[test]
fn adapter_recovers_a_domain_shift() {
    let (model, varmap) = common::trainable_tiny(8, 21);
    let clean = common::toy_task(48, 32, 4, [0.0; 3]);
    let mut config = TrainConfig::new(200, 4, 1e-2);
    config.warmup_steps = 10;
    config.augment = AugmentConfig {
        min_scale: 0.8,
        max_scale: 1.25,
        flip_probability: 0.5,
        crop: Some((32, 32)),
    };
    train_base(
        model.as_ref(),
        &varmap,
        &Device::Cpu,
        &clean,
        &config,
        &Session::default(),
        &mut |_| {},
    )
    .unwrap();
    let base = common::frozen_copy(model.as_ref());
    // A strong colour cast: red and grey blur together.
    let tint = [0.3, -0.25, -0.25];
    let shifted = common::toy_task(32, 32, 5, tint);
    let shifted_test = common::toy_task(12, 32, 6, tint);
    let dev = Device::Cpu;
    let base_score = evaluate(
        base.as_ref(),
        &Adaptation::none(),
        &shifted_test,
        Definition::Detectron2,
        None,
        &dev,
        &mut semla_core::NoProgress,
    )
    .unwrap();
    // Rank 4: the toy classifier has 4 outputs, and a LoRA rank can be at most
    // min(in, out) of every site.
    let settings = LoraSettings {
        rank: 4,
        alpha: 8.0,
        ..Default::default()
    };
    let lora = LoraTrainee::new(&base.sites(), &settings, 2, &dev).unwrap();
    let mut config = TrainConfig::new(120, 4, 1e-2);
    config.warmup_steps = 5;
    config.augment = AugmentConfig {
        crop: Some((32, 32)),
        ..AugmentConfig::none()
    };
    train_adapter(
        base.as_ref(),
        &lora,
        &dev,
        &shifted,
        &config,
        &Session::default(),
        &mut |_| {},
    )
    .unwrap();
    let adapted = evaluate(
        base.as_ref(),
        lora.adaptation(),
        &shifted_test,
        Definition::Detectron2,
        None,
        &dev,
        &mut semla_core::NoProgress,
    )
    .unwrap();
    eprintln!(
        "shifted domain mIoU: base {:.3}, with adapter {:.3}",
        base_score.miou(),
        adapted.miou()
    );
    assert!(
        adapted.miou() > base_score.miou() + 0.05,
        "{} vs {}",
        adapted.miou(),
        base_score.miou()
    );
}

/// The same checks on the EfficientNet-Lite0 segmenter (random weights, a
/// small input), with LoRA on all of its 1x1 convolution sites.
#[test]
fn efficientnet_adapter_training_keeps_the_base_frozen() {
    use semla_models::SegmenterConfig;
    use semla_models::efficientnet::EfficientLiteSegConfig;
    let config = SegmenterConfig::EfficientLite0(EfficientLiteSegConfig::new(4));
    let (trained, _varmap) =
        semla_train::runs::build_trainable(&config, None, 4, &Device::Cpu).unwrap();
    let base = common::frozen_copy(trained.as_ref());
    let before = common::weight_bits(base.as_ref());
    let sites = base.sites();
    assert!(sites.len() > 20, "only {} sites", sites.len());
    let settings = LoraSettings {
        rank: 2,
        alpha: 4.0,
        ..Default::default()
    };
    let lora = LoraTrainee::new(&sites, &settings, 1, &Device::Cpu).unwrap();
    let source = common::toy_task(4, 64, 9, [0.0; 3]);
    let mut train_config = TrainConfig::new(2, 1, 1e-3);
    train_config.augment = AugmentConfig::none();
    train_adapter(
        base.as_ref(),
        &lora,
        &Device::Cpu,
        &source,
        &train_config,
        &Session::default(),
        &mut |_| {},
    )
    .unwrap();
    let trainee = adapter_trainee(base.as_ref(), &lora, &Device::Cpu);
    let batch = make_batch(
        &source,
        &train_config,
        &trainee.normalization,
        5,
        &Device::Cpu,
    )
    .unwrap();
    let (_, grads) = loss_and_gradients(&trainee, &batch, common::IGNORE).unwrap();
    for (name, var) in lora.params() {
        let norm = grad_norm(&grads, var.as_tensor()).unwrap_or(0.0);
        assert!(
            norm > 0.0 && norm.is_finite(),
            "{name} has gradient norm {norm}"
        );
    }
    // The adapter sites' frozen weights take the input-only backward.
    let site_weights: std::collections::HashSet<String> = sites
        .iter()
        .flat_map(|s| [format!("{}.weight", s.path), format!("{}.bias", s.path)])
        .collect();
    let mut other_with_gradient = 0;
    for (name, t) in base.named_tensors() {
        if grads.get(&t).is_some() {
            assert!(
                !site_weights.contains(&name),
                "frozen site weight {name} got a gradient"
            );
            other_with_gradient += 1;
        }
    }
    eprintln!("frozen non-site tensors with a stored gradient: {other_with_gradient}");
    assert_eq!(
        common::weight_bits(base.as_ref()),
        before,
        "a frozen weight changed"
    );
}
