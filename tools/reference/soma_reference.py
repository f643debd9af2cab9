#!/usr/bin/env python3
"""Reference fixtures for semla-train's SoMA module (`crates/semla-train/src/soma.rs`).

Writes `crates/semla-train/tests/fixtures/soma/soma_reference.safetensors`:

1. SVD cases. For a few small random weights W (Linear [out, in], Conv2d
   [out, in, k, k] read as [out, in*k*k]) with rank r and alpha (s = alpha / r),
   torch.linalg.svd (float64) gives the r smallest singular triplets and
       A0 = diag(sqrt(sigma_r / s)) V_r^T,  B0 = U_r diag(sqrt(sigma_r / s)),
       W_res = W - s B0 A0.
   Stored per case `<case>.{weight,sigma,a0,b0,sb0a0,residual}` (A0/B0 are
   defined up to a sign per component; the Rust test compares the
   sign-invariant s B0 A0 and W_res, and |A0|, |B0|).

2. PEFT storage check. A toy torch module with sites `head` (Conv2d 1x1),
   `classifier` (Conv2d 1x1), `proj` (Linear) and `conv3` (Conv2d 3x3) is
   SoMA-initialised, its factors are moved to arbitrary "trained" values A, B,
   and the adapter is written as a standard rank-2r LoRA (A' = [A; -A0],
   B' = [B, B0], r' = 2r, lora_alpha = 2 r s). It is loaded with
   `peft.PeftModel.from_pretrained` onto the ORIGINAL weights; the script
   asserts that (a) PEFT's scaling is s, (b) the PEFT model's output equals
   the trained SoMA model (W_res + s B A) to 1e-5, (c) merge_and_unload gives
   W + s (B A - B0 A0). Stored: `peft.<site>.{weight,a,b,merged}` plus the
   rank and alpha in the metadata.

Run from the repository root:  python3 tools/reference/soma_reference.py

Check mode (no fixture written): `--check-bake BASE_DIR ADAPTER_DIR BAKED_DIR`
loads a semla-written adapter folder with `peft.PeftModel.from_pretrained` onto
the adapted layers of a semla model folder (`model.safetensors`), merges it with
`merge_and_unload`, and compares every merged weight with the model folder that
`semla adapter bake` wrote (max |diff| must be < 1e-5).
"""

import json
import os
import tempfile

import torch
from safetensors.torch import save_file

OUT = os.path.join("crates", "semla-train", "tests", "fixtures", "soma", "soma_reference.safetensors")


def soma_split(w, r, s):
    """(sigma_all, A0, B0, residual) of w ([out, in] or [out, in, k, k]), float64."""
    m = w.reshape(w.shape[0], -1).double()
    u, sigma, vt = torch.linalg.svd(m, full_matrices=False)
    k = sigma.shape[0]
    root = torch.sqrt(sigma[k - r:] / s)
    a0 = root[:, None] * vt[k - r:, :]
    b0 = u[:, k - r:] * root[None, :]
    residual = m - s * b0 @ a0
    if w.dim() == 4:
        a0 = a0.reshape(r, *w.shape[1:])
        b0 = b0.reshape(w.shape[0], r, 1, 1)
    return sigma, a0, b0, residual.reshape(w.shape)


def svd_cases(gen, tensors, meta):
    cases = {
        # name: (shape, r, alpha)
        "linear_tall": ((6, 4), 2, 2.0),
        "linear_wide": ((5, 8), 3, 6.0),
        "conv1x1": ((8, 6, 1, 1), 2, 4.0),
        "conv3x3": ((4, 3, 3, 3), 2, 1.0),
    }
    for name, (shape, r, alpha) in cases.items():
        w = torch.randn(*shape, generator=gen, dtype=torch.float64)
        w = w.float()  # the Rust side reads an f32 weight
        s = alpha / r
        sigma, a0, b0, residual = soma_split(w, r, s)
        m = w.reshape(shape[0], -1).double()
        sb0a0 = s * b0.reshape(shape[0], r) @ a0.reshape(r, -1)
        # Self-checks: the minor part plus the residual is W, and the residual's
        # singular values are the top k - r of W followed by zeros.
        assert torch.allclose(residual.reshape(m.shape) + sb0a0, m, atol=1e-12)
        res_sigma = torch.linalg.svd(residual.reshape(m.shape), full_matrices=False)[1]
        k = sigma.shape[0]
        assert torch.allclose(res_sigma[: k - r], sigma[: k - r], atol=1e-10)
        assert torch.all(res_sigma[k - r:].abs() < 1e-10)
        tensors[f"{name}.weight"] = w.contiguous()
        tensors[f"{name}.sigma"] = sigma.float().contiguous()
        tensors[f"{name}.a0"] = a0.float().contiguous()
        tensors[f"{name}.b0"] = b0.float().contiguous()
        tensors[f"{name}.sb0a0"] = sb0a0.reshape(shape).float().contiguous()
        tensors[f"{name}.residual"] = residual.float().contiguous()
        meta[name] = {"r": r, "alpha": alpha}


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Conv2d(16, 16, 1)
        self.classifier = torch.nn.Conv2d(16, 4, 1)
        self.conv3 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.proj = torch.nn.Linear(4, 6)

    def forward(self, x):
        h = torch.relu(self.conv3(x))
        h = torch.relu(self.head(h))
        logits = self.classifier(h)  # [N, 4, H, W]
        return self.proj(logits.permute(0, 2, 3, 1))  # [N, H, W, 6]


def peft_check(gen, tensors, meta):
    from peft import PeftModel

    r, alpha = 2, 3.0
    s = alpha / r
    torch.manual_seed(0)
    base = Toy().eval()
    sites = ["head", "classifier", "conv3", "proj"]
    trained = Toy().eval()
    trained.load_state_dict(base.state_dict())
    state = {}
    for name in sites:
        layer = getattr(base, name)
        w = layer.weight.detach().clone()
        _, a0, b0, residual = soma_split(w, r, s)
        # "Trained" factors: the initial ones plus an arbitrary change.
        a = a0 + 0.3 * torch.randn(a0.shape, generator=gen, dtype=torch.float64)
        b = b0 + 0.3 * torch.randn(b0.shape, generator=gen, dtype=torch.float64)
        # The trained SoMA layer: W_res + s B A.
        delta = s * (b.reshape(w.shape[0], r) @ a.reshape(r, -1)).reshape(w.shape)
        getattr(trained, name).weight.data = (residual + delta).float()
        state[f"base_model.model.{name}.lora_A.weight"] = torch.cat([a, -a0], 0).float().contiguous()
        state[f"base_model.model.{name}.lora_B.weight"] = torch.cat([b, b0], 1).float().contiguous()
        tensors[f"peft.{name}.weight"] = w.contiguous()
        tensors[f"peft.{name}.a"] = a.float().contiguous()
        tensors[f"peft.{name}.b"] = b.float().contiguous()
    config = {
        "peft_type": "LORA",
        "r": 2 * r,
        "lora_alpha": 2 * r * s,
        "target_modules": sites,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "task_type": None,
    }
    x = torch.randn(2, 3, 5, 7, generator=gen)
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "adapter_config.json"), "w") as f:
            json.dump(config, f)
        save_file(state, os.path.join(tmp, "adapter_model.safetensors"), metadata={"format": "pt"})
        original = Toy().eval()
        original.load_state_dict(base.state_dict())
        model = PeftModel.from_pretrained(original, tmp).eval()
        for name in sites:
            scaling = model.base_model.model.get_submodule(name).scaling["default"]
            assert abs(scaling - s) < 1e-12, (name, scaling, s)
        with torch.no_grad():
            got = model(x)
            want = trained(x)
        err = (got - want).abs().max().item()
        assert err < 1e-5, f"PEFT rank-2r adapter differs from the trained SoMA model by {err}"
        merged = model.merge_and_unload()
        for name in sites:
            m = getattr(merged, name).weight.detach()
            w_trained = getattr(trained, name).weight.detach()
            assert (m - w_trained).abs().max().item() < 1e-5
            tensors[f"peft.{name}.merged"] = m.contiguous()
    meta["peft"] = {"r": r, "alpha": alpha, "sites": sites, "max_abs_output_error": err}
    print(f"PEFT: rank-{2 * r} adapter with lora_alpha {2 * r * s} loads with scaling {s}; "
          f"output vs trained SoMA model max |diff| = {err:.2e}")


def check_bake(base_dir, adapter_dir, baked_dir):
    from peft import PeftModel
    from safetensors.torch import load_file

    base = load_file(os.path.join(base_dir, "model.safetensors"))
    baked = load_file(os.path.join(baked_dir, "model.safetensors"))
    with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
        targets = json.load(f)["target_modules"]
    root = torch.nn.Module()
    for path in targets:
        w = base[f"{path}.weight"]
        if w.dim() == 4:
            layer = torch.nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], bias=False)
        else:
            layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        layer.weight.data = w.clone()
        parent = root
        parts = path.split(".")
        for part in parts[:-1]:
            if not hasattr(parent, part):
                parent.add_module(part, torch.nn.Module())
            parent = getattr(parent, part)
        parent.add_module(parts[-1], layer)
    model = PeftModel.from_pretrained(root, adapter_dir).eval()
    merged = model.merge_and_unload()
    worst = 0.0
    for path in targets:
        got = merged.get_submodule(path).weight.detach()
        err = (got - baked[f"{path}.weight"]).abs().max().item()
        change = (got - base[f"{path}.weight"]).abs().max().item()
        print(f"{path}: PEFT merge vs semla bake max |diff| {err:.2e} (adapter changes the weight by up to {change:.2e})")
        worst = max(worst, err)
    assert worst < 1e-5, worst
    print(f"OK: {len(targets)} sites, worst {worst:.2e}")


def main():
    import sys

    if len(sys.argv) == 5 and sys.argv[1] == "--check-bake":
        check_bake(*sys.argv[2:])
        return
    gen = torch.Generator().manual_seed(20251122)
    tensors, meta = {}, {}
    svd_cases(gen, tensors, meta)
    peft_check(gen, tensors, meta)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file(tensors, OUT, metadata={"cases": json.dumps(meta)})
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes, {len(tensors)} tensors)")


if __name__ == "__main__":
    main()
