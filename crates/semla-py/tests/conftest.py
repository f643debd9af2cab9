"""Shared pieces of the Python package's tests.

The fixtures are small files committed with the repository:
- ``tests/fixtures``: a tiny segmenter, a library of three adapters whose
  prototypes the ``style`` embedder made (``cargo run -p semla-pipeline
  --example python_fixture -- crates/semla-py/tests/fixtures`` rewrites it),
  two photos and their ground truth;
- ``crates/semla-adapters/tests/fixtures/peft``: adapters written by peft and
  peft's own merges of them (``tools/reference/peft_fusion.py``).

Comparisons with the ``semla`` CLI need its binary: ``$SEMLA_BIN``, else the
workspace's ``target/release/semla`` or ``target/debug/semla``. Without one
those tests skip, unless ``SEMLA_REQUIRE_CLI=1`` (CI) makes that a failure.
"""

import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
REPO = HERE.parents[2]
PEFT_FIXTURES = REPO / "crates" / "semla-adapters" / "tests" / "fixtures" / "peft"


def read_safetensors(path):
    """The float32 tensors of a safetensors file, read with numpy alone (an
    independent reader: no semla code involved)."""
    data = Path(path).read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    body = data[8 + header_len :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(body[start:end], dtype="<f4").reshape(info["shape"])
    return out


def _find_cli():
    if os.environ.get("SEMLA_BIN"):
        return Path(os.environ["SEMLA_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    for profile in ("release", "debug"):
        candidate = target / profile / "semla"
        if candidate.is_file():
            return candidate
    return None


@pytest.fixture(scope="session")
def semla_cli():
    """Runs the ``semla`` CLI: ``semla_cli(*args)`` returns its parsed ``--json`` output."""
    binary = _find_cli()
    if binary is None:
        message = "no semla binary (cargo build -p semla-cli, or set SEMLA_BIN)"
        if os.environ.get("SEMLA_REQUIRE_CLI") == "1":
            pytest.fail(message)
        pytest.skip(message)

    def run(*args):
        done = subprocess.run(
            [str(binary), "--json", *map(str, args)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    return run


@pytest.fixture(scope="session")
def fixtures():
    return FIXTURES


@pytest.fixture(scope="session")
def peft_fixtures():
    return PEFT_FIXTURES
