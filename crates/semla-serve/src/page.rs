//! `GET /`: one self-contained page (no external assets, works offline):
//! upload or drop an image (or take the sample), see the overlay, the mask,
//! the class legend and the adapters SemLA chose with their weights.

/// The page.
pub const HTML: &str = include_str!("page.html");
