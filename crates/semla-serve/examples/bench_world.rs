//! Writes what `semla bench serve` measures the service on: the CamVid
//! segmenter at its real size (EfficientNet-Lite0 LR-ASPP, 11 classes, random
//! weights: speed does not depend on training), a library of five random
//! rank-8 adapters with `style@2` prototypes of five synthetic domains, and a
//! 480x360 photo of one of them.
//!
//! ```text
//! cargo run --release -p semla-serve --example bench_world -- target/serve-bench
//! semla bench serve --model target/serve-bench/model --library target/serve-bench/library \
//!     --image target/serve-bench/photo.png
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // an example stops loudly

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use semla_adapters::{Adapter, AdapterLibrary};
use semla_core::NoProgress;
use semla_data::synthetic::{Split, SyntheticWorld, render_source};
use semla_models::config::{EfficientLiteSegConfig, SegmenterConfig};
use semla_models::{Segmenter, random_segmenter, save_segmenter};
use semla_pipeline::EmbedderSpec;
use semla_pipeline::embed::BuildContext;
use semla_pipeline::prototype::{EmbedOptions, record_prototypes, source_prototype};

const DOMAINS: [&str; 5] = ["clear", "fog", "night", "rain", "snow"];
/// CamVid's frame size (width, height).
const SIZE: (u32, u32) = (480, 360);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .ok_or("usage: bench_world OUT_DIR")?;
    let out = Path::new(&out);
    if out.exists() {
        std::fs::remove_dir_all(out)?;
    }
    let device = Device::Cpu;
    let config = SegmenterConfig::EfficientLite0(EfficientLiteSegConfig::new(11));
    let model_dir = out.join("model");
    let model: Arc<dyn Segmenter> = Arc::from(random_segmenter(&config, &device)?);
    save_segmenter(model.as_ref(), &model_dir)?;
    let library_dir = out.join("library");
    std::fs::create_dir_all(&library_dir)?;
    let mut library = AdapterLibrary::open(&library_dir)?;
    for (seed, name) in DOMAINS.iter().enumerate() {
        library.add(
            &Adapter::random(*name, &model.sites(), 8, seed as u64 + 1)?,
            None,
        )?;
    }
    let spec: EmbedderSpec = format!("style:{}@2", model_dir.display()).parse()?;
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
    let photo = SyntheticWorld::generate_named("fog", Split::Val, 0, SIZE.0, SIZE.1)?;
    semla_data::image_io::write_rgb_png(&out.join("photo.png"), &photo.image)?;
    println!("wrote {}", out.display());
    Ok(())
}
