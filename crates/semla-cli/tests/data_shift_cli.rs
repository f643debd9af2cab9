//! `semla data corrupt` and `semla data materialize` end to end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::path::Path;

use semla_data::image_io::{Rgb, RgbImage, read_rgb, write_rgb_png};
use semla_data::labels::{LabelMap, write_label_map};
use semla_test_support::cli::semla_text as semla;

/// A 32x24 photo with a horizontal gradient and some texture.
fn photo() -> RgbImage {
    RgbImage::from_fn(32, 24, |x, y| {
        Rgb([(x * 8) as u8, (y * 10) as u8, ((x * y) % 251) as u8])
    })
}

fn write_frame(camvid: &Path, split: &str, name: &str, class: u16) {
    for dir in [split.to_string(), format!("{split}annot")] {
        std::fs::create_dir_all(camvid.join(dir)).unwrap();
    }
    write_rgb_png(&camvid.join(split).join(name), &photo()).unwrap();
    let labels = LabelMap {
        width: 32,
        height: 24,
        values: vec![class; 32 * 24],
    };
    write_label_map(&camvid.join(format!("{split}annot")).join(name), &labels).unwrap();
}

#[test]
fn corrupt_is_seeded_and_checks_its_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.png");
    write_rgb_png(&input, &photo()).unwrap();
    let run = |seed: &str, out: &str| {
        let out = dir.path().join(out);
        let (ok, _, err) = semla(&[
            "data",
            "corrupt",
            "--kind",
            "gaussian_noise",
            "--severity",
            "3",
            "--seed",
            seed,
            input.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        read_rgb(&out).unwrap()
    };
    let a = run("7", "a.png");
    let b = run("7", "b.png");
    let c = run("8", "c.png");
    assert_eq!(a, b, "same seed, same image");
    assert_ne!(a, c, "another seed, other noise");
    assert_ne!(a, photo(), "the photo was changed");

    let out = dir.path().join("x.png");
    let (ok, _, err) = semla(&[
        "data",
        "corrupt",
        "--kind",
        "fog",
        "--severity",
        "6",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("severity"), "{err}");
    let (ok, _, err) = semla(&[
        "data",
        "corrupt",
        "--kind",
        "smog",
        "--severity",
        "2",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("smog"), "{err}");
    assert!(!out.exists(), "nothing is written on error");
}

#[test]
fn materialize_writes_a_camvid_layout_with_unchanged_labels() {
    let root = tempfile::tempdir().unwrap();
    let camvid = root.path().join("camvid");
    write_frame(&camvid, "val", "0016E5_000010.png", 3);
    write_frame(&camvid, "val", "0016E5_000020.png", 5);
    let out = root.path().join("shifted").join("camvid");
    let (ok, stdout, err) = semla(&[
        "--json",
        "data",
        "materialize",
        "--domain",
        "camvid",
        "--split",
        "val",
        "--kind",
        "contrast",
        "--severity",
        "4",
        "--data-root",
        root.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["images"], 2);
    assert_eq!(report["corruption"], "contrast4");
    for name in ["0016E5_000010.png", "0016E5_000020.png"] {
        let original = std::fs::read(camvid.join("valannot").join(name)).unwrap();
        let copied = std::fs::read(out.join("valannot").join(name)).unwrap();
        assert_eq!(original, copied, "labels are copied byte for byte");
        let image = read_rgb(&out.join("val").join(name)).unwrap();
        // Contrast pulls every pixel towards the image mean: the spread shrinks.
        let spread = |img: &RgbImage| {
            let (lo, hi) = img
                .pixels()
                .fold((255u8, 0u8), |(lo, hi), p| (lo.min(p[0]), hi.max(p[0])));
            hi - lo
        };
        assert!(spread(&image) < spread(&photo()), "{name}");
    }
    // The output is itself a CamVid root that semla can read.
    let (ok, stdout, err) = semla(&[
        "--json",
        "data",
        "stats",
        "camvid",
        "--split",
        "val",
        "--data-root",
        root.path().join("shifted").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let stats: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(stats["splits"][0]["images"], 2);
    assert_eq!(stats["splits"][0]["class_pixels"][3], 32 * 24);

    let (ok, _, err) = semla(&[
        "data",
        "materialize",
        "--domain",
        "camvid",
        "--kind",
        "fog",
        "--severity",
        "2",
        "--data-root",
        root.path().join("nowhere").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("nowhere"),
        "a missing dataset names its path: {err}"
    );
}
