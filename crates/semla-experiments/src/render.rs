//! Pictures of predictions: coloured class masks, overlays on the photo,
//! PNG encoding and atomic PNG files.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::error::{ExperimentError, Result, write_atomic};

/// The colour of class `class`: `palette[class]`, else a generic colour
/// (PASCAL VOC's bit-spreading scheme, distinct for neighbouring indices).
pub fn class_colour(palette: &[[u8; 3]], class: u16) -> [u8; 3] {
    palette
        .get(usize::from(class))
        .copied()
        .unwrap_or_else(|| semla_data::domains::palette::generic_color(class))
}

/// Colours a class map `[H, W]` (row-major) as an RGB image.
pub fn colour_mask(
    classes: &[u16],
    width: usize,
    height: usize,
    palette: &[[u8; 3]],
) -> Result<RgbImage> {
    if classes.len() != width * height {
        return Err(ExperimentError::Invalid(format!(
            "class map has {} values for {width}x{height} pixels",
            classes.len()
        )));
    }
    Ok(RgbImage::from_fn(width as u32, height as u32, |x, y| {
        Rgb(class_colour(
            palette,
            classes[y as usize * width + x as usize],
        ))
    }))
}

/// `alpha * mask + (1 - alpha) * photo` (same sizes required).
pub fn overlay(mask: &RgbImage, photo: &RgbImage, alpha: f32) -> Result<RgbImage> {
    if mask.dimensions() != photo.dimensions() {
        return Err(ExperimentError::Invalid(format!(
            "mask is {:?} but the photo is {:?}",
            mask.dimensions(),
            photo.dimensions()
        )));
    }
    let alpha = alpha.clamp(0.0, 1.0);
    let mut out = RgbImage::new(photo.width(), photo.height());
    for ((m, p), o) in mask.pixels().zip(photo.pixels()).zip(out.pixels_mut()) {
        for c in 0..3 {
            o[c] = (alpha * f32::from(m[c]) + (1.0 - alpha) * f32::from(p[c])).round() as u8;
        }
    }
    Ok(out)
}

/// PNG bytes of an RGB image.
pub fn png_bytes(img: &RgbImage) -> Result<Vec<u8>> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| ExperimentError::Invalid(format!("encoding a PNG: {e}")))?;
    Ok(out.into_inner())
}

/// Writes `img` as a PNG file (atomic).
pub fn write_png(path: &Path, img: &RgbImage) -> Result<()> {
    write_atomic(path, &png_bytes(img)?)
}

/// Scales an image by an integer factor with nearest-neighbour sampling
/// (for small demo pictures in reports).
pub fn upscale(img: &RgbImage, factor: u32) -> RgbImage {
    let factor = factor.max(1);
    RgbImage::from_fn(img.width() * factor, img.height() * factor, |x, y| {
        *img.get_pixel(x / factor, y / factor)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_overlay_and_png_round_trip() {
        let palette = [[255, 0, 0], [0, 0, 255]];
        let mask = colour_mask(&[0, 1, 1, 0, 5, 1], 3, 2, &palette).unwrap();
        assert_eq!(mask.get_pixel(1, 0).0, [0, 0, 255]);
        assert_eq!(
            mask.get_pixel(1, 1).0,
            semla_data::domains::palette::generic_color(5)
        );
        let photo = RgbImage::from_pixel(3, 2, Rgb([100, 100, 100]));
        let blended = overlay(&mask, &photo, 0.5).unwrap();
        assert_eq!(blended.get_pixel(0, 0).0, [178, 50, 50]);
        let png = png_bytes(&blended).unwrap();
        let back = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(back, blended);
        assert!(colour_mask(&[0; 5], 3, 2, &palette).is_err());
    }
}
