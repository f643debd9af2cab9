//! Photos on disk: decoding to 8-bit RGB (the one decoder every model and embedder
//! uses), reading sizes from headers, and PNG files written atomically.

use std::path::Path;

pub use image::{Rgb, RgbImage};

use crate::labels::LabelError;

/// Reads a photo as 8-bit RGB (any colour type and depth the `image` crate
/// decodes; alpha is dropped, grey is replicated, as PIL's `convert("RGB")`).
pub fn read_rgb(path: &Path) -> Result<RgbImage, LabelError> {
    let reader = image::ImageReader::open(path).map_err(|source| LabelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let reader = reader
        .with_guessed_format()
        .map_err(|source| LabelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let image = reader.decode().map_err(|err| LabelError::Image {
        path: path.to_path_buf(),
        message: err.to_string(),
    })?;
    Ok(image.to_rgb8())
}

/// Width and height of a photo, read from its header only.
pub fn image_size(path: &Path) -> Result<(u32, u32), LabelError> {
    image::image_dimensions(path).map_err(|err| LabelError::Image {
        path: path.to_path_buf(),
        message: err.to_string(),
    })
}

/// The PNG encoding of an 8-bit RGB image.
pub fn rgb_png_bytes(image: &RgbImage) -> Result<Vec<u8>, png::EncodingError> {
    png_bytes(
        image.width(),
        image.height(),
        png::ColorType::Rgb,
        png::BitDepth::Eight,
        image.as_raw(),
    )
}

/// Writes an 8-bit RGB PNG atomically.
pub fn write_rgb_png(path: &Path, image: &RgbImage) -> Result<(), LabelError> {
    write_png(
        path,
        image.width(),
        image.height(),
        png::ColorType::Rgb,
        png::BitDepth::Eight,
        image.as_raw(),
    )
}

/// Raw PNG samples encoded in memory.
pub(crate) fn png_bytes(
    width: u32,
    height: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(color);
        encoder.set_depth(depth);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(data)?;
        writer.finish()?;
    }
    Ok(out)
}

/// Writes raw PNG samples to `path` atomically ([`semla_core::fs::write_atomic`]).
pub(crate) fn write_png(
    path: &Path,
    width: u32,
    height: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
) -> Result<(), LabelError> {
    let bytes = png_bytes(width, height, color, depth, data).map_err(|err| LabelError::Png {
        path: path.to_path_buf(),
        message: err.to_string(),
    })?;
    semla_core::fs::write_atomic(path, &bytes).map_err(|e| LabelError::Io {
        path: e.path,
        source: e.source,
    })
}
