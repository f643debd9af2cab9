//! CamVid as published with the SegNet tutorial: `camvid/<split>/*.png` with
//! `camvid/<split>annot/*.png` (same file name), splits `train`, `val` and `test`.
//!
//! Its video sequences, recognised by the file-name prefix before `_`, are sub-domains:
//! `camvid/0001TP` (dusk), `camvid/0006R0`, `camvid/0016E5`, `camvid/Seq05VD`. Plain
//! `camvid` is every frame.

use std::path::{Path, PathBuf};

use super::listing::{PairRule, require_dir};
use super::{Domain, DomainError, DomainLayout, EvaluatorKind, ImagePair, Palette, Split, classes};
use crate::labels::LabelEncoding;

/// CamVid's ignore value (Unlabelled).
pub const CAMVID_IGNORE: u16 = 11;

/// The CamVid layout, optionally restricted to one sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CamVidLayout {
    /// `<data root>/camvid`.
    pub dir: PathBuf,
    /// Only frames whose name starts with `<sequence>_`; `None` for all.
    pub sequence: Option<String>,
}

/// Whether `name` looks like a CamVid sequence name (`0001TP`, `0016E5`, `Seq05VD`),
/// so that other `camvid/...` names (e.g. corruptions) are left to other resolvers.
pub fn is_sequence_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    name == "Seq05VD"
        || (bytes.len() == 6
            && bytes[..4].iter().all(u8::is_ascii_digit)
            && bytes[4..]
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()))
}

impl CamVidLayout {
    /// The sequences present in any split, sorted.
    pub fn sequences(&self) -> Result<Vec<String>, DomainError> {
        let all = CamVidLayout {
            dir: self.dir.clone(),
            sequence: None,
        };
        let mut found = Vec::new();
        for split in Split::ALL {
            let image_dir = self.dir.join(split.as_str());
            if !image_dir.is_dir() {
                continue;
            }
            for sample in all.pairs(split)? {
                if let Some(seq) = sequence_of(&sample.image) {
                    found.push(seq);
                }
            }
        }
        found.sort();
        found.dedup();
        Ok(found)
    }
}

fn sequence_of(image: &Path) -> Option<String> {
    let name = image.file_name()?.to_str()?;
    Some(name.split_once('_')?.0.to_string())
}

impl DomainLayout for CamVidLayout {
    fn describe(&self) -> String {
        format!(
            "{d}/<train|val|test>/*.png with {d}/<train|val|test>annot/*.png (same names)",
            d = self.dir.display()
        )
    }

    /// The pairs of `split`, filtered to the sequence. A sequence with no frame in this
    /// split gives an empty list (all of CamVid's `val` is `0016E5`).
    fn pairs(&self, split: Split) -> Result<Vec<ImagePair>, DomainError> {
        let layout = self.describe();
        let samples = PairRule {
            image_dir: self.dir.join(split.as_str()),
            label_dir: self.dir.join(format!("{split}annot")),
            nested: false,
            naming: &[(".png", &[(".png", LabelEncoding::TrainIds)])],
            layout: &layout,
        }
        .pairs()?;
        Ok(match &self.sequence {
            None => samples,
            Some(seq) => samples
                .into_iter()
                .filter(|s| sequence_of(&s.image).as_deref() == Some(seq.as_str()))
                .collect(),
        })
    }
}

/// Resolves `camvid` and `camvid/<sequence>`; `None` for other names.
pub fn resolve(name: &str, data_root: &Path) -> Option<Result<Domain, DomainError>> {
    let sequence = match name.strip_prefix("camvid") {
        Some("") => None,
        Some(rest) => match rest.strip_prefix('/') {
            Some(seq) if is_sequence_name(seq) => Some(seq.to_string()),
            _ => return None,
        },
        None => return None,
    };
    Some(resolve_layout(name, data_root, sequence))
}

fn resolve_layout(
    name: &str,
    data_root: &Path,
    sequence: Option<String>,
) -> Result<Domain, DomainError> {
    let layout = CamVidLayout {
        dir: data_root.join("camvid"),
        sequence,
    };
    require_dir(&layout.dir, &layout.describe())?;
    if let Some(seq) = &layout.sequence {
        let known = layout.sequences()?;
        if !known.contains(seq) {
            return Err(DomainError::UnknownDomain {
                name: name.to_string(),
                known: format!(
                    "camvid and its sequences here: {}",
                    known
                        .iter()
                        .map(|s| format!("camvid/{s}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
    }
    Ok(Domain {
        name: name.to_string(),
        classes: classes::CAMVID_11.iter().map(|c| c.to_string()).collect(),
        ignore_value: CAMVID_IGNORE,
        evaluator: EvaluatorKind::Detectron2,
        palette: Palette::CamVid,
        layout: std::sync::Arc::new(layout),
    })
}
