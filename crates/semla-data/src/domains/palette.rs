//! Display colours for label maps, and blending them over photos.

use image::{Rgb, RgbImage};

use crate::labels::{LabelError, LabelMap};

/// A colour table for class indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Palette {
    /// The official Cityscapes colours of the 19 train ids.
    Cityscapes,
    /// The colours of the CamVid (SegNet tutorial) release, values 0..=11.
    CamVid,
    /// A deterministic colour per index (the PASCAL VOC bit-interleaving scheme applied
    /// to `index + 1`, so that no class is black).
    Generic,
}

/// Cityscapes train ids 0..=18, RGB, from `cityscapesscripts/helpers/labels.py`.
pub const CITYSCAPES_COLORS: [[u8; 3]; 19] = [
    [128, 64, 128],  // road
    [244, 35, 232],  // sidewalk
    [70, 70, 70],    // building
    [102, 102, 156], // wall
    [190, 153, 153], // fence
    [153, 153, 153], // pole
    [250, 170, 30],  // traffic light
    [220, 220, 0],   // traffic sign
    [107, 142, 35],  // vegetation
    [152, 251, 152], // terrain
    [70, 130, 180],  // sky
    [220, 20, 60],   // person
    [255, 0, 0],     // rider
    [0, 0, 142],     // car
    [0, 0, 70],      // truck
    [0, 60, 100],    // bus
    [0, 80, 100],    // train
    [0, 0, 230],     // motorcycle
    [119, 11, 32],   // bicycle
];

/// CamVid values 0..=11 (11 = Unlabelled), RGB, as published with the data.
pub const CAMVID_COLORS: [[u8; 3]; 12] = [
    [128, 128, 128], // Sky
    [128, 0, 0],     // Building
    [192, 192, 128], // Pole
    [128, 64, 128],  // Road
    [60, 40, 222],   // Pavement
    [128, 128, 0],   // Tree
    [192, 128, 128], // SignSymbol
    [64, 64, 128],   // Fence
    [64, 0, 128],    // Car
    [64, 64, 0],     // Pedestrian
    [0, 128, 192],   // Bicyclist
    [0, 0, 0],       // Unlabelled
];

impl Palette {
    /// The palette for a dataset name: `cityscapes` (also `cs`, `acdc`, `muses`, `bdd`,
    /// which share the 19 train ids), `camvid`, anything else [`Palette::Generic`].
    pub fn for_dataset(name: &str) -> Palette {
        let lower = name.to_ascii_lowercase();
        let dataset = lower.split(['-', '/']).next().unwrap_or("");
        match dataset {
            "cityscapes" | "cs" | "acdc" | "muses" | "bdd" => Palette::Cityscapes,
            "camvid" => Palette::CamVid,
            _ => Palette::Generic,
        }
    }

    /// The colour of class index `value`; the ignore value is black.
    pub fn color(self, value: u16, ignore: Option<u16>) -> [u8; 3] {
        if Some(value) == ignore {
            return [0, 0, 0];
        }
        let table: &[[u8; 3]] = match self {
            Palette::Cityscapes => &CITYSCAPES_COLORS,
            Palette::CamVid => &CAMVID_COLORS,
            Palette::Generic => &[],
        };
        table
            .get(value as usize)
            .copied()
            .unwrap_or_else(|| generic_color(value))
    }
}

/// PASCAL VOC's colour map scheme on `value + 1`: the bits of the index are spread over
/// the high bits of R, G and B, so neighbouring indices get distinct colours.
pub fn generic_color(value: u16) -> [u8; 3] {
    let mut index = u32::from(value) + 1;
    let mut rgb = [0u8; 3];
    for shift in (0..8).rev() {
        for (channel, c) in rgb.iter_mut().enumerate() {
            *c |= (((index >> channel) & 1) as u8) << shift;
        }
        index >>= 3;
    }
    rgb
}

/// Colours a label map, `[H, W]` → `[H, W, 3]`.
pub fn colorize(map: &LabelMap, palette: Palette, ignore: Option<u16>) -> RgbImage {
    RgbImage::from_fn(map.width, map.height, |x, y| {
        Rgb(palette.color(map.get(x, y).unwrap_or(0), ignore))
    })
}

/// The colour of class `class` in a colour table (a model's classes, in order),
/// else [`generic_color`].
pub fn class_color(colors: &[[u8; 3]], class: u16) -> [u8; 3] {
    colors
        .get(usize::from(class))
        .copied()
        .unwrap_or_else(|| generic_color(class))
}

/// Colours a class map `[H, W]` (row-major, `width * height` values) with a colour
/// table ([`class_color`]); `None` when the map does not have `width * height` values.
pub fn colorize_classes(
    classes: &[u16],
    width: u32,
    height: u32,
    colors: &[[u8; 3]],
) -> Option<RgbImage> {
    if classes.len() != width as usize * height as usize {
        return None;
    }
    Some(RgbImage::from_fn(width, height, |x, y| {
        Rgb(class_color(
            colors,
            classes[y as usize * width as usize + x as usize],
        ))
    }))
}

/// `alpha * overlay + (1 - alpha) * photo`, per channel, rounded. Both images must have
/// the same size (`photo_name` names the photo in the error otherwise).
pub fn blend(
    overlay: &RgbImage,
    photo: &RgbImage,
    alpha: f32,
    photo_name: &std::path::Path,
) -> Result<RgbImage, LabelError> {
    if overlay.dimensions() != photo.dimensions() {
        return Err(LabelError::SizeMismatch {
            path: photo_name.to_path_buf(),
            width: overlay.width(),
            height: overlay.height(),
            found_width: photo.width(),
            found_height: photo.height(),
        });
    }
    let alpha = alpha.clamp(0.0, 1.0);
    let mut out = RgbImage::new(photo.width(), photo.height());
    for ((o, p), dst) in overlay.pixels().zip(photo.pixels()).zip(out.pixels_mut()) {
        for c in 0..3 {
            let v = alpha * f32::from(o[c]) + (1.0 - alpha) * f32::from(p[c]);
            dst[c] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_colours_are_distinct_and_not_black() {
        let colours: Vec<_> = (0..256u16).map(generic_color).collect();
        assert!(colours.iter().all(|c| *c != [0, 0, 0]));
        let mut unique = colours.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 256);
        // VOC colour map: index 1 is (128, 0, 0), index 2 (0, 128, 0), index 3 (128, 128, 0).
        assert_eq!(generic_color(0), [128, 0, 0]);
        assert_eq!(generic_color(1), [0, 128, 0]);
        assert_eq!(generic_color(2), [128, 128, 0]);
    }

    #[test]
    fn mask_overlay_and_png_round_trip() {
        let palette = [[255, 0, 0], [0, 0, 255]];
        let mask = colorize_classes(&[0, 1, 1, 0, 5, 1], 3, 2, &palette).unwrap();
        assert_eq!(mask.get_pixel(1, 0).0, [0, 0, 255]);
        assert_eq!(mask.get_pixel(1, 1).0, generic_color(5));
        let photo = RgbImage::from_pixel(3, 2, Rgb([100, 100, 100]));
        let blended = blend(&mask, &photo, 0.5, std::path::Path::new("p.png")).unwrap();
        assert_eq!(blended.get_pixel(0, 0).0, [178, 50, 50]);
        let png = crate::image_io::rgb_png_bytes(&blended).unwrap();
        let back = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(back, blended);
        assert!(colorize_classes(&[0; 5], 3, 2, &palette).is_none());
    }

    #[test]
    fn palettes_and_blend() {
        assert_eq!(Palette::for_dataset("cityscapes"), Palette::Cityscapes);
        assert_eq!(Palette::for_dataset("acdc-fog"), Palette::Cityscapes);
        assert_eq!(Palette::for_dataset("camvid/0001TP"), Palette::CamVid);
        assert_eq!(Palette::for_dataset("mv"), Palette::Generic);
        assert_eq!(Palette::Cityscapes.color(0, Some(255)), [128, 64, 128]);
        assert_eq!(Palette::Cityscapes.color(255, Some(255)), [0, 0, 0]);
        assert_eq!(Palette::CamVid.color(4, Some(11)), [60, 40, 222]);
        let map = LabelMap {
            width: 2,
            height: 1,
            values: vec![0, 255],
        };
        let colours = colorize(&map, Palette::Cityscapes, Some(255));
        assert_eq!(colours.get_pixel(0, 0).0, [128, 64, 128]);
        assert_eq!(colours.get_pixel(1, 0).0, [0, 0, 0]);
        let photo = RgbImage::from_pixel(2, 1, Rgb([100, 200, 0]));
        let out = blend(&colours, &photo, 0.25, std::path::Path::new("p.png")).unwrap();
        // 0.25 * 128 + 0.75 * 100 = 107; 0.25 * 64 + 0.75 * 200 = 166; 0.25 * 128 = 32.
        assert_eq!(out.get_pixel(0, 0).0, [107, 166, 32]);
        assert_eq!(out.get_pixel(1, 0).0, [75, 150, 0]);
        let small = RgbImage::new(1, 1);
        let err = blend(&colours, &small, 0.5, std::path::Path::new("p.png")).unwrap_err();
        assert!(err.to_string().contains("p.png"));
    }
}
