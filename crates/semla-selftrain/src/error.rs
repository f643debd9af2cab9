//! Errors of the refinement.

/// What can go wrong refining a pseudo-label.
#[derive(Debug, thiserror::Error)]
pub enum RefineError {
    /// Inputs that do not fit together (sizes, prompt lengths).
    #[error("{0}")]
    Invalid(String),
    /// The mask proposer failed.
    #[error("mask proposer: {0}")]
    Proposer(String),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, RefineError>;
