//! Errors of retrieval (bad prototypes, bad queries, bad parameters).

/// Something is wrong with the prototypes, the query or the retrieval
/// parameters. Every variant names the prototype or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum RetrievalError {
    /// A prototype with no entries.
    #[error("prototype '{name}' is empty (dimension 0)")]
    EmptyPrototype {
        /// Name of the adapter the prototype belongs to.
        name: String,
    },
    /// Two prototypes under the same adapter name.
    #[error("two prototypes are named '{name}'; adapter names must be unique")]
    DuplicateName {
        /// The repeated name.
        name: String,
    },
    /// A prototype whose dimension differs from the others or from the query.
    #[error(
        "prototype '{name}' has dimension {found}, but {expected_from} has dimension {expected}"
    )]
    DimensionMismatch {
        /// Name of the mismatching prototype.
        name: String,
        /// Its dimension.
        found: usize,
        /// The dimension expected.
        expected: usize,
        /// Where the expected dimension comes from ("the query", "prototype 'x'").
        expected_from: String,
    },
    /// A NaN or infinite entry in a prototype.
    #[error("prototype '{name}' has a non-finite value ({value}) at index {index}")]
    NonFinitePrototype {
        /// Name of the prototype.
        name: String,
        /// Index of the first bad entry.
        index: usize,
        /// The bad value.
        value: f32,
    },
    /// A NaN or infinite entry in the query embedding.
    #[error("the query embedding has a non-finite value ({value}) at index {index}")]
    NonFiniteQuery {
        /// Index of the first bad entry.
        index: usize,
        /// The bad value.
        value: f32,
    },
    /// The query embedding has no entries.
    #[error("the query embedding is empty (dimension 0)")]
    EmptyQuery,
    /// Cosine similarity of a zero vector is undefined.
    #[error("cosine similarity is undefined: {what} has norm 0")]
    ZeroNorm {
        /// "the query embedding" or "prototype 'x'".
        what: String,
    },
    /// An adapter to exclude that is not in the prototype set.
    #[error("cannot exclude '{name}': no such adapter (available: {available})")]
    UnknownExclusion {
        /// The requested name.
        name: String,
        /// Comma-separated names in the set.
        available: String,
    },
    /// Nothing left to choose from.
    #[error(
        "no candidate adapters: the library has {total} prototype(s) and {excluded} were excluded"
    )]
    NoCandidates {
        /// Prototypes in the set.
        total: usize,
        /// Prototypes excluded.
        excluded: usize,
    },
    /// `top_k` of 0.
    #[error("top_k must be at least 1")]
    ZeroTopK,
    /// A negative, NaN or infinite temperature.
    #[error("temperature must be a finite number >= 0, got {0}")]
    InvalidTemperature(f64),
}
