//! Renders the documentation pictures and measures the synthetic generator.
//!
//! ```text
//! cargo run --release -p semla-data --example gallery -- OUT_DIR [CAMVID_FRAME.png]
//! ```
//!
//! Writes `OUT_DIR/synthetic_world.png` (one row per synthetic domain: two
//! samples, each image next to its coloured label map) and, when a CamVid
//! frame is given, `OUT_DIR/corruptions.png` (the frame, then every
//! corruption at severity 3, row-major in `CorruptionKind::ALL` order, each
//! downscaled to 120x90). Prints the generator speed at 128x96 on this thread.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::path::{Path, PathBuf};
use std::time::Instant;

use image::RgbImage;
use image::imageops::{FilterType, overlay, resize};
use semla_data::corrupt::{Corruption, CorruptionKind};
use semla_data::synthetic::{Split, SyntheticWorld, colorize_labels};

fn save(img: &RgbImage, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    semla_data::image_io::write_rgb_png(path, img)?;
    println!("wrote {}", path.display());
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().unwrap_or_else(|| "docs/img".into()));
    std::fs::create_dir_all(&out)?;

    let (w, h) = (128u32, 96u32);
    let domains = SyntheticWorld::domains();
    let per_row = 2u32;
    let mut grid = RgbImage::new(w * 2 * per_row, h * domains.len() as u32);
    for (row, domain) in domains.iter().enumerate() {
        for k in 0..per_row {
            let s = SyntheticWorld::generate(domain, Split::Train, u64::from(k), w, h)?;
            let x = i64::from(k * 2 * w);
            let y = row as i64 * i64::from(h);
            overlay(&mut grid, &s.image, x, y);
            overlay(
                &mut grid,
                &colorize_labels(&s.labels, w, h),
                x + i64::from(w),
                y,
            );
        }
    }
    save(&grid, &out.join("synthetic_world.png"))?;

    if let Some(frame) = args.next() {
        let original = image::open(&frame)?.to_rgb8();
        let (tw, th) = (120u32, 90u32);
        let cols = 5u32;
        let tiles: Vec<RgbImage> = std::iter::once(Ok(original.clone()))
            .chain(
                CorruptionKind::ALL
                    .iter()
                    .map(|&k| Corruption::new(k, 3, 0)?.apply(&original, 0)),
            )
            .collect::<Result<_, _>>()?;
        let rows = (tiles.len() as u32).div_ceil(cols);
        let mut grid = RgbImage::new(tw * cols, th * rows);
        for (i, tile) in tiles.iter().enumerate() {
            let small = resize(tile, tw, th, FilterType::Triangle);
            overlay(
                &mut grid,
                &small,
                i64::from(i as u32 % cols * tw),
                i64::from(i as u32 / cols * th),
            );
        }
        save(&grid, &out.join("corruptions.png"))?;
    }

    // Generator speed: every domain in turn, one thread.
    let count = 800u64;
    let start = Instant::now();
    let mut checksum = 0u64;
    for i in 0..count {
        let domain = &domains[(i as usize) % domains.len()];
        let s = SyntheticWorld::generate(domain, Split::Train, i, w, h)?;
        checksum = checksum.wrapping_add(u64::from(s.labels[(i as usize * 97) % s.labels.len()]));
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "synthetic generator: {count} images at {w}x{h} in {secs:.3} s = {:.0} images/s (one thread, checksum {checksum})",
        count as f64 / secs
    );
    Ok(())
}
