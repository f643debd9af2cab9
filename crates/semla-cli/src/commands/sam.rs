//! `semla sam predict`: Segment Anything on image files with point and box
//! prompts, as `SamPredictor.set_image` + `.predict(..., return_logits=True)`.
//!
//! Per image it writes `<stem>_logits.npy` (float32 `[C, H, W]` mask logits at
//! the image's size; C = 3 with multimask output, else 1), `<stem>_masks.npy`
//! (uint8 `[C, H, W]`, logits > 0), `<stem>_iou.npy` (float32 `[C]`, the
//! predicted IoUs) and `<stem>_mask.png` (the mask with the highest predicted
//! IoU: grey PNG, 1 inside, 0 outside); `predictions.json` lists every image's
//! IoU predictions. The folder is staged and swapped in whole.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use semla_data::labels::{LabelMap, write_label_map};
use semla_models::sam::{EncoderSpec, Prompt, Sam};
use serde::Serialize;

use super::Context;
use super::common::check_out_folder;

/// `semla sam ...`
#[derive(Args, Debug)]
pub struct SamArgs {
    #[command(subcommand)]
    command: SamCommand,
}

#[derive(Subcommand, Debug)]
enum SamCommand {
    /// Masks of each image for one prompt (points and/or a box, in pixels).
    Predict(PredictArgs),
}

#[derive(Args, Debug)]
struct PredictArgs {
    /// A SAM checkpoint: the released `.pth` state dict (`sam_vit_b_01ec64.pth`,
    /// ..., or MobileSAM's `mobile_sam.pt`) or a `.safetensors` file of the same
    /// keys. Every dimension is read from its shapes.
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    /// The encoder `_build_sam` was called with, checked against the
    /// checkpoint: `vit_b`, `vit_l`, `vit_h`, `vit_t` (MobileSAM), or a JSON
    /// file with `encoder_embed_dim`, `encoder_depth`, `encoder_num_heads` and
    /// `encoder_global_attn_indexes` (SAM's ViT) or with TinyViT's `embed_dims`,
    /// `depths`, `num_heads`, `window_sizes` and optionally `mlp_ratio`,
    /// `mbconv_expand_ratio`, `local_conv_size` (MobileSAM).
    #[arg(long, value_name = "NAME|JSON")]
    encoder_config: Option<String>,
    /// Point prompts as `x,y;x,y;...` (pixels of the original image).
    #[arg(long, value_name = "X,Y;...", allow_hyphen_values = true)]
    points: Option<String>,
    /// One label per point: `1` foreground, `0` background (`1,0,...`);
    /// default: every point foreground.
    #[arg(long, value_name = "L,...", requires = "points")]
    labels: Option<String>,
    /// A box prompt `x0,y0,x1,y1` (pixels).
    #[arg(long = "box", value_name = "X0,Y0,X1,Y1", allow_hyphen_values = true)]
    bbox: Option<String>,
    /// One mask instead of three (SAM's `multimask_output=False`, better for
    /// unambiguous prompts such as several points or a box).
    #[arg(long)]
    single_mask: bool,
    /// Output folder (written whole when the run ends).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Images (PNG or JPEG).
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

/// What `predictions.json` (and `--json`) says of one image.
#[derive(Serialize)]
struct ImageRecord {
    image: String,
    height: usize,
    width: usize,
    /// The decoder's IoU prediction of each mask.
    iou: Vec<f32>,
    /// The mask written to `<stem>_mask.png`.
    best_mask: usize,
    /// Its share of the image's pixels.
    foreground_fraction: f64,
}

/// Runs `semla sam`.
pub fn run(args: SamArgs, ctx: &Context) -> anyhow::Result<()> {
    match args.command {
        SamCommand::Predict(args) => predict(&args, ctx),
    }
}

fn predict(args: &PredictArgs, ctx: &Context) -> anyhow::Result<()> {
    check_out_folder(&args.out)?;
    let prompt = prompt(args)?;
    let mut stems = std::collections::HashSet::new();
    for image in &args.images {
        let stem = stem(image)?;
        if !stems.insert(stem.clone()) {
            bail!("two images are named {stem}: their outputs would overwrite each other");
        }
    }
    let encoder = args
        .encoder_config
        .as_deref()
        .map(encoder_args)
        .transpose()?;
    let device = ctx.device()?;
    let sam = Sam::load(&args.checkpoint, encoder.as_ref(), &device)
        .with_context(|| format!("loading SAM from {}", args.checkpoint.display()))?;
    let staged = semla_core::StagedDir::new(&args.out)?;
    let mut records = Vec::new();
    for path in &args.images {
        let rgb = semla_data::image_io::read_rgb(path)?;
        let (width, height) = rgb.dimensions();
        let (height, width) = (height as usize, width as usize);
        let embedding = sam
            .set_image(rgb.as_raw(), height, width)
            .with_context(|| format!("embedding {}", path.display()))?;
        let prediction = sam
            .predict(&embedding, &prompt, !args.single_mask)
            .with_context(|| format!("prompting {}", path.display()))?;
        let best = prediction
            .iou
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i);
        let plane = height * width;
        let mask: Vec<u16> = prediction.logits[best * plane..(best + 1) * plane]
            .iter()
            .map(|&v| u16::from(v > 0.0))
            .collect();
        let foreground = mask.iter().filter(|&&v| v == 1).count();
        let stem = stem(path)?;
        let npy =
            semla_adapters::npz::encode_npy(&[prediction.masks, height, width], &prediction.logits);
        semla_core::fs::write_atomic(&staged.path().join(format!("{stem}_logits.npy")), &npy)?;
        let masks = semla_adapters::npz::encode_npy_u8(
            &[prediction.masks, height, width],
            &prediction.binary_masks(),
        );
        semla_core::fs::write_atomic(&staged.path().join(format!("{stem}_masks.npy")), &masks)?;
        let iou = semla_adapters::npz::encode_npy(&[prediction.masks], &prediction.iou);
        semla_core::fs::write_atomic(&staged.path().join(format!("{stem}_iou.npy")), &iou)?;
        write_label_map(
            &staged.path().join(format!("{stem}_mask.png")),
            &LabelMap {
                width: width as u32,
                height: height as u32,
                values: mask,
            },
        )?;
        records.push(ImageRecord {
            image: path.display().to_string(),
            height,
            width,
            iou: prediction.iou,
            best_mask: best,
            foreground_fraction: foreground as f64 / plane as f64,
        });
    }
    let json = serde_json::to_vec_pretty(&records)?;
    semla_core::fs::write_atomic(&staged.path().join("predictions.json"), &json)?;
    staged.commit()?;
    if ctx.json {
        return ctx.print_json(&records);
    }
    for r in &records {
        let iou: Vec<String> = r.iou.iter().map(|v| format!("{v:.3}")).collect();
        println!(
            "{}: IoU predictions [{}], mask {} covers {:.1} % of the image",
            r.image,
            iou.join(", "),
            r.best_mask,
            100.0 * r.foreground_fraction
        );
    }
    println!("wrote {}", args.out.display());
    Ok(())
}

fn stem(path: &Path) -> anyhow::Result<String> {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .with_context(|| format!("{}: not a file name", path.display()))
}

fn encoder_args(value: &str) -> anyhow::Result<EncoderSpec> {
    match EncoderSpec::released(value) {
        Some(spec) => Ok(spec),
        None => Ok(EncoderSpec::from_file(Path::new(value))?),
    }
}

/// The prompt the flags describe.
fn prompt(args: &PredictArgs) -> anyhow::Result<Prompt> {
    let points: Vec<[f64; 2]> = match &args.points {
        Some(text) => text
            .split(';')
            .map(|p| {
                let v = numbers(p, 2).with_context(|| format!("--points: {p:?} is not x,y"))?;
                Ok([v[0], v[1]])
            })
            .collect::<anyhow::Result<_>>()?,
        None => Vec::new(),
    };
    let labels: Vec<i32> = match &args.labels {
        Some(text) => text
            .split(',')
            .map(|l| match l.trim() {
                "1" => Ok(1),
                "0" => Ok(0),
                other => bail!("--labels: {other:?} is neither 1 (foreground) nor 0 (background)"),
            })
            .collect::<anyhow::Result<_>>()?,
        None => vec![1; points.len()],
    };
    if labels.len() != points.len() {
        bail!(
            "--labels gives {} labels for {} points",
            labels.len(),
            points.len()
        );
    }
    let bbox = match &args.bbox {
        Some(text) => {
            let v =
                numbers(text, 4).with_context(|| format!("--box: {text:?} is not x0,y0,x1,y1"))?;
            if v[2] < v[0] || v[3] < v[1] {
                bail!("--box {text}: x1 must not be left of x0, nor y1 above y0");
            }
            Some([v[0], v[1], v[2], v[3]])
        }
        None => None,
    };
    if points.is_empty() && bbox.is_none() {
        bail!("give a prompt: --points and/or --box");
    }
    Ok(Prompt {
        points,
        labels,
        bbox,
        mask_input: None,
    })
}

/// `count` finite comma-separated numbers.
fn numbers(text: &str, count: usize) -> anyhow::Result<Vec<f64>> {
    let values: Vec<f64> = text
        .split(',')
        .map(|v| v.trim().parse::<f64>())
        .collect::<Result<_, _>>()?;
    if values.len() != count {
        bail!("{} numbers, expected {count}", values.len());
    }
    if values.iter().any(|v| !v.is_finite()) {
        bail!("a coordinate is not finite");
    }
    Ok(values)
}
