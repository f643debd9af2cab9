//! What self-training trains ([`Student`]: a LoRA adapter on a frozen base,
//! or some of a model's own weights) and the teacher model its EMA values are
//! applied to, shared by CLOUDS' and DACS' loops.

use candle_core::{Device, Tensor, Var};
use semla_adapters::{Adaptation, FactoredSite};
use semla_models::Segmenter;
use semla_train::lora::{LoraTrainee, peft_key};
use semla_train::runs::{adapter_trainee, with_trainable_part};
use semla_train::trainer::Trainee;

use crate::ema::EmaTeacher;

/// What self-training trains.
#[derive(Clone, Copy)]
pub enum Student<'a> {
    /// A LoRA adapter on a frozen base; the teacher is the EMA of its
    /// factors, applied to the same base.
    Adapter {
        /// The frozen base.
        base: &'a dyn Segmenter,
        /// The adapter's factors.
        lora: &'a LoraTrainee,
    },
    /// Some of a model's own weights (its head, say: the official case),
    /// the rest frozen, as `semla_train::runs::with_trainable_part` makes it;
    /// the teacher is a second copy whose weights follow their EMA.
    Weights {
        /// The model, built over `params` and plain frozen tensors.
        model: &'a dyn Segmenter,
        /// Its trainable weights, sorted by name.
        params: &'a [(String, Var)],
    },
}

impl<'a> Student<'a> {
    /// The model the student's logits come from.
    pub(crate) fn model(&self) -> &'a dyn Segmenter {
        match *self {
            Self::Adapter { base, .. } => base,
            Self::Weights { model, .. } => model,
        }
    }

    pub(crate) fn params(&self) -> Vec<(String, Var)> {
        match self {
            Self::Adapter { lora, .. } => lora.params(),
            Self::Weights { params, .. } => params.to_vec(),
        }
    }

    /// The training loop's view of the student (for supervised training of
    /// the same weights, too).
    pub fn trainee(&self, device: &Device) -> Trainee<'a> {
        match *self {
            Self::Adapter { base, lora } => adapter_trainee(base, lora, device),
            Self::Weights { model, params } => Trainee {
                params: params.to_vec(),
                forward: Box::new(move |images| model.training_logits(images, &Adaptation::none())),
                normalization: model.normalization(),
                objective: model.training_objective(),
                device: device.clone(),
            },
        }
    }
}

/// The model the teacher's values are applied to.
pub(crate) enum TeacherModel<'a> {
    /// The student's base with the teacher's factors.
    Adapter {
        base: &'a dyn Segmenter,
        lora: &'a LoraTrainee,
        adaptation: Adaptation,
    },
    /// A copy of the student's model whose variables hold the teacher's values.
    Weights {
        model: Box<dyn Segmenter>,
        vars: Vec<(String, Var)>,
    },
}

impl TeacherModel<'_> {
    /// Makes the model predict with `teacher`'s values.
    pub(crate) fn sync(&mut self, teacher: &EmaTeacher) -> crate::Result<()> {
        let missing = |name: &str| crate::RefineError::Invalid(format!("the teacher lacks {name}"));
        match self {
            Self::Adapter {
                lora, adaptation, ..
            } => {
                let mut fresh = Adaptation::none();
                for (path, _, _) in lora.factors() {
                    let coeff = lora
                        .adaptation()
                        .get(&path)
                        .map(|s| s.coeff.clone())
                        .ok_or_else(|| missing(&path))?;
                    let (key_a, key_b) = (peft_key(&path, "A"), peft_key(&path, "B"));
                    let a = teacher.value(&key_a).ok_or_else(|| missing(&key_a))?;
                    let b = teacher.value(&key_b).ok_or_else(|| missing(&key_b))?;
                    fresh.insert(
                        path,
                        FactoredSite {
                            a: a.clone(),
                            b: b.clone(),
                            coeff,
                        },
                    );
                }
                *adaptation = fresh;
            }
            Self::Weights { vars, .. } => {
                for (name, var) in vars.iter() {
                    var.set(teacher.value(name).ok_or_else(|| missing(name))?)?;
                }
            }
        }
        Ok(())
    }

    /// The teacher's logits `[N, C, H, W]` of normalised `images`, detached.
    pub(crate) fn forward(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        let logits = match self {
            Self::Adapter {
                base, adaptation, ..
            } => base.forward(images, adaptation)?,
            Self::Weights { model, .. } => model.forward(images, &Adaptation::none())?,
        };
        Ok(logits.detach())
    }
}

impl<'a> TeacherModel<'a> {
    /// The teacher's model for `student`, over the student's frozen parts.
    pub(crate) fn for_student(
        student: Student<'a>,
        device: &Device,
    ) -> semla_train::error::Result<Self> {
        Ok(match student {
            Student::Adapter { base, lora } => Self::Adapter {
                base,
                lora,
                adaptation: Adaptation::none(),
            },
            Student::Weights { model, params } => {
                let names: std::collections::HashSet<&str> =
                    params.iter().map(|(n, _)| n.as_str()).collect();
                let (model, vars) =
                    with_trainable_part(model, &|name| names.contains(name), device)?;
                Self::Weights { model, vars }
            }
        })
    }
}
