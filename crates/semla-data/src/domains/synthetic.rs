//! The synthetic street world ([`crate::synthetic`]) as domains:
//! `synthetic/<style>` or `synthetic-<style>` (the second form is a valid
//! adapter folder name, so a library can hold one adapter per style).
//!
//! Nothing is read from disk: the pairs of a split are virtual paths
//! `synthetic/<style>/<split>/<index>.png` and [`DomainLayout::load_image`]
//! renders the scene of that index (deterministically) at
//! [`DEFAULT_WIDTH`]x[`DEFAULT_HEIGHT`].

use std::path::{Path, PathBuf};

use super::{Domain, DomainError, DomainLayout, EvaluatorKind, ImagePair, Palette, Split};
use crate::labels::{LabelEncoding, LabelMap};
use crate::synthetic::{self, SyntheticWorld};

/// Width of the rendered images.
pub const DEFAULT_WIDTH: u32 = 128;
/// Height of the rendered images.
pub const DEFAULT_HEIGHT: u32 = 96;
/// Images per split: train, val, test.
pub const SPLIT_SIZES: [usize; 3] = [96, 32, 32];

/// A style of the synthetic world rendered on demand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntheticLayout {
    /// The style name (`clear`, `fog`, ...).
    pub style: String,
    /// Image width.
    pub width: u32,
    /// Image height.
    pub height: u32,
}

fn split_of(split: Split) -> synthetic::Split {
    match split {
        Split::Train => synthetic::Split::Train,
        Split::Val => synthetic::Split::Val,
        Split::Test => synthetic::Split::Test,
    }
}

fn split_size(split: Split) -> usize {
    match split {
        Split::Train => SPLIT_SIZES[0],
        Split::Val => SPLIT_SIZES[1],
        Split::Test => SPLIT_SIZES[2],
    }
}

impl SyntheticLayout {
    fn render(&self, sample: &ImagePair) -> Result<synthetic::Sample, DomainError> {
        let bad = |message: String| DomainError::SplitFile {
            path: sample.image.clone(),
            line: 0,
            message,
        };
        let split = sample
            .image
            .parent()
            .and_then(Path::file_name)
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<Split>().ok())
            .ok_or_else(|| bad("not a synthetic sample path (no split folder)".into()))?;
        let index: u64 = sample
            .image
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("not a synthetic sample path (no index)".into()))?;
        SyntheticWorld::generate_named(&self.style, split_of(split), index, self.width, self.height)
            .map_err(|e| bad(e.to_string()))
    }
}

impl DomainLayout for SyntheticLayout {
    fn describe(&self) -> String {
        format!(
            "generated: synthetic style `{}`, {}x{} images, {} train / {} val / {} test scenes (no files)",
            self.style, self.width, self.height, SPLIT_SIZES[0], SPLIT_SIZES[1], SPLIT_SIZES[2]
        )
    }

    fn pairs(&self, split: Split) -> Result<Vec<ImagePair>, DomainError> {
        Ok((0..split_size(split))
            .map(|i| {
                let path = PathBuf::from(format!(
                    "synthetic/{}/{}/{i:06}.png",
                    self.style,
                    split.as_str()
                ));
                ImagePair {
                    image: path.clone(),
                    label: path,
                    encoding: LabelEncoding::TrainIds,
                }
            })
            .collect())
    }

    fn load_image(&self, sample: &ImagePair) -> Result<image::RgbImage, DomainError> {
        Ok(self.render(sample)?.image)
    }

    fn load_label(&self, sample: &ImagePair) -> Result<LabelMap, DomainError> {
        let rendered = self.render(sample)?;
        Ok(LabelMap {
            width: self.width,
            height: self.height,
            values: rendered.labels.iter().map(|&l| u16::from(l)).collect(),
        })
    }
}

/// Resolves `synthetic/<style>` and `synthetic-<style>`; `None` for other names.
pub fn resolve(name: &str, _data_root: &Path) -> Option<Result<Domain, DomainError>> {
    let style = name
        .strip_prefix("synthetic/")
        .or_else(|| name.strip_prefix("synthetic-"))?;
    if SyntheticWorld::domain(style).is_err() {
        return Some(Err(DomainError::UnknownDomain {
            name: name.to_string(),
            known: format!(
                "synthetic-<style> with style one of {} (or a milder `<style>-light`)",
                SyntheticWorld::domain_names().join(", ")
            ),
        }));
    }
    Some(Ok(Domain {
        name: name.to_string(),
        classes: synthetic::CLASS_NAMES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ignore_value: 255,
        evaluator: EvaluatorKind::Detectron2,
        palette: Palette::Generic,
        layout: std::sync::Arc::new(SyntheticLayout {
            style: style.to_string(),
            width: DEFAULT_WIDTH,
            height: DEFAULT_HEIGHT,
        }),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_name_forms_resolve_and_render_deterministically() {
        let root = Path::new("");
        let a = resolve("synthetic-fog", root).unwrap().unwrap();
        let b = resolve("synthetic/fog", root).unwrap().unwrap();
        assert!(resolve("camvid", root).is_none());
        assert!(resolve("synthetic-nowhere", root).unwrap().is_err());
        let pairs = a.pairs(Split::Val).unwrap();
        assert_eq!(pairs.len(), SPLIT_SIZES[1]);
        let img = a.load_image(&pairs[3]).unwrap();
        assert_eq!(img, b.load_image(&b.pairs(Split::Val).unwrap()[3]).unwrap());
        assert_eq!(img.dimensions(), (DEFAULT_WIDTH, DEFAULT_HEIGHT));
        let labels = a.load_label(&pairs[3]).unwrap();
        assert!(
            labels
                .values
                .iter()
                .all(|&v| (v as usize) < synthetic::NUM_CLASSES)
        );
        let direct = SyntheticWorld::generate_named(
            "fog",
            synthetic::Split::Val,
            3,
            DEFAULT_WIDTH,
            DEFAULT_HEIGHT,
        )
        .unwrap();
        assert_eq!(img, direct.image);
    }
}
