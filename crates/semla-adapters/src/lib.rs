//! # semla-adapters
//!
//! Everything about LoRA adapters, from files on disk to the layers they change:
//!
//! - [`site`]: adapter sites in a model ([`site::AdaptedLinear`], [`site::AdaptedConv2d`])
//!   and the run-time, per-image factored form of a mixture ([`site::Adaptation`]).
//!
//! Tensor shapes follow PEFT: Linear `A [r, in]`, `B [out, r]`; Conv2d
//! `A [r, in, k, k]`, `B [out, r, 1, 1]`.

pub mod site;

pub use site::{AdaptedConv2d, AdaptedLinear, Adaptation, FactoredSite, SiteInfo, SiteKind};
