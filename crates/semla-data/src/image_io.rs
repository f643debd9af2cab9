//! Photos on disk: decoding to 8-bit RGB (the one decoder every model and embedder
//! uses), reading sizes from headers, and PNG files written atomically.

use std::path::Path;

pub use image::{Rgb, RgbImage};

use crate::labels::LabelError;

/// Reads a photo as 8-bit RGB (any colour type and depth the `image` crate
/// decodes; alpha is dropped, grey is replicated, as PIL's `convert("RGB")`).
///
/// The size is read from the header and checked against
/// [`semla_core::limits::max_pixels`] before any pixel is decoded, and the decoder
/// may not allocate beyond it. A JPEG cut short (no end-of-image marker) must
/// decode strictly, so that a truncated file is an error, not a grey picture.
pub fn read_rgb(path: &Path) -> Result<RgbImage, LabelError> {
    let bytes = read_bounded(path)?;
    decode_rgb(&bytes, path, semla_core::limits::max_pixels())
}

/// Decodes an encoded photo (PNG, JPEG) held in memory as 8-bit RGB, as
/// [`read_rgb`] does for a file: the size is read from the header and checked
/// against `max_pixels` before any pixel is decoded, and the decoder may not
/// allocate beyond it. `name` is what errors call the data (a file, an upload).
pub fn decode_rgb(bytes: &[u8], name: &Path, max_pixels: u64) -> Result<RgbImage, LabelError> {
    let io = |source| LabelError::Io {
        path: name.to_path_buf(),
        source,
    };
    let image_error = |message: String| LabelError::Image {
        path: name.to_path_buf(),
        message,
    };
    let header = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(io)?;
    let format = header.format();
    // The decoders' own messages ("Format error decoding Jpeg: I/O errors ...")
    // do not say what the user should suspect: a file cut short or damaged.
    let decode_error = |err: image::ImageError| match format {
        Some(image::ImageFormat::Jpeg) => image_error(format!("truncated or corrupt JPEG: {err}")),
        Some(image::ImageFormat::Png) => image_error(format!("truncated or corrupt PNG: {err}")),
        _ => image_error(err.to_string()),
    };
    let (width, height) = header.into_dimensions().map_err(decode_error)?;
    semla_core::limits::check_pixels_under(
        u64::from(width),
        u64::from(height),
        max_pixels,
        "the image",
    )
    .map_err(image_error)?;
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(io)?;
    let mut limits = image::Limits::default();
    // Decoded pixels (up to 16 bits, 4 channels) plus the decoder's own buffers.
    limits.max_alloc = Some(
        (u64::from(width) * u64::from(height))
            .saturating_mul(16)
            .saturating_add(64 << 20),
    );
    reader.limits(limits);
    let image = reader.decode().map_err(decode_error)?;
    if format == Some(image::ImageFormat::Jpeg) && !ends_with_eoi(bytes) {
        check_jpeg_strictly(bytes).map_err(image_error)?;
    }
    Ok(image.to_rgb8())
}

/// The bytes of a file read whole, at most [`semla_core::limits::max_file_bytes`].
pub(crate) fn read_bounded(path: &Path) -> Result<Vec<u8>, LabelError> {
    let io = |source| LabelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    semla_core::limits::check_file_bytes(len, "the file").map_err(|message| LabelError::Image {
        path: path.to_path_buf(),
        message,
    })?;
    std::fs::read(path).map_err(io)
}

/// Whether JPEG data ends with its end-of-image marker (`FF D9`), allowing for
/// trailing padding.
fn ends_with_eoi(bytes: &[u8]) -> bool {
    let trimmed = bytes
        .iter()
        .rposition(|&b| b != 0 && b != b'\n' && b != b'\r')
        .map_or(&bytes[..0], |last| &bytes[..=last]);
    trimmed.ends_with(&[0xFF, 0xD9])
}

/// Decodes JPEG data with zune-jpeg's strict checks: a file cut short fails.
fn check_jpeg_strictly(bytes: &[u8]) -> Result<(), String> {
    let options = zune_core::options::DecoderOptions::default().set_strict_mode(true);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(
        zune_core::bytestream::ZCursor::new(bytes),
        options,
    );
    decoder
        .decode()
        .map(|_| ())
        .map_err(|e| format!("truncated or corrupt JPEG: {e}"))
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
pub fn png_bytes(
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
        path: semla_core::fs::user_path(path),
        message: err.to_string(),
    })?;
    semla_core::fs::write_atomic(path, &bytes).map_err(|e| LabelError::Io {
        path: e.path,
        source: e.source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg_bytes() -> Vec<u8> {
        let img = RgbImage::from_fn(64, 48, |x, y| Rgb([(x * 4) as u8, (y * 5) as u8, 90]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    #[test]
    fn truncated_jpegs_are_errors_and_whole_ones_decode() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = jpeg_bytes();
        let whole = dir.path().join("whole.jpg");
        std::fs::write(&whole, &bytes).unwrap();
        assert_eq!(read_rgb(&whole).unwrap().dimensions(), (64, 48));
        // Cut after the headers, and half way through the scan.
        let sos = bytes.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        for cut in [sos + 12, (sos + bytes.len()) / 2] {
            let path = dir.path().join(format!("cut{cut}.jpg"));
            std::fs::write(&path, &bytes[..cut]).unwrap();
            match read_rgb(&path) {
                Ok(_) => panic!("a JPEG cut at {cut} of {} bytes decoded", bytes.len()),
                Err(e) => assert!(e.to_string().contains(&format!("cut{cut}.jpg")), "{e}"),
            }
        }
        // Only the end marker missing: every pixel is there, the picture decodes.
        let path = dir.path().join("no_eoi.jpg");
        std::fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
        assert_eq!(read_rgb(&path).unwrap().dimensions(), (64, 48));
    }

    #[test]
    fn a_header_declaring_a_huge_image_is_refused_before_decoding() {
        // A valid 1x1 PNG whose IHDR claims 100000 x 100000 pixels.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.png");
        let png = rgb_png_bytes(&RgbImage::new(1, 1)).unwrap();
        let png = semla_test_support::png::claiming_size(png, 100_000, 100_000);
        std::fs::write(&path, &png).unwrap();
        let err = read_rgb(&path).unwrap_err().to_string();
        assert!(
            err.contains("huge.png") && err.contains("--max-pixels"),
            "{err}"
        );
    }
}
