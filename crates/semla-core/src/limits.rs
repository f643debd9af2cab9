//! Bounds on what user input may make semla allocate: a file that declares a
//! huge size, a flag asking for a huge tensor. Each check fails with an error
//! that says which limit, and the flag that raises it.
//!
//! The limits are process-wide settings (a program sets them once from its
//! command line, before any work); the defaults cover every official dataset
//! with a wide margin.

use std::sync::atomic::{AtomicU64, Ordering};

/// Default of [`max_pixels`]: 40 megapixels (Cityscapes frames are 2, the largest
/// Mapillary Vistas images about 20).
pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;

/// Default of [`max_classes`]: 4096 classes (a confusion matrix of 128 MiB; the
/// largest official taxonomy, ADE20K-full, has 847).
pub const DEFAULT_MAX_CLASSES: u64 = 4096;

/// Default of [`max_batch`]: 256 images per forward pass.
pub const DEFAULT_MAX_BATCH: u64 = 256;

/// Default of [`max_file_bytes`]: 1 GiB for an image or label file read whole.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1 << 30;

static MAX_PIXELS: AtomicU64 = AtomicU64::new(DEFAULT_MAX_PIXELS);
static MAX_CLASSES: AtomicU64 = AtomicU64::new(DEFAULT_MAX_CLASSES);
static MAX_BATCH: AtomicU64 = AtomicU64::new(DEFAULT_MAX_BATCH);
static MAX_FILE_BYTES: AtomicU64 = AtomicU64::new(DEFAULT_MAX_FILE_BYTES);

/// Pixels an image, a label map or a resized input may have (`--max-pixels`).
pub fn max_pixels() -> u64 {
    MAX_PIXELS.load(Ordering::Relaxed)
}

/// Classes a model, a metric or a label map may have (`--max-classes`).
pub fn max_classes() -> u64 {
    MAX_CLASSES.load(Ordering::Relaxed)
}

/// Images a batch may hold (`--max-batch`).
pub fn max_batch() -> u64 {
    MAX_BATCH.load(Ordering::Relaxed)
}

/// Bytes an image or label file read whole may have.
pub fn max_file_bytes() -> u64 {
    MAX_FILE_BYTES.load(Ordering::Relaxed)
}

/// Sets the limits (`None` leaves one as it is).
pub fn set(pixels: Option<u64>, classes: Option<u64>, batch: Option<u64>) {
    if let Some(p) = pixels {
        MAX_PIXELS.store(p, Ordering::Relaxed);
    }
    if let Some(c) = classes {
        MAX_CLASSES.store(c, Ordering::Relaxed);
    }
    if let Some(b) = batch {
        MAX_BATCH.store(b, Ordering::Relaxed);
    }
}

/// Checks a `width x height` size against [`max_pixels`]; `what` names it.
pub fn check_pixels(width: u64, height: u64, what: &str) -> Result<(), String> {
    check_pixels_under(width, height, max_pixels(), what)
}

/// Checks a `width x height` size against an explicit limit of `max` pixels
/// (a service's own `--max-pixels`); `what` names it.
pub fn check_pixels_under(width: u64, height: u64, max: u64, what: &str) -> Result<(), String> {
    let pixels = width.saturating_mul(height);
    if pixels > max {
        return Err(format!(
            "{what} is {width}x{height} = {pixels} pixels, more than the limit of {max} \
             (--max-pixels raises it)"
        ));
    }
    Ok(())
}

/// Checks a class count against [`max_classes`]; `what` names it.
pub fn check_classes(classes: u64, what: &str) -> Result<(), String> {
    let max = max_classes();
    if classes > max {
        return Err(format!(
            "{what} has {classes} classes, more than the limit of {max} (--max-classes raises it)"
        ));
    }
    Ok(())
}

/// Checks a batch size against [`max_batch`]; `what` names it.
pub fn check_batch(images: u64, what: &str) -> Result<(), String> {
    let max = max_batch();
    if images > max {
        return Err(format!(
            "{what} of {images} images is more than the limit of {max} (--max-batch raises it)"
        ));
    }
    Ok(())
}

/// Checks a file size against [`max_file_bytes`]; `what` names it.
pub fn check_file_bytes(bytes: u64, what: &str) -> Result<(), String> {
    let max = max_file_bytes();
    if bytes > max {
        return Err(format!(
            "{what} is {bytes} bytes, more than the limit of {max} for a file read whole"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_accept_datasets_and_refuse_huge_sizes() {
        assert!(check_pixels(2048, 1024, "a Cityscapes frame").is_ok());
        let err = check_pixels(8000, 8000, "x.png").unwrap_err();
        assert!(
            err.contains("x.png") && err.contains("--max-pixels"),
            "{err}"
        );
        assert!(
            check_pixels(u64::MAX, u64::MAX, "y").is_err(),
            "no overflow"
        );
        assert!(check_classes(847, "ADE20K-full").is_ok());
        assert!(check_classes(100_000_000, "--num-classes").is_err());
        assert!(check_batch(16, "a batch").is_ok());
        assert!(check_batch(100_000, "a batch").is_err());
    }
}
