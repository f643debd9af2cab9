//! `semla demo`: SemLA end to end on the embedded synthetic street world (no
//! download, no input file): base model, one adapter per domain, `style`
//! prototypes, top-k and temperature tuned on held-out images, zero-shot /
//! uniform / SemLA / late fusion / oracle leave-one-out, a Table-1 style summary
//! and an HTML report.

use std::path::PathBuf;

use semla_bench::demo::{DemoConfig, run_demo};

use super::Context;
use super::common::stderr_progress;

/// Arguments of `semla demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Smaller images, fewer images and steps (well under 2 minutes).
    #[arg(long)]
    pub quick: bool,
    /// The query embedder, built on the demo's base model: `style` (early-layer
    /// channel statistics) or `backbone` (pooled deep features), `@F` to embed the
    /// image downscaled by F.
    #[arg(long, default_value = "style", value_name = "E")]
    pub embedder: semla_pipeline::EmbedderSpec,
    /// Output folder (model, library, experiment files, table.txt, report.html).
    #[arg(long, default_value = "semla-demo-out", value_name = "DIR")]
    pub out: PathBuf,
}

/// Runs `semla demo`.
pub fn run(args: DemoArgs, ctx: &Context) -> anyhow::Result<()> {
    let mut config = if args.quick {
        DemoConfig::quick()
    } else {
        DemoConfig::full()
    };
    config.embedder = args.embedder.to_string();
    super::common::check_out_folder(&args.out)?;
    let outcome = run_demo(
        &config,
        &ctx.device()?,
        &args.out,
        stderr_progress().as_mut(),
    )?;
    let table = &outcome.table;
    if ctx.json {
        return ctx.print_json(&serde_json::json!({
            "out": args.out,
            "report": outcome.report,
            "table": table,
            "h_mean": table.rows.iter().map(|r| (r.method.clone(), table.h_mean(&r.method))).collect::<Vec<_>>(),
            "gap_closure_semla": table.gap_closure("semla"),
            "retrieval": outcome.retrieval,
            "tuning": outcome.tuning,
            "seconds": outcome.seconds,
        }));
    }
    println!();
    println!(
        "mIoU (%) per target domain, leave-one-out (each target's own adapter removed except for oracle):"
    );
    print!("{}", table.render_text());
    if let (Some(semla), Some(uniform), Some(zero)) = (
        table.h_mean("semla"),
        table.h_mean("uniform"),
        table.h_mean("zeroshot"),
    ) {
        println!(
            "SemLA h-mean {semla:.1}: {:+.1} over uniform, {:+.1} over zero-shot.",
            semla - uniform,
            semla - zero
        );
    }
    println!(
        "SemLA: top-k {}, T = {}{}.",
        outcome.retrieval.top_k,
        outcome.retrieval.temperature,
        if outcome.tuning.is_some() {
            " (tuned on held-out images)"
        } else {
            ""
        }
    );
    match table.gap_closure("semla") {
        Some(c) => println!(
            "SemLA closes {:.0} % of the zero-shot to oracle gap (h-mean).",
            100.0 * c
        ),
        None => println!("gap closure undefined (oracle does not beat zero-shot)."),
    }
    println!(
        "{:.1} s; report: {}",
        outcome.seconds,
        outcome.report.display()
    );
    Ok(())
}
