//! `semla library embed`: the prototype of every source domain (the mean
//! embedding of its training images), written beside its adapter as
//! `<name>/<name>_statistics.npz` (`train_average_embedding`, `(1, D)`
//! float32, the official format), and the embedder recorded in the
//! library's `semla_library.json` so that queries embedded differently are
//! refused.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use semla_adapters::AdapterLibrary;
use semla_pipeline::EmbedderSpec;
use semla_pipeline::embed::BuildContext;
use semla_pipeline::prototype::{EmbedOptions, embed_library};

use super::super::Context;
use super::super::common::{Bars, name_list, parse_size, resolve};

/// Arguments of `semla library embed`.
#[derive(clap::Args, Debug)]
pub struct EmbedArgs {
    /// Adapter library folder; each source's adapter must be in it.
    #[arg(long, value_name = "DIR")]
    pub library: PathBuf,
    /// Source domains to embed: a `source_domains.yaml` / JSON list or
    /// comma-separated names (default: every adapter of the library). Each
    /// name is a domain name and the adapter's folder name.
    #[arg(long, value_name = "FILE|A,B,..")]
    pub sources: Option<String>,
    /// `clip:DIR` (the official embedder, a Hugging Face CLIPModel folder),
    /// `backbone:MODEL_DIR` or `backbone` with --model (pooled deep features),
    /// `style:MODEL_DIR` or `style` (early channel statistics); a suffix `@F`
    /// embeds the image average-pooled by F (`style@2`).
    #[arg(long, value_name = "E")]
    pub embedder: EmbedderSpec,
    /// Segmenter model folder for `--embedder backbone`.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Dataset root (default: `$DETECTRON2_DATASETS`).
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,
    /// Resize training images to HEIGHTxWIDTH before the backbone (use the
    /// size the experiments evaluate at).
    #[arg(long, value_name = "HxW", value_parser = parse_size)]
    pub resize: Option<(usize, usize)>,
    /// Average at most N images per domain (default: all).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

/// Runs `semla library embed`.
pub fn run(args: EmbedArgs, ctx: &Context) -> anyhow::Result<()> {
    let device = ctx.device()?;
    let library = AdapterLibrary::open(&args.library).context("opening the adapter library")?;
    let names: Vec<String> = match &args.sources {
        Some(value) => name_list(value)?,
        None => library.names().into_iter().map(str::to_string).collect(),
    };
    if names.is_empty() {
        bail!(
            "the adapter library {} holds no adapter",
            args.library.display()
        );
    }
    let mut sources = Vec::with_capacity(names.len());
    for name in &names {
        let domain = resolve(name, args.data_root.as_deref())
            .with_context(|| format!("source domain {name}"))?;
        sources.push((name.clone(), domain));
    }
    // `backbone` / `style` without a folder embed with --model.
    let spec = args
        .embedder
        .clone()
        .with_default_dir(args.model.as_deref());
    let embedder = spec
        .build(&BuildContext {
            device: &device,
            model: None,
        })
        .with_context(|| format!("loading the embedder {spec}"))?;
    let options = EmbedOptions {
        limit: args.limit,
        resize: args.resize,
        batch_size: 8,
    };
    let mut bars = Bars::new();
    let record = embed_library(
        &args.library,
        &sources,
        embedder.as_ref(),
        &options,
        &device,
        &mut bars,
    )?;
    if ctx.json {
        return ctx.print_json(&serde_json::json!({
            "library": args.library,
            "record": record,
        }));
    }
    println!(
        "{} prototype(s) of dimension {} by {} ({}) in {}",
        names.len(),
        record.dimension,
        record.embedder_spec,
        record.embedder_id,
        args.library.display()
    );
    for name in &names {
        println!(
            "  {name}: {} image(s)",
            record.images.get(name).copied().unwrap_or(0)
        );
    }
    Ok(())
}
