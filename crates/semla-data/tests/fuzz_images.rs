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

/// CRC-32 (IEEE, as PNG chunks use), bit by bit.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Recomputes the CRC of every PNG chunk whose length still fits the file, so
/// that damage inside a chunk (a huge width in `IHDR`) reaches the decoder
/// instead of failing the checksum.
fn with_valid_crcs(mut bytes: Vec<u8>) -> Vec<u8> {
    let mut at = 8;
    while at + 12 <= bytes.len() {
        let len =
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let Some(end) = (at + 8)
            .checked_add(len)
            .filter(|&end| end + 4 <= bytes.len())
        else {
            break;
        };
        let crc = crc32(&bytes[at + 4..end]);
        bytes[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        at = end + 4;
    }
    bytes
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
