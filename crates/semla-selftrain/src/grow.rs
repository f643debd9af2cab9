//! Seeded region growing at three colour tolerances: the second weight-free
//! stand-in for SAM's masks, after CLOUDS' own suggestion of "region growing
//! from the positive points at three tolerances".
//!
//! Each foreground point grows a region over 4-neighbours of the image,
//! smoothed by the 3x3 binomial filter of [`crate::graph`]: a pixel joins
//! when its colour is within the tolerance of the point's colour (so a region
//! stops at the object's colour boundary rather than drifting through a
//! gradient), within half the tolerance of the neighbour it is reached from
//! (so it does not jump an edge between two similar colours), and, when the
//! prompt has background points, nearer the point's colour than every
//! background point's. Every region stays inside the points' bounding box
//! widened on each side by half its size (at least an eighth of the image):
//! SAM's masks are objects around the points, and without that bound a region
//! floods every surface of a similar colour. The mask is the union of the
//! points' regions; the three tolerances are SAM's three granularities,
//! finest first.

use std::collections::VecDeque;

use image::RgbImage;

use crate::error::Result;
use crate::proposer::{
    MaskProposer, PreparedColours, Proposals, distance, mask_score, prompt_pixels,
};

/// The region-growing proposer. Scored like [`crate::GraphSegments`], by
/// boundary contrast x compactness ([`mask_score`], on the unsmoothed image).
#[derive(Clone, Debug, PartialEq)]
pub struct RegionGrowing {
    /// Colour tolerances (Euclidean RGB distance, 0-255 units), increasing.
    /// Default `[16, 32, 64]`.
    pub tolerances: [f32; 3],
}

impl Default for RegionGrowing {
    fn default() -> Self {
        Self {
            tolerances: [16.0, 32.0, 64.0],
        }
    }
}

/// An image as [`RegionGrowing`] keeps it: its colours and their smoothed copy.
#[derive(Clone, Debug)]
pub struct PreparedSmoothed {
    colours: PreparedColours,
    smoothed: Vec<[f32; 3]>,
}

impl MaskProposer for RegionGrowing {
    type Prepared = PreparedSmoothed;

    fn prepare(&self, image: &RgbImage) -> Result<PreparedSmoothed> {
        let colours = PreparedColours::new(image)?;
        let smoothed = crate::graph::smooth(&colours.colours, colours.width, colours.height);
        Ok(PreparedSmoothed { colours, smoothed })
    }

    fn predict(
        &self,
        prepared: &PreparedSmoothed,
        points: &[(f32, f32)],
        labels: &[u8],
    ) -> Result<Proposals> {
        let (foreground, background) = prompt_pixels(&prepared.colours, points, labels)?;
        let masks = self
            .tolerances
            .map(|tolerance| grow(prepared, &foreground, &background, tolerance));
        let scores = [0, 1, 2].map(|i| mask_score(&prepared.colours, &masks[i]));
        Ok(Proposals { masks, scores })
    }
}

/// The union of the regions grown from each of `seeds` at `tolerance`.
fn grow(
    prepared: &PreparedSmoothed,
    seeds: &[usize],
    background: &[usize],
    tolerance: f32,
) -> Vec<bool> {
    let (width, height) = (prepared.colours.width, prepared.colours.height);
    let colour = &prepared.smoothed;
    let background_colours: Vec<[f32; 3]> = background.iter().map(|&b| colour[b]).collect();
    let mut mask = vec![false; width * height];
    for &b in background {
        // A background point's own pixel is never foreground; marking it
        // visited keeps every region out of it.
        mask[b] = true;
    }
    // The region stays near the points: within their bounding box widened on
    // each side by half its size (at least an eighth of the image).
    let (mut x0, mut y0, mut x1, mut y1) = (width, height, 0, 0);
    for &p in seeds {
        let (y, x) = (p / width, p % width);
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
    }
    let margin_x = ((x1 - x0) / 2).max(width / 8);
    let margin_y = ((y1 - y0) / 2).max(height / 8);
    let (x0, y0) = (x0.saturating_sub(margin_x), y0.saturating_sub(margin_y));
    let (x1, y1) = (
        (x1 + margin_x).min(width - 1),
        (y1 + margin_y).min(height - 1),
    );
    let within = |q: usize| {
        let (y, x) = (q / width, q % width);
        (x0..=x1).contains(&x) && (y0..=y1).contains(&y)
    };
    let mut inside = vec![false; width * height];
    let mut queue = VecDeque::new();
    for &seed in seeds {
        if mask[seed] && !inside[seed] {
            continue;
        }
        let reference = colour[seed];
        let accepts = |q: usize, from: usize| {
            let to_reference = distance(colour[q], reference);
            within(q)
                && to_reference <= tolerance
                && distance(colour[q], colour[from]) <= 0.5 * tolerance
                && background_colours
                    .iter()
                    .all(|&b| to_reference < distance(colour[q], b))
        };
        // Each seed grows on its own visited set, so that a region reached
        // first by another seed (of another colour) does not block it.
        let mut visited = vec![false; width * height];
        visited[seed] = true;
        inside[seed] = true;
        mask[seed] = true;
        queue.push_back(seed);
        while let Some(p) = queue.pop_front() {
            let (y, x) = (p / width, p % width);
            let neighbours = [
                (x > 0).then(|| p - 1),
                (x + 1 < width).then(|| p + 1),
                (y > 0).then(|| p - width),
                (y + 1 < height).then(|| p + width),
            ];
            for q in neighbours.into_iter().flatten() {
                if visited[q] || background.contains(&q) {
                    continue;
                }
                visited[q] = true;
                if accepts(q, p) {
                    inside[q] = true;
                    mask[q] = true;
                    queue.push_back(q);
                }
            }
        }
    }
    for &b in background {
        if !inside[b] {
            mask[b] = false;
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 16x10: a blue rectangle (x 2..8, y 2..7) on a gradient that darkens
    /// left to right, and a second, slightly different blue square at x 11..14
    /// that a thin grey gap separates from the first.
    fn image() -> RgbImage {
        RgbImage::from_fn(16, 10, |x, y| {
            if (2..8).contains(&x) && (2..7).contains(&y) {
                image::Rgb([30, 40, 200])
            } else if (11..14).contains(&x) && (2..7).contains(&y) {
                image::Rgb([40, 50, 190])
            } else {
                let v = (200 - 8 * x) as u8;
                image::Rgb([v, v, v])
            }
        })
    }

    fn at(mask: &[bool], x: usize, y: usize) -> bool {
        mask[y * 16 + x]
    }

    #[test]
    fn a_region_fills_its_object_and_stops_at_the_boundary() {
        let proposer = RegionGrowing::default();
        let prepared = proposer.prepare(&image()).unwrap();
        let out = proposer.predict(&prepared, &[(4.0, 4.0)], &[1]).unwrap();
        for mask in &out.masks {
            // The rectangle's inside is in; the grey around it is out.
            assert!(at(mask, 3, 3) && at(mask, 6, 5) && at(mask, 4, 4));
            assert!(!at(mask, 0, 0) && !at(mask, 10, 4) && !at(mask, 15, 9));
            // The other blue square is not reached across the grey gap.
            assert!(!at(mask, 12, 4));
        }
        assert!(out.scores.iter().all(|s| (0.0..=1.0).contains(s)));
    }

    #[test]
    fn the_loosest_tolerance_follows_a_gradient_the_finest_does_not() {
        let proposer = RegionGrowing {
            tolerances: [4.0, 40.0, 120.0],
        };
        let prepared = proposer.prepare(&image()).unwrap();
        let out = proposer
            .predict(&prepared, &[(0.0, 0.0), (9.0, 9.0)], &[1, 1])
            .unwrap();
        let area = |m: &[bool]| m.iter().filter(|&&b| b).count();
        assert!(area(&out.masks[0]) < area(&out.masks[1]));
        assert!(area(&out.masks[1]) < area(&out.masks[2]));
        // Even the loosest never enters the blue rectangle from the grey.
        assert!(!at(&out.masks[2], 4, 4));
    }

    #[test]
    fn a_background_point_keeps_its_colour_out() {
        let proposer = RegionGrowing {
            tolerances: [200.0, 200.0, 200.0],
        };
        let prepared = proposer.prepare(&image()).unwrap();
        let out = proposer
            .predict(&prepared, &[(0.0, 0.0), (15.0, 0.0)], &[1, 0])
            .unwrap();
        // Light grey (left) grows, dark grey (right, the background point's) does not.
        assert!(at(&out.masks[0], 1, 0));
        assert!(!at(&out.masks[0], 15, 0) && !at(&out.masks[0], 14, 9));
    }
}
