"""Segmentation from Python equals `semla segment` bit for bit; modes, batches
and mixtures behave as the pipeline documents."""

import numpy as np
import pytest

import semla


@pytest.fixture(scope="module")
def model(fixtures):
    return semla.Segmenter.from_pretrained(fixtures / "model")


@pytest.fixture(scope="module")
def library(fixtures):
    return semla.AdapterLibrary.open(fixtures / "library")


@pytest.fixture(scope="module")
def sl(model, library):
    return semla.SemLA(model, library, top_k=2, temperature=0.5)


def test_segment_equals_the_cli_bit_for_bit(fixtures, sl, semla_cli, tmp_path):
    images = [fixtures / "images" / "fog.png", fixtures / "images" / "night.png"]
    report = semla_cli(
        "segment", "--model", fixtures / "model", "--library", fixtures / "library",
        "--top-k", "2", "--temperature", "0.5",
        "--out", tmp_path / "out", "--labels", tmp_path / "labels", *images,
    )
    for image, entry in zip(images, report["images"]):
        cli_labels = semla.read_label_map(tmp_path / "labels" / f"{image.stem}.png")
        from_path = sl.segment(image)
        from_array = sl.segment(semla.read_image(image))
        np.testing.assert_array_equal(from_path.labels, cli_labels)
        np.testing.assert_array_equal(from_array.labels, cli_labels)
        assert [(a.name, a.weight) for a in from_path.adapters] == [
            (a["name"], a["weight"]) for a in entry["adapters"]
        ]
        assert list(from_path.class_pixels()) == entry["class_pixels"]
        # The overlay is the one the CLI wrote.
        overlay = sl.model.overlay(image, from_path.labels)
        np.testing.assert_array_equal(overlay, semla.read_image(tmp_path / "out" / f"{image.stem}_overlay.png"))


def test_retrieval_follows_the_image(fixtures, sl, library):
    for name in ("fog", "night"):
        image = fixtures / "images" / f"{name}.png"
        result = sl.segment(image)
        assert result.adapters[0].name == name
        assert sum(a.weight for a in result.adapters) == pytest.approx(1.0)
        # The mixture is the library's retrieval for the image's embedding.
        expected = library.retrieve(sl.embed(image), top_k=2, temperature=0.5)
        assert [(a.name, a.weight) for a in result.adapters] == [(r.name, r.weight) for r in expected]
        assert result.labels.dtype == np.uint16 and result.labels.shape == (48, 64)
        assert set(result.timings) >= {"embed_s", "retrieve_s", "forward_s", "decode_s"}


def test_modes_and_leave_one_out(fixtures, sl, model, library):
    image = semla.read_image(fixtures / "images" / "fog.png")
    zero = sl.segment(image, mode="zeroshot")
    assert zero.adapters == []
    np.testing.assert_array_equal(zero.labels, model.segment(image).labels)
    uniform = sl.segment(image, mode="uniform")
    assert [a.weight for a in uniform.adapters] == pytest.approx([1 / 3] * 3)
    loo = sl.segment(image, exclude=["fog"])
    assert "fog" not in [a.name for a in loo.adapters]
    explicit = sl.segment(image, mode="adapters", adapters=[("night", 1.0)])
    # One adapter at weight 1 is that adapter, as the peft-shaped path gives it.
    alone = model.segment(image, adapters=[library["night"]])
    np.testing.assert_array_equal(explicit.labels, alone.labels)
    assert (explicit.labels != zero.labels).any(), "the fixture's adapters must change the labels"
    # A mixture fused in Python equals the same mixture fused by the pipeline.
    mix = [("fog", 0.7), ("night", 0.3)]
    merged = semla.add_weighted_adapter([library["fog"], library["night"]], [0.7, 0.3])
    np.testing.assert_array_equal(
        sl.segment(image, mode="adapters", adapters=mix).labels, model.segment(image, adapters=[merged]).labels
    )
    with pytest.raises(semla.SemlaError, match="unknown mode"):
        sl.segment(image, mode="best")


def test_probabilities(fixtures, sl):
    result = sl.segment(fixtures / "images" / "fog.png", return_probs=True)
    probs = result.probabilities
    assert probs.dtype == np.float32 and probs.shape == (10, 48, 64)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probs.argmax(axis=0), result.labels)
    assert sl.segment(fixtures / "images" / "fog.png").probabilities is None


def test_batch_keeps_one_mixture_per_image(fixtures, sl):
    fog, night = (semla.read_image(fixtures / "images" / f"{n}.png") for n in ("fog", "night"))
    small = np.ascontiguousarray(fog[:32, :40])
    batch = sl.segment_batch([fog, night, small, fixtures / "images" / "night.png"])
    assert [r.adapters[0].name for r in batch] == ["fog", "night", sl.segment(small).adapters[0].name, "night"]
    for image, result in zip([fog, night, small], batch):
        alone = sl.segment(image)
        assert [(a.name, a.weight) for a in result.adapters] == [(a.name, a.weight) for a in alone.adapters]
        np.testing.assert_array_equal(result.labels, alone.labels)
    assert batch[2].labels.shape == (32, 40)
    assert sl.segment_batch([]) == []


def test_colours_and_files(fixtures, model, tmp_path):
    labels = model.segment(fixtures / "images" / "fog.png").labels
    mask = model.colorize(labels)
    assert mask.shape == (48, 64, 3) and mask.dtype == np.uint8
    semla.write_image(tmp_path / "mask.png", mask)
    np.testing.assert_array_equal(semla.read_image(tmp_path / "mask.png"), mask)


def test_paths_for_model_and_library(fixtures):
    sl = semla.SemLA(str(fixtures / "model"), fixtures / "library", top_k=1, sources=["fog", "night"])
    assert sl.sources == ["fog", "night"] and sl.top_k == 1
    assert sl.embedder.startswith("style")
    assert [a.name for a in sl.segment(fixtures / "images" / "night.png").adapters] == ["night"]
