//! Errors of the experiment engine; each names the target, file or adapter at fault.

use std::path::PathBuf;

/// Everything that can go wrong running an experiment.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// A file or folder could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Bad input: an unknown target adapter, an empty target, ...
    #[error("{0}")]
    Invalid(String),
    /// A shard part file is not one (or not a whole one).
    #[error("{path}: {message}")]
    Part {
        /// The part file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Shard parts that are not one complete run.
    #[error("cannot merge the shard parts: {0}")]
    Merge(String),
    /// The per-image path failed (embedding, retrieval, fusion, forward).
    #[error(transparent)]
    Pipeline(Box<semla_pipeline::PipelineError>),
    /// A sample could not be read or is inconsistent.
    #[error(transparent)]
    Sample(#[from] semla_data::SampleError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

impl ExperimentError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<semla_pipeline::PipelineError> for ExperimentError {
    fn from(e: semla_pipeline::PipelineError) -> Self {
        Self::Pipeline(Box::new(e))
    }
}

impl From<semla_core::FsError> for ExperimentError {
    fn from(e: semla_core::FsError) -> Self {
        Self::io(e.path, e.source)
    }
}

/// Result of the experiment engine.
pub type Result<T> = std::result::Result<T, ExperimentError>;
