//! # semla-pipeline
//!
//! SemLA for one image, the product's own path: embed the image, find the
//! nearest domain prototypes, weight the top-k adapters by a temperature
//! softmax, fuse them and segment. No training, no metrics, no experiment
//! engine: the CLI's `semla segment`, the experiment engine, a service or a
//! Python binding all stand on [`Semla`].
//!
//! The path of one image, module by module:
//!
//! 1. [`embed`]: the query embedding ([`embed::Embed`]; `clip:DIR`, `backbone`,
//!    `style`, named by an [`embed::EmbedderSpec`]).
//! 2. [`library`]: the candidate adapters and their prototypes
//!    ([`library::SourceLibrary`]), checked against the library's record of its
//!    embedder.
//! 3. [`mixture`]: retrieval (top-k, temperature softmax) or a static mode, and
//!    the fused forward of a batch whose images keep their own mixtures.
//! 4. [`semla`]: [`Semla::segment`] / [`Semla::segment_samples`] put these
//!    together and return a [`Prediction`] (labels, optional probabilities, the
//!    adapters used, per-stage timings).
//! 5. [`render`] and [`files`]: masks and overlays; `semla segment` on files.
//!
//! Also here: [`prototype`], the one builder of domain prototypes, and
//! [`config`], the official configuration files (`semla_config.yaml`,
//! `source_domains.yaml`, ...).

pub mod config;
pub mod embed;
pub mod error;
pub mod files;
pub mod library;
pub mod mixture;
pub mod prototype;
pub mod render;
pub mod semla;

pub use embed::{Embed, EmbedderSpec};
pub use error::{PipelineError, Result};
pub use library::SourceLibrary;
pub use mixture::{AdapterChoice, Fusion, Mode};
pub use semla::{Prediction, Request, Semla, SemlaSettings, StageTimings};
