//! # semla-experiments
//!
//! SemLA's experiments end to end, on top of the other crates:
//!
//! - [`embedder`]: the retrieval embedders (`clip:DIR`, the official one, and
//!   `backbone`, the segmenter's own pooled features) with their identities.
//! - [`prototypes`]: domain prototypes (mean embedding of the training
//!   images, official `_statistics.npz`) and the library's embedder record.
//! - [`run`]: the experiment engine (`zeroshot`, `oracle`, `uniform`,
//!   `semla`, late fusion) and its output files.
//! - [`segment`]: SemLA on individual images (masks, overlays, chosen adapters).
//! - [`render`]: coloured masks, overlays and PNG encoding.
//! - [`demo`]: the self-contained demonstration on the synthetic world.
//! - [`table`]: the Table-1 style summary (per-domain mIoU, harmonic mean,
//!   gap closure of SemLA between zero-shot and oracle).
//! - [`report`]: the self-contained HTML report (bar chart, sample images).
//! - [`progress`]: progress reporting hooks for the binary's bars.

pub mod bench;
pub mod demo;
pub mod embedder;
pub mod error;
pub mod progress;
pub mod prototypes;
pub mod render;
pub mod report;
pub mod run;
pub mod segment;
pub mod table;

pub use error::{ExperimentError, Result};
