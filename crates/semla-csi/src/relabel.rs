//! CSI's relabeling map and its per-image pipeline (`patch_master.py`,
//! `relabeling_map.py`):
//!
//! 1. detect boxes for every target class the map still holds (queries: the
//!    targets' concept strings), keep those above their class's detection
//!    threshold, class-agnostic NMS, ascending score;
//! 2. per box: while relabeling, drop it when its pseudo-label has no pixel
//!    of the entry's source class; drop it when narrower or shorter than the
//!    minimum side; drop it unless the classifier's category-restricted
//!    verdict is the target with a confidence above the threshold (no check
//!    without a threshold);
//! 3. while collecting, count the class holding more than half of the box's
//!    pseudo-label as a source candidate of the target; at the end of the
//!    collect window, each open entry takes its most common candidate of the
//!    target's category as its source, or is deleted;
//! 4. while relabeling, every pixel of the box equal to the source becomes the
//!    target, and the whole box is pasted back. Every box is cut from the
//!    pseudo-label as it was before any relabeling, and boxes are pasted in
//!    ascending score, so where boxes overlap the highest-scoring one
//!    decides (and can undo a lower one's relabeling), as in the official code.
//!
//! The edited labels feed ClassMix and the loss through
//! [`semla_selftrain::PseudoLabelEditor`]; the weights are not changed.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use image::RgbImage;
use semla_selftrain::PseudoLabelEditor;

use crate::boxes::{PixelBox, postprocess};
use crate::classify::{
    CategoryVerdict, ConceptClassifier, category_classes, category_verdict, passes_check,
};
use crate::config::{CsiConfig, Phase, Taxonomy};
use crate::detect::{BoxProposer, TeacherLabels, crop};
use crate::error::{CsiError, Result};

/// Boxes kept as pictures for the report.
pub const MAX_EXAMPLES: usize = 24;

const ENTRIES_KEY: &str = "csi.entries";
const CANDIDATES_KEY: &str = "csi.candidates";
const FINALIZED_KEY: &str = "csi.finalized";

/// Where an entry's source class came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Given in the config.
    Manual,
    /// Still to be found (an open class before the collect window ends).
    Auto,
    /// Found from the collected candidates.
    Collected,
}

/// One target class in the map.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MappingElement {
    /// The target class.
    pub target: usize,
    /// Its source class, once known.
    pub source: Option<usize>,
    /// Where the source came from.
    pub origin: Origin,
    /// `(class, boxes)` counted while collecting, in first-seen order.
    pub candidates: Vec<(usize, u64)>,
    /// Removed at finalisation (no source found).
    pub deleted: bool,
}

/// The relabeling map (`RelabelingMap`): one element per configured target.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RelabelingMap {
    /// In the config's order.
    pub elements: Vec<MappingElement>,
    /// Whether the collect window's end has been processed.
    pub finalized: bool,
}

impl RelabelingMap {
    /// The map of `config` before any collection.
    pub fn new(config: &CsiConfig) -> Self {
        Self {
            elements: config
                .entries
                .iter()
                .map(|e| MappingElement {
                    target: e.target,
                    source: e.source,
                    origin: if e.source.is_some() {
                        Origin::Manual
                    } else {
                        Origin::Auto
                    },
                    candidates: Vec::new(),
                    deleted: false,
                })
                .collect(),
            finalized: false,
        }
    }

    /// Counts one box of `target` falling on `class`.
    pub fn count_candidate(&mut self, target: usize, class: usize) {
        if let Some(e) = self.elements.iter_mut().find(|e| e.target == target) {
            match e.candidates.iter_mut().find(|(c, _)| *c == class) {
                Some((_, n)) => *n += 1,
                None => e.candidates.push((class, 1)),
            }
        }
    }

    /// The end of the collect window: every open entry keeps only candidates
    /// of its target's category, takes the most common one (the first seen
    /// among equals, as `Counter.most_common`) unless it is the target
    /// itself, and is deleted when none is left.
    pub fn finalize(&mut self, taxonomy: &Taxonomy) {
        for e in &mut self.elements {
            if e.origin != Origin::Auto {
                continue;
            }
            let category = taxonomy.category_of(e.target);
            e.candidates
                .retain(|(c, _)| taxonomy.category_of(*c) == category);
            let best = e
                .candidates
                .iter()
                .fold(None::<(usize, u64)>, |acc, &(c, n)| match acc {
                    Some((_, m)) if m >= n => acc,
                    _ => Some((c, n)),
                })
                .map(|(c, _)| c);
            match best {
                Some(class) if class != e.target => {
                    e.source = Some(class);
                    e.origin = Origin::Collected;
                }
                _ => e.deleted = true,
            }
        }
        self.finalized = true;
    }

    /// The elements a phase works on: every live one while collecting, those
    /// with a source while relabeling.
    pub fn active(&self, phase: Phase) -> Vec<&MappingElement> {
        self.elements
            .iter()
            .filter(|e| !e.deleted)
            .filter(|e| match phase {
                Phase::Off => false,
                Phase::Collect => true,
                Phase::Relabel => e.source.is_some(),
            })
            .collect()
    }
}

/// Counts of one target class's boxes through the pipeline.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct TargetStats {
    /// Boxes after threshold and NMS.
    pub detected: usize,
    /// Boxes whose pseudo-label holds the source class (relabeling only;
    /// while collecting every box passes).
    pub on_source: usize,
    /// Boxes also at least the minimum side.
    pub large_enough: usize,
    /// Boxes the classifier also agreed with: kept.
    pub kept: usize,
    /// Boxes counted as source candidates (collecting).
    pub collected: usize,
    /// Pixels turned into the target (net, after overlapping pastes).
    pub relabeled_px: usize,
}

/// A relabeled box, for the report's pictures.
#[derive(Clone, Debug)]
pub struct RelabelExample {
    /// The step it was relabeled at.
    pub step: usize,
    /// The target class.
    pub target: usize,
    /// The box.
    pub bbox: PixelBox,
    /// Its detection score.
    pub score: f32,
    /// The classifier's verdict, when it was asked.
    pub verdict: Option<CategoryVerdict>,
    /// The image inside the box.
    pub image: RgbImage,
    /// The teacher's labels inside the box, before and after.
    pub before: Vec<u16>,
    /// After relabeling.
    pub after: Vec<u16>,
}

/// What one image's pass did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageOutcome {
    /// Pixels whose label changed, and the target they now hold.
    pub changed: Vec<(usize, usize)>,
    /// Boxes kept.
    pub kept: usize,
}

/// CSI's relabeling as a [`PseudoLabelEditor`].
pub struct Relabeler<'m> {
    config: CsiConfig,
    map: RelabelingMap,
    proposer: &'m dyn BoxProposer,
    classifier: Option<&'m dyn ConceptClassifier>,
    concepts: Vec<String>,
    owners: Vec<usize>,
    stats: Vec<TargetStats>,
    examples: Vec<RelabelExample>,
    step: usize,
}

impl<'m> Relabeler<'m> {
    /// A relabeler for `config`. `classifier` is needed when an entry has a
    /// classifier threshold.
    pub fn new(
        config: CsiConfig,
        proposer: &'m dyn BoxProposer,
        classifier: Option<&'m dyn ConceptClassifier>,
    ) -> Result<Self> {
        config.validate()?;
        if classifier.is_none()
            && config
                .entries
                .iter()
                .any(|e| e.classifier_threshold.is_some())
        {
            return Err(CsiError::config(
                "an entry has a classifier threshold but no classifier was given",
            ));
        }
        let (concepts, owners) = config.taxonomy.all_concepts();
        let stats = vec![TargetStats::default(); config.taxonomy.classes.len()];
        Ok(Self {
            map: RelabelingMap::new(&config),
            config,
            proposer,
            classifier,
            concepts,
            owners,
            stats,
            examples: Vec::new(),
            step: 0,
        })
    }

    /// The map as it stands.
    pub fn map(&self) -> &RelabelingMap {
        &self.map
    }

    /// The configuration.
    pub fn config(&self) -> &CsiConfig {
        &self.config
    }

    /// Per-class counts (index = class; zero for classes no entry targets).
    pub fn stats(&self) -> &[TargetStats] {
        &self.stats
    }

    /// Up to [`MAX_EXAMPLES`] relabeled boxes, the first seen.
    pub fn examples(&self) -> &[RelabelExample] {
        &self.examples
    }

    /// The pipeline on one image in `phase` (see the module doc): edits
    /// `pseudo` in place while relabeling, counts candidates while collecting.
    pub fn apply(
        &mut self,
        phase: Phase,
        image: &RgbImage,
        pseudo: &mut [u16],
        ignore: u16,
    ) -> Result<ImageOutcome> {
        let (width, height) = (image.width() as usize, image.height() as usize);
        if pseudo.len() != width * height {
            return Err(CsiError::Invalid(format!(
                "the pseudo-label holds {} pixels, the image {width}x{height}",
                pseudo.len()
            )));
        }
        let active: Vec<MappingElement> = self.map.active(phase).into_iter().cloned().collect();
        if active.is_empty() {
            return Ok(ImageOutcome::default());
        }
        let n_classes = self.config.taxonomy.classes.len();
        let mut queries = Vec::new();
        let mut query_target = Vec::new();
        for e in &active {
            for c in &self.config.taxonomy.concepts[e.target] {
                queries.push(c.clone());
                query_target.push(e.target);
            }
        }
        let mut seeds: Vec<usize> = Vec::new();
        for e in &active {
            match e.source {
                Some(s) => seeds.push(s),
                None => seeds.extend(0..n_classes),
            }
        }
        seeds.sort_unstable();
        seeds.dedup();
        let teacher = TeacherLabels {
            labels: pseudo,
            seeds: &seeds,
        };
        let found = self.proposer.detect(image, &queries, &teacher)?;
        let threshold_of = |q: usize| {
            query_target
                .get(q)
                .and_then(|t| self.config.entries.iter().find(|e| e.target == *t))
                .map_or(f32::INFINITY, |e| e.detection_threshold)
        };
        let detections = postprocess(found, threshold_of, self.config.nms_iou);
        let original = pseudo.to_vec();
        let mut outcome = ImageOutcome::default();
        for det in detections {
            let Some(&target) = query_target.get(det.query) else {
                continue;
            };
            let Some(element) = active.iter().find(|e| e.target == target) else {
                continue;
            };
            let Some(entry) = self.config.entries.iter().find(|e| e.target == target) else {
                continue;
            };
            let bbox = det.bbox.clipped(width, height);
            let cut = cut_labels(&original, width, &bbox);
            self.stats[target].detected += 1;
            if phase == Phase::Relabel {
                let source = element.source.map(|s| s as u16);
                if !cut.iter().any(|&l| Some(l) == source) {
                    continue;
                }
            }
            self.stats[target].on_source += 1;
            if bbox.width() < self.config.min_box_side_px
                || bbox.height() < self.config.min_box_side_px
            {
                continue;
            }
            self.stats[target].large_enough += 1;
            let verdict = match (entry.classifier_threshold, self.classifier) {
                (Some(_), Some(classifier)) => {
                    let logits = classifier.score(&[crop(image, &bbox)], &self.concepts)?;
                    let row = logits.first().ok_or_else(|| CsiError::Model {
                        model: classifier.name(),
                        message: "returned no scores".into(),
                    })?;
                    category_verdict(
                        row,
                        &self.owners,
                        &category_classes(&self.config.taxonomy, target),
                    )
                }
                _ => None,
            };
            if !passes_check(verdict, target, entry.classifier_threshold) {
                continue;
            }
            self.stats[target].kept += 1;
            outcome.kept += 1;
            match phase {
                Phase::Collect => {
                    if element.origin == Origin::Auto
                        && let Some(class) = majority_class(&cut, ignore, self.config.class_ratio)
                    {
                        self.map.count_candidate(target, class);
                        self.stats[target].collected += 1;
                    }
                }
                Phase::Relabel => {
                    let Some(source) = element.source else {
                        continue;
                    };
                    let relabeled: Vec<u16> = cut
                        .iter()
                        .map(|&l| {
                            if usize::from(l) == source {
                                target as u16
                            } else {
                                l
                            }
                        })
                        .collect();
                    paste_labels(pseudo, width, &bbox, &relabeled);
                    if self.examples.len() < MAX_EXAMPLES {
                        self.examples.push(RelabelExample {
                            step: self.step,
                            target,
                            bbox,
                            score: det.score,
                            verdict,
                            image: crop(image, &bbox),
                            before: cut,
                            after: relabeled,
                        });
                    }
                }
                Phase::Off => {}
            }
        }
        for (i, (&now, &was)) in pseudo.iter().zip(&original).enumerate() {
            if now != was {
                outcome.changed.push((i, usize::from(now)));
            }
        }
        for &(_, class) in &outcome.changed {
            if let Some(s) = self.stats.get_mut(class) {
                s.relabeled_px += 1;
            }
        }
        Ok(outcome)
    }
}

/// The labels inside `bbox`, row-major.
pub fn cut_labels(labels: &[u16], width: usize, bbox: &PixelBox) -> Vec<u16> {
    let mut out = Vec::with_capacity(bbox.area());
    for y in bbox.y0..bbox.y1 {
        out.extend_from_slice(&labels[y * width + bbox.x0..y * width + bbox.x1]);
    }
    out
}

/// Writes `cut` (row-major, the size of `bbox`) into `labels` at `bbox`.
pub fn paste_labels(labels: &mut [u16], width: usize, bbox: &PixelBox, cut: &[u16]) {
    let w = bbox.width();
    for (row, y) in (bbox.y0..bbox.y1).enumerate() {
        labels[y * width + bbox.x0..y * width + bbox.x1]
            .copy_from_slice(&cut[row * w..(row + 1) * w]);
    }
}

/// The class holding more than `ratio` of the box's pixels (all pixels
/// count in the share; the ignore label is never a candidate).
pub fn majority_class(cut: &[u16], ignore: u16, ratio: f32) -> Option<usize> {
    let mut counts: Vec<(u16, usize)> = Vec::new();
    for &l in cut {
        match counts.iter_mut().find(|(c, _)| *c == l) {
            Some((_, n)) => *n += 1,
            None => counts.push((l, 1)),
        }
    }
    counts
        .into_iter()
        .find(|&(c, n)| c != ignore && n as f32 / cut.len().max(1) as f32 > ratio)
        .map(|(c, _)| usize::from(c))
}

impl PseudoLabelEditor for Relabeler<'_> {
    fn edit(
        &mut self,
        step: usize,
        image: &RgbImage,
        pseudo: &mut [u16],
        ignore: u16,
    ) -> semla_selftrain::Result<()> {
        self.step = step;
        if !self.map.finalized
            && !self.config.collect.is_empty()
            && step as i64 >= self.config.collect.end
        {
            self.map.finalize(&self.config.taxonomy);
        }
        let phase = self.config.phase(step);
        self.apply(phase, image, pseudo, ignore)
            .map(|_| ())
            .map_err(|e| semla_selftrain::RefineError::Invalid(format!("CSI relabeling: {e}")))
    }

    fn state_tensors(&self) -> semla_selftrain::Result<Vec<(String, Tensor)>> {
        let code = |o: Origin| match o {
            Origin::Manual => 0i64,
            Origin::Auto => 1,
            Origin::Collected => 2,
        };
        let mut entries = Vec::new();
        let mut candidates = vec![-1i64, -1, -1];
        for (i, e) in self.map.elements.iter().enumerate() {
            entries.extend([
                e.source.map_or(-1, |s| s as i64),
                code(e.origin),
                i64::from(e.deleted),
            ]);
            for &(class, n) in &e.candidates {
                candidates.extend([i as i64, class as i64, n as i64]);
            }
        }
        let rows = |v: Vec<i64>| -> semla_selftrain::Result<Tensor> {
            let n = v.len() / 3;
            Ok(Tensor::from_vec(v, (n, 3), &Device::Cpu)?)
        };
        Ok(vec![
            (ENTRIES_KEY.into(), rows(entries)?),
            (CANDIDATES_KEY.into(), rows(candidates)?),
            (
                FINALIZED_KEY.into(),
                Tensor::new(&[i64::from(self.map.finalized)], &Device::Cpu)?,
            ),
        ])
    }

    fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> semla_selftrain::Result<()> {
        let bad = |m: &str| semla_selftrain::RefineError::Invalid(format!("CSI state: {m}"));
        let get = |key: &str| -> semla_selftrain::Result<Vec<Vec<i64>>> {
            let t = tensors
                .get(key)
                .ok_or_else(|| bad(&format!("lacks {key}")))?;
            Ok(t.to_vec2::<i64>()?)
        };
        let entries = get(ENTRIES_KEY)?;
        if entries.len() != self.map.elements.len() {
            return Err(bad(&format!(
                "it holds {} entries, the config {}",
                entries.len(),
                self.map.elements.len()
            )));
        }
        let n_classes = self.config.taxonomy.classes.len() as i64;
        let class = |v: i64| (0..n_classes).contains(&v).then_some(v as usize);
        for (e, row) in self.map.elements.iter_mut().zip(&entries) {
            e.source = class(row[0]);
            e.origin = match row[1] {
                0 => Origin::Manual,
                1 => Origin::Auto,
                2 => Origin::Collected,
                other => return Err(bad(&format!("unknown origin {other}"))),
            };
            e.deleted = row[2] != 0;
            e.candidates.clear();
        }
        for row in get(CANDIDATES_KEY)?.iter().skip(1) {
            let (Some(element), Some(c)) = (
                usize::try_from(row[0])
                    .ok()
                    .and_then(|i| self.map.elements.get_mut(i)),
                class(row[1]),
            ) else {
                return Err(bad("a candidate names an unknown entry or class"));
            };
            element.candidates.push((c, row[2].max(0) as u64));
        }
        let finalized = tensors
            .get(FINALIZED_KEY)
            .ok_or_else(|| bad(&format!("lacks {FINALIZED_KEY}")))?
            .to_vec1::<i64>()?;
        self.map.finalized = finalized.first().is_some_and(|&f| f != 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boxes::Detection;
    use crate::config::{RelabelEntry, Window};

    /// Returns fixed detections and records the queries and seeds it was given.
    struct Scripted {
        detections: Vec<Detection>,
        seen: std::cell::RefCell<Vec<(Vec<String>, Vec<usize>)>>,
    }

    impl BoxProposer for Scripted {
        fn detect(
            &self,
            _image: &RgbImage,
            queries: &[String],
            teacher: &TeacherLabels<'_>,
        ) -> Result<Vec<Detection>> {
            self.seen
                .borrow_mut()
                .push((queries.to_vec(), teacher.seeds.to_vec()));
            Ok(self.detections.clone())
        }
    }

    /// Gives every patch the same logits, one per concept by name.
    struct Fixed(HashMap<&'static str, f32>);

    impl ConceptClassifier for Fixed {
        fn score(&self, patches: &[RgbImage], concepts: &[String]) -> Result<Vec<Vec<f32>>> {
            let row: Vec<f32> = concepts
                .iter()
                .map(|c| self.0.get(c.as_str()).copied().unwrap_or(f32::NEG_INFINITY))
                .collect();
            Ok(vec![row; patches.len()])
        }

        fn name(&self) -> String {
            "fixed".into()
        }
    }

    /// 3 classes: 0 "road" (flat), 1 "car" and 2 "truck" (vehicle).
    fn taxonomy() -> Taxonomy {
        Taxonomy {
            classes: vec!["road".into(), "car".into(), "truck".into()],
            categories: vec![("flat".into(), vec![0]), ("vehicle".into(), vec![1, 2])],
            concepts: vec![
                vec!["road".into()],
                vec!["car".into()],
                vec!["truck".into(), "lorry".into()],
            ],
        }
    }

    fn entry(source: Option<usize>, det: f32, cls: Option<f32>) -> RelabelEntry {
        RelabelEntry {
            target: 2,
            source,
            method: "components".into(),
            detection_threshold: det,
            classifier_threshold: cls,
        }
    }

    fn config(
        source: Option<usize>,
        cls: Option<f32>,
        collect: Window,
        relabel: Window,
    ) -> CsiConfig {
        let mut c =
            CsiConfig::new(taxonomy(), vec![entry(source, 0.1, cls)], collect, relabel).unwrap();
        c.min_box_side_px = 2;
        c
    }

    fn det(x0: usize, y0: usize, x1: usize, y1: usize, score: f32) -> Detection {
        Detection {
            bbox: PixelBox { x0, y0, x1, y1 },
            query: 0,
            score,
        }
    }

    fn scripted(detections: Vec<Detection>) -> Scripted {
        Scripted {
            detections,
            seen: Default::default(),
        }
    }

    fn truck_classifier() -> Fixed {
        Fixed(HashMap::from([
            ("road", 0.0),
            ("car", 0.0),
            ("truck", 3.0),
            ("lorry", 0.0),
        ]))
    }

    /// A 4x4 image whose pseudo-label is car (1) on the left half, road (0) on the right.
    fn scene() -> (RgbImage, Vec<u16>) {
        let labels = (0..16).map(|i| if i % 4 < 2 { 1 } else { 0 }).collect();
        (RgbImage::new(4, 4), labels)
    }

    const ALWAYS: Window = Window {
        start: 0,
        end: 1000,
    };

    #[test]
    fn relabels_only_source_pixels_inside_the_box() {
        let (image, mut pseudo) = scene();
        let proposer = scripted(vec![det(1, 0, 3, 2, 0.9)]);
        let classifier = truck_classifier();
        let mut r = Relabeler::new(
            config(Some(1), Some(0.5), Window::OFF, ALWAYS),
            &proposer,
            Some(&classifier),
        )
        .unwrap();
        let out = r.apply(Phase::Relabel, &image, &mut pseudo, 255).unwrap();
        // Box columns 1..3, rows 0..2: only (x=1, y=0) and (x=1, y=1) are car.
        assert_eq!(out.changed, vec![(1, 2), (5, 2)]);
        assert_eq!(pseudo[..8], [1, 2, 0, 0, 1, 2, 0, 0]);
        assert_eq!(pseudo[8..], [1, 1, 0, 0, 1, 1, 0, 0]);
        assert_eq!(r.stats()[2].relabeled_px, 2);
        assert_eq!(r.stats()[2].kept, 1);
        // The queries are the target's concepts, the seeds its source.
        let seen = proposer.seen.borrow();
        assert_eq!(
            seen[0],
            (vec!["truck".to_string(), "lorry".to_string()], vec![1])
        );
    }

    #[test]
    fn pseudo_label_filter_drops_boxes_without_source_pixels_when_relabeling() {
        let (image, mut pseudo) = scene();
        // Columns 2..4 are all road.
        let proposer = scripted(vec![det(2, 0, 4, 4, 0.9)]);
        let mut r =
            Relabeler::new(config(Some(1), None, Window::OFF, ALWAYS), &proposer, None).unwrap();
        r.apply(Phase::Relabel, &image, &mut pseudo, 255).unwrap();
        assert_eq!(r.stats()[2].detected, 1);
        assert_eq!(r.stats()[2].on_source, 0);
        assert_eq!(pseudo, scene().1);
    }

    #[test]
    fn size_filter_needs_both_sides_at_least_the_minimum() {
        let (image, mut pseudo) = scene();
        let proposer = scripted(vec![det(0, 0, 1, 2, 0.9), det(0, 2, 2, 4, 0.8)]);
        let mut r =
            Relabeler::new(config(Some(1), None, Window::OFF, ALWAYS), &proposer, None).unwrap();
        r.apply(Phase::Relabel, &image, &mut pseudo, 255).unwrap();
        // The 1-wide box fails; the 2x2 one (exactly the minimum) passes.
        assert_eq!(r.stats()[2].on_source, 2);
        assert_eq!(r.stats()[2].large_enough, 1);
        assert_eq!(pseudo[..8], [1, 1, 0, 0, 1, 1, 0, 0]);
        assert_eq!(pseudo[8..], [2, 2, 0, 0, 2, 2, 0, 0]);
    }

    #[test]
    fn classifier_check_is_category_restricted_and_strict() {
        let (image, _) = scene();
        let proposer = scripted(vec![det(0, 0, 2, 4, 0.9)]);
        // Among vehicle concepts: car 0, truck 3, lorry 0 -> truck wins with
        // e^3 / (e^3 + 2) = 0.9094; road's huge logit is outside the category.
        let mut logits = truck_classifier();
        logits.0.insert("road", 50.0);
        let p = 3f64.exp() / (3f64.exp() + 2.0);
        for (threshold, relabels) in [
            (Some(0.9), true),
            (Some((p * 1e4).round() as f32 / 1e4), false),
            (None, true),
        ] {
            let mut pseudo = scene().1;
            let mut r = Relabeler::new(
                config(Some(1), threshold, Window::OFF, ALWAYS),
                &proposer,
                Some(&logits),
            )
            .unwrap();
            r.apply(Phase::Relabel, &image, &mut pseudo, 255).unwrap();
            assert_eq!(pseudo[0] == 2, relabels, "threshold {threshold:?}");
        }
        // A car verdict fails whatever the threshold.
        let car = Fixed(HashMap::from([
            ("car", 5.0),
            ("truck", 0.0),
            ("lorry", 0.0),
        ]));
        let mut pseudo = scene().1;
        let mut r = Relabeler::new(
            config(Some(1), Some(0.0), Window::OFF, ALWAYS),
            &proposer,
            Some(&car),
        )
        .unwrap();
        r.apply(Phase::Relabel, &image, &mut pseudo, 255).unwrap();
        assert_eq!(pseudo, scene().1);
        // A threshold without a classifier cannot run.
        assert!(
            Relabeler::new(
                config(Some(1), Some(0.5), Window::OFF, ALWAYS),
                &proposer,
                None
            )
            .is_err()
        );
    }

    #[test]
    fn overlapping_boxes_paste_in_ascending_score_from_the_unrelabeled_copy() {
        // The proposer returns the boxes in any order; post-processing sorts them
        // ascending. NMS at 0.3 keeps both: box A (0..2 x 0..2) and box B
        // (1..3 x 0..4) overlap by 2 px (IoU 2/10).
        let (image, _) = scene();
        let a = det(0, 0, 2, 2, 0.9);
        let b = det(1, 0, 3, 4, 0.5);
        let proposer = scripted(vec![a.clone(), b.clone()]);
        let mut pseudo = scene().1;
        let mut r =
            Relabeler::new(config(Some(1), None, Window::OFF, ALWAYS), &proposer, None).unwrap();
        r.apply(Phase::Relabel, &image, &mut pseudo, 255).unwrap();
        // B (0.5) pastes first, then A (0.9) pastes its own relabeled copy;
        // both cut from the original, so they agree: all car pixels in A or B are truck.
        assert_eq!(pseudo, vec![2, 2, 0, 0, 2, 2, 0, 0, 1, 2, 0, 0, 1, 2, 0, 0]);
        // Where two targets share a source, the later (higher-scoring) box's
        // paste, cut from the original, overwrites the earlier box's labels.
        let taxonomy = Taxonomy {
            classes: vec!["road".into(), "car".into(), "truck".into(), "bus".into()],
            categories: vec![("flat".into(), vec![0]), ("vehicle".into(), vec![1, 2, 3])],
            concepts: vec![
                vec!["road".into()],
                vec!["car".into()],
                vec!["truck".into()],
                vec!["bus".into()],
            ],
        };
        let mut config = CsiConfig::new(
            taxonomy,
            vec![
                entry(Some(1), 0.1, None),
                RelabelEntry {
                    target: 3,
                    ..entry(Some(1), 0.1, None)
                },
            ],
            Window::OFF,
            ALWAYS,
        )
        .unwrap();
        config.min_box_side_px = 1;
        // Query 0 = truck (box B, score 0.5), query 1 = bus (box A, score 0.9).
        let proposer = scripted(vec![
            Detection { query: 1, ..a },
            Detection { query: 0, ..b },
        ]);
        let mut pseudo = scene().1;
        let mut r = Relabeler::new(config, &proposer, None).unwrap();
        r.apply(Phase::Relabel, &image, &mut pseudo, 255).unwrap();
        // B made column 1 truck; A, pasted last from the original copy, makes
        // rows 0..2 of columns 0..2 bus, overwriting B's truck at (1, 0), (1, 1).
        assert_eq!(pseudo, vec![3, 3, 0, 0, 3, 3, 0, 0, 1, 2, 0, 0, 1, 2, 0, 0]);
    }

    #[test]
    fn collecting_counts_majorities_and_finalisation_picks_the_category_favourite() {
        let (image, _) = scene();
        // Box 1: all car (majority car). Box 2: half car, half road: no class
        // above half. Box 3: all road. No two overlap by more than NMS allows.
        let proposer = scripted(vec![
            det(0, 0, 2, 4, 0.9),
            det(1, 0, 3, 2, 0.8),
            det(2, 2, 4, 4, 0.7),
        ]);
        let collect = Window { start: 0, end: 3 };
        let relabel = Window { start: 3, end: 10 };
        let mut r = Relabeler::new(config(None, None, collect, relabel), &proposer, None).unwrap();
        let mut pseudo = scene().1;
        // While collecting, the pseudo-label filter is skipped and nothing is edited.
        r.edit(0, &image, &mut pseudo, 255).unwrap();
        assert_eq!(pseudo, scene().1);
        assert_eq!(r.stats()[2].on_source, 3);
        // Every class is a seed while the source is unknown.
        assert_eq!(proposer.seen.borrow()[0].1, vec![0, 1, 2]);
        r.edit(1, &image, &mut pseudo, 255).unwrap();
        // Road (another category) was counted twice, car twice, in first-seen
        // order (ascending score: the road box comes first).
        assert_eq!(r.map().elements[0].candidates, vec![(0, 2), (1, 2)]);
        // Step 3 = the collect window's end: finalised before relabeling.
        r.edit(3, &image, &mut pseudo, 255).unwrap();
        let e = &r.map().elements[0];
        assert_eq!(
            (e.source, e.origin, e.candidates.clone()),
            (Some(1), Origin::Collected, vec![(1, 2)])
        );
        assert_eq!(pseudo[0], 2, "relabeling starts at collect_end");
    }

    #[test]
    fn finalisation_deletes_entries_without_a_category_candidate_and_ties_go_to_the_first_seen() {
        let mut map = RelabelingMap::new(&config(
            None,
            None,
            Window { start: 0, end: 1 },
            Window::OFF,
        ));
        map.count_candidate(2, 0);
        map.finalize(&taxonomy());
        assert!(map.elements[0].deleted);
        assert!(map.active(Phase::Relabel).is_empty() && map.active(Phase::Collect).is_empty());
        // The target itself as favourite deletes the entry too.
        let mut map = RelabelingMap::new(&config(
            None,
            None,
            Window { start: 0, end: 1 },
            Window::OFF,
        ));
        map.count_candidate(2, 2);
        map.count_candidate(2, 2);
        map.count_candidate(2, 1);
        map.finalize(&taxonomy());
        assert!(map.elements[0].deleted);
        let mut map = RelabelingMap::new(&config(
            None,
            None,
            Window { start: 0, end: 1 },
            Window::OFF,
        ));
        map.count_candidate(2, 1);
        map.count_candidate(2, 2);
        map.finalize(&taxonomy());
        assert_eq!(map.elements[0].source, Some(1));
    }

    #[test]
    fn majority_needs_more_than_the_ratio_and_never_names_ignore() {
        assert_eq!(majority_class(&[1, 1, 0, 0], 255, 0.5), None);
        assert_eq!(majority_class(&[1, 1, 1, 0], 255, 0.5), Some(1));
        assert_eq!(majority_class(&[255, 255, 255, 1], 255, 0.5), None);
        assert_eq!(majority_class(&[1, 1, 255, 255, 255], 255, 0.3), Some(1));
    }

    #[test]
    fn state_round_trips_through_checkpoint_tensors() {
        let (image, _) = scene();
        let proposer = scripted(vec![det(0, 0, 2, 4, 0.9)]);
        let collect = Window { start: 0, end: 3 };
        let mut r = Relabeler::new(
            config(None, None, collect, Window { start: 3, end: 9 }),
            &proposer,
            None,
        )
        .unwrap();
        let mut pseudo = scene().1;
        r.edit(0, &image, &mut pseudo, 255).unwrap();
        let saved: HashMap<String, Tensor> = r.state_tensors().unwrap().into_iter().collect();
        let mut fresh = Relabeler::new(
            config(None, None, collect, Window { start: 3, end: 9 }),
            &proposer,
            None,
        )
        .unwrap();
        fresh.load_state(&saved).unwrap();
        assert_eq!(fresh.map(), r.map());
        r.edit(3, &image, &mut pseudo, 255).unwrap();
        let saved: HashMap<String, Tensor> = r.state_tensors().unwrap().into_iter().collect();
        fresh.load_state(&saved).unwrap();
        assert_eq!(fresh.map(), r.map());
        assert!(fresh.map().finalized);
    }
}
