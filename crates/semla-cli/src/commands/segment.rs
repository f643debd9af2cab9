//! `semla segment`: SemLA on image files. Per image: embed, pick and weight
//! adapters from the library, segment with the fused mixture, write a
//! coloured mask and an overlay (PNG), and report the adapters used.

use std::path::PathBuf;

use anyhow::Context as _;
use candle_core::Device;
use semla_adapters::AdapterLibrary;
use semla_experiments::embedder::EmbedderSpec;
use semla_experiments::run::SourceLibrary;
use semla_experiments::segment::segment_images;
use semla_models::segmenter::load_segmenter;
use semla_retrieval::SemlaConfig;

use super::Context;
use super::experiment::{Bars, make_embedder, name_list};
use super::train::parse_size;

/// Arguments of `semla segment`.
#[derive(clap::Args, Debug)]
pub struct SegmentArgs {
    /// Base model folder (`config.json`, `model.safetensors`).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Adapter library with prototypes.
    #[arg(long, value_name = "DIR")]
    pub library: PathBuf,
    /// Candidate adapters (file or comma-separated names; default: all with a prototype).
    #[arg(long, value_name = "FILE|A,B,..")]
    pub sources: Option<String>,
    /// Query embedder (default: the one recorded with the library, else `backbone`).
    #[arg(long, value_name = "E")]
    pub embedder: Option<EmbedderSpec>,
    /// SemLA settings (`semla_config.yaml` or JSON; default: official values).
    #[arg(long, value_name = "FILE")]
    pub semla_config: Option<PathBuf>,
    /// Number of adapters to fuse (overrides the config).
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Softmax temperature (overrides the config).
    #[arg(long, value_name = "T")]
    pub temperature: Option<f64>,
    /// Resize images to HEIGHTxWIDTH before the model.
    #[arg(long, value_name = "HxW", value_parser = parse_size)]
    pub resize: Option<(usize, usize)>,
    /// Output folder for `<stem>_mask.png` and `<stem>_overlay.png`.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Images to segment.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
}

/// Runs `semla segment`.
pub fn run(args: SegmentArgs, ctx: &Context) -> anyhow::Result<()> {
    let device = Device::Cpu;
    let model = load_segmenter(&args.model, &device)
        .with_context(|| format!("loading the model {}", args.model.display()))?;
    let names: Vec<String> = match &args.sources {
        Some(value) => name_list(value)?,
        None => AdapterLibrary::open(&args.library)
            .with_context(|| format!("opening the adapter library {}", args.library.display()))?
            .entries()
            .filter(|e| e.has_prototype())
            .map(|e| e.name.clone())
            .collect(),
    };
    let library = SourceLibrary::open(&args.library, &names, true)
        .with_context(|| format!("opening the adapter library {}", args.library.display()))?;
    let config = match &args.semla_config {
        Some(path) => SemlaConfig::from_path(path)?,
        None => SemlaConfig::default(),
    };
    let mut params = config.retrieval_params();
    if let Some(k) = args.top_k {
        params.top_k = k;
    }
    if let Some(t) = args.temperature {
        params.temperature = t;
    }
    params.validate()?;
    let mut loaded = None;
    let (embedder, spec) = make_embedder(
        args.embedder.as_ref(),
        Some(&args.library),
        model.as_ref(),
        &mut loaded,
        &device,
    )?;
    let mut bars = Bars::new();
    let results = segment_images(
        model.as_ref(),
        &library,
        &embedder,
        params,
        &args.images,
        &args.out,
        args.resize,
        &device,
        &mut bars,
    )?;
    if ctx.json {
        return ctx.print_json(&serde_json::json!({
            "embedder": spec,
            "retrieval": params,
            "images": results,
        }));
    }
    for r in &results {
        println!("{} ({}x{})", r.image.display(), r.width, r.height);
        for a in &r.adapters {
            println!(
                "  {:<20} weight {:.4}  distance {}",
                a.name,
                a.weight,
                a.distance.map_or("-".into(), |d| format!("{d:.4}"))
            );
        }
        println!(
            "  mask {}\n  overlay {}",
            r.mask.display(),
            r.overlay.display()
        );
    }
    Ok(())
}
