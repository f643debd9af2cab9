//! `semla serve`: SemLA as an HTTP service (the engine is [`semla_serve`]; this
//! module parses the flags, loads the model and runs the server until SIGTERM
//! or Ctrl-C), and `semla bench serve`: its throughput and latency under 1, 2
//! and 4 concurrent clients next to the pipeline's own per-image time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use semla_pipeline::Request;
use semla_serve::{LoadSpec, ServeConfig};

use super::Context;
use super::common::PipelineOptions;

/// What is served, loaded: the model, and where the rest comes from for
/// [`semla_serve`] to load (and reload).
fn load_spec(options: &PipelineOptions, ctx: &Context) -> anyhow::Result<LoadSpec> {
    let device = ctx.device()?;
    let model = options.load_model(&device)?;
    let fingerprint = semla_core::hash::model_fingerprint(&options.model_path())?;
    Ok(LoadSpec {
        model,
        model_fingerprint: fingerprint,
        model_name: options.model.display().to_string(),
        library: options.library()?.to_path_buf(),
        sources: options.source_names()?,
        embedder: options.embedder.clone(),
        settings: options.config()?.settings(),
        device,
    })
}

/// Arguments of `semla serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub served: PipelineOptions,
    /// Address to listen on (no TLS: keep it on loopback or behind a TLS proxy).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub bind: SocketAddr,
    /// A file holding the API key that every route but `/`, the health probes
    /// and `/openapi.json` then needs (`Authorization: Bearer KEY`); the
    /// `SEMLA_API_KEY` environment variable works too.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = ServeConfig::default().max_body_bytes, value_name = "N")]
    pub max_body_bytes: usize,
    /// Largest `probabilities` output, in values (C x H x W).
    #[arg(long, default_value_t = ServeConfig::default().max_probability_values, value_name = "N")]
    pub max_probability_values: u64,
    /// Most images per forward (only already-queued images are batched).
    #[arg(long, default_value_t = ServeConfig::default().max_batch_size, value_name = "N")]
    pub max_batch_size: usize,
    /// Most requests in flight; beyond it, 429 with Retry-After.
    #[arg(long, default_value_t = ServeConfig::default().max_concurrent, value_name = "N")]
    pub max_concurrent: usize,
    /// Seconds a request may wait and run before it gets 503.
    #[arg(long, default_value_t = 30.0, value_name = "S")]
    pub request_timeout: f64,
    /// Allow `POST /v1/library/reload` (re-read the library and swap it in).
    #[arg(long)]
    pub allow_runtime_updates: bool,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("semla-http")
        .build()
        .context("starting the async runtime")
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{flag} must be a positive number of seconds, not {value}"))
}

/// Runs `semla serve`.
pub fn run(args: ServeArgs, ctx: &Context) -> anyhow::Result<()> {
    let api_key = match &args.api_key_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the API key file {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("SEMLA_API_KEY").ok(),
    };
    let config = ServeConfig {
        bind: args.bind,
        api_key,
        max_body_bytes: args.max_body_bytes,
        max_pixels: semla_core::limits::max_pixels(),
        max_classes: usize::try_from(semla_core::limits::max_classes()).unwrap_or(usize::MAX),
        max_probability_values: args.max_probability_values,
        max_batch_size: args.max_batch_size,
        max_concurrent: args.max_concurrent,
        request_timeout: seconds(args.request_timeout, "--request-timeout")?,
        allow_runtime_updates: args.allow_runtime_updates,
        ..ServeConfig::default()
    };
    config.validate().map_err(anyhow::Error::msg)?;
    let spec = load_spec(&args.served, ctx)?;
    runtime()?.block_on(async move {
        let (listener, addr) = semla_serve::bind(config.bind).await?;
        eprintln!("semla serve: listening on http://{addr} (ready once /health/ready says so)");
        semla_serve::serve(listener, config, spec, semla_serve::shutdown_signal()).await?;
        eprintln!("semla serve: stopped");
        anyhow::Ok(())
    })
}

/// Arguments of `semla bench serve`.
#[derive(clap::Args, Debug)]
pub struct BenchServeArgs {
    #[command(flatten)]
    pub served: PipelineOptions,
    /// The image every request posts (PNG or JPEG).
    #[arg(long, value_name = "IMG")]
    pub image: PathBuf,
    /// Concurrent client counts to measure.
    #[arg(
        long,
        default_value = "1,2,4",
        value_delimiter = ',',
        value_name = "N,.."
    )]
    pub clients: Vec<usize>,
    /// Requests per client count.
    #[arg(long, default_value_t = 40, value_name = "N")]
    pub requests: usize,
    /// Stop a client count after this many seconds even if requests remain.
    #[arg(long, default_value_t = 60.0, value_name = "S")]
    pub seconds: f64,
    /// Most images per forward.
    #[arg(long, default_value_t = ServeConfig::default().max_batch_size, value_name = "N")]
    pub max_batch_size: usize,
    /// Write the results here as JSON.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Runs `semla bench serve`.
pub fn bench(args: BenchServeArgs, ctx: &Context) -> anyhow::Result<()> {
    let spec = load_spec(&args.served, ctx)?;
    let bytes =
        std::fs::read(&args.image).with_context(|| format!("reading {}", args.image.display()))?;
    let photo = semla_data::image_io::read_rgb(&args.image)?;
    // The pipeline alone, in this process, as `semla segment` runs it per image.
    let loaded = spec.load()?;
    let runs = args.requests.clamp(5, 40);
    let mut pipeline_ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        loaded.semla.segment(&photo, &Request::semla())?;
        pipeline_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    drop(loaded);
    pipeline_ms.sort_by(f64::total_cmp);
    let pipeline_p50 = semla_serve::load::quantile(&pipeline_ms, 0.5);
    let max_clients = args.clients.iter().copied().max().unwrap_or(1);
    let config = ServeConfig {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        max_batch_size: args.max_batch_size,
        max_concurrent: max_clients.max(1) * 2,
        max_pixels: semla_core::limits::max_pixels(),
        ..ServeConfig::default()
    };
    let limit = seconds(args.seconds, "--seconds")?;
    let load = semla_bench::machine::load_average();
    let reports = runtime()?.block_on(async move {
        let (listener, addr) = semla_serve::bind(config.bind).await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(semla_serve::serve(listener, config, spec, async move {
            let _ = stopped.await;
        }));
        wait_ready(addr).await?;
        let (content_type, body) = semla_serve::client::multipart(&bytes, None);
        let body = Arc::new(body);
        // One warm-up request per client slot.
        let _ = semla_serve::load::run(
            addr,
            "/v1/segment",
            &content_type,
            body.clone(),
            1,
            2,
            limit,
        )
        .await;
        let mut reports = Vec::new();
        for &clients in &args.clients {
            reports.push(
                semla_serve::load::run(
                    addr,
                    "/v1/segment",
                    &content_type,
                    body.clone(),
                    clients,
                    args.requests,
                    limit,
                )
                .await,
            );
        }
        let _ = stop.send(());
        server.await.context("the server task")??;
        anyhow::Ok(reports)
    })?;
    let result = serde_json::json!({
        "image": args.image,
        "size": [photo.width(), photo.height()],
        "load_average": load,
        "pipeline_p50_ms": pipeline_p50,
        "pipeline_runs": runs,
        "service": reports,
    });
    if let Some(out) = &args.out {
        semla_core::fs::write_atomic(out, serde_json::to_string_pretty(&result)?.as_bytes())?;
    }
    if ctx.json {
        return ctx.print_json(&result);
    }
    println!(
        "image {} ({}x{}); pipeline alone: p50 {:.1} ms per image ({} runs); load average {}",
        args.image.display(),
        photo.width(),
        photo.height(),
        pipeline_p50,
        runs,
        load.map_or("-".into(), |l| format!("{l:.2}"))
    );
    println!(
        "| clients | requests | ok/s | p50 ms | p95 ms | p99 ms | non-200 | overhead vs pipeline (p50, 1 client) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in &reports {
        let overhead = if r.clients == 1 {
            format!("{:+.1} ms", r.p50_ms - pipeline_p50)
        } else {
            "-".into()
        };
        println!(
            "| {} | {} | {:.2} | {:.1} | {:.1} | {:.1} | {} | {} |",
            r.clients,
            r.requests,
            r.ok_per_second,
            r.p50_ms,
            r.p95_ms,
            r.p99_ms,
            r.requests - r.count(200),
            overhead
        );
    }
    Ok(())
}

/// Polls `/health/ready` until it answers 200 (at most 120 s).
async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Ok(reply) = semla_serve::client::get(addr, "/health/ready").await {
            if reply.status == 200 {
                return Ok(());
            }
            if reply.status == 503
                && reply.json()["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("loading failed"))
            {
                anyhow::bail!("{}", reply.json()["error"]);
            }
        }
        if started.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("the server was not ready after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
