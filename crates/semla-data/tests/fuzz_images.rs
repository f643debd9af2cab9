//! Property-based tests of the image and label-map decoders: valid PNG and JPEG
//! files, damaged at random (bytes overwritten, sizes made huge, files cut
//! short). Whatever the damage: no panic, an error naming the file, and no
//! allocation beyond what the pixel limit allows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use image::{ImageFormat, Rgb, RgbImage};
use proptest::prelude::*;
use semla_data::image_io::read_rgb;
use semla_data::labels::{LabelMap, read_label_map, write_label_map};
use semla_test_support::fuzz::{LargestAllocation, largest_allocation, mutated};
use semla_test_support::png::with_valid_crcs;

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// This binary's pixel limit, far below the default, so that the bound below
/// says something: 256 x 256.
const MAX_PIXELS: u64 = 1 << 16;

/// What decoding may ask for at most: the decoded pixels (16 bits x 4 channels
/// at the limit) plus the decoders' own buffers (64 MiB), as `read_rgb` allows.
const MAX_ALLOCATION_BYTES: usize = (MAX_PIXELS as usize) * 16 + (64 << 20);

fn photo(format: ImageFormat) -> Vec<u8> {
    let image = RgbImage::from_fn(40, 30, |x, y| Rgb([(x * 6) as u8, (y * 8) as u8, 90]));
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, format).unwrap();
    bytes.into_inner()
}

fn label_map() -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("gt.png");
    let values = (0..40 * 30).map(|i| (i % 7) as u16).collect();
    write_label_map(
        &path,
        &LabelMap {
            width: 40,
            height: 30,
            values,
        },
    )
    .unwrap();
    std::fs::read(path).unwrap()
}

/// Decodes `bytes` written as `name` with `decode` and checks the outcome.
fn decode_checked<T>(
    bytes: &[u8],
    name: &str,
    decode: impl FnOnce(&std::path::Path) -> Result<T, semla_data::labels::LabelError>,
    size: impl Fn(&T) -> (u32, u32),
) -> Result<(), TestCaseError> {
    semla_core::limits::set(Some(MAX_PIXELS), None, None);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let (result, largest) = largest_allocation(|| decode(&path));
    match result {
        Ok(decoded) => {
            let (w, h) = size(&decoded);
            prop_assert!(u64::from(w) * u64::from(h) <= MAX_PIXELS);
        }
        Err(e) => prop_assert!(e.to_string().contains(name), "{}", e),
    }
    prop_assert!(
        largest < MAX_ALLOCATION_BYTES,
        "{} bytes asked for",
        largest
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn crc_repair_matches_the_encoder(_unused in 0..1u8) {
        let png = photo(ImageFormat::Png);
        prop_assert_eq!(with_valid_crcs(png.clone()), png);
    }

    #[test]
    fn png_photos(bytes in mutated(photo(ImageFormat::Png)).prop_map(with_valid_crcs)) {
        decode_checked(&bytes, "photo.png", read_rgb, |i| i.dimensions())?;
    }

    #[test]
    fn jpeg_photos(bytes in mutated(photo(ImageFormat::Jpeg))) {
        decode_checked(&bytes, "photo.jpg", read_rgb, |i| i.dimensions())?;
    }

    #[test]
    fn label_maps(bytes in mutated(label_map()).prop_map(with_valid_crcs)) {
        decode_checked(&bytes, "gt.png", read_label_map, |m| (m.width, m.height))?;
    }
}
