//! CLOUDS' self-training loop on a tiny segmenter: the EMA rule, the two
//! views, the mixed batch, resuming with the teacher in the checkpoint, and
//! training the head itself (the official case) instead of an adapter.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use semla_adapters::Adaptation;
use semla_core::SplitMix64;
use semla_data::{InMemorySource, Sample, SampleSource};
use semla_models::tiny::TinySegConfig;
use semla_models::{Segmenter, SegmenterConfig};
use semla_selftrain::{
    EmaSettings, EmaTeacher, PromptRefiner, RefineSettings, RegionGrowing, SelfTrainSettings,
    SelfTraining, Student, self_train, self_train_adapter,
};
use semla_test_support::max_abs_diff;
use semla_train::augment::AugmentConfig;
use semla_train::lora::{LoraSettings, LoraTrainee};
use semla_train::runs::with_trainable_part;
use semla_train::trainer::{Session, Steps, TrainConfig, make_batch};

const IGNORE: u32 = 255;

/// `count` images of `size`x`size`: grey with a coloured square (class 1-3 by colour).
fn toy(count: usize, size: usize, seed: u64, tint: f32) -> InMemorySource {
    let colours = [
        [0.5, 0.5, 0.5],
        [0.9, 0.1, 0.1],
        [0.1, 0.8, 0.1],
        [0.1, 0.2, 0.9],
    ];
    let mut rng = SplitMix64::new(seed);
    let pixels = size * size;
    let samples = (0..count)
        .map(|_| {
            let class = 1 + rng.below(3);
            let (top, left) = (rng.below(size / 2), rng.below(size / 2));
            let labels: Vec<u32> = (0..pixels)
                .map(|p| {
                    let (y, x) = (p / size, p % size);
                    let inside =
                        (top..top + size / 2).contains(&y) && (left..left + size / 2).contains(&x);
                    if inside { class as u32 } else { 0 }
                })
                .collect();
            let mut image = vec![0f32; 3 * pixels];
            for p in 0..pixels {
                for c in 0..3 {
                    let v = colours[labels[p] as usize][c] + tint + rng.uniform(-0.05, 0.05) as f32;
                    image[c * pixels + p] = v.clamp(0.0, 1.0);
                }
            }
            Sample {
                image,
                labels,
                height: size,
                width: size,
            }
        })
        .collect();
    InMemorySource::new(samples, 4, IGNORE)
}

/// A tiny segmenter with seeded random weights as plain (frozen) tensors.
fn frozen_tiny() -> Box<dyn Segmenter> {
    let config = SegmenterConfig::Tiny(TinySegConfig {
        num_classes: 4,
        width: 8,
        class_names: Vec::new(),
    });
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = config.build(&vb).unwrap();
    semla_train::runs::reseed_varmap(&varmap, 3, &Default::default()).unwrap();
    let tensors: HashMap<String, Tensor> = model
        .named_tensors()
        .into_iter()
        .map(|(k, v)| (k, v.detach().copy().unwrap()))
        .collect();
    config
        .build(&VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu))
        .unwrap()
}

fn student(base: &dyn Segmenter) -> LoraTrainee {
    let settings = LoraSettings {
        rank: 2,
        alpha: 2.0,
        ..LoraSettings::default()
    };
    LoraTrainee::new(&base.sites(), &settings, 11, &Device::Cpu).unwrap()
}

fn config(steps: usize, crop: usize) -> TrainConfig {
    let mut c = TrainConfig::new(steps, 2, 1e-2);
    c.seed = 5;
    c.augment = AugmentConfig {
        crop: Some((crop, crop)),
        ..AugmentConfig::default()
    };
    c
}

fn ema(every: usize) -> SelfTrainSettings {
    SelfTrainSettings {
        target_per_step: 2,
        ema: EmaSettings { alpha: 0.9, every },
    }
}

#[test]
fn the_teacher_moves_only_every_k_steps_by_the_official_formula() {
    let base = frozen_tiny();
    let student = student(base.as_ref());
    let mut teacher = EmaTeacher::new(
        &student.params(),
        EmaSettings {
            alpha: 0.9,
            every: 2,
        },
    )
    .unwrap();
    let before: Vec<(String, Tensor)> = teacher.tensors();
    // The student moves: A + 1, B = 0.5.
    for site in student.sites() {
        site.a.set(&(site.a.as_tensor() + 1.0).unwrap()).unwrap();
        site.b
            .set(&(site.b.as_tensor().ones_like().unwrap() * 0.5).unwrap())
            .unwrap();
    }
    assert!(!teacher.after_step(0, &student.params()).unwrap());
    for ((_, a), (_, b)) in teacher.tensors().iter().zip(&before) {
        assert_eq!(max_abs_diff(a, b), 0.0);
    }
    assert!(teacher.after_step(1, &student.params()).unwrap());
    assert_eq!(teacher.updates(), 1);
    // 0.9 * teacher + 0.1 * student: A0 + 0.1, and B = 0.1 * 0.5.
    for ((name, now), (_, old)) in teacher.tensors().iter().zip(&before) {
        let expected = if name.ends_with("lora_A.weight") {
            (old + 0.1).unwrap()
        } else {
            (old.ones_like().unwrap() * 0.05).unwrap()
        };
        assert!(max_abs_diff(now, &expected) < 1e-6, "{name}");
    }
    assert!(
        EmaTeacher::new(
            &student.params(),
            EmaSettings {
                alpha: 1.5,
                every: 2
            }
        )
        .is_err()
    );
    assert!(
        EmaTeacher::new(
            &student.params(),
            EmaSettings {
                alpha: 0.9,
                every: 0
            }
        )
        .is_err()
    );
}

#[test]
fn the_teacher_labels_the_clean_view_and_the_student_trains_on_the_distorted_one() {
    let base = frozen_tiny();
    let student = student(base.as_ref());
    let target = toy(3, 16, 1, 0.0);
    // A 20x20 crop of 16x16 images: the padding must come out ignored.
    let cfg = config(4, 20);
    let mut steps = SelfTraining::new(
        Student::Adapter {
            base: base.as_ref(),
            lora: &student,
        },
        None,
        &target,
        None,
        &cfg,
        ema(2),
        &Device::Cpu,
    )
    .unwrap();
    let views = steps.target_views(0).unwrap();
    let batch = steps.batch(0).unwrap();
    let norm = base.normalization();
    let clean: Vec<&Sample> = views.iter().map(|(c, _)| c).collect();
    let distorted: Vec<&Sample> = views.iter().map(|(_, s)| s).collect();
    // The student's images are the distorted views, not the clean ones.
    let student_images = norm.batch(&distorted, &Device::Cpu).unwrap();
    assert_eq!(max_abs_diff(&batch.images, &student_images), 0.0);
    assert!(views.iter().any(|(c, s)| c.image != s.image));
    // The labels are the teacher's (at the start: the base's) argmax of the clean views.
    let logits = base
        .forward(
            &norm.batch(&clean, &Device::Cpu).unwrap(),
            &Adaptation::none(),
        )
        .unwrap();
    let argmax = logits.argmax(1).unwrap().to_dtype(DType::U32).unwrap();
    let argmax = argmax.flatten_all().unwrap().to_vec1::<u32>().unwrap();
    let labels = batch
        .labels
        .flatten_all()
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    let padding: Vec<u32> = clean.iter().flat_map(|c| c.labels.clone()).collect();
    let mut padded = 0;
    for ((&l, &a), &p) in labels.iter().zip(&argmax).zip(&padding) {
        if p == IGNORE {
            assert_eq!(l, IGNORE);
            padded += 1;
        } else {
            assert_eq!(l, a);
        }
    }
    assert_eq!(padded, 2 * (20 * 20 - 16 * 16));
    assert_eq!(steps.stats().images, 2);
}

#[test]
fn a_mixed_batch_puts_the_labelled_source_first() {
    let base = frozen_tiny();
    let student = student(base.as_ref());
    let source = toy(4, 16, 2, 0.0);
    let target = toy(3, 16, 3, 0.2);
    let cfg = config(4, 16);
    let mut steps = SelfTraining::new(
        Student::Adapter {
            base: base.as_ref(),
            lora: &student,
        },
        Some(&source),
        &target,
        None,
        &cfg,
        ema(2),
        &Device::Cpu,
    )
    .unwrap();
    let batch = steps.batch(1).unwrap();
    assert_eq!(batch.images.dims(), &[4, 3, 16, 16]);
    let supervised = make_batch(&source, &cfg, &base.normalization(), 1, &Device::Cpu).unwrap();
    let head = batch.labels.narrow(0, 0, 2).unwrap();
    assert_eq!(
        max_abs_diff(
            &head.to_dtype(DType::F32).unwrap(),
            &supervised.labels.to_dtype(DType::F32).unwrap()
        ),
        0.0
    );
    // Mismatched sizes are a clear error.
    let small = toy(2, 12, 4, 0.0);
    let mut uncropped = cfg.clone();
    uncropped.augment = AugmentConfig::none();
    let mut steps = SelfTraining::new(
        Student::Adapter {
            base: base.as_ref(),
            lora: &student,
        },
        Some(&small),
        &target,
        None,
        &uncropped,
        ema(2),
        &Device::Cpu,
    )
    .unwrap();
    let Err(err) = steps.batch(0) else {
        panic!("a 12x12 source and 16x16 target were batched")
    };
    let err = err.to_string();
    assert!(err.contains("12x12") && err.contains("16x16"), "{err}");
}

fn factors(lora: &LoraTrainee) -> Vec<Tensor> {
    lora.factors()
        .into_iter()
        .flat_map(|(_, a, b)| [a, b])
        .collect()
}

#[test]
fn self_training_resumes_exactly_with_the_teacher_in_the_checkpoint() {
    let base = frozen_tiny();
    let source = toy(4, 16, 2, 0.0);
    let target = toy(4, 16, 3, 0.2);
    let cfg = config(6, 16);
    let refiner = PromptRefiner {
        proposer: RegionGrowing::default(),
        settings: RefineSettings {
            min_area_px: 20,
            ..RefineSettings::default()
        },
    };
    let run = |session: &Session<'_>, lora: &LoraTrainee| {
        self_train_adapter(
            base.as_ref(),
            lora,
            &Device::Cpu,
            Some(&source),
            &target,
            Some(&refiner),
            &cfg,
            &ema(2),
            session,
            &mut |_| {},
        )
        .unwrap()
    };
    let straight = student(base.as_ref());
    let straight_dir = tempfile::tempdir().unwrap();
    let whole = Session {
        checkpoint_dir: Some(straight_dir.path()),
        resume: false,
        stop_at: None,
    };
    let (_, stats) = run(&whole, &straight);
    assert_eq!(stats.teacher_updates, 3);
    assert_eq!(stats.images, 12);
    assert!(stats.prompts > 0, "{stats:?}");

    let dir = tempfile::tempdir().unwrap();
    let resumed = student(base.as_ref());
    let first = Session {
        checkpoint_dir: Some(dir.path()),
        resume: true,
        stop_at: Some(3),
    };
    run(&first, &resumed);
    let second = Session {
        checkpoint_dir: Some(dir.path()),
        resume: true,
        stop_at: None,
    };
    let (summary, stats) = run(&second, &resumed);
    assert_eq!(summary.start_step, 3);
    // Of steps 4-6 (1-based), 4 and 6 update the teacher.
    assert_eq!(stats.teacher_updates, 2);
    for (a, b) in factors(&straight).iter().zip(&factors(&resumed)) {
        assert_eq!(max_abs_diff(a, b), 0.0);
    }
    // The teacher went through the checkpoint: the same after 3 + 3 steps as after 6.
    let teacher = |dir: &std::path::Path| {
        let path = semla_train::trainer::CheckpointPaths::new(dir).run_state;
        candle_core::safetensors::load(path, &Device::Cpu).unwrap()
    };
    let (a, b) = (teacher(straight_dir.path()), teacher(dir.path()));
    assert!(a.len() > 2 && a.len() == b.len());
    for (name, t) in &a {
        let t = t.to_dtype(DType::F32).unwrap();
        assert_eq!(
            max_abs_diff(&t, &b[name].to_dtype(DType::F32).unwrap()),
            0.0,
            "{name}"
        );
    }
    // The student moved away from its initial factors, and so did the teacher.
    let fresh = student(base.as_ref());
    assert!(
        factors(&fresh)
            .iter()
            .zip(&factors(&straight))
            .any(|(x, y)| max_abs_diff(x, y) > 0.0)
    );
}

fn named(model: &dyn Segmenter) -> HashMap<String, Tensor> {
    model
        .named_tensors()
        .into_iter()
        .map(|(k, v)| (k, v.detach().copy().unwrap()))
        .collect()
}

#[test]
fn a_trainable_head_copy_predicts_as_the_model_and_owns_its_weights() {
    let base = frozen_tiny();
    let config = base.config();
    let (copy, params) =
        with_trainable_part(base.as_ref(), &|n| config.is_head_weight(n), &Device::Cpu).unwrap();
    let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "classifier.bias",
            "classifier.weight",
            "head.bias",
            "head.weight",
            "skip.bias",
            "skip.weight"
        ]
    );
    let sample = toy(1, 16, 9, 0.0).sample(0).unwrap();
    let images = base
        .normalization()
        .batch(&[&sample], &Device::Cpu)
        .unwrap();
    let before = base.forward(&images, &Adaptation::none()).unwrap();
    assert_eq!(
        max_abs_diff(
            &copy.forward(&images, &Adaptation::none()).unwrap(),
            &before
        ),
        0.0
    );
    // Moving the copy's head moves its predictions (the variables are the
    // weights it computes with) and leaves the original as it was.
    for (_, var) in &params {
        var.set(&var.as_tensor().zeros_like().unwrap()).unwrap();
    }
    let zeroed = copy.forward(&images, &Adaptation::none()).unwrap();
    assert_eq!(semla_test_support::max_abs(&zeroed), 0.0);
    assert_eq!(
        max_abs_diff(
            &base.forward(&images, &Adaptation::none()).unwrap(),
            &before
        ),
        0.0
    );
    assert!(with_trainable_part(base.as_ref(), &|_| false, &Device::Cpu).is_err());
}

#[test]
fn self_training_the_head_moves_only_the_head_and_resumes_exactly() {
    let base = frozen_tiny();
    let model_config = base.config();
    let source = toy(4, 16, 2, 0.0);
    let target = toy(4, 16, 3, 0.2);
    let cfg = config(4, 16);
    let head = |n: &str| model_config.is_head_weight(n);
    let run =
        |model: &dyn Segmenter, params: &[(String, candle_core::Var)], session: &Session<'_>| {
            self_train(
                Student::Weights { model, params },
                &Device::Cpu,
                Some(&source),
                &target,
                None,
                &cfg,
                &ema(2),
                session,
                &mut |_| {},
            )
            .unwrap()
        };
    let (straight, straight_params) =
        with_trainable_part(base.as_ref(), &head, &Device::Cpu).unwrap();
    let straight_dir = tempfile::tempdir().unwrap();
    let (_, stats) = run(
        straight.as_ref(),
        &straight_params,
        &Session {
            checkpoint_dir: Some(straight_dir.path()),
            resume: false,
            stop_at: None,
        },
    );
    assert_eq!(stats.teacher_updates, 2);
    let (before, after) = (named(base.as_ref()), named(straight.as_ref()));
    for (name, value) in &before {
        let moved = max_abs_diff(value, &after[name]) > 0.0;
        assert_eq!(moved, model_config.is_head_weight(name), "{name}");
    }
    // The teacher's head is in the checkpoint, under the weights' own names.
    let state = candle_core::safetensors::load(
        semla_train::trainer::CheckpointPaths::new(straight_dir.path()).run_state,
        &Device::Cpu,
    )
    .unwrap();
    assert!(
        state.contains_key("teacher.classifier.weight"),
        "{:?}",
        state.keys()
    );
    assert!(!state.contains_key("teacher.stem.conv.weight"));

    let (resumed, resumed_params) =
        with_trainable_part(base.as_ref(), &head, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for stop_at in [Some(2), None] {
        run(
            resumed.as_ref(),
            &resumed_params,
            &Session {
                checkpoint_dir: Some(dir.path()),
                resume: true,
                stop_at,
            },
        );
    }
    let resumed_after = named(resumed.as_ref());
    for (name, value) in &after {
        assert_eq!(max_abs_diff(value, &resumed_after[name]), 0.0, "{name}");
    }
}
