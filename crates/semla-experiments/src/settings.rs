//! What an experiment runs: SemLA's four official modes ([`ExperimentKind`]),
//! the settings of a run ([`ExperimentSettings`]) and the target domains
//! ([`Target`]).

use semla_data::SampleSource;
use semla_metrics::Definition;
use semla_pipeline::Fusion;
use semla_retrieval::RetrievalParams;
use serde::{Deserialize, Serialize};

/// The experiment modes of `experiments.py --experiment`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExperimentKind {
    /// The base model, no adapter.
    ZeroShot,
    /// The target domain's own adapter alone.
    Oracle,
    /// Every candidate adapter with weight `1 / N`.
    Uniform,
    /// Per image: nearest prototypes, temperature-softmax weights, fusion.
    Semla,
}

impl ExperimentKind {
    /// Every mode, in the paper's row order.
    pub const ALL: [ExperimentKind; 4] = [Self::ZeroShot, Self::Uniform, Self::Semla, Self::Oracle];

    /// `zeroshot`, `oracle`, `uniform` or `semla`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ZeroShot => "zeroshot",
            Self::Oracle => "oracle",
            Self::Uniform => "uniform",
            Self::Semla => "semla",
        }
    }
}

impl std::fmt::Display for ExperimentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ExperimentKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "zeroshot" | "zero-shot" => Ok(Self::ZeroShot),
            "oracle" => Ok(Self::Oracle),
            "uniform" => Ok(Self::Uniform),
            "semla" => Ok(Self::Semla),
            other => Err(format!(
                "unknown experiment `{other}` (expected zeroshot, oracle, uniform or semla)"
            )),
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct ExperimentSettings {
    /// The mode.
    pub kind: ExperimentKind,
    /// Weight-space or output-space fusion (only changes `uniform` and `semla`).
    pub fusion: Fusion,
    /// Retrieval settings of `semla` (official: euclidean, top-k 5, T 0.05).
    pub params: RetrievalParams,
    /// Leave the target's own adapter out of the candidates (not for `oracle`).
    pub remove_target_adapter: bool,
    /// Images per forward pass (images of one size only; default 1).
    pub batch_size: usize,
    /// Evaluate only the first images of each target.
    pub limit: Option<usize>,
    /// Keep the predicted label maps of the first this many images of each
    /// target (for reports).
    pub keep_predictions: usize,
}

impl ExperimentSettings {
    /// The official settings of a mode: weight fusion, official retrieval
    /// parameters, target adapter kept, batch size 1.
    pub fn new(kind: ExperimentKind) -> Self {
        Self {
            kind,
            fusion: Fusion::Weights,
            params: RetrievalParams::default(),
            remove_target_adapter: false,
            batch_size: 1,
            limit: None,
            keep_predictions: 0,
        }
    }

    /// The method's name in tables: the mode, with `-outputs` for late fusion.
    pub fn method_name(&self) -> String {
        match (self.kind, self.fusion) {
            (ExperimentKind::Uniform | ExperimentKind::Semla, Fusion::Outputs) => {
                format!("{}-outputs", self.kind)
            }
            _ => self.kind.to_string(),
        }
    }
}

/// One target domain to evaluate.
pub struct Target<'a> {
    /// Target name (also the adapter name compared for removal and oracle).
    pub name: String,
    /// Its evaluation samples.
    pub source: &'a dyn SampleSource,
    /// The mIoU definition of its official evaluator.
    pub definition: Definition,
    /// Class names (may be empty).
    pub class_names: Vec<String>,
    /// The segmenter of this target when it is not the pipeline's: an
    /// open-vocabulary model (CAT-Seg) set to the target's class list, with the
    /// pipeline model's adapter sites. `None`: the pipeline's model.
    pub model: Option<std::sync::Arc<dyn semla_models::Segmenter>>,
}
