//! Label maps with their raw indices and label-id mappings (photos: [`crate::image_io`]).
//!
//! Label maps are read with the `png` crate and no colour transformation, so a palette
//! PNG yields its palette *indices* (Mapillary Vistas, PASCAL VOC style files) and a
//! 16-bit grey PNG its full 16-bit values (Cityscapes `instanceIds`). The `image` crate
//! would expand palettes to RGB and lose the indices.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

/// Errors reading or writing label maps and photos; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    /// The file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The PNG stream is corrupt or truncated.
    #[error("{path}: not a readable PNG label map: {message}")]
    Png {
        /// The file.
        path: PathBuf,
        /// What the decoder or encoder reported.
        message: String,
    },
    /// The PNG has colour channels, so it is not a map of class indices.
    #[error(
        "{path}: a label map must be single-channel (grey or palette), found colour type {color_type}"
    )]
    NotSingleChannel {
        /// The file.
        path: PathBuf,
        /// The PNG colour type found.
        color_type: String,
    },
    /// The photo could not be decoded.
    #[error("{path}: cannot decode image: {message}")]
    Image {
        /// The file.
        path: PathBuf,
        /// What the decoder reported.
        message: String,
    },
    /// Two things that must have the same size do not.
    #[error("{path}: size {found_width}x{found_height} differs from the expected {width}x{height}")]
    SizeMismatch {
        /// The file.
        path: PathBuf,
        /// Expected width.
        width: u32,
        /// Expected height.
        height: u32,
        /// Width found.
        found_width: u32,
        /// Height found.
        found_height: u32,
    },
}

/// A label map: one raw class index per pixel, row-major, `height * width` values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelMap {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Values, shape `[height, width]` flattened row-major.
    pub values: Vec<u16>,
}

impl LabelMap {
    /// A map of `width x height` pixels, all `value`.
    pub fn filled(width: u32, height: u32, value: u16) -> Self {
        Self {
            width,
            height,
            values: vec![value; width as usize * height as usize],
        }
    }

    /// The value at column `x`, row `y`, if inside the map.
    pub fn get(&self, x: u32, y: u32) -> Option<u16> {
        if x < self.width && y < self.height {
            self.values
                .get(y as usize * self.width as usize + x as usize)
                .copied()
        } else {
            None
        }
    }

    /// Replaces every value `v` with `mapping(v)`.
    pub fn map_values(&mut self, mapping: impl Fn(u16) -> u16) {
        for value in &mut self.values {
            *value = mapping(*value);
        }
    }
}

/// Reads a label map from a PNG with its raw indices.
///
/// Accepted: grey (1, 2, 4, 8 or 16 bit), grey with alpha (alpha ignored) and palette
/// (1, 2, 4 or 8 bit; the palette index is the value). Colour PNGs are rejected.
pub fn read_label_map(path: &Path) -> Result<LabelMap, LabelError> {
    let file = File::open(path).map_err(|source| LabelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let png_error = |err: png::DecodingError| LabelError::Png {
        path: path.to_path_buf(),
        message: err.to_string(),
    };
    let max_pixels = semla_core::limits::max_pixels();
    // Decoded samples are at most 2 bytes x 2 channels per pixel.
    let limits = png::Limits {
        bytes: usize::try_from(max_pixels.saturating_mul(4)).unwrap_or(usize::MAX),
    };
    let mut decoder = png::Decoder::new_with_limits(BufReader::new(file), limits);
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder.read_info().map_err(png_error)?;
    let info = reader.info();
    semla_core::limits::check_pixels(
        u64::from(info.width),
        u64::from(info.height),
        "the label map",
    )
    .map_err(|message| LabelError::Png {
        path: path.to_path_buf(),
        message,
    })?;
    let buffer_size = reader.output_buffer_size().ok_or_else(|| LabelError::Png {
        path: path.to_path_buf(),
        message: "image too large".into(),
    })?;
    let mut buffer = vec![0u8; buffer_size];
    let frame = reader.next_frame(&mut buffer).map_err(png_error)?;
    let channels = match frame.color_type {
        png::ColorType::Grayscale | png::ColorType::Indexed => 1,
        png::ColorType::GrayscaleAlpha => 2,
        other => {
            return Err(LabelError::NotSingleChannel {
                path: path.to_path_buf(),
                color_type: format!("{other:?}"),
            });
        }
    };
    let bits = frame.bit_depth as usize;
    let (width, height) = (frame.width as usize, frame.height as usize);
    let mut values = Vec::with_capacity(width * height);
    for row in buffer.chunks(frame.line_size).take(height) {
        for x in 0..width {
            // Index of the first (value) sample of this pixel, in samples.
            let sample = x * channels;
            let value = match bits {
                16 => u16::from_be_bytes([row[2 * sample], row[2 * sample + 1]]),
                8 => u16::from(row[sample]),
                _ => {
                    // Sub-byte depths pack samples most significant bits first.
                    let bit = sample * bits;
                    let byte = row[bit / 8];
                    let shift = 8 - bits - (bit % 8);
                    u16::from((byte >> shift) & ((1u8 << bits) - 1))
                }
            };
            values.push(value);
        }
    }
    Ok(LabelMap {
        width: frame.width,
        height: frame.height,
        values,
    })
}

/// Writes a label map as a grey PNG: 8-bit when every value fits, 16-bit otherwise.
///
/// The file is written to a temporary file in the same folder and renamed into place.
pub fn write_label_map(path: &Path, map: &LabelMap) -> Result<(), LabelError> {
    let (depth, data) = label_samples(map);
    crate::image_io::write_png(
        path,
        map.width,
        map.height,
        png::ColorType::Grayscale,
        depth,
        &data,
    )
}

/// A label map encoded in memory as [`write_label_map`] writes it.
pub fn label_map_png_bytes(map: &LabelMap) -> Result<Vec<u8>, png::EncodingError> {
    let (depth, data) = label_samples(map);
    crate::image_io::png_bytes(
        map.width,
        map.height,
        png::ColorType::Grayscale,
        depth,
        &data,
    )
}

/// The grey PNG samples of a label map: 8-bit when every value fits, else
/// 16-bit big-endian.
fn label_samples(map: &LabelMap) -> (png::BitDepth, Vec<u8>) {
    if map.values.iter().any(|&v| v > 255) {
        let data = map.values.iter().flat_map(|v| v.to_be_bytes()).collect();
        (png::BitDepth::Sixteen, data)
    } else {
        (
            png::BitDepth::Eight,
            map.values.iter().map(|&v| v as u8).collect(),
        )
    }
}

/// The ignore value of Cityscapes train ids.
pub const CITYSCAPES_IGNORE: u16 = 255;

/// Cityscapes label id (0..=33, and -1 for "license plate") to train id, per the official
/// `cityscapesscripts/helpers/labels.py` table. Entry `i` is the train id of label id `i`;
/// 255 marks labels ignored in evaluation.
pub const CITYSCAPES_LABEL_TO_TRAIN_ID: [u8; 34] = [
    255, // 0 unlabeled
    255, // 1 ego vehicle
    255, // 2 rectification border
    255, // 3 out of roi
    255, // 4 static
    255, // 5 dynamic
    255, // 6 ground
    0,   // 7 road
    1,   // 8 sidewalk
    255, // 9 parking
    255, // 10 rail track
    2,   // 11 building
    3,   // 12 wall
    4,   // 13 fence
    255, // 14 guard rail
    255, // 15 bridge
    255, // 16 tunnel
    5,   // 17 pole
    255, // 18 polegroup
    6,   // 19 traffic light
    7,   // 20 traffic sign
    8,   // 21 vegetation
    9,   // 22 terrain
    10,  // 23 sky
    11,  // 24 person
    12,  // 25 rider
    13,  // 26 car
    14,  // 27 truck
    15,  // 28 bus
    255, // 29 caravan
    255, // 30 trailer
    16,  // 31 train
    17,  // 32 motorcycle
    18,  // 33 bicycle
];

/// Maps a Cityscapes label id to its train id (0..=18), or 255 when the label is not
/// evaluated or not a Cityscapes label id at all.
pub fn cityscapes_label_to_train_id(label_id: u16) -> u16 {
    CITYSCAPES_LABEL_TO_TRAIN_ID
        .get(label_id as usize)
        .map_or(CITYSCAPES_IGNORE, |&t| u16::from(t))
}

/// Cityscapes train id (0..=18) back to its label id, as the cityscapes-script evaluators
/// write predictions. `None` for values that are not train ids.
pub fn cityscapes_train_to_label_id(train_id: u16) -> Option<u16> {
    CITYSCAPES_LABEL_TO_TRAIN_ID
        .iter()
        .position(|&t| u16::from(t) == train_id && t != 255)
        .map(|label| label as u16)
}

/// How the values stored in a label file relate to a domain's class indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LabelEncoding {
    /// Values are class indices already (train ids); the ignore value passes through.
    TrainIds,
    /// Cityscapes label ids (`*_labelIds.png`), mapped with [`cityscapes_label_to_train_id`].
    CityscapesLabelIds,
    /// ADE20K's original annotation: 0 = "other" (ignored), class `c` stored as `c + 1`.
    /// Decoded as `value - 1` with 0 becoming 255, like `prepare_ade20k_sem_seg.py`.
    MinusOneZeroIgnored,
}

impl LabelEncoding {
    /// Converts one stored value to a class index (or the domain's ignore value).
    pub fn decode(self, value: u16) -> u16 {
        match self {
            LabelEncoding::TrainIds => value,
            LabelEncoding::CityscapesLabelIds => cityscapes_label_to_train_id(value),
            LabelEncoding::MinusOneZeroIgnored => {
                if value == 0 {
                    255
                } else {
                    value - 1
                }
            }
        }
    }

    /// Reads `path` and converts its values to class indices.
    pub fn read(self, path: &Path) -> Result<LabelMap, LabelError> {
        let mut map = read_label_map(path)?;
        if self != LabelEncoding::TrainIds {
            map.map_values(|v| self.decode(v));
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image_io::{image_size, read_rgb, write_rgb_png};
    use std::io::BufWriter;

    fn write_raw(
        path: &Path,
        w: u32,
        h: u32,
        color: png::ColorType,
        depth: png::BitDepth,
        palette: Option<&[u8]>,
        data: &[u8],
    ) {
        let file = File::create(path).unwrap();
        let mut encoder = png::Encoder::new(BufWriter::new(file), w, h);
        encoder.set_color(color);
        encoder.set_depth(depth);
        if let Some(p) = palette {
            encoder.set_palette(p.to_vec());
        }
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(data).unwrap();
        writer.finish().unwrap();
    }

    #[test]
    fn reads_palette_indices_not_colours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.png");
        // Palette: index 0 red, 1 green, 2 blue, 3 white.
        let palette = [255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255];
        write_raw(
            &path,
            3,
            2,
            png::ColorType::Indexed,
            png::BitDepth::Eight,
            Some(&palette),
            &[0, 1, 2, 3, 2, 1],
        );
        let map = read_label_map(&path).unwrap();
        assert_eq!((map.width, map.height), (3, 2));
        assert_eq!(map.values, vec![0, 1, 2, 3, 2, 1]);
    }

    #[test]
    fn reads_sub_byte_palette() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p4.png");
        let palette = [0u8; 16 * 3];
        // 4-bit: 5 pixels per row -> 3 bytes per row; values 1,2,3,14,15 / 0,9,8,7,6.
        write_raw(
            &path,
            5,
            2,
            png::ColorType::Indexed,
            png::BitDepth::Four,
            Some(&palette),
            &[0x12, 0x3E, 0xF0, 0x09, 0x87, 0x60],
        );
        let map = read_label_map(&path).unwrap();
        assert_eq!(map.values, vec![1, 2, 3, 14, 15, 0, 9, 8, 7, 6]);
    }

    #[test]
    fn reads_16_bit_grey_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g16.png");
        write_raw(
            &path,
            2,
            2,
            png::ColorType::Grayscale,
            png::BitDepth::Sixteen,
            None,
            &[0x01, 0x02, 0x00, 0xFF, 0xFF, 0xFF, 0x00, 0x00],
        );
        let map = read_label_map(&path).unwrap();
        assert_eq!(map.values, vec![0x0102, 0x00FF, 0xFFFF, 0]);
        let out = dir.path().join("out.png");
        write_label_map(&out, &map).unwrap();
        assert_eq!(read_label_map(&out).unwrap(), map);
        // 8-bit output when values fit.
        let small = LabelMap {
            width: 2,
            height: 1,
            values: vec![7, 255],
        };
        write_label_map(&out, &small).unwrap();
        assert_eq!(read_label_map(&out).unwrap(), small);
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn rejects_rgb_label_map_and_names_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rgb.png");
        write_raw(
            &path,
            1,
            1,
            png::ColorType::Rgb,
            png::BitDepth::Eight,
            None,
            &[1, 2, 3],
        );
        let err = read_label_map(&path).unwrap_err().to_string();
        assert!(
            err.contains("rgb.png") && err.contains("single-channel"),
            "{err}"
        );
    }

    #[test]
    fn corrupt_files_give_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.png");
        std::fs::write(&path, b"\x89PNG\r\n\x1a\nnot really").unwrap();
        let err = read_label_map(&path).unwrap_err().to_string();
        assert!(err.contains("broken.png"), "{err}");
        let err = read_rgb(&path).unwrap_err().to_string();
        assert!(err.contains("broken.png"), "{err}");
        let err = read_rgb(&dir.path().join("missing.png"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.png"), "{err}");
    }

    #[test]
    fn rgb_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("photo.png");
        let image = image::RgbImage::from_fn(3, 2, |x, y| image::Rgb([x as u8, y as u8, 7]));
        write_rgb_png(&path, &image).unwrap();
        assert_eq!(read_rgb(&path).unwrap(), image);
        assert_eq!(image_size(&path).unwrap(), (3, 2));
        let err = image_size(&dir.path().join("nope.png")).unwrap_err();
        assert!(err.to_string().contains("nope.png"));
    }

    #[test]
    fn a_label_map_declaring_a_huge_size_is_refused_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.png");
        write_label_map(&path, &LabelMap::filled(1, 1, 3)).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let bytes = semla_test_support::png::claiming_size(bytes, 100_000, 100_000);
        std::fs::write(&path, &bytes).unwrap();
        let err = read_label_map(&path).unwrap_err().to_string();
        assert!(
            err.contains("tiny.png") && err.contains("--max-pixels"),
            "{err}"
        );
    }

    #[test]
    fn cityscapes_table_spot_checks() {
        assert_eq!(cityscapes_label_to_train_id(7), 0);
        assert_eq!(cityscapes_label_to_train_id(26), 13);
        assert_eq!(cityscapes_label_to_train_id(33), 18);
        assert_eq!(cityscapes_label_to_train_id(0), 255);
        assert_eq!(cityscapes_label_to_train_id(34), 255);
        assert_eq!(cityscapes_label_to_train_id(65535), 255);
        for train in 0..19 {
            let label = cityscapes_train_to_label_id(train).unwrap();
            assert_eq!(cityscapes_label_to_train_id(label), train);
        }
        assert_eq!(cityscapes_train_to_label_id(19), None);
        assert_eq!(cityscapes_train_to_label_id(255), None);
        assert_eq!(LabelEncoding::MinusOneZeroIgnored.decode(0), 255);
        assert_eq!(LabelEncoding::MinusOneZeroIgnored.decode(1), 0);
        assert_eq!(LabelEncoding::MinusOneZeroIgnored.decode(150), 149);
    }

    /// The official mapping reproduces the real frame's `labelTrainIds`.
    ///
    /// The sample's three files were downscaled (to 256x128) independently, so 77 of the
    /// 32768 pixels, all on class boundaries, differ from any per-pixel mapping. The test
    /// checks: (1) every label id present maps, by majority vote over its pixels, to the
    /// train id the file holds; (2) at most 77 pixels differ; (3) each differing pixel's
    /// expected train id occurs within 2 pixels of it in the mapped map (resampling only).
    #[test]
    fn cityscapes_sample_label_ids_map_to_train_ids() {
        let Some(dir) =
            semla_test_support::shared::path("data/cityscapes-sample/gtFine/val/frankfurt")
        else {
            return;
        };
        let stem = "frankfurt_000000_000294_gtFine_";
        let ids = read_label_map(&dir.join(format!("{stem}labelIds.png"))).unwrap();
        let mapped = LabelEncoding::CityscapesLabelIds
            .read(&dir.join(format!("{stem}labelIds.png")))
            .unwrap();
        let expected = read_label_map(&dir.join(format!("{stem}labelTrainIds.png"))).unwrap();
        assert_eq!((mapped.width, mapped.height), (256, 128));
        assert_eq!((expected.width, expected.height), (256, 128));

        // (1) Majority train id per label id.
        let mut votes = vec![[0u32; 256]; 34];
        for (&id, &train) in ids.values.iter().zip(&expected.values) {
            votes[id as usize][train as usize] += 1;
        }
        let mut checked = 0;
        for (id, counts) in votes.iter().enumerate() {
            let total: u32 = counts.iter().sum();
            if total == 0 {
                continue;
            }
            let majority = (0..256).max_by_key(|&t| counts[t]).unwrap() as u16;
            assert_eq!(
                cityscapes_label_to_train_id(id as u16),
                majority,
                "label id {id}"
            );
            checked += 1;
        }
        assert!(checked >= 10, "only {checked} label ids in the frame");

        // (2) and (3): differences are few and only at boundaries.
        let (w, h) = (256i64, 128i64);
        let mut differing = 0;
        for y in 0..h {
            for x in 0..w {
                let want = expected.values[(y * w + x) as usize];
                if mapped.values[(y * w + x) as usize] == want {
                    continue;
                }
                differing += 1;
                let near = (-2..=2).any(|dy| {
                    (-2..=2).any(|dx| {
                        let (nx, ny) = (x + dx, y + dy);
                        (0..w).contains(&nx)
                            && (0..h).contains(&ny)
                            && mapped.values[(ny * w + nx) as usize] == want
                    })
                });
                assert!(near, "pixel ({x}, {y}) expected {want}, not near");
            }
        }
        assert!(differing <= 77, "{differing} pixels differ");
        let instance = read_label_map(&dir.join(format!("{stem}instanceIds.png"))).unwrap();
        assert!(instance.values.iter().any(|&v| v >= 1000), "16-bit ids");
    }
}
