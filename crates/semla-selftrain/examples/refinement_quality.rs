//! How much the refinement helps, measured on rendered scenes of the synthetic
//! world: a blocky teacher pseudo-label (the true labels sampled at 8x8 block
//! centres, as a coarse head's upsampled output looks) refined with the
//! weight-free proposer, both scored against the true labels (mIoU, an ignored
//! pixel counting as a miss; coverage and precision of the refined labels).
//!
//!     cargo run --release -p semla-selftrain --example refinement_quality

use semla_core::SplitMix64;
use semla_data::synthetic::{NUM_CLASSES, Split, SyntheticWorld};
use semla_selftrain::{GraphSegments, RefineSettings, refine_pseudo_label};

/// mIoU over the classes present in `truth`; an `ignore` prediction is a miss.
fn miou(pred: &[u16], truth: &[u8], ignore: u16) -> f64 {
    let mut inter = [0usize; NUM_CLASSES];
    let mut union = [0usize; NUM_CLASSES];
    for (&p, &t) in pred.iter().zip(truth) {
        let t = usize::from(t);
        union[t] += 1;
        if p == ignore {
            continue;
        }
        let p = usize::from(p);
        if p == t {
            inter[t] += 1;
        } else {
            union[p] += 1;
        }
    }
    let scored: Vec<f64> = (0..NUM_CLASSES)
        .filter(|&c| truth.iter().any(|&t| usize::from(t) == c))
        .map(|c| inter[c] as f64 / union[c] as f64)
        .collect();
    scored.iter().sum::<f64>() / scored.len() as f64
}

fn blocky(truth: &[u8], width: usize, height: usize, block: usize) -> Vec<u16> {
    (0..width * height)
        .map(|p| {
            let (y, x) = (p / width, p % width);
            let cy = ((y / block) * block + block / 2).min(height - 1);
            let cx = ((x / block) * block + block / 2).min(width - 1);
            u16::from(truth[cy * width + cx])
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proposer = &GraphSegments::default();
    let (width, height) = (192usize, 144usize);
    let settings = RefineSettings {
        min_area_px: 200,
        ..RefineSettings::default()
    };
    let (mut raw_sum, mut refined_sum, mut n) = (0.0, 0.0, 0);
    for domain in ["clear", "fog", "night"] {
        for index in 0..4 {
            let sample = SyntheticWorld::generate_named(
                domain,
                Split::Val,
                index,
                width as u32,
                height as u32,
            )?;
            let raw = blocky(&sample.labels, width, height, 8);
            let mut rng = SplitMix64::for_step(7, index, 0);
            let refined = refine_pseudo_label(proposer, &sample.image, &raw, &settings, &mut rng)?;
            let (a, b) = (
                miou(&raw, &sample.labels, 255),
                miou(&refined.labels, &sample.labels, 255),
            );
            let covered: Vec<usize> = (0..refined.labels.len())
                .filter(|&p| refined.labels[p] != 255)
                .collect();
            let correct = covered
                .iter()
                .filter(|&&p| refined.labels[p] == u16::from(sample.labels[p]))
                .count();
            let raw_correct = (0..raw.len())
                .filter(|&p| raw[p] == u16::from(sample.labels[p]))
                .count();
            eprintln!(
                "{domain} {index}: raw {a:.3} refined {b:.3} ({} prompts, {} contested px) coverage {:.2} precision {:.3} raw acc {:.3}",
                refined.prompts,
                refined.contested_px,
                covered.len() as f64 / raw.len() as f64,
                correct as f64 / covered.len().max(1) as f64,
                raw_correct as f64 / raw.len() as f64
            );
            raw_sum += a;
            refined_sum += b;
            n += 1;
        }
    }
    eprintln!(
        "mean mIoU: raw {:.3}, refined {:.3}",
        raw_sum / n as f64,
        refined_sum / n as f64
    );
    Ok(())
}
