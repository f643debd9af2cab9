//! Similarity measures between a query embedding and a domain prototype.
//!
//! Both are computed from `f32` inputs with `f64` accumulation. The official
//! code computes the Euclidean distance in `f32` (scipy's BLAS `nrm2` on
//! `float32` arrays); `f64` accumulation is more accurate and differs from it
//! by about one `f32` rounding (relative 1e-7), which is below anything the
//! fusion can resolve.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a query embedding is compared to a prototype.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SimilarityMeasure {
    /// Euclidean distance `d = ||u - v||_2`, similarity `s = 1 / d` (SemLA's
    /// default and the only measure any official run used). `d = 0` gives
    /// `s = +inf`.
    #[default]
    Euclidean,
    /// Cosine similarity `s = u·v / (|u| |v|)`, distance `d = 1 - s`.
    ///
    /// The official code feeds scipy's cosine *distance* to a descending sort
    /// and to the softmax as if it were a similarity, so it would pick the
    /// least similar domains (a latent bug, never reached because of the
    /// config-key bug). Here the similarity is ranked descending, so the most
    /// similar domains are picked.
    Cosine,
}

impl SimilarityMeasure {
    /// The name used in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Euclidean => "euclidean",
            Self::Cosine => "cosine",
        }
    }
}

impl fmt::Display for SimilarityMeasure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name is not a known similarity measure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown similarity measure '{0}' (expected 'euclidean' or 'cosine')")]
pub struct UnknownMeasure(pub String);

impl FromStr for SimilarityMeasure {
    type Err = UnknownMeasure;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "euclidean" => Ok(Self::Euclidean),
            "cosine" => Ok(Self::Cosine),
            other => Err(UnknownMeasure(other.to_string())),
        }
    }
}

/// Euclidean distance `||u - v||_2` of two equal-length vectors, accumulated
/// in `f64`. With `f32` inputs the squares can neither overflow nor underflow
/// in `f64` (the smallest non-zero `f32` difference squared is ~2e-90), so no
/// rescaling is needed.
pub fn euclidean_distance(u: &[f32], v: &[f32]) -> f64 {
    debug_assert_eq!(u.len(), v.len());
    u.iter()
        .zip(v)
        .map(|(&a, &b)| {
            let diff = f64::from(a) - f64::from(b);
            diff * diff
        })
        .sum::<f64>()
        .sqrt()
}

/// `f64` Euclidean norm of an `f32` vector.
pub fn norm(u: &[f32]) -> f64 {
    u.iter()
        .map(|&a| f64::from(a) * f64::from(a))
        .sum::<f64>()
        .sqrt()
}

/// Cosine similarity `u·v / (|u| |v|)` in `f64`, clamped to `[-1, 1]`
/// against rounding; `None` when either vector has norm 0.
pub fn cosine_similarity(u: &[f32], v: &[f32]) -> Option<f64> {
    debug_assert_eq!(u.len(), v.len());
    let (norm_u, norm_v) = (norm(u), norm(v));
    if norm_u == 0.0 || norm_v == 0.0 {
        return None;
    }
    let dot: f64 = u
        .iter()
        .zip(v)
        .map(|(&a, &b)| f64::from(a) * f64::from(b))
        .sum();
    Some((dot / (norm_u * norm_v)).clamp(-1.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn euclidean_is_the_hand_computed_norm() {
        // (3, 4) right triangle.
        assert_eq!(euclidean_distance(&[1.0, 2.0], &[4.0, 6.0]), 5.0);
        // A difference far below f32 epsilon relative to nothing: 1e-30 exactly.
        let d = euclidean_distance(&[1e-30, 0.0], &[0.0, 0.0]);
        assert!((d - f64::from(1e-30f32)).abs() <= 1e-45, "{d}");
    }

    #[test]
    fn cosine_is_the_hand_computed_angle() {
        let s = cosine_similarity(&[1.0, 0.0], &[1.0, 1.0]).unwrap();
        assert!((s - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-15);
        assert_eq!(cosine_similarity(&[1.0, 0.0], &[-2.0, 0.0]), Some(-1.0));
        assert_eq!(cosine_similarity(&[0.0, 0.0], &[1.0, 0.0]), None);
    }

    #[test]
    fn measure_names_round_trip() {
        for m in [SimilarityMeasure::Euclidean, SimilarityMeasure::Cosine] {
            assert_eq!(m.as_str().parse::<SimilarityMeasure>().unwrap(), m);
        }
        assert!("manhattan".parse::<SimilarityMeasure>().is_err());
    }
}
