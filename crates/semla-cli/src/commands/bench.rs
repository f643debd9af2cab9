//! `semla bench`: the CamVid domain-shift benchmark (`semla bench camvid`) and
//! the speed benchmark (`semla bench speed`). The engines are in
//! [`semla_experiments::bench`]; this module parses, reports and logs.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use semla_data::domains::Split;
use semla_experiments::bench::camvid::{CamVidBenchConfig, run_camvid_bench};
use semla_experiments::bench::table::{render_markdown, summarise};
use semla_experiments::progress::Progress;
use semla_retrieval::SimilarityMeasure;

use super::Context;
use super::experiment::Bars;
use super::train::parse_size;

/// Arguments of `semla bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// The benchmarks.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// SemLA on CamVid: dusk + corrupted daytime domains, base model, one adapter
    /// per domain, zero-shot / uniform / SemLA / late fusion / oracle, leave-one-out.
    Camvid(CamvidArgs),
}

/// Arguments of `semla bench camvid`.
#[derive(clap::Args, Debug)]
pub struct CamvidArgs {
    /// Dataset root holding `camvid/` (train, trainannot, val, valannot[, test, testannot]).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Output folder (model, library, experiments, tables); what is there is reused.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The ImageNet EfficientNet-Lite0 weights (`efficientnet-lite0-*.pth`).
    #[arg(long, value_name = "PTH")]
    pub weights: PathBuf,
    /// Split evaluated: `val` (CamVid val for the corruptions, the 20 held-out dusk
    /// frames) or `test` (CamVid test frames, when the root has them).
    #[arg(long, default_value = "val", value_name = "SPLIT")]
    pub eval_split: Split,
    /// Target domains, comma-separated (default: dusk and seven corruptions at
    /// severity 3).
    #[arg(long, value_delimiter = ',', value_name = "D,...")]
    pub domains: Vec<String>,
    /// Input size HEIGHTxWIDTH (every image is resized to it).
    #[arg(long, default_value = "192x256", value_parser = parse_size, value_name = "HxW")]
    pub image_size: (usize, usize),
    /// Base training steps.
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    /// Base learning rate.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Adapter training steps per domain.
    #[arg(long, default_value_t = 120)]
    pub adapter_steps: usize,
    /// Adapter learning rate.
    #[arg(long, default_value_t = 3e-3)]
    pub adapter_lr: f64,
    /// Images per training step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Training images per adapter domain at most (evenly spaced; 0: all).
    #[arg(long, default_value_t = 96)]
    pub train_images: usize,
    /// Evaluation images per domain at most (evenly spaced; 0: all).
    #[arg(long, default_value_t = 0)]
    pub eval_images: usize,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// SemLA: adapters fused per image.
    #[arg(long, default_value_t = 3)]
    pub top_k: usize,
    /// SemLA: softmax temperature.
    #[arg(long, default_value_t = 0.05)]
    pub temperature: f64,
    /// SemLA: similarity (`euclidean`, 1/distance as the paper, or `cosine`).
    #[arg(long, value_name = "S")]
    pub similarity: Option<SimilarityMeasure>,
    /// Seed of everything.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// Runs `semla bench`.
pub fn run(args: BenchArgs, ctx: &Context) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Camvid(args) => run_camvid(args, ctx),
    }
}

fn run_camvid(args: CamvidArgs, ctx: &Context) -> anyhow::Result<()> {
    let mut config = CamVidBenchConfig::new(args.data.clone(), args.weights.clone());
    if !args.domains.is_empty() {
        config.domains = args.domains.clone();
    }
    config.eval_split = args.eval_split;
    config.image_size = args.image_size;
    config.base_steps = args.steps;
    config.base_lr = args.lr;
    config.adapter_steps = args.adapter_steps;
    config.adapter_lr = args.adapter_lr;
    config.batch_size = args.batch.max(1);
    config.train_images = (args.train_images > 0).then_some(args.train_images);
    config.eval_images = (args.eval_images > 0).then_some(args.eval_images);
    config.rank = args.rank;
    config.alpha = 2.0 * args.rank as f64;
    config.retrieval.top_k = args.top_k;
    config.retrieval.temperature = args.temperature;
    if let Some(similarity) = args.similarity {
        config.retrieval.similarity = similarity;
    }
    config.seed = args.seed;
    let outcome = if std::io::stderr().is_terminal() {
        run_camvid_bench(&config, &args.out, &mut Bars::new())?
    } else {
        run_camvid_bench(&config, &args.out, &mut LogProgress::default())?
    };
    let table = &outcome.table;
    if ctx.json {
        return ctx.print_json(&serde_json::json!({
            "out": args.out,
            "eval_split": config.eval_split,
            "table": table,
            "summary": summarise(table),
            "seconds": outcome.seconds,
            "phases": outcome.phases,
            "reused": outcome.reused,
        }));
    }
    println!();
    println!(
        "mIoU (%) on the {} frames of each domain, leave-one-out (own adapter removed except for oracle):",
        config.eval_split
    );
    print!("{}", render_markdown(table));
    println!(
        "{:.1} s; reused: {}; files in {}",
        outcome.seconds,
        if outcome.reused.is_empty() {
            "nothing".to_string()
        } else {
            outcome.reused.join(", ")
        },
        args.out.display()
    );
    Ok(())
}

/// Progress as timestamped lines on stderr (for logs: `nohup`, redirections).
#[derive(Default)]
struct LogProgress {
    label: String,
    total: u64,
    last_logged: u64,
    message: String,
    started: Option<Instant>,
}

impl Progress for LogProgress {
    fn begin(&mut self, label: &str, total: u64) {
        self.label = label.to_string();
        self.total = total;
        self.last_logged = 0;
        self.message.clear();
        self.started = Some(Instant::now());
        eprintln!("[{}] {label} ({total})", stamp());
    }

    fn set(&mut self, done: u64) {
        let step = (self.total / 10).max(1);
        if done >= self.last_logged + step && done < self.total {
            self.last_logged = done;
            eprintln!(
                "[{}]   {} {done}/{} {}",
                stamp(),
                self.label,
                self.total,
                self.message
            );
        }
    }

    fn message(&mut self, text: &str) {
        self.message = text.to_string();
    }

    fn end(&mut self) {
        let seconds = self
            .started
            .map(|s| s.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        eprintln!(
            "[{}]   {} done in {seconds:.1} s {}",
            stamp(),
            self.label,
            self.message
        );
    }

    fn note(&mut self, text: &str) {
        eprintln!("[{}] {text}", stamp());
    }
}

/// Seconds since the Unix epoch, as `HH:MM:SS` UTC.
fn stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}
