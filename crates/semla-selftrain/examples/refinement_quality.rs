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
//! (unclaimed pixels from the teacher) and the segment vote; ignore black;
//! left to right.

use std::path::PathBuf;

use candle_core::{DType, Device};
use image::RgbImage;
use semla_adapters::Adaptation;
use semla_core::SplitMix64;
use semla_data::domains::{Split, palette::generic_color};
use semla_data::synthetic::SyntheticWorld;
use semla_data::{DomainSource, SampleSource};
use semla_selftrain::quality::{draw_labels, panel_grid};
use semla_selftrain::{
    GraphSegments, MaskProposer, PseudoLabelScore, RefineSettings, RegionGrowing, SegmentVote,
    Unclaimed, mean_score, refine_pseudo_label, score_pseudo_label,
};

const IGNORE: u16 = 255;

/// One image to refine: the photo, its true labels and the teacher's.
struct Case {
    image: RgbImage,
    truth: Vec<u16>,
    raw: Vec<u16>,
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
    draw_labels(labels, width, height, IGNORE, generic_color)
}

/// Mean mIoU, coverage and precision over the images of one variant.
#[derive(Default)]
struct Tally {
    scores: Vec<PseudoLabelScore>,
}

impl Tally {
    fn add(&mut self, pred: &[u16], truth: &[u16]) {
        self.scores.push(score_pseudo_label(pred, truth, IGNORE));
    }

    fn row(&self, name: &str) -> String {
        let s = mean_score(&self.scores);
        format!(
            "| {name} | {:.3} | {:.2} | {:.3} |",
            s.miou, s.coverage, s.precision
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
    let vote = SegmentVote::default();
    let mut vote_tally = Tally::default();
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
        let voted = vote.vote(&case.image, &case.raw)?;
        vote_tally.add(&voted, &case.truth);
        if let Some(dir) = &args.out {
            let (width, height) = (case.image.width() as usize, case.image.height() as usize);
            let panels = vec![
                case.image.clone(),
                colour(&case.truth, width, height),
                colour(&case.raw, width, height),
                colour(&refined[1], width, height),
                colour(&refined[3], width, height),
                colour(&voted, width, height),
            ];
            let grid = panel_grid(&[panels]);
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
    println!("{}", vote_tally.row("refined: segment vote (no prompts)"));
    Ok(())
}
