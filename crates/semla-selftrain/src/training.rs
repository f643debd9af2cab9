//! CLOUDS' self-training of a model's head or a LoRA adapter ([`Student`]) on an
//! unlabeled target domain: per step, an EMA teacher labels clean views of target images, the
//! labels are refined (optionally) by a promptable mask model, and the student
//! trains on photometrically distorted views of the same images together
//! with labelled source images, under one loss.
//!
//! The loop itself is `semla_train::trainer::train_steps` (loss, clipping,
//! AdamW, schedule, checkpoints, resume); this module supplies its batches
//! ([`SelfTraining`], a [`Steps`]) and the teacher it carries.

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use semla_core::SplitMix64;
use semla_data::{Sample, SampleSource};
use semla_models::{Normalization, Segmenter};
use semla_train::augment::{AugmentConfig, augment, photometric};
use semla_train::error::TrainError;
use semla_train::lora::LoraTrainee;
use semla_train::trainer::{
    Batch, Progress, Session, Steps, TrainConfig, TrainSummary, make_batch, train_steps,
};

use crate::ema::{EmaSettings, EmaTeacher};
use crate::proposer::MaskProposer;
use crate::refine::{RefineSettings, Refined, refine_pseudo_label};
pub use crate::student::Student;
use crate::student::TeacherModel;

/// Random streams of a step (the source batch uses stream 0 of the same seed).
const TARGET_STREAM: u64 = 0x5E1F;
const REFINE_STREAM: u64 = 0x5E1F_0000;

/// Turns a teacher's pseudo-label into the student's target.
pub trait PseudoLabelRefiner {
    /// The refined labels of `pseudo` (`height x width` of `image`).
    fn refine(
        &self,
        image: &RgbImage,
        pseudo: &[u16],
        rng: &mut SplitMix64,
    ) -> crate::Result<Refined>;

    /// The label it writes for unsupervised pixels.
    fn ignore_label(&self) -> u16;
}

/// CLOUDS' refinement ([`refine_pseudo_label`]) with a mask proposer.
pub struct PromptRefiner<P> {
    /// The promptable mask model (SAM, or a weight-free stand-in).
    pub proposer: P,
    /// Components, points, unclaimed pixels.
    pub settings: RefineSettings,
}

impl<P: MaskProposer> PseudoLabelRefiner for PromptRefiner<P> {
    fn refine(
        &self,
        image: &RgbImage,
        pseudo: &[u16],
        rng: &mut SplitMix64,
    ) -> crate::Result<Refined> {
        refine_pseudo_label(&self.proposer, image, pseudo, &self.settings, rng)
    }

    fn ignore_label(&self) -> u16 {
        self.settings.ignore
    }
}

/// Settings of self-training beyond the [`TrainConfig`] (whose `batch_size`
/// counts the labelled source images of a step, and whose augmentation's crop
/// and flip also apply to the target images).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SelfTrainSettings {
    /// Unlabeled target images per step. Default 2.
    pub target_per_step: usize,
    /// The teacher's EMA schedule. Default: the official 0.999 every 100 steps.
    pub ema: EmaSettings,
}

impl Default for SelfTrainSettings {
    fn default() -> Self {
        Self {
            target_per_step: 2,
            ema: EmaSettings::default(),
        }
    }
}

/// What the teacher's labelling did over a session.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PseudoLabelStats {
    /// Target images labelled.
    pub images: usize,
    /// Prompts sent to the mask proposer.
    pub prompts: usize,
    /// Images refined without a prompt (their raw pseudo-label kept).
    pub fallbacks: usize,
    /// Target pixels left unsupervised (padding, contested, unclaimed).
    pub ignored_px: usize,
    /// Target pixels in all.
    pub total_px: usize,
    /// Teacher updates applied.
    pub teacher_updates: usize,
}

/// The batches of CLOUDS' self-training of a [`Student`].
pub struct SelfTraining<'a> {
    student: Student<'a>,
    teacher: EmaTeacher,
    teacher_model: TeacherModel<'a>,
    source: Option<&'a dyn SampleSource>,
    target: &'a dyn SampleSource,
    refiner: Option<&'a dyn PseudoLabelRefiner>,
    config: &'a TrainConfig,
    settings: SelfTrainSettings,
    normalization: Normalization,
    device: Device,
    stats: PseudoLabelStats,
}

pub(crate) fn invalid(message: impl Into<String>) -> TrainError {
    TrainError::Config(message.into())
}

pub(crate) fn pseudo_error(e: crate::RefineError) -> TrainError {
    TrainError::PseudoLabel(e.to_string())
}

impl<'a> SelfTraining<'a> {
    /// Self-training of `student` on `target` (its labels are never read),
    /// with labelled `source` images mixed in when given. The teacher starts
    /// as a copy of `student`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        student: Student<'a>,
        source: Option<&'a dyn SampleSource>,
        target: &'a dyn SampleSource,
        refiner: Option<&'a dyn PseudoLabelRefiner>,
        config: &'a TrainConfig,
        settings: SelfTrainSettings,
        device: &Device,
    ) -> semla_train::error::Result<Self> {
        if target.is_empty() {
            return Err(invalid("the target domain has no images"));
        }
        if settings.target_per_step == 0 {
            return Err(invalid(
                "self-training needs at least one target image per step",
            ));
        }
        semla_core::limits::check_batch(
            (settings.target_per_step + config.batch_size) as u64,
            "a self-training batch",
        )
        .map_err(TrainError::Config)?;
        let ignore = target.ignore_label();
        let base = student.model();
        if let Some(source) = source {
            semla_data::samples::check_classes(source, base.num_classes(), "the source data")
                .map_err(TrainError::Config)?;
            if source.ignore_label() != ignore {
                return Err(invalid(format!(
                    "the source ignores label {} and the target {ignore}: they must agree",
                    source.ignore_label()
                )));
            }
        }
        if let Some(refiner) = refiner
            && u32::from(refiner.ignore_label()) != ignore
        {
            return Err(invalid(format!(
                "the refinement writes {} for unsupervised pixels, the data ignores {ignore}",
                refiner.ignore_label()
            )));
        }
        if ignore > u32::from(u16::MAX) || base.num_classes() > usize::from(u16::MAX) {
            return Err(invalid("labels must fit 16 bits"));
        }
        let teacher = EmaTeacher::new(&student.params(), settings.ema).map_err(pseudo_error)?;
        let mut teacher_model = TeacherModel::for_student(student, device)?;
        teacher_model.sync(&teacher).map_err(pseudo_error)?;
        Ok(Self {
            student,
            teacher,
            teacher_model,
            source,
            target,
            refiner,
            config,
            settings,
            normalization: student.model().normalization(),
            device: device.clone(),
            stats: PseudoLabelStats::default(),
        })
    }

    /// The teacher.
    pub fn teacher(&self) -> &EmaTeacher {
        &self.teacher
    }

    /// What the labelling did so far in this session.
    pub fn stats(&self) -> &PseudoLabelStats {
        &self.stats
    }

    /// The target images of step `step`: `(clean view, student view)` each,
    /// cropped and flipped alike; pixels outside the image (padding of a crop
    /// larger than it) carry the ignore label, all others 0.
    pub fn target_views(&self, step: usize) -> semla_train::error::Result<Vec<(Sample, Sample)>> {
        let ignore = self.target.ignore_label();
        let geometry = AugmentConfig {
            min_scale: 1.0,
            max_scale: 1.0,
            flip_probability: self.config.augment.flip_probability,
            crop: self.config.augment.crop,
        };
        let mut rng = SplitMix64::for_step(self.config.seed, step as u64, TARGET_STREAM);
        let mut views = Vec::with_capacity(self.settings.target_per_step);
        for _ in 0..self.settings.target_per_step {
            let index = rng.below(self.target.len());
            let name = self.target.describe(index);
            let mut sample = self.target.sample(index)?;
            sample.check(&name)?;
            // The target's labels are never used: every real pixel is marked
            // 0, so that the crop's padding is the only ignored part.
            sample.labels.iter_mut().for_each(|l| *l = 0);
            let clean = augment(&sample, &geometry, ignore, &mut rng);
            let student = photometric(&clean, &mut rng);
            views.push((clean, student));
        }
        Ok(views)
    }

    /// The teacher's (refined) labels of the clean views: one `H x W` map each.
    fn pseudo_labels(
        &mut self,
        step: usize,
        clean: &[&Sample],
    ) -> semla_train::error::Result<Vec<Vec<u32>>> {
        let ignore = self.target.ignore_label();
        let images = self.normalization.batch(clean, &self.device)?;
        let logits = self.teacher_model.forward(&images)?;
        let maps = logits.argmax(1)?.to_dtype(DType::U32)?.to_vec3::<u32>()?;
        let mut out = Vec::with_capacity(clean.len());
        for (i, (map, sample)) in maps.into_iter().zip(clean).enumerate() {
            let mut pseudo: Vec<u16> = map.into_iter().flatten().map(|c| c as u16).collect();
            for (p, &l) in pseudo.iter_mut().zip(&sample.labels) {
                if l == ignore {
                    *p = ignore as u16;
                }
            }
            if let Some(refiner) = self.refiner {
                let photo = sample.to_photo()?;
                let mut rng =
                    SplitMix64::for_step(self.config.seed, step as u64, REFINE_STREAM + i as u64);
                let refined = refiner
                    .refine(&photo, &pseudo, &mut rng)
                    .map_err(pseudo_error)?;
                self.stats.prompts += refined.prompts;
                self.stats.fallbacks += usize::from(refined.fallback);
                pseudo = refined.labels;
            }
            self.stats.images += 1;
            self.stats.total_px += pseudo.len();
            self.stats.ignored_px += pseudo.iter().filter(|&&p| u32::from(p) == ignore).count();
            out.push(pseudo.into_iter().map(u32::from).collect());
        }
        Ok(out)
    }
}

impl Steps for SelfTraining<'_> {
    fn batch(&mut self, step: usize) -> semla_train::error::Result<Batch> {
        let views = self.target_views(step)?;
        let clean: Vec<&Sample> = views.iter().map(|(c, _)| c).collect();
        let labels = self.pseudo_labels(step, &clean)?;
        let students: Vec<&Sample> = views.iter().map(|(_, s)| s).collect();
        let (h, w) = (students[0].height, students[0].width);
        if students.iter().any(|s| (s.height, s.width) != (h, w)) {
            return Err(invalid(
                "the target images differ in size: give a crop size to self-train on them",
            ));
        }
        let n = students.len();
        let target_images = self.normalization.batch(&students, &self.device)?;
        let flat: Vec<u32> = labels.into_iter().flatten().collect();
        let target_labels = Tensor::from_vec(flat, (n, h, w), &self.device)?;
        let Some(source) = self.source else {
            return Ok(Batch {
                images: target_images,
                labels: target_labels,
                weights: None,
            });
        };
        let source_batch =
            make_batch(source, self.config, &self.normalization, step, &self.device)?;
        let (_, _, sh, sw) = source_batch.images.dims4()?;
        if (sh, sw) != (h, w) {
            return Err(invalid(format!(
                "source images are {sh}x{sw} and target images {h}x{w}: give a crop size that fits both"
            )));
        }
        Ok(Batch {
            images: Tensor::cat(&[&source_batch.images, &target_images], 0)?,
            labels: Tensor::cat(&[&source_batch.labels, &target_labels], 0)?,
            weights: None,
        })
    }

    fn ignore_label(&self) -> u32 {
        self.target.ignore_label()
    }

    fn after_update(&mut self, step: usize) -> semla_train::error::Result<()> {
        if self
            .teacher
            .after_step(step, &self.student.params())
            .map_err(pseudo_error)?
        {
            self.teacher_model
                .sync(&self.teacher)
                .map_err(pseudo_error)?;
            self.stats.teacher_updates += 1;
        }
        Ok(())
    }

    fn state_tensors(&self) -> semla_train::error::Result<Vec<(String, Tensor)>> {
        self.teacher.checkpoint_tensors().map_err(pseudo_error)
    }

    fn load_state(
        &mut self,
        tensors: &std::collections::HashMap<String, Tensor>,
        path: &std::path::Path,
    ) -> semla_train::error::Result<()> {
        self.teacher
            .restore(tensors)
            .and_then(|()| self.teacher_model.sync(&self.teacher))
            .map_err(|e| TrainError::checkpoint(path, e.to_string()))
    }
}

/// Self-trains the LoRA `student` on the frozen `base` (see [`SelfTraining`])
/// with the one training loop; returns its summary and the labelling's statistics.
#[allow(clippy::too_many_arguments)]
pub fn self_train_adapter(
    base: &dyn Segmenter,
    student: &LoraTrainee,
    device: &Device,
    source: Option<&dyn SampleSource>,
    target: &dyn SampleSource,
    refiner: Option<&dyn PseudoLabelRefiner>,
    config: &TrainConfig,
    settings: &SelfTrainSettings,
    session: &Session<'_>,
    progress: &mut dyn FnMut(&Progress),
) -> semla_train::error::Result<(TrainSummary, PseudoLabelStats)> {
    self_train(
        Student::Adapter {
            base,
            lora: student,
        },
        device,
        source,
        target,
        refiner,
        config,
        settings,
        session,
        progress,
    )
}

/// Self-trains a [`Student`] (an adapter, or a model's own weights such as
/// its head) with the one training loop; returns its summary and the
/// labelling's statistics.
#[allow(clippy::too_many_arguments)]
pub fn self_train(
    student: Student<'_>,
    device: &Device,
    source: Option<&dyn SampleSource>,
    target: &dyn SampleSource,
    refiner: Option<&dyn PseudoLabelRefiner>,
    config: &TrainConfig,
    settings: &SelfTrainSettings,
    session: &Session<'_>,
    progress: &mut dyn FnMut(&Progress),
) -> semla_train::error::Result<(TrainSummary, PseudoLabelStats)> {
    let mut steps = SelfTraining::new(
        student,
        source,
        target,
        refiner,
        config,
        settings.clone(),
        device,
    )?;
    let trainee = student.trainee(device);
    let summary = train_steps(&trainee, &mut steps, config, session, progress)?;
    Ok((summary, steps.stats))
}
