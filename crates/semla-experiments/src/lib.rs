//! # semla-experiments
//!
//! SemLA's experiments end to end, on top of the other crates:
//!
//! - [`table`]: the Table-1 style summary (per-domain mIoU, harmonic mean,
//!   gap closure of SemLA between zero-shot and oracle).
//! - [`report`]: the self-contained HTML report (bar chart, sample images).

pub mod report;
pub mod table;
