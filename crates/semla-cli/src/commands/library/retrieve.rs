//! `semla library retrieve`: which adapters of a library SemLA would fuse for
//! one query embedding, and with which weights.
//!
//! Prototypes are the `train_average_embedding` arrays of the library's
//! `<name>/<name>_statistics.npz` files. Candidates are, in source order,
//! the names of `--sources` (an official `source_domains.yaml` or JSON list)
//! or else every adapter of the library sorted by name; source order breaks
//! ties. Settings come from `--config` (an official `semla_config.yaml`),
//! overridden by the flags; without either, the official defaults apply
//! (euclidean, top-k 5, temperature 0.05).
//!
//! The query is a precomputed embedding (`--embedding`) or an image embedded
//! here (`--image` with `--embedder`): `clip:DIR` is SemLA's embedder
//! (`CLIPModel.get_image_features` after `CLIPImageProcessor`, not
//! normalised), `backbone:DIR` is a segmenter folder's pooled backbone
//! embedding of the whole image at its own size, normalised as the model
//! expects (as the library's backbone prototypes are computed). The
//! embedder must be the one the library's prototypes were computed with.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use semla_adapters::AdapterLibrary;
use semla_pipeline::EmbedderSpec;
use semla_pipeline::config::{SemlaConfig, read_domain_list};
use semla_pipeline::embed::BuildContext;
use semla_pipeline::library::load_prototypes;
use semla_retrieval::{Selection, SimilarityMeasure};
use serde::Serialize;

use super::super::Context;

/// Arguments of `semla library retrieve`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("query").required(true).args(["embedding", "image"])))]
pub struct RetrieveArgs {
    /// Adapter library folder (`<name>/adapter_config.json`,
    /// `<name>/<name>_statistics.npz`, ...).
    #[arg(long, value_name = "DIR")]
    pub library: PathBuf,
    /// Query embedding: a `.npy` float32/float64 array of shape `(D,)` or `(1, D)`.
    #[arg(long, value_name = "FILE")]
    pub embedding: Option<PathBuf>,
    /// Query image (PNG or JPEG), embedded with `--embedder`.
    #[arg(long, value_name = "FILE", requires = "embedder")]
    pub image: Option<PathBuf>,
    /// How `--image` is embedded: `clip:DIR` (a Hugging Face CLIP folder,
    /// SemLA's embedder), `backbone:DIR` or `style:DIR` (a segmenter model folder;
    /// `@F` downscales the image first, as in `semla library embed`).
    #[arg(long, value_name = "KIND:DIR", requires = "image")]
    pub embedder: Option<EmbedderSpec>,
    /// Candidate adapters in source order (`source_domains.yaml` or a JSON
    /// list); default: every adapter of the library, sorted by name.
    #[arg(long, value_name = "FILE")]
    pub sources: Option<PathBuf>,
    /// SemLA settings (`semla_config.yaml` or JSON); the flags below override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Number of adapters to keep (default 5; larger than the candidates keeps all).
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Softmax temperature, >= 0 (default 0.05; 0 is replaced by 1e-6 as officially).
    #[arg(long, value_name = "T")]
    pub temperature: Option<f64>,
    /// Similarity measure: euclidean (1 / distance) or cosine (default euclidean).
    #[arg(long, value_name = "MEASURE")]
    pub similarity: Option<SimilarityMeasure>,
    /// Leave an adapter out (e.g. the target domain's own); repeatable.
    #[arg(long, value_name = "NAME")]
    pub exclude: Vec<String>,
}

/// The JSON report of a retrieval.
#[derive(Serialize)]
struct RetrieveReport<'a> {
    library: &'a Path,
    query: &'a Path,
    embedder: Option<String>,
    dimension: usize,
    similarity: SimilarityMeasure,
    top_k: usize,
    temperature: f64,
    excluded: &'a [String],
    candidates: usize,
    selections: &'a [Selection],
}

/// Runs `semla library retrieve`.
pub fn run(args: RetrieveArgs, ctx: &Context) -> anyhow::Result<()> {
    let params = SemlaConfig::resolve(
        args.config.as_deref(),
        args.top_k,
        args.temperature,
        args.similarity,
    )?
    .retrieval_params();
    let library = AdapterLibrary::open(&args.library).context("opening the adapter library")?;
    let (query_path, query, embedder_id) = match (&args.embedding, &args.image, &args.embedder) {
        (Some(path), _, _) => (path.clone(), read_query(path)?, None),
        (None, Some(image), Some(spec)) => {
            let (embedding, id) = embed_image(spec, image, ctx)?;
            (image.clone(), embedding, Some(id))
        }
        _ => bail!("give --embedding FILE, or --image FILE with --embedder KIND:DIR"),
    };
    // The library's record (written by `semla library embed`) names the
    // embedder of its prototypes: a query from another one is refused.
    library.check_query(embedder_id.as_deref(), query.len())?;
    let names: Vec<String> = match &args.sources {
        Some(path) => read_domain_list(path)?,
        None => library.names().into_iter().map(str::to_string).collect(),
    };
    if names.is_empty() {
        bail!(
            "the adapter library {} holds no adapter",
            args.library.display()
        );
    }
    let prototypes = load_prototypes(&library, &names)?;
    let exclude: Vec<&str> = args.exclude.iter().map(String::as_str).collect();
    let candidates = prototypes.candidates(&exclude)?.len();
    let selections = prototypes
        .retrieve(&query, &params, &exclude)
        .with_context(|| {
            format!(
                "retrieving for {} from {}",
                query_path.display(),
                args.library.display()
            )
        })?;

    if ctx.json {
        return ctx.print_json(&RetrieveReport {
            library: &args.library,
            query: &query_path,
            embedder: args.embedder.as_ref().map(EmbedderSpec::to_string),
            dimension: query.len(),
            similarity: params.similarity,
            top_k: params.top_k,
            temperature: params.temperature,
            excluded: &args.exclude,
            candidates,
            selections: &selections,
        });
    }
    println!(
        "{} of {candidates} candidate(s), {} similarity, temperature {}:",
        selections.len(),
        params.similarity,
        params.temperature
    );
    let width = selections
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(0)
        .max(4);
    println!(
        "{:>4}  {:<width$}  {:>14}  {:>14}  {:>10}",
        "rank", "name", "distance", "similarity", "weight"
    );
    for (rank, s) in selections.iter().enumerate() {
        println!(
            "{:>4}  {:<width$}  {:>14.6e}  {:>14.6e}  {:>10.6}",
            rank + 1,
            s.name,
            s.distance,
            s.similarity,
            s.weight
        );
    }
    Ok(())
}

/// Reads a query embedding `.npy` (float32 or float64, shape `(D,)` or `(1, D)`).
pub fn read_query(path: &Path) -> anyhow::Result<Vec<f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let array = semla_adapters::npz::parse_npy(&bytes)
        .map_err(|message| anyhow::anyhow!("{}: {message}", path.display()))?;
    match array.shape.as_slice() {
        [d] | [1, d] if *d > 0 => Ok(array.data),
        shape => bail!(
            "{}: the embedding has shape {shape:?}, expected (D,) or (1, D)",
            path.display()
        ),
    }
}

/// The embedding `[D]` of the image at `path` by the embedder `spec` names, and
/// the embedder's identity (segmenter embedders need their model folder:
/// `backbone:DIR`, `style:DIR`).
fn embed_image(
    spec: &EmbedderSpec,
    path: &Path,
    ctx: &Context,
) -> anyhow::Result<(Vec<f32>, String)> {
    let device = ctx.device()?;
    let embedder = spec
        .build(&BuildContext {
            device: &device,
            model: None,
        })
        .with_context(|| format!("loading the embedder {spec}"))?;
    let photo = semla_data::image_io::read_rgb(path)?;
    let embedding = embedder.embed_photo(&photo, &device)?;
    Ok((embedding, embedder.id().to_string()))
}
