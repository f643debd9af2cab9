//! Errors of the per-image path; each names the file, adapter or setting at fault.

use std::path::PathBuf;

/// Everything that can go wrong segmenting an image with a library.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Bad input: a mismatched embedder, an unknown adapter, an empty batch, ...
    #[error("{0}")]
    Invalid(String),
    /// An adapter or the library is unusable.
    #[error(transparent)]
    Adapter(#[from] semla_adapters::AdapterError),
    /// Retrieval failed (prototype dimension, non-finite embedding, ...).
    #[error(transparent)]
    Retrieval(#[from] semla_retrieval::RetrievalError),
    /// A configuration file is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A model folder is unusable.
    #[error(transparent)]
    Model(#[from] semla_models::ModelDirError),
    /// The CLIP embedder is unusable.
    #[error(transparent)]
    Clip(#[from] semla_models::clip::ClipError),
    /// A sample could not be read or is inconsistent.
    #[error(transparent)]
    Sample(#[from] semla_data::SampleError),
    /// A domain could not be resolved or read.
    #[error(transparent)]
    Domain(#[from] semla_data::domains::DomainError),
    /// An image could not be read, decoded or written.
    #[error(transparent)]
    Image(#[from] semla_data::labels::LabelError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

impl PipelineError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<semla_core::FsError> for PipelineError {
    fn from(e: semla_core::FsError) -> Self {
        Self::io(e.path, e.source)
    }
}

/// Result of the pipeline.
pub type Result<T> = std::result::Result<T, PipelineError>;
