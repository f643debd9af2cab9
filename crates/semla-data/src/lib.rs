//! # semla-data
//!
//! Where images and labels come from:
//!
//! - [`image_io`]: photos decoded to 8-bit RGB (the one decoder), PNG files written atomically.
//! - [`labels`]: label maps read with their raw indices (8/16-bit, gray and palette PNG).
//! - [`samples`]: images as the models see them (`[3, H, W]` in `[0, 1]` with labels),
//!   sample sources (a domain split on disk, samples in memory) and resizing.
//! - [`domains`]: a domain (name, image/label pairs per split, classes, ignore value,
//!   evaluator kind) and the resolution of SemLA's domain names in their official layouts.
//! - [`corrupt`]: photometric domain shifts following ImageNet-C / Cityscapes-C.
//! - [`synthetic`]: the procedural street world used by `semla demo`.

pub mod corrupt;
pub mod domains;
pub mod image_io;
pub mod labels;
pub mod samples;
pub mod synthetic;

pub use image_io::{Rgb, RgbImage};
pub use samples::{
    DomainSource, InMemorySource, RemappedSource, Sample, SampleError, SampleSource,
    UnlabeledSource,
};
