//! SemLA on one image through the library API, what `semla segment` does:
//!
//! ```text
//! cargo run --release -p semla-pipeline --example segment_one -- MODEL_DIR LIBRARY_DIR IMAGE
//! ```
//!
//! With the demo's output (`semla demo --quick` writes `semla-demo-out/model` and
//! `semla-demo-out/library`) and any PNG or JPEG, it prints the adapters SemLA fused
//! for the image, their weights, and the pixels per predicted class.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // an example stops loudly

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use semla_pipeline::{Request, Semla, SemlaSettings, SourceLibrary};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_dir, library_dir, image] = args.as_slice() else {
        return Err("usage: segment_one MODEL_DIR LIBRARY_DIR IMAGE".into());
    };
    let device = Device::Cpu;
    let model: Arc<dyn semla_models::Segmenter> =
        Arc::from(semla_models::load_segmenter(Path::new(model_dir), &device)?);
    // Every adapter with a prototype; the embedder the library records.
    let library = SourceLibrary::open_with_prototypes(Path::new(library_dir))?;
    let semla = Semla::with_embedder_spec(model, library, None, SemlaSettings::default(), &device)?;
    let photo = semla_data::image_io::read_rgb(Path::new(image))?;
    let prediction = semla.segment(&photo, &Request::semla())?;
    for a in &prediction.adapters {
        println!(
            "{:<12} weight {:.3}  distance {:.3}",
            a.name,
            a.weight,
            a.distance.unwrap_or(f64::NAN)
        );
    }
    let classes = semla.model().num_classes();
    println!("pixels per class: {:?}", prediction.class_pixels(classes));
    println!(
        "embed {:.1} ms, retrieve {:.2} ms, forward {:.1} ms",
        1e3 * prediction.timings.embed_s,
        1e3 * prediction.timings.retrieve_s,
        1e3 * prediction.timings.forward_s
    );
    Ok(())
}
