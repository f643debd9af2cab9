//! Errors of this crate. Every variant that comes from a file names it.

use std::path::PathBuf;

/// Everything that can go wrong reading, checking, fusing or writing adapters.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// An I/O error on a file or folder.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file that exists but whose content is wrong (bad JSON, bad header,
    /// missing tensor, wrong shape, NaN, ...).
    #[error("{path}: {message}")]
    Invalid {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// An adapter does not fit a model (unknown site, wrong shape).
    #[error("adapter {adapter}: {message}")]
    Mismatch {
        /// Adapter name.
        adapter: String,
        /// What does not fit.
        message: String,
    },
    /// A name that the library does not hold.
    #[error("no adapter named {name:?} in library {library}; available: {}", available.join(", "))]
    UnknownAdapter {
        /// The name asked for.
        name: String,
        /// The library folder.
        library: PathBuf,
        /// Names that exist.
        available: Vec<String>,
    },
    /// Bad arguments to a fusion or application (empty or non-finite weights, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// An error from candle's tensor code.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

impl AdapterError {
    /// An [`AdapterError::Invalid`] for `path`.
    pub fn invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Invalid {
            path: semla_core::fs::user_path(&path.into()),
            message: message.into(),
        }
    }

    /// An [`AdapterError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: semla_core::fs::user_path(&path.into()),
            source,
        }
    }
}

impl From<semla_core::FsError> for AdapterError {
    fn from(e: semla_core::FsError) -> Self {
        Self::io(e.path, e.source)
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, AdapterError>;
