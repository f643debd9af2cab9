//! SoMA options of `semla adapter train`: `--init lora|soma`, `--freeze-blocks`
//! and weight-decay annealing (the mechanisms live in [`semla_train::soma`]).

use anyhow::bail;
use semla_train::soma::WeightDecayAnneal;
use serde::Serialize;

/// How `semla adapter train` initialises the adapter.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InitChoice {
    /// PEFT's LoRA init: Kaiming-uniform A, zero B.
    Lora,
    /// SoMA: A and B from the r smallest singular triplets of each weight;
    /// the base trains on the principal residual; the adapter is saved as an
    /// exact rank-2r LoRA relative to the original base.
    Soma,
}

/// Weight-decay schedules.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecaySchedule {
    /// AdamW's constant `--weight-decay`.
    Constant,
    /// Cosine from `--wd-start` to `--wd-end` over the run (SoMA's recipe).
    Cosine,
}

/// Initialisation and regularisation options of `semla adapter train`.
#[derive(clap::Args, Debug, Clone)]
pub struct InitOptions {
    /// Adapter initialisation.
    #[arg(long, value_enum, default_value = "lora")]
    pub init: InitChoice,
    /// Put no adapter on sites in the first N blocks (EfficientNet:
    /// `_blocks.K` with K < N; tiny segmenter: stem 0, down1 1, down2 2, head 3).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub freeze_blocks: usize,
    /// Weight-decay schedule (default: cosine with `--init soma`, constant otherwise).
    #[arg(long, value_enum)]
    pub wd_schedule: Option<DecaySchedule>,
    /// Weight decay at the first step of the cosine schedule.
    #[arg(long, default_value_t = 0.05)]
    pub wd_start: f64,
    /// Weight decay at the end of the cosine schedule.
    #[arg(long, default_value_t = 1e-5)]
    pub wd_end: f64,
}

impl InitOptions {
    fn schedule(&self) -> DecaySchedule {
        self.wd_schedule.unwrap_or(match self.init {
            InitChoice::Soma => DecaySchedule::Cosine,
            InitChoice::Lora => DecaySchedule::Constant,
        })
    }

    /// Whether these options need [`train_with_init`] (anything but plain LoRA
    /// with a constant decay and every targeted site).
    pub fn is_custom(&self) -> bool {
        self.init != InitChoice::Lora
            || self.freeze_blocks > 0
            || self.schedule() == DecaySchedule::Cosine
    }

    /// The weight-decay annealing of these options over `steps` steps (`None`: constant).
    pub fn anneal(&self, steps: usize) -> anyhow::Result<Option<WeightDecayAnneal>> {
        if self.schedule() == DecaySchedule::Constant {
            return Ok(None);
        }
        for (flag, v) in [("--wd-start", self.wd_start), ("--wd-end", self.wd_end)] {
            if !(v.is_finite() && v >= 0.0) {
                bail!("{flag} must be a non-negative number, got {v}");
            }
        }
        Ok(Some(WeightDecayAnneal {
            start: self.wd_start,
            end: self.wd_end,
            total_steps: steps,
        }))
    }
}
