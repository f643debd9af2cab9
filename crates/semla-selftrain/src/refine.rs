//! CLOUDS' refinement of a teacher's pseudo-label by a promptable mask model
//! (`CLOUDS.forward` with `my_utils/mask_utils.py`):
//!
//! 1. each class of the pseudo-label (void and ignore excluded) is split into
//!    4-connected components; those with an area strictly above
//!    [`RefineSettings::min_area_px`] and at least
//!    [`RefineSettings::points_per_component`] pixels become one prompt each:
//!    that many random foreground points;
//! 2. the proposer answers each prompt with 3 masks; the best by score is kept;
//! 3. pixels that two or more kept masks claim (of any classes) are removed
//!    from all of them;
//! 4. each class is the union of its masks; a class without a prompt vanishes;
//! 5. an image without any prompt keeps its raw pseudo-label.
//!
//! The official target is a set of binary class masks for Mask2Former, where a
//! pixel no mask covers is a negative for every query. A per-pixel head has no
//! such negative, so here a pixel no kept mask covers is `ignore` (not
//! supervised) by default, or, with [`Unclaimed::Teacher`], keeps the
//! teacher's label: the masks then correct the pseudo-label where they reach
//! and leave it alone elsewhere (contested pixels stay ignored either way).

use image::RgbImage;
use semla_core::SplitMix64;

use crate::components::{components, sample_points};
use crate::error::{RefineError, Result};
use crate::proposer::MaskProposer;

/// Settings of the refinement (CLOUDS' `SAM.*` config keys).
#[derive(Clone, Debug, PartialEq)]
pub struct RefineSettings {
    /// A component becomes a prompt when its area is strictly above this.
    /// Default 5000 (`SAM.SIZE_THRESHOLD`, for 768x768 generated images).
    pub min_area_px: usize,
    /// Foreground points per prompt. Default 5 (`SAM.NUM_POINTS`).
    pub points_per_component: usize,
    /// Label of unsupervised pixels, in the input and the output. Default 255.
    pub ignore: u16,
    /// A class that is never prompted nor kept (the official code drops class
    /// 19, Cityscapes' void). Default `None`.
    pub void: Option<u16>,
    /// What a pixel that no kept mask claims becomes. Default
    /// [`Unclaimed::Ignore`].
    pub unclaimed: Unclaimed,
}

/// The label of a pixel that no kept mask claims.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Unclaimed {
    /// `ignore`: only the masks supervise (the official target's coverage).
    #[default]
    Ignore,
    /// The teacher's label (void mapped to `ignore`).
    Teacher,
}

impl Default for RefineSettings {
    fn default() -> Self {
        Self {
            min_area_px: 5000,
            points_per_component: 5,
            ignore: 255,
            void: None,
            unclaimed: Unclaimed::Ignore,
        }
    }
}

/// A refined pseudo-label.
#[derive(Clone, Debug, PartialEq)]
pub struct Refined {
    /// `height x width` labels: classes, `ignore` where no kept mask is (or two are).
    pub labels: Vec<u16>,
    /// Prompts sent to the proposer.
    pub prompts: usize,
    /// Pixels removed because two or more masks claimed them.
    pub contested_px: usize,
    /// Whether the raw pseudo-label was kept (the image gave no prompt).
    pub fallback: bool,
}

/// One prompt: the class it stands for and its points.
struct Prompt {
    class: u16,
    points: Vec<(f32, f32)>,
}

/// Refines the teacher's `pseudo` labels (`height x width` of `image`) with
/// `proposer`; `rng` draws the points (seed it per image for reproducible runs).
pub fn refine_pseudo_label<P: MaskProposer>(
    proposer: &P,
    image: &RgbImage,
    pseudo: &[u16],
    settings: &RefineSettings,
    rng: &mut SplitMix64,
) -> Result<Refined> {
    let (width, height) = (image.width() as usize, image.height() as usize);
    if pseudo.len() != width * height {
        return Err(RefineError::Invalid(format!(
            "the pseudo-label has {} pixels, the {width}x{height} image {}",
            pseudo.len(),
            width * height
        )));
    }
    let mut classes: Vec<u16> = pseudo
        .iter()
        .copied()
        .filter(|&c| c != settings.ignore && Some(c) != settings.void)
        .collect();
    classes.sort_unstable();
    classes.dedup();
    let mut prompts = Vec::new();
    for &class in &classes {
        let mask: Vec<bool> = pseudo.iter().map(|&c| c == class).collect();
        for component in components(&mask, height, width) {
            if component.area() <= settings.min_area_px {
                continue;
            }
            if let Some(points) =
                sample_points(&component, settings.points_per_component, width, rng)
            {
                prompts.push(Prompt {
                    class,
                    points: points
                        .into_iter()
                        .map(|(x, y)| (x as f32, y as f32))
                        .collect(),
                });
            }
        }
    }
    let teacher = || -> Vec<u16> {
        pseudo
            .iter()
            .map(|&c| {
                if Some(c) == settings.void {
                    settings.ignore
                } else {
                    c
                }
            })
            .collect()
    };
    if prompts.is_empty() {
        let labels = teacher();
        return Ok(Refined {
            labels,
            prompts: 0,
            contested_px: 0,
            fallback: true,
        });
    }
    let prepared = proposer.prepare(image)?;
    let mut kept: Vec<(u16, Vec<bool>)> = Vec::with_capacity(prompts.len());
    for prompt in &prompts {
        let labels = vec![1u8; prompt.points.len()];
        let proposals = proposer.predict(&prepared, &prompt.points, &labels)?;
        let best = proposals.best();
        if best.len() != width * height {
            return Err(RefineError::Proposer(format!(
                "a mask of {} pixels for a {width}x{height} image",
                best.len()
            )));
        }
        kept.push((prompt.class, best.to_vec()));
    }
    let mut claims = vec![0u16; width * height];
    for (_, mask) in &kept {
        for (count, &m) in claims.iter_mut().zip(mask) {
            *count = count.saturating_add(u16::from(m));
        }
    }
    let mut labels = match settings.unclaimed {
        Unclaimed::Ignore => vec![settings.ignore; width * height],
        Unclaimed::Teacher => teacher(),
    };
    for (class, mask) in &kept {
        for ((label, &m), &count) in labels.iter_mut().zip(mask).zip(&claims) {
            if m && count == 1 {
                *label = *class;
            }
        }
    }
    for (label, &count) in labels.iter_mut().zip(&claims) {
        if count >= 2 {
            *label = settings.ignore;
        }
    }
    Ok(Refined {
        labels,
        prompts: prompts.len(),
        contested_px: claims.iter().filter(|&&c| c >= 2).count(),
        fallback: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proposer::Proposals;
    use std::cell::RefCell;

    /// A proposer answering each prompt with masks it was given in order, and
    /// recording the prompts.
    struct Scripted {
        answers: Vec<Proposals>,
        seen: RefCell<Vec<Vec<(f32, f32)>>>,
    }

    impl Scripted {
        fn new(answers: Vec<Proposals>) -> Self {
            Self {
                answers,
                seen: RefCell::new(Vec::new()),
            }
        }
    }

    impl MaskProposer for Scripted {
        type Prepared = ();
        fn prepare(&self, _: &RgbImage) -> Result<()> {
            Ok(())
        }
        fn predict(&self, _: &(), points: &[(f32, f32)], labels: &[u8]) -> Result<Proposals> {
            assert!(labels.iter().all(|&l| l == 1));
            let mut seen = self.seen.borrow_mut();
            seen.push(points.to_vec());
            self.answers
                .get(seen.len() - 1)
                .cloned()
                .ok_or_else(|| RefineError::Proposer("no more answers".into()))
        }
    }

    fn rows(text: &[&str]) -> Vec<u16> {
        text.iter()
            .flat_map(|r| {
                r.bytes().map(|b| match b {
                    b'.' => 255,
                    d => u16::from(d - b'0'),
                })
            })
            .collect()
    }

    fn masks_of(text: &[&str], class: u8) -> Vec<bool> {
        rows(text).iter().map(|&c| c == u16::from(class)).collect()
    }

    fn settings(min_area_px: usize, points: usize) -> RefineSettings {
        RefineSettings {
            min_area_px,
            points_per_component: points,
            ..RefineSettings::default()
        }
    }

    #[test]
    fn prompts_come_from_large_components_only_and_points_lie_inside() {
        // Class 1: a 6-pixel and a 3-pixel component; class 2: one of 4.
        let pseudo = rows(&["111.2", "111.2", "....2", "11..2"]);
        let image = RgbImage::new(5, 4);
        let whole = vec![true; 20];
        let answer = Proposals {
            masks: [whole.clone(), whole.clone(), whole],
            scores: [0.1, 0.2, 0.3],
        };
        let proposer = Scripted::new(vec![answer; 4]);
        // Area strictly above 3: the 6- and 4-pixel components; 2 points each.
        let out = refine_pseudo_label(
            &proposer,
            &image,
            &pseudo,
            &settings(3, 2),
            &mut SplitMix64::new(1),
        )
        .unwrap();
        assert_eq!(out.prompts, 2);
        let seen = proposer.seen.borrow();
        for (prompt, class) in seen.iter().zip([1u16, 2]) {
            assert_eq!(prompt.len(), 2);
            assert_ne!(prompt[0], prompt[1]);
            for &(x, y) in prompt {
                assert_eq!(pseudo[y as usize * 5 + x as usize], class, "({x}, {y})");
            }
        }
        // Both prompts got the whole image: every pixel is contested, so ignored.
        assert_eq!(out.contested_px, 20);
        assert!(out.labels.iter().all(|&l| l == 255));
    }

    #[test]
    fn best_masks_union_per_class_and_contested_pixels_are_dropped() {
        let pseudo = rows(&["1111", "1111", "2222", "2222"]);
        let image = RgbImage::new(4, 4);
        let empty = vec![false; 16];
        // Class 1's best mask (score 0.9) covers rows 0-2; class 2's best covers rows 2-3.
        let one = masks_of(&["1111", "1111", "1111", "...."], 1);
        let two = masks_of(&["....", "....", "2222", "2222"], 2);
        let proposer = Scripted::new(vec![
            Proposals {
                masks: [empty.clone(), one, empty.clone()],
                scores: [0.1, 0.9, 0.5],
            },
            Proposals {
                masks: [two, empty.clone(), empty],
                scores: [0.8, 0.2, 0.8],
            },
        ]);
        let out = refine_pseudo_label(
            &proposer,
            &image,
            &pseudo,
            &settings(3, 1),
            &mut SplitMix64::new(2),
        )
        .unwrap();
        // Row 2 is claimed by both: ignored; the rest follows the masks.
        assert_eq!(out.labels, rows(&["1111", "1111", "....", "2222"]));
        assert_eq!(out.contested_px, 4);
        assert!(!out.fallback);
    }

    #[test]
    fn unclaimed_pixels_are_ignored_or_keep_the_teacher_label() {
        // Class 1's mask covers only the left half of its rows and reaches
        // one pixel of class 2's; class 2's mask covers its rows but the last pixel.
        let pseudo = rows(&["1111", "1111", "2222", "2222"]);
        let image = RgbImage::new(4, 4);
        let one = masks_of(&["11..", "11..", "1...", "...."], 1);
        let two = masks_of(&["....", "....", "2222", "222."], 2);
        let answers = || {
            vec![
                Proposals {
                    masks: [one.clone(), one.clone(), one.clone()],
                    scores: [0.5; 3],
                },
                Proposals {
                    masks: [two.clone(), two.clone(), two.clone()],
                    scores: [0.5; 3],
                },
            ]
        };
        let mut s = settings(3, 1);
        let ignored = refine_pseudo_label(
            &Scripted::new(answers()),
            &image,
            &pseudo,
            &s,
            &mut SplitMix64::new(4),
        )
        .unwrap();
        assert_eq!(ignored.labels, rows(&["11..", "11..", ".222", "222."]));
        s.unclaimed = Unclaimed::Teacher;
        let kept = refine_pseudo_label(
            &Scripted::new(answers()),
            &image,
            &pseudo,
            &s,
            &mut SplitMix64::new(4),
        )
        .unwrap();
        // The teacher fills what no mask claims; the contested pixel stays ignored.
        assert_eq!(kept.labels, rows(&["1111", "1111", ".222", "2222"]));
    }

    #[test]
    fn classes_without_a_prompt_vanish_and_no_prompt_keeps_the_raw_label() {
        // Class 3 is a single pixel: no prompt, and it vanishes from the refined label.
        let pseudo = rows(&["1113", "1111", "1111", "1111"]);
        let image = RgbImage::new(4, 4);
        let ones = masks_of(&["111.", "1111", "1111", "1111"], 1);
        let proposer = Scripted::new(vec![Proposals {
            masks: [ones.clone(), ones.clone(), ones],
            scores: [0.5, 0.5, 0.5],
        }]);
        let out = refine_pseudo_label(
            &proposer,
            &image,
            &pseudo,
            &settings(3, 2),
            &mut SplitMix64::new(3),
        )
        .unwrap();
        assert_eq!(out.labels, rows(&["111.", "1111", "1111", "1111"]));
        // Everything too small: the raw pseudo-label, void mapped to ignore.
        let none = Scripted::new(Vec::new());
        let mut s = settings(100, 2);
        s.void = Some(3);
        let out = refine_pseudo_label(&none, &image, &pseudo, &s, &mut SplitMix64::new(3)).unwrap();
        assert!(out.fallback);
        assert_eq!(out.prompts, 0);
        assert_eq!(out.labels, rows(&["111.", "1111", "1111", "1111"]));
        assert!(none.seen.borrow().is_empty());
    }

    #[test]
    fn a_pseudo_label_of_the_wrong_size_is_an_error() {
        let none = Scripted::new(Vec::new());
        let err = refine_pseudo_label(
            &none,
            &RgbImage::new(4, 4),
            &[0; 15],
            &RefineSettings::default(),
            &mut SplitMix64::new(0),
        )
        .unwrap_err();
        assert!(err.to_string().contains("15 pixels"), "{err}");
    }
}
