//! Self-training on unlabeled domains.
//!
//! [`dacs`] is DACS' unsupervised domain adaptation (mean teacher, ClassMix,
//! confidence-weighted pseudo-labels), with a hook for editing the teacher's
//! labels (CSI's relabeling, in `semla-csi`). [`training`] is CLOUDS' loop for a model's head or a LoRA adapter on a
//! frozen base: an EMA teacher ([`ema`]) labels clean views of unlabeled
//! target images, the labels are optionally refined, and the student trains
//! on distorted views of them mixed with labelled source images, through
//! `semla-train`'s one loop.
//!
//! CLOUDS (CVPR 2024) refines a teacher's blurry pseudo-labels with a
//! promptable mask model during self-training: every large connected region
//! of a class becomes a prompt of random points, the model's best mask replaces
//! the region, and pixels two masks claim are left unsupervised. This crate
//! holds that refinement ([`refine`]), the connected components and point
//! prompts it is built from ([`components`]), and the [`proposer::MaskProposer`]
//! interface with two implementations: SAM ([`sam::SamProposer`], the
//! official model on a released checkpoint) and two weight-free ones for when
//! no SAM checkpoint is at hand: seeded region growing at three colour
//! tolerances ([`grow`]) and graph-based segmentation at three scales
//! ([`graph`]). Beside CLOUDS' prompting, [`vote`] refines without prompts
//! (each image segment takes the teacher's majority label), and [`quality`]
//! scores pseudo-labels against the truth.

pub mod components;
pub mod dacs;
pub mod ema;
pub mod error;
pub mod graph;
pub mod grow;
pub mod proposer;
pub mod quality;
pub mod refine;
pub mod sam;
pub mod student;
pub mod training;
pub mod vote;

pub use dacs::{DacsSettings, DacsStats, DacsTraining, PseudoLabelEditor, dacs_train};
pub use ema::{EmaSettings, EmaTeacher};
pub use error::{RefineError, Result};
pub use grow::RegionGrowing;
pub use proposer::{GraphSegments, MaskProposer, Proposals};
pub use quality::{PseudoLabelScore, mean_score, score_pseudo_label};
pub use refine::{RefineSettings, Refined, Unclaimed, refine_pseudo_label};
pub use sam::SamProposer;
pub use training::{
    PromptRefiner, PseudoLabelRefiner, PseudoLabelStats, SelfTrainSettings, SelfTraining, Student,
    self_train, self_train_adapter,
};
pub use vote::SegmentVote;
