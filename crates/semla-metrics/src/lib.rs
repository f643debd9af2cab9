//! # semla-metrics
//!
//! A streaming confusion matrix over a whole split, and the two mIoU definitions SemLA
//! reports ([`Definition`]):
//!
//! - [`Definition::Cityscapes`] (cityscapesScripts, used for Cityscapes, ACDC and MUSES):
//!   per class `IoU = tp / (tp + fp + fn)`; a class predicted somewhere but absent from
//!   the ground truth has `tp = 0, fp > 0` and counts with IoU 0; only classes absent
//!   from both ground truth and prediction (denominator 0) are dropped from the mean.
//! - [`Definition::Detectron2`] (detectron2 `SemSegEvaluator`, used for BDD, MV, ADE,
//!   IDD, PC59, NYU, COCONut): classes absent from the ground truth are left out of the
//!   mean, whatever was predicted.
//!
//! In both, pixels whose ground truth is the ignore value never count, neither for the
//! class they are predicted as nor anywhere else. Accuracies are the same under both
//! definitions (detectron2's): pixel accuracy `Σ tp / Σ gt pixels`; mean accuracy the mean
//! of `tp_c / gt_c` over classes present in the ground truth. Frequency-weighted IoU is
//! `Σ_c (gt_c / Σ gt) · IoU_c` over the classes the definition scores.
//!
//! All scores are fractions in `[0, 1]`; multiply by 100 for SemLA's percentages.

use serde::Serialize;

/// Errors accumulating a prediction.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetricsError {
    /// Prediction and ground truth have different pixel counts.
    #[error("prediction has {prediction} pixels but the ground truth has {ground_truth}")]
    SizeMismatch {
        /// Pixels in the prediction.
        prediction: usize,
        /// Pixels in the ground truth.
        ground_truth: usize,
    },
    /// A predicted value is not a class index.
    #[error("prediction value {value} at pixel {pixel} is not a class (expected 0..{num_classes})")]
    PredictionOutOfRange {
        /// The value.
        value: u16,
        /// Its index in the flattened map.
        pixel: usize,
        /// Number of classes.
        num_classes: usize,
    },
    /// Two matrices with different class counts cannot be merged.
    #[error("cannot merge a {0}-class confusion matrix into a {1}-class one")]
    ClassCountMismatch(usize, usize),
    /// Stored counts are not the `K x K` of a matrix of `K` classes.
    #[error("{found} counts for a {num_classes}-class confusion matrix (expected {num_classes}²)")]
    CountsLength {
        /// Number of classes `K`.
        num_classes: usize,
        /// Counts given.
        found: usize,
    },
}

/// Which mIoU definition to apply (see the crate documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Definition {
    /// cityscapesScripts: predicted-but-absent classes count with IoU 0.
    Cityscapes,
    /// detectron2 `SemSegEvaluator`: classes absent from the ground truth are left out.
    Detectron2,
}

impl std::str::FromStr for Definition {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cityscapes" => Ok(Definition::Cityscapes),
            "detectron2" => Ok(Definition::Detectron2),
            other => Err(format!(
                "unknown definition `{other}` (expected cityscapes or detectron2)"
            )),
        }
    }
}

/// What one [`ConfusionMatrix::accumulate`] call counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AccumulateReport {
    /// Pixels counted in the matrix.
    pub counted: u64,
    /// Pixels whose ground truth is the ignore value.
    pub ignored: u64,
    /// Pixels whose ground truth is neither a class nor the ignore value (treated as ignored).
    pub invalid_ground_truth: u64,
}

/// A `K x K` confusion matrix of pixel counts, indexed `[ground truth][prediction]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfusionMatrix {
    num_classes: usize,
    counts: Vec<u64>,
    ignored: u64,
    invalid_ground_truth: u64,
}

impl ConfusionMatrix {
    /// An empty matrix for classes `0..num_classes`.
    pub fn new(num_classes: usize) -> Self {
        Self {
            num_classes,
            counts: vec![0; num_classes * num_classes],
            ignored: 0,
            invalid_ground_truth: 0,
        }
    }

    /// A matrix from stored counts (row-major `[ground truth][prediction]`, `K²`
    /// values) and its skipped-pixel totals, e.g. one saved by another worker.
    pub fn from_counts(
        num_classes: usize,
        counts: Vec<u64>,
        ignored: u64,
        invalid_ground_truth: u64,
    ) -> Result<Self, MetricsError> {
        if num_classes.checked_mul(num_classes) != Some(counts.len()) {
            return Err(MetricsError::CountsLength {
                num_classes,
                found: counts.len(),
            });
        }
        Ok(Self {
            num_classes,
            counts,
            ignored,
            invalid_ground_truth,
        })
    }

    /// Number of classes `K`.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Every count, row-major `[ground truth][prediction]` (`K²` values).
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Pixels with ground truth `gt` predicted as `pred`.
    pub fn count(&self, gt: usize, pred: usize) -> u64 {
        self.counts[gt * self.num_classes + pred]
    }

    /// Pixels skipped because their ground truth is the ignore value.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// Pixels skipped because their ground truth was outside the classes.
    pub fn invalid_ground_truth(&self) -> u64 {
        self.invalid_ground_truth
    }

    /// Adds one image: `prediction` and `ground_truth` are label maps of the same pixels
    /// (any shape, flattened the same way). Ground-truth pixels equal to `ignore` are
    /// skipped; ground-truth values `>= K` other than `ignore` are skipped too and counted
    /// in [`AccumulateReport::invalid_ground_truth`]. A prediction value `>= K` anywhere
    /// (even on an ignored pixel: the prediction itself is malformed) is an error and
    /// leaves the matrix unchanged.
    pub fn accumulate(
        &mut self,
        prediction: &[u16],
        ground_truth: &[u16],
        ignore: Option<u16>,
    ) -> Result<AccumulateReport, MetricsError> {
        if prediction.len() != ground_truth.len() {
            return Err(MetricsError::SizeMismatch {
                prediction: prediction.len(),
                ground_truth: ground_truth.len(),
            });
        }
        let k = self.num_classes;
        if let Some(pixel) = prediction.iter().position(|&p| p as usize >= k) {
            return Err(MetricsError::PredictionOutOfRange {
                value: prediction[pixel],
                pixel,
                num_classes: k,
            });
        }
        let mut report = AccumulateReport::default();
        for (&pred, &gt) in prediction.iter().zip(ground_truth) {
            if Some(gt) == ignore {
                report.ignored += 1;
            } else if gt as usize >= k {
                report.invalid_ground_truth += 1;
            } else {
                self.counts[gt as usize * k + pred as usize] += 1;
                report.counted += 1;
            }
        }
        self.ignored += report.ignored;
        self.invalid_ground_truth += report.invalid_ground_truth;
        Ok(report)
    }

    /// Adds another matrix's counts (e.g. from another worker).
    pub fn merge(&mut self, other: &ConfusionMatrix) -> Result<(), MetricsError> {
        if other.num_classes != self.num_classes {
            return Err(MetricsError::ClassCountMismatch(
                other.num_classes,
                self.num_classes,
            ));
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.ignored += other.ignored;
        self.invalid_ground_truth += other.invalid_ground_truth;
        Ok(())
    }

    /// Per-class statistics and the summary scores under `definition`.
    pub fn scores(&self, definition: Definition) -> Scores {
        let k = self.num_classes;
        let mut classes = Vec::with_capacity(k);
        for c in 0..k {
            let tp = self.count(c, c);
            let gt_pixels: u64 = (0..k).map(|p| self.count(c, p)).sum();
            let predicted_pixels: u64 = (0..k).map(|g| self.count(g, c)).sum();
            let union = gt_pixels + predicted_pixels - tp;
            let scored = match definition {
                Definition::Cityscapes => union > 0,
                Definition::Detectron2 => gt_pixels > 0 && union > 0,
            };
            classes.push(ClassScore {
                class: c,
                true_positives: tp,
                ground_truth_pixels: gt_pixels,
                predicted_pixels,
                iou: scored.then(|| tp as f64 / union as f64),
                accuracy: (gt_pixels > 0).then(|| tp as f64 / gt_pixels as f64),
            });
        }
        let total_gt: u64 = classes.iter().map(|c| c.ground_truth_pixels).sum();
        let total_tp: u64 = classes.iter().map(|c| c.true_positives).sum();
        let mean = |values: Vec<f64>| {
            (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
        };
        let mean_iou = mean(classes.iter().filter_map(|c| c.iou).collect());
        let mean_accuracy = mean(classes.iter().filter_map(|c| c.accuracy).collect());
        let frequency_weighted_iou = (total_gt > 0).then(|| {
            classes
                .iter()
                .filter_map(|c| c.iou.map(|iou| iou * c.ground_truth_pixels as f64))
                .sum::<f64>()
                / total_gt as f64
        });
        Scores {
            definition,
            mean_iou,
            pixel_accuracy: (total_gt > 0).then(|| total_tp as f64 / total_gt as f64),
            mean_accuracy,
            frequency_weighted_iou,
            scored_classes: classes.iter().filter(|c| c.iou.is_some()).count(),
            counted_pixels: total_gt,
            ignored_pixels: self.ignored,
            invalid_ground_truth_pixels: self.invalid_ground_truth,
            classes,
        }
    }
}

/// One class's counts and scores.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassScore {
    /// Class index.
    pub class: usize,
    /// Pixels of this class predicted as this class.
    pub true_positives: u64,
    /// Counted pixels whose ground truth is this class.
    pub ground_truth_pixels: u64,
    /// Counted pixels predicted as this class.
    pub predicted_pixels: u64,
    /// `tp / (gt + pred - tp)`, or `None` when the definition leaves the class out.
    pub iou: Option<f64>,
    /// `tp / gt`, or `None` when the class is absent from the ground truth.
    pub accuracy: Option<f64>,
}

/// Summary scores of a confusion matrix under one definition (fractions in `[0, 1]`;
/// `None` where nothing could be scored).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Scores {
    /// The definition used.
    pub definition: Definition,
    /// Mean IoU over the scored classes.
    pub mean_iou: Option<f64>,
    /// Correct pixels over counted pixels.
    pub pixel_accuracy: Option<f64>,
    /// Mean per-class accuracy over classes present in the ground truth.
    pub mean_accuracy: Option<f64>,
    /// IoU weighted by ground-truth frequency, over the scored classes.
    pub frequency_weighted_iou: Option<f64>,
    /// Number of classes averaged into `mean_iou`.
    pub scored_classes: usize,
    /// Pixels counted (ground truth a class).
    pub counted_pixels: u64,
    /// Pixels skipped for an ignore ground truth.
    pub ignored_pixels: u64,
    /// Pixels skipped for a ground truth outside the classes.
    pub invalid_ground_truth_pixels: u64,
    /// Per class, in class order.
    pub classes: Vec<ClassScore>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const IGNORE: Option<u16> = Some(255);

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-12)
    }

    /// Three classes. Ground truth / prediction, pixel by pixel:
    ///
    /// ```text
    /// gt:   0 0 0 1 1 255 255
    /// pred: 0 0 1 1 2   2   0
    /// ```
    ///
    /// Class 2 is predicted once on a counted pixel but never in the ground truth. The
    /// two ignored pixels count nowhere (their predictions 2 and 0 are dropped).
    ///
    /// class 0: tp 2, gt 3, pred 2 -> IoU 2/3, acc 2/3
    /// class 1: tp 1, gt 2, pred 2 -> IoU 1/3, acc 1/2
    /// class 2: tp 0, gt 0, pred 1 -> cityscapes IoU 0; detectron2 left out
    #[test]
    fn hand_computed_case_with_predicted_absent_class_and_ignore() {
        let gt = [0, 0, 0, 1, 1, 255, 255];
        let pred = [0, 0, 1, 1, 2, 2, 0];
        let mut m = ConfusionMatrix::new(3);
        let report = m.accumulate(&pred, &gt, IGNORE).unwrap();
        assert_eq!(
            report,
            AccumulateReport {
                counted: 5,
                ignored: 2,
                invalid_ground_truth: 0
            }
        );
        assert_eq!(m.count(0, 0), 2);
        assert_eq!(m.count(0, 1), 1);
        assert_eq!(m.count(1, 2), 1);

        let cs = m.scores(Definition::Cityscapes);
        assert!(close(cs.classes[0].iou, 2.0 / 3.0));
        assert!(close(cs.classes[1].iou, 1.0 / 3.0));
        assert_eq!(cs.classes[2].iou, Some(0.0));
        assert!(close(cs.mean_iou, (2.0 / 3.0 + 1.0 / 3.0 + 0.0) / 3.0));
        assert_eq!(cs.scored_classes, 3);

        let d2 = m.scores(Definition::Detectron2);
        assert_eq!(d2.classes[2].iou, None);
        assert!(close(d2.mean_iou, (2.0 / 3.0 + 1.0 / 3.0) / 2.0));
        assert_eq!(d2.scored_classes, 2);

        // Accuracies are shared: pixel acc 3/5, mean acc (2/3 + 1/2) / 2.
        for s in [&cs, &d2] {
            assert!(close(s.pixel_accuracy, 3.0 / 5.0));
            assert!(close(s.mean_accuracy, (2.0 / 3.0 + 0.5) / 2.0));
            assert_eq!(s.classes[2].accuracy, None);
            assert_eq!(s.counted_pixels, 5);
            assert_eq!(s.ignored_pixels, 2);
        }
        // fwIoU: (3 * 2/3 + 2 * 1/3) / 5 for both (class 2 has no ground truth weight).
        assert!(close(cs.frequency_weighted_iou, (2.0 + 2.0 / 3.0) / 5.0));
        assert!(close(d2.frequency_weighted_iou, (2.0 + 2.0 / 3.0) / 5.0));
    }

    #[test]
    fn class_absent_from_both_is_dropped_by_both() {
        let mut m = ConfusionMatrix::new(4);
        m.accumulate(&[0, 1, 1], &[0, 1, 0], None).unwrap();
        // class 0: tp 1, gt 2, pred 1 -> 1/2; class 1: tp 1, gt 1, pred 2 -> 1/2.
        for def in [Definition::Cityscapes, Definition::Detectron2] {
            let s = m.scores(def);
            assert_eq!(s.classes[2].iou, None);
            assert_eq!(s.classes[3].iou, None);
            assert!(close(s.mean_iou, 0.5));
        }
    }

    #[test]
    fn streaming_equals_one_shot_and_merge() {
        let gt_a = [0u16, 1, 2, 2, 9];
        let pred_a = [0u16, 2, 2, 1, 0];
        let gt_b = [1u16, 1, 255, 0];
        let pred_b = [1u16, 0, 1, 0];
        let mut streamed = ConfusionMatrix::new(3);
        let ra = streamed.accumulate(&pred_a, &gt_a, IGNORE).unwrap();
        assert_eq!(ra.invalid_ground_truth, 1);
        streamed.accumulate(&pred_b, &gt_b, IGNORE).unwrap();

        let mut once = ConfusionMatrix::new(3);
        let gt: Vec<u16> = gt_a.iter().chain(&gt_b).copied().collect();
        let pred: Vec<u16> = pred_a.iter().chain(&pred_b).copied().collect();
        once.accumulate(&pred, &gt, IGNORE).unwrap();
        assert_eq!(streamed, once);

        let mut merged = ConfusionMatrix::new(3);
        let mut b = ConfusionMatrix::new(3);
        merged.accumulate(&pred_a, &gt_a, IGNORE).unwrap();
        b.accumulate(&pred_b, &gt_b, IGNORE).unwrap();
        merged.merge(&b).unwrap();
        assert_eq!(merged, once);
        assert_eq!(merged.invalid_ground_truth(), 1);
        assert_eq!(merged.ignored(), 1);
        assert!(matches!(
            merged.merge(&ConfusionMatrix::new(4)),
            Err(MetricsError::ClassCountMismatch(4, 3))
        ));
    }

    #[test]
    fn bad_predictions_are_errors_and_change_nothing() {
        let mut m = ConfusionMatrix::new(2);
        let err = m.accumulate(&[0, 2], &[0, 1], None).unwrap_err();
        assert_eq!(
            err,
            MetricsError::PredictionOutOfRange {
                value: 2,
                pixel: 1,
                num_classes: 2
            }
        );
        // Also on an ignored pixel: the prediction itself is malformed.
        assert!(m.accumulate(&[0, 7], &[0, 255], IGNORE).is_err());
        assert_eq!(m, ConfusionMatrix::new(2));
        assert!(matches!(
            m.accumulate(&[0], &[0, 1], None),
            Err(MetricsError::SizeMismatch { .. })
        ));
    }

    #[test]
    fn perfect_and_empty() {
        let mut m = ConfusionMatrix::new(2);
        let empty = m.scores(Definition::Cityscapes);
        assert_eq!(empty.mean_iou, None);
        assert_eq!(empty.pixel_accuracy, None);
        m.accumulate(&[0, 1, 1], &[0, 1, 1], None).unwrap();
        for def in [Definition::Cityscapes, Definition::Detectron2] {
            let s = m.scores(def);
            assert_eq!(s.mean_iou, Some(1.0));
            assert_eq!(s.pixel_accuracy, Some(1.0));
            assert_eq!(s.mean_accuracy, Some(1.0));
        }
        assert_eq!(
            "detectron2".parse::<Definition>(),
            Ok(Definition::Detectron2)
        );
        assert!("voc".parse::<Definition>().is_err());
    }

    #[test]
    fn stored_counts_give_back_the_matrix() {
        let mut m = ConfusionMatrix::new(3);
        m.accumulate(&[0, 0, 1, 1, 2, 2, 0], &[0, 0, 0, 1, 1, 255, 7], IGNORE)
            .unwrap();
        let copy = ConfusionMatrix::from_counts(
            3,
            m.counts().to_vec(),
            m.ignored(),
            m.invalid_ground_truth(),
        )
        .unwrap();
        assert_eq!(copy, m);
        assert_eq!(
            ConfusionMatrix::from_counts(3, vec![0; 8], 0, 0),
            Err(MetricsError::CountsLength {
                num_classes: 3,
                found: 8
            })
        );
    }
}
