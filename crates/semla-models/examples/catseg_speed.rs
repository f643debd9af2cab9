//! Time and peak memory of one CAT-Seg image through the official sliding
//! window at the real L or B size with random weights (19 classes, a 1024x2048
//! image resized to a 512x1024 record as SemLA's Cityscapes path):
//!
//!     cargo run --release -p semla-models --example catseg_speed -- l|b [ADAPTED]
//!
//! `ADAPTED` (any second argument) adds a per-image mixture of 5 random rank-8
//! adapters over the official LoRA sites.

use std::time::Instant;

use candle_core::{Device, Tensor};
use semla_adapters::{Adaptation, Adapter};
use semla_models::Segmenter;
use semla_models::catseg::{CatSegConfig, random::random_catseg};

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let size = std::env::args().nth(1).unwrap_or_else(|| "b".into());
    let adapted = std::env::args().nth(2).is_some();
    let config = if size == "l" {
        CatSegConfig::vitl_336()
    } else {
        CatSegConfig::vitb_384()
    };
    let start = Instant::now();
    let mut model = random_catseg(&config, &Device::Cpu)?;
    let classes: Vec<String> = semla_data::domains::classes::CITYSCAPES_19
        .iter()
        .map(|s| s.to_string())
        .collect();
    model.set_classes(&classes)?;
    println!(
        "built CAT-Seg {size} in {:.1} s, peak RSS {:.0} MB",
        start.elapsed().as_secs_f64(),
        peak_rss_mb()
    );
    let adaptation = if adapted {
        let adapters: Vec<Adapter> = (0..5)
            .map(|i| Adapter::random(format!("a{i}"), &model.sites(), 8, i))
            .collect::<Result<_, _>>()?;
        let refs: Vec<&Adapter> = adapters.iter().collect();
        Adaptation::from_adapters(&refs, &[vec![0.4, 0.3, 0.1, 0.1, 0.1]])?
    } else {
        Adaptation::none()
    };
    let image = Tensor::randn(0f32, 1.0, (1, 3, 1024, 2048), &Device::Cpu)?;
    for run in 0..2 {
        let start = Instant::now();
        let probs = model.probabilities(&image, (512, 1024), &adaptation)?;
        println!(
            "run {run}: {:.2} s per image ({} threads), output {:?}, peak RSS {:.0} MB",
            start.elapsed().as_secs_f64(),
            candle_core::utils::get_num_threads(),
            probs.dims(),
            peak_rss_mb()
        );
    }
    Ok(())
}
