//! CLOUDS' EMA teacher: a copy of the student's trainable weights taken at
//! the start, then moved towards the student only every `every`-th step,
//! `theta_T <- alpha theta_T + (1 - alpha) theta_S` (`ALPHA_EMA` 0.999,
//! `ITERATION_UPDATE` 100 in the official code).
//!
//! The official teacher is the EMA of the whole segmentation head on a
//! frozen backbone. Here the student's trainable weights are either a head
//! (the official case) or a LoRA adapter's factors on a frozen base; either
//! way the teacher is the EMA of exactly those, and shares the frozen rest.
//! This type keeps the values; [`crate::training`] applies them to a model.

use candle_core::{Tensor, Var};

use crate::error::{RefineError, Result};

/// The checkpoint key of the teacher's update count.
const UPDATES_KEY: &str = "teacher.__updates__";

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

/// The teacher's value of each of the student's trainable weights.
pub struct EmaTeacher {
    settings: EmaSettings,
    /// `(name, value)` in the student's order.
    values: Vec<(String, Tensor)>,
    updates: usize,
}

impl EmaTeacher {
    /// A teacher equal to the student's `params` now (the official copy at
    /// iteration 0).
    pub fn new(params: &[(String, Var)], settings: EmaSettings) -> Result<Self> {
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
        let values = params
            .iter()
            .map(|(name, var)| Ok((name.clone(), var.as_tensor().detach().copy()?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            settings,
            values,
            updates: 0,
        })
    }

    /// `(name, value)` of every weight (plain tensors: no gradient).
    pub fn values(&self) -> &[(String, Tensor)] {
        &self.values
    }

    /// The value of weight `name`.
    pub fn value(&self, name: &str) -> Option<&Tensor> {
        self.values.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// Teacher updates applied so far.
    pub fn updates(&self) -> usize {
        self.updates
    }

    /// After optimizer step `step` (0-based): when `step + 1` is a multiple of
    /// `every`, moves every weight to `alpha * teacher + (1 - alpha) * student`
    /// (`params` in the order the teacher was made from). Returns whether it
    /// updated.
    pub fn after_step(&mut self, step: usize, params: &[(String, Var)]) -> Result<bool> {
        if !(step + 1).is_multiple_of(self.settings.every) {
            return Ok(false);
        }
        self.update(self.settings.alpha, params)?;
        Ok(true)
    }

    /// Moves every weight to `alpha * teacher + (1 - alpha) * student` now
    /// (`params` in the order the teacher was made from), whatever the step:
    /// DACS' mean teacher updates every step with its own ramped alpha.
    pub fn update(&mut self, alpha: f64, params: &[(String, Var)]) -> Result<()> {
        if !(alpha.is_finite() && (0.0..=1.0).contains(&alpha)) {
            return Err(RefineError::Invalid(format!(
                "the EMA alpha must be in [0, 1], got {alpha}"
            )));
        }
        if params.len() != self.values.len() {
            return Err(RefineError::Invalid(format!(
                "the teacher has {} weights, the student {}",
                self.values.len(),
                params.len()
            )));
        }
        for ((name, value), (student_name, var)) in self.values.iter_mut().zip(params) {
            if name != student_name {
                return Err(RefineError::Invalid(format!(
                    "the teacher's weight {name} is the student's {student_name}"
                )));
            }
            let student = var.as_tensor().detach();
            *value = ((&*value * alpha)? + (student * (1.0 - alpha))?)?;
        }
        self.updates += 1;
        Ok(())
    }

    /// What a checkpoint keeps of the teacher: its weights
    /// ([`EmaTeacher::tensors`]) and its update count.
    pub fn checkpoint_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut tensors = self.tensors();
        tensors.push((
            UPDATES_KEY.to_string(),
            Tensor::new(&[self.updates as i64], &candle_core::Device::Cpu)?,
        ));
        Ok(tensors)
    }

    /// Restores what [`EmaTeacher::checkpoint_tensors`] saved.
    pub fn restore(&mut self, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        let updates = tensors
            .get(UPDATES_KEY)
            .map(|t| t.to_vec1::<i64>())
            .transpose()?
            .and_then(|v| v.first().copied())
            .ok_or_else(|| RefineError::Invalid(format!("the checkpoint lacks {UPDATES_KEY}")))?;
        self.load(tensors, updates.max(0) as usize)
    }

    /// The teacher's weights under `teacher.`-prefixed names (for checkpoints).
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.values
            .iter()
            .map(|(name, value)| (format!("teacher.{name}"), value.clone()))
            .collect()
    }

    /// Restores the weights [`EmaTeacher::tensors`] saved; `updates` is how
    /// many updates they had.
    pub fn load(
        &mut self,
        tensors: &std::collections::HashMap<String, Tensor>,
        updates: usize,
    ) -> Result<()> {
        for (name, value) in &mut self.values {
            let key = format!("teacher.{name}");
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
            *value = saved.to_dtype(value.dtype())?;
        }
        self.updates = updates;
        Ok(())
    }
}
