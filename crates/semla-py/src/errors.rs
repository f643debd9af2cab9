//! One exception hierarchy for Python: every Rust error becomes a [`Failure`]
//! (a kind and the Rust message, which names the file at fault), raised as the
//! matching subclass of `semla.SemlaError` (defined in `semla/_errors.py`, so
//! that the shape and format errors are also `ValueError`s).
//!
//! A [`Failure`] is plain data: the worker threads that run with the GIL
//! released return it, and the calling thread turns it into the Python
//! exception once it holds the GIL again.

use pyo3::prelude::*;
use semla_adapters::AdapterError;
use semla_pipeline::PipelineError;
use semla_retrieval::RetrievalError;

/// Which `semla` exception a failure is raised as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `semla.SemlaError`: anything not more specific (a bad setting, ...).
    Semla,
    /// `semla.AdapterFormatError`: an adapter's files (config, weights, prototype).
    AdapterFormat,
    /// `semla.LibraryError`: a library folder, its record, its prototypes.
    Library,
    /// `semla.UnknownAdapterError` (a `LibraryError` and a `KeyError`): a name
    /// the library does not hold.
    UnknownAdapter,
    /// `semla.ModelError`: a model folder or an embedder's model.
    Model,
    /// `semla.ImageError`: an image file that cannot be read or decoded.
    Image,
    /// `semla.ShapeError`: an array of the wrong shape, dtype or size.
    Shape,
    /// `semla.DatasetError`: a label map or a dataset folder.
    Dataset,
}

impl Kind {
    fn class_name(self) -> &'static str {
        match self {
            Self::Semla => "SemlaError",
            Self::AdapterFormat => "AdapterFormatError",
            Self::Library => "LibraryError",
            Self::UnknownAdapter => "UnknownAdapterError",
            Self::Model => "ModelError",
            Self::Image => "ImageError",
            Self::Shape => "ShapeError",
            Self::Dataset => "DatasetError",
        }
    }
}

/// An error on its way to Python: the exception kind and the message.
#[derive(Debug)]
pub struct Failure {
    /// The exception to raise.
    pub kind: Kind,
    /// The message: the Rust error and its causes on one line.
    pub message: String,
}

impl Failure {
    /// A failure of `kind` with `message`.
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The failure of `error`, raised as `kind`.
    pub fn of(kind: Kind, error: &dyn std::error::Error) -> Self {
        Self::new(kind, one_line(error))
    }
}

/// The error and its causes on one line, each cause once (messages often hold
/// their cause already, as `{path}: {source}`).
fn one_line(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

impl From<Failure> for PyErr {
    fn from(failure: Failure) -> Self {
        Python::attach(|py| {
            let class = py
                .import("semla._errors")
                .and_then(|m| m.getattr(failure.kind.class_name()));
            match class {
                Ok(class) => match class.call1((failure.message.clone(),)) {
                    Ok(instance) => PyErr::from_value(instance),
                    Err(e) => e,
                },
                // The package's Python half is missing (a bare extension module).
                Err(_) => pyo3::exceptions::PyRuntimeError::new_err(failure.message),
            }
        })
    }
}

fn adapter_kind(e: &AdapterError) -> Kind {
    match e {
        AdapterError::UnknownAdapter { .. } => Kind::UnknownAdapter,
        AdapterError::Invalid { .. } | AdapterError::Io { .. } | AdapterError::Mismatch { .. } => {
            Kind::AdapterFormat
        }
        AdapterError::InvalidArgument(_) | AdapterError::Candle(_) => Kind::Semla,
    }
}

fn retrieval_kind(e: &RetrievalError) -> Kind {
    match e {
        RetrievalError::DimensionMismatch { .. }
        | RetrievalError::NonFiniteQuery { .. }
        | RetrievalError::EmptyQuery
        | RetrievalError::ZeroNorm { .. } => Kind::Shape,
        RetrievalError::ZeroTopK | RetrievalError::InvalidTemperature(_) => Kind::Semla,
        _ => Kind::Library,
    }
}

impl From<AdapterError> for Failure {
    fn from(e: AdapterError) -> Self {
        Self::of(adapter_kind(&e), &e)
    }
}

impl From<RetrievalError> for Failure {
    fn from(e: RetrievalError) -> Self {
        Self::of(retrieval_kind(&e), &e)
    }
}

impl From<PipelineError> for Failure {
    fn from(e: PipelineError) -> Self {
        let kind = match &e {
            PipelineError::Adapter(inner) => adapter_kind(inner),
            PipelineError::Retrieval(inner) => retrieval_kind(inner),
            PipelineError::Model(_) | PipelineError::Clip(_) => Kind::Model,
            PipelineError::Image(_) => Kind::Image,
            PipelineError::Sample(_) => Kind::Shape,
            PipelineError::Domain(_) => Kind::Dataset,
            PipelineError::Io { .. }
            | PipelineError::Invalid(_)
            | PipelineError::Config(_)
            | PipelineError::Tensor(_) => Kind::Semla,
        };
        Self::of(kind, &e)
    }
}

impl From<semla_models::ModelDirError> for Failure {
    fn from(e: semla_models::ModelDirError) -> Self {
        Self::of(Kind::Model, &e)
    }
}

impl From<semla_metrics::MetricsError> for Failure {
    fn from(e: semla_metrics::MetricsError) -> Self {
        Self::of(Kind::Shape, &e)
    }
}

impl From<candle_core::Error> for Failure {
    fn from(e: candle_core::Error) -> Self {
        Self::of(Kind::Semla, &e)
    }
}

/// Result of work that may run without the GIL.
pub type Outcome<T> = std::result::Result<T, Failure>;
