//! # semla-adapters
//!
//! Everything about LoRA adapters, from files on disk to the layers they change:
//!
//! - [`site`]: adapter sites in a model ([`site::AdaptedLinear`], [`site::AdaptedConv2d`])
//!   and the run-time, per-image factored form of a mixture ([`site::Adaptation`]).
//! - [`config`]: PEFT's `adapter_config.json` ([`LoraConfig`]), with `rank_pattern` /
//!   `alpha_pattern` matched as PEFT does.
//! - [`adapter`]: an adapter in memory ([`Adapter`], [`LoraSite`]), validation against a model.
//! - [`peft`]: PEFT folders ([`peft::load_adapter`], [`peft::save_adapter`]).
//! - [`library`]: SemLA's `loradb` library with prototypes and the record of the embedder
//!   that made them ([`AdapterLibrary`], [`EmbedderRecord`]): the one owner of the format.
//! - [`npz`]: NumPy `.npz` float arrays.
//! - [`fusion`]: PEFT's `cat`, `linear` and `svd` merges ([`fusion::merge`]).
//! - [`apply`]: a mixture applied factored per image ([`Adaptation::from_adapters`]) or
//!   merged into base weights ([`apply::merge_into`]).
//! - [`frozen`]: frozen base layers whose backward passes only their input gradient, and the
//!   one-node LoRA linear of training and inference on the CPU.
//! - [`host`]: reading CPU tensors in place and strided matrix products for hand-written kernels.
//! - [`linalg`]: the small f64 QR / SVD behind `svd` fusion.
//!
//! Tensor shapes follow PEFT: Linear `A [r, in]`, `B [out, r]`; Conv2d
//! `A [r, in, k, k]`, `B [out, r, 1, 1]`.

pub mod adapter;
pub mod apply;
pub mod config;
pub mod error;
pub mod frozen;
pub mod fusion;
pub mod host;
pub mod library;
pub mod linalg;
pub mod npz;
pub mod peft;
pub mod site;

pub use adapter::{Adapter, LoraSite, SiteShape};
pub use config::{LoraConfig, TargetModules};
pub use error::{AdapterError, Result};
pub use fusion::{Combination, merge};
pub use library::{AdapterLibrary, EmbedderIdentity, EmbedderRecord, LibraryEntry};
pub use site::{Adaptation, AdaptedConv2d, AdaptedLinear, FactoredSite, SiteInfo, SiteKind};
