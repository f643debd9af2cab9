//! CLIP (Hugging Face `CLIPModel` layout) with an adapter site on every
//! Linear, its BPE tokenizer and `CLIPImageProcessor` preprocessing.
//!
//! - [`config`] - `config.json` (`CLIPConfig` with `text_config` / `vision_config`)
//!   with transformers' documented defaults.
//! - [`model`] - the vision and text towers ([`ClipModel`]). Every Linear is a
//!   [`semla_adapters::AdaptedLinear`] whose path is the checkpoint key path
//!   (`vision_model.encoder.layers.0.self_attn.q_proj`, ...), so PEFT module
//!   paths and checkpoint paths coincide; the patch embedding is an
//!   [`semla_adapters::AdaptedConv2d`].
//! - [`tokenizer`] - OpenAI's `SimpleTokenizer` on the vendored vocabulary.
//! - [`preprocess`] - `CLIPImageProcessor` (shortest side, Pillow's antialiased
//!   bicubic resampling reproduced bit-exactly, centre crop, normalisation).

pub mod config;
pub mod model;
pub mod preprocess;
pub mod tokenizer;

use std::path::PathBuf;

pub use config::{Activation, ClipConfig, ClipTextConfig, ClipVisionConfig};
pub use model::{ClipModel, DenseTokens, Kernels, VisionOutput, random_vision_weights};
pub use preprocess::{ImageProcessor, Resample};
pub use tokenizer::{ClipTokenizer, Padding};

/// Errors of the CLIP module; each names the file or input at fault.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    /// A file could not be read or written.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error (shown in the message, so not chained as a source).
        cause: std::io::Error,
    },
    /// A JSON file is not valid JSON or does not have the expected fields.
    #[error("{path}: invalid JSON: {cause}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error (shown in the message, so not chained as a source).
        cause: serde_json::Error,
    },
    /// A configuration value is out of range or unsupported.
    #[error("{path}: {message}")]
    Config {
        /// The file (or a description of the source of the configuration).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The weights do not fit the configuration (missing tensor, wrong shape, ...).
    #[error("{path}: {cause}")]
    Weights {
        /// The weights file or folder.
        path: PathBuf,
        /// The underlying error (shown in the message, so not chained as a source).
        cause: candle_core::Error,
    },
    /// An image file could not be read or decoded.
    #[error(transparent)]
    Photo(#[from] semla_data::labels::LabelError),
    /// Bad input to the model (wrong shape, out-of-range token id, ...).
    #[error("CLIP input: {0}")]
    Input(String),
    /// The tokenizer's vocabulary is unusable.
    #[error("CLIP tokenizer: {0}")]
    Tokenizer(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}
