//! Retrieval against the official formula, computed literally by
//! `tools/reference/semla_weights.py` (scipy euclidean, stable descending
//! sort, softmax without max-subtraction) on random cases that do not
//! overflow.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use semla_retrieval::{Prototype, PrototypeSet, RetrievalParams, Selection, SimilarityMeasure};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    label: String,
    measure: String,
    top_k: usize,
    temperature: f64,
    exclude: Option<String>,
    query: Vec<f64>,
    prototypes: Vec<FixturePrototype>,
    official_f32: Reference,
    exact_f64: Option<Reference>,
    corrected: Option<Reference>,
}

#[derive(Deserialize)]
struct FixturePrototype {
    name: String,
    embedding: Vec<f64>,
}

#[derive(Deserialize)]
struct Reference {
    names: Vec<String>,
    scores: Vec<f64>,
    weights: Vec<f64>,
}

/// The fixture stores float32 values as decimal f64. serde_json's default
/// float parsing may be one f64 ulp off, which rounding to f32 absorbs.
fn to_f32(values: &[f64]) -> Vec<f32> {
    values
        .iter()
        .map(|&v| {
            let x = v as f32;
            assert!(
                (f64::from(x) - v).abs() <= 1e-15 * v.abs(),
                "fixture value {v} is not an f32"
            );
            x
        })
        .collect()
}

fn run(case: &Case) -> Vec<Selection> {
    let library = PrototypeSet::new(
        case.prototypes
            .iter()
            .map(|p| Prototype::new(&p.name, to_f32(&p.embedding)))
            .collect(),
    )
    .unwrap();
    let params = RetrievalParams {
        similarity: case.measure.parse::<SimilarityMeasure>().unwrap(),
        top_k: case.top_k,
        temperature: case.temperature,
    };
    let exclude: Vec<&str> = case.exclude.iter().map(String::as_str).collect();
    library
        .retrieve(&to_f32(&case.query), &params, &exclude)
        .unwrap()
}

fn names(selections: &[Selection]) -> Vec<String> {
    selections.iter().map(|s| s.name.clone()).collect()
}

fn fixture() -> Fixture {
    let text = include_str!("fixtures/official_weights.json");
    serde_json::from_str(text).unwrap()
}

#[test]
fn euclidean_matches_the_official_formula() {
    let fixture = fixture();
    let mut checked = 0;
    for case in fixture.cases.iter().filter(|c| c.measure == "euclidean") {
        let ours = run(case);
        let exact = case.exact_f64.as_ref().unwrap();
        assert_eq!(names(&ours), exact.names, "{}", case.label);
        for (s, (&score, &weight)) in ours.iter().zip(exact.scores.iter().zip(&exact.weights)) {
            // Same f32 inputs, f64 distance on both sides.
            assert!(
                (s.similarity - score).abs() <= 1e-12 * score,
                "{}: {} similarity {} vs {score}",
                case.label,
                s.name,
                s.similarity
            );
            assert!(
                (s.weight - weight).abs() <= 1e-9,
                "{}: {} weight {} vs {weight}",
                case.label,
                s.name,
                s.weight
            );
        }
        // The official float32 distance differs by about one f32 rounding;
        // the weights move by less than 1e-6 (measured up to 1.7e-7).
        let official = &case.official_f32;
        assert_eq!(names(&ours), official.names, "{}", case.label);
        for (s, &weight) in ours.iter().zip(&official.weights) {
            assert!(
                (s.weight - weight).abs() <= 1e-6,
                "{}: {}",
                case.label,
                s.name
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 7);
}

#[test]
fn cosine_picks_the_most_similar_not_the_officially_farthest() {
    let fixture = fixture();
    let case = fixture
        .cases
        .iter()
        .find(|c| c.measure == "cosine")
        .unwrap();
    let ours = run(case);
    let corrected = case.corrected.as_ref().unwrap();
    assert_eq!(names(&ours), corrected.names);
    for (s, (&score, &weight)) in ours
        .iter()
        .zip(corrected.scores.iter().zip(&corrected.weights))
    {
        assert!((s.similarity - score).abs() <= 1e-12, "{}", s.name);
        assert!((s.weight - weight).abs() <= 1e-9, "{}", s.name);
    }
    // The official code ranks cosine distances descending: none of its
    // picks is among ours in this case.
    for name in &case.official_f32.names {
        assert!(!names(&ours).contains(name), "{name}");
    }
}
