//! Promptable mask proposers: SAM's `predict(image, points, labels) -> (3
//! masks, 3 scores)` contract, and a weight-free implementation.

use image::RgbImage;

use crate::error::{RefineError, Result};

/// Three candidate masks for one prompt, finest first, with a quality score
/// each (SAM: the predicted IoU of `multimask_output=True`).
#[derive(Clone, Debug, PartialEq)]
pub struct Proposals {
    /// `height x width` row-major masks.
    pub masks: [Vec<bool>; 3],
    /// Score of each mask; higher is better.
    pub scores: [f32; 3],
}

impl Proposals {
    /// The mask of the highest score (the first on a tie, as `argmax`).
    pub fn best(&self) -> &[bool] {
        let mut best = 0;
        for i in 1..3 {
            if self.scores[i] > self.scores[best] {
                best = i;
            }
        }
        &self.masks[best]
    }
}

/// A model that proposes masks from point prompts on an image it has prepared
/// once (SAM embeds the image once, then answers many prompts).
pub trait MaskProposer {
    /// What [`MaskProposer::prepare`] keeps of an image (SAM: its embedding).
    type Prepared;

    /// Prepares `image` for prompts.
    fn prepare(&self, image: &RgbImage) -> Result<Self::Prepared>;

    /// Three masks at the prepared image's size for one prompt: `points` as
    /// `(x, y)` in the image's pixels, `labels` 1 (foreground) or 0 (background)
    /// for each.
    fn predict(
        &self,
        prepared: &Self::Prepared,
        points: &[(f32, f32)],
        labels: &[u8],
    ) -> Result<Proposals>;
}

/// An image's colours, as the weight-free proposers read them.
#[derive(Clone, Debug)]
pub struct PreparedColours {
    pub(crate) width: usize,
    pub(crate) height: usize,
    pub(crate) colours: Vec<[f32; 3]>,
}

impl PreparedColours {
    pub(crate) fn new(image: &RgbImage) -> Result<Self> {
        let (width, height) = (image.width() as usize, image.height() as usize);
        if width == 0 || height == 0 {
            return Err(RefineError::Invalid("the image is empty".into()));
        }
        let colours = image
            .pixels()
            .map(|p| [f32::from(p[0]), f32::from(p[1]), f32::from(p[2])])
            .collect();
        Ok(Self {
            width,
            height,
            colours,
        })
    }

    /// The pixel under `(x, y)`, checked.
    fn pixel(&self, (x, y): (f32, f32)) -> Result<usize> {
        let (w, h) = (self.width, self.height);
        if !(x.is_finite() && y.is_finite() && x >= 0.0 && y >= 0.0) {
            return Err(RefineError::Invalid(format!(
                "point ({x}, {y}) is outside the image"
            )));
        }
        let (px, py) = (x.floor() as usize, y.floor() as usize);
        if px >= w || py >= h {
            return Err(RefineError::Invalid(format!(
                "point ({x}, {y}) is outside the {w}x{h} image"
            )));
        }
        Ok(py * w + px)
    }
}

/// Splits a prompt into foreground and background pixels.
pub(crate) fn prompt_pixels(
    image: &PreparedColours,
    points: &[(f32, f32)],
    labels: &[u8],
) -> Result<(Vec<usize>, Vec<usize>)> {
    if points.len() != labels.len() {
        return Err(RefineError::Invalid(format!(
            "{} points but {} labels",
            points.len(),
            labels.len()
        )));
    }
    let (mut foreground, mut background) = (Vec::new(), Vec::new());
    for (&point, &label) in points.iter().zip(labels) {
        let p = image.pixel(point)?;
        match label {
            1 => foreground.push(p),
            0 => background.push(p),
            other => {
                return Err(RefineError::Invalid(format!(
                    "point label {other}: expected 1 (foreground) or 0 (background)"
                )));
            }
        }
    }
    if foreground.is_empty() {
        return Err(RefineError::Invalid(
            "a prompt needs at least one foreground point".into(),
        ));
    }
    Ok((foreground, background))
}

pub(crate) fn distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

/// The score of a weight-free mask, in `[0, 1]`: boundary contrast x
/// compactness. Contrast is the mean colour distance across the mask's boundary
/// (inside pixel vs outside 4-neighbour) over the largest possible (`255 *
/// sqrt(3)`); compactness is `4 pi area / perimeter^2` (perimeter in pixel
/// edges, the image border included), at most 1. A mask that fills the image
/// has no boundary to contrast and scores 0.
pub fn mask_score(image: &PreparedColours, mask: &[bool]) -> f32 {
    {
        let (w, h) = (image.width, image.height);
        let (mut area, mut perimeter, mut contrast_sum, mut pairs) = (0usize, 0usize, 0f64, 0usize);
        for p in 0..w * h {
            if !mask[p] {
                continue;
            }
            area += 1;
            let (y, x) = (p / w, p % w);
            let neighbours = [
                (x > 0).then(|| p - 1),
                (x + 1 < w).then(|| p + 1),
                (y > 0).then(|| p - w),
                (y + 1 < h).then(|| p + w),
            ];
            for q in neighbours {
                match q {
                    None => perimeter += 1,
                    Some(q) if !mask[q] => {
                        perimeter += 1;
                        pairs += 1;
                        contrast_sum += f64::from(distance(image.colours[p], image.colours[q]));
                    }
                    Some(_) => {}
                }
            }
        }
        if area == 0 || pairs == 0 || perimeter == 0 {
            return 0.0;
        }
        let contrast = contrast_sum / pairs as f64 / (255.0 * 3f64.sqrt());
        let compactness =
            (4.0 * std::f64::consts::PI * area as f64 / (perimeter as f64).powi(2)).min(1.0);
        (contrast * compactness) as f32
    }
}

/// A weight-free proposer: Felzenszwalb-Huttenlocher graph segmentations of the
/// image at three scales (fine, medium, coarse: SAM's three granularities),
/// computed once per image; a prompt's mask at each scale is the union of the
/// segments under its foreground points, less those under its background points.
/// Scored by boundary contrast x compactness ([`mask_score`]).
#[derive(Clone, Debug, PartialEq)]
pub struct GraphSegments {
    /// The segmentation scales `k`, increasing (larger: larger segments).
    /// Default `[100, 300, 1000]`.
    pub scales: [f32; 3],
    /// Segments below this many pixels merge into a neighbour. Default 20.
    pub min_segment_px: usize,
}

impl Default for GraphSegments {
    fn default() -> Self {
        Self {
            scales: [100.0, 300.0, 1000.0],
            min_segment_px: 20,
        }
    }
}

/// An image as [`GraphSegments`] keeps it: colours and its three segmentations.
#[derive(Clone, Debug)]
pub struct PreparedSegments {
    colours: PreparedColours,
    segments: [Vec<u32>; 3],
}

impl MaskProposer for GraphSegments {
    type Prepared = PreparedSegments;

    fn prepare(&self, image: &RgbImage) -> Result<PreparedSegments> {
        let colours = PreparedColours::new(image)?;
        let segments = self.scales.map(|scale| {
            crate::graph::segment(
                &colours.colours,
                colours.width,
                colours.height,
                scale,
                self.min_segment_px,
            )
        });
        Ok(PreparedSegments { colours, segments })
    }

    fn predict(
        &self,
        prepared: &PreparedSegments,
        points: &[(f32, f32)],
        labels: &[u8],
    ) -> Result<Proposals> {
        let (foreground, background) = prompt_pixels(&prepared.colours, points, labels)?;
        let masks = [0, 1, 2].map(|i| {
            let ids = &prepared.segments[i];
            let wanted: std::collections::HashSet<u32> =
                foreground.iter().map(|&p| ids[p]).collect();
            let unwanted: std::collections::HashSet<u32> =
                background.iter().map(|&p| ids[p]).collect();
            ids.iter()
                .map(|id| wanted.contains(id) && !unwanted.contains(id))
                .collect::<Vec<bool>>()
        });
        let scores = [0, 1, 2].map(|i| mask_score(&prepared.colours, &masks[i]));
        Ok(Proposals { masks, scores })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 12x12 image: a red 4x4 square at (2..6, 2..6), a darker red stripe at
    /// x = 6 touching it, grey elsewhere.
    fn image() -> RgbImage {
        RgbImage::from_fn(12, 12, |x, y| {
            if (2..6).contains(&x) && (2..6).contains(&y) {
                image::Rgb([200, 30, 30])
            } else if x == 6 && (2..10).contains(&y) {
                image::Rgb([150, 40, 40])
            } else {
                image::Rgb([120, 120, 120])
            }
        })
    }

    #[test]
    fn masks_are_the_segments_under_the_points() {
        let proposer = GraphSegments {
            scales: [50.0, 50.0, 50.0],
            min_segment_px: 4,
        };
        let prepared = proposer.prepare(&image()).unwrap();
        let out = proposer.predict(&prepared, &[(3.0, 3.0)], &[1]).unwrap();
        for mask in &out.masks {
            // The square's core is in, the far grey corner is out.
            assert!(mask[3 * 12 + 3] && mask[4 * 12 + 4]);
            assert!(!mask[11 * 12 + 11] && !mask[0]);
        }
        assert!(
            out.scores.iter().all(|s| (0.0..=1.0).contains(s)),
            "{:?}",
            out.scores
        );
        // A background point on the same segment removes it.
        let out = proposer
            .predict(&prepared, &[(3.0, 3.0), (4.0, 4.0)], &[1, 0])
            .unwrap();
        assert!(out.masks.iter().all(|m| !m[3 * 12 + 3]));
        // The whole image as a mask has no boundary: score 0.
        assert_eq!(mask_score(&prepared.colours, &[true; 144]), 0.0);
    }

    #[test]
    fn bad_prompts_are_errors() {
        let proposer = GraphSegments::default();
        let prepared = proposer.prepare(&image()).unwrap();
        assert!(proposer.predict(&prepared, &[(12.0, 0.0)], &[1]).is_err());
        assert!(proposer.predict(&prepared, &[(1.0, 1.0)], &[0]).is_err());
        assert!(proposer.predict(&prepared, &[(1.0, 1.0)], &[2]).is_err());
        assert!(proposer.predict(&prepared, &[(1.0, 1.0)], &[]).is_err());
        assert!(
            proposer
                .predict(&prepared, &[(f32::NAN, 1.0)], &[1])
                .is_err()
        );
    }

    #[test]
    fn the_best_of_three_is_the_first_highest_score() {
        let masks = [vec![true], vec![false], vec![true]];
        let p = Proposals {
            masks: masks.clone(),
            scores: [0.2, 0.9, 0.9],
        };
        assert_eq!(p.best(), &masks[1][..]);
    }
}
