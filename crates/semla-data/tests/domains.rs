//! Each official layout on a tiny tree built in a temporary folder, plus the real
//! Cityscapes sample and CamVid from `../shared/data` when present.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use std::path::{Path, PathBuf};

use semla_data::domains::official::OfficialLayout;
use semla_data::domains::{
    DomainError, DomainLayout, EvaluatorKind, Palette, Split, data_root, resolve_domain,
};
use semla_data::labels::{LabelEncoding, LabelMap, write_label_map};

/// Writes a 3x2 label map filled with `value` (creating folders).
fn label(path: &Path, value: u16) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    write_label_map(path, &LabelMap::filled(3, 2, value)).unwrap();
}

/// Writes a 3x2 photo (PNG or JPEG by extension).
fn photo(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(3, 2, image::Rgb([10, 20, 30]))
        .save(path)
        .unwrap();
}

fn names(paths: impl IntoIterator<Item = PathBuf>) -> Vec<String> {
    paths
        .into_iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn cityscapes_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let cs = tmp.path().join("cityscapes");
    for (city, frame, id) in [
        ("munster", "munster_000001_000019", 26),
        ("frankfurt", "frankfurt_000000_000294", 7),
    ] {
        photo(&cs.join(format!("leftImg8bit/val/{city}/{frame}_leftImg8bit.png")));
        label(
            &cs.join(format!("gtFine/val/{city}/{frame}_gtFine_labelIds.png")),
            id,
        );
        // Files the pairing must not mistake for labels or images.
        label(
            &cs.join(format!("gtFine/val/{city}/{frame}_gtFine_instanceIds.png")),
            26000,
        );
    }
    photo(&cs.join("leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"));
    let domain = resolve_domain("cs-normal", tmp.path()).unwrap();
    assert_eq!(domain.num_classes(), 19);
    assert_eq!(domain.ignore_value, 255);
    assert_eq!(domain.evaluator, EvaluatorKind::CityscapesScript);
    assert_eq!(domain.palette, Palette::Cityscapes);
    let pairs = domain.pairs(Split::Val).unwrap();
    assert_eq!(
        names(pairs.iter().map(|s| s.image.clone())),
        [
            "frankfurt_000000_000294_leftImg8bit.png",
            "munster_000001_000019_leftImg8bit.png"
        ]
    );
    assert_eq!(
        names(pairs.iter().map(|s| s.label.clone())),
        [
            "frankfurt_000000_000294_gtFine_labelIds.png",
            "munster_000001_000019_gtFine_labelIds.png"
        ]
    );
    // Label ids 7 (road) and 26 (car) become train ids 0 and 13.
    assert_eq!(domain.load_label(&pairs[0]).unwrap().values, vec![0; 6]);
    assert_eq!(domain.load_label(&pairs[1]).unwrap().values, vec![13; 6]);
    assert_eq!(domain.load_image(&pairs[0]).unwrap().dimensions(), (3, 2));
    assert_eq!(
        names(domain.train_images().unwrap()),
        ["aachen_000000_000019_leftImg8bit.png"]
    );
    // The train split has images but no labels: the error names the expected label.
    let err = domain.pairs(Split::Train).unwrap_err().to_string();
    assert!(err.contains("gtFine") && err.contains("train"), "{err}");
}

#[test]
fn acdc_layout_with_train_id_fallback() {
    let tmp = tempfile::tempdir().unwrap();
    let acdc = tmp.path().join("acdc");
    photo(&acdc.join("rgb_anon/fog/val/GOPR0475/GOPR0475_frame_000041_rgb_anon.png"));
    label(
        &acdc.join("gt/fog/val/GOPR0475/GOPR0475_frame_000041_gt_labelIds.png"),
        23,
    );
    photo(&acdc.join("rgb_anon/fog/val/GOPR0476/GOPR0476_frame_000001_rgb_anon.png"));
    label(
        &acdc.join("gt/fog/val/GOPR0476/GOPR0476_frame_000001_gt_labelTrainIds.png"),
        10,
    );
    photo(&acdc.join("rgb_anon/fog/train/GOPR0477/GOPR0477_frame_000001_rgb_anon.png"));
    // A reference frame pairs with its `gt_ref` label.
    photo(&acdc.join("rgb_anon/fog/val/GOPR0478/GOPR0478_frame_000002_rgb_ref_anon.png"));
    label(
        &acdc.join("gt/fog/val/GOPR0478/GOPR0478_frame_000002_gt_ref_labelIds.png"),
        23,
    );
    let domain = resolve_domain("acdc-fog", tmp.path()).unwrap();
    assert_eq!(domain.evaluator, EvaluatorKind::CityscapesScript);
    let pairs = domain.pairs(Split::Val).unwrap();
    assert_eq!(pairs.len(), 3);
    assert!(
        pairs[2]
            .label
            .ends_with("GOPR0478_frame_000002_gt_ref_labelIds.png")
    );
    assert_eq!(pairs[0].encoding, LabelEncoding::CityscapesLabelIds);
    assert_eq!(pairs[1].encoding, LabelEncoding::TrainIds);
    // Both are sky (label id 23 = train id 10).
    for pair in &pairs {
        assert_eq!(domain.load_label(pair).unwrap().values, vec![10; 6]);
    }
    assert_eq!(domain.train_images().unwrap().len(), 1);
    // Another condition is a different folder, which is missing here.
    let night = resolve_domain("acdc-night", tmp.path()).unwrap();
    let err = night.pairs(Split::Val).unwrap_err();
    assert!(
        matches!(err, DomainError::MissingFolder { ref path, .. } if path.ends_with("rgb_anon/night/val")),
        "{err}"
    );
    assert!(matches!(
        resolve_domain("acdc-hail", tmp.path()),
        Err(DomainError::UnknownDomain { .. })
    ));
}

#[test]
fn muses_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let muses = tmp.path().join("muses");
    for frame in ["REC0006_frame_040878_", "REC0001_frame_000010_"] {
        photo(&muses.join(format!(
            "frame_camera/val/rain/night/{frame}frame_camera.png"
        )));
        label(
            &muses.join(format!("gt_semantic/val/rain/night/{frame}gt_labelIds.png")),
            24,
        );
    }
    photo(&muses.join("frame_camera/train/rain/night/REC0002_frame_000001_frame_camera.png"));
    photo(&muses.join("frame_camera/train/rain/day/REC0003_frame_000001_frame_camera.png"));
    let domain = resolve_domain("muses-rain-night", tmp.path()).unwrap();
    let pairs = domain.pairs(Split::Val).unwrap();
    assert_eq!(
        names(pairs.iter().map(|s| s.label.clone())),
        [
            "REC0001_frame_000010_gt_labelIds.png",
            "REC0006_frame_040878_gt_labelIds.png"
        ]
    );
    assert_eq!(domain.load_label(&pairs[0]).unwrap().values, vec![11; 6]);
    assert_eq!(
        names(domain.train_images().unwrap()),
        ["REC0002_frame_000001_frame_camera.png"]
    );
    assert!(resolve_domain("muses-rain-dusk", tmp.path()).is_err());
}

#[test]
fn bdd_and_mapillary_layouts() {
    let tmp = tempfile::tempdir().unwrap();
    let bdd = tmp.path().join("bdd100k");
    for stem in ["b1c9c847-3bda4659", "7d2f7975-e0c1c5a7"] {
        photo(&bdd.join(format!("images/10k/val/{stem}.jpg")));
        label(
            &bdd.join(format!("labels/sem_seg/masks/val/{stem}.png")),
            13,
        );
    }
    photo(&bdd.join("images/10k/train/0a0a0b1a-7c39d841.jpg"));
    let domain = resolve_domain("bdd", tmp.path()).unwrap();
    assert_eq!(domain.evaluator, EvaluatorKind::Detectron2);
    let pairs = domain.pairs(Split::Val).unwrap();
    assert_eq!(
        names(pairs.iter().map(|s| s.image.clone())),
        ["7d2f7975-e0c1c5a7.jpg", "b1c9c847-3bda4659.jpg"]
    );
    assert_eq!(domain.load_label(&pairs[0]).unwrap().values, vec![13; 6]);
    assert_eq!(domain.load_image(&pairs[0]).unwrap().dimensions(), (3, 2));
    assert_eq!(domain.train_images().unwrap().len(), 1);

    let mv = tmp.path().join("mapillary_vistas");
    photo(&mv.join("val/images/abc.jpg"));
    label(&mv.join("val/labels/abc.png"), 65);
    photo(&mv.join("train/images/def.jpg"));
    let domain = resolve_domain("mv", tmp.path()).unwrap();
    assert_eq!(domain.num_classes(), 65);
    assert_eq!(domain.ignore_value, 65);
    assert_eq!(domain.classes[24], "Lane Marking - General");
    let pairs = domain.pairs(Split::Val).unwrap();
    assert_eq!(domain.load_label(&pairs[0]).unwrap().values, vec![65; 6]);
    assert_eq!(names(domain.train_images().unwrap()), ["def.jpg"]);
}

#[test]
fn ade20k_layout_prepared_and_original_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let ade = tmp.path().join("ADEChallengeData2016");
    photo(&ade.join("images/validation/ADE_val_00000001.jpg"));
    // Original release: 0 = other (ignored), class c stored as c + 1.
    std::fs::create_dir_all(ade.join("annotations/validation")).unwrap();
    write_label_map(
        &ade.join("annotations/validation/ADE_val_00000001.png"),
        &LabelMap {
            width: 3,
            height: 1,
            values: vec![0, 1, 150],
        },
    )
    .unwrap();
    photo(
        &tmp.path()
            .join("ADE20k/images/training/a/abbey/ADE_train_00000970.jpg"),
    );
    let domain = resolve_domain("a150", tmp.path()).unwrap();
    assert_eq!(domain.num_classes(), 150);
    let pairs = domain.pairs(Split::Val).unwrap();
    assert_eq!(pairs[0].encoding, LabelEncoding::MinusOneZeroIgnored);
    assert_eq!(
        domain.load_label(&pairs[0]).unwrap().values,
        vec![255, 0, 149]
    );
    // The embedding folder differs from the evaluation folder and is listed recursively.
    assert_eq!(
        names(domain.train_images().unwrap()),
        ["ADE_train_00000970.jpg"]
    );
    // With the detectron2-prepared labels, they are used as they are.
    label(
        &ade.join("annotations_detectron2/validation/ADE_val_00000001.png"),
        4,
    );
    let pairs = domain.pairs(Split::Val).unwrap();
    assert_eq!(pairs[0].encoding, LabelEncoding::TrainIds);
    assert!(
        pairs[0]
            .label
            .to_string_lossy()
            .contains("annotations_detectron2")
    );
    assert_eq!(domain.load_label(&pairs[0]).unwrap().values, vec![4; 6]);
}

#[test]
fn idd_pc59_coconut_layouts() {
    let tmp = tempfile::tempdir().unwrap();
    let idd = tmp.path().join("IDD_Segmentation");
    photo(&idd.join("leftImg8bit/val/119/frame0029_leftImg8bit.png"));
    photo(&idd.join("leftImg8bit/val/119/frame0030_leftImg8bit.jpg"));
    label(
        &idd.join("gtFine/val/119/frame0029_gtFine_labellevel3Ids.png"),
        25,
    );
    label(
        &idd.join("gtFine/val/119/frame0030_gtFine_labellevel3Ids.png"),
        0,
    );
    let domain = resolve_domain("idd", tmp.path()).unwrap();
    assert_eq!(domain.num_classes(), 26);
    let pairs = domain.pairs(Split::Val).unwrap();
    assert_eq!(
        names(pairs.iter().map(|s| s.image.clone())),
        ["frame0029_leftImg8bit.png", "frame0030_leftImg8bit.jpg"]
    );
    assert_eq!(domain.load_label(&pairs[0]).unwrap().values, vec![25; 6]);

    let pc = tmp.path().join("pascal_ctx_d2");
    photo(&pc.join("images/validation/2008_000002.jpg"));
    label(&pc.join("annotations_ctx59/validation/2008_000002.png"), 58);
    photo(&pc.join("images/training/2008_000003.jpg"));
    let domain = resolve_domain("pc59", tmp.path()).unwrap();
    assert_eq!(domain.num_classes(), 59);
    assert_eq!(domain.pairs(Split::Val).unwrap().len(), 1);
    assert_eq!(names(domain.train_images().unwrap()), ["2008_000003.jpg"]);

    let coco = tmp.path().join("coco");
    photo(&coco.join("val2017/000000000139.jpg"));
    label(&coco.join("panoptic_semseg_val2017/000000000139.png"), 132);
    photo(&tmp.path().join("coconut-l/train2017/000000000009.jpg"));
    let domain = resolve_domain("coconutL", tmp.path()).unwrap();
    assert_eq!(domain.num_classes(), 133);
    let pairs = domain.pairs(Split::Val).unwrap();
    assert_eq!(domain.load_label(&pairs[0]).unwrap().values, vec![132; 6]);
    assert_eq!(names(domain.train_images().unwrap()), ["000000000009.jpg"]);
}

#[test]
fn nyu_split_files() {
    let tmp = tempfile::tempdir().unwrap();
    let nyu = tmp.path().join("nyudv2");
    for n in ["000001", "000002", "000003"] {
        photo(&nyu.join(format!("rgb/{n}.png")));
        label(&nyu.join(format!("masks/{n}.png")), 39);
    }
    // Official order is the split file's, kept as is.
    std::fs::write(
        nyu.join("test.txt"),
        "rgb/000003.png,masks/000003.png,depth/000003.png\nrgb/000001.png,masks/000001.png,depth/000001.png\n",
    )
    .unwrap();
    std::fs::write(nyu.join("train.txt"), "rgb/000002.png\n").unwrap();
    photo(&tmp.path().join("nyudv2_splitted/train/rgb/000002.png"));
    let domain = resolve_domain("nyu", tmp.path()).unwrap();
    assert_eq!(domain.num_classes(), 40);
    let pairs = domain.pairs(Split::Val).unwrap();
    assert_eq!(
        names(pairs.iter().map(|s| s.image.clone())),
        ["000003.png", "000001.png"]
    );
    assert_eq!(domain.load_label(&pairs[0]).unwrap().values, vec![39; 6]);
    assert_eq!(domain.train_images().unwrap().len(), 1);
    let err = domain.pairs(Split::Train).unwrap_err().to_string();
    assert!(err.contains("train.txt:1"), "{err}");
}

#[test]
fn camvid_layout_and_sequences() {
    let tmp = tempfile::tempdir().unwrap();
    let cv = tmp.path().join("camvid");
    for (split, name) in [
        ("train", "0001TP_006690"),
        ("train", "0006R0_f00930"),
        ("val", "0016E5_07959"),
    ] {
        photo(&cv.join(format!("{split}/{name}.png")));
        label(&cv.join(format!("{split}annot/{name}.png")), 3);
    }
    let all = resolve_domain("camvid", tmp.path()).unwrap();
    assert_eq!(all.num_classes(), 11);
    assert_eq!(all.ignore_value, 11);
    assert_eq!(all.palette, Palette::CamVid);
    assert_eq!(all.pairs(Split::Train).unwrap().len(), 2);
    let dusk = resolve_domain("camvid/0001TP", tmp.path()).unwrap();
    assert_eq!(
        names(
            dusk.pairs(Split::Train)
                .unwrap()
                .into_iter()
                .map(|s| s.image)
        ),
        ["0001TP_006690.png"]
    );
    assert!(dusk.pairs(Split::Val).unwrap().is_empty());
    assert_eq!(dusk.train_images().unwrap().len(), 1);
    // A sequence name that is not in the data lists the ones that are.
    let err = resolve_domain("camvid/0005VD", tmp.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("camvid/0001TP") && err.contains("camvid/0016E5"),
        "{err}"
    );
    // Names that are not sequences are left to other resolvers: the
    // corrupted-daytime resolver takes `camvid/fog3`.
    let fog = resolve_domain("camvid/fog3", tmp.path()).unwrap();
    assert_eq!(fog.classes, all.classes);
    // No test split here.
    assert!(matches!(
        all.pairs(Split::Test),
        Err(DomainError::MissingFolder { .. })
    ));
}

#[test]
fn missing_dataset_folder_names_path_and_layout() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, folder) in [
        ("cs-normal", "cityscapes"),
        ("muses-fog-day", "muses"),
        ("mv", "mapillary_vistas"),
        ("a150", "ADEChallengeData2016"),
        ("nyu", "nyudv2"),
        ("coconutL", "coco"),
        ("camvid", "camvid"),
    ] {
        let err = resolve_domain(name, tmp.path()).unwrap_err();
        let DomainError::MissingFolder { ref path, .. } = err else {
            panic!("{name}: {err}");
        };
        assert_eq!(path, &tmp.path().join(folder));
        assert!(err.to_string().contains("expected layout"), "{err}");
    }
    let err = resolve_domain("kitti", tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains("unknown domain") && err.contains("cs-normal"),
        "{err}"
    );
}

#[test]
fn data_root_with_and_without_trailing_slash() {
    let tmp = tempfile::tempdir().unwrap();
    let cv = tmp.path().join("camvid");
    photo(&cv.join("train/0001TP_000001.png"));
    label(&cv.join("trainannot/0001TP_000001.png"), 0);
    let with_slash = PathBuf::from(format!("{}/", tmp.path().display()));
    for root in [tmp.path().to_path_buf(), with_slash.clone()] {
        let domain = resolve_domain("camvid", &data_root(Some(&root)).unwrap()).unwrap();
        assert_eq!(domain.pairs(Split::Train).unwrap().len(), 1);
    }
    // The environment variable is the default. Only this test touches it.
    unsafe { std::env::set_var("DETECTRON2_DATASETS", &with_slash) };
    assert_eq!(data_root(None).unwrap(), with_slash);
    unsafe { std::env::remove_var("DETECTRON2_DATASETS") };
    assert!(matches!(data_root(None), Err(DomainError::NoDataRoot)));
}

fn shared_data() -> Option<PathBuf> {
    semla_test_support::shared::path("data")
}

#[test]
fn real_cityscapes_sample() {
    let Some(data) = shared_data() else { return };
    let layout = OfficialLayout::Cityscapes {
        dir: data.join("cityscapes-sample"),
    };
    let pairs = layout.pairs(Split::Val).unwrap();
    assert_eq!(pairs.len(), 1);
    assert!(
        pairs[0]
            .label
            .ends_with("gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png")
    );
    let mapped = layout.load_label(&pairs[0]).unwrap();
    let expected = semla_data::labels::read_label_map(
        &pairs[0]
            .label
            .with_file_name("frankfurt_000000_000294_gtFine_labelTrainIds.png"),
    )
    .unwrap();
    // Same up to the sample's independent resampling of its files (see the labels tests).
    let same = mapped
        .values
        .iter()
        .zip(&expected.values)
        .filter(|(a, b)| a == b)
        .count();
    assert!(same as f64 / expected.values.len() as f64 > 0.997, "{same}");
    assert_eq!(
        layout.load_image(&pairs[0]).unwrap().dimensions(),
        (256, 128)
    );
    // No train folder in the sample: a clear error naming it.
    let err = layout.train_images().unwrap_err().to_string();
    assert!(err.contains("leftImg8bit/train"), "{err}");
}

#[test]
fn real_camvid() {
    let Some(data) = shared_data() else { return };
    let all = resolve_domain("camvid", &data).unwrap();
    assert_eq!(all.pairs(Split::Train).unwrap().len(), 367);
    let val = all.pairs(Split::Val).unwrap();
    assert_eq!(val.len(), 101);
    for (seq, train, val) in [("0001TP", 62, 0), ("0006R0", 101, 0), ("0016E5", 204, 101)] {
        let domain = resolve_domain(&format!("camvid/{seq}"), &data).unwrap();
        assert_eq!(domain.pairs(Split::Train).unwrap().len(), train, "{seq}");
        assert_eq!(domain.pairs(Split::Val).unwrap().len(), val, "{seq}");
    }
    let label = all.load_label(&val[0]).unwrap();
    assert_eq!((label.width, label.height), (480, 360));
    assert!(label.values.iter().all(|&v| v <= 11));
    assert_eq!(all.load_image(&val[0]).unwrap().dimensions(), (480, 360));
}

/// The extension point: a layout that makes its images (as corrupted or synthetic domains
/// will) plugs into `Domain` like the file layouts.
#[test]
fn custom_layout_through_the_trait() {
    #[derive(Debug)]
    struct Generated;
    impl DomainLayout for Generated {
        fn describe(&self) -> String {
            "generated in memory".into()
        }
        fn pairs(&self, split: Split) -> Result<Vec<semla_data::domains::ImagePair>, DomainError> {
            Ok(vec![semla_data::domains::ImagePair {
                image: PathBuf::from(format!("generated/{split}/0")),
                label: PathBuf::from(format!("generated/{split}/0")),
                encoding: LabelEncoding::TrainIds,
            }])
        }
        fn load_image(
            &self,
            _sample: &semla_data::domains::ImagePair,
        ) -> Result<image::RgbImage, DomainError> {
            Ok(image::RgbImage::from_pixel(4, 2, image::Rgb([1, 2, 3])))
        }
        fn load_label(
            &self,
            _sample: &semla_data::domains::ImagePair,
        ) -> Result<LabelMap, DomainError> {
            Ok(LabelMap::filled(4, 2, 1))
        }
    }
    let domain = semla_data::domains::Domain {
        name: "generated/test".into(),
        classes: vec!["a".into(), "b".into()],
        ignore_value: 255,
        evaluator: EvaluatorKind::Detectron2,
        palette: Palette::Generic,
        layout: std::sync::Arc::new(Generated),
    };
    let pairs = domain.pairs(Split::Val).unwrap();
    assert_eq!(domain.load_image(&pairs[0]).unwrap().dimensions(), (4, 2));
    assert_eq!(domain.load_label(&pairs[0]).unwrap().values, vec![1; 8]);
    // The default prototype images are the train split's.
    assert_eq!(
        domain.train_images().unwrap(),
        [PathBuf::from("generated/train/0")]
    );
    let copy = domain.clone();
    assert_eq!(copy.num_classes(), 2);
}
