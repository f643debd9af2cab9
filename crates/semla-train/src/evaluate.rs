//! Evaluation: a segmenter (with an optional adaptation) over a sample
//! source, accumulated into a `semla-metrics` confusion matrix.

use candle_core::{DType, Device, Tensor};
use semla_adapters::Adaptation;
use semla_metrics::{ConfusionMatrix, Definition, Scores};
use semla_models::segmenter::Segmenter;

use crate::data::SampleSource;
use crate::error::{Result, TrainError};

/// Scores of one evaluation.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EvalReport {
    /// Images evaluated.
    pub images: usize,
    /// mIoU, accuracies and per-class IoU under the chosen definition.
    pub scores: Scores,
    /// The confusion matrix (rows: ground truth, columns: prediction).
    #[serde(skip)]
    pub confusion: ConfusionMatrix,
}

impl EvalReport {
    /// Mean IoU in `[0, 1]` (0 when no class could be scored).
    pub fn miou(&self) -> f64 {
        self.scores.mean_iou.unwrap_or(0.0)
    }
}

/// Arg-max class per pixel of `model(images)`: `[1, 3, H, W]` -> `H * W` labels.
pub fn predict(model: &dyn Segmenter, adaptation: &Adaptation, image: &Tensor) -> Result<Vec<u16>> {
    let logits = model.forward(image, adaptation)?;
    let classes: Vec<u32> = logits
        .argmax(1)?
        .to_dtype(DType::U32)?
        .flatten_all()?
        .to_vec1()?;
    Ok(classes
        .into_iter()
        .map(|c| c.min(u16::MAX as u32) as u16)
        .collect())
}

/// Runs `model` with `adaptation` over every sample of `source` (one image at
/// a time, at its own resolution), scores the arg-max predictions with
/// `definition`. `limit` evaluates only the first samples; `progress(done,
/// total)` is called after each image.
pub fn evaluate(
    model: &dyn Segmenter,
    adaptation: &Adaptation,
    source: &dyn SampleSource,
    definition: Definition,
    limit: Option<usize>,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport> {
    let num_classes = model.num_classes();
    if source.num_classes() != num_classes {
        return Err(TrainError::Config(format!(
            "the data has {} classes but the model predicts {num_classes}",
            source.num_classes()
        )));
    }
    let norm = model.normalization();
    let ignore = u16::try_from(source.ignore_label()).ok();
    let total = limit.unwrap_or(usize::MAX).min(source.len());
    let mut confusion = ConfusionMatrix::new(num_classes);
    for index in 0..total {
        let name = source.describe(index);
        let sample = source.sample(index)?;
        sample.check(&name)?;
        let pixels = sample.height * sample.width;
        let mut image = Vec::with_capacity(3 * pixels);
        for (c, plane) in sample.image.chunks_exact(pixels).enumerate() {
            image.extend(plane.iter().map(|v| (v - norm.mean[c]) / norm.std[c]));
        }
        let image = Tensor::from_vec(image, (1, 3, sample.height, sample.width), device)?;
        let prediction = predict(model, adaptation, &image)?;
        let truth: Vec<u16> = sample
            .labels
            .iter()
            .map(|&l| l.min(u16::MAX as u32) as u16)
            .collect();
        confusion
            .accumulate(&prediction, &truth, ignore)
            .map_err(|e| TrainError::Sample {
                sample: name,
                message: e.to_string(),
            })?;
        progress(index + 1, total);
    }
    Ok(EvalReport {
        images: total,
        scores: confusion.scores(definition),
        confusion,
    })
}
