//! The box proposer interface (`detect(image, queries) -> [(box, query,
//! score)]`, OWL-ViT's role in CSI) and a weight-free proposer for when no
//! open-vocabulary detector can be loaded: boxes around the teacher's own
//! connected regions, scored by a concept classifier on each crop.

use image::RgbImage;
use semla_selftrain::components::components;

use crate::boxes::{Detection, PixelBox};
use crate::classify::ConceptClassifier;
use crate::error::{CsiError, Result};

/// The teacher's label map of the image being searched, and the classes
/// whose regions may hold the queried objects (a detector that looks at
/// pixels only ignores it).
pub struct TeacherLabels<'a> {
    /// Row-major labels, `height x width` of the image.
    pub labels: &'a [u16],
    /// Classes to look in.
    pub seeds: &'a [usize],
}

/// Finds boxes of queried concepts in an image.
pub trait BoxProposer {
    /// Every box found, in the image's pixels, with the query it answers and
    /// its score in `[0, 1]` (before any threshold).
    fn detect(
        &self,
        image: &RgbImage,
        queries: &[String],
        teacher: &TeacherLabels<'_>,
    ) -> Result<Vec<Detection>>;
}

/// Boxes around the 4-connected regions of the teacher's seed classes, each
/// scored by `classifier` on its crop: the probability of the best query
/// among the queries and `vocabulary` together (a softmax over all of them),
/// so that a crop of something the vocabulary names better scores low.
pub struct ComponentBoxes<'c> {
    /// Scores the crops.
    pub classifier: &'c dyn ConceptClassifier,
    /// Other concepts a crop may depict (the taxonomy's concept strings).
    pub vocabulary: Vec<String>,
    /// Regions smaller than this are skipped. Default 16 px.
    pub min_area_px: usize,
    /// At most this many regions per image, the largest first. Default 8.
    pub max_boxes: usize,
    /// Boxes covering more than this share of the image are skipped: an
    /// object box is not the scene. Default 0.25.
    pub max_box_fraction: f32,
    /// Each box grows by this share of its side on every edge (context for
    /// the classifier). Default 0.1.
    pub margin: f32,
}

impl<'c> ComponentBoxes<'c> {
    /// A proposer with the documented defaults.
    pub fn new(classifier: &'c dyn ConceptClassifier, vocabulary: Vec<String>) -> Self {
        Self {
            classifier,
            vocabulary,
            min_area_px: 16,
            max_boxes: 8,
            max_box_fraction: 0.25,
            margin: 0.1,
        }
    }

    /// The boxes of the teacher's seed regions, largest region first.
    pub fn region_boxes(
        &self,
        teacher: &TeacherLabels<'_>,
        width: usize,
        height: usize,
    ) -> Vec<PixelBox> {
        let mut regions: Vec<(usize, PixelBox)> = Vec::new();
        for &class in teacher.seeds {
            let mask: Vec<bool> = teacher
                .labels
                .iter()
                .map(|&l| usize::from(l) == class)
                .collect();
            for component in components(&mask, height, width) {
                if component.area() < self.min_area_px {
                    continue;
                }
                let bbox = component_box(&component.pixels, width, height, self.margin);
                if bbox.area() as f32 > self.max_box_fraction * (width * height) as f32 {
                    continue;
                }
                regions.push((component.area(), bbox));
            }
        }
        // Largest first; equal areas keep raster order (a stable sort).
        regions.sort_by_key(|r| std::cmp::Reverse(r.0));
        regions.truncate(self.max_boxes);
        regions.into_iter().map(|(_, b)| b).collect()
    }
}

/// The bounding box of `pixels` (row-major indices in a `width x height`
/// image), grown by `margin` of its side on every edge and clipped to the image.
pub fn component_box(pixels: &[usize], width: usize, height: usize, margin: f32) -> PixelBox {
    let (mut x0, mut y0, mut x1, mut y1) = (width, height, 0, 0);
    for &p in pixels {
        let (y, x) = (p / width, p % width);
        x0 = x0.min(x);
        y0 = y0.min(y);
        x1 = x1.max(x + 1);
        y1 = y1.max(y + 1);
    }
    let grow = |side: usize| (side as f32 * margin).round() as usize;
    let (gx, gy) = (grow(x1.saturating_sub(x0)), grow(y1.saturating_sub(y0)));
    PixelBox {
        x0: x0.saturating_sub(gx),
        y0: y0.saturating_sub(gy),
        x1: x1 + gx,
        y1: y1 + gy,
    }
    .clipped(width, height)
}

/// The crop of `image` inside `bbox`.
pub fn crop(image: &RgbImage, bbox: &PixelBox) -> RgbImage {
    image::imageops::crop_imm(
        image,
        bbox.x0 as u32,
        bbox.y0 as u32,
        bbox.width() as u32,
        bbox.height() as u32,
    )
    .to_image()
}

impl BoxProposer for ComponentBoxes<'_> {
    fn detect(
        &self,
        image: &RgbImage,
        queries: &[String],
        teacher: &TeacherLabels<'_>,
    ) -> Result<Vec<Detection>> {
        let (width, height) = (image.width() as usize, image.height() as usize);
        if teacher.labels.len() != width * height {
            return Err(CsiError::Invalid(format!(
                "the teacher's labels hold {} pixels, the image {width}x{height}",
                teacher.labels.len()
            )));
        }
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        let boxes = self.region_boxes(teacher, width, height);
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        let crops: Vec<RgbImage> = boxes.iter().map(|b| crop(image, b)).collect();
        let mut concepts = queries.to_vec();
        concepts.extend(
            self.vocabulary
                .iter()
                .filter(|v| !queries.contains(v))
                .cloned(),
        );
        let logits = self.classifier.score(&crops, &concepts)?;
        let mut out = Vec::with_capacity(boxes.len());
        for (bbox, row) in boxes.into_iter().zip(logits) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            if !max.is_finite() {
                continue;
            }
            let total: f32 = row.iter().map(|l| (l - max).exp()).sum();
            let Some((query, best)) = row[..queries.len()].iter().enumerate().fold(
                None::<(usize, f32)>,
                |acc, (i, &l)| match acc {
                    Some((_, b)) if b >= l => acc,
                    _ => Some((i, l)),
                },
            ) else {
                continue;
            };
            if best.is_finite() {
                out.push(Detection {
                    bbox,
                    query,
                    score: (best - max).exp() / total,
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scores every patch by its mean red value for "red" and blue for "blue".
    struct ColourClassifier;

    impl ConceptClassifier for ColourClassifier {
        fn score(&self, patches: &[RgbImage], concepts: &[String]) -> Result<Vec<Vec<f32>>> {
            Ok(patches
                .iter()
                .map(|p| {
                    let n = (p.width() * p.height()) as f32;
                    let mean =
                        |c: usize| p.pixels().map(|px| f32::from(px[c])).sum::<f32>() / n / 25.0;
                    concepts
                        .iter()
                        .map(|c| match c.as_str() {
                            "red" => mean(0),
                            "blue" => mean(2),
                            _ => f32::NEG_INFINITY,
                        })
                        .collect()
                })
                .collect())
        }

        fn name(&self) -> String {
            "colour".into()
        }
    }

    #[test]
    fn boxes_come_from_seed_regions_and_are_scored_on_their_crops() {
        // 20x20 image: a red 6x5 region (label 1) and a blue 4x4 one (label 1),
        // a label-2 region that is not a seed, and a tiny label-1 speck.
        let (w, h) = (20usize, 20usize);
        let mut labels = vec![0u16; w * h];
        let mut image = RgbImage::new(w as u32, h as u32);
        for y in 2..7 {
            for x in 1..7 {
                labels[y * w + x] = 1;
                image.put_pixel(x as u32, y as u32, image::Rgb([250, 0, 0]));
            }
        }
        for y in 10..14 {
            for x in 12..16 {
                labels[y * w + x] = 1;
                image.put_pixel(x as u32, y as u32, image::Rgb([0, 0, 250]));
            }
        }
        for y in 15..20 {
            for x in 0..5 {
                labels[y * w + x] = 2;
            }
        }
        labels[19 * w + 19] = 1;
        let classifier = ColourClassifier;
        let mut proposer = ComponentBoxes::new(&classifier, vec!["blue".into()]);
        proposer.margin = 0.0;
        let teacher = TeacherLabels {
            labels: &labels,
            seeds: &[1],
        };
        let boxes = proposer.region_boxes(&teacher, w, h);
        assert_eq!(
            boxes,
            vec![
                PixelBox {
                    x0: 1,
                    y0: 2,
                    x1: 7,
                    y1: 7
                },
                PixelBox {
                    x0: 12,
                    y0: 10,
                    x1: 16,
                    y1: 14
                }
            ]
        );
        let found = proposer.detect(&image, &["red".into()], &teacher).unwrap();
        assert_eq!(found.len(), 2);
        // The red crop: red 10 vs blue 0 -> ~1; the blue crop: ~0.
        assert!(found[0].score > 0.99 && found[0].query == 0);
        assert!(found[1].score < 0.01);
        // A margin grows boxes, clipped to the image; big boxes are skipped.
        proposer.margin = 0.5;
        let grown = proposer.region_boxes(&teacher, w, h);
        assert_eq!(
            grown[0],
            PixelBox {
                x0: 0,
                y0: 0,
                x1: 10,
                y1: 10
            }
        );
        proposer.max_box_fraction = 0.2;
        assert_eq!(proposer.region_boxes(&teacher, w, h).len(), 1);
        let wrong = TeacherLabels {
            labels: &labels[1..],
            seeds: &[1],
        };
        assert!(proposer.detect(&image, &["red".into()], &wrong).is_err());
    }
}
