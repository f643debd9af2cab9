#!/usr/bin/env python3
"""Reference for semla-retrieval: SemLA's official retrieval formula, literally.

Implements the official per-image weighting (experiments.py +
domain_orchestrator.py of rezaqorbani/SemLA) as written there:

  s_i = 1 / scipy.spatial.distance.euclidean(e.squeeze(), c_i.squeeze())
  ranked = dict(sorted([[name, s_i] ...], key=s, reverse=True))   # stable
  keep the first top_k, w = exp(s / T) / sum(exp(s / T))          # no max-subtraction
  (T == 0 -> 1e-6; candidates minus the target when removing it)

for a few random prototype sets and queries chosen so that the softmax does
not overflow, and writes the inputs and outputs as a small JSON fixture.

Two numerics per case:
- "official_f32": the arrays are float32, as in the official code (the
  distance may then be computed in float32 by scipy);
- "exact_f64": the same float32 values cast to float64 first, so the
  distance is computed in float64. The Rust implementation accumulates in
  f64 and must match this one to 1e-9.

The official cosine path ranks scipy's cosine *distance* descending (it picks
the farthest domains). For cosine cases the fixture stores that literal
official selection and, separately, "corrected": the same softmax over the
cosine *similarity* 1 - distance ranked descending, which semla implements.

Usage: python3 tools/reference/semla_weights.py OUT.json
"""

import json
import sys

import numpy as np
import scipy
import scipy.spatial


def official_softmax(x, temperature):
    if temperature == 0:
        temperature = 1e-6
    exp_x = np.exp(np.divide(x, temperature))
    return exp_x / np.sum(exp_x, axis=0)


def euclidean_similarity(u, v):
    return 1.0 / scipy.spatial.distance.euclidean(u.squeeze(), v.squeeze())


def cosine_distance(u, v):
    return scipy.spatial.distance.cosine(u.squeeze(), v.squeeze())


def cosine_similarity(u, v):
    return 1.0 - scipy.spatial.distance.cosine(u.squeeze(), v.squeeze())


def official_retrieve(query, prototypes, measure, top_k, temperature, exclude):
    """prototypes: list of (name, array (1, D)) in source order."""
    scores = []
    for name, prototype in prototypes:
        if exclude is not None and name == exclude:
            continue
        scores.append([name, measure(query, prototype)])
    ranked = dict(sorted(scores, key=lambda x: x[1], reverse=True))
    names = list(ranked.keys())[:top_k]
    values = list(ranked.values())[:top_k]
    weights = official_softmax(values, temperature)
    assert np.all(np.isfinite(weights)), "case overflows; pick another"
    return {
        "names": names,
        "scores": [float(v) for v in values],
        "weights": [float(w) for w in weights],
    }


def make_case(rng, label, n, dim, spread, top_k, temperature, remove_target, measure):
    centre = rng.normal(size=(1, dim)).astype(np.float32)
    prototypes = [
        (f"domain-{i:02d}", (centre + spread * rng.normal(size=(1, dim))).astype(np.float32))
        for i in range(n)
    ]
    query = (centre + spread * rng.normal(size=(1, dim))).astype(np.float32)
    exclude = prototypes[int(rng.integers(n))][0] if remove_target else None
    case = {
        "label": label,
        "measure": measure,
        "top_k": top_k,
        "temperature": temperature,
        "exclude": exclude,
        "query": [float(x) for x in query[0]],
        "prototypes": [{"name": name, "embedding": [float(x) for x in p[0]]} for name, p in prototypes],
    }
    as64 = [(name, p.astype(np.float64)) for name, p in prototypes]
    query64 = query.astype(np.float64)
    if measure == "euclidean":
        case["official_f32"] = official_retrieve(query, prototypes, euclidean_similarity, top_k, temperature, exclude)
        case["exact_f64"] = official_retrieve(query64, as64, euclidean_similarity, top_k, temperature, exclude)
    else:
        case["official_f32"] = official_retrieve(query, prototypes, cosine_distance, top_k, temperature, exclude)
        case["corrected"] = official_retrieve(query64, as64, cosine_similarity, top_k, temperature, exclude)
    return case


def main():
    out = sys.argv[1]
    rng = np.random.default_rng(20250321)
    cases = [
        make_case(rng, "official defaults, 20 domains", 20, 32, 0.5, 5, 0.05, False, "euclidean"),
        make_case(rng, "leave-one-out, 20 domains", 20, 32, 0.5, 5, 0.05, True, "euclidean"),
        make_case(rng, "top-k larger than the library", 4, 16, 1.0, 9, 1.0, False, "euclidean"),
        make_case(rng, "top-1", 6, 8, 1.0, 1, 0.05, False, "euclidean"),
        make_case(rng, "sharp temperature, close prototypes", 8, 64, 0.05, 3, 0.01, True, "euclidean"),
        make_case(rng, "flat temperature", 10, 24, 2.0, 10, 10.0, False, "euclidean"),
        make_case(rng, "CLIP-sized (768)", 5, 768, 0.3, 3, 0.05, False, "euclidean"),
        make_case(rng, "cosine", 8, 16, 1.0, 3, 0.1, False, "cosine"),
    ]
    fixture = {
        "generator": "tools/reference/semla_weights.py",
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "cases": cases,
    }
    with open(out, "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
