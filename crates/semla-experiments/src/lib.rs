//! # semla-experiments
//!
//! SemLA's experiments over target domains, on the per-image path of
//! `semla-pipeline`:
//!
//! - [`settings`]: the four official modes (`zeroshot`, `oracle`, `uniform`,
//!   `semla`), weight or late fusion, leave-one-out, batching; the targets.
//! - [`engine`]: [`run_experiment`] over targets and [`evaluate`] of one fixed
//!   adaptation (`semla eval`), sharing one scoring loop.
//! - [`output`]: what a run produced, and the official `results.json` with the
//!   richer `report.json` and `weights.jsonl`.
//! - [`shard`]: one shard of a run ([`run_shard`], `--shard I/N`) and the exact
//!   merge of the parts ([`merge_parts`], `semla eval merge`).
//!
//! Studies that train models (the demo, the CamVid benchmark) are in
//! `semla-bench`; nothing here trains.

pub mod engine;
pub mod error;
pub mod output;
pub mod settings;
pub mod shard;

pub use engine::{EvalReport, evaluate, run_experiment};
pub use error::{ExperimentError, Result};
pub use output::ExperimentOutput;
pub use settings::{ExperimentKind, ExperimentSettings, Target};
pub use shard::{Fingerprint, Merged, Shard, ShardPart, merge_parts, run_shard};
