//! `semla segment`: SemLA on image files. Per image: embed, pick and weight
//! adapters from the library, segment with the fused mixture, write a
//! coloured mask and an overlay (PNG), and report the adapters used.

use std::path::PathBuf;

use anyhow::Context as _;
use candle_core::Device;
use semla_pipeline::files::{FileOutputs, segment_files};
use semla_pipeline::{Request, Semla};

use super::Context;
use super::common::{Bars, PipelineOptions, check_out_folder, parse_size};

/// Arguments of `semla segment`.
#[derive(clap::Args, Debug)]
pub struct SegmentArgs {
    #[command(flatten)]
    pub pipeline: PipelineOptions,
    /// Resize images to HEIGHTxWIDTH before the model.
    #[arg(long, value_name = "HxW", value_parser = parse_size)]
    pub resize: Option<(usize, usize)>,
    /// Output folder for `<stem>_mask.png` and `<stem>_overlay.png` (written whole
    /// when the run ends).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Also write each image's raw label map (grey PNG of class indices,
    /// `<stem>.png`) into this folder, for `semla metrics`.
    #[arg(long, value_name = "DIR")]
    pub labels: Option<PathBuf>,
    /// Report an image that cannot be segmented and go on with the others (the
    /// exit status still says that some failed).
    #[arg(long)]
    pub keep_going: bool,
    /// Images to segment.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
}

/// Runs `semla segment`.
pub fn run(args: SegmentArgs, ctx: &Context) -> anyhow::Result<()> {
    let device = Device::Cpu;
    check_out_folder(&args.out)?;
    if let Some(labels) = &args.labels {
        check_out_folder(labels)?;
    }
    let model = args.pipeline.load_model(&device)?;
    let library = args
        .pipeline
        .open_library()
        .context("opening the adapter library")?;
    let config = args.pipeline.config()?;
    let params = config.retrieval_params();
    let semla = Semla::with_embedder_spec(
        model,
        library,
        args.pipeline.embedder.as_ref(),
        config.settings(),
        &device,
    )?;
    let spec = semla
        .embedder()
        .map(|e| e.spec().to_string())
        .unwrap_or_default();
    let mut bars = Bars::new();
    let run = segment_files(
        &semla,
        &Request::semla(),
        &args.images,
        &FileOutputs {
            out_dir: &args.out,
            labels_dir: args.labels.as_deref(),
            resize: args.resize,
            keep_going: args.keep_going,
        },
        &mut bars,
    )
    .map_err(|e| {
        if args.images.len() > 1 && !args.keep_going {
            anyhow::anyhow!("{e} (nothing was written; --keep-going segments the other images)")
        } else {
            e.into()
        }
    })?;
    let results = &run.images;
    if ctx.json {
        ctx.print_json(&serde_json::json!({
            "embedder": spec,
            "retrieval": params,
            "combination": config.combination_type,
            "images": results,
            "errors": run.errors,
        }))?;
        return failed(&run);
    }
    for r in results {
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
        if let Some(labels) = &r.labels {
            println!("  labels {}", labels.display());
        }
    }
    for e in &run.errors {
        println!("{}: failed: {}", e.image.display(), e.error);
    }
    failed(&run)
}

/// An error when some images failed (their errors were reported with the rest).
fn failed(run: &semla_pipeline::files::SegmentRun) -> anyhow::Result<()> {
    if run.errors.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "{} of {} images could not be segmented",
        run.errors.len(),
        run.errors.len() + run.images.len()
    )
}
