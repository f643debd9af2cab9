//! Errors of CSI's relabeling.

/// What can go wrong configuring or running the relabeling.
#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    /// A relabeling configuration that cannot run (names the file when read from one).
    #[error("relabeling config{}: {message}", .origin.as_deref().map(|o| format!(" {o}")).unwrap_or_default())]
    Config {
        /// The file, when the config came from one.
        origin: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// Inputs that do not fit together (sizes, classes).
    #[error("{0}")]
    Invalid(String),
    /// The classifier or the box proposer failed.
    #[error("{model}: {message}")]
    Model {
        /// Which model.
        model: String,
        /// What went wrong.
        message: String,
    },
    /// Training failed.
    #[error(transparent)]
    Train(#[from] semla_train::error::TrainError),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl CsiError {
    /// A configuration error without a file.
    pub fn config(message: impl Into<String>) -> Self {
        Self::Config {
            origin: None,
            message: message.into(),
        }
    }
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, CsiError>;
