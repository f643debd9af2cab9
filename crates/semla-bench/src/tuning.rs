//! SemLA's top-k and temperature, tuned on frames outside the evaluation split:
//! leave-one-out SemLA at every point of a grid, the best harmonic mean wins.

use semla_core::Progress;
use semla_core::stats::harmonic_mean;
use semla_experiments::{ExperimentKind, ExperimentSettings, Target};
use semla_pipeline::{Fusion, Semla};
use semla_retrieval::RetrievalParams;
use serde::Serialize;

use crate::error::{BenchError, Result};
use crate::leave_one_out::run_leave_one_out;

/// Temperatures tried when SemLA's retrieval is tuned.
pub const TUNE_TEMPERATURES: [f64; 6] = [0.02, 0.05, 0.1, 0.2, 0.5, 1.0];

/// Top-k values tried when SemLA's retrieval is tuned (top-1 is tried once: the
/// temperature does not change a one-adapter mixture).
pub const TUNE_TOP_K: [usize; 4] = [1, 2, 3, 5];

/// One point of the tuning grid.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct TuningPoint {
    /// Adapters fused per image.
    pub top_k: usize,
    /// Softmax temperature.
    pub temperature: f64,
    /// Harmonic mean over the targets of leave-one-out SemLA mIoU (%) on the tuning
    /// frames.
    pub h_mean: f64,
    /// Per-target mIoU (%), in domain order.
    pub miou_percent: Vec<f64>,
}

/// SemLA's retrieval tuned on frames outside the evaluation split.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Tuning {
    /// The embedder of the prototypes ([`semla_pipeline::Embed::id`]).
    pub embedder: String,
    /// The domains tuned over, in order.
    pub domains: Vec<String>,
    /// Frames per domain.
    pub images: usize,
    /// Every grid point, in the order tried.
    pub points: Vec<TuningPoint>,
    /// Index into `points` of the best h-mean (the first on ties).
    pub best: usize,
}

/// The grid of (top-k, temperature) tried: top-1 once, then every larger top-k with
/// every temperature.
pub fn tuning_grid() -> Vec<(usize, f64)> {
    let mut grid = Vec::new();
    for k in TUNE_TOP_K {
        if k == 1 {
            grid.push((1, TUNE_TEMPERATURES[0]));
        } else {
            grid.extend(TUNE_TEMPERATURES.iter().map(|&t| (k, t)));
        }
    }
    grid
}

/// Runs leave-one-out SemLA (weight fusion) over `targets` at every point of
/// [`tuning_grid`] and picks the best harmonic mean.
pub fn tune_retrieval(
    semla: &Semla,
    targets: &[Target<'_>],
    base_settings: &ExperimentSettings,
    images: usize,
    progress: &mut dyn Progress,
) -> Result<Tuning> {
    let mut points = Vec::new();
    for (top_k, temperature) in tuning_grid() {
        let settings = ExperimentSettings {
            params: RetrievalParams {
                top_k,
                temperature,
                ..base_settings.params
            },
            ..base_settings.clone()
        };
        let mut outputs = run_leave_one_out(
            semla,
            targets,
            &[(ExperimentKind::Semla, Fusion::Weights)],
            &settings,
            None,
            progress,
        )?;
        let (_, output) = outputs
            .pop()
            .ok_or_else(|| BenchError::Invalid("the tuning run produced no output".into()))?;
        let miou_percent: Vec<f64> = output.results.iter().map(|(_, v)| *v).collect();
        let h_mean = harmonic_mean(&miou_percent).unwrap_or(0.0);
        progress.note(&format!(
            "tuning: top-k {top_k}, T = {temperature}: h-mean {h_mean:.2}"
        ));
        points.push(TuningPoint {
            top_k,
            temperature,
            h_mean,
            miou_percent,
        });
    }
    let best = points
        .iter()
        .enumerate()
        .fold(None::<(usize, f64)>, |best, (i, p)| match best {
            Some((_, h)) if h >= p.h_mean => best,
            _ => Some((i, p.h_mean)),
        })
        .map_or(0, |(i, _)| i);
    let embedder = semla
        .embedder()
        .ok_or_else(|| BenchError::Invalid("tuning SemLA needs an embedder".into()))?;
    Ok(Tuning {
        embedder: embedder.id().to_string(),
        domains: targets.iter().map(|t| t.name.clone()).collect(),
        images,
        points,
        best,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuning_grid_tries_top_one_once() {
        let grid = tuning_grid();
        assert_eq!(grid.iter().filter(|(k, _)| *k == 1).count(), 1);
        assert_eq!(
            grid.len(),
            1 + (TUNE_TOP_K.len() - 1) * TUNE_TEMPERATURES.len()
        );
        assert!((harmonic_mean(&[10.0, 40.0]).unwrap() - 16.0).abs() < 1e-12);
        assert_eq!(harmonic_mean(&[10.0, 0.0]), Some(0.0));
    }
}
