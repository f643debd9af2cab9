//! `semla segment`: SemLA on image files. Per image: embed, pick and weight
//! adapters from the library, segment with the fused mixture, write a
//! coloured mask and an overlay (PNG), and report the adapters used.
//!
//! Without `--library` the model runs alone (or with one `--adapter`, applied
//! as `PeftModel.from_pretrained` does), and `--save-probabilities` writes
//! each image's class ids (`<stem>.png`) and per-class probabilities
//! (`<stem>_probs.npy`, float32 `[C, H, W]`) next to the mask and overlay.

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
    /// Without `--library`: apply this one PEFT adapter folder (weight 1).
    #[arg(long, value_name = "DIR", conflicts_with = "library")]
    pub adapter: Option<PathBuf>,
    /// Without `--library`: the size of the outputs (the dataset record's
    /// height and width of the official post-processing; default: the image's).
    #[arg(long, value_name = "HxW", value_parser = parse_size, conflicts_with = "library")]
    pub output_size: Option<(usize, usize)>,
    /// Without `--library`: also write `<stem>.png` (class ids) and
    /// `<stem>_probs.npy` (float32 `[C, H, W]` per-class probabilities) into `--out`.
    #[arg(long, conflicts_with = "library")]
    pub save_probabilities: bool,
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
    let device = ctx.device()?;
    check_out_folder(&args.out)?;
    if let Some(labels) = &args.labels {
        check_out_folder(labels)?;
    }
    if args.pipeline.library.is_none() {
        return run_model_alone(&args, ctx, &device);
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

/// `semla segment` without a library: the model alone, or with one adapter
/// folder at weight 1. The outputs are staged and swapped in whole.
fn run_model_alone(args: &SegmentArgs, ctx: &Context, device: &Device) -> anyhow::Result<()> {
    use semla_adapters::Adaptation;
    use semla_models::Segmenter;

    if args.resize.is_some() {
        anyhow::bail!("--resize needs --library; without it use --output-size");
    }
    if args.labels.is_some() {
        anyhow::bail!(
            "--labels needs --library; without it --save-probabilities writes <stem>.png into --out"
        );
    }
    if args.keep_going {
        anyhow::bail!("--keep-going needs --library");
    }
    let catseg = match args.pipeline.catseg_path() {
        Some(path) => Some(args.pipeline.catseg.load(&path, device)?),
        None => None,
    };
    let plain = match &catseg {
        Some(_) => None,
        None => Some(args.pipeline.load_model(device)?),
    };
    let model: &dyn Segmenter = match (&catseg, &plain) {
        (Some(c), _) => c,
        (None, Some(m)) => m.as_ref(),
        (None, None) => anyhow::bail!("no model loaded"),
    };
    let adapter = match &args.adapter {
        Some(dir) => {
            let adapter = semla_adapters::peft::load_adapter(dir)
                .with_context(|| format!("loading the adapter {}", dir.display()))?;
            adapter
                .check_fits(&model.sites())
                .with_context(|| format!("the adapter {} does not fit the model", dir.display()))?;
            Some(adapter)
        }
        None => None,
    };
    let adaptation = match &adapter {
        Some(a) => Adaptation::from_adapters(&[a], &[vec![1.0]])?,
        None => Adaptation::none(),
    };
    let palette = semla_pipeline::render::palette_for(model);
    let staged = semla_core::StagedDir::from_existing(&args.out)?;
    let mut written = Vec::new();
    let mut stems = std::collections::HashSet::new();
    for image in &args.images {
        let stem = image
            .file_stem()
            .and_then(|s| s.to_str())
            .with_context(|| format!("{}: no file name", image.display()))?
            .to_string();
        if !stems.insert(stem.clone()) {
            anyhow::bail!(
                "two images have the stem {stem:?}: their outputs would overwrite each other"
            );
        }
        let photo = semla_data::image_io::read_rgb(image)?;
        let (w, h) = (photo.width() as usize, photo.height() as usize);
        let (oh, ow) = args.output_size.unwrap_or((h, w));
        let x = model.normalization().image(&photo, device)?;
        let probs = match &catseg {
            Some(c) => c.probabilities(&x, (oh, ow), &adaptation)?,
            None => {
                let logits = model.forward(&x, &adaptation)?;
                let p = candle_nn::ops::softmax(&logits, 1)?;
                if (oh, ow) == (h, w) {
                    p
                } else {
                    p.upsample_bilinear2d(oh, ow, false)?
                }
            }
        }
        .squeeze(0)?
        .contiguous()?;
        let classes = probs.dim(0)?;
        let labels: Vec<u16> = probs
            .argmax(0)?
            .flatten_all()?
            .to_vec1::<u32>()?
            .into_iter()
            .map(|c| c as u16)
            .collect();
        let mask = semla_pipeline::render::colour_mask(&labels, ow, oh, &palette)?;
        let mut files = vec![staged.path().join(format!("{stem}_mask.png"))];
        semla_data::image_io::write_rgb_png(&files[0], &mask)?;
        if (oh, ow) == (h, w) {
            let overlay = semla_pipeline::render::overlay(&mask, &photo)?;
            files.push(staged.path().join(format!("{stem}_overlay.png")));
            semla_data::image_io::write_rgb_png(&files[1], &overlay)?;
        }
        if args.save_probabilities {
            let map = semla_data::labels::LabelMap {
                width: ow as u32,
                height: oh as u32,
                values: labels,
            };
            let labels_path = staged.path().join(format!("{stem}.png"));
            semla_data::labels::write_label_map(&labels_path, &map)?;
            let values: Vec<f32> = probs.flatten_all()?.to_vec1()?;
            let npy = semla_adapters::npz::encode_npy(&[classes, oh, ow], &values);
            let probs_path = staged.path().join(format!("{stem}_probs.npy"));
            semla_core::fs::write_atomic(&probs_path, &npy)?;
            files.push(labels_path);
            files.push(probs_path);
        }
        let names: Vec<String> = files
            .iter()
            .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        written.push(serde_json::json!({
            "image": image,
            "width": w,
            "height": h,
            "output_size": [oh, ow],
            "classes": classes,
            "files": names,
        }));
    }
    staged.commit()?;
    if ctx.json {
        return ctx.print_json(&serde_json::json!({
            "model": args.pipeline.model,
            "adapter": args.adapter,
            "images": written,
        }));
    }
    for entry in &written {
        println!("{}", entry["image"].as_str().unwrap_or_default());
        for f in entry["files"].as_array().into_iter().flatten() {
            println!(
                "  {}",
                args.out.join(f.as_str().unwrap_or_default()).display()
            );
        }
    }
    Ok(())
}
