"""Where torch and peft are installed: what `save_pretrained` writes loads in
`peft.PeftModel.from_pretrained` and gives peft's own merge (the reference
outputs stored by `tools/reference/peft_fusion.py`). Skipped otherwise."""

import json

import numpy as np
import pytest

import semla
from conftest import read_safetensors

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")


class Toy(torch.nn.Module):
    """The reference script's toy model: conv1 (3x3), conv2 (1x1), fc1, fc2."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 10, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(10, 12, 1)
        self.fc1 = torch.nn.Linear(12, 16)
        self.fc2 = torch.nn.Linear(16, 10)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        h = torch.relu(self.conv2(h))
        h = h.flatten(2).transpose(1, 2)
        h = torch.relu(self.fc1(h))
        return self.fc2(h).mean(1)


@pytest.mark.parametrize("merge", ["cat", "linear", "svd", "svd3"])
def test_peft_loads_what_semla_saves(peft_fixtures, tmp_path, merge):
    expected = read_safetensors(peft_fixtures / "expected.safetensors")
    spec = {m["name"]: m for m in json.loads((peft_fixtures / "merges.json").read_text())}[merge]
    library = semla.AdapterLibrary.open(peft_fixtures / "library")
    merged = semla.add_weighted_adapter(
        [library[n] for n in spec["adapters"]], spec["weights"], spec["combination"], spec["svd_rank"]
    )
    merged.save_pretrained(tmp_path / merge)

    base = Toy().eval()
    base.load_state_dict({k[len("base.") :]: torch.from_numpy(v.copy()) for k, v in expected.items() if k.startswith("base.")})
    model = peft.PeftModel.from_pretrained(base, str(tmp_path / merge)).eval()
    with torch.no_grad():
        out = model(torch.from_numpy(expected["input"].copy())).numpy()
    reference = f"output.{merge}_exact" if spec["combination"] == "svd" else f"output.{merge}"
    np.testing.assert_allclose(out, expected[reference], atol=1e-5)
    for site in merged.sites:
        layer = model.base_model.model.get_submodule(site)
        delta = layer.get_delta_weight("default").detach().numpy()
        np.testing.assert_allclose(delta, merged.get_delta_weight(site), rtol=1e-5, atol=1e-6)
