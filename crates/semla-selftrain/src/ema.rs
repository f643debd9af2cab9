//! CLOUDS' EMA teacher of a LoRA adapter: a copy of the student's factors
//! taken at the start, then moved towards the student only every
//! `every`-th step, `theta_T <- alpha theta_T + (1 - alpha) theta_S`
//! (`ALPHA_EMA` 0.999, `ITERATION_UPDATE` 100 in the official code).
//!
//! The official teacher is the EMA of the whole segmentation head; with a
//! LoRA adapter on a frozen base, the student's parameters are the adapter's
//! factors, so the teacher is their EMA (the base is shared, as the official
//! frozen backbone is).

use candle_core::Tensor;
use semla_adapters::{Adaptation, FactoredSite};
use semla_train::lora::{LoraTrainee, peft_key};

use crate::error::{RefineError, Result};

/// The EMA schedule. Defaults: the official `0.999` every `100` steps.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EmaSettings {
    /// Weight of the teacher's old value in an update.
    pub alpha: f64,
    /// The teacher updates after every this many optimizer steps.
    pub every: usize,
}

impl Default for EmaSettings {
    fn default() -> Self {
        Self {
            alpha: 0.999,
            every: 100,
        }
    }
}

/// The teacher's factors per site, and the adaptation that applies them.
pub struct EmaTeacher {
    settings: EmaSettings,
    /// `(site path, A, B, coeff)`, in the student's site order.
    sites: Vec<(String, Tensor, Tensor, Tensor)>,
    adaptation: Adaptation,
    updates: usize,
}

impl EmaTeacher {
    /// A teacher equal to `student` now (the official copy at iteration 0).
    pub fn new(student: &LoraTrainee, settings: EmaSettings) -> Result<Self> {
        if !(settings.alpha.is_finite() && (0.0..=1.0).contains(&settings.alpha)) {
            return Err(RefineError::Invalid(format!(
                "the EMA alpha must be in [0, 1], got {}",
                settings.alpha
            )));
        }
        if settings.every == 0 {
            return Err(RefineError::Invalid(
                "the EMA teacher must update every 1 or more steps".into(),
            ));
        }
        let mut sites = Vec::new();
        for (path, a, b) in student.factors() {
            let Some(c) = student.adaptation().get(&path).map(|s| &s.coeff) else {
                return Err(RefineError::Invalid(format!(
                    "the student has no coefficient at site {path}"
                )));
            };
            sites.push((path, a.copy()?, b.copy()?, c.clone()));
        }
        let mut teacher = Self {
            settings,
            sites,
            adaptation: Adaptation::none(),
            updates: 0,
        };
        teacher.rebuild();
        Ok(teacher)
    }

    fn rebuild(&mut self) {
        let mut adaptation = Adaptation::none();
        for (path, a, b, coeff) in &self.sites {
            adaptation.insert(
                path.clone(),
                FactoredSite {
                    a: a.clone(),
                    b: b.clone(),
                    coeff: coeff.clone(),
                },
            );
        }
        self.adaptation = adaptation;
    }

    /// The adaptation of the teacher's factors (plain tensors: no gradient).
    pub fn adaptation(&self) -> &Adaptation {
        &self.adaptation
    }

    /// Teacher updates applied so far.
    pub fn updates(&self) -> usize {
        self.updates
    }

    /// After optimizer step `step` (0-based): when `step + 1` is a multiple of
    /// `every`, moves every factor to `alpha * teacher + (1 - alpha) * student`.
    /// Returns whether it updated.
    pub fn after_step(&mut self, step: usize, student: &LoraTrainee) -> Result<bool> {
        if !(step + 1).is_multiple_of(self.settings.every) {
            return Ok(false);
        }
        let alpha = self.settings.alpha;
        for ((path, a, b, _), (student_path, sa, sb)) in
            self.sites.iter_mut().zip(student.factors())
        {
            if *path != student_path {
                return Err(RefineError::Invalid(format!(
                    "the teacher's site {path} is the student's {student_path}"
                )));
            }
            *a = ((&*a * alpha)? + (sa * (1.0 - alpha))?)?;
            *b = ((&*b * alpha)? + (sb * (1.0 - alpha))?)?;
        }
        self.updates += 1;
        self.rebuild();
        Ok(true)
    }

    /// The teacher's factors under `teacher.`-prefixed PEFT keys (for checkpoints).
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.sites.len());
        for (path, a, b, _) in &self.sites {
            out.push((format!("teacher.{}", peft_key(path, "A")), a.clone()));
            out.push((format!("teacher.{}", peft_key(path, "B")), b.clone()));
        }
        out
    }

    /// Restores the factors [`EmaTeacher::tensors`] saved; `updates` is how
    /// many updates they had.
    pub fn load(
        &mut self,
        tensors: &std::collections::HashMap<String, Tensor>,
        updates: usize,
    ) -> Result<()> {
        for (path, a, b, _) in &mut self.sites {
            for (factor, value) in [("A", &mut *a), ("B", &mut *b)] {
                let key = format!("teacher.{}", peft_key(path, factor));
                let Some(saved) = tensors.get(&key) else {
                    return Err(RefineError::Invalid(format!("the checkpoint lacks {key}")));
                };
                if saved.dims() != value.dims() {
                    return Err(RefineError::Invalid(format!(
                        "{key} has shape {:?}, the teacher {:?}",
                        saved.dims(),
                        value.dims()
                    )));
                }
                *value = saved.clone();
            }
        }
        self.updates = updates;
        self.rebuild();
        Ok(())
    }
}
