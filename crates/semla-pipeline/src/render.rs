//! Pictures of predictions: the colours of a model's classes, coloured masks and
//! overlays on the photo (built on `semla_data::domains::palette`).

use semla_data::RgbImage;
use semla_data::domains::Palette;
use semla_data::domains::palette::{blend, colorize_classes};
use semla_models::Segmenter;

use crate::error::{PipelineError, Result};

/// Display colours for a model's classes: the synthetic world's palette for
/// its 10 classes, the Cityscapes palette for 19 classes, CamVid's for 11,
/// otherwise generic colours.
pub fn palette_for(model: &dyn Segmenter) -> Vec<[u8; 3]> {
    let config = model.config();
    let names = config.class_names();
    let n = model.num_classes();
    let synthetic = semla_data::synthetic::CLASS_NAMES;
    if names.len() == synthetic.len() && names.iter().zip(synthetic).all(|(a, b)| a == b) {
        return semla_data::synthetic::PALETTE.to_vec();
    }
    let palette = match n {
        19 => Palette::Cityscapes,
        11 => Palette::CamVid,
        _ => Palette::Generic,
    };
    (0..n).map(|c| palette.color(c as u16, None)).collect()
}

/// Colours a class map `[H, W]` (row-major) as an RGB image.
pub fn colour_mask(
    classes: &[u16],
    width: usize,
    height: usize,
    palette: &[[u8; 3]],
) -> Result<RgbImage> {
    colorize_classes(classes, width as u32, height as u32, palette).ok_or_else(|| {
        PipelineError::Invalid(format!(
            "class map has {} values for {width}x{height} pixels",
            classes.len()
        ))
    })
}

/// The mask blended over the photo, half and half (same sizes required).
pub fn overlay(mask: &RgbImage, photo: &RgbImage) -> Result<RgbImage> {
    Ok(blend(mask, photo, 0.5, std::path::Path::new("the photo"))?)
}

/// Scales an image by an integer factor with nearest-neighbour sampling
/// (for small pictures in reports).
pub fn upscale(img: &RgbImage, factor: u32) -> RgbImage {
    let factor = factor.max(1);
    RgbImage::from_fn(img.width() * factor, img.height() * factor, |x, y| {
        *img.get_pixel(x / factor, y / factor)
    })
}
