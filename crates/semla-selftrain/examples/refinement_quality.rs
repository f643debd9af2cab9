//! How much the refinement helps: pseudo-labels scored against the true labels
//! before and after refinement by each weight-free proposer, under the
//! official rules (unclaimed and overlapping pixels ignored) and with the
//! teacher filling unclaimed pixels (mIoU over
//! the classes present, an ignored pixel counting as a miss; coverage and
//! precision of the labelled pixels).
//!
//! Two teachers:
//!
//! - by default, 12 rendered scenes of the synthetic world (clear, fog,
//!   night; 192x144) and a blocky pseudo-label (the true labels sampled at 8x8
//!   block centres, as a stride-8 head's upsampled output looks);
//! - with `--model DIR --domain D [--data-root R] [--resize HxW] [--images N]`,
//!   a trained segmenter's argmax on N evenly spaced train frames of a real
//!   domain (what self-training would refine).
//!
//! ```text
//! cargo run --release -p semla-selftrain --example refinement_quality -- \
//!     [--model DIR --domain D ...] [--min-area PX] [--out DIR]
//! ```
//!
//! With `--out`, writes `refinement_<n>.png` per image: image, truth, raw
//! pseudo-label, then the refined one of graph segments and of region growing
//! (unclaimed pixels from the teacher; ignore black), left to right.

use std::path::PathBuf;

use candle_core::{DType, Device};
use image::RgbImage;
use semla_adapters::Adaptation;
use semla_core::SplitMix64;
use semla_data::domains::{Split, palette::generic_color};
use semla_data::synthetic::SyntheticWorld;
use semla_data::{DomainSource, SampleSource};
use semla_selftrain::{
    GraphSegments, MaskProposer, RefineSettings, RegionGrowing, Unclaimed, refine_pseudo_label,
};

const IGNORE: u16 = 255;

/// One image to refine: the photo, its true labels and the teacher's.
struct Case {
    image: RgbImage,
    truth: Vec<u16>,
    raw: Vec<u16>,
}

/// mIoU over the classes present in `truth` (its `IGNORE` pixels skipped);
/// an `IGNORE` prediction is a miss.
fn miou(pred: &[u16], truth: &[u16]) -> f64 {
    let mut inter = std::collections::BTreeMap::<u16, usize>::new();
    let mut union = std::collections::BTreeMap::<u16, usize>::new();
    for (&p, &t) in pred.iter().zip(truth) {
        if t == IGNORE {
            continue;
        }
        *union.entry(t).or_default() += 1;
        if p == t {
            *inter.entry(t).or_default() += 1;
        } else if p != IGNORE {
            *union.entry(p).or_default() += 1;
        }
    }
    let present: Vec<u16> = truth.iter().copied().filter(|&t| t != IGNORE).collect();
    let present: std::collections::BTreeSet<u16> = present.into_iter().collect();
    let scores: Vec<f64> = present
        .iter()
        .map(|c| inter.get(c).copied().unwrap_or(0) as f64 / union[c] as f64)
        .collect();
    scores.iter().sum::<f64>() / scores.len().max(1) as f64
}

/// `(coverage, precision)` over the pixels with a true label.
fn coverage_precision(pred: &[u16], truth: &[u16]) -> (f64, f64) {
    let (mut labelled, mut covered, mut correct) = (0usize, 0usize, 0usize);
    for (&p, &t) in pred.iter().zip(truth) {
        if t == IGNORE {
            continue;
        }
        labelled += 1;
        if p != IGNORE {
            covered += 1;
            correct += usize::from(p == t);
        }
    }
    (
        covered as f64 / labelled.max(1) as f64,
        correct as f64 / covered.max(1) as f64,
    )
}

fn blocky(truth: &[u16], width: usize, height: usize, block: usize) -> Vec<u16> {
    (0..width * height)
        .map(|p| {
            let (y, x) = (p / width, p % width);
            let cy = ((y / block) * block + block / 2).min(height - 1);
            let cx = ((x / block) * block + block / 2).min(width - 1);
            truth[cy * width + cx]
        })
        .collect()
}

fn synthetic_cases() -> Result<Vec<Case>, Box<dyn std::error::Error>> {
    let (width, height) = (192usize, 144usize);
    let mut cases = Vec::new();
    for domain in ["clear", "fog", "night"] {
        for index in 0..4 {
            let sample = SyntheticWorld::generate_named(
                domain,
                semla_data::synthetic::Split::Val,
                index,
                width as u32,
                height as u32,
            )?;
            let truth: Vec<u16> = sample.labels.iter().map(|&t| u16::from(t)).collect();
            let raw = blocky(&truth, width, height, 8);
            cases.push(Case {
                image: sample.image,
                truth,
                raw,
            });
        }
    }
    Ok(cases)
}

fn model_cases(args: &Args) -> Result<Vec<Case>, Box<dyn std::error::Error>> {
    let (Some(model), Some(domain)) = (&args.model, &args.domain) else {
        return Err("--model and --domain go together".into());
    };
    let device = Device::Cpu;
    let teacher = semla_models::load_segmenter(model, &device)?;
    let root = args.data_root.clone().unwrap_or_else(|| PathBuf::from("."));
    let domain = semla_data::domains::resolve_domain(domain, &root)?;
    let source = DomainSource::new(domain, Split::Train, args.resize)?;
    let count = args.images.min(source.len()).max(1);
    let mut cases = Vec::with_capacity(count);
    for i in 0..count {
        let sample = source.sample(i * source.len() / count)?;
        let images = teacher.normalization().batch(&[&sample], &device)?;
        let logits = teacher.forward(&images, &Adaptation::none())?;
        let raw: Vec<u16> = logits
            .argmax(1)?
            .to_dtype(DType::U32)?
            .flatten_all()?
            .to_vec1::<u32>()?
            .into_iter()
            .map(|c| c as u16)
            .collect();
        let ignore = source.ignore_label();
        let truth = sample
            .labels
            .iter()
            .map(|&t| if t == ignore { IGNORE } else { t as u16 })
            .collect();
        cases.push(Case {
            image: sample.to_photo()?,
            truth,
            raw,
        });
    }
    Ok(cases)
}

fn colour(labels: &[u16], width: usize, height: usize) -> RgbImage {
    RgbImage::from_fn(width as u32, height as u32, |x, y| {
        let l = labels[y as usize * width + x as usize];
        image::Rgb(if l == IGNORE {
            [0, 0, 0]
        } else {
            generic_color(l)
        })
    })
}

/// Mean mIoU, coverage and precision over the images of one variant.
#[derive(Default)]
struct Tally {
    miou: f64,
    coverage: f64,
    precision: f64,
    n: usize,
}

impl Tally {
    fn add(&mut self, pred: &[u16], truth: &[u16]) {
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

/// One way of refining: a proposer and the two rules for overlaps and gaps.
struct Variant {
    name: &'static str,
    grow: bool,
    unclaimed: Unclaimed,
}

fn refine<P: MaskProposer>(
    proposer: &P,
    case: &Case,
    min_area_px: usize,
    variant: &Variant,
    seed: u64,
) -> Result<Vec<u16>, semla_selftrain::RefineError> {
    let settings = RefineSettings {
        min_area_px,
        unclaimed: variant.unclaimed,
        ..RefineSettings::default()
    };
    let mut rng = SplitMix64::for_step(7, seed, 0);
    let raw: Vec<u16> = case.raw.clone();
    Ok(refine_pseudo_label(proposer, &case.image, &raw, &settings, &mut rng)?.labels)
}

#[derive(Default)]
struct Args {
    model: Option<PathBuf>,
    domain: Option<String>,
    data_root: Option<PathBuf>,
    resize: Option<(usize, usize)>,
    images: usize,
    min_area_px: usize,
    out: Option<PathBuf>,
}

fn parse_args() -> Result<Args, Box<dyn std::error::Error>> {
    let mut args = Args {
        images: 12,
        min_area_px: 200,
        ..Args::default()
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--model" => args.model = Some(value.into()),
            "--domain" => args.domain = Some(value),
            "--data-root" => args.data_root = Some(value.into()),
            "--images" => args.images = value.parse()?,
            "--min-area" => args.min_area_px = value.parse()?,
            "--out" => args.out = Some(value.into()),
            "--resize" => {
                let (h, w) = value.split_once('x').ok_or("--resize takes HxW")?;
                args.resize = Some((h.parse()?, w.parse()?));
            }
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    Ok(args)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let cases = if args.model.is_some() || args.domain.is_some() {
        model_cases(&args)?
    } else {
        synthetic_cases()?
    };
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)?;
    }
    let graph = GraphSegments::default();
    let grow = RegionGrowing::default();
    let mut raw_tally = Tally::default();
    let variant = |name, grow, unclaimed| Variant {
        name,
        grow,
        unclaimed,
    };
    let variants = [
        variant("graph segments (official rules)", false, Unclaimed::Ignore),
        variant(
            "graph segments, unclaimed from the teacher",
            false,
            Unclaimed::Teacher,
        ),
        variant("region growing (official rules)", true, Unclaimed::Ignore),
        variant(
            "region growing, unclaimed from the teacher",
            true,
            Unclaimed::Teacher,
        ),
    ];
    let mut tallies: Vec<Tally> = variants.iter().map(|_| Tally::default()).collect();
    for (n, case) in cases.iter().enumerate() {
        let seed = n as u64;
        let area = args.min_area_px;
        raw_tally.add(&case.raw, &case.truth);
        let mut refined = Vec::with_capacity(variants.len());
        for v in &variants {
            refined.push(if v.grow {
                refine(&grow, case, area, v, seed)?
            } else {
                refine(&graph, case, area, v, seed)?
            });
        }
        for (tally, labels) in tallies.iter_mut().zip(&refined) {
            tally.add(labels, &case.truth);
        }
        if let Some(dir) = &args.out {
            let (width, height) = (case.image.width() as usize, case.image.height() as usize);
            let panels = [
                case.image.clone(),
                colour(&case.truth, width, height),
                colour(&case.raw, width, height),
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
            grid.save(dir.join(format!("refinement_{n}.png")))?;
        }
    }
    println!(
        "{} images, components above {} px\n",
        cases.len(),
        args.min_area_px
    );
    println!("| pseudo-label | mIoU | coverage | precision |");
    println!("| --- | --- | --- | --- |");
    println!("{}", raw_tally.row("raw (teacher)"));
    for (v, tally) in variants.iter().zip(&tallies) {
        println!("{}", tally.row(&format!("refined: {}", v.name)));
    }
    Ok(())
}
