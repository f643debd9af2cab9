//! The leave-one-out comparison of the paper's Table 1, shared by the demo and
//! the CamVid benchmark: each method over every target, the target's own adapter
//! removed from the candidates (except for the oracle).

use std::path::Path;

use semla_core::Progress;
use semla_data::{InMemorySource, SampleSource};
use semla_experiments::{ExperimentKind, ExperimentOutput, ExperimentSettings, Target};
use semla_metrics::Definition;
use semla_pipeline::{Fusion, Semla};

use crate::error::Result;

/// The five methods of a Table-1 style comparison, as (mode, fusion): zero-shot,
/// uniform merge, SemLA with late fusion, SemLA with weight fusion, oracle.
pub const TABLE_METHODS: [(ExperimentKind, Fusion); 5] = [
    (ExperimentKind::ZeroShot, Fusion::Weights),
    (ExperimentKind::Uniform, Fusion::Weights),
    (ExperimentKind::Semla, Fusion::Outputs),
    (ExperimentKind::Semla, Fusion::Weights),
    (ExperimentKind::Oracle, Fusion::Weights),
];

/// Runs each of `methods` over `targets`, leave-one-out, with the retrieval
/// parameters and batch size of `base_settings`; each method's outputs go to
/// `out_dir/<method>` when `out_dir` is given. Returns `(method name, output)`
/// in `methods` order.
pub fn run_leave_one_out(
    semla: &Semla,
    targets: &[Target<'_>],
    methods: &[(ExperimentKind, Fusion)],
    base_settings: &ExperimentSettings,
    out_dir: Option<&Path>,
    progress: &mut dyn Progress,
) -> Result<Vec<(String, ExperimentOutput)>> {
    let mut outputs = Vec::with_capacity(methods.len());
    for &(kind, fusion) in methods {
        let settings = ExperimentSettings {
            kind,
            fusion,
            remove_target_adapter: true,
            ..base_settings.clone()
        };
        let method = settings.method_name();
        let output = semla_experiments::run_experiment(semla, targets, &settings, progress)?;
        if let Some(dir) = out_dir {
            output.write(&dir.join(&method), &settings)?;
        }
        outputs.push((method, output));
    }
    Ok(outputs)
}

/// The targets of a study: `domains` with their evaluation samples `sets` (in the
/// same order), scored with detectron2's mIoU.
pub fn targets<'a>(
    domains: &[String],
    sets: &'a [InMemorySource],
    class_names: &[String],
) -> Vec<Target<'a>> {
    domains
        .iter()
        .zip(sets)
        .map(|(name, source)| Target {
            name: name.clone(),
            source: source as &dyn SampleSource,
            definition: Definition::Detectron2,
            class_names: class_names.to_vec(),
            model: None,
        })
        .collect()
}
