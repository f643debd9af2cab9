#!/usr/bin/env python3
"""Reference fixtures for semla-models' SAM (crates/semla-models/tests/fixtures/sam/).

Runs the OFFICIAL segment-anything code (the `segment_anything` package from PyPI, which is
facebookresearch/segment-anything: `build_sam._build_sam`, `SamPredictor`, `ResizeLongestSide`)
on a tiny SAM and writes small fixtures. Nothing is shimmed: `_build_sam` takes the four encoder
arguments the released builders pass (embed dim, depth, heads, global-attention blocks); the rest
of the model (1024 px input, 16 px patches, 14 px windows, relative positions, the 256-dim neck,
prompt encoder and two-way mask decoder) is the released architecture at its real size.

Weights follow the deterministic protocol of weight_protocol.py under their state-dict keys:
biases scale 0.05; LayerNorm / LayerNorm2d weights 1 + 0.1 u; Linear / Conv2d weights
GAIN / sqrt(fan_in) (fan_in = prod(shape[1:])); ConvTranspose2d weights GAIN / sqrt(shape[0]);
Embedding rows, `pos_embed`, `rel_pos_h/w` 0.2 (embeddings 0.5); the prompt encoder's Gaussian
matrix (a persistent buffer, saved in released checkpoints) scale 1.

Files:
- keys_sam_tiny.json: every state-dict tensor, in order, with shape/scale/offset; encoder.json:
  the four `_build_sam` arguments (semla's `--encoder-config`).
- image.png (83x57) and portrait.png (45x70): deterministic RGB inputs.
- outputs_sam_tiny.safetensors:
  - `<image>.resized_sub`: the resized uint8 image (ResizeLongestSide.apply_image, i.e. Pillow
    bilinear) sampled every 16 pixels, float32 [h/16, w/16, 3];
  - `<image>.embedding_sub`: the image embedding [256, 64, 64] sampled every 8 pixels, and
    `<image>.embedding_mean` per channel [256];
  - per prompt case `<case>.logits` [C, H, W] (return_logits=True, at the image's size),
    `<case>.iou` [C], `<case>.low_res_sub` (low-resolution logits every 4 pixels [C, 64, 64]).
    Cases are listed in summary.json with their prompts; the mask-input case uses the protocol's
    values for the key "mask_input" (scale 8) as its 1x256x256 mask, so it is not stored.
  - `batch.logits` [2, C, H, W] and `batch.iou` [2, C]: one `predict_torch` call on two prompts.
- summary.json: the cases, statistics, versions.
- With --pth DIR: also `sam_tiny.pth` (torch.save of the state dict, as released checkpoints are)
  into DIR, for trying the CLI on a real `.pth`; it is 16 MB and not committed.

Usage: PYTHONHASHSEED=0 python3 tools/reference/sam_reference.py [--out DIR] [--pth DIR]
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import save_file

import segment_anything
from segment_anything.build_sam import _build_sam
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.predictor import SamPredictor
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from weight_protocol import GAIN, f32, protocol_values, protocol_values_scalar, write_keys_json  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(ROOT, "crates", "semla-models", "tests", "fixtures", "sam")

ENCODER = {
    "encoder_embed_dim": 32,
    "encoder_depth": 3,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [1],
}
MASK_INPUT_KEY = "mask_input"
MASK_INPUT_SCALE = 8.0

# (name, image, point coords, point labels, box, mask input?, multimask)
CASES = [
    ("two_points", "image", [[20.0, 15.0], [60.5, 40.0]], [1, 0], None, False, True),
    ("point_box", "image", [[41.0, 30.0]], [1], [10.0, 8.0, 70.0, 50.0], False, False),
    ("box", "image", None, None, [5.5, 4.0, 44.0, 33.0], False, True),
    ("one_point", "image", [[70.0, 9.0]], [1], None, False, False),
    ("points_mask", "image", [[30.0, 20.0], [50.0, 45.0], [12.0, 50.0]], [1, 1, 0], None, True, False),
    ("portrait_point", "portrait", [[22.0, 35.0]], [1], None, False, True),
]
# Two prompts through one predict_torch call (same layout: two points and a box each).
BATCH = [
    ([[20.0, 15.0], [60.0, 40.0]], [1, 0], [10.0, 8.0, 70.0, 50.0]),
    ([[5.0, 50.0], [33.0, 22.0]], [1, 1], [0.0, 20.0, 40.0, 56.0]),
]


def make_image(h, w, phase):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 60 + 120 * x / w + 25 * np.sin(y / 5.0 + phase)
    g = 40 + 150 * y / h + 20 * np.cos(x / 7.0)
    b = 100 + 70 * np.sin((x - y) / 9.0 + phase)
    img = np.stack([r, g, b], axis=-1)
    img[h // 4: h // 2, w // 5: w // 2] = [210, 50, 40]
    img[h // 2: h - 5, w // 2: w - 8] = [30, 170, 70]
    img += (8 * np.sin(x * 1.9 + y * 2.7))[..., None]
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def init_rule(name, shape, module):
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias":
        return f32(0.05), 0.0
    if isinstance(module, (nn.LayerNorm, LayerNorm2d)):
        return f32(0.1), 1.0
    if isinstance(module, nn.Embedding):
        return f32(0.5), 0.0
    if leaf in ("pos_embed", "rel_pos_h", "rel_pos_w"):
        return f32(0.2), 0.0
    if leaf == "positional_encoding_gaussian_matrix":
        return f32(1.0), 0.0
    if isinstance(module, nn.ConvTranspose2d):
        return f32(GAIN / math.sqrt(shape[0])), 0.0
    assert isinstance(module, (nn.Linear, nn.Conv2d)), (name, type(module))
    return f32(GAIN / math.sqrt(int(np.prod(shape[1:])))), 0.0


def apply_protocol(model):
    modules = dict(model.named_modules())
    entries = []
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            shape = list(t.shape)
            scale, offset = init_rule(name, shape, modules[name.rsplit(".", 1)[0]])
            values = protocol_values(name, int(np.prod(shape)), scale, offset)
            t.copy_(torch.from_numpy(values.reshape(shape)))
            entries.append({"name": name, "shape": shape, "dtype": "f32", "scale": scale, "offset": offset})
    return entries


def stats(a):
    return {"shape": list(a.shape), "mean": float(a.mean()), "std": float(a.std()),
            "min": float(a.min()), "max": float(a.max())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--pth", help="also write sam_tiny.pth into this folder (not committed)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(2)

    for name, n, s, o in [("image_encoder.neck.0.weight", 257, 0.3, 0.0), (MASK_INPUT_KEY, 100, 8.0, 0.0)]:
        assert np.array_equal(protocol_values(name, n, s, o), protocol_values_scalar(name, n, s, o)), name

    sam = _build_sam(checkpoint=None, **ENCODER)
    entries = apply_protocol(sam)
    write_keys_json(os.path.join(args.out, "keys_sam_tiny.json"),
                    {"model": "SAM, _build_sam with encoder.json's arguments"}, entries)
    with open(os.path.join(args.out, "encoder.json"), "w") as f:
        json.dump(ENCODER, f, indent=2)
        f.write("\n")
    if args.pth:
        os.makedirs(args.pth, exist_ok=True)
        torch.save(sam.state_dict(), os.path.join(args.pth, "sam_tiny.pth"))

    images = {"image": make_image(57, 83, 0.0), "portrait": make_image(70, 45, 1.3)}
    for key, img in images.items():
        Image.fromarray(img).save(os.path.join(args.out, f"{key}.png"))

    predictor = SamPredictor(sam)
    out = {}
    summary = {"encoder": ENCODER, "cases": [], "images": {}, "versions": {
        "torch": torch.__version__, "numpy": np.__version__,
        "segment_anything": getattr(segment_anything, "__version__", "1.0 (PyPI)"),
        "Pillow": Image.__version__}}
    mask_input = protocol_values(MASK_INPUT_KEY, 256 * 256, MASK_INPUT_SCALE, 0.0).reshape(1, 256, 256)

    def set_image(key):
        predictor.set_image(images[key])
        resized = predictor.transform.apply_image(images[key]).astype(np.float32)
        out[f"{key}.resized_sub"] = np.ascontiguousarray(resized[::16, ::16])
        emb = predictor.get_image_embedding()[0].numpy()
        out[f"{key}.embedding_sub"] = np.ascontiguousarray(emb[:, ::8, ::8])
        out[f"{key}.embedding_mean"] = emb.mean(axis=(1, 2)).astype(np.float32)
        summary["images"][key] = {"size": list(images[key].shape[:2]),
                                  "input_size": list(predictor.input_size), "embedding": stats(emb)}

    current = None
    for name, key, coords, labels, box, with_mask, multimask in CASES:
        if key != current:
            set_image(key)
            current = key
        masks, iou, low_res = predictor.predict(
            point_coords=None if coords is None else np.array(coords),
            point_labels=None if labels is None else np.array(labels),
            box=None if box is None else np.array(box),
            mask_input=mask_input if with_mask else None,
            multimask_output=multimask,
            return_logits=True,
        )
        out[f"{name}.logits"] = masks.astype(np.float32)
        out[f"{name}.iou"] = iou.astype(np.float32)
        out[f"{name}.low_res_sub"] = np.ascontiguousarray(low_res[:, ::4, ::4]).astype(np.float32)
        summary["cases"].append({"name": name, "image": key, "points": coords, "labels": labels,
                                 "box": box, "mask_input": with_mask, "multimask": multimask,
                                 "logits": stats(masks), "iou": iou.tolist(),
                                 "foreground_fraction": float((masks > 0).mean())})

    set_image("image") if current != "image" else None
    tr = predictor.transform
    coords = torch.as_tensor(np.stack([tr.apply_coords(np.array(c), predictor.original_size) for c, _, _ in BATCH]),
                             dtype=torch.float)
    labels = torch.as_tensor(np.array([lab for _, lab, _ in BATCH]), dtype=torch.int)
    boxes = torch.as_tensor(np.stack([tr.apply_boxes(np.array(b), predictor.original_size)[0] for _, _, b in BATCH]),
                            dtype=torch.float)
    masks, iou, _ = predictor.predict_torch(coords, labels, boxes, None, True, return_logits=True)
    out["batch.logits"] = masks.numpy().astype(np.float32)
    out["batch.iou"] = iou.numpy().astype(np.float32)
    summary["batch"] = [{"points": c, "labels": lab, "box": b} for c, lab, b in BATCH]

    save_file(out, os.path.join(args.out, "outputs_sam_tiny.safetensors"))
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    for case in summary["cases"]:
        print(case["name"], case["iou"], f"fg {case['foreground_fraction']:.3f}", case["logits"])


if __name__ == "__main__":
    main()
