//! # semla-train
//!
//! Training loops for semla's segmenters and adapters:
//!
//! - [`loss`]: pixel-wise cross-entropy with an ignore label, built from ops
//!   that all have a backward pass.
//! - [`optim`]: AdamW with decoupled weight decay, global-norm gradient
//!   clipping, and [`schedule`]: linear warmup then cosine decay.
//! - [`augment`]: the seeded random scale / crop / flip applied to training
//!   samples (the samples and their sources are `semla_data::samples`).
//! - [`trainer`]: the loop shared by base and adapter training, with
//!   checkpoints (trainable tensors, optimizer state, step, seed) and resume.
//! - [`lora`]: a LoRA adapter being trained on a frozen base segmenter.
//!
//! Randomness is derived from `(seed, step)` only, so a resumed run draws the
//! same batches as an uninterrupted one.

pub mod augment;
pub mod error;
pub mod lora;
pub mod loss;
pub mod optim;
pub mod runs;
pub mod schedule;
pub mod soma;
pub mod trainer;

pub use error::TrainError;
