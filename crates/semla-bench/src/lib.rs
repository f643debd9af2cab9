//! # semla-bench
//!
//! Studies that train, on top of everything else (nothing depends on this crate):
//!
//! - [`library_build`]: the one resumable "build a library" pipeline (base model,
//!   one adapter per domain, prototypes) the studies share, and
//!   [`leave_one_out`]: the paper's Table-1 comparison they share.
//! - [`demo`]: `semla demo`, SemLA end to end on the embedded synthetic world.
//! - [`camvid`] (+ [`tuning`]): `semla bench camvid`, real CamVid domain shifts.
//! - [`clouds`]: `semla bench clouds`, self-training without labels on those
//!   shifts and SemLA over the library it grows.
//! - [`csi`]: `semla bench csi`, DACS with and without CSI's relabeling into
//!   classes the source labels lack (coarse-to-fine and open).
//! - [`speed`]: `semla bench speed`, per-image and library-scale cost.
//! - [`table`]: methods x domains with the harmonic mean and gap closure.
//! - [`present`]: every rendering (terminal text, Markdown, PNG charts, HTML report).
//! - [`machine`]: the load and memory readings timings are reported next to.

pub mod camvid;
pub mod clouds;
pub mod csi;
pub mod demo;
pub mod error;
pub mod leave_one_out;
pub mod library_build;
pub mod machine;
pub mod present;
pub mod speed;
pub mod table;
pub mod tuning;

pub use error::{BenchError, Result};
