//! SemLA's retrieval maths: domain prototypes, similarity to a query embedding,
//! top-k selection and temperature-softmax adapter weights, and the uniform
//! baseline. (The official configuration files that set its parameters are read
//! by `semla-pipeline`.)
//!
//! ```
//! use semla_retrieval::{Prototype, PrototypeSet, RetrievalParams};
//!
//! let library = PrototypeSet::new(vec![
//!     Prototype::new("fog", vec![0.0, 1.0]),
//!     Prototype::new("rain", vec![1.0, 0.0]),
//! ])?;
//! let picks = library.retrieve(&[0.9, 0.1], &RetrievalParams::default(), &[])?;
//! assert_eq!(picks[0].name, "rain");
//! assert!((picks.iter().map(|s| s.weight).sum::<f64>() - 1.0).abs() < 1e-12);
//! # Ok::<(), semla_retrieval::RetrievalError>(())
//! ```
//!
//! See [`weights`] for the formulas and where they deliberately depart from
//! the official code.

pub mod error;
pub mod prototype;
pub mod similarity;
pub mod weights;

pub use error::RetrievalError;
pub use prototype::{Prototype, PrototypeSet};
pub use similarity::SimilarityMeasure;
pub use weights::{
    RetrievalParams, Selection, WeightedAdapter, ZERO_TEMPERATURE_SUBSTITUTE, temperature_softmax,
};
