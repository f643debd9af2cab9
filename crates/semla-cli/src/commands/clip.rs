//! `semla clip`: the CLIP tokenizer and image/text features of a Hugging Face
//! `CLIPModel` folder (`config.json` + `model.safetensors`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use candle_core::{Device, Tensor};
use clap::{Args, Subcommand, ValueEnum};
use semla_adapters::Adaptation;
use semla_models::clip::{ClipModel, ClipTokenizer, ImageProcessor, Padding};
use serde::Serialize;

use super::Context;

/// `semla clip ...`
#[derive(Args, Debug)]
pub struct ClipArgs {
    #[command(subcommand)]
    command: ClipCommand,
}

#[derive(Subcommand, Debug)]
enum ClipCommand {
    /// Token ids of each text (`<|startoftext|>` ... `<|endoftext|>`, padded).
    Tokenize {
        /// Texts to tokenize.
        #[arg(required = true)]
        texts: Vec<String>,
        #[command(flatten)]
        context: ContextArgs,
    },
    /// `get_image_features` of each image (CLIPImageProcessor preprocessing).
    ImageFeatures {
        /// Hugging Face CLIP folder: config.json, model.safetensors and
        /// optionally preprocessor_config.json (CLIP's defaults otherwise).
        #[arg(long)]
        model: PathBuf,
        /// Image files (PNG or JPEG).
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// L2-normalise the features (CLIP's own get_image_features does not).
        #[arg(long)]
        normalize: bool,
    },
    /// `get_text_features` of each text.
    TextFeatures {
        /// Hugging Face CLIP folder: config.json and model.safetensors.
        #[arg(long)]
        model: PathBuf,
        /// Texts to embed.
        #[arg(required = true)]
        texts: Vec<String>,
        /// L2-normalise the features.
        #[arg(long)]
        normalize: bool,
        #[command(flatten)]
        context: ContextArgs,
    },
}

#[derive(Args, Debug)]
struct ContextArgs {
    /// Context length (CLIP: 77); longer texts are truncated, keeping `<|endoftext|>` last.
    #[arg(long, default_value_t = 77)]
    context_length: usize,
    /// Padding id: `zeros` (OpenAI clip.tokenize / open_clip) or `eot` (Hugging Face CLIPTokenizer).
    #[arg(long, value_enum, default_value_t = PaddingArg::Zeros)]
    padding: PaddingArg,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PaddingArg {
    Zeros,
    Eot,
}

impl From<PaddingArg> for Padding {
    fn from(p: PaddingArg) -> Self {
        match p {
            PaddingArg::Zeros => Padding::Zeros,
            PaddingArg::Eot => Padding::EndOfText,
        }
    }
}

#[derive(Serialize)]
struct TokenizeRecord<'a> {
    text: &'a str,
    ids: Vec<u32>,
}

#[derive(Serialize)]
struct FeatureRecord {
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    features: Vec<f32>,
}

/// Runs `semla clip`.
pub fn run(args: ClipArgs, ctx: &Context) -> anyhow::Result<()> {
    match args.command {
        ClipCommand::Tokenize { texts, context } => tokenize(&texts, &context, ctx),
        ClipCommand::ImageFeatures {
            model,
            images,
            normalize,
        } => image_features(&model, &images, normalize, ctx),
        ClipCommand::TextFeatures {
            model,
            texts,
            normalize,
            context,
        } => text_features(&model, &texts, normalize, &context, ctx),
    }
}

fn check_context(context: &ContextArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        context.context_length >= 2,
        "--context-length must be at least 2"
    );
    Ok(())
}

fn tokenize(texts: &[String], context: &ContextArgs, ctx: &Context) -> anyhow::Result<()> {
    check_context(context)?;
    let tok = ClipTokenizer::new()?;
    let records: Vec<TokenizeRecord> = texts
        .iter()
        .map(|t| TokenizeRecord {
            text: t,
            ids: tok.encode_context(t, context.context_length, context.padding.into()),
        })
        .collect();
    if ctx.json {
        return ctx.print_json(&records);
    }
    for r in &records {
        let ids: Vec<String> = r.ids.iter().map(u32::to_string).collect();
        println!("{:?}: {}", r.text, ids.join(" "));
    }
    Ok(())
}

fn load_model(dir: &Path, device: &Device) -> anyhow::Result<ClipModel> {
    ClipModel::from_dir(dir, device)
        .with_context(|| format!("loading CLIP model from {}", dir.display()))
}

fn finish(features: Tensor, normalize: bool) -> anyhow::Result<Vec<f32>> {
    let mut v: Vec<f32> = features.flatten_all()?.to_vec1()?;
    if normalize {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        anyhow::ensure!(
            norm > 0.0 && norm.is_finite(),
            "feature vector has norm {norm}, cannot normalise"
        );
        v.iter_mut().for_each(|x| *x /= norm);
    }
    Ok(v)
}

fn print_features(records: &[FeatureRecord], ctx: &Context) -> anyhow::Result<()> {
    if ctx.json {
        return ctx.print_json(&records);
    }
    for r in records {
        let name = r.image.as_deref().or(r.text.as_deref()).unwrap_or("");
        let norm = r.features.iter().map(|x| x * x).sum::<f32>().sqrt();
        let head: Vec<String> = r
            .features
            .iter()
            .take(6)
            .map(|x| format!("{x:.5}"))
            .collect();
        println!(
            "{name}: {} values, norm {norm:.4}, [{} ...]",
            r.features.len(),
            head.join(", ")
        );
    }
    Ok(())
}

fn image_features(
    dir: &Path,
    images: &[PathBuf],
    normalize: bool,
    ctx: &Context,
) -> anyhow::Result<()> {
    let device = ctx.device()?;
    let model = load_model(dir, &device)?;
    let processor_config = dir.join("preprocessor_config.json");
    let processor = if processor_config.is_file() {
        ImageProcessor::from_file(&processor_config)?
    } else {
        ImageProcessor::default()
    };
    let none = Adaptation::none();
    let mut records = Vec::with_capacity(images.len());
    for path in images {
        let pixels = processor
            .preprocess_file(path)?
            .unsqueeze(0)?
            .to_device(&device)?;
        let features = model
            .get_image_features(&pixels, &none)
            .with_context(|| format!("image features of {}", path.display()))?;
        records.push(FeatureRecord {
            image: Some(path.display().to_string()),
            text: None,
            features: finish(features, normalize)?,
        });
    }
    print_features(&records, ctx)
}

fn text_features(
    dir: &Path,
    texts: &[String],
    normalize: bool,
    context: &ContextArgs,
    ctx: &Context,
) -> anyhow::Result<()> {
    check_context(context)?;
    let device = ctx.device()?;
    let model = load_model(dir, &device)?;
    anyhow::ensure!(
        model.has_text_model(),
        "{}: the checkpoint has no text model",
        dir.display()
    );
    let tok = ClipTokenizer::new()?;
    let none = Adaptation::none();
    let mut records = Vec::with_capacity(texts.len());
    for text in texts {
        let ids = tok.encode_context(text, context.context_length, context.padding.into());
        let ids = Tensor::from_vec(ids, (1, context.context_length), &device)?;
        let features = model
            .get_text_features(&ids, &none)
            .with_context(|| format!("text features of {text:?}"))?;
        records.push(FeatureRecord {
            image: None,
            text: Some(text.clone()),
            features: finish(features, normalize)?,
        });
    }
    print_features(&records, ctx)
}
