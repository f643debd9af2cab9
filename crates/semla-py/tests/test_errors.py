"""Bad files and bad arrays raise the matching `semla.SemlaError` subclass with
the Rust message naming what is wrong; nothing crashes the interpreter."""

import os
import shutil

import numpy as np
import pytest

import semla


@pytest.fixture
def world(fixtures, tmp_path):
    shutil.copytree(fixtures, tmp_path / "world")
    return tmp_path / "world"


def test_hierarchy():
    for cls in (
        semla.AdapterFormatError,
        semla.LibraryError,
        semla.UnknownAdapterError,
        semla.ModelError,
        semla.ImageError,
        semla.ShapeError,
        semla.DatasetError,
    ):
        assert issubclass(cls, semla.SemlaError)
    assert issubclass(semla.ShapeError, ValueError)
    assert issubclass(semla.UnknownAdapterError, KeyError)
    assert issubclass(semla.UnknownAdapterError, semla.LibraryError)


def test_a_truncated_adapter_is_listed_broken_and_only_it_fails(world):
    weights = world / "library" / "fog" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    library = semla.AdapterLibrary.open(world / "library")
    assert library.names == ["clear", "night"]
    [(name, message)] = library.broken
    assert name == "fog" and "adapter_model.safetensors" in message
    with pytest.raises(semla.AdapterFormatError, match="adapter fog is unusable"):
        library["fog"]
    assert library["night"].name == "night"
    with pytest.raises(semla.AdapterFormatError, match="adapter_model.safetensors"):
        semla.Adapter.from_pretrained(world / "library" / "fog")
    # SemLA still runs on the rest.
    sl = semla.SemLA(world / "model", library, top_k=1)
    assert sl.segment(world / "images" / "fog.png").adapters[0].name in {"clear", "night"}


def test_unknown_adapter_is_a_key_error(fixtures):
    library = semla.AdapterLibrary.open(fixtures / "library")
    with pytest.raises(KeyError, match="snow"):
        library["snow"]
    with pytest.raises(semla.UnknownAdapterError, match="available: clear, fog, night"):
        library.config("snow")


def test_bad_model_folders(world):
    (world / "model" / "config.json").write_text("{not json")
    with pytest.raises(semla.ModelError, match="config.json"):
        semla.Segmenter.from_pretrained(world / "model")
    with pytest.raises(semla.ModelError):
        semla.Segmenter.from_pretrained(world / "nowhere")


def test_devices(fixtures):
    model = semla.Segmenter.from_pretrained(fixtures / "model", device="cpu")
    assert model.device == "cpu"
    sl = semla.SemLA(model, fixtures / "library")
    assert sl.model.device == "cpu"
    assert semla.SemLA(fixtures / "model", fixtures / "library", device="cpu").model.device == "cpu"
    with pytest.raises(semla.SemlaError, match="expected cpu, cuda, cuda:N or auto"):
        semla.Segmenter.from_pretrained(fixtures / "model", device="tpu")
    if semla.Segmenter.from_pretrained(fixtures / "model").device == "cpu":
        # Without CUDA compiled in (the default build), asking for it says how to get it.
        with pytest.raises(semla.SemlaError, match="--features cuda"):
            semla.Segmenter.from_pretrained(fixtures / "model", device="cuda:0")


def test_bad_images(world, fixtures):
    sl = semla.SemLA(fixtures / "model", fixtures / "library")
    png = world / "images" / "fog.png"
    png.write_bytes(png.read_bytes()[: len(png.read_bytes()) // 2])
    with pytest.raises(semla.ImageError, match="fog.png"):
        sl.segment(png)
    (world / "text.jpg").write_text("not an image")
    with pytest.raises(semla.ImageError, match="text.jpg"):
        semla.read_image(world / "text.jpg")
    with pytest.raises(semla.ImageError):
        sl.segment(world / "missing.png")


@pytest.mark.parametrize(
    "array, match",
    [
        (np.zeros((8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8), np.uint8), r"\[H, W, 3\]"),
        (np.zeros((8, 8, 4), np.uint8), r"\[H, W, 3\]"),
        (np.zeros((8, 16, 3), np.uint8)[:, ::2], "C-contiguous"),
        (np.zeros((0, 8, 3), np.uint8), "empty"),
    ],
)
def test_bad_arrays(fixtures, array, match):
    model = semla.Segmenter.from_pretrained(fixtures / "model")
    with pytest.raises(semla.ShapeError, match=match):
        model.segment(array)


def test_not_an_image_at_all(fixtures):
    model = semla.Segmenter.from_pretrained(fixtures / "model")
    with pytest.raises(semla.ShapeError, match="int"):
        model.segment(42)


def test_queries_and_settings(fixtures):
    library = semla.AdapterLibrary.open(fixtures / "library")
    with pytest.raises(semla.ShapeError, match="dimension"):
        library.retrieve(np.ones(5, np.float32))
    with pytest.raises(semla.ShapeError, match="non-finite"):
        library.retrieve(np.full(8, np.nan, np.float32))
    with pytest.raises(semla.ShapeError):
        library.retrieve(np.ones((2, 8), np.float32))
    with pytest.raises(semla.SemlaError, match="temperature"):
        library.retrieve(np.ones(8, np.float32), temperature=-1)
    with pytest.raises(semla.SemlaError, match="combination"):
        semla.add_weighted_adapter([library["fog"]], [1.0], combination_type="ties")
    with pytest.raises(semla.SemlaError, match="not finite"):
        semla.add_weighted_adapter([library["fog"]], [float("nan")])
    with pytest.raises(semla.SemlaError, match="embedder"):
        semla.SemLA(fixtures / "model", library, embedder="nonsense")


def test_a_query_from_another_embedder_is_refused(fixtures):
    with pytest.raises(semla.SemlaError, match="embedder"):
        semla.SemLA(fixtures / "model", fixtures / "library", embedder="backbone")


def test_bad_label_maps(world):
    bad = world / "truth" / "fog.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(40))
    with pytest.raises(semla.DatasetError, match="fog.png"):
        semla.read_label_map(bad)


def test_random_damage_never_crashes(world):
    """Random byte edits and cuts of every file an adapter or a model is made
    of: each load either works or raises a SemlaError."""
    rng = np.random.default_rng(0)
    files = [
        world / "library" / "night" / "adapter_model.safetensors",
        world / "library" / "night" / "adapter_config.json",
        world / "library" / "night" / "night_statistics.npz",
        world / "model" / "model.safetensors",
    ]
    originals = {f: f.read_bytes() for f in files}
    for _ in range(60):
        target = files[rng.integers(len(files))]
        data = bytearray(originals[target])
        if rng.random() < 0.3:
            data = data[: rng.integers(len(data))]
        else:
            for _ in range(rng.integers(1, 6)):
                data[rng.integers(min(len(data), 64 if rng.random() < 0.5 else len(data)))] = rng.integers(256)
        target.write_bytes(bytes(data))
        try:
            library = semla.AdapterLibrary.open(world / "library")
            if "night" in library:
                library["night"].delta_weights()
                library.prototype("night")
            sl = semla.SemLA(world / "model", library, top_k=2)
            sl.segment(world / "images" / "night.png")
        except semla.SemlaError:
            pass
        target.write_bytes(originals[target])
