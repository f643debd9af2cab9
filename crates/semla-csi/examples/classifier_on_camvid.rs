//! How well a concept classifier tells a category's classes apart on real
//! CamVid boxes: for every 4-connected region of a class in the true labels
//! (at least `--min-area` pixels), the box around it (grown by 10 %, as the
//! weight-free proposer grows them) is classified with CSI's check, restricted
//! to the class's category, and the verdict is compared with the true class.
//! Prints, per class, the boxes, how often the verdict is the true class, and
//! how often it also passes the 0.5 threshold.
//!
//! ```text
//! cargo run --release -p semla-csi --example classifier_on_camvid -- \
//!     --data-root DATA --weights efficientnet-lite0-57934424.pth \
//!     [--domain camvid-day] [--images 60] [--min-area 150] [--px 128]
//! ```

use std::path::PathBuf;

use candle_core::Device;
use semla_csi::Taxonomy;
use semla_csi::classify::{ConceptClassifier, category_classes, category_verdict};
use semla_csi::detect::{component_box, crop};
use semla_csi::imagenet::ImageNetConcepts;
use semla_data::domains::{Split, resolve_domain};
use semla_data::{DomainSource, SampleSource};
use semla_selftrain::components::components;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let data_root =
        PathBuf::from(arg(&args, "--data-root").ok_or_else(|| anyhow::anyhow!("--data-root DIR"))?);
    let weights =
        PathBuf::from(arg(&args, "--weights").ok_or_else(|| anyhow::anyhow!("--weights PTH"))?);
    let domain = arg(&args, "--domain").unwrap_or_else(|| "camvid-day".into());
    let images: usize = arg(&args, "--images").map_or(Ok(60), |v| v.parse())?;
    let min_area: usize = arg(&args, "--min-area").map_or(Ok(150), |v| v.parse())?;
    let px: u32 = arg(&args, "--px").map_or(Ok(128), |v| v.parse())?;
    let device = Device::Cpu;
    let classifier = ImageNetConcepts::from_pth(&weights, px, &device)?;
    let taxonomy = Taxonomy::camvid();
    let (concepts, owners) = taxonomy.all_concepts();
    let source = DomainSource::new(resolve_domain(&domain, &data_root)?, Split::Train, None)?;
    // The classes whose category has another member the classifier can name.
    let classes = [1usize, 2, 6, 7, 9, 10];
    let mut counts = vec![(0usize, 0usize, 0usize); taxonomy.classes.len()];
    let step = (source.len() / images.max(1)).max(1);
    for i in (0..source.len()).step_by(step).take(images) {
        let sample = source.sample(i)?;
        let photo = sample.to_photo()?;
        let (w, h) = (sample.width, sample.height);
        for &class in &classes {
            let mask: Vec<bool> = sample.labels.iter().map(|&l| l as usize == class).collect();
            let mut boxes = Vec::new();
            for c in components(&mask, h, w) {
                if c.area() < min_area {
                    continue;
                }
                let b = component_box(&c.pixels, w, h, 0.1);
                if b.area() * 4 <= w * h {
                    boxes.push(crop(&photo, &b));
                }
            }
            if boxes.is_empty() {
                continue;
            }
            let logits = classifier.score(&boxes, &concepts)?;
            let category = category_classes(&taxonomy, class);
            for row in logits {
                let verdict = category_verdict(&row, &owners, &category);
                let entry = &mut counts[class];
                entry.0 += 1;
                if let Some(v) = verdict.filter(|v| v.class == class) {
                    entry.1 += 1;
                    entry.2 += usize::from(v.confidence > 0.5);
                }
            }
        }
    }
    println!(
        "{domain}: boxes around true regions of at least {min_area} px, classifier at {px} px"
    );
    println!("| class | category | boxes | verdict = class | and confidence > 0.5 |");
    println!("|---|---|---|---|---|");
    for &class in &classes {
        let (n, right, confident) = counts[class];
        let category = taxonomy
            .category_of(class)
            .map(|c| taxonomy.categories[c].0.clone())
            .unwrap_or_default();
        println!(
            "| {} | {} | {n} | {:.2} | {:.2} |",
            taxonomy.classes[class],
            category,
            right as f64 / n.max(1) as f64,
            confident as f64 / n.max(1) as f64
        );
    }
    Ok(())
}
