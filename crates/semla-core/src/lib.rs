//! # semla-core
//!
//! What every other semla crate needs once, written once:
//!
//! - [`fs`]: atomic writes of a file ([`fs::write_atomic`]) and of a whole folder
//!   ([`fs::StagedDir`]: staged beside the target, swapped in whole).
//! - [`rng`]: SplitMix64, the one seeded generator (training, corruptions, the
//!   synthetic world, benchmark weights).
//! - [`stats`]: the harmonic mean of the paper's tables.
//! - [`hash`]: FNV-1a fingerprints (embedder and model identities).
//! - [`limits`]: bounds on what user input may make semla allocate.
//! - [`progress`]: the progress-reporting trait long operations report to.
//! - [`alloc`]: the C allocator's tuning for tensor workloads (freed buffers kept).
//!
//! It depends on nothing but `thiserror`, so the lowest crates (`semla-data`,
//! `semla-adapters`) can use it.

pub mod alloc;
pub mod fs;
pub mod hash;
pub mod limits;
pub mod progress;
pub mod rng;
pub mod stats;

pub use fs::{FsError, StagedDir, remove_on_signals, write_atomic};
pub use progress::{NoProgress, Progress};
pub use rng::SplitMix64;
