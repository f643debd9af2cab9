"""The deterministic weight protocol the reference scripts and the Rust tests share.

Every tensor of a tiny reference model is filled from its checkpoint key alone, so fixtures can
list (name, shape, scale, offset) instead of committing weights; the Rust side regenerates them
with `semla_core::rng::named_values` (`semla_test_support::tensors_from_keys`).

  state = FNV-1a 64 of the key (UTF-8 bytes)
  value i (1-based): z = state + i * 0x9E3779B97F4A7C15 (SplitMix64 step), then the SplitMix64
  finaliser; u = (z >> 40) / 2^24 * 2 - 1 in float32 (uniform in [-1, 1));
  value = offset + scale * u (float32).
"""

import json

import numpy as np

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
GAIN = 3 ** 0.5  # uniform values of variance 1 / fan_in


def fnv1a64(name):
    h = 0xCBF29CE484222325
    for b in name.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001B3) & MASK64
    return h


def protocol_values(name, n, scale, offset):
    """n float32 values for tensor `name` (vectorised, wrapping uint64 arithmetic)."""
    seed = np.uint64(fnv1a64(name))
    i = np.arange(1, n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = seed + i * np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float32) / np.float32(16777216.0) * np.float32(2.0) - np.float32(1.0)
    return np.float32(offset) + np.float32(scale) * u


def protocol_values_scalar(name, n, scale, offset):
    """The same, one value at a time with Python integers (cross-check of the vectorised one)."""
    state = fnv1a64(name)
    out = []
    for _ in range(n):
        state = (state + GOLDEN) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * MIX1) & MASK64
        z = ((z ^ (z >> 27)) * MIX2) & MASK64
        z ^= z >> 31
        u = np.float32(z >> 40) / np.float32(16777216.0) * np.float32(2.0) - np.float32(1.0)
        out.append(np.float32(offset) + np.float32(scale) * u)
    return np.array(out, dtype=np.float32)


def f32(x):
    return float(np.float32(x))


def write_keys_json(path, header, entries):
    """`{header..., "tensors": [{name, shape, dtype, scale, offset}, ...]}`, one tensor a line."""
    lines = ["{"]
    for k, v in header.items():
        lines.append(f"  {json.dumps(k)}: {json.dumps(v)},")
    lines.append('  "tensors": [')
    lines.append(",\n".join("    " + json.dumps(e) for e in entries))
    lines.append("  ]")
    lines.append("}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
