//! Self-training on unlabeled domains.
//!
//! CLOUDS (CVPR 2024) refines a teacher's blurry pseudo-labels with a
//! promptable mask model during self-training: every large connected region
//! of a class becomes a prompt of random points, the model's best mask replaces
//! the region, and pixels two masks claim are left unsupervised. This crate
//! holds that refinement ([`refine`]), the connected components and point
//! prompts it is built from ([`components`]), and the [`proposer::MaskProposer`]
//! interface with a weight-free implementation, graph-based segmentation at
//! three scales ([`graph`]; SAM itself needs weights this machine does not
//! have).

pub mod components;
pub mod error;
pub mod graph;
pub mod proposer;
pub mod refine;

pub use error::RefineError;
pub use proposer::{GraphSegments, MaskProposer, Proposals};
pub use refine::{RefineSettings, Refined, refine_pseudo_label};
