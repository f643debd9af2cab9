//! # semla-models
//!
//! Models with adapter sites. Every adaptable layer is a
//! [`semla_adapters::AdaptedLinear`] or [`semla_adapters::AdaptedConv2d`] whose
//! path is the checkpoint key path, so PEFT module paths and checkpoint keys agree.
//!
//! - [`segmenter`]: the [`Segmenter`] interface the rest of the system uses, and the
//!   input [`Normalization`] (samples to a normalised batch, once).
//! - [`config`]: the configuration of every segmenter kind (`config.json`).
//! - [`model_dir`]: model folders (load, save) and the registry of kinds.
//! - [`tiny`], [`efficientnet`] (+ [`lraspp`]): the segmenters.
//! - [`catseg`]: CAT-Seg, the open-vocabulary segmenter of SemLA's paper (official
//!   checkpoint layout, sliding-window inference).
//! - [`clip`]: CLIP (Hugging Face layout): vision and text towers, tokenizer,
//!   `CLIPImageProcessor` preprocessing.
//! - [`sam`]: Segment Anything (official checkpoint layout, `SamPredictor`'s
//!   pre- and post-processing), the mask proposer of CLOUDS.
//! - [`checkpoint`]: PyTorch `.pth` and safetensors checkpoints, read with
//!   bounds checked before anything is allocated.
//! - [`kernels`]: fused CPU inference kernels (attention, activation).
//! - [`device`]: `--device cpu|cuda[:N]|auto` (CUDA behind the `cuda` feature).

pub mod catseg;
pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod device;
pub mod efficientnet;
pub(crate) mod fastmath;
pub mod kernels;
pub(crate) mod layers;
pub mod lraspp;
pub mod model_dir;
pub mod sam;
pub mod segmenter;
pub mod tiny;

pub use config::SegmenterConfig;
pub use model_dir::{
    ModelDirError, load_segmenter, random_segmenter, read_segmenter_config, save_segmenter,
};
pub use segmenter::{Normalization, Segmenter, TrainingObjective};
