//! `semla`: adaptive semantic segmentation with a library of LoRA adapters.
//!
//! Each subcommand lives in its own module under `commands/`; this file only
//! parses the command line, sets up logging and dispatches.

mod commands;

use clap::{Parser, Subcommand};

/// `semla --version`: the version and the optional features compiled in.
const VERSION: &str = if cfg!(feature = "cuda") {
    concat!(env!("CARGO_PKG_VERSION"), " (features: cuda)")
} else {
    concat!(env!("CARGO_PKG_VERSION"), " (features: none; CPU only)")
};

#[derive(Parser)]
#[command(
    name = "semla",
    version = VERSION,
    about = "Semantic library adaptation: LoRA retrieval and fusion for segmentation under domain shift"
)]
struct Cli {
    /// Print machine-readable JSON on stdout instead of human-readable text
    /// (errors as JSON on stderr).
    #[arg(long, global = true)]
    json: bool,

    /// Where models run: cpu, cuda, cuda:N, or auto (CUDA GPU 0 when this build
    /// has the `cuda` feature and a GPU answers, else the CPU).
    #[arg(long, global = true, value_name = "DEVICE", default_value = "auto")]
    device: semla_models::device::DeviceSpec,

    /// Largest image, label map or resize size accepted, in pixels.
    #[arg(long, global = true, value_name = "N", help_heading = "Limits", default_value_t = semla_core::limits::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,

    /// Most classes a model, label map or metric may have.
    #[arg(long, global = true, value_name = "N", help_heading = "Limits", default_value_t = semla_core::limits::DEFAULT_MAX_CLASSES)]
    max_classes: u64,

    /// Most images per batch.
    #[arg(long, global = true, value_name = "N", help_heading = "Limits", default_value_t = semla_core::limits::DEFAULT_MAX_BATCH)]
    max_batch: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    // Keep one line per command family, sorted; each helper module owns its arguments.
    /// LoRA adapters: merge weighted adapters of a library, train one.
    Adapter(commands::adapter::AdapterArgs),
    /// The ImageNet-pretrained EfficientNet-Lite0: classify images; segmenter speed.
    Backbone(commands::backbone::BackboneArgs),
    /// Benchmarks: SemLA on CamVid domain shifts; per-image and library-scale speed.
    Bench(commands::bench::BenchArgs),
    /// CLIP: tokenizer, image and text features of a Hugging Face CLIPModel folder.
    Clip(commands::clip::ClipArgs),
    /// CSI: DACS self-training with relabeling into classes the source labels lack.
    Csi(commands::csi::CsiArgs),
    /// Domains and label maps: statistics, coloured views.
    Data(commands::data::DataArgs),
    /// SemLA end to end on the embedded synthetic world: table and HTML report.
    Demo(commands::demo::DemoArgs),
    /// mIoU of a model (optionally with one adapter) on a domain split.
    Eval(commands::eval::EvalArgs),
    /// Adapter libraries: list, show, retrieve adapters for an embedding.
    Library(commands::library::LibraryArgs),
    /// mIoU and accuracies of predicted label maps against ground truth.
    Metrics(commands::metrics::MetricsArgs),
    /// Model checkpoints: convert the official CAT-Seg checkpoint into a model folder.
    Model(commands::model::ModelArgs),
    /// Segment Anything: masks of images for point and box prompts.
    Sam(commands::sam::SamArgs),
    /// Segment images with SemLA: masks, overlays and the adapters used.
    Segment(commands::segment::SegmentArgs),
    /// SemLA as an HTTP service: per-image retrieval, explanations, a web page, metrics.
    Serve(commands::serve::ServeArgs),
    /// Train a base segmenter (`semla train base`).
    Train(commands::train::TrainArgs),
}

/// `--temperature -1` must reach the setting's own check ("must be positive")
/// instead of clap's "unexpected argument": clap does not pass
/// `allow_negative_numbers` down to subcommands, so every level gets it here.
fn parse_cli() -> Result<Cli, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    fn allow_negative(command: clap::Command) -> clap::Command {
        command
            .allow_negative_numbers(true)
            .mut_subcommands(allow_negative)
    }
    let matches = allow_negative(Cli::command()).try_get_matches()?;
    Cli::from_arg_matches(&matches)
}

fn main() -> std::process::ExitCode {
    // Every command runs models: keep freed tensor buffers instead of re-faulting them.
    semla_core::alloc::keep_freed_memory();
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let help = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
            if !help && std::env::args().any(|a| a == "--json") {
                let message = e.to_string();
                let first = message.lines().next().unwrap_or_default();
                let first = first.strip_prefix("error: ").unwrap_or(first);
                eprintln!("{}", serde_json::json!({ "error": first }));
                return std::process::ExitCode::from(2);
            }
            e.exit()
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    semla_core::limits::set(
        Some(cli.max_pixels),
        Some(cli.max_classes),
        Some(cli.max_batch),
    );
    // An interrupted write leaves the previous content and no temporary files.
    // The server writes nothing and handles SIGTERM itself: it drains the
    // requests in flight before it exits.
    if !matches!(cli.command, Command::Serve(_))
        && let Err(e) = semla_core::remove_on_signals()
    {
        tracing::warn!("cannot watch for interrupts: {e}");
    }
    let ctx = commands::Context::new(cli.json, cli.device);
    let result: anyhow::Result<()> = match cli.command {
        Command::Adapter(args) => commands::adapter::run(args, &ctx),
        Command::Backbone(args) => commands::backbone::run(args, &ctx),
        Command::Bench(args) => commands::bench::run(args, &ctx),
        Command::Clip(args) => commands::clip::run(args, &ctx),
        Command::Data(args) => commands::data::run(args, &ctx),
        Command::Demo(args) => commands::demo::run(args, &ctx),
        Command::Eval(args) => commands::eval::run(args, &ctx),
        Command::Library(args) => commands::library::run(args, &ctx),
        Command::Metrics(args) => commands::metrics::run(args, &ctx),
        Command::Model(args) => commands::model::run(args, &ctx),
        Command::Sam(args) => commands::sam::run(args, &ctx),
        Command::Csi(args) => commands::csi::run(args, &ctx),
        Command::Segment(args) => commands::segment::run(args, &ctx),
        Command::Serve(args) => commands::serve::run(args, &ctx),
        Command::Train(args) => commands::train::run(args, &ctx),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            let message = error_message(&err);
            if cli.json {
                eprintln!("{}", serde_json::json!({ "error": message }));
            } else {
                eprintln!("error: {message}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once: library errors
/// often already include their cause in their own message (`{path}: {source}`),
/// so a cause whose text the message already holds is not repeated.
fn error_message(err: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in err.chain() {
        // One line: a cause's own line breaks become spaces.
        let text = cause
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::error_message;

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        #[derive(Debug)]
        struct Wrapped(std::io::Error);
        impl std::fmt::Display for Wrapped {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "lib: {}", self.0)
            }
        }
        impl std::error::Error for Wrapped {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let err = anyhow::Error::new(Wrapped(io)).context("opening the adapter library lib");
        assert_eq!(
            error_message(&err),
            "opening the adapter library lib: lib: no such file"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_message(&plain), "outer: inner");
    }
}
