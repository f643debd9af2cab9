//! Retrieval checked against the formulas computed by hand.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed check should stop loudly

use semla_retrieval::{
    Prototype, PrototypeSet, RetrievalError, RetrievalParams, SimilarityMeasure,
    temperature_softmax,
};

fn set(prototypes: &[(&str, &[f32])]) -> PrototypeSet {
    PrototypeSet::new(
        prototypes
            .iter()
            .map(|(name, e)| Prototype::new(*name, e.to_vec()))
            .collect(),
    )
    .unwrap()
}

fn euclidean(top_k: usize, temperature: f64) -> RetrievalParams {
    RetrievalParams {
        similarity: SimilarityMeasure::Euclidean,
        top_k,
        temperature,
    }
}

fn names(selections: &[semla_retrieval::Selection]) -> Vec<&str> {
    selections.iter().map(|s| s.name.as_str()).collect()
}

fn assert_close(a: f64, b: f64, tol: f64) {
    assert!((a - b).abs() <= tol, "{a} vs {b} (tol {tol})");
}

#[test]
fn euclidean_weights_match_the_softmax_of_inverse_distances() {
    // Distances from the origin: a 5 (3-4-5), b 2, c 10, d 1.
    let library = set(&[
        ("a", &[3.0, 4.0]),
        ("b", &[0.0, 2.0]),
        ("c", &[6.0, 8.0]),
        ("d", &[1.0, 0.0]),
    ]);
    let picks = library
        .retrieve(&[0.0, 0.0], &euclidean(3, 0.5), &[])
        .unwrap();
    assert_eq!(names(&picks), ["d", "b", "a"]);
    let distances: Vec<f64> = picks.iter().map(|s| s.distance).collect();
    assert_eq!(distances, [1.0, 2.0, 5.0]);
    for s in &picks {
        assert_close(s.similarity, 1.0 / s.distance, 0.0);
    }
    // w_j = exp(s_j / T) / Σ exp(s_m / T), s = (1, 0.5, 0.2), T = 0.5.
    let e = [2.0f64.exp(), 1.0f64.exp(), 0.4f64.exp()];
    let z: f64 = e.iter().sum();
    for (s, e) in picks.iter().zip(e) {
        assert_close(s.weight, e / z, 1e-15);
    }
}

#[test]
fn top_k_larger_than_the_library_uses_all_candidates() {
    let library = set(&[("a", &[1.0]), ("b", &[3.0]), ("c", &[-2.0])]);
    let picks = library.retrieve(&[0.0], &euclidean(50, 1.0), &[]).unwrap();
    assert_eq!(names(&picks), ["a", "c", "b"]);
    let e = [1.0f64.exp(), 0.5f64.exp(), (1.0f64 / 3.0).exp()];
    let z: f64 = e.iter().sum();
    for (s, e) in picks.iter().zip(e) {
        assert_close(s.weight, e / z, 1e-15);
    }
    // top_k = 1 gives the nearest adapter weight exactly 1.
    let one = library.retrieve(&[0.0], &euclidean(1, 0.05), &[]).unwrap();
    assert_eq!(names(&one), ["a"]);
    assert_eq!(one[0].weight, 1.0);
}

#[test]
fn ties_keep_source_order() {
    // b, c and d are all at distance 2; a is at 3.
    let library = set(&[
        ("a", &[3.0, 0.0]),
        ("c", &[0.0, 2.0]),
        ("b", &[-2.0, 0.0]),
        ("d", &[0.0, -2.0]),
    ]);
    let picks = library
        .retrieve(&[0.0, 0.0], &euclidean(2, 0.05), &[])
        .unwrap();
    assert_eq!(names(&picks), ["c", "b"]);
    assert_eq!(picks[0].weight, 0.5);
    assert_eq!(picks[1].weight, 0.5);
    let all = library
        .retrieve(&[0.0, 0.0], &euclidean(4, 0.05), &[])
        .unwrap();
    assert_eq!(names(&all), ["c", "b", "d", "a"]);
}

#[test]
fn distance_zero_gives_weight_one_and_shared_zeros_split_equally() {
    let library = set(&[
        ("far", &[1.0, 1.0]),
        ("hit", &[0.5, -0.25]),
        ("near", &[0.5, -0.2]),
    ]);
    let picks = library
        .retrieve(&[0.5, -0.25], &euclidean(5, 0.05), &[])
        .unwrap();
    assert_eq!(names(&picks), ["hit", "near", "far"]);
    assert_eq!(picks[0].distance, 0.0);
    assert_eq!(picks[0].similarity, f64::INFINITY);
    assert_eq!(picks[0].weight, 1.0);
    assert_eq!(picks[1].weight, 0.0);
    assert_eq!(picks[2].weight, 0.0);

    let twins = set(&[("x", &[2.0]), ("t1", &[1.0]), ("y", &[0.0]), ("t2", &[1.0])]);
    let picks = twins.retrieve(&[1.0], &euclidean(5, 0.05), &[]).unwrap();
    assert_eq!(names(&picks), ["t1", "t2", "x", "y"]);
    let weights: Vec<f64> = picks.iter().map(|s| s.weight).collect();
    assert_eq!(weights, [0.5, 0.5, 0.0, 0.0]);

    // JSON has no infinity: the similarity is written as null and read back.
    let json = serde_json::to_string(&picks[0]).unwrap();
    assert!(json.contains("\"similarity\":null"), "{json}");
    let back: semla_retrieval::Selection = serde_json::from_str(&json).unwrap();
    assert_eq!(back, picks[0]);
}

#[test]
fn overflow_size_similarities_give_finite_exact_weights() {
    // d = 1e-30 gives s = 1e30 and s / T = 2e31: the official softmax would
    // return inf / inf = NaN.
    let library = set(&[("b", &[1.0]), ("a", &[1e-30])]);
    let picks = library.retrieve(&[0.0], &euclidean(5, 0.05), &[]).unwrap();
    assert_eq!(names(&picks), ["a", "b"]);
    assert_close(picks[0].distance, f64::from(1e-30f32), 1e-45);
    assert!(picks[0].similarity > 9.9e29);
    assert_eq!(picks[0].weight, 1.0);
    assert_eq!(picks[1].weight, 0.0);

    // Two tiny distances 1e-30 and 2e-30: gap 1/d1 - 1/d2 = 5e29, still an
    // argmax; and a close pair where the gap is moderate:
    // d = 0.01 and 0.0101 -> s = 100 and 99.0099..., gap ~0.990099, T = 0.5:
    // s/T = 200 would not overflow here, but at T = 0.05 (s/T = 2000) the
    // official formula overflows while the weights are perfectly defined.
    let pair = set(&[("p", &[0.01]), ("q", &[0.0101])]);
    let picks = pair.retrieve(&[0.0], &euclidean(5, 0.05), &[]).unwrap();
    let d = [f64::from(0.01f32), f64::from(0.0101f32)];
    let gap = 1.0 / d[1] - 1.0 / d[0];
    let w_q = (gap / 0.05).exp() / (1.0 + (gap / 0.05).exp());
    assert_close(picks[1].weight, w_q, 1e-12);
    assert_close(picks[0].weight, 1.0 - w_q, 1e-12);
    for s in &picks {
        assert!(s.weight.is_finite());
    }
}

#[test]
fn leave_one_out_removes_exactly_the_named_adapter() {
    let library = set(&[("own", &[0.0]), ("other", &[1.0]), ("third", &[2.0])]);
    let picks = library
        .retrieve(&[0.0], &euclidean(5, 1.0), &["own"])
        .unwrap();
    assert_eq!(names(&picks), ["other", "third"]);
    let e = [1.0f64.exp(), 0.5f64.exp()];
    assert_close(picks[0].weight, e[0] / (e[0] + e[1]), 1e-15);
    assert!(matches!(
        library.retrieve(&[0.0], &euclidean(5, 1.0), &["missing"]),
        Err(RetrievalError::UnknownExclusion { .. })
    ));

    let uniform = library.uniform_weights(&["own"]).unwrap();
    assert_eq!(uniform.len(), 2);
    assert!(uniform.iter().all(|w| w.weight == 0.5));
    let uniform = library.uniform_weights(&[]).unwrap();
    assert_eq!(
        uniform.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(),
        ["own", "other", "third"]
    );
    assert!(uniform.iter().all(|w| w.weight == 1.0 / 3.0));
}

#[test]
fn cosine_ranks_the_most_similar_first() {
    // Against query (1, 0): same (cos 1), diag (cos 1/√2), ortho (0), opposite (-1).
    let library = set(&[
        ("opposite", &[-3.0, 0.0]),
        ("ortho", &[0.0, 5.0]),
        ("diag", &[2.0, 2.0]),
        ("same", &[7.0, 0.0]),
    ]);
    let params = RetrievalParams {
        similarity: SimilarityMeasure::Cosine,
        top_k: 3,
        temperature: 0.25,
    };
    let picks = library.retrieve(&[1.0, 0.0], &params, &[]).unwrap();
    assert_eq!(names(&picks), ["same", "diag", "ortho"]);
    let cos = [1.0, std::f64::consts::FRAC_1_SQRT_2, 0.0];
    let e: Vec<f64> = cos.iter().map(|c| (c / 0.25f64).exp()).collect();
    let z: f64 = e.iter().sum();
    for ((s, c), e) in picks.iter().zip(cos).zip(&e) {
        assert_close(s.similarity, c, 1e-15);
        assert_close(s.distance, 1.0 - c, 1e-15);
        assert_close(s.weight, e / z, 1e-15);
    }
    // A zero prototype has no direction.
    let zero = set(&[("z", &[0.0, 0.0])]);
    let err = zero.retrieve(&[1.0, 0.0], &params, &[]).unwrap_err();
    assert!(err.to_string().contains("'z'"), "{err}");
}

#[test]
fn zero_temperature_is_the_official_substitute() {
    let library = set(&[("a", &[1.0]), ("b", &[1.0000001])]);
    let picks = library.retrieve(&[0.0], &euclidean(2, 0.0), &[]).unwrap();
    // T = 1e-6: gap ~1.19e-7 / 1e-6 = 0.119 -> a measurable split, not NaN.
    let d_b = f64::from(1.0000001f32);
    let gap = 1.0 / d_b - 1.0;
    let w_b = (gap / 1e-6).exp() / (1.0 + (gap / 1e-6).exp());
    assert_close(picks[1].weight, w_b, 1e-9);
    assert!(picks[1].weight > 0.4 && picks[1].weight < 0.5);
}

#[test]
fn bad_queries_and_parameters_are_clear_errors() {
    let library = set(&[("a", &[1.0, 2.0]), ("b", &[0.0, 0.0])]);
    let err = library
        .retrieve(&[1.0, 2.0, 3.0], &euclidean(5, 0.05), &[])
        .unwrap_err();
    assert!(
        matches!(&err, RetrievalError::DimensionMismatch { name, found: 2, expected: 3, .. } if name == "a"),
        "{err}"
    );
    assert!(err.to_string().contains("prototype 'a'"), "{err}");
    let err = library
        .retrieve(&[f32::NAN, 0.0], &euclidean(5, 0.05), &[])
        .unwrap_err();
    assert!(matches!(
        err,
        RetrievalError::NonFiniteQuery { index: 0, .. }
    ));
    assert!(matches!(
        library.retrieve(&[], &euclidean(5, 0.05), &[]),
        Err(RetrievalError::EmptyQuery)
    ));
    assert!(matches!(
        library.retrieve(&[0.0, 0.0], &euclidean(0, 0.05), &[]),
        Err(RetrievalError::ZeroTopK)
    ));
    for t in [-0.1, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            library.retrieve(&[0.0, 0.0], &euclidean(1, t), &[]),
            Err(RetrievalError::InvalidTemperature(_))
        ));
    }
    let empty = PrototypeSet::new(vec![]).unwrap();
    assert!(matches!(
        empty.retrieve(&[0.0], &euclidean(1, 0.05), &[]),
        Err(RetrievalError::NoCandidates { .. })
    ));
}

#[test]
fn temperature_softmax_is_stable_and_sums_to_one() {
    let w = temperature_softmax(&[1.0, 2.0, 3.0], 1.0).unwrap();
    let z = 1f64.exp() + 2f64.exp() + 3f64.exp();
    for (w, s) in w.iter().zip([1.0f64, 2.0, 3.0]) {
        assert_close(*w, s.exp() / z, 1e-15);
    }
    // Huge scores: no overflow, same result as the shifted ones.
    // 2^1000 and 2^1000 - 2^990 are exact in f64: gap / T = -1 exactly.
    let (big_s, t) = (2f64.powi(1000), 2f64.powi(990));
    let big = temperature_softmax(&[big_s, big_s - t, 5.0], t).unwrap();
    let e = (-1.0f64).exp();
    assert_close(big[0], 1.0 / (1.0 + e), 1e-12);
    assert_close(big[1], e / (1.0 + e), 1e-12);
    assert_eq!(big[2], 0.0);
    assert_eq!(
        temperature_softmax(&[f64::INFINITY, 1.0, f64::INFINITY], 0.05).unwrap(),
        [0.5, 0.0, 0.5]
    );
    assert!(temperature_softmax(&[], 1.0).unwrap().is_empty());
}
