#!/usr/bin/env python3
"""PyTorch baseline for `cargo bench -p semla-models --bench sam`: `SamPredictor.set_image`.

The official predictor (`segment_anything` from PyPI for SAM ViT-B; the ChaoningZhang/MobileSAM
sources, given by --mobile-sam, for MobileSAM's TinyViT `vit_t`) at the released size with
PyTorch's default initialisation, on --threads CPU threads.

--write DIR: builds the model, saves its state dict as DIR/<variant>.safetensors (without
`num_batches_tracked`) and a deterministic 640x480 RGB image as DIR/image.png, and prints
{"checkpoint": ..., "image": ...}, so that the bench loads the very same weights.
--checkpoint FILE --image FILE: loads them (eval mode after loading, as MobileSAM needs), times
`set_image` (resize, normalisation, padding, the image encoder) and prints one JSON line
{"median_s": ..., "min_s": ..., "iters": ..., "threads": ...}.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file


def build(variant, mobile_sam):
    if variant == "vit_t":
        if not mobile_sam:
            sys.exit("vit_t needs --mobile-sam (a ChaoningZhang/MobileSAM source tree)")
        sys.path.insert(0, os.path.abspath(mobile_sam))
        import mobile_sam as package

        return package.build_sam_vit_t(), package.SamPredictor
    import segment_anything as package

    return package.sam_model_registry[variant](), package.SamPredictor


def make_image(h=480, w=640):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([60 + 150 * x / w, 40 + 170 * y / h, 128 + 100 * np.sin((x - y) / 23.0)], axis=-1)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=["vit_t", "vit_b", "vit_l", "vit_h"], default="vit_t")
    ap.add_argument("--mobile-sam")
    ap.add_argument("--write")
    ap.add_argument("--checkpoint")
    ap.add_argument("--image")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sam, predictor_class = build(args.variant, args.mobile_sam)
    if args.write:
        os.makedirs(args.write, exist_ok=True)
        state = {k: v.contiguous() for k, v in sam.state_dict().items() if not k.endswith("num_batches_tracked")}
        checkpoint = os.path.join(args.write, f"{args.variant}.safetensors")
        save_file(state, checkpoint)
        image = os.path.join(args.write, "image.png")
        Image.fromarray(make_image()).save(image)
        print(json.dumps({"checkpoint": checkpoint, "image": image}))
        return
    sam.load_state_dict(load_file(args.checkpoint), strict=False)
    sam.eval()
    predictor = predictor_class(sam)
    image = np.array(Image.open(args.image).convert("RGB"))
    times = []
    with torch.inference_mode():
        for i in range(args.warmup + args.iters):
            t0 = time.perf_counter()
            predictor.set_image(image)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
    times.sort()
    print(json.dumps({"median_s": times[len(times) // 2], "min_s": times[0], "iters": args.iters,
                      "threads": args.threads}))


if __name__ == "__main__":
    main()
