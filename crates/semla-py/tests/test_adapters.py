"""Adapters, PEFT configs and merges against peft's own numbers (stored in the
committed fixtures: no torch needed), and the library's retrieval against the
CLI's and a hand computation."""

import json

import numpy as np
import pytest

import semla
from conftest import read_safetensors


@pytest.fixture(scope="module")
def expected(peft_fixtures):
    return read_safetensors(peft_fixtures / "expected.safetensors")


@pytest.fixture(scope="module")
def peft_library(peft_fixtures):
    return semla.AdapterLibrary.open(peft_fixtures / "library")


def test_configs_and_scalings_are_peft_s(peft_library, peft_fixtures):
    scalings = json.loads((peft_fixtures / "scalings.json").read_text())
    for key, scaling in scalings.items():
        name, site = key.split(".", 1)
        assert peft_library.config(name).scaling(site) == pytest.approx(scaling, rel=1e-12)
    beta = peft_library.config("beta_rslora")
    assert beta.use_rslora is True
    gamma = peft_library.config("gamma_pattern")
    assert gamma.rank_pattern and gamma.alpha_pattern
    config = json.loads((peft_fixtures / "library" / "gamma_pattern" / "adapter_config.json").read_text())
    assert gamma.to_dict()["rank_pattern"] == config["rank_pattern"]
    assert gamma.r == config["r"] and gamma.lora_alpha == config["lora_alpha"]


def test_factors_and_deltas_of_one_adapter(peft_library, peft_fixtures):
    adapter = peft_library["gamma_pattern"]
    stored = read_safetensors(peft_fixtures / "library" / "gamma_pattern" / "adapter_model.safetensors")
    for site in adapter.sites:
        a = stored[f"base_model.model.{site}.lora_A.weight"]
        b = stored[f"base_model.model.{site}.lora_B.weight"]
        np.testing.assert_array_equal(adapter.lora_A(site), a)
        np.testing.assert_array_equal(adapter.lora_B(site), b)
        # delta W = scaling * B @ A, in the weight's shape (hand computation).
        hand = adapter.config.scaling(site) * (b.reshape(b.shape[0], -1) @ a.reshape(a.shape[0], -1))
        delta = adapter.get_delta_weight(site)
        np.testing.assert_allclose(delta.reshape(hand.shape), hand, rtol=1e-5, atol=1e-6)
    assert set(adapter.delta_weights()) == set(adapter.sites)
    with pytest.raises(KeyError):
        adapter.lora_A("no.such.site")


@pytest.mark.parametrize("merge", ["cat", "linear", "svd", "svd3"])
def test_add_weighted_adapter_matches_peft(peft_library, peft_fixtures, expected, merge):
    spec = {m["name"]: m for m in json.loads((peft_fixtures / "merges.json").read_text())}[merge]
    adapters = [peft_library[name] for name in spec["adapters"]]
    merged = semla.add_weighted_adapter(
        adapters,
        spec["weights"],
        combination_type=spec["combination"],
        svd_rank=spec["svd_rank"],
        adapter_name=merge,
    )
    assert merged.name == merge
    # peft's svd truncates a sum with the scalings squared; semla truncates
    # the exact weighted sum, stored by the reference script as `<name>_exact`.
    reference = f"{merge}_exact" if spec["combination"] == "svd" else merge
    for site in merged.sites:
        want = expected[f"{reference}.{site}.delta"]
        got = merged.get_delta_weight(site)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-6, err_msg=f"{merge} {site}")


def test_cat_is_the_exact_weighted_sum(peft_library):
    names, weights = ["alpha_plain", "beta_rslora", "gamma_pattern"], [0.6, -0.3, 0.9]
    adapters = [peft_library[n] for n in names]
    merged = semla.add_weighted_adapter(adapters, weights, combination_type="cat")
    for site in merged.sites:
        total = sum(
            w * a.get_delta_weight(site) for a, w in zip(adapters, weights) if site in a.sites
        )
        np.testing.assert_allclose(merged.get_delta_weight(site), total, rtol=1e-5, atol=1e-6)


def test_save_pretrained_round_trips_bit_for_bit(peft_library, tmp_path):
    merged = semla.add_weighted_adapter(
        [peft_library["alpha_plain"], peft_library["beta_rslora"]], [0.7, 0.3]
    )
    merged.save_pretrained(tmp_path / "mix")
    assert sorted(p.name for p in (tmp_path / "mix").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    again = semla.Adapter.from_pretrained(tmp_path / "mix")
    assert again.sites == merged.sites
    for site in merged.sites:
        np.testing.assert_array_equal(again.lora_A(site), merged.lora_A(site))
        np.testing.assert_array_equal(again.lora_B(site), merged.lora_B(site))
        np.testing.assert_array_equal(again.get_delta_weight(site), merged.get_delta_weight(site))
    config = json.loads((tmp_path / "mix" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    # Saving again replaces the folder whole.
    peft_library["delta_plain"].save_pretrained(tmp_path / "mix")
    assert semla.Adapter.from_pretrained(tmp_path / "mix").sites == peft_library["delta_plain"].sites


def test_library_listing_and_prototypes(peft_library, expected):
    assert peft_library.names == ["alpha_plain", "beta_rslora", "delta_plain", "gamma_pattern"]
    assert len(peft_library) == 4 and "alpha_plain" in peft_library and "nope" not in peft_library
    assert peft_library.broken == []
    assert peft_library.prototype("delta_plain") is None
    protos = peft_library.prototypes
    assert sorted(protos) == ["alpha_plain", "beta_rslora", "gamma_pattern"]
    for name, proto in protos.items():
        assert proto.dtype == np.float32
        np.testing.assert_array_equal(proto, expected[f"prototype.{name}"].reshape(-1))


def test_retrieve_is_the_softmax_of_inverse_distances(peft_library, expected):
    query = expected["prototype.alpha_plain"].reshape(-1) + 0.05
    sources = ["alpha_plain", "beta_rslora", "gamma_pattern"]
    got = peft_library.retrieve(query, top_k=2, temperature=0.5, sources=sources)
    # Hand computation: similarity 1/||q - p||, softmax over the top 2 at T.
    protos = {n: expected[f"prototype.{n}"].reshape(-1).astype(np.float64) for n in sources}
    dist = {n: float(np.linalg.norm(query.astype(np.float64) - p)) for n, p in protos.items()}
    top = sorted(sources, key=lambda n: dist[n])[:2]
    sims = np.array([1.0 / dist[n] for n in top])
    weights = np.exp(sims / 0.5 - (sims / 0.5).max())
    weights /= weights.sum()
    assert [r.name for r in got] == top
    for r, n, w in zip(got, top, weights):
        assert r.distance == pytest.approx(dist[n], rel=1e-5)
        assert r.similarity == pytest.approx(1.0 / dist[n], rel=1e-5)
        assert r.weight == pytest.approx(w, rel=1e-5)
    # Leave-one-out.
    assert "alpha_plain" not in [r.name for r in peft_library.retrieve(query, exclude=["alpha_plain"], sources=sources)]
    # (name, distance, similarity, weight) records.
    name, distance, similarity, weight = got[0]
    assert (name, weight) == (got[0].name, got[0].weight)


def test_retrieve_equals_the_cli(fixtures, semla_cli, tmp_path):
    library = semla.AdapterLibrary.open(fixtures / "library")
    rng = np.random.default_rng(3)
    for similarity in ("euclidean", "cosine"):
        query = library.prototype("fog") + rng.normal(0, 0.2, size=8).astype(np.float32)
        np.save(tmp_path / "q.npy", query)
        cli = semla_cli(
            "library", "retrieve", "--library", fixtures / "library", "--embedding", tmp_path / "q.npy",
            "--top-k", "2", "--temperature", "0.3", "--similarity", similarity, "--exclude", "clear",
        )
        ours = library.retrieve(query, top_k=2, temperature=0.3, similarity=similarity, exclude=["clear"])
        assert [r.name for r in ours] == [s["name"] for s in cli["selections"]]
        for r, s in zip(ours, cli["selections"]):
            assert r.distance == s["distance"] and r.weight == s["weight"]
            assert r.similarity == s["similarity"]
