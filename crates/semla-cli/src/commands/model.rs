//! `semla model`: model checkpoints. `semla model convert` turns the official
//! CAT-Seg `model_final.pth` (with its YAML) into a model folder
//! (`config.json` + memory-mappable `model.safetensors`) that loads without the
//! YAML and without unpickling.

use std::path::PathBuf;

use anyhow::Context as _;
use semla_models::Segmenter as _;

use super::Context;
use super::common::CatSegOptions;

/// Arguments of `semla model`.
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    #[command(subcommand)]
    pub command: ModelCommand,
}

/// `semla model` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum ModelCommand {
    /// Convert a CAT-Seg checkpoint (`catseg:model_final.pth`) into a model folder.
    Convert(ConvertArgs),
}

/// Arguments of `semla model convert`.
#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// The checkpoint: `catseg:PATH` (`.pth`, `.safetensors` or a model folder).
    #[arg(long, value_name = "catseg:PATH")]
    pub model: String,
    #[command(flatten)]
    pub catseg: CatSegOptions,
    /// The model folder to write (staged and swapped in whole).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Runs `semla model`.
pub fn run(args: ModelArgs, ctx: &Context) -> anyhow::Result<()> {
    match args.command {
        ModelCommand::Convert(args) => convert(args, ctx),
    }
}

fn convert(args: ConvertArgs, ctx: &Context) -> anyhow::Result<()> {
    let path = args
        .model
        .strip_prefix("catseg:")
        .map(PathBuf::from)
        .context("--model must be catseg:PATH (only CAT-Seg checkpoints are converted)")?;
    super::common::check_out_folder(&args.out)?;
    let model = args.catseg.load_with(&path, &ctx.device()?, false)?;
    semla_models::save_segmenter(&model, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let config = model.catseg_config();
    let sites = model.sites().len();
    if ctx.json {
        return ctx.print_json(&serde_json::json!({
            "out": args.out,
            "clip": config.clip_pretrained,
            "classes": config.class_names,
            "adapter_sites": sites,
        }));
    }
    println!(
        "{} -> {} (CAT-Seg, CLIP {}, {} adapter sites, {} classes)",
        path.display(),
        args.out.display(),
        config.clip_pretrained,
        sites,
        config.class_names.len()
    );
    Ok(())
}
