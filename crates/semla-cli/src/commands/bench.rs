//! `semla bench`: the CamVid domain-shift benchmark (`semla bench camvid`) and
//! the speed benchmark (`semla bench speed`). The engines are in
//! [`semla_experiments::bench`]; this module parses, reports and logs.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use semla_bench::camvid::{CamVidBenchConfig, run_camvid_bench};
use semla_bench::machine::load_average;
use semla_bench::present::chart::{camvid_chart, speed_charts};
use semla_bench::present::markdown::render_markdown;
use semla_bench::speed::{
    CatSegSize, ReferenceTiming, SpeedConfig, Timing, library_scale, time_catseg, time_clip,
    time_segmenter,
};
use semla_bench::table::{ResultsTable, summarise};
use semla_data::domains::Split;
use semla_retrieval::SimilarityMeasure;

use super::Context;
use super::common::{LogProgress, parse_size, stderr_progress};

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
    /// CLOUDS on CamVid: per target domain, adapters self-trained without its
    /// labels (no refinement and weight-free refinements) against zero-shot and
    /// the oracle; SemLA over the label-free library, leave-one-out; the
    /// quality of raw and refined pseudo-labels.
    Clouds(CloudsArgs),
    /// CSI on CamVid: coarse-to-fine and open taxonomies, source-only, DACS
    /// without and with CSI's relabeling, and the oracle; relabeling audit.
    Csi(CsiArgs),
    /// Per-image latency (plain, SemLA, merge per image) for CLIP ViT-B/16 and the
    /// CamVid segmenter; open/retrieval time and memory of a 10,000-adapter library.
    Speed(SpeedArgs),
    /// Bar charts (PNG) of a `bench camvid` summary and/or a `bench speed` result.
    Chart(ChartArgs),
    /// `semla serve` under load: requests per second and p50/p95/p99 latency at
    /// 1, 2, 4 concurrent clients, next to the pipeline's own per-image time.
    Serve(super::serve::BenchServeArgs),
}

/// Arguments of `semla bench speed`.
#[derive(clap::Args, Debug)]
pub struct SpeedArgs {
    /// Output folder (`speed.json`, charts; the generated library unless --library-dir).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Timed runs per path (median reported, after 2 warm-ups).
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Segmenter input HEIGHTxWIDTH.
    #[arg(long, default_value = "360x480", value_parser = parse_size, value_name = "HxW")]
    pub segmenter_size: (usize, usize),
    /// The segmenter's `semla-style` path embeds the image average-pooled by this
    /// factor in each direction (1: full size; 2, the default, as `bench camvid`).
    #[arg(long, default_value_t = 2)]
    pub embed_downscale: usize,
    /// Adapters in the library-scale benchmark (0: skip it).
    #[arg(long, default_value_t = 10_000)]
    pub library_adapters: usize,
    /// Where the generated library goes (reused when it exists; default OUT/library).
    #[arg(long, value_name = "DIR")]
    pub library_dir: Option<PathBuf>,
    /// JSON timings of `tools/reference/semla_speed.py`, charted next to ours.
    #[arg(long, value_name = "FILE")]
    pub reference: Option<PathBuf>,
    /// Skip CLIP ViT-B/16.
    #[arg(long)]
    pub skip_clip: bool,
    /// Skip the segmenter.
    #[arg(long)]
    pub skip_segmenter: bool,
    /// Also time CAT-Seg at its real size (random weights; `b`, `l` or `b,l`):
    /// plain and the full SemLA path through the official sliding window, with
    /// the peak memory (L first when both). Minutes per run on a small CPU.
    #[arg(long, value_delimiter = ',', value_name = "b|l")]
    pub catseg: Vec<CatSegArg>,
    /// A command printing reference timings as JSON (e.g. `python3
    /// tools/reference/catseg_speed.py ...`), run by `sh -c` after ours in this
    /// run, on the same machine and threads; its timings join `--reference`'s.
    #[arg(long, value_name = "CMD")]
    pub reference_command: Option<String>,
}

/// `--catseg`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatSegArg {
    /// CAT-Seg B (ViT-B/16 @ 384).
    B,
    /// CAT-Seg L (ViT-L/14 @ 336).
    L,
}

/// Arguments of `semla bench chart`.
#[derive(clap::Args, Debug)]
pub struct ChartArgs {
    /// A `summary-<split>.json` written by `semla bench camvid`.
    #[arg(long, value_name = "FILE")]
    pub camvid: Option<PathBuf>,
    /// A `speed.json` written by `semla bench speed`.
    #[arg(long, value_name = "FILE")]
    pub speed: Option<PathBuf>,
    /// JSON timings of `tools/reference/semla_speed.py`, charted next to ours
    /// (default: the reference timings the `--speed` run recorded).
    #[arg(long, value_name = "FILE")]
    pub reference: Option<PathBuf>,
    /// Output folder for `bench_*.png`.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
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
    /// The ImageNet EfficientNet-Lite0 weights (`efficientnet-lite0-*.pth`;
    /// default: the first such file in DATA, DATA/weights or DATA/../weights).
    #[arg(long, value_name = "PTH")]
    pub weights: Option<PathBuf>,
    /// Split evaluated: `val` (CamVid val for the corruptions, the 20 held-out dusk
    /// frames) or `test` (CamVid test frames, when the root has them).
    #[arg(long, default_value = "val", value_name = "SPLIT")]
    pub eval_split: Split,
    /// Target domains, comma-separated (default: dusk and seven corruption kinds at
    /// severities 3 and 5).
    #[arg(long, value_delimiter = ',', value_name = "D,...")]
    pub domains: Vec<String>,
    /// Input size HEIGHTxWIDTH (every image is resized to it).
    #[arg(long, default_value = "192x256", value_parser = parse_size, value_name = "HxW")]
    pub image_size: (usize, usize),
    /// Base training steps.
    #[arg(long, default_value_t = 240)]
    pub steps: usize,
    /// Base learning rate.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Adapter training steps per domain.
    #[arg(long, default_value_t = 80)]
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
    #[arg(long, default_value_t = 50)]
    pub eval_images: usize,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// SemLA: the query embedder, `style` (the base model's early channel
    /// statistics) or `backbone` (its pooled deep features); prototypes are
    /// recomputed when it changes.
    #[arg(long, default_value = "style", value_name = "E", value_parser = ["style", "backbone"])]
    pub embedder: String,
    /// SemLA: the embedder sees each image average-pooled by this factor
    /// in each direction (1: full size); prototypes are recomputed when it changes.
    #[arg(long, default_value_t = 2)]
    pub embed_downscale: usize,
    /// SemLA: frames per domain on which top-k and temperature are tuned (train
    /// frames no adapter was trained on; 0: no tuning, use --top-k and --temperature).
    #[arg(long, default_value_t = 12)]
    pub tune_images: usize,
    /// SemLA: adapters fused per image (when --tune-images is 0).
    #[arg(long, default_value_t = 3)]
    pub top_k: usize,
    /// SemLA: softmax temperature (when --tune-images is 0).
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
        BenchCommand::Clouds(args) => run_clouds(args, ctx),
        BenchCommand::Csi(args) => run_csi(args, ctx),
        BenchCommand::Speed(args) => run_speed(args, ctx),
        BenchCommand::Chart(args) => run_chart(args, ctx),
        BenchCommand::Serve(args) => super::serve::bench(args, ctx),
    }
}

fn read_reference(path: Option<&PathBuf>) -> anyhow::Result<Vec<ReferenceTiming>> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the reference timings {}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let timings = value.get("timings").cloned().unwrap_or(value);
    serde_json::from_value(timings).with_context(|| {
        format!(
            "{}: expected a list of {{model, path, median_s}} (or {{\"timings\": [...]}})",
            path.display()
        )
    })
}

/// Runs `command` with `sh -c` and reads the reference timings it prints as JSON
/// (`{"timings": [...], ...}`): the timings and the whole document.
fn run_reference_command(
    command: &str,
) -> anyhow::Result<(Vec<ReferenceTiming>, serde_json::Value)> {
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running the reference command `{command}`"))?;
    if !output.status.success() {
        anyhow::bail!(
            "the reference command `{command}` failed ({})",
            output.status
        );
    }
    let value: serde_json::Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("the reference command `{command}` printed no JSON"))?;
    let timings = value.get("timings").cloned().unwrap_or(value.clone());
    let timings = serde_json::from_value(timings).with_context(|| {
        format!(
            "the reference command `{command}` printed no timings: expected {{\"timings\": [{{model, path, median_s}}, ...]}}"
        )
    })?;
    Ok((timings, value))
}

fn write_speed_charts(
    timings: &[Timing],
    reference: &[ReferenceTiming],
    out: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (model, chart) in speed_charts(timings, reference) {
        let short = if model.starts_with("clip") {
            "clip"
        } else if model.starts_with("catseg-b") {
            "catseg_b"
        } else if model.starts_with("catseg-l") {
            "catseg_l"
        } else {
            "segmenter"
        };
        let path = out.join(format!("bench_speed_{short}.png"));
        chart.write_png(&path)?;
        written.push(path);
    }
    Ok(written)
}

fn run_speed(args: SpeedArgs, ctx: &Context) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let config = SpeedConfig {
        runs: args.runs.max(1),
        segmenter_size: args.segmenter_size,
        embed_downscale: args.embed_downscale.max(1),
        library_adapters: args.library_adapters,
        clip: !args.skip_clip,
        segmenter: !args.skip_segmenter,
        ..SpeedConfig::default()
    };
    let device = ctx.device()?;
    let mut log = LogProgress::default();
    let load_at_start = load_average();
    let mut timings = Vec::new();
    if config.clip {
        timings.extend(time_clip(&config, &device, &mut log)?);
    }
    if config.segmenter {
        timings.extend(time_segmenter(&config, &device, &mut log)?);
    }
    // L first: what B's peak holds of L is then freed memory glibc kept, not L's weights.
    let mut catseg_peak_rss = serde_json::Map::new();
    for (arg, size) in [(CatSegArg::L, CatSegSize::L), (CatSegArg::B, CatSegSize::B)] {
        if args.catseg.contains(&arg) {
            let (rows, peak) = time_catseg(&config, size, &device, &mut log)?;
            timings.extend(rows);
            catseg_peak_rss.insert(format!("{size:?}").to_lowercase(), serde_json::json!(peak));
        }
    }
    let library = if config.library_adapters > 0 {
        let dir = args
            .library_dir
            .clone()
            .unwrap_or_else(|| args.out.join("library"));
        Some(library_scale(
            &dir,
            config.library_adapters,
            512,
            50,
            &mut log,
        )?)
    } else {
        None
    };
    let mut reference = read_reference(args.reference.as_ref())?;
    let mut reference_run = None;
    if let Some(command) = &args.reference_command {
        let (timings, whole) = run_reference_command(command)?;
        reference.extend(timings);
        reference_run = Some(whole);
    }
    let charts = write_speed_charts(&timings, &reference, &args.out)?;
    let threads = std::env::var("RAYON_NUM_THREADS").ok();
    let result = serde_json::json!({
        "config": config,
        "device": semla_models::device::device_name(&device),
        "rayon_num_threads": threads,
        "available_parallelism": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "load_average_at_start": load_at_start,
        "timings": timings,
        "library": library,
        "catseg_peak_rss_bytes": catseg_peak_rss,
        "reference": reference,
        "reference_command": args.reference_command,
        "reference_run": reference_run,
    });
    let path = args.out.join("speed.json");
    semla_core::fs::write_atomic(&path, serde_json::to_string_pretty(&result)?.as_bytes())?;
    if ctx.json {
        return ctx.print_json(&result);
    }
    println!(
        "{:<34} {:<22} {:>10} {:>10} {:>8} {:>6} {:>12} {:>12}",
        "model", "path", "median ms", "min ms", "x plain", "load", "peak MiB", "+ path MiB"
    );
    let mib = |b: u64| format!("{:.0}", b as f64 / 1048576.0);
    for t in &timings {
        println!(
            "{:<34} {:<22} {:>10.1} {:>10.1} {:>8.2} {:>6} {:>12} {:>12}",
            t.model,
            t.path,
            1e3 * t.median_s,
            1e3 * t.min_s,
            t.vs_plain,
            t.load_average
                .map(|l| format!("{l:.2}"))
                .unwrap_or_default(),
            t.peak_resident_bytes.map(mib).unwrap_or_default(),
            t.peak_resident_bytes
                .zip(t.resident_before_bytes)
                .map(|(peak, before)| mib(peak.saturating_sub(before)))
                .unwrap_or_default()
        );
    }
    if let Some(l) = &library {
        println!(
            "library of {} adapters: open {:.3} s, prototypes {:.3} s, retrieval {:.3} ms/query, load top-3 {:.2} ms, VmRSS {} -> {} MiB (load {})",
            l.adapters,
            l.open_s,
            l.prototypes_s,
            1e3 * l.retrieval_median_s,
            1e3 * l.load_top_k_median_s,
            l.rss_before
                .map(|b| format!("{:.1}", b as f64 / 1048576.0))
                .unwrap_or_default(),
            l.rss_after
                .map(|b| format!("{:.1}", b as f64 / 1048576.0))
                .unwrap_or_default(),
            l.load_average
                .map(|l| format!("{l:.2}"))
                .unwrap_or_default()
        );
    }
    for c in charts {
        println!("chart: {}", c.display());
    }
    println!("results in {}", path.display());
    Ok(())
}

fn run_chart(args: ChartArgs, ctx: &Context) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut written = Vec::new();
    if let Some(path) = &args.camvid {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let table: ResultsTable = serde_json::from_value(
            value
                .get("table")
                .cloned()
                .unwrap_or(serde_json::Value::Null),
        )
        .with_context(|| format!("{} has no results table", path.display()))?;
        let split = value
            .pointer("/config/eval_split")
            .and_then(|s| s.as_str())
            .unwrap_or("held-out");
        let out = args.out.join("bench_camvid.png");
        camvid_chart(&table, split).write_png(&out)?;
        written.push(out);
    }
    if let Some(path) = &args.speed {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let timings: Vec<Timing> = serde_json::from_value(
            value
                .get("timings")
                .cloned()
                .unwrap_or(serde_json::Value::Null),
        )
        .with_context(|| format!("{} has no timings", path.display()))?;
        // Without --reference: the reference timings the run itself recorded.
        let reference = match &args.reference {
            Some(file) => read_reference(Some(file))?,
            None => value
                .get("reference")
                .cloned()
                .map(serde_json::from_value)
                .transpose()
                .with_context(|| format!("{}: unreadable reference timings", path.display()))?
                .unwrap_or_default(),
        };
        written.extend(write_speed_charts(&timings, &reference, &args.out)?);
    }
    if written.is_empty() {
        anyhow::bail!("nothing to chart: pass --camvid and/or --speed");
    }
    if ctx.json {
        return ctx.print_json(&serde_json::json!({ "charts": written }));
    }
    for path in written {
        println!("chart: {}", path.display());
    }
    Ok(())
}

fn run_camvid(args: CamvidArgs, ctx: &Context) -> anyhow::Result<()> {
    let weights = imagenet_weights(args.weights.as_deref(), &args.data)?;
    let mut config = CamVidBenchConfig::new(args.data.clone(), weights);
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
    config.tune_images = args.tune_images;
    config.embed_downscale = args.embed_downscale.max(1);
    config.embedder = args.embedder;
    if let Some(similarity) = args.similarity {
        config.retrieval.similarity = similarity;
    }
    config.seed = args.seed;
    let outcome = run_camvid_bench(
        &config,
        &ctx.device()?,
        &args.out,
        stderr_progress().as_mut(),
    )?;
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
            "retrieval": outcome.retrieval,
            "tuning": outcome.tuning,
        }));
    }
    println!();
    println!(
        "mIoU (%) on the {} frames of each domain, leave-one-out (own adapter removed except for oracle):",
        config.eval_split
    );
    print!("{}", render_markdown(table));
    println!(
        "SemLA: top-k {}, T = {}{}",
        outcome.retrieval.top_k,
        outcome.retrieval.temperature,
        if outcome.tuning.is_some() {
            " (tuned, see tuning.json)"
        } else {
            ""
        }
    );
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

/// `--weights`, or the first `efficientnet-lite0*.pth` in `data`,
/// `data/weights` or `data/../weights`.
fn imagenet_weights(given: Option<&Path>, data: &Path) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    let places = [
        data.to_path_buf(),
        data.join("weights"),
        data.join("../weights"),
    ];
    for dir in &places {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("efficientnet-lite0") && n.ends_with(".pth"))
            })
            .collect();
        found.sort();
        if let Some(path) = found.into_iter().next() {
            eprintln!("ImageNet weights: {}", path.display());
            return Ok(path);
        }
    }
    anyhow::bail!(
        "no --weights given and no efficientnet-lite0*.pth in {}, {} or {}: pass --weights PTH (the ImageNet EfficientNet-Lite0 checkpoint)",
        places[0].display(),
        places[1].display(),
        places[2].display()
    )
}

/// Arguments of `semla bench clouds`.
#[derive(clap::Args, Debug)]
pub struct CloudsArgs {
    /// Dataset root holding `camvid/` (train, trainannot, val, valannot[, test, testannot]).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Output folder (model, libraries, pseudo-label pictures, tables); what is there is reused.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The ImageNet EfficientNet-Lite0 weights (`efficientnet-lite0-*.pth`;
    /// default: the first such file in DATA, DATA/weights or DATA/../weights).
    #[arg(long, value_name = "PTH")]
    pub weights: Option<PathBuf>,
    /// Split evaluated: `val` (CamVid val for the corruptions, the 20 held-out
    /// dusk frames) or `test` (CamVid test frames, when the root has them).
    #[arg(long, default_value = "val", value_name = "SPLIT")]
    pub eval_split: Split,
    /// Target domains, comma-separated (default: dusk, fog3, night3, rain3, snow3).
    #[arg(long, value_delimiter = ',', value_name = "D,...")]
    pub domains: Vec<String>,
    /// Weight-free refinements trained and scored besides none, comma-separated:
    /// `grow` (CLOUDS' prompts, region growing), `graph` (CLOUDS' prompts, graph
    /// segments), `vote` (the teacher's majority inside image segments).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "grow,vote",
        value_name = "R,..."
    )]
    pub refiners: Vec<semla_bench::clouds::WeightFreeRefiner>,
    /// Do not self-train each domain's head (the official CLOUDS case, a model
    /// per domain in OUT/label-free/head; the `selftrain-head` row).
    #[arg(long)]
    pub no_head: bool,
    /// Input size HEIGHTxWIDTH (every image is resized to it).
    #[arg(long, default_value = "96x128", value_parser = parse_size, value_name = "HxW")]
    pub image_size: (usize, usize),
    /// Base training steps.
    #[arg(long, default_value_t = 240)]
    pub steps: usize,
    /// Base learning rate.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Steps of every adapter (oracle and label-free).
    #[arg(long, default_value_t = 80)]
    pub adapter_steps: usize,
    /// Learning rate of every adapter.
    #[arg(long, default_value_t = 3e-3)]
    pub adapter_lr: f64,
    /// Labelled images per step (base, oracle; daytime images in self-training).
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Unlabeled target images per self-training step.
    #[arg(long, default_value_t = 2)]
    pub target_batch: usize,
    /// The teacher's EMA weight (official 0.999).
    #[arg(long, default_value_t = 0.99)]
    pub ema_alpha: f64,
    /// The teacher follows the student every this many steps (official 100,
    /// which an 80-step run would never reach).
    #[arg(long, default_value_t = 10)]
    pub ema_every: usize,
    /// A teacher region becomes a prompt above this many pixels.
    #[arg(long, default_value_t = 300)]
    pub min_area: usize,
    /// Points per prompt.
    #[arg(long, default_value_t = 5)]
    pub points: usize,
    /// Pixels no mask claims: `teacher` (keep its label) or `ignore` (official).
    #[arg(long, default_value = "teacher", value_parser = ["teacher", "ignore"])]
    pub unclaimed: String,
    /// Training images per domain at most (evenly spaced; 0: all).
    #[arg(long, default_value_t = 96)]
    pub train_images: usize,
    /// Evaluation images per domain at most (evenly spaced; 0: all).
    #[arg(long, default_value_t = 50)]
    pub eval_images: usize,
    /// Train frames per domain whose pseudo-labels are scored against the real labels.
    #[arg(long, default_value_t = 12)]
    pub quality_images: usize,
    /// LoRA rank (alpha = 2 x rank).
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// SemLA: adapters fused per image.
    #[arg(long, default_value_t = 3)]
    pub top_k: usize,
    /// SemLA: softmax temperature.
    #[arg(long, default_value_t = 0.05)]
    pub temperature: f64,
    /// Seed of everything.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

fn run_clouds(args: CloudsArgs, ctx: &Context) -> anyhow::Result<()> {
    use semla_bench::clouds::{CloudsBenchConfig, render_quality, run_clouds_bench};
    let weights = imagenet_weights(args.weights.as_deref(), &args.data)?;
    let mut config = CloudsBenchConfig::new(args.data.clone(), weights);
    if !args.domains.is_empty() {
        config.domains = args.domains.clone();
    }
    config.refiners = args.refiners.clone();
    config.head = !args.no_head;
    config.eval_split = args.eval_split;
    config.image_size = args.image_size;
    config.base_steps = args.steps;
    config.base_lr = args.lr;
    config.adapter_steps = args.adapter_steps;
    config.adapter_lr = args.adapter_lr;
    config.batch_size = args.batch.max(1);
    config.target_per_step = args.target_batch;
    config.ema.alpha = args.ema_alpha;
    config.ema.every = args.ema_every;
    config.min_area_px = args.min_area;
    config.points_per_component = args.points;
    config.unclaimed_from_teacher = args.unclaimed == "teacher";
    config.train_images = (args.train_images > 0).then_some(args.train_images);
    config.eval_images = (args.eval_images > 0).then_some(args.eval_images);
    config.quality_images = args.quality_images;
    config.rank = args.rank;
    config.alpha = 2.0 * args.rank as f64;
    config.retrieval.top_k = args.top_k;
    config.retrieval.temperature = args.temperature;
    config.seed = args.seed;
    let outcome = run_clouds_bench(
        &config,
        &ctx.device()?,
        &args.out,
        stderr_progress().as_mut(),
    )?;
    if ctx.json {
        return ctx.print_json(&serde_json::json!({
            "out": args.out,
            "eval_split": config.eval_split,
            "table": outcome.table,
            "summary": summarise(&outcome.table),
            "pseudo_label_quality": outcome.quality,
            "self_training": outcome.self_training,
            "seconds": outcome.seconds,
            "phases": outcome.phases,
            "reused": outcome.reused,
        }));
    }
    println!();
    println!(
        "mIoU (%) on the {} frames of each domain (selftrain*: its label-free adapter; semla-label-free*: SemLA over the label-free library, own adapter removed):",
        config.eval_split
    );
    print!(
        "{}",
        semla_bench::present::markdown::render_table(&outcome.table, false)
    );
    println!();
    print!("{}", render_quality(&outcome.quality));
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

/// Arguments of `semla bench csi`.
#[derive(clap::Args, Debug)]
pub struct CsiArgs {
    /// Dataset root holding `camvid/` (train, trainannot, val, valannot[, test, testannot]).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Output folder (models, relabeling reports, tables); what is there is reused.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Split evaluated: `val` (the 20 held-out dusk frames, CamVid val for the
    /// corruptions) or `test` (CamVid test frames, when the root has them).
    #[arg(long, default_value = "val", value_name = "SPLIT")]
    pub eval_split: Split,
    /// The ImageNet EfficientNet-Lite0 weights (backbone and classifier;
    /// default: the first `efficientnet-lite0*.pth` in DATA, DATA/weights or DATA/../weights).
    #[arg(long, value_name = "PTH")]
    pub weights: Option<PathBuf>,
    /// Target domains, comma-separated (default: camvid-dusk).
    #[arg(long, value_delimiter = ',', value_name = "D,...")]
    pub domains: Vec<String>,
    /// Input size HEIGHTxWIDTH.
    #[arg(long, default_value = "144x192", value_parser = parse_size, value_name = "HxW")]
    pub image_size: (usize, usize),
    /// Source-only training steps.
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    /// DACS and oracle steps.
    #[arg(long, default_value_t = 200)]
    pub adapt_steps: usize,
    /// Training images per domain at most (evenly spaced; 0: all).
    #[arg(long, default_value_t = 96)]
    pub train_images: usize,
    /// Evaluation images per domain at most (evenly spaced; 0: all).
    #[arg(long, default_value_t = 50)]
    pub eval_images: usize,
    /// Side the classifier resizes each box to.
    #[arg(long, default_value_t = 128)]
    pub classifier_px: u32,
    /// Seed of everything.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

fn run_csi(args: CsiArgs, ctx: &Context) -> anyhow::Result<()> {
    use semla_bench::csi::{CsiBenchConfig, render, run_csi_bench};
    let weights = imagenet_weights(args.weights.as_deref(), &args.data)?;
    let mut config = CsiBenchConfig::new(args.data.clone(), weights);
    if !args.domains.is_empty() {
        config.domains = args.domains.clone();
    }
    config.eval_split = args.eval_split;
    config.image_size = args.image_size;
    config.base_steps = args.steps;
    config.adapt_steps = args.adapt_steps;
    config.train_images = (args.train_images > 0).then_some(args.train_images);
    config.eval_images = (args.eval_images > 0).then_some(args.eval_images);
    config.classifier_px = args.classifier_px;
    config.seed = args.seed;
    let outcome = run_csi_bench(
        &config,
        &ctx.device()?,
        &args.out,
        stderr_progress().as_mut(),
    )?;
    if ctx.json {
        return ctx.print_json(&serde_json::json!({
            "out": args.out,
            "eval_split": config.eval_split,
            "outcome": outcome,
        }));
    }
    println!();
    print!("{}", render(&config, &outcome.rows, &outcome.relabeling));
    println!("{:.1} s; files in {}", outcome.seconds, args.out.display());
    Ok(())
}
