//! # semla-data
//!
//! Where images and labels come from:
//!
//! - [`labels`]: label maps read with their raw indices (8/16-bit, gray and palette PNG).
//! - [`domains`]: a domain (name, image/label pairs per split, classes, ignore value,
//!   evaluator kind) and the resolution of SemLA's domain names in their official layouts.
//! - [`corrupt`]: photometric domain shifts following ImageNet-C / Cityscapes-C.
//! - [`synthetic`]: the procedural street world used by `semla demo`.

pub mod corrupt;
pub mod domains;
pub mod labels;
pub mod synthetic;
