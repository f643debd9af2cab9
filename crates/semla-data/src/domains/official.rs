//! SemLA's domains in their official layouts under the dataset root (spec sections 9-11).
//!
//! | name | evaluation pairs (split `S`) | prototype images |
//! | --- | --- | --- |
//! | `cs-normal` | `cityscapes/leftImg8bit/S/<city>/*_leftImg8bit.png` ↔ `cityscapes/gtFine/S/<city>/*_gtFine_labelIds.png` (label ids → 19 train ids) | `cityscapes/leftImg8bit/train/` |
//! | `acdc-<c>` | `acdc/rgb_anon/<c>/S/<seq>/*_rgb_anon.png` ↔ `acdc/gt/<c>/S/<seq>/*_gt_labelIds.png` (else `*_gt_labelTrainIds.png`; reference frames `*_rgb_ref_anon.png` ↔ `*_gt_ref_labelIds.png`) | `acdc/rgb_anon/<c>/train/` |
//! | `muses-<c>-<t>` | `muses/frame_camera/S/<c>/<t>/*frame_camera.png` ↔ `muses/gt_semantic/S/<c>/<t>/*gt_labelIds.png` (else `*gt_labelTrainIds.png`) | `muses/frame_camera/train/<c>/<t>/` |
//! | `bdd` | `bdd100k/images/10k/S/*.jpg` ↔ `bdd100k/labels/sem_seg/masks/S/*.png` | `bdd100k/images/10k/train/` |
//! | `mv` | `mapillary_vistas/S/images/*.jpg` ↔ `mapillary_vistas/S/labels/*.png` (v1.2, 65 = ignore) | `mapillary_vistas/train/images/` |
//! | `a150` | `ADEChallengeData2016/images/S'/*.jpg` ↔ `ADEChallengeData2016/annotations_detectron2/S'/*.png`, else the original `annotations/S'/*.png` decoded as value − 1 with 0 ignored (`S'` = `training`/`validation`) | `ADE20k/images/training/` |
//! | `idd` | `IDD_Segmentation/leftImg8bit/S/<folder>/*_leftImg8bit.{png,jpg}` ↔ `IDD_Segmentation/gtFine/S/<folder>/*_gtFine_labellevel3Ids.png` | `IDD_Segmentation/leftImg8bit/train/` |
//! | `pc59` | `pascal_ctx_d2/images/S'/*.jpg` ↔ `pascal_ctx_d2/annotations_ctx59/S'/*.png` | `pascal_ctx_d2/images/training/` |
//! | `nyu` | lines `rgb/X.png,masks/X.png,...` of `nyudv2/train.txt` (train) or `nyudv2/test.txt` (val and test), relative to `nyudv2/` | `nyudv2_splitted/train/rgb/` |
//! | `coconutL` | `coco/S2017/*.jpg` ↔ `coco/panoptic_semseg_S2017/*.png` | `coconut-l/train2017/` |
//!
//! Prototype folders are listed recursively (png/jpg). Pairs are sorted by image path,
//! except NYU which keeps its split file's order.

use std::path::{Path, PathBuf};

use super::listing::{LabelCandidates, PairRule, images_recursive, require_dir};
use super::{Domain, DomainError, DomainLayout, EvaluatorKind, ImagePair, Palette, Split, classes};
use crate::labels::LabelEncoding;

/// ACDC conditions.
pub const ACDC_CONDITIONS: [&str; 4] = ["fog", "night", "rain", "snow"];
/// MUSES weather conditions.
pub const MUSES_CONDITIONS: [&str; 4] = ["clear", "rain", "fog", "snow"];
/// MUSES times of day.
pub const MUSES_TIMES: [&str; 2] = ["day", "night"];

/// The datasets of SemLA's domain library, each with its place under the dataset root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OfficialLayout {
    /// `cs-normal`.
    Cityscapes {
        /// `<data root>/cityscapes`.
        dir: PathBuf,
    },
    /// `acdc-<condition>`.
    Acdc {
        /// `<data root>/acdc`.
        dir: PathBuf,
        /// `fog`, `night`, `rain` or `snow`.
        condition: String,
    },
    /// `muses-<condition>-<time>`.
    Muses {
        /// `<data root>/muses`.
        dir: PathBuf,
        /// `clear`, `rain`, `fog` or `snow`.
        condition: String,
        /// `day` or `night`.
        time: String,
    },
    /// `bdd`.
    Bdd {
        /// `<data root>/bdd100k`.
        dir: PathBuf,
    },
    /// `mv`.
    Mapillary {
        /// `<data root>/mapillary_vistas`.
        dir: PathBuf,
    },
    /// `a150`.
    Ade20k {
        /// The data root (evaluation and prototype folders are siblings under it).
        root: PathBuf,
    },
    /// `idd`.
    Idd {
        /// `<data root>/IDD_Segmentation`.
        dir: PathBuf,
    },
    /// `pc59`.
    PascalContext59 {
        /// `<data root>/pascal_ctx_d2`.
        dir: PathBuf,
    },
    /// `nyu`.
    Nyu {
        /// The data root (`nyudv2/` and `nyudv2_splitted/`).
        root: PathBuf,
    },
    /// `coconutL`.
    Coconut {
        /// The data root (`coco/` and `coconut-l/`).
        root: PathBuf,
    },
}

/// ADE20K and PASCAL-Context name their splits `training` / `validation`.
fn long_split(split: Split) -> &'static str {
    match split {
        Split::Train => "training",
        Split::Val => "validation",
        Split::Test => "testing",
    }
}

const CS_LABELS: &[(&str, LabelEncoding)] = &[
    ("_gtFine_labelIds.png", LabelEncoding::CityscapesLabelIds),
    ("_gtFine_labelTrainIds.png", LabelEncoding::TrainIds),
];
const ACDC_LABELS: &[(&str, LabelEncoding)] = &[
    ("_gt_labelIds.png", LabelEncoding::CityscapesLabelIds),
    ("_gt_labelTrainIds.png", LabelEncoding::TrainIds),
];
const MUSES_LABELS: &[(&str, LabelEncoding)] = &[
    ("gt_labelIds.png", LabelEncoding::CityscapesLabelIds),
    ("gt_labelTrainIds.png", LabelEncoding::TrainIds),
];
/// ACDC's reference (clear-weather) frames, `*_rgb_ref_anon.png`, as the official loader
/// pairs them.
const ACDC_REF_LABELS: &[(&str, LabelEncoding)] = &[
    ("_gt_ref_labelIds.png", LabelEncoding::CityscapesLabelIds),
    ("_gt_ref_labelTrainIds.png", LabelEncoding::TrainIds),
];
const PNG_TRAIN_IDS: &[(&str, LabelEncoding)] = &[(".png", LabelEncoding::TrainIds)];
const IDD_LABELS: &[(&str, LabelEncoding)] =
    &[("_gtFine_labellevel3Ids.png", LabelEncoding::TrainIds)];
const JPG_TO_PNG: &[(&str, LabelCandidates)] = &[(".jpg", PNG_TRAIN_IDS)];

impl OfficialLayout {
    /// The dataset's top folder, which must exist for the domain to resolve.
    fn top_folder(&self) -> PathBuf {
        match self {
            OfficialLayout::Cityscapes { dir }
            | OfficialLayout::Acdc { dir, .. }
            | OfficialLayout::Muses { dir, .. }
            | OfficialLayout::Bdd { dir }
            | OfficialLayout::Mapillary { dir }
            | OfficialLayout::Idd { dir }
            | OfficialLayout::PascalContext59 { dir } => dir.clone(),
            OfficialLayout::Ade20k { root } => root.join("ADEChallengeData2016"),
            OfficialLayout::Nyu { root } => root.join("nyudv2"),
            OfficialLayout::Coconut { root } => root.join("coco"),
        }
    }

    fn ade_pairs(&self, root: &Path, split: Split) -> Result<Vec<ImagePair>, DomainError> {
        let layout = self.describe();
        let base = root.join("ADEChallengeData2016");
        let s = long_split(split);
        // Prefer the detectron2-prepared labels (already minus one, 255 ignore); fall
        // back to the original release and decode the same way on the fly.
        let prepared = base.join("annotations_detectron2").join(s);
        let (label_dir, candidates): (PathBuf, LabelCandidates) = if prepared.is_dir() {
            (prepared, PNG_TRAIN_IDS)
        } else {
            (
                base.join("annotations").join(s),
                &[(".png", LabelEncoding::MinusOneZeroIgnored)],
            )
        };
        PairRule {
            image_dir: base.join("images").join(s),
            label_dir,
            nested: false,
            naming: &[(".jpg", candidates)],
            layout: &layout,
        }
        .pairs()
    }

    fn nyu_pairs(&self, root: &Path, split: Split) -> Result<Vec<ImagePair>, DomainError> {
        let layout = self.describe();
        let dir = root.join("nyudv2");
        require_dir(&dir, &layout)?;
        let file = dir.join(match split {
            Split::Train => "train.txt",
            Split::Val | Split::Test => "test.txt",
        });
        if !file.is_file() {
            return Err(DomainError::MissingFile { path: file, layout });
        }
        let text = std::fs::read_to_string(&file).map_err(|source| DomainError::Io {
            path: file.clone(),
            source,
        })?;
        let mut samples = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let mut fields = line.split(',').map(str::trim);
            let (Some(rgb), Some(mask)) = (fields.next(), fields.next()) else {
                return Err(DomainError::SplitFile {
                    path: file.clone(),
                    line: index + 1,
                    message: "expected `rgb/<name>.png,masks/<name>.png[,depth/...]`".into(),
                });
            };
            let (image, label) = (dir.join(rgb), dir.join(mask));
            if !image.is_file() {
                return Err(DomainError::MissingFile {
                    path: image,
                    layout,
                });
            }
            if !label.is_file() {
                return Err(DomainError::MissingLabel {
                    image,
                    label,
                    layout,
                });
            }
            samples.push(ImagePair {
                image,
                label,
                encoding: LabelEncoding::TrainIds,
            });
        }
        Ok(samples)
    }
}

impl DomainLayout for OfficialLayout {
    fn describe(&self) -> String {
        match self {
            OfficialLayout::Cityscapes { dir } => format!(
                "{d}/leftImg8bit/<split>/<city>/*_leftImg8bit.png with \
                 {d}/gtFine/<split>/<city>/*_gtFine_labelIds.png",
                d = dir.display()
            ),
            OfficialLayout::Acdc { dir, condition: c } => format!(
                "{d}/rgb_anon/{c}/<split>/<sequence>/*_rgb_anon.png with \
                 {d}/gt/{c}/<split>/<sequence>/*_gt_labelIds.png",
                d = dir.display()
            ),
            OfficialLayout::Muses {
                dir,
                condition: c,
                time: t,
            } => format!(
                "{d}/frame_camera/<split>/{c}/{t}/*frame_camera.png with \
                 {d}/gt_semantic/<split>/{c}/{t}/*gt_labelIds.png",
                d = dir.display()
            ),
            OfficialLayout::Bdd { dir } => format!(
                "{d}/images/10k/<split>/*.jpg with {d}/labels/sem_seg/masks/<split>/*.png",
                d = dir.display()
            ),
            OfficialLayout::Mapillary { dir } => format!(
                "{d}/<train|val>/images/*.jpg with {d}/<train|val>/labels/*.png (v1.2)",
                d = dir.display()
            ),
            OfficialLayout::Ade20k { root } => format!(
                "{d}/images/<training|validation>/*.jpg with \
                 {d}/annotations_detectron2/<training|validation>/*.png (or the original \
                 annotations/); prototypes from {p}",
                d = root.join("ADEChallengeData2016").display(),
                p = root.join("ADE20k/images/training").display()
            ),
            OfficialLayout::Idd { dir } => format!(
                "{d}/leftImg8bit/<split>/<folder>/*_leftImg8bit.{{png,jpg}} with \
                 {d}/gtFine/<split>/<folder>/*_gtFine_labellevel3Ids.png",
                d = dir.display()
            ),
            OfficialLayout::PascalContext59 { dir } => format!(
                "{d}/images/<training|validation>/*.jpg with \
                 {d}/annotations_ctx59/<training|validation>/*.png",
                d = dir.display()
            ),
            OfficialLayout::Nyu { root } => format!(
                "{d}/<train|test>.txt listing `rgb/<name>.png,masks/<name>.png,...` relative \
                 to {d}; prototypes from {p}",
                d = root.join("nyudv2").display(),
                p = root.join("nyudv2_splitted/train/rgb").display()
            ),
            OfficialLayout::Coconut { root } => format!(
                "{d}/<split>2017/*.jpg with {d}/panoptic_semseg_<split>2017/*.png; \
                 prototypes from {p}",
                d = root.join("coco").display(),
                p = root.join("coconut-l/train2017").display()
            ),
        }
    }

    fn pairs(&self, split: Split) -> Result<Vec<ImagePair>, DomainError> {
        let layout = self.describe();
        let s = split.as_str();
        let rule = |image_dir: PathBuf,
                    label_dir: PathBuf,
                    nested: bool,
                    naming: &[(&str, LabelCandidates)]| {
            PairRule {
                image_dir,
                label_dir,
                nested,
                naming,
                layout: &layout,
            }
            .pairs()
        };
        match self {
            OfficialLayout::Cityscapes { dir } => rule(
                dir.join("leftImg8bit").join(s),
                dir.join("gtFine").join(s),
                true,
                &[("_leftImg8bit.png", CS_LABELS)],
            ),
            OfficialLayout::Acdc { dir, condition } => rule(
                dir.join("rgb_anon").join(condition).join(s),
                dir.join("gt").join(condition).join(s),
                true,
                &[
                    ("_rgb_anon.png", ACDC_LABELS),
                    ("_rgb_ref_anon.png", ACDC_REF_LABELS),
                ],
            ),
            OfficialLayout::Muses {
                dir,
                condition,
                time,
            } => rule(
                dir.join("frame_camera").join(s).join(condition).join(time),
                dir.join("gt_semantic").join(s).join(condition).join(time),
                false,
                &[("frame_camera.png", MUSES_LABELS)],
            ),
            OfficialLayout::Bdd { dir } => rule(
                dir.join("images/10k").join(s),
                dir.join("labels/sem_seg/masks").join(s),
                false,
                JPG_TO_PNG,
            ),
            OfficialLayout::Mapillary { dir } => rule(
                dir.join(s).join("images"),
                dir.join(s).join("labels"),
                false,
                JPG_TO_PNG,
            ),
            OfficialLayout::Ade20k { root } => self.ade_pairs(root, split),
            OfficialLayout::Idd { dir } => rule(
                dir.join("leftImg8bit").join(s),
                dir.join("gtFine").join(s),
                true,
                &[
                    ("_leftImg8bit.png", IDD_LABELS),
                    ("_leftImg8bit.jpg", IDD_LABELS),
                ],
            ),
            OfficialLayout::PascalContext59 { dir } => rule(
                dir.join("images").join(long_split(split)),
                dir.join("annotations_ctx59").join(long_split(split)),
                false,
                JPG_TO_PNG,
            ),
            OfficialLayout::Nyu { root } => self.nyu_pairs(root, split),
            OfficialLayout::Coconut { root } => rule(
                root.join("coco").join(format!("{s}2017")),
                root.join("coco").join(format!("panoptic_semseg_{s}2017")),
                false,
                JPG_TO_PNG,
            ),
        }
    }

    fn train_images(&self) -> Result<Vec<PathBuf>, DomainError> {
        let dir = match self {
            OfficialLayout::Cityscapes { dir } => dir.join("leftImg8bit/train"),
            OfficialLayout::Acdc { dir, condition } => {
                dir.join("rgb_anon").join(condition).join("train")
            }
            OfficialLayout::Muses {
                dir,
                condition,
                time,
            } => dir.join("frame_camera/train").join(condition).join(time),
            OfficialLayout::Bdd { dir } => dir.join("images/10k/train"),
            OfficialLayout::Mapillary { dir } => dir.join("train/images"),
            OfficialLayout::Ade20k { root } => root.join("ADE20k/images/training"),
            OfficialLayout::Idd { dir } => dir.join("leftImg8bit/train"),
            OfficialLayout::PascalContext59 { dir } => dir.join("images/training"),
            OfficialLayout::Nyu { root } => root.join("nyudv2_splitted/train/rgb"),
            OfficialLayout::Coconut { root } => root.join("coconut-l/train2017"),
        };
        images_recursive(&dir, &self.describe())
    }
}

/// Resolves SemLA's official domain names (`cs-normal`, `acdc-fog`, `muses-rain-night`,
/// `bdd`, `mv`, `a150`, `idd`, `pc59`, `nyu`, `coconutL`); `None` for other names.
pub fn resolve(name: &str, data_root: &Path) -> Option<Result<Domain, DomainError>> {
    let root = data_root.to_path_buf();
    let parts: Vec<&str> = name.split('-').collect();
    let (layout, classes, ignore, evaluator): (OfficialLayout, &[&str], u16, EvaluatorKind) =
        match parts.as_slice() {
            ["cs", "normal"] => (
                OfficialLayout::Cityscapes {
                    dir: root.join("cityscapes"),
                },
                &classes::CITYSCAPES_19,
                255,
                EvaluatorKind::CityscapesScript,
            ),
            ["acdc", c] if ACDC_CONDITIONS.contains(c) => (
                OfficialLayout::Acdc {
                    dir: root.join("acdc"),
                    condition: c.to_string(),
                },
                &classes::CITYSCAPES_19,
                255,
                EvaluatorKind::CityscapesScript,
            ),
            ["muses", c, t] if MUSES_CONDITIONS.contains(c) && MUSES_TIMES.contains(t) => (
                OfficialLayout::Muses {
                    dir: root.join("muses"),
                    condition: c.to_string(),
                    time: t.to_string(),
                },
                &classes::CITYSCAPES_19,
                255,
                EvaluatorKind::CityscapesScript,
            ),
            ["bdd"] => (
                OfficialLayout::Bdd {
                    dir: root.join("bdd100k"),
                },
                &classes::CITYSCAPES_19,
                255,
                EvaluatorKind::Detectron2,
            ),
            ["mv"] => (
                OfficialLayout::Mapillary {
                    dir: root.join("mapillary_vistas"),
                },
                &classes::MAPILLARY_VISTAS_65,
                65,
                EvaluatorKind::Detectron2,
            ),
            ["a150"] => (
                OfficialLayout::Ade20k { root },
                &classes::ADE20K_150,
                255,
                EvaluatorKind::Detectron2,
            ),
            ["idd"] => (
                OfficialLayout::Idd {
                    dir: root.join("IDD_Segmentation"),
                },
                &classes::IDD_LEVEL3_26,
                255,
                EvaluatorKind::Detectron2,
            ),
            ["pc59"] => (
                OfficialLayout::PascalContext59 {
                    dir: root.join("pascal_ctx_d2"),
                },
                &classes::PASCAL_CONTEXT_59,
                255,
                EvaluatorKind::Detectron2,
            ),
            ["nyu"] => (
                OfficialLayout::Nyu { root },
                &classes::NYU_40,
                255,
                EvaluatorKind::Detectron2,
            ),
            ["coconutL"] => (
                OfficialLayout::Coconut { root },
                &classes::COCO_PANOPTIC_133,
                255,
                EvaluatorKind::Detectron2,
            ),
            _ => return None,
        };
    let top = layout.top_folder();
    if !top.is_dir() {
        return Some(Err(DomainError::MissingFolder {
            path: top,
            layout: layout.describe(),
        }));
    }
    let palette = if classes.len() == 19 {
        Palette::Cityscapes
    } else {
        Palette::Generic
    };
    Some(Ok(Domain {
        name: name.to_string(),
        classes: classes.iter().map(|c| c.to_string()).collect(),
        ignore_value: ignore,
        evaluator,
        palette,
        layout: std::sync::Arc::new(layout),
    }))
}
