//! Per-image adapter selection and weights (SemLA's "centroid" mode) and the
//! uniform baseline.
//!
//! For a query embedding `e` and candidate prototypes `c_i` (source order,
//! minus the excluded adapters):
//!
//! 1. similarity `s_i` (Euclidean: `s_i = 1 / ||e - c_i||`; cosine:
//!    `s_i = e·c_i / (|e| |c_i|)`),
//! 2. a stable sort by similarity, descending (ties keep source order), and
//!    the first `top_k` (all candidates when `top_k` exceeds their number),
//! 3. `w_j = exp(s_j / T) / Σ_m exp(s_m / T)` over the kept ones.
//!
//! Where this deliberately differs from the official code:
//! - The softmax subtracts the maximum before exponentiating (all in `f64`),
//!   so it never overflows; the official one does not and returns NaN weights
//!   once `s / T > ~709` (a distance below ~0.028 at `T = 0.05`). For the
//!   Euclidean measure the exponent `(s_j - s_max) / T` is computed from the
//!   distances as `(d_min - d_j) / (d_j d_min) / T`, which stays finite even
//!   when `1 / d` itself would overflow.
//! - A query at distance exactly 0 from a prototype gives that adapter weight
//!   1 and the others 0, the limit of the formula (the official code divides
//!   by zero). If several kept prototypes are at distance 0 they share the
//!   weight equally.
//! - `T = 0` is replaced by `1e-6`, as in the official code, which is in
//!   practice an argmax (equal top similarities share the weight).
//! - Euclidean candidates are ranked by ascending distance, which is the same
//!   order as descending `1 / d` but stays exact where `1 / d` would round
//!   two tiny distances to the same value.
//! - The cosine measure ranks by similarity (the official code ranks cosine
//!   *distances* descending and picks the farthest domains).

use serde::{Deserialize, Serialize};

use crate::error::RetrievalError;
use crate::prototype::PrototypeSet;
use crate::similarity::{SimilarityMeasure, cosine_similarity, euclidean_distance, norm};

/// The temperature the official code substitutes for `T = 0`.
pub const ZERO_TEMPERATURE_SUBSTITUTE: f64 = 1e-6;

/// Retrieval parameters. The defaults are the official `semla_config.yaml`
/// values: Euclidean, `top_k = 5`, `T = 0.05`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetrievalParams {
    /// How prototypes are compared to the query.
    pub similarity: SimilarityMeasure,
    /// How many adapters to keep (at least 1; more than the candidates keeps
    /// all of them).
    pub top_k: usize,
    /// Softmax temperature `T >= 0` (0 is replaced by
    /// [`ZERO_TEMPERATURE_SUBSTITUTE`]).
    pub temperature: f64,
}

impl Default for RetrievalParams {
    fn default() -> Self {
        Self {
            similarity: SimilarityMeasure::Euclidean,
            top_k: 5,
            temperature: 0.05,
        }
    }
}

impl RetrievalParams {
    /// Checks `top_k >= 1` and `T` finite and non-negative.
    pub fn validate(&self) -> Result<(), RetrievalError> {
        if self.top_k == 0 {
            return Err(RetrievalError::ZeroTopK);
        }
        validate_temperature(self.temperature)
    }
}

fn validate_temperature(temperature: f64) -> Result<(), RetrievalError> {
    if !temperature.is_finite() || temperature < 0.0 {
        return Err(RetrievalError::InvalidTemperature(temperature));
    }
    Ok(())
}

/// One selected adapter of a retrieval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    /// Adapter (domain) name.
    pub name: String,
    /// Euclidean distance `||e - c||`, or cosine distance `1 - cos`.
    pub distance: f64,
    /// `1 / distance` (Euclidean; `+inf` at distance 0, written as `null` in
    /// JSON), or the cosine similarity.
    #[serde(with = "infinite_as_null")]
    pub similarity: f64,
    /// Softmax weight; the weights of one retrieval sum to 1.
    pub weight: f64,
}

/// An adapter and its mixing weight, as handed to the fusion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightedAdapter {
    /// Adapter (domain) name.
    pub name: String,
    /// Mixing weight.
    pub weight: f64,
}

impl From<&Selection> for WeightedAdapter {
    fn from(selection: &Selection) -> Self {
        Self {
            name: selection.name.clone(),
            weight: selection.weight,
        }
    }
}

impl PrototypeSet {
    /// Selects and weights the adapters for one query embedding `[D]`
    /// (SemLA's per-image retrieval), excluding the adapters named in
    /// `exclude`. Returns at most `top_k` selections, most similar first, with
    /// weights summing to 1.
    ///
    /// Errors: invalid parameters, an empty or non-finite query, a prototype
    /// whose dimension differs from the query's (named), a zero-norm vector
    /// under the cosine measure, an unknown excluded name, no candidates.
    pub fn retrieve(
        &self,
        query: &[f32],
        params: &RetrievalParams,
        exclude: &[&str],
    ) -> Result<Vec<Selection>, RetrievalError> {
        params.validate()?;
        if query.is_empty() {
            return Err(RetrievalError::EmptyQuery);
        }
        if let Some((index, &value)) = query.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(RetrievalError::NonFiniteQuery { index, value });
        }
        let candidates = self.candidates(exclude)?;
        if let Some(bad) = candidates.iter().find(|p| p.embedding.len() != query.len()) {
            return Err(RetrievalError::DimensionMismatch {
                name: bad.name.clone(),
                found: bad.embedding.len(),
                expected: query.len(),
                expected_from: "the query".to_string(),
            });
        }

        let mut scored: Vec<Selection> = Vec::with_capacity(candidates.len());
        match params.similarity {
            SimilarityMeasure::Euclidean => {
                for prototype in &candidates {
                    let distance = euclidean_distance(query, &prototype.embedding);
                    scored.push(Selection {
                        name: prototype.name.clone(),
                        distance,
                        similarity: 1.0 / distance,
                        weight: 0.0,
                    });
                }
                // Ascending distance = descending 1/d; `sort_by` is stable.
                scored.sort_by(|a, b| a.distance.total_cmp(&b.distance));
            }
            SimilarityMeasure::Cosine => {
                if norm(query) == 0.0 {
                    return Err(RetrievalError::ZeroNorm {
                        what: "the query embedding".to_string(),
                    });
                }
                for prototype in &candidates {
                    let similarity =
                        cosine_similarity(query, &prototype.embedding).ok_or_else(|| {
                            RetrievalError::ZeroNorm {
                                what: format!("prototype '{}'", prototype.name),
                            }
                        })?;
                    scored.push(Selection {
                        name: prototype.name.clone(),
                        distance: 1.0 - similarity,
                        similarity,
                        weight: 0.0,
                    });
                }
                scored.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
            }
        }
        scored.truncate(params.top_k);

        let weights = match params.similarity {
            SimilarityMeasure::Euclidean => {
                let nearest = scored[0].distance;
                if nearest == 0.0 {
                    // The limit of the softmax as d_min -> 0: the prototypes at
                    // distance 0 share all the weight.
                    let at_zero: Vec<bool> = scored.iter().map(|s| s.distance == 0.0).collect();
                    let count = at_zero.iter().filter(|&&z| z).count() as f64;
                    at_zero
                        .iter()
                        .map(|&z| if z { 1.0 / count } else { 0.0 })
                        .collect()
                } else {
                    // s_j - s_max = 1/d_j - 1/d_min = (d_min - d_j) / (d_j d_min),
                    // finite for every positive f64 distance of f32 vectors.
                    let gaps: Vec<f64> = scored
                        .iter()
                        .map(|s| {
                            if s.distance == nearest {
                                0.0
                            } else {
                                (nearest - s.distance) / (s.distance * nearest)
                            }
                        })
                        .collect();
                    softmax_of_gaps(&gaps, params.temperature)
                }
            }
            SimilarityMeasure::Cosine => {
                let best = scored[0].similarity;
                let gaps: Vec<f64> = scored.iter().map(|s| s.similarity - best).collect();
                softmax_of_gaps(&gaps, params.temperature)
            }
        };
        for (selection, weight) in scored.iter_mut().zip(weights) {
            selection.weight = weight;
        }
        Ok(scored)
    }

    /// The uniform baseline: every candidate (all adapters minus `exclude`),
    /// in source order, with weight `1 / N`. `top_k` plays no part, as in the
    /// official uniform experiment.
    pub fn uniform_weights(
        &self,
        exclude: &[&str],
    ) -> Result<Vec<WeightedAdapter>, RetrievalError> {
        let candidates = self.candidates(exclude)?;
        let weight = 1.0 / candidates.len() as f64;
        Ok(candidates
            .iter()
            .map(|p| WeightedAdapter {
                name: p.name.clone(),
                weight,
            })
            .collect())
    }
}

/// Temperature softmax `w_j = exp(s_j / T) / Σ_m exp(s_m / T)` of scores
/// `[k]`, computed stably in `f64` by subtracting the maximum first.
/// `T = 0` is replaced by [`ZERO_TEMPERATURE_SUBSTITUTE`] (official
/// behaviour). Scores of `+inf` share all the weight equally and `-inf`
/// scores get 0 (all `-inf`: equal shares). NaN scores give NaN weights;
/// the only error is an invalid temperature.
pub fn temperature_softmax(scores: &[f64], temperature: f64) -> Result<Vec<f64>, RetrievalError> {
    validate_temperature(temperature)?;
    let Some(max) = scores.iter().copied().reduce(f64::max) else {
        return Ok(Vec::new());
    };
    if max.is_infinite() {
        let count = scores.iter().filter(|&&s| s == max).count() as f64;
        return Ok(scores
            .iter()
            .map(|&s| if s == max { 1.0 / count } else { 0.0 })
            .collect());
    }
    let gaps: Vec<f64> = scores.iter().map(|&s| s - max).collect();
    Ok(softmax_of_gaps(&gaps, temperature))
}

/// Softmax of `gaps[j] = s_j - s_max <= 0` (at least one exactly 0) at
/// temperature `T` (0 replaced by the official substitute). The largest term
/// is exp(0) = 1, so the sum is at least 1 and never overflows.
fn softmax_of_gaps(gaps: &[f64], temperature: f64) -> Vec<f64> {
    let temperature = if temperature == 0.0 {
        ZERO_TEMPERATURE_SUBSTITUTE
    } else {
        temperature
    };
    let exps: Vec<f64> = gaps.iter().map(|g| (g / temperature).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// `+inf` is not representable in JSON: written as `null`, read back as
/// `+inf` (the only non-finite similarity retrieval produces).
mod infinite_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        if value.is_finite() {
            serializer.serialize_f64(*value)
        } else {
            serializer.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::INFINITY))
    }
}
