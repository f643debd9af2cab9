#!/usr/bin/env python3
"""Reference fixtures for semla-adapters: PEFT adapters and PEFT's weighted merges.

Builds a toy model with Conv2d and Linear LoRA sites, four PEFT LoRA adapters
(plain, rsLoRA, rank_pattern/alpha_pattern, a second plain one of equal rank),
saves them as a SemLA `loradb` library, and records what peft 0.13's
`add_weighted_adapter` produces for `cat`, `linear` and `svd`: the merged
factors, the merged delta W of every site and the model output on a fixed input.

Usage (from the repository root):

    python3 tools/reference/peft_fusion.py generate
        writes crates/semla-adapters/tests/fixtures/peft/ (library + expected.safetensors)
    cargo run -p semla-adapters --example write_fixture_merges
        writes the adapters that *semla* merges into .../fixtures/peft/semla_written/
    python3 tools/reference/peft_fusion.py verify
        loads semla's folders with PeftModel.from_pretrained, compares the model
        outputs with peft's own merges and writes .../fixtures/peft/peft_load_check.json

Deterministic: fixed seeds, CPU, float32.
"""

import json
import math
import os
import shutil
import sys

import numpy as np
import torch
from torch import nn
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(ROOT, "crates", "semla-adapters", "tests", "fixtures", "peft")
LIBRARY = os.path.join(FIXTURES, "library")
SEMLA_WRITTEN = os.path.join(FIXTURES, "semla_written")

SITES = ["conv1", "conv2", "fc1", "fc2"]
# (name, LoraConfig kwargs). The first adapter of every merge is a plain one:
# peft copies the first adapter's config into the merged one (use_rslora and
# rank_pattern included), which would change the merged scaling.
ADAPTERS = [
    ("alpha_plain", dict(r=4, lora_alpha=8, target_modules=SITES)),
    ("beta_rslora", dict(r=8, lora_alpha=4, use_rslora=True, target_modules=SITES)),
    (
        "gamma_pattern",
        dict(
            r=4,
            lora_alpha=4,
            rank_pattern={"fc2": 2},
            alpha_pattern={"conv1": 12},
            target_modules=["conv1", "fc1", "fc2"],  # conv2 deliberately absent
        ),
    ),
    ("delta_plain", dict(r=4, lora_alpha=16, target_modules=SITES)),
]
MERGES = [
    # (merged name, adapters, weights, combination, svd_rank)
    ("cat", ["alpha_plain", "beta_rslora", "gamma_pattern"], [0.6, -0.3, 0.9], "cat", None),
    ("linear", ["alpha_plain", "delta_plain"], [0.7, 0.5], "linear", None),
    ("svd", ["alpha_plain", "beta_rslora", "gamma_pattern"], [0.6, -0.3, 0.9], "svd", None),
    ("svd3", ["alpha_plain", "beta_rslora", "gamma_pattern"], [0.6, -0.3, 0.9], "svd", 3),
]
PROTOTYPE_DIM = 16


class Toy(nn.Module):
    """conv1 (3x3) -> relu -> conv2 (1x1) -> relu -> tokens -> fc1 -> relu -> fc2 -> mean over tokens."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3, padding=1)
        self.conv2 = nn.Conv2d(10, 12, 1)
        self.fc1 = nn.Linear(12, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        h = torch.relu(self.conv2(h))
        h = h.flatten(2).transpose(1, 2)  # [N, H*W, C]
        h = torch.relu(self.fc1(h))
        return self.fc2(h).mean(1)  # [N, 10]


def base_model():
    torch.manual_seed(0)
    return Toy().eval()


def fixed_input():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 5, 5, generator=g)


def peft_model_with_adapters():
    model = None
    for i, (name, kwargs) in enumerate(ADAPTERS):
        cfg = LoraConfig(**kwargs)
        if model is None:
            model = get_peft_model(base_model(), cfg, adapter_name=name)
        else:
            model.add_adapter(name, cfg)
    # peft initialises B to zero; give every factor random values.
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_" in pname:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def scale_of(layer, adapter):
    return float(layer.scaling[adapter])


def generate():
    if os.path.exists(FIXTURES):
        shutil.rmtree(FIXTURES)
    os.makedirs(LIBRARY)
    model = peft_model_with_adapters()
    names = [n for n, _ in ADAPTERS]
    # Saves <LIBRARY>/<name>/adapter_config.json + adapter_model.safetensors.
    model.save_pretrained(LIBRARY, selected_adapters=names)
    os.remove(os.path.join(LIBRARY, "README.md"))  # peft's model card, not part of the library
    # peft writes the first ("default"-like) adapter in a subfolder only when its
    # name is not "default"; all of ours have names, so each has its own folder.
    rng = np.random.default_rng(3)
    prototypes = {}
    for i, name in enumerate(names[:3]):
        proto = rng.standard_normal((1, PROTOTYPE_DIM)).astype(np.float32)
        path = os.path.join(LIBRARY, name, f"{name}_statistics.npz")
        # SemLA writes np.savez; also cover np.savez_compressed.
        (np.savez_compressed if i == 1 else np.savez)(path, train_average_embedding=proto)
        prototypes[name] = torch.from_numpy(proto)
    # delta_plain has no prototype on purpose.

    # The same adapter as an old-style pickle (adapter_model.bin).
    bin_dir = os.path.join(FIXTURES, "bin", "alpha_plain")
    os.makedirs(bin_dir)
    shutil.copy(os.path.join(LIBRARY, "alpha_plain", "adapter_config.json"), bin_dir)
    state = load_file(os.path.join(LIBRARY, "alpha_plain", "adapter_model.safetensors"))
    torch.save(state, os.path.join(bin_dir, "adapter_model.bin"))

    x = fixed_input()
    expected = {"input": x}
    for name, proto in prototypes.items():
        expected[f"prototype.{name}"] = proto
    base = base_model()
    for k, v in base.state_dict().items():
        expected[f"base.{k}"] = v
    with torch.no_grad():
        expected["output.base"] = base(x)
        for name in names:
            model.set_adapter(name)
            expected[f"output.{name}"] = model(x)
        scalings = {}
        for name in names:
            for site in SITES:
                layer = getattr(model.base_model.model, site)
                if name in layer.lora_A:
                    scalings[f"{name}.{site}"] = scale_of(layer, name)

        for merged, adapters, weights, combo, svd_rank in MERGES:
            model.add_weighted_adapter(adapters, weights, merged, combination_type=combo, svd_rank=svd_rank)
            model.set_adapter(merged)
            expected[f"output.{merged}"] = model(x)
            for site in SITES:
                layer = getattr(model.base_model.model, site)
                expected[f"{merged}.{site}.delta"] = layer.get_delta_weight(merged)
                expected[f"{merged}.{site}.lora_A"] = layer.lora_A[merged].weight.detach().clone()
                expected[f"{merged}.{site}.lora_B"] = layer.lora_B[merged].weight.detach().clone()
                assert scale_of(layer, merged) == 1.0

            if combo == "svd":
                # What "svd" should be: the truncated SVD of the exact weighted sum
                # sum_i w_i s_i B_i A_i. peft 0.13 instead truncates
                # sum_i w_i s_i^2 B_i A_i (it multiplies get_delta_weight, which is
                # already scaled, by w_i * s_i again). Record both and check that.
                rank = svd_rank or max(model.peft_config[a].r for a in adapters)
                for site in SITES:
                    layer = getattr(model.base_model.model, site)
                    exact = 0
                    peft_like = 0
                    for a, w in zip(adapters, weights):
                        if a in layer.lora_A:
                            d = layer.get_delta_weight(a).double().flatten(1)
                            exact = exact + w * d
                            peft_like = peft_like + w * scale_of(layer, a) * d
                    for label, mat in (("exact", exact), ("peft_like", peft_like)):
                        u, s, vh = np.linalg.svd(mat.numpy(), full_matrices=False)
                        recon = (u[:, :rank] * s[:rank]) @ vh[:rank]
                        shape = expected[f"{merged}.{site}.delta"].shape
                        if label == "exact":
                            expected[f"{merged}_exact.{site}.delta"] = torch.tensor(recon).float().reshape(shape)
                            expected[f"{merged}_exact.{site}.singular_values"] = torch.tensor(s).float()
                        else:
                            got = expected[f"{merged}.{site}.delta"].double().flatten(1).numpy()
                            err = np.abs(got - recon).max()
                            assert err < 1e-5, f"peft svd is not the truncation of sum w s^2 BA at {site}: {err}"
                # Model output with the exact truncated deltas merged into the base weights.
                exact_model = base_model()
                with torch.no_grad():
                    for site in SITES:
                        getattr(exact_model, site).weight += expected[f"{merged}_exact.{site}.delta"]
                    expected[f"output.{merged}_exact"] = exact_model(x)

    expected = {k: v.detach().float().contiguous() for k, v in expected.items()}
    save_file(expected, os.path.join(FIXTURES, "expected.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(FIXTURES, "scalings.json"), "w") as f:
        json.dump(scalings, f, indent=2, sort_keys=True)
    with open(os.path.join(FIXTURES, "merges.json"), "w") as f:
        json.dump(
            [dict(name=m, adapters=a, weights=w, combination=c, svd_rank=r) for m, a, w, c, r in MERGES],
            f,
            indent=2,
        )
    print(f"wrote {FIXTURES}")


def verify():
    """Loads the adapters semla wrote with PeftModel.from_pretrained and compares outputs."""
    expected = load_file(os.path.join(FIXTURES, "expected.safetensors"))
    x = expected["input"]
    report = {"peft_version": __import__("peft").__version__, "torch_version": torch.__version__, "checks": []}
    ok = True
    for merged, _, _, combo, _ in MERGES:
        folder = os.path.join(SEMLA_WRITTEN, merged)
        model = PeftModel.from_pretrained(base_model(), folder).eval()
        with torch.no_grad():
            got = model(x)
        # semla's svd truncates the exact sum; compare it with the exact reference.
        reference = f"output.{merged}_exact" if combo == "svd" else f"output.{merged}"
        err = float((got - expected[reference]).abs().max())
        passed = err < 1e-5
        ok &= passed
        report["checks"].append(
            dict(merge=merged, folder=f"semla_written/{merged}", compared_with=reference, max_abs_diff=err, passed=passed)
        )
        print(f"{merged}: max |semla-in-peft - reference| = {err:.3e} {'ok' if passed else 'FAIL'}")
    report["all_passed"] = ok
    with open(os.path.join(FIXTURES, "peft_load_check.json"), "w") as f:
        json.dump(report, f, indent=2)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    torch.set_num_threads(1)
    {"generate": generate, "verify": verify}[sys.argv[1] if len(sys.argv) > 1 else "generate"]()
