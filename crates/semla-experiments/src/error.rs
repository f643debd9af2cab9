//! Errors of the experiment engine; each names the file, domain or adapter at fault.

use std::path::PathBuf;

/// Everything that can go wrong running an experiment.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Bad input: a mismatched embedder, an unknown target, an empty batch, ...
    #[error("{0}")]
    Invalid(String),
    /// A JSON file is unreadable.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// An adapter or the library is unusable.
    #[error(transparent)]
    Adapter(#[from] semla_adapters::AdapterError),
    /// Retrieval failed (prototype dimension, non-finite embedding, ...).
    #[error(transparent)]
    Retrieval(#[from] semla_retrieval::RetrievalError),
    /// A retrieval configuration file is unusable.
    #[error(transparent)]
    Config(#[from] semla_retrieval::ConfigError),
    /// Training or sample loading failed.
    #[error(transparent)]
    Train(#[from] semla_train::TrainError),
    /// A model folder is unusable.
    #[error(transparent)]
    Model(#[from] semla_models::segmenter::ModelDirError),
    /// The CLIP embedder is unusable.
    #[error(transparent)]
    Clip(#[from] semla_models::clip::ClipError),
    /// A domain could not be resolved or read.
    #[error(transparent)]
    Domain(#[from] semla_data::domains::DomainError),
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

/// Result of the experiment engine.
pub type Result<T> = std::result::Result<T, ExperimentError>;

/// Writes `bytes` to `path` through a temporary file in the same folder and a
/// rename, so that the file is never seen half-written.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| ExperimentError::io(&dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| ExperimentError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ExperimentError::io(path, e)
    })
}
