//! SAM as CLOUDS' mask proposer, on the tiny random SAM whose outputs the
//! official `segment_anything` predictor wrote
//! (`crates/semla-models/tests/fixtures/sam/`, `tools/reference/sam_reference.py`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::path::{Path, PathBuf};

use semla_core::rng::SplitMix64;
use semla_models::sam::{Sam, SamConfig};
use semla_selftrain::{MaskProposer, RefineSettings, SamProposer, refine_pseudo_label};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../semla-models/tests/fixtures/sam")
}

fn proposer() -> SamProposer {
    let tensors = semla_test_support::tensors_from_keys(&fixtures().join("keys_sam_tiny.json"));
    let shapes = tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    let config = SamConfig::from_shapes(&shapes, None).unwrap();
    let sam = Sam::from_tensors(tensors, config, &candle_core::Device::Cpu).unwrap();
    SamProposer::new(sam).unwrap()
}

fn reference(key: &str) -> Vec<f32> {
    let outputs = candle_core::safetensors::load(
        fixtures().join("outputs_sam_tiny.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    outputs[key].flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn proposals_are_the_official_multimask_prediction_thresholded_at_zero() {
    let sam = proposer();
    let image = semla_data::image_io::read_rgb(&fixtures().join("image.png")).unwrap();
    let prepared = sam.prepare(&image).unwrap();
    // The fixture's "two_points" case.
    let proposals = sam
        .predict(&prepared, &[(20.0, 15.0), (60.5, 40.0)], &[1, 0])
        .unwrap();
    let logits = reference("two_points.logits");
    let iou = reference("two_points.iou");
    let plane = 57 * 83;
    for m in 0..3 {
        let official = &logits[m * plane..(m + 1) * plane];
        let ours = &proposals.masks[m];
        assert_eq!(ours.len(), plane);
        // Pixels on the decision boundary may flip within the 1e-4 agreement.
        let disagree = ours
            .iter()
            .zip(official)
            .filter(|(o, l)| **o != (**l > 0.0) && l.abs() > 1e-4)
            .count();
        assert_eq!(disagree, 0, "mask {m}");
        assert!((proposals.scores[m] - iou[m]).abs() < 1e-4);
    }
    let best = (0..3).max_by(|&a, &b| iou[a].total_cmp(&iou[b])).unwrap();
    assert_eq!(proposals.best(), proposals.masks[best].as_slice());
}

#[test]
fn refinement_with_sam_is_reproducible_and_keeps_only_the_prompted_classes() {
    let sam = proposer();
    let image = semla_data::image_io::read_rgb(&fixtures().join("image.png")).unwrap();
    let (w, h) = (83usize, 57usize);
    // A teacher that splits the image down the middle: two regions, two prompts.
    let pseudo: Vec<u16> = (0..w * h).map(|i| u16::from(i % w >= w / 2)).collect();
    let settings = RefineSettings {
        min_area_px: 1000,
        points_per_component: 3,
        ..RefineSettings::default()
    };
    let refined =
        refine_pseudo_label(&sam, &image, &pseudo, &settings, &mut SplitMix64::new(7)).unwrap();
    assert_eq!(refined.prompts, 2);
    assert!(!refined.fallback);
    assert_eq!(refined.labels.len(), w * h);
    assert!(refined.labels.iter().all(|&l| matches!(l, 0 | 1 | 255)));
    let again =
        refine_pseudo_label(&sam, &image, &pseudo, &settings, &mut SplitMix64::new(7)).unwrap();
    assert_eq!(refined, again);
    // A label other than 0 or 1 is SAM's error, reported, not a panic.
    let prepared = sam.prepare(&image).unwrap();
    let message = sam
        .predict(&prepared, &[(1.0, 1.0)], &[3])
        .unwrap_err()
        .to_string();
    assert!(message.contains("point label 3"), "{message}");
}
