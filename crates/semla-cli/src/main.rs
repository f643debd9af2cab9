//! `semla`: adaptive semantic segmentation with a library of LoRA adapters.
//!
//! Each subcommand lives in its own module under `commands/`; this file only
//! parses the command line, sets up logging and dispatches.

mod commands;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "semla",
    version,
    about = "Semantic library adaptation: LoRA retrieval and fusion for segmentation under domain shift"
)]
struct Cli {
    /// Print machine-readable JSON on stdout instead of human-readable text.
    #[arg(long, global = true)]
    json: bool,

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
    /// Segment images with SemLA: masks, overlays and the adapters used.
    Segment(commands::segment::SegmentArgs),
    /// Train a base segmenter (`semla train base`).
    Train(commands::train::TrainArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let ctx = commands::Context { json: cli.json };
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
        Command::Segment(args) => commands::segment::run(args, &ctx),
        Command::Train(args) => commands::train::run(args, &ctx),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", error_message(&err));
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
        let text = cause.to_string();
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
