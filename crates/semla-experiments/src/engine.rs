//! The experiment engine: SemLA's four official modes (`zeroshot`, `oracle`,
//! `uniform`, `semla`) and the late-fusion ablation over target domains
//! ([`run_experiment`]), and the evaluation of one fixed adaptation over one
//! sample source ([`evaluate`], `semla eval`). Both score with one loop
//! ([`score_source`]): samples batched while they share one size, arg-max
//! predictions accumulated into a confusion matrix.
//!
//! Every image's mixture and forward pass come from the pipeline
//! ([`semla_pipeline::Semla::segment_samples`]), so an experiment measures
//! exactly what `semla segment` does.

use std::time::Instant;

use candle_core::Device;
use semla_adapters::Adaptation;
use semla_core::Progress;
use semla_data::{Sample, SampleSource};
use semla_metrics::{ConfusionMatrix, Definition, Scores};
use semla_models::Segmenter;
use semla_pipeline::mixture::argmax_maps;
use semla_pipeline::{AdapterChoice, Mode, Request, Semla};

use crate::error::{ExperimentError, Result};
use crate::output::{ClassIou, ExperimentOutput, ImageRecord, KeptPrediction, TargetReport};
use crate::settings::{ExperimentKind, ExperimentSettings, Target};

/// One scored image of [`score_source`]: its index in the source, the sample,
/// the predicted classes `[H, W]` and the mixture it ran with.
pub struct ScoredImage<'a> {
    /// Index in the source.
    pub index: usize,
    /// The sample (ground truth included).
    pub sample: &'a Sample,
    /// Predicted class per pixel, `[H, W]` row-major.
    pub classes: Vec<u16>,
    /// The adapters the image ran with.
    pub adapters: Vec<AdapterChoice>,
}

/// What [`score_source`] scores.
pub struct ScoreJob<'a> {
    /// The samples, with ground truth.
    pub source: &'a dyn SampleSource,
    /// Classes of the confusion matrix (the model's).
    pub num_classes: usize,
    /// Score only the first samples (all when `None`).
    pub limit: Option<usize>,
    /// Score only these indices of the first `limit` samples, in this order
    /// (a shard's share, see [`crate::shard`]); all of them when `None`.
    pub only: Option<&'a [usize]>,
    /// Images per batch at most (batches hold images of one size).
    pub batch_size: usize,
    /// Names the job in progress and errors.
    pub label: &'a str,
}

/// The predictions of a batch: per image, its classes `[H, W]` and mixture.
pub type BatchPredictions = Vec<(Vec<u16>, Vec<AdapterChoice>)>;

/// Scores the first `limit` samples of the job's source (none is an error), or
/// the job's `only` indices among them: batches of up to `batch_size`
/// consecutive images of one size go to `predict`, which returns each image's
/// classes and mixture; the predictions are accumulated into a confusion matrix
/// and handed to `each`. Returns the matrix and the number of images scored.
pub fn score_source(
    job: &ScoreJob<'_>,
    progress: &mut dyn Progress,
    predict: &mut dyn FnMut(&[&Sample]) -> Result<BatchPredictions>,
    each: &mut dyn FnMut(ScoredImage<'_>) -> Result<()>,
) -> Result<(ConfusionMatrix, usize)> {
    let ScoreJob {
        source,
        num_classes,
        limit,
        only,
        batch_size,
        label,
    } = *job;
    let total = limit.unwrap_or(usize::MAX).min(source.len());
    if total == 0 {
        return Err(ExperimentError::Invalid(format!(
            "{label}: no image to evaluate (the source has {} images, limit {})",
            source.len(),
            limit.map_or("none".to_string(), |l| l.to_string())
        )));
    }
    if let Some(index) = only.and_then(|o| o.iter().find(|&&i| i >= total)) {
        return Err(ExperimentError::Invalid(format!(
            "{label}: image {index} asked for, but only {total} are evaluated"
        )));
    }
    let order: Vec<usize> = match only {
        Some(indices) => indices.to_vec(),
        None => (0..total).collect(),
    };
    let batch_size = batch_size.max(1);
    semla_core::limits::check_batch(batch_size as u64, "a batch")
        .map_err(ExperimentError::Invalid)?;
    let ignore = u16::try_from(source.ignore_label()).ok();
    let mut confusion = ConfusionMatrix::new(num_classes);
    progress.begin(label, order.len() as u64);
    let mut pending: Vec<(usize, Sample)> = Vec::new();
    let mut flush = |pending: &mut Vec<(usize, Sample)>| -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let samples: Vec<&Sample> = pending.iter().map(|(_, s)| s).collect();
        let predictions = predict(&samples)?;
        if predictions.len() != pending.len() {
            return Err(ExperimentError::Invalid(format!(
                "{} predictions for a batch of {} images",
                predictions.len(),
                pending.len()
            )));
        }
        for ((index, sample), (classes, adapters)) in pending.iter().zip(predictions) {
            let truth: Vec<u16> = sample
                .labels
                .iter()
                .map(|&l| l.min(u16::MAX as u32) as u16)
                .collect();
            let report = confusion
                .accumulate(&classes, &truth, ignore)
                .map_err(|e| {
                    ExperimentError::Invalid(format!("{}: {e}", source.describe(*index)))
                })?;
            if report.invalid_ground_truth > 0 {
                tracing::warn!(
                    "{}: {} ground-truth pixels are neither a class (0..{num_classes}) nor the ignore value; they are not scored",
                    source.describe(*index),
                    report.invalid_ground_truth
                );
            }
            each(ScoredImage {
                index: *index,
                sample,
                classes,
                adapters,
            })?;
        }
        pending.clear();
        Ok(())
    };
    for (done, &index) in order.iter().enumerate() {
        let sample = source.sample(index)?;
        sample.check(&source.describe(index))?;
        let fits = pending
            .first()
            .is_none_or(|(_, s)| (s.height, s.width) == (sample.height, sample.width));
        if !fits || pending.len() == batch_size {
            flush(&mut pending)?;
        }
        pending.push((index, sample));
        if pending.len() == batch_size {
            flush(&mut pending)?;
        }
        progress.set(done as u64 + 1);
    }
    flush(&mut pending)?;
    progress.end();
    Ok((confusion, order.len()))
}

/// Checks that `source` labels the model's classes (see
/// [`semla_data::samples::check_classes`]).
fn check_classes(source: &dyn SampleSource, model: &dyn Segmenter, what: &str) -> Result<()> {
    semla_data::samples::check_classes(source, model.num_classes(), what)
        .map_err(ExperimentError::Invalid)
}

/// The pipeline request of `settings` on target `target`: its mode (oracle: the
/// target's own adapter), leave-one-out exclusion, retrieval and fusion.
fn request_for(semla: &Semla, settings: &ExperimentSettings, target: &str) -> Result<Request> {
    let sources = semla.library().sources();
    let mode = match settings.kind {
        ExperimentKind::ZeroShot => Mode::ZeroShot,
        ExperimentKind::Uniform => Mode::Uniform,
        ExperimentKind::Semla => Mode::Semla,
        ExperimentKind::Oracle => {
            if !sources.iter().any(|s| s == target) {
                return Err(ExperimentError::Invalid(format!(
                    "oracle needs the target's own adapter, but `{target}` is not among the sources ({})",
                    sources.join(", ")
                )));
            }
            Mode::Adapters(vec![AdapterChoice::weighted(target, 1.0)])
        }
    };
    let exclude = if settings.remove_target_adapter
        && settings.kind != ExperimentKind::Oracle
        && sources.iter().any(|s| s == target)
    {
        vec![target.to_string()]
    } else {
        Vec::new()
    };
    Ok(Request {
        mode,
        exclude,
        retrieval: Some(settings.params),
        fusion: Some(settings.fusion),
        ..Request::default()
    })
}

/// Refuses settings `semla` cannot run (the `semla` mode needs an embedder).
pub(crate) fn check_runnable(semla: &Semla, settings: &ExperimentSettings) -> Result<()> {
    if settings.kind == ExperimentKind::Semla && semla.embedder().is_none() {
        return Err(ExperimentError::Invalid(
            "the semla experiment needs an embedder".into(),
        ));
    }
    Ok(())
}

/// One target's evaluation: its confusion matrix and per-image records.
pub(crate) struct TargetRun {
    /// Pixel counts of the images scored.
    pub confusion: ConfusionMatrix,
    /// Images scored.
    pub images: usize,
    /// Wall time (loading, embedding, retrieval, segmentation).
    pub seconds: f64,
    /// Index in the target's source and the record of each image, in
    /// evaluation order.
    pub records: Vec<(usize, ImageRecord)>,
    /// Kept predictions.
    pub predictions: Vec<KeptPrediction>,
}

/// Evaluates `target` with `settings`: every image of its first `limit`, or the
/// `only` indices among them (a shard's share).
pub(crate) fn run_target(
    semla: &Semla,
    target: &Target<'_>,
    settings: &ExperimentSettings,
    only: Option<&[usize]>,
    progress: &mut dyn Progress,
) -> Result<TargetRun> {
    let started = Instant::now();
    let model = target.model.as_deref().unwrap_or(semla.model().as_ref());
    check_classes(target.source, model, &format!("target {}", target.name))?;
    let request = request_for(semla, settings, &target.name)?;
    let label = format!("{} on {}", settings.method_name(), target.name);
    let job = ScoreJob {
        source: target.source,
        num_classes: model.num_classes(),
        limit: settings.limit,
        only,
        batch_size: settings.batch_size,
        label: &label,
    };
    let mut records = Vec::new();
    let mut predictions = Vec::new();
    let (confusion, images) = score_source(
        &job,
        progress,
        &mut |samples| {
            let predictions = match &target.model {
                Some(own) => semla.segment_samples_with(own.as_ref(), samples, &request)?,
                None => semla.segment_samples(samples, &request)?,
            };
            Ok(predictions
                .into_iter()
                .map(|p| (p.labels, p.adapters))
                .collect())
        },
        &mut |scored| {
            records.push((
                scored.index,
                ImageRecord {
                    target: target.name.clone(),
                    image: target.source.describe(scored.index),
                    adapters: scored.adapters,
                },
            ));
            if scored.index < settings.keep_predictions {
                predictions.push(KeptPrediction {
                    target: target.name.clone(),
                    index: scored.index,
                    classes: scored.classes,
                    height: scored.sample.height,
                    width: scored.sample.width,
                });
            }
            Ok(())
        },
    )?;
    Ok(TargetRun {
        confusion,
        images,
        seconds: started.elapsed().as_secs_f64(),
        records,
        predictions,
    })
}

/// The report of a target from its confusion matrix: every score of
/// `results.json` and `report.json` comes from the matrix, so a merge of shards
/// (whose matrices sum to the whole run's) reports what the whole run does.
pub(crate) fn target_report(
    target: &str,
    definition: Definition,
    class_names: &[String],
    confusion: &ConfusionMatrix,
    images: usize,
    seconds: f64,
) -> TargetReport {
    let scores = confusion.scores(definition);
    TargetReport {
        target: target.to_string(),
        definition,
        images,
        miou_percent: 100.0 * scores.mean_iou.unwrap_or(0.0),
        pixel_accuracy_percent: scores.pixel_accuracy.map(|a| 100.0 * a),
        per_class_iou: scores
            .classes
            .iter()
            .map(|c| ClassIou {
                class: c.class,
                name: class_names.get(c.class).cloned().unwrap_or_default(),
                iou_percent: c.iou.map(|v| 100.0 * v),
            })
            .collect(),
        seconds,
        seconds_per_image: seconds / images as f64,
    }
}

/// Runs one experiment over `targets` with `semla` (its embedder is required
/// for `semla`). Images are batched up to `settings.batch_size` while they
/// share one size; each keeps its own mixture.
pub fn run_experiment(
    semla: &Semla,
    targets: &[Target<'_>],
    settings: &ExperimentSettings,
    progress: &mut dyn Progress,
) -> Result<ExperimentOutput> {
    check_runnable(semla, settings)?;
    let mut output = ExperimentOutput {
        kind: settings.kind,
        fusion: settings.fusion,
        results: Vec::new(),
        reports: Vec::new(),
        images: Vec::new(),
        predictions: Vec::new(),
    };
    for target in targets {
        let run = run_target(semla, target, settings, None, progress)?;
        let report = target_report(
            &target.name,
            target.definition,
            &target.class_names,
            &run.confusion,
            run.images,
            run.seconds,
        );
        output
            .results
            .push((target.name.clone(), report.miou_percent));
        output.reports.push(report);
        output
            .images
            .extend(run.records.into_iter().map(|(_, record)| record));
        output.predictions.extend(run.predictions);
    }
    Ok(output)
}

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

/// Runs `model` with `adaptation` over every sample of `source` (one image at
/// a time, at its own resolution) and scores the arg-max predictions with
/// `definition`; `limit` evaluates only the first samples.
pub fn evaluate(
    model: &dyn Segmenter,
    adaptation: &Adaptation,
    source: &dyn SampleSource,
    definition: Definition,
    limit: Option<usize>,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<EvalReport> {
    check_classes(source, model, "the data")?;
    let norm = model.normalization();
    let job = ScoreJob {
        source,
        num_classes: model.num_classes(),
        limit,
        only: None,
        batch_size: 1,
        label: "evaluating",
    };
    let (confusion, images) = score_source(
        &job,
        progress,
        &mut |samples| {
            let images = norm.batch(samples, device)?;
            let logits = model.forward(&images, adaptation)?;
            let values: Vec<f32> = logits.flatten_all()?.to_vec1()?;
            if values.iter().any(|v| !v.is_finite()) {
                return Err(ExperimentError::Invalid(
                    "the model's output is not finite (NaN or infinite): its weights or the adapter's are out of range".into(),
                ));
            }
            Ok(argmax_maps(&logits)?
                .into_iter()
                .map(|classes| (classes, Vec::new()))
                .collect())
        },
        &mut |_| Ok(()),
    )?;
    Ok(EvalReport {
        images,
        scores: confusion.scores(definition),
        confusion,
    })
}
