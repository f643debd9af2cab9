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

With --mobile-sam REPO (a source tree of ChaoningZhang/MobileSAM, which is not on PyPI; it needs
`timm`): the same for MobileSAM, whose image encoder is the official `TinyViT` of
`mobile_sam/modeling/tiny_vit_sam.py` (built with the tiny `TINY_VIT` arguments below, in
`mobile_sam.modeling.Sam` with the prompt encoder and mask decoder `build_sam_vit_t` uses, run by
`mobile_sam.SamPredictor`), into `tests/fixtures/mobile_sam/` as `keys_mobile_sam_tiny.json`,
`encoder.json` (TinyViT's arguments), `outputs_mobile_sam_tiny.safetensors` and `summary.json`, with
the cases of `MOBILE_CASES`. TinyViT's BatchNorm layers follow the protocol too (weight 1 + 0.1 u,
bias 0.05 u, running mean 0.1 u, running variance 1 + 0.5 u; `num_batches_tracked` stays 0 and is not
listed) and its `attention_biases` scale 0.5; the model is put in eval mode after the weights are
set, so TinyViT's cached `ab` buffer holds them. With --pth, also `mobile_sam_tiny.pth` and
`mobile_sam_vit_t.pth` (`build_sam_vit_t`'s real size under the protocol, 40 MB) plus the
official predictor's answer for the `two_points` case of `image.png` on the latter as
`mobile_sam_vit_t_two_points.npz` (`logits`, `iou`), for checking `semla sam predict` on it.

Usage: PYTHONHASHSEED=0 python3 tools/reference/sam_reference.py [--out DIR] [--pth DIR]
       PYTHONHASHSEED=0 python3 tools/reference/sam_reference.py --mobile-sam REPO [--out DIR] [--pth DIR]
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
FIXTURES = os.path.join(ROOT, "crates", "semla-models", "tests", "fixtures")

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
# MobileSAM: the decoder is SAM's, so fewer cases suffice to check the encoder's effect on it.
MOBILE_CASES = ["two_points", "box", "portrait_point"]
# TinyViT's constructor arguments (`build_sam_vit_t` passes embed_dims [64, 128, 160, 320], depths
# [2, 2, 6, 2], num_heads [2, 4, 5, 10], window_sizes [7, 7, 14, 7], ratios 4 and local_conv_size 3).
# The last width stays 320: the official PatchMerging keeps stride 1 only for widths 320, 448 and 576,
# and forward_features assumes a 64x64 grid. Windows of 7 and 14 pad the 128 and 64 grids.
TINY_VIT = {
    "embed_dims": [16, 24, 32, 320],
    "depths": [1, 2, 1, 1],
    "num_heads": [1, 2, 2, 5],
    "window_sizes": [7, 7, 14, 7],
    "mlp_ratio": 2.0,
    "mbconv_expand_ratio": 2.0,
    "local_conv_size": 3,
}
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
    if isinstance(module, nn.BatchNorm2d):
        return {"weight": (f32(0.1), 1.0), "bias": (f32(0.05), 0.0), "running_mean": (f32(0.1), 0.0),
                "running_var": (f32(0.5), 1.0)}[leaf]
    if leaf == "bias":
        return f32(0.05), 0.0
    if isinstance(module, nn.LayerNorm) or type(module).__name__ == "LayerNorm2d":
        return f32(0.1), 1.0
    if leaf == "attention_biases":
        return f32(0.5), 0.0
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
            if name.endswith("num_batches_tracked"):
                continue
            shape = list(t.shape)
            scale, offset = init_rule(name, shape, modules[name.rsplit(".", 1)[0]])
            values = protocol_values(name, int(np.prod(shape)), scale, offset)
            t.copy_(torch.from_numpy(values.reshape(shape)))
            entries.append({"name": name, "shape": shape, "dtype": "f32", "scale": scale, "offset": offset})
    return entries


def stats(a):
    return {"shape": list(a.shape), "mean": float(a.mean()), "std": float(a.std()),
            "min": float(a.min()), "max": float(a.max())}


def build_mobile_sam(repo, encoder):
    """MobileSAM as `build_sam_vit_t` assembles it, with the given TinyViT arguments."""
    sys.path.insert(0, os.path.abspath(repo))
    import mobile_sam
    from mobile_sam.modeling import MaskDecoder, PromptEncoder, Sam, TinyViT, TwoWayTransformer

    sam = Sam(
        image_encoder=TinyViT(img_size=1024, in_chans=3, num_classes=1000, drop_rate=0.0,
                              drop_path_rate=0.0, use_checkpoint=False, layer_lr_decay=0.8, **encoder),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(64, 64),
                                     input_image_size=(1024, 1024), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048,
                                                               num_heads=8),
                                 transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam, mobile_sam


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", help="fixture folder (default: tests/fixtures/sam or mobile_sam)")
    ap.add_argument("--pth", help="also write the model as .pth into this folder (not committed)")
    ap.add_argument("--mobile-sam", help="a ChaoningZhang/MobileSAM source tree: write MobileSAM's fixtures")
    args = ap.parse_args()
    mobile = args.mobile_sam is not None
    tag = "mobile_sam_tiny" if mobile else "sam_tiny"
    out_dir = args.out or os.path.join(FIXTURES, "mobile_sam" if mobile else "sam")
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(2)

    for name, n, s, o in [("image_encoder.neck.0.weight", 257, 0.3, 0.0), (MASK_INPUT_KEY, 100, 8.0, 0.0)]:
        assert np.array_equal(protocol_values(name, n, s, o), protocol_values_scalar(name, n, s, o)), name

    if mobile:
        encoder = TINY_VIT
        sam, mobile_sam = build_mobile_sam(args.mobile_sam, encoder)
        predictor_class = mobile_sam.SamPredictor
        header = {"model": "MobileSAM: TinyViT with encoder.json's arguments, build_sam_vit_t's decoder"}
        cases = [c for c in CASES if c[0] in MOBILE_CASES]
        versions = {"mobile_sam": "ChaoningZhang/MobileSAM source tree", "timm": __import__("timm").__version__}
    else:
        encoder = ENCODER
        sam = _build_sam(checkpoint=None, **ENCODER)
        predictor_class = SamPredictor
        header = {"model": "SAM, _build_sam with encoder.json's arguments"}
        cases = CASES
        versions = {"segment_anything": getattr(segment_anything, "__version__", "1.0 (PyPI)")}
    entries = apply_protocol(sam)
    # TinyViT caches its attention biases (`ab`) when switched to eval mode: after the weights.
    sam.eval()
    write_keys_json(os.path.join(out_dir, f"keys_{tag}.json"), header, entries)
    with open(os.path.join(out_dir, "encoder.json"), "w") as f:
        json.dump(encoder, f, indent=2)
        f.write("\n")
    if args.pth:
        os.makedirs(args.pth, exist_ok=True)
        torch.save(sam.state_dict(), os.path.join(args.pth, f"{tag}.pth"))

    images = {"image": make_image(57, 83, 0.0), "portrait": make_image(70, 45, 1.3)}
    for key, img in images.items():
        Image.fromarray(img).save(os.path.join(out_dir, f"{key}.png"))

    predictor = predictor_class(sam)
    out = {}
    summary = {"encoder": encoder, "cases": [], "images": {}, "versions": {
        "torch": torch.__version__, "numpy": np.__version__, "Pillow": Image.__version__, **versions}}
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
    for name, key, coords, labels, box, with_mask, multimask in cases:
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

    if not mobile:
        set_image("image") if current != "image" else None
        tr = predictor.transform
        coords = torch.as_tensor(np.stack([tr.apply_coords(np.array(c), predictor.original_size)
                                           for c, _, _ in BATCH]), dtype=torch.float)
        labels = torch.as_tensor(np.array([lab for _, lab, _ in BATCH]), dtype=torch.int)
        boxes = torch.as_tensor(np.stack([tr.apply_boxes(np.array(b), predictor.original_size)[0]
                                          for _, _, b in BATCH]), dtype=torch.float)
        masks, iou, _ = predictor.predict_torch(coords, labels, boxes, None, True, return_logits=True)
        out["batch.logits"] = masks.numpy().astype(np.float32)
        out["batch.iou"] = iou.numpy().astype(np.float32)
        summary["batch"] = [{"points": c, "labels": lab, "box": b} for c, lab, b in BATCH]

    save_file(out, os.path.join(out_dir, f"outputs_{tag}.safetensors"))
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    for case in summary["cases"]:
        print(case["name"], case["iou"], f"fg {case['foreground_fraction']:.3f}", case["logits"])

    if mobile and args.pth:
        # The released size under the protocol, and the official answer to one prompt on it.
        full = mobile_sam.build_sam_vit_t()
        apply_protocol(full)
        full.eval()
        torch.save(full.state_dict(), os.path.join(args.pth, "mobile_sam_vit_t.pth"))
        predictor = mobile_sam.SamPredictor(full)
        name, key, coords, labels, _, _, multimask = CASES[0]
        predictor.set_image(images[key])
        masks, iou, _ = predictor.predict(point_coords=np.array(coords), point_labels=np.array(labels),
                                          multimask_output=multimask, return_logits=True)
        np.savez(os.path.join(args.pth, f"mobile_sam_vit_t_{name}.npz"), logits=masks.astype(np.float32),
                 iou=iou.astype(np.float32))
        print("vit_t", name, iou.tolist())

if __name__ == "__main__":
    main()
