//! Re-runs SemLA on an existing demo output folder with other retrieval
//! settings (for tuning the demo by hand): `cargo run --release -p semla-bench --example
//! demo_sweep -- OUT_DIR WIDTH HEIGHT VAL TOPK,.. T,..`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

// Tuning tool only: error size does not matter here.
#![allow(clippy::result_large_err)]
use std::sync::Arc;

use candle_core::Device;
use semla_bench::demo::default_domains;
use semla_core::NoProgress;
use semla_core::stats::harmonic_mean;
use semla_data::SampleSource;
use semla_data::synthetic::render_source;
use semla_experiments::{ExperimentKind, ExperimentSettings, Target, run_experiment};
use semla_metrics::Definition;
use semla_pipeline::{Semla, SemlaSettings, SourceLibrary};
use semla_retrieval::RetrievalParams;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let out = std::path::PathBuf::from(&a[0]);
    let (w, h, n): (u32, u32, usize) = (a[1].parse()?, a[2].parse()?, a[3].parse()?);
    let device = Device::Cpu;
    let model: Arc<dyn semla_models::Segmenter> =
        Arc::from(semla_models::load_segmenter(&out.join("model"), &device)?);
    let domains = default_domains();
    let vals: Vec<_> = domains
        .iter()
        .map(|d| render_source(d, semla_data::synthetic::Split::Val, n, w, h))
        .collect::<Result<_, _>>()?;
    let lib = SourceLibrary::open(&out.join("library"), &domains, true)?;
    let semla = Semla::with_embedder_spec(model, lib, None, SemlaSettings::default(), &device)?;
    let targets: Vec<Target> = domains
        .iter()
        .zip(&vals)
        .map(|(d, s)| Target {
            name: d.clone(),
            source: s as &dyn SampleSource,
            definition: Definition::Detectron2,
            class_names: vec![],
        })
        .collect();
    for k in a[4].split(',') {
        for t in a[5].split(',') {
            let settings = ExperimentSettings {
                params: RetrievalParams {
                    top_k: k.parse()?,
                    temperature: t.parse()?,
                    ..RetrievalParams::default()
                },
                remove_target_adapter: true,
                batch_size: 16,
                ..ExperimentSettings::new(ExperimentKind::Semla)
            };
            let o = run_experiment(&semla, &targets, &settings, &mut NoProgress)?;
            let v: Vec<f64> = o.results.iter().map(|r| r.1).collect();
            println!(
                "k {k} T {t}: h-mean {:.1}  {:?}",
                harmonic_mean(&v).unwrap_or(0.0),
                v.iter()
                    .map(|x| (x * 10.0).round() / 10.0)
                    .collect::<Vec<_>>()
            );
        }
    }
    Ok(())
}
