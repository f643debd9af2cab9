//! `semla data stats` and `semla data show` end to end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::path::{Path, PathBuf};

use semla_data::image_io::{read_rgb, write_rgb_png};
use semla_data::labels::{LabelMap, write_label_map};
use semla_test_support::cli::semla_text as semla;

fn frame(dir: &Path, split: &str, name: &str, values: &[u16]) {
    let images = dir.join(split);
    let labels = dir.join(format!("{split}annot"));
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&labels).unwrap();
    let map = LabelMap {
        width: 2,
        height: 2,
        values: values.to_vec(),
    };
    write_label_map(&labels.join(name), &map).unwrap();
    write_rgb_png(&images.join(name), &semla_data::RgbImage::new(2, 2)).unwrap();
}

#[test]
fn stats_on_a_small_camvid_tree() {
    let root = tempfile::tempdir().unwrap();
    let camvid = root.path().join("camvid");
    frame(&camvid, "train", "0001TP_000010.png", &[0, 0, 3, 11]);
    frame(&camvid, "train", "0006R0_000010.png", &[3, 3, 3, 3]);
    frame(&camvid, "val", "0016E5_000010.png", &[10, 10, 1, 1]);
    let r = root.path().to_str().unwrap();
    let (ok, out, err) = semla(&["--json", "data", "stats", "camvid", "--data-root", r]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["splits"].as_array().unwrap().len(), 2);
    assert_eq!(v["splits"][0]["split"], "train");
    assert_eq!(v["splits"][0]["images"], 2);
    assert_eq!(v["splits"][0]["image_sizes"]["2x2"], 2);
    assert_eq!(v["splits"][0]["class_pixels"][3], 5);
    assert_eq!(v["splits"][0]["class_pixels"][0], 2);
    assert_eq!(v["splits"][0]["ignored_pixels"], 1);
    assert_eq!(v["prototype_images"], 2);

    let (ok, out, err) = semla(&[
        "--json",
        "data",
        "stats",
        "camvid/0001TP",
        "--split",
        "train",
        "--data-root",
        r,
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["splits"][0]["images"], 1);

    // An explicit split that is absent names the folder.
    let (ok, _, err) = semla(&[
        "data",
        "stats",
        "camvid",
        "--split",
        "test",
        "--data-root",
        r,
    ]);
    assert!(!ok);
    assert!(err.contains("testannot") || err.contains("test"), "{err}");
    // No root at all.
    let (ok, _, err) = semla(&["data", "stats", "camvid"]);
    assert!(!ok);
    assert!(err.contains("DETECTRON2_DATASETS"), "{err}");
}

#[test]
fn show_colours_and_blends() {
    let dir = tempfile::tempdir().unwrap();
    let label = dir.path().join("label.png");
    write_label_map(
        &label,
        &LabelMap {
            width: 3,
            height: 1,
            values: vec![3, 11, 4],
        },
    )
    .unwrap();
    let out: PathBuf = dir.path().join("out.png");
    let (ok, _, err) = semla(&[
        "data",
        "show",
        label.to_str().unwrap(),
        "--palette",
        "camvid",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let picture = read_rgb(&out).unwrap();
    assert_eq!(picture.get_pixel(0, 0).0, [128, 64, 128]); // Road
    assert_eq!(picture.get_pixel(1, 0).0, [0, 0, 0]); // Unlabelled
    assert_eq!(picture.get_pixel(2, 0).0, [60, 40, 222]); // Pavement

    let photo = dir.path().join("photo.png");
    let white = semla_data::RgbImage::from_pixel(3, 1, semla_data::Rgb([255; 3]));
    write_rgb_png(&photo, &white).unwrap();
    let (ok, _, err) = semla(&[
        "data",
        "show",
        label.to_str().unwrap(),
        "--image",
        photo.to_str().unwrap(),
        "--alpha",
        "0.5",
        "--palette",
        "cityscapes",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let picture = read_rgb(&out).unwrap();
    // Cityscapes train id 3 (wall) = 102,102,156 blended half with white.
    assert_eq!(picture.get_pixel(0, 0).0, [179, 179, 206]);
    // 11 is "person" for Cityscapes: 220,20,60.
    assert_eq!(picture.get_pixel(1, 0).0, [238, 138, 158]);

    // A photo of another size is an error naming it.
    write_rgb_png(&photo, &semla_data::RgbImage::new(2, 2)).unwrap();
    let (ok, _, err) = semla(&[
        "data",
        "show",
        label.to_str().unwrap(),
        "--image",
        photo.to_str().unwrap(),
        "--palette",
        "camvid",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("photo.png"), "{err}");
}
