//! Errors of the training crate.

use std::path::PathBuf;

/// Everything that can go wrong while training or evaluating.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A checkpoint is missing, truncated or does not fit the model being trained.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint file or folder.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A training sample could not be produced or is inconsistent.
    #[error(transparent)]
    Sample(#[from] semla_data::SampleError),
    /// A self-training step could not label its target images.
    #[error("pseudo-labelling failed: {0}")]
    PseudoLabel(String),
    /// The training configuration is invalid.
    #[error("invalid training configuration: {0}")]
    Config(String),
    /// Training diverged (the loss became NaN or infinite).
    #[error("training diverged at step {step}: loss is {loss}")]
    Diverged {
        /// Step at which the loss stopped being finite.
        step: usize,
        /// The loss value.
        loss: f32,
    },
}

impl TrainError {
    /// An I/O error about `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A checkpoint error about `path`.
    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl From<semla_core::FsError> for TrainError {
    fn from(e: semla_core::FsError) -> Self {
        Self::io(e.path, e.source)
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, TrainError>;
