//! Domain prototypes: one mean embedding per adapter of the library, kept in
//! source order (the order of `source_domains.yaml`, which breaks ties).

use std::collections::HashSet;

use crate::error::RetrievalError;

/// The prototype of one domain: the mean CLIP image embedding of its training
/// images (`train_average_embedding` in `<name>_statistics.npz`, shape
/// `[1, D]` float32 on disk, stored here flattened to `[D]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Prototype {
    /// Adapter (domain) name, e.g. `acdc-rain`.
    pub name: String,
    /// The embedding, `[D]`.
    pub embedding: Vec<f32>,
}

impl Prototype {
    /// A prototype named `name` with embedding `[D]`.
    pub fn new(name: impl Into<String>, embedding: Vec<f32>) -> Self {
        Self {
            name: name.into(),
            embedding,
        }
    }
}

/// A validated, ordered set of prototypes: unique names, one common dimension
/// `D > 0`, finite values. The order is the source order used to break ties.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrototypeSet {
    prototypes: Vec<Prototype>,
}

impl PrototypeSet {
    /// Validates `prototypes` (in source order). Errors name the prototype:
    /// empty embedding, duplicate name, dimension differing from the first
    /// prototype's, NaN or infinite entry. An empty set is allowed (retrieval
    /// from it then fails with [`RetrievalError::NoCandidates`]).
    pub fn new(prototypes: Vec<Prototype>) -> Result<Self, RetrievalError> {
        let mut seen = HashSet::new();
        for prototype in &prototypes {
            if prototype.embedding.is_empty() {
                return Err(RetrievalError::EmptyPrototype {
                    name: prototype.name.clone(),
                });
            }
            if !seen.insert(prototype.name.as_str()) {
                return Err(RetrievalError::DuplicateName {
                    name: prototype.name.clone(),
                });
            }
            if let Some((index, &value)) = prototype
                .embedding
                .iter()
                .enumerate()
                .find(|(_, v)| !v.is_finite())
            {
                return Err(RetrievalError::NonFinitePrototype {
                    name: prototype.name.clone(),
                    index,
                    value,
                });
            }
        }
        if let Some(first) = prototypes.first() {
            let expected = first.embedding.len();
            if let Some(other) = prototypes.iter().find(|p| p.embedding.len() != expected) {
                return Err(RetrievalError::DimensionMismatch {
                    name: other.name.clone(),
                    found: other.embedding.len(),
                    expected,
                    expected_from: format!("prototype '{}'", first.name),
                });
            }
        }
        Ok(Self { prototypes })
    }

    /// Number of prototypes.
    pub fn len(&self) -> usize {
        self.prototypes.len()
    }

    /// Whether the set has no prototypes.
    pub fn is_empty(&self) -> bool {
        self.prototypes.is_empty()
    }

    /// The common embedding dimension `D`, `None` for an empty set.
    pub fn dim(&self) -> Option<usize> {
        self.prototypes.first().map(|p| p.embedding.len())
    }

    /// The prototypes in source order.
    pub fn prototypes(&self) -> &[Prototype] {
        &self.prototypes
    }

    /// The names in source order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.prototypes.iter().map(|p| p.name.as_str())
    }

    /// The prototype named `name`.
    pub fn get(&self, name: &str) -> Option<&Prototype> {
        self.prototypes.iter().find(|p| p.name == name)
    }

    /// Whether a prototype is named `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The candidates left after removing the adapters named in `exclude`
    /// (leave-one-out, e.g. the target domain's own adapter), in source order.
    /// Every excluded name must exist (a typo would otherwise silently keep
    /// the adapter); at least one candidate must remain.
    pub fn candidates(&self, exclude: &[&str]) -> Result<Vec<&Prototype>, RetrievalError> {
        if let Some(unknown) = exclude.iter().find(|name| !self.contains(name)) {
            return Err(RetrievalError::UnknownExclusion {
                name: (*unknown).to_string(),
                available: self.names().collect::<Vec<_>>().join(", "),
            });
        }
        let candidates: Vec<&Prototype> = self
            .prototypes
            .iter()
            .filter(|p| !exclude.contains(&p.name.as_str()))
            .collect();
        if candidates.is_empty() {
            return Err(RetrievalError::NoCandidates {
                total: self.len(),
                excluded: self.len() - candidates.len(),
            });
        }
        Ok(candidates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_prototypes_by_name() {
        let err = PrototypeSet::new(vec![
            Prototype::new("a", vec![1.0, 2.0]),
            Prototype::new("b", vec![1.0, f32::NAN]),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("'b'"), "{err}");
        assert!(err.to_string().contains("index 1"), "{err}");

        let err = PrototypeSet::new(vec![
            Prototype::new("a", vec![1.0, 2.0]),
            Prototype::new("c", vec![1.0, 2.0, 3.0]),
        ])
        .unwrap_err();
        assert!(
            matches!(&err, RetrievalError::DimensionMismatch { name, found: 3, expected: 2, .. } if name == "c"),
            "{err}"
        );

        let err = PrototypeSet::new(vec![
            Prototype::new("a", vec![1.0]),
            Prototype::new("a", vec![2.0]),
        ])
        .unwrap_err();
        assert!(matches!(err, RetrievalError::DuplicateName { .. }), "{err}");

        let err = PrototypeSet::new(vec![Prototype::new("e", vec![])]).unwrap_err();
        assert!(
            matches!(err, RetrievalError::EmptyPrototype { .. }),
            "{err}"
        );

        let err = PrototypeSet::new(vec![Prototype::new("i", vec![f32::INFINITY])]).unwrap_err();
        assert!(err.to_string().contains("'i'"), "{err}");
    }

    #[test]
    fn candidates_exclude_by_exact_name_and_keep_order() {
        let set = PrototypeSet::new(vec![
            Prototype::new("x", vec![0.0]),
            Prototype::new("y", vec![1.0]),
            Prototype::new("z", vec![2.0]),
        ])
        .unwrap();
        let names: Vec<_> = set
            .candidates(&["y"])
            .unwrap()
            .iter()
            .map(|p| p.name.clone())
            .collect();
        assert_eq!(names, ["x", "z"]);
        assert!(matches!(
            set.candidates(&["Y"]),
            Err(RetrievalError::UnknownExclusion { .. })
        ));
        assert!(matches!(
            set.candidates(&["x", "y", "z"]),
            Err(RetrievalError::NoCandidates {
                total: 3,
                excluded: 3
            })
        ));
    }
}
