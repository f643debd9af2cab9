//! How much the refinement helps, measured on rendered scenes of the synthetic
//! world: a blocky teacher pseudo-label (the true labels sampled at 8x8 block
//! centres, as a coarse head's upsampled output looks) refined by each
//! weight-free proposer, with unclaimed pixels ignored (the official coverage)
//! or kept from the teacher, all scored against the true labels (mIoU, an
//! ignored pixel counting as a miss; coverage and precision of the labels).
//!
//!     cargo run --release -p semla-selftrain --example refinement_quality [-- --out DIR]
//!
//! With `--out`, writes `refinement_<domain>_<index>.png` per scene: image,
//! truth, raw pseudo-label, then the refined one of each proposer (ignore
//! black), left to right, for the teacher-filled variant.

use image::RgbImage;
use semla_core::SplitMix64;
use semla_data::synthetic::{NUM_CLASSES, PALETTE, Split, SyntheticWorld};
use semla_selftrain::{
    GraphSegments, MaskProposer, RefineSettings, RegionGrowing, Unclaimed, refine_pseudo_label,
};

const IGNORE: u16 = 255;

/// mIoU over the classes present in `truth`; an `ignore` prediction is a miss.
fn miou(pred: &[u16], truth: &[u8]) -> f64 {
    let mut inter = [0usize; NUM_CLASSES];
    let mut union = [0usize; NUM_CLASSES];
    for (&p, &t) in pred.iter().zip(truth) {
        let t = usize::from(t);
        union[t] += 1;
        if p == IGNORE {
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

/// `(coverage, precision)`: the share of pixels labelled, and of those, correct.
fn coverage_precision(pred: &[u16], truth: &[u8]) -> (f64, f64) {
    let covered = pred.iter().filter(|&&p| p != IGNORE).count();
    let correct = pred
        .iter()
        .zip(truth)
        .filter(|&(&p, &t)| p == u16::from(t))
        .count();
    (
        covered as f64 / pred.len() as f64,
        correct as f64 / covered.max(1) as f64,
    )
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

fn colour(labels: &[u16], width: usize, height: usize) -> RgbImage {
    RgbImage::from_fn(width as u32, height as u32, |x, y| {
        let l = labels[y as usize * width + x as usize];
        image::Rgb(PALETTE.get(usize::from(l)).copied().unwrap_or([0, 0, 0]))
    })
}

/// Mean mIoU, coverage and precision over the scenes of one variant.
#[derive(Default)]
struct Tally {
    miou: f64,
    coverage: f64,
    precision: f64,
    n: usize,
}

impl Tally {
    fn add(&mut self, pred: &[u16], truth: &[u8]) {
        let (coverage, precision) = coverage_precision(pred, truth);
        self.miou += miou(pred, truth);
        self.coverage += coverage;
        self.precision += precision;
        self.n += 1;
    }

    fn row(&self, name: &str) -> String {
        let n = self.n.max(1) as f64;
        format!(
            "| {name} | {:.3} | {:.2} | {:.3} |",
            self.miou / n,
            self.coverage / n,
            self.precision / n
        )
    }
}

fn refine<P: MaskProposer>(
    proposer: &P,
    image: &RgbImage,
    raw: &[u16],
    unclaimed: Unclaimed,
    seed: u64,
) -> Result<Vec<u16>, semla_selftrain::RefineError> {
    let settings = RefineSettings {
        min_area_px: 200,
        unclaimed,
        ..RefineSettings::default()
    };
    let mut rng = SplitMix64::for_step(7, seed, 0);
    Ok(refine_pseudo_label(proposer, image, raw, &settings, &mut rng)?.labels)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from);
    if let Some(dir) = &out {
        std::fs::create_dir_all(dir)?;
    }
    let graph = GraphSegments::default();
    let grow = RegionGrowing::default();
    let (width, height) = (192usize, 144usize);
    let mut raw_tally = Tally::default();
    let mut tallies: Vec<(String, Tally)> = Vec::new();
    for name in [
        "graph, ignore",
        "graph, teacher",
        "grow, ignore",
        "grow, teacher",
    ] {
        tallies.push((name.to_string(), Tally::default()));
    }
    for domain in ["clear", "fog", "night"] {
        for index in 0..4 {
            let sample = SyntheticWorld::generate_named(
                domain,
                Split::Val,
                index,
                width as u32,
                height as u32,
            )?;
            let truth = &sample.labels;
            let raw = blocky(truth, width, height, 8);
            raw_tally.add(&raw, truth);
            let refined = [
                refine(&graph, &sample.image, &raw, Unclaimed::Ignore, index)?,
                refine(&graph, &sample.image, &raw, Unclaimed::Teacher, index)?,
                refine(&grow, &sample.image, &raw, Unclaimed::Ignore, index)?,
                refine(&grow, &sample.image, &raw, Unclaimed::Teacher, index)?,
            ];
            for ((_, tally), labels) in tallies.iter_mut().zip(&refined) {
                tally.add(labels, truth);
            }
            if let Some(dir) = &out {
                let truth16: Vec<u16> = truth.iter().map(|&t| u16::from(t)).collect();
                let panels = [
                    sample.image.clone(),
                    colour(&truth16, width, height),
                    colour(&raw, width, height),
                    colour(&refined[1], width, height),
                    colour(&refined[3], width, height),
                ];
                let gap = 4;
                let mut grid = RgbImage::from_pixel(
                    (panels.len() * (width + gap) - gap) as u32,
                    height as u32,
                    image::Rgb([255, 255, 255]),
                );
                for (i, panel) in panels.iter().enumerate() {
                    image::imageops::replace(&mut grid, panel, (i * (width + gap)) as i64, 0);
                }
                grid.save(dir.join(format!("refinement_{domain}_{index}.png")))?;
            }
        }
    }
    println!("12 synthetic scenes (clear, fog, night; 192x144), raw = 8x8 blocky truth\n");
    println!("| pseudo-label | mIoU | coverage | precision |");
    println!("| --- | --- | --- | --- |");
    println!("{}", raw_tally.row("raw (teacher)"));
    for (name, tally) in &tallies {
        println!("{}", tally.row(&format!("refined: {name}")));
    }
    Ok(())
}
