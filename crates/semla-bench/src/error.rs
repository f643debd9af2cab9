//! Errors of the studies; each names the file, domain or stage at fault.

use std::path::PathBuf;

/// Everything that can go wrong running a study.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Bad settings or input.
    #[error("{0}")]
    Invalid(String),
    /// An experiment failed.
    #[error(transparent)]
    Experiment(Box<semla_experiments::ExperimentError>),
    /// The per-image path failed.
    #[error(transparent)]
    Pipeline(Box<semla_pipeline::PipelineError>),
    /// Training failed.
    #[error(transparent)]
    Train(#[from] semla_train::TrainError),
    /// An adapter or the library is unusable.
    #[error(transparent)]
    Adapter(#[from] semla_adapters::AdapterError),
    /// Retrieval failed.
    #[error(transparent)]
    Retrieval(#[from] semla_retrieval::RetrievalError),
    /// A model folder is unusable.
    #[error(transparent)]
    Model(#[from] semla_models::ModelDirError),
    /// A sample could not be read.
    #[error(transparent)]
    Sample(#[from] semla_data::SampleError),
    /// A domain could not be resolved or read.
    #[error(transparent)]
    Domain(#[from] semla_data::domains::DomainError),
    /// An image could not be written.
    #[error(transparent)]
    Image(#[from] semla_data::labels::LabelError),
    /// The synthetic world could not render a domain.
    #[error(transparent)]
    Synthetic(#[from] semla_data::synthetic::SyntheticError),
    /// Refining or scoring a pseudo-label failed.
    #[error(transparent)]
    Refine(#[from] semla_selftrain::RefineError),
    /// CSI's relabeling failed or is misconfigured.
    #[error(transparent)]
    Csi(#[from] semla_csi::CsiError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

impl BenchError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<semla_experiments::ExperimentError> for BenchError {
    fn from(e: semla_experiments::ExperimentError) -> Self {
        Self::Experiment(Box::new(e))
    }
}

impl From<semla_pipeline::PipelineError> for BenchError {
    fn from(e: semla_pipeline::PipelineError) -> Self {
        Self::Pipeline(Box::new(e))
    }
}

impl From<semla_core::FsError> for BenchError {
    fn from(e: semla_core::FsError) -> Self {
        Self::io(e.path, e.source)
    }
}

/// Result of the studies.
pub type Result<T> = std::result::Result<T, BenchError>;
