//! `semla library`: list and inspect an adapter library (SemLA's `loradb`
//! layout), compute its prototypes (`embed`), and retrieve adapters for an
//! embedding (`retrieve`).

pub mod embed;
pub mod retrieve;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use semla_adapters::library::read_prototype;
use semla_adapters::{AdapterLibrary, LibraryEntry, TargetModules};
use serde::Serialize;

use super::Context;

/// Arguments of `semla library`.
#[derive(clap::Args, Debug)]
pub struct LibraryArgs {
    #[command(subcommand)]
    pub command: LibraryCommand,
}

/// Subcommands of `semla library`.
#[derive(clap::Subcommand, Debug)]
pub enum LibraryCommand {
    /// One line per adapter: sites, ranks, alpha, parameters, prototype dimension.
    List {
        /// Library folder (`<name>/adapter_config.json`, ...).
        library: PathBuf,
    },
    /// Details of one adapter: config and every site.
    Show {
        /// Library folder.
        library: PathBuf,
        /// Adapter name (its folder name).
        name: String,
    },
    /// Which adapters SemLA would fuse for a query embedding, with weights.
    Retrieve(retrieve::RetrieveArgs),
    /// Compute and store the domain prototypes (mean embedding of each source's training images).
    Embed(embed::EmbedArgs),
}

/// Summary of one adapter, as printed by `list` and `show`.
#[derive(Serialize)]
struct AdapterSummary<'a> {
    name: &'a str,
    dir: &'a Path,
    r: usize,
    lora_alpha: f64,
    use_rslora: bool,
    /// Distinct site ranks, ascending.
    ranks: Vec<usize>,
    site_count: usize,
    parameter_count: usize,
    /// `D` of the prototype `(1, D)`, if the adapter has one.
    prototype_dim: Option<usize>,
    /// Why the prototype file cannot be used, if it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    prototype_error: Option<String>,
}

fn summary(entry: &LibraryEntry) -> anyhow::Result<AdapterSummary<'_>> {
    let mut ranks: Vec<usize> = entry.sites.iter().map(|s| s.shape.rank).collect();
    ranks.sort_unstable();
    ranks.dedup();
    let (prototype_dim, prototype_error) = match &entry.prototype_file {
        Some(path) => match read_prototype(path) {
            Ok(p) => (Some(p.len()), None),
            Err(e) => (None, Some(e.to_string())),
        },
        None => (None, None),
    };
    Ok(AdapterSummary {
        name: &entry.name,
        dir: &entry.dir,
        r: entry.config.r,
        lora_alpha: entry.config.lora_alpha,
        use_rslora: entry.config.use_rslora,
        ranks,
        site_count: entry.sites.len(),
        parameter_count: entry.parameter_count(),
        prototype_dim,
        prototype_error,
    })
}

fn open(library: &Path) -> anyhow::Result<AdapterLibrary> {
    AdapterLibrary::open(library)
        .with_context(|| format!("cannot open adapter library {}", library.display()))
}

/// Runs `semla library ...`.
pub fn run(args: LibraryArgs, ctx: &Context) -> anyhow::Result<()> {
    match args.command {
        LibraryCommand::List { library } => list(&library, ctx),
        LibraryCommand::Show { library, name } => show(&library, &name, ctx),
        LibraryCommand::Retrieve(args) => retrieve::run(args, ctx),
        LibraryCommand::Embed(args) => embed::run(args, ctx),
    }
}

fn list(library: &Path, ctx: &Context) -> anyhow::Result<()> {
    let lib = open(library)?;
    let adapters = lib
        .entries()
        .map(summary)
        .collect::<anyhow::Result<Vec<_>>>()?;
    if ctx.json {
        #[derive(Serialize)]
        struct Listing<'a> {
            library: &'a Path,
            count: usize,
            adapters: Vec<AdapterSummary<'a>>,
            broken: Vec<&'a semla_adapters::library::BrokenEntry>,
        }
        return ctx.print_json(&Listing {
            library,
            count: adapters.len(),
            adapters,
            broken: lib.broken().collect(),
        });
    }
    println!("{} adapters in {}", adapters.len(), library.display());
    println!(
        "{:<28} {:>5} {:>8} {:>8} {:>7} {:>10} {:>9}",
        "name", "sites", "ranks", "alpha", "rslora", "params", "prototype"
    );
    for a in &adapters {
        let ranks = a
            .ranks
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let proto = match (&a.prototype_dim, &a.prototype_error) {
            (Some(d), _) => format!("(1, {d})"),
            (None, Some(_)) => "broken".to_string(),
            (None, None) => "-".to_string(),
        };
        println!(
            "{:<28} {:>5} {:>8} {:>8} {:>7} {:>10} {:>9}",
            a.name,
            a.site_count,
            ranks,
            a.lora_alpha,
            if a.use_rslora { "yes" } else { "no" },
            a.parameter_count,
            proto
        );
        if let Some(e) = &a.prototype_error {
            println!("    prototype: {e}");
        }
    }
    for b in lib.broken() {
        println!("{:<28} broken: {}", b.name, b.error);
    }
    Ok(())
}

fn show(library: &Path, name: &str, ctx: &Context) -> anyhow::Result<()> {
    let lib = open(library)?;
    let entry = lib.entry(name)?;
    let summary = summary(entry)?;
    let targets = match &entry.config.target_modules {
        None => None,
        Some(TargetModules::List(v)) => Some(v.join(", ")),
        Some(TargetModules::Regex(r)) => Some(format!("regex {r}")),
    };
    if ctx.json {
        #[derive(Serialize)]
        struct Show<'a> {
            #[serde(flatten)]
            summary: AdapterSummary<'a>,
            weights_file: &'a Path,
            prototype_file: Option<&'a Path>,
            target_modules: Option<String>,
            config: serde_json::Value,
            sites: &'a [semla_adapters::library::SiteSummary],
        }
        return ctx.print_json(&Show {
            summary,
            weights_file: &entry.weights_file,
            prototype_file: entry.prototype_file.as_deref(),
            target_modules: targets,
            config: entry.config.to_json(),
            sites: &entry.sites,
        });
    }
    println!("adapter {name} ({})", entry.dir.display());
    println!(
        "  r = {}, lora_alpha = {}, rslora = {}, {} sites, {} parameters",
        summary.r,
        summary.lora_alpha,
        summary.use_rslora,
        summary.site_count,
        summary.parameter_count
    );
    if let Some(t) = targets {
        println!("  target modules: {t}");
    }
    match summary.prototype_dim {
        Some(d) => println!("  prototype: (1, {d})"),
        None => println!("  prototype: none"),
    }
    println!(
        "  {:<48} {:>6} {:>6} {:>6} {:>5} {:>5} {:>9}",
        "site", "kind", "in", "out", "k", "rank", "scale"
    );
    for s in &entry.sites {
        let (kind, k) = match s.shape.kernel_size {
            Some(k) => ("conv2d", k.to_string()),
            None => ("linear", "-".to_string()),
        };
        println!(
            "  {:<48} {:>6} {:>6} {:>6} {:>5} {:>5} {:>9.4}",
            s.path, kind, s.shape.in_features, s.shape.out_features, k, s.shape.rank, s.scale
        );
    }
    Ok(())
}
