//! Writes the small SemLA world the Python package's tests run on
//! (`crates/semla-py/tests/fixtures/`): a tiny random segmenter, a library of
//! three random adapters whose prototypes the `style` embedder made from
//! synthetic domains (recorded as `semla library embed` records them), and two
//! photos with their ground truth.
//!
//! ```text
//! cargo run -p semla-pipeline --example python_fixture -- crates/semla-py/tests/fixtures
//! ```
//!
//! The weights are random (candle's initialiser is not seeded): the tests
//! compare the package with the CLI and with hand computations on whatever this
//! wrote, never with stored outputs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // an example stops loudly

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use semla_adapters::{Adapter, AdapterLibrary};
use semla_core::NoProgress;
use semla_data::synthetic::{Split, SyntheticWorld, render_source};
use semla_models::config::{SegmenterConfig, TinySegConfig};
use semla_models::{Segmenter, random_segmenter, save_segmenter};
use semla_pipeline::EmbedderSpec;
use semla_pipeline::embed::BuildContext;
use semla_pipeline::prototype::{EmbedOptions, record_prototypes, source_prototype};

/// The library's domains (synthetic styles), one adapter each.
const DOMAINS: [&str; 3] = ["clear", "fog", "night"];
/// Photo size (width, height).
const SIZE: (u32, u32) = (64, 48);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .ok_or("usage: python_fixture OUT_DIR")?;
    let out = Path::new(&out);
    if out.exists() {
        std::fs::remove_dir_all(out)?;
    }
    let device = Device::Cpu;
    let config = SegmenterConfig::Tiny(TinySegConfig {
        num_classes: semla_data::synthetic::NUM_CLASSES,
        width: 4,
        class_names: Vec::new(),
    });
    let model_dir = out.join("model");
    let model: Arc<dyn Segmenter> = Arc::from(random_segmenter(&config, &device)?);
    save_segmenter(model.as_ref(), &model_dir)?;

    let library_dir = out.join("library");
    std::fs::create_dir_all(&library_dir)?;
    let mut library = AdapterLibrary::open(&library_dir)?;
    for (seed, name) in DOMAINS.iter().enumerate() {
        let mut adapter = Adapter::random(*name, &model.sites(), 2, seed as u64 + 1)?;
        // Random factors in [-0.05, 0.05) and a large alpha: updates of the size
        // of the weights, so that the chosen mixture shows in the labels.
        adapter.config.lora_alpha = 400.0;
        library.add(&adapter, None)?;
    }

    let spec: EmbedderSpec = format!("style:{}", model_dir.display()).parse()?;
    let embedder = spec.build(&BuildContext {
        device: &device,
        model: None,
    })?;
    let mut prototypes = Vec::new();
    for name in DOMAINS {
        let source = render_source(name, Split::Train, 4, SIZE.0, SIZE.1)?;
        let (prototype, count) = source_prototype(
            embedder.as_ref(),
            &source,
            &EmbedOptions::default(),
            name,
            &device,
            &mut NoProgress,
        )?;
        prototypes.push((name.to_string(), prototype, count));
    }
    record_prototypes(&library_dir, &prototypes, embedder.as_ref())?;

    let images = out.join("images");
    let truth = out.join("truth");
    std::fs::create_dir_all(&images)?;
    std::fs::create_dir_all(&truth)?;
    for name in ["fog", "night"] {
        let sample = SyntheticWorld::generate_named(name, Split::Val, 0, SIZE.0, SIZE.1)?;
        semla_data::image_io::write_rgb_png(&images.join(format!("{name}.png")), &sample.image)?;
        let map = semla_data::labels::LabelMap {
            width: SIZE.0,
            height: SIZE.1,
            values: sample.labels.iter().map(|&l| u16::from(l)).collect(),
        };
        semla_data::labels::write_label_map(&truth.join(format!("{name}.png")), &map)?;
    }
    println!("wrote {}", out.display());
    Ok(())
}
