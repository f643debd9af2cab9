//! DACS self-training (Tranheden et al., WACV 2021, as DAFormer and CSI run
//! it): unsupervised domain adaptation of a [`Student`] from a labelled source
//! to an unlabeled target.
//!
//! Per step `t`: a source batch (crop, flip, scale); as many target images,
//! augmented alike, labelled by the EMA teacher (`argmax` of its softmax) with
//! one confidence weight for the whole target batch, the share of its pixels
//! whose top probability is at least `pseudo_threshold`; the pseudo-labels
//! then pass through an optional [`PseudoLabelEditor`] (CSI's relabeling);
//! ClassMix pastes half of the classes found in the batch's source labels
//! from each source image onto its target partner, labels and weights alike
//! (source pixels weigh 1); DACS' strong colour jitter and blur act on the
//! mixed images. The loss is the cross-entropy over the source images and the
//! weighted cross-entropy over the mixed ones, in one batch. After the
//! update, the teacher moves to the student with the mean teacher's ramp
//! `alpha_t = min(1 - 1/(t+1), alpha)` (the first update at `t = 1` averages
//! evenly).
//!
//! Two deliberate differences from the official loop: the two losses are
//! averaged over one batch rather than back-propagated one after the other
//! (the same gradient up to a factor of one half, which AdamW's step all but
//! cancels), and padding pixels of a crop larger than the image neither
//! count towards the confidence weight nor get a label.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use semla_core::SplitMix64;
use semla_data::{Sample, SampleSource};
use semla_models::Normalization;
use semla_train::augment::{StrongAugment, augment, strong_augment};
use semla_train::error::TrainError;
use semla_train::trainer::{
    Batch, Progress, Session, Steps, TrainConfig, TrainSummary, sample_batch, train_steps,
};

use crate::ema::{EmaSettings, EmaTeacher};
use crate::student::{Student, TeacherModel};
use crate::training::{invalid, pseudo_error};

/// Random streams of a step (the source batch uses stream 0 of the same seed).
const TARGET_STREAM: u64 = 0xDAC5;
const MIX_STREAM: u64 = 0xDAC5_0000;

/// Edits the teacher's pseudo-labels of a step before ClassMix sees them
/// (CSI's relabeling inside detected boxes).
pub trait PseudoLabelEditor {
    /// Edits `pseudo` (row-major, the size of `image`, the clean target
    /// view) at step `step`; `ignore` marks pixels without a label.
    fn edit(
        &mut self,
        step: usize,
        image: &RgbImage,
        pseudo: &mut [u16],
        ignore: u16,
    ) -> crate::Result<()>;

    /// State to save with each checkpoint (CSI's collected counts).
    fn state_tensors(&self) -> crate::Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }

    /// Restores what [`PseudoLabelEditor::state_tensors`] saved.
    fn load_state(&mut self, _tensors: &HashMap<String, Tensor>) -> crate::Result<()> {
        Ok(())
    }
}

/// DACS' settings beyond the [`TrainConfig`] (whose `batch_size` is both the
/// source and the target images of a step).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DacsSettings {
    /// Ceiling of the teacher's EMA ramp. Default 0.999.
    pub alpha: f64,
    /// Top softmax probability a pseudo-labelled pixel needs to count as
    /// confident. Default 0.968.
    pub pseudo_threshold: f32,
    /// Rows at the top of each target image whose weight is 0 (DAFormer's
    /// `plcrop`: 15 at 512 px on Cityscapes). Default 0.
    pub ignore_top_rows: usize,
    /// Rows at the bottom whose weight is 0 (DAFormer: 120, the ego car's
    /// hood). Default 0: CamVid has no hood in view.
    pub ignore_bottom_rows: usize,
    /// The mixed images' colour jitter and blur.
    pub strong: StrongAugment,
}

impl Default for DacsSettings {
    fn default() -> Self {
        Self {
            alpha: 0.999,
            pseudo_threshold: 0.968,
            ignore_top_rows: 0,
            ignore_bottom_rows: 0,
            strong: StrongAugment::default(),
        }
    }
}

/// What DACS' labelling did over a session.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DacsStats {
    /// Target images pseudo-labelled.
    pub images: usize,
    /// Mean of the batches' confidence weights.
    pub mean_weight: f64,
    /// Pixels of target images that ClassMix covered with source pixels.
    pub mixed_px: usize,
    /// Target pixels in all.
    pub total_px: usize,
    /// Teacher updates applied.
    pub teacher_updates: usize,
}

/// The batches of DACS self-training of a [`Student`].
pub struct DacsTraining<'a, 'e> {
    student: Student<'a>,
    teacher: EmaTeacher,
    teacher_model: TeacherModel<'a>,
    source: &'a dyn SampleSource,
    target: &'a dyn SampleSource,
    editor: Option<&'e mut dyn PseudoLabelEditor>,
    config: &'a TrainConfig,
    settings: DacsSettings,
    normalization: Normalization,
    device: Device,
    stats: DacsStats,
    weight_sum: f64,
    batches: usize,
}

impl<'a, 'e> DacsTraining<'a, 'e> {
    /// DACS of `student` from the labelled `source` to `target` (whose labels
    /// are never read); `editor` edits the pseudo-labels. The teacher starts
    /// as a copy of `student`.
    pub fn new(
        student: Student<'a>,
        source: &'a dyn SampleSource,
        target: &'a dyn SampleSource,
        editor: Option<&'e mut dyn PseudoLabelEditor>,
        config: &'a TrainConfig,
        settings: DacsSettings,
        device: &Device,
    ) -> semla_train::error::Result<Self> {
        if target.is_empty() {
            return Err(invalid("the target domain has no images"));
        }
        if !(settings.pseudo_threshold.is_finite()
            && (0.0..=1.0).contains(&settings.pseudo_threshold))
        {
            return Err(invalid(format!(
                "the pseudo-label threshold must be in [0, 1], got {}",
                settings.pseudo_threshold
            )));
        }
        let model = student.model();
        semla_data::samples::check_classes(source, model.num_classes(), "the source data")
            .map_err(TrainError::Config)?;
        let ignore = target.ignore_label();
        if source.ignore_label() != ignore {
            return Err(invalid(format!(
                "the source ignores label {} and the target {ignore}: they must agree",
                source.ignore_label()
            )));
        }
        if ignore > u32::from(u16::MAX) || model.num_classes() > usize::from(u16::MAX) {
            return Err(invalid("labels must fit 16 bits"));
        }
        let ema = EmaSettings {
            alpha: settings.alpha,
            every: 1,
        };
        let teacher = EmaTeacher::new(&student.params(), ema).map_err(pseudo_error)?;
        let mut teacher_model = TeacherModel::for_student(student, device)?;
        teacher_model.sync(&teacher).map_err(pseudo_error)?;
        Ok(Self {
            student,
            teacher,
            teacher_model,
            source,
            target,
            editor,
            config,
            settings,
            normalization: model.normalization(),
            device: device.clone(),
            stats: DacsStats::default(),
            weight_sum: 0.0,
            batches: 0,
        })
    }

    /// The teacher.
    pub fn teacher(&self) -> &EmaTeacher {
        &self.teacher
    }

    /// What the labelling did so far in this session.
    pub fn stats(&self) -> &DacsStats {
        &self.stats
    }

    /// The teacher's alpha for the update after optimizer step `step`
    /// (0-based): DACS' `min(1 - 1/(t+1), alpha)` at iteration `t = step + 1`.
    pub fn alpha_after(&self, step: usize) -> f64 {
        (1.0 - 1.0 / (step as f64 + 2.0)).min(self.settings.alpha)
    }

    /// The augmented target images of step `step`, labels set to 0 on real
    /// pixels and to the ignore label on a crop's padding.
    fn target_views(&self, step: usize) -> semla_train::error::Result<Vec<Sample>> {
        let ignore = self.target.ignore_label();
        let mut rng = SplitMix64::for_step(self.config.seed, step as u64, TARGET_STREAM);
        let mut views = Vec::with_capacity(self.config.batch_size);
        for _ in 0..self.config.batch_size {
            let index = rng.below(self.target.len());
            let name = self.target.describe(index);
            let mut sample = self.target.sample(index)?;
            sample.check(&name)?;
            sample.labels.iter_mut().for_each(|l| *l = 0);
            views.push(augment(&sample, &self.config.augment, ignore, &mut rng));
        }
        Ok(views)
    }

    /// The teacher's pseudo-labels of `views` (padding ignored) and the
    /// batch's confidence weight.
    fn pseudo_labels(&self, views: &[Sample]) -> semla_train::error::Result<(Vec<Vec<u16>>, f32)> {
        let ignore = self.target.ignore_label();
        let refs: Vec<&Sample> = views.iter().collect();
        let images = self.normalization.batch(&refs, &self.device)?;
        let logits = self.teacher_model.forward(&images)?.to_dtype(DType::F32)?;
        // Top softmax probability = 1 / sum(exp(x - max)).
        let max = logits.max_keepdim(1)?;
        let top_probability = logits
            .broadcast_sub(&max)?
            .exp()?
            .sum(1)?
            .recip()?
            .to_vec3::<f32>()?;
        let classes = logits.argmax(1)?.to_dtype(DType::U32)?.to_vec3::<u32>()?;
        let (mut confident, mut counted) = (0usize, 0usize);
        let mut out = Vec::with_capacity(views.len());
        for ((map, probability), view) in classes.iter().zip(&top_probability).zip(views) {
            let labels: Vec<u16> = map
                .iter()
                .flatten()
                .zip(&view.labels)
                .map(|(&c, &l)| if l == ignore { ignore as u16 } else { c as u16 })
                .collect();
            for (p, &l) in probability.iter().flatten().zip(&view.labels) {
                if l != ignore {
                    counted += 1;
                    confident += usize::from(*p >= self.settings.pseudo_threshold);
                }
            }
            out.push(labels);
        }
        let weight = if counted == 0 {
            0.0
        } else {
            confident as f32 / counted as f32
        };
        Ok((out, weight))
    }
}

/// ClassMix of one pair: `(image, labels, weights)` of `target` with the
/// pixels of `source` whose label is in `classes` pasted over it (the mask is
/// taken from the source labels, as DACS' `get_class_masks`); pasted pixels
/// weigh 1, the others keep `target_weights`.
pub fn class_mix(
    source: &Sample,
    target: &Sample,
    target_labels: &[u16],
    target_weights: &[f32],
    classes: &[u32],
) -> (Sample, Vec<f32>, usize) {
    let pixels = source.height * source.width;
    let mut mixed = target.clone();
    let mut weights = target_weights.to_vec();
    let mut pasted = 0;
    for p in 0..pixels {
        if classes.contains(&source.labels[p]) {
            for c in 0..3 {
                mixed.image[c * pixels + p] = source.image[c * pixels + p];
            }
            mixed.labels[p] = source.labels[p];
            weights[p] = 1.0;
            pasted += 1;
        } else {
            mixed.labels[p] = u32::from(target_labels[p]);
        }
    }
    (mixed, weights, pasted)
}

/// DACS' class choice for one image: `ceil(n/2)` of the `n` distinct labels
/// of the whole batch's source labels (the ignore label among them, as coded),
/// drawn without replacement.
pub fn mix_classes(batch_labels: &[&[u32]], rng: &mut SplitMix64) -> Vec<u32> {
    let mut present: Vec<u32> = batch_labels
        .iter()
        .flat_map(|l| l.iter().copied())
        .collect();
    present.sort_unstable();
    present.dedup();
    let take = present.len().div_ceil(2);
    // A partial Fisher-Yates shuffle: the first `take` are a uniform draw.
    for i in 0..take {
        let j = i + rng.below(present.len() - i);
        present.swap(i, j);
    }
    present.truncate(take);
    present
}

impl Steps for DacsTraining<'_, '_> {
    fn batch(&mut self, step: usize) -> semla_train::error::Result<Batch> {
        let source = sample_batch(self.source, self.config, step)?;
        let targets = self.target_views(step)?;
        let (h, w) = (source[0].height, source[0].width);
        if targets.iter().any(|t| (t.height, t.width) != (h, w)) {
            return Err(invalid(format!(
                "source images are {h}x{w} and target images {}x{}: give a crop size that fits both",
                targets[0].height, targets[0].width
            )));
        }
        let (mut pseudo, weight) = self.pseudo_labels(&targets)?;
        let ignore = self.target.ignore_label() as u16;
        if let Some(editor) = self.editor.as_deref_mut() {
            for (labels, view) in pseudo.iter_mut().zip(&targets) {
                let photo = view.to_photo()?;
                editor
                    .edit(step, &photo, labels, ignore)
                    .map_err(pseudo_error)?;
            }
        }
        let batch_labels: Vec<&[u32]> = source.iter().map(|s| s.labels.as_slice()).collect();
        let mut rng = SplitMix64::for_step(self.config.seed, step as u64, MIX_STREAM);
        let mut mixed = Vec::with_capacity(targets.len());
        let mut weights: Vec<f32> = vec![1.0; source.len() * h * w];
        // DAFormer's crop zeroes the target's weight before the mix, so
        // pasted source pixels keep theirs.
        let mut target_weights = vec![weight; h * w];
        apply_row_crop(&mut target_weights, h, w, &self.settings);
        for ((src, target), labels) in source.iter().zip(&targets).zip(&pseudo) {
            let classes = mix_classes(&batch_labels, &mut rng);
            let (mut image, mut pixel_weights, pasted) =
                class_mix(src, target, labels, &target_weights, &classes);
            image = strong_augment(&image, &self.settings.strong, &mut rng);
            self.stats.mixed_px += pasted;
            weights.append(&mut pixel_weights);
            mixed.push(image);
        }
        self.stats.images += targets.len();
        self.stats.total_px += targets.len() * h * w;
        self.weight_sum += f64::from(weight);
        self.batches += 1;
        self.stats.mean_weight = self.weight_sum / self.batches as f64;
        let all: Vec<&Sample> = source.iter().chain(&mixed).collect();
        let labels: Vec<u32> = all.iter().flat_map(|s| s.labels.iter().copied()).collect();
        let n = all.len();
        Ok(Batch {
            images: self.normalization.batch(&all, &self.device)?,
            labels: Tensor::from_vec(labels, (n, h, w), &self.device)?,
            weights: Some(Tensor::from_vec(weights, (n, h, w), &self.device)?),
        })
    }

    fn ignore_label(&self) -> u32 {
        self.target.ignore_label()
    }

    fn after_update(&mut self, step: usize) -> semla_train::error::Result<()> {
        let alpha = self.alpha_after(step);
        self.teacher
            .update(alpha, &self.student.params())
            .map_err(pseudo_error)?;
        self.teacher_model
            .sync(&self.teacher)
            .map_err(pseudo_error)?;
        self.stats.teacher_updates += 1;
        Ok(())
    }

    fn state_tensors(&self) -> semla_train::error::Result<Vec<(String, Tensor)>> {
        let mut tensors = self.teacher.checkpoint_tensors().map_err(pseudo_error)?;
        if let Some(editor) = self.editor.as_deref() {
            tensors.extend(editor.state_tensors().map_err(pseudo_error)?);
        }
        Ok(tensors)
    }

    fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        path: &std::path::Path,
    ) -> semla_train::error::Result<()> {
        self.teacher
            .restore(tensors)
            .and_then(|()| self.teacher_model.sync(&self.teacher))
            .map_err(|e| TrainError::checkpoint(path, e.to_string()))?;
        if let Some(editor) = self.editor.as_deref_mut() {
            editor
                .load_state(tensors)
                .map_err(|e| TrainError::checkpoint(path, e.to_string()))?;
        }
        Ok(())
    }
}

/// Zeroes the target weights of DAFormer's cropped rows.
fn apply_row_crop(weights: &mut [f32], height: usize, width: usize, settings: &DacsSettings) {
    let top = settings.ignore_top_rows.min(height);
    let bottom = settings.ignore_bottom_rows.min(height - top);
    weights[..top * width].fill(0.0);
    weights[(height - bottom) * width..].fill(0.0);
}

/// Runs DACS on `student` with the one training loop; returns its summary
/// and the labelling's statistics.
#[allow(clippy::too_many_arguments)]
pub fn dacs_train(
    student: Student<'_>,
    device: &Device,
    source: &dyn SampleSource,
    target: &dyn SampleSource,
    editor: Option<&mut dyn PseudoLabelEditor>,
    config: &TrainConfig,
    settings: &DacsSettings,
    session: &Session<'_>,
    progress: &mut dyn FnMut(&Progress),
) -> semla_train::error::Result<(TrainSummary, DacsStats)> {
    let mut steps = DacsTraining::new(
        student,
        source,
        target,
        editor,
        config,
        settings.clone(),
        device,
    )?;
    let trainee = student.trainee(device);
    let summary = train_steps(&trainee, &mut steps, config, session, progress)?;
    Ok((summary, steps.stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(labels: Vec<u32>, value: f32) -> Sample {
        let n = labels.len();
        Sample {
            image: vec![value; 3 * n],
            labels,
            height: 1,
            width: n,
        }
    }

    #[test]
    fn mix_classes_takes_half_rounded_up_of_the_batch_labels_ignore_included() {
        let a = [0u32, 0, 3, 255];
        let b = [5u32, 3];
        for seed in 0..20 {
            let chosen = mix_classes(&[&a, &b], &mut SplitMix64::new(seed));
            // Distinct labels of the batch: {0, 3, 5, 255} -> 2 of them.
            assert_eq!(chosen.len(), 2);
            assert_ne!(chosen[0], chosen[1]);
            assert!(chosen.iter().all(|c| [0, 3, 5, 255].contains(c)));
        }
        let odd = [1u32, 2, 3];
        assert_eq!(mix_classes(&[&odd], &mut SplitMix64::new(1)).len(), 2);
        // Every label is drawn sometimes.
        let mut seen = std::collections::HashSet::new();
        for seed in 0..200 {
            seen.extend(mix_classes(&[&a, &b], &mut SplitMix64::new(seed)));
        }
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn class_mix_pastes_source_classes_with_weight_one_and_keeps_the_edited_target_labels() {
        let source = sample(vec![1, 2, 1, 255], 0.9);
        let target = sample(vec![0, 0, 0, 0], 0.1);
        // The (edited) pseudo-labels of the target.
        let pseudo = [7u16, 8, 9, 255];
        let (mixed, weights, pasted) = class_mix(
            &source,
            &target,
            &pseudo,
            &[0.25, 0.25, 0.25, 0.0],
            &[1, 255],
        );
        assert_eq!(mixed.labels, vec![1, 8, 1, 255]);
        assert_eq!(weights, vec![1.0, 0.25, 1.0, 1.0]);
        assert_eq!(pasted, 3);
        assert_eq!(mixed.image[1], 0.1);
        assert_eq!(mixed.image[0], 0.9);
    }

    #[test]
    fn row_crop_zeroes_top_and_bottom_rows() {
        let mut w = vec![0.5f32; 4 * 2];
        let settings = DacsSettings {
            ignore_top_rows: 1,
            ignore_bottom_rows: 2,
            ..DacsSettings::default()
        };
        apply_row_crop(&mut w, 4, 2, &settings);
        assert_eq!(w, vec![0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0]);
    }
}
