//! CSI (ECCV 2024): self-training towards a target taxonomy the source labels
//! lack. Inside boxes a detector finds for a target class, the teacher's
//! pixels of a source class become the target class, when a classifier
//! agrees; the edited pseudo-labels then feed DACS' ClassMix and loss
//! (`semla_selftrain::dacs`).
//!
//! [`config`] holds the official `relabeling_cfg` and windows; [`boxes`] the
//! detection post-processing (per-class threshold, class-agnostic NMS,
//! ascending order); [`classify`] the classifier interface and CSI's
//! category-restricted check, with two classifiers: CLIP zero-shot
//! ([`clip::ClipZeroShot`]) and the ImageNet EfficientNet-Lite0 through a
//! concept map ([`imagenet::ImageNetConcepts`]); [`detect`] the box proposer
//! interface and a weight-free proposer from the teacher's connected regions;
//! [`relabel`] the map (collect, finalise, relabel, paste) as a
//! [`semla_selftrain::PseudoLabelEditor`]; [`report`] what a run did, and an
//! audit of the relabeled pixels against real labels; [`train`] a run.

pub mod boxes;
pub mod classify;
pub mod clip;
pub mod config;
pub mod detect;
pub mod error;
pub mod imagenet;
pub mod relabel;
pub mod report;
pub mod train;

pub use config::{ClassRef, CsiConfig, Phase, RelabelEntry, Taxonomy, Window};
pub use error::{CsiError, Result};
