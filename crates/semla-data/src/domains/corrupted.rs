//! Domains derived from CamVid: its daytime frames, its dusk sequence with a held-out
//! part, and ImageNet-C style corruptions of the daytime frames, generated on the fly.
//!
//! `camvid-day`, `camvid-dusk`, `camvid-fog3`, ... are the same domains under names that
//! can also name adapters (which cannot contain `/`).
//!
//! | name | train | val | test |
//! | --- | --- | --- | --- |
//! | `camvid/day` | train frames not of `0001TP` | all val frames (`0016E5`) | test frames not of `0001TP` |
//! | `camvid/dusk` | `0001TP` train frames but the last [`DUSK_HELD_OUT`] by name | those last frames | `0001TP` test frames |
//! | `camvid/<corruption>` (e.g. `camvid/fog3`) | `camvid/day`'s, corrupted | likewise | likewise |
//!
//! A corruption name is a kind of [`CorruptionKind`] followed by a severity 1-5
//! (`fog3`, `motion_blur2`, `gaussian_noise4`). Each image's random stream is seeded by
//! its file name (FNV-1a), never by its position in a listing, so an image gets the same
//! corruption in any split, subset or copy of the data. Labels are unchanged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::camvid::{CAMVID_IGNORE, CamVidLayout};
use super::listing::require_dir;
use super::{Domain, DomainError, DomainLayout, EvaluatorKind, ImagePair, Palette, Split, classes};
use crate::corrupt::Corruption;
use crate::image_io::read_rgb;
use crate::labels::LabelError;

/// The dusk sequence.
pub const DUSK_SEQUENCE: &str = "0001TP";

/// Frames of the dusk sequence's train split held out for `camvid/dusk`'s `val` split
/// (the last ones by file name).
pub const DUSK_HELD_OUT: usize = 20;

/// Which frames a derived domain starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frames {
    /// Every frame not of the dusk sequence.
    Day,
    /// The dusk sequence, with its last train frames moved to `val`.
    Dusk,
}

/// A derived CamVid domain: daytime or dusk frames, optionally corrupted.
#[derive(Clone, Debug)]
pub struct DerivedCamVidLayout {
    /// The whole CamVid layout underneath.
    pub camvid: CamVidLayout,
    /// Which frames.
    pub frames: Frames,
    /// The corruption applied to every photo, if any.
    pub corruption: Option<Corruption>,
}

/// FNV-1a of `text`: the per-image corruption stream index, stable across listings.
pub fn image_seed(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn is_dusk(sample: &ImagePair) -> bool {
    sample
        .image
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(&format!("{DUSK_SEQUENCE}_")))
}

impl DomainLayout for DerivedCamVidLayout {
    fn describe(&self) -> String {
        let frames = match self.frames {
            Frames::Day => format!("frames not of {DUSK_SEQUENCE}"),
            Frames::Dusk => format!(
                "{DUSK_SEQUENCE} frames (val = the last {DUSK_HELD_OUT} train frames by name)"
            ),
        };
        let corruption = self
            .corruption
            .map(|c| format!(", corrupted with {c}"))
            .unwrap_or_default();
        format!("{} ({frames}{corruption})", self.camvid.describe())
    }

    fn pairs(&self, split: Split) -> Result<Vec<ImagePair>, DomainError> {
        let read = |split: Split| -> Result<Vec<ImagePair>, DomainError> {
            if self.camvid.dir.join(split.as_str()).is_dir() {
                self.camvid.pairs(split)
            } else {
                Ok(Vec::new())
            }
        };
        Ok(match self.frames {
            Frames::Day => read(split)?.into_iter().filter(|s| !is_dusk(s)).collect(),
            Frames::Dusk => {
                let mut dusk: Vec<ImagePair> = match split {
                    Split::Train | Split::Val => read(Split::Train)?,
                    Split::Test => read(Split::Test)?,
                }
                .into_iter()
                .filter(is_dusk)
                .collect();
                dusk.sort_by(|a, b| a.image.file_name().cmp(&b.image.file_name()));
                let cut = dusk.len().saturating_sub(DUSK_HELD_OUT);
                match split {
                    Split::Train => dusk.truncate(cut),
                    Split::Val => {
                        dusk.drain(..cut);
                    }
                    Split::Test => {}
                }
                dusk
            }
        })
    }

    fn load_image(&self, sample: &ImagePair) -> Result<image::RgbImage, DomainError> {
        let photo = read_rgb(&sample.image)?;
        let Some(corruption) = self.corruption else {
            return Ok(photo);
        };
        let name = sample
            .image
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        corruption
            .apply(&photo, image_seed(name))
            .map_err(|e| corrupt_error(&sample.image, &corruption, e))
    }
}

fn corrupt_error(
    image: &Path,
    corruption: &Corruption,
    error: crate::corrupt::CorruptError,
) -> DomainError {
    DomainError::Label(LabelError::Image {
        path: image.to_path_buf(),
        message: format!("applying {corruption}: {error}"),
    })
}

/// The frames and corruption a `camvid/...` name asks for, or `None` when the name is
/// not a derived domain (left to other resolvers). `camvid-<x>` is accepted as another
/// spelling of `camvid/<x>`: adapter names cannot contain `/`, and SemLA pairs a target
/// domain with the adapter of the same name (oracle, leave-one-out).
pub fn parse_name(name: &str) -> Option<(Frames, Option<Corruption>)> {
    let rest = name
        .strip_prefix("camvid/")
        .or_else(|| name.strip_prefix("camvid-"))?;
    match rest {
        "day" => Some((Frames::Day, None)),
        "dusk" => Some((Frames::Dusk, None)),
        other => Corruption::parse(other)
            .ok()
            .filter(|c| c.name() == other)
            .map(|c| (Frames::Day, Some(c))),
    }
}

/// Resolves `camvid/day`, `camvid/dusk` and `camvid/<kind><severity>`.
pub fn resolve(name: &str, data_root: &Path) -> Option<Result<Domain, DomainError>> {
    let (frames, corruption) = parse_name(name)?;
    Some(build(name, data_root.join("camvid"), frames, corruption))
}

fn build(
    name: &str,
    dir: PathBuf,
    frames: Frames,
    corruption: Option<Corruption>,
) -> Result<Domain, DomainError> {
    let layout = DerivedCamVidLayout {
        camvid: CamVidLayout {
            dir,
            sequence: None,
        },
        frames,
        corruption,
    };
    require_dir(&layout.camvid.dir, &layout.describe())?;
    Ok(Domain {
        name: name.to_string(),
        classes: classes::CAMVID_11.iter().map(|c| c.to_string()).collect(),
        ignore_value: CAMVID_IGNORE,
        evaluator: EvaluatorKind::Detectron2,
        palette: Palette::CamVid,
        layout: Arc::new(layout),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_to_frames_and_corruptions() {
        assert_eq!(parse_name("camvid/day"), Some((Frames::Day, None)));
        assert_eq!(parse_name("camvid/dusk"), Some((Frames::Dusk, None)));
        assert_eq!(parse_name("camvid-dusk"), Some((Frames::Dusk, None)));
        assert_eq!(
            parse_name("camvid-snow2").unwrap().1.unwrap().name(),
            "snow2"
        );
        let (frames, c) = parse_name("camvid/fog3").unwrap();
        assert_eq!(frames, Frames::Day);
        assert_eq!(c.unwrap().name(), "fog3");
        assert_eq!(
            parse_name("camvid/motion_blur2").unwrap().1.unwrap().name(),
            "motion_blur2"
        );
        // Sequences, unknown kinds, bad severities and other datasets are not ours.
        assert_eq!(parse_name("camvid/0001TP"), None);
        assert_eq!(parse_name("camvid/fog9"), None);
        assert_eq!(parse_name("camvid/fog"), None);
        assert_eq!(parse_name("camvid/Fog3"), None);
        assert_eq!(parse_name("acdc-fog"), None);
        assert_eq!(parse_name("camvid"), None);
        assert_eq!(parse_name("camvid-0001TP"), None);
    }

    #[test]
    fn image_seed_is_fnv1a() {
        // FNV-1a 64 of "" and "a" (published test vectors).
        assert_eq!(image_seed(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(image_seed("a"), 0xaf63_dc4c_8601_ec8c);
    }

    /// A CamVid-shaped folder: `n` frames per (split, sequence), 8x6 photos.
    fn fake_camvid(dir: &Path, frames: &[(&str, &str, usize)]) {
        for (split, seq, n) in frames {
            let images = dir.join("camvid").join(split);
            let labels = dir.join("camvid").join(format!("{split}annot"));
            std::fs::create_dir_all(&images).unwrap();
            std::fs::create_dir_all(&labels).unwrap();
            for i in 0..*n {
                let name = format!("{seq}_{i:05}.png");
                let photo = image::RgbImage::from_fn(8, 6, |x, y| {
                    image::Rgb([(x * 30) as u8, (y * 40) as u8, (i * 10) as u8])
                });
                photo.save(images.join(&name)).unwrap();
                image::GrayImage::from_pixel(8, 6, image::Luma([1]))
                    .save(labels.join(&name))
                    .unwrap();
            }
        }
    }

    fn names(samples: &[ImagePair]) -> Vec<String> {
        samples
            .iter()
            .map(|s| s.image.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn splits_hold_out_the_last_dusk_frames_and_keep_day_apart() {
        let tmp = std::env::temp_dir().join(format!("semla-derived-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        fake_camvid(
            &tmp,
            &[
                ("train", "0001TP", 25),
                ("train", "0006R0", 3),
                ("val", "0016E5", 2),
            ],
        );
        let dusk = super::super::resolve_domain("camvid/dusk", &tmp).unwrap();
        let train = names(&dusk.pairs(Split::Train).unwrap());
        let val = names(&dusk.pairs(Split::Val).unwrap());
        assert_eq!(train.len(), 5);
        assert_eq!(val.len(), DUSK_HELD_OUT);
        assert_eq!(val[0], "0001TP_00005.png");
        assert!(dusk.pairs(Split::Test).unwrap().is_empty());
        let day = super::super::resolve_domain("camvid/day", &tmp).unwrap();
        assert_eq!(day.pairs(Split::Train).unwrap().len(), 3);
        assert_eq!(
            names(&day.pairs(Split::Val).unwrap())[0],
            "0016E5_00000.png"
        );

        // A corrupted domain: same pairs as day, photos changed, deterministic per file
        // name whatever the listing.
        let fog = super::super::resolve_domain("camvid/fog3", &tmp).unwrap();
        let pairs = fog.pairs(Split::Train).unwrap();
        assert_eq!(names(&pairs), names(&day.pairs(Split::Train).unwrap()));
        let clean = day.load_image(&pairs[1]).unwrap();
        let once = fog.load_image(&pairs[1]).unwrap();
        let twice = fog.load_image(&pairs[1]).unwrap();
        assert_ne!(clean, once);
        assert_eq!(once, twice);
        let expected = Corruption::parse("fog3")
            .unwrap()
            .apply(&clean, image_seed("0006R0_00001.png"))
            .unwrap();
        assert_eq!(once, expected);
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
