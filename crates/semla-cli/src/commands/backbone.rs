//! `semla backbone`: the ImageNet-pretrained EfficientNet-Lite0 on its own
//! (`classify`) and the speed of the segmenters (`bench`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use candle_core::Tensor;
use clap::{Args, Subcommand};
use semla_adapters::Adaptation;
use semla_models::efficientnet::{self, EfficientLiteSegConfig};
use semla_models::tiny::TinySegConfig;
use semla_models::{Segmenter, SegmenterConfig, load_segmenter, random_segmenter};

use super::Context;

/// `semla backbone ...`
#[derive(Args, Debug)]
pub struct BackboneArgs {
    #[command(subcommand)]
    command: BackboneCommand,
}

#[derive(Subcommand, Debug)]
enum BackboneCommand {
    /// Top-5 ImageNet classes of images with the pretrained EfficientNet-Lite0.
    ///
    /// Each image is resized to 224x224 (bilinear, aspect ratio not kept),
    /// scaled to [0, 1] and normalised with the ImageNet mean/std.
    Classify {
        /// The original weights file (`efficientnet-lite0-57934424.pth`).
        #[arg(long)]
        weights: PathBuf,
        /// Images to classify (PNG or JPEG).
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Milliseconds per image of a segmenter forward pass (no adapter).
    Bench {
        /// A model folder; without it a randomly initialised segmenter of `--kind`.
        #[arg(long)]
        model: Option<PathBuf>,
        /// `efficientnet-lite0` or `tiny` (when no `--model` is given).
        #[arg(long, default_value = "efficientnet-lite0")]
        kind: String,
        /// Input width.
        #[arg(long, default_value_t = 480)]
        width: usize,
        /// Input height.
        #[arg(long, default_value_t = 360)]
        height: usize,
        /// Timed iterations (after one warm-up pass).
        #[arg(long, default_value_t = 10)]
        iterations: usize,
    },
}

#[derive(serde::Serialize)]
struct Prediction {
    class: usize,
    name: String,
    probability: f32,
}

#[derive(serde::Serialize)]
struct ImageResult {
    image: String,
    top5: Vec<Prediction>,
}

/// Runs `semla backbone`.
pub fn run(args: BackboneArgs, ctx: &Context) -> anyhow::Result<()> {
    match args.command {
        BackboneCommand::Classify { weights, images } => classify(&weights, &images, ctx),
        BackboneCommand::Bench {
            model,
            kind,
            width,
            height,
            iterations,
        } => bench(model, &kind, width, height, iterations, ctx),
    }
}

fn classify(weights: &std::path::Path, images: &[PathBuf], ctx: &Context) -> anyhow::Result<()> {
    let device = ctx.device()?;
    let model = efficientnet::load_classifier_pth(weights, &device)?;
    let names = efficientnet::imagenet_classes();
    let mut results = Vec::new();
    for path in images {
        let input = efficientnet::load_classifier_image(path, 224, &device)?;
        let logits = model
            .classify(&input)
            .with_context(|| format!("classifying {}", path.display()))?;
        let logits = logits.squeeze(0)?.to_vec1::<f32>()?;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
        let total: f32 = exp.iter().sum();
        let probs: Vec<f32> = exp.iter().map(|e| e / total).collect();
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        let top5 = order
            .iter()
            .take(5)
            .map(|&class| Prediction {
                class,
                name: names.get(class).copied().unwrap_or("?").to_string(),
                probability: probs[class],
            })
            .collect();
        results.push(ImageResult {
            image: path.display().to_string(),
            top5,
        });
    }
    if ctx.json {
        return ctx.print_json(&results);
    }
    for r in &results {
        println!("{}", r.image);
        for p in &r.top5 {
            println!(
                "  {:>4}  {:6.2}%  {}",
                p.class,
                100.0 * p.probability,
                p.name
            );
        }
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct BenchResult {
    kind: String,
    width: usize,
    height: usize,
    threads: usize,
    iterations: usize,
    ms_per_image: f64,
    /// CPU time of the whole process (all threads) per image, where the OS reports it.
    cpu_ms_per_image: Option<f64>,
}

/// User + system CPU time of this process, from `/proc/self/stat` (Linux,
/// clock ticks of 1/100 s); `None` elsewhere. On a busy machine the wall time
/// of a multi-threaded pass says little, its CPU time still does.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // fields after the parenthesised command name; utime and stime are fields 14 and 15
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn bench(
    model_dir: Option<PathBuf>,
    kind: &str,
    width: usize,
    height: usize,
    iterations: usize,
    ctx: &Context,
) -> anyhow::Result<()> {
    let device = ctx.device()?;
    let model: Box<dyn Segmenter> = match &model_dir {
        Some(dir) => load_segmenter(dir, &device)?,
        // Random weights: the speed does not depend on their values.
        None => {
            let config = match kind {
                "efficientnet-lite0" => {
                    SegmenterConfig::EfficientLite0(EfficientLiteSegConfig::new(19))
                }
                "tiny" => SegmenterConfig::Tiny(TinySegConfig::new(19)),
                other => anyhow::bail!("unknown --kind `{other}` (efficientnet-lite0 or tiny)"),
            };
            random_segmenter(&config, &device)?
        }
    };
    let images = Tensor::randn(0f32, 1f32, (1, 3, height, width), &device)?;
    let none = Adaptation::none();
    model.forward(&images, &none)?;
    let cpu_start = process_cpu_seconds();
    let start = Instant::now();
    for _ in 0..iterations.max(1) {
        model.forward(&images, &none)?;
    }
    let ms = start.elapsed().as_secs_f64() * 1000.0 / iterations.max(1) as f64;
    let cpu_ms = match (cpu_start, process_cpu_seconds()) {
        (Some(a), Some(b)) => Some((b - a) * 1000.0 / iterations.max(1) as f64),
        _ => None,
    };
    let result = BenchResult {
        kind: model_dir
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| kind.to_string()),
        width,
        height,
        threads: candle_core::utils::get_num_threads(),
        iterations: iterations.max(1),
        ms_per_image: ms,
        cpu_ms_per_image: cpu_ms,
    };
    if ctx.json {
        return ctx.print_json(&result);
    }
    let cpu = cpu_ms
        .map(|c| format!(", {c:.1} ms CPU/image"))
        .unwrap_or_default();
    println!(
        "{}: {}x{} on {} threads: {:.1} ms/image{cpu} ({} iterations)",
        result.kind, width, height, result.threads, ms, result.iterations
    );
    Ok(())
}
