//! Evaluation: a segmenter (with an optional adaptation) over a sample
//! source, accumulated into a confusion matrix.

use candle_core::{DType, Device, Tensor};
use semla_adapters::Adaptation;
use semla_models::segmenter::Segmenter;

use crate::data::SampleSource;
use crate::error::{Result, TrainError};

/// A `C x C` confusion matrix: `counts[truth * C + prediction]`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Confusion {
    /// Number of classes `C`.
    pub num_classes: usize,
    /// Row-major counts, rows = ground truth.
    pub counts: Vec<u64>,
}

impl Confusion {
    /// An empty matrix.
    pub fn new(num_classes: usize) -> Self {
        Self {
            num_classes,
            counts: vec![0; num_classes * num_classes],
        }
    }

    /// Adds one image: pixels labelled `ignore` (or outside the classes) do not count.
    pub fn add(&mut self, truth: &[u32], prediction: &[u32], ignore: u32) {
        let c = self.num_classes;
        for (&t, &p) in truth.iter().zip(prediction) {
            if t == ignore || t as usize >= c || p as usize >= c {
                continue;
            }
            self.counts[t as usize * c + p as usize] += 1;
        }
    }

    /// IoU of each class; `None` for a class absent from both truth and prediction.
    pub fn per_class_iou(&self) -> Vec<Option<f64>> {
        let c = self.num_classes;
        (0..c)
            .map(|k| {
                let tp = self.counts[k * c + k];
                let truth: u64 = (0..c).map(|p| self.counts[k * c + p]).sum();
                let predicted: u64 = (0..c).map(|t| self.counts[t * c + k]).sum();
                let union = truth + predicted - tp;
                (union > 0).then(|| tp as f64 / union as f64)
            })
            .collect()
    }

    /// Mean IoU over the classes that occur (in truth or prediction).
    pub fn mean_iou(&self) -> f64 {
        let ious: Vec<f64> = self.per_class_iou().into_iter().flatten().collect();
        if ious.is_empty() {
            0.0
        } else {
            ious.iter().sum::<f64>() / ious.len() as f64
        }
    }

    /// Fraction of counted pixels predicted right.
    pub fn pixel_accuracy(&self) -> f64 {
        let c = self.num_classes;
        let total: u64 = self.counts.iter().sum();
        let right: u64 = (0..c).map(|k| self.counts[k * c + k]).sum();
        if total == 0 {
            0.0
        } else {
            right as f64 / total as f64
        }
    }
}

/// Scores of one evaluation.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EvalReport {
    /// Images evaluated.
    pub images: usize,
    /// Mean IoU over present classes, in `[0, 1]`.
    pub miou: f64,
    /// Pixel accuracy, in `[0, 1]`.
    pub pixel_accuracy: f64,
    /// IoU per class (`None`: class absent).
    pub per_class_iou: Vec<Option<f64>>,
    /// The confusion matrix.
    pub confusion: Confusion,
}

/// Runs `model` with `adaptation` over every sample of `source` (one image at
/// a time, at its own resolution) and scores the arg-max predictions.
/// `limit` evaluates only the first samples; `progress(done, total)` is
/// called after each image.
pub fn evaluate(
    model: &dyn Segmenter,
    adaptation: &Adaptation,
    source: &dyn SampleSource,
    limit: Option<usize>,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport> {
    let num_classes = model.num_classes();
    if source.num_classes() > num_classes {
        return Err(TrainError::Config(format!(
            "the data has {} classes but the model predicts {num_classes}",
            source.num_classes()
        )));
    }
    let norm = model.normalization();
    let total = limit.unwrap_or(usize::MAX).min(source.len());
    let mut confusion = Confusion::new(num_classes);
    for index in 0..total {
        let sample = source.sample(index)?;
        sample.check(&source.describe(index))?;
        let pixels = sample.height * sample.width;
        let mut image = Vec::with_capacity(3 * pixels);
        for (c, plane) in sample.image.chunks_exact(pixels).enumerate() {
            image.extend(plane.iter().map(|v| (v - norm.mean[c]) / norm.std[c]));
        }
        let image = Tensor::from_vec(image, (1, 3, sample.height, sample.width), device)?;
        let logits = model.forward(&image, adaptation)?;
        let prediction: Vec<u32> = logits
            .argmax(1)?
            .to_dtype(DType::U32)?
            .flatten_all()?
            .to_vec1()?;
        confusion.add(&sample.labels, &prediction, source.ignore_label());
        progress(index + 1, total);
    }
    Ok(EvalReport {
        images: total,
        miou: confusion.mean_iou(),
        pixel_accuracy: confusion.pixel_accuracy(),
        per_class_iou: confusion.per_class_iou(),
        confusion,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_by_hand() {
        let mut m = Confusion::new(3);
        // truth:      0 0 1 1 2 255
        // prediction: 0 1 1 1 0 2
        m.add(&[0, 0, 1, 1, 2, 255], &[0, 1, 1, 1, 0, 2], 255);
        let iou = m.per_class_iou();
        // class 0: tp 1, truth 2, predicted 2 -> 1/3; class 1: tp 2, truth 2, pred 3 -> 2/3; class 2: 0/1.
        assert!((iou[0].unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert!((iou[1].unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(iou[2], Some(0.0));
        assert!((m.mean_iou() - 1.0 / 3.0).abs() < 1e-12);
        assert!((m.pixel_accuracy() - 0.6).abs() < 1e-12);
    }
}
