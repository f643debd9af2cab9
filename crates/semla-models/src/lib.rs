//! # semla-models
//!
//! Models with adapter sites. Every adaptable layer is a
//! [`semla_adapters::AdaptedLinear`] or [`semla_adapters::AdaptedConv2d`] whose
//! path is the checkpoint key path, so PEFT module paths and checkpoint keys agree.
//!
//! - [`segmenter`]: the [`segmenter::Segmenter`] interface the rest of the system uses.

pub mod clip;
pub mod efficientnet;
pub mod kernels;
pub mod lraspp;
pub mod segmenter;
pub mod tiny;
