#!/usr/bin/env python3
"""PyTorch eager baseline for `cargo bench -p semla-models --bench clip`.

CLIP ViT-B/16 (transformers' CLIPModel, standard config, random weights), image
features at 224 px, batch 1, on --threads CPU threads. Prints one JSON line:
{"median_s": ..., "min_s": ..., "process_cpu_s": ..., "iters": ..., "threads": ...}.
"""

import argparse
import json
import time

import torch
from transformers import CLIPConfig, CLIPModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--model", choices=["b16", "l14-336"], default="b16",
                    help="ViT-B/16 at 224 px, or ViT-L/14 at 336 px (CAT-Seg L's CLIP)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model == "b16":
        cfg, size = CLIPConfig(vision_config=dict(patch_size=16)), 224
    else:
        vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                      num_attention_heads=16, patch_size=14, image_size=336)
        text = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12)
        cfg, size = CLIPConfig(vision_config=vision, text_config=text, projection_dim=768), 336
    model = CLIPModel(cfg).eval()
    px = torch.randn(args.batch, 3, size, size)
    times, cpu = [], []
    with torch.inference_mode():
        for i in range(args.warmup + args.iters):
            t0, c0 = time.perf_counter(), time.process_time()
            model.get_image_features(pixel_values=px)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if i >= args.warmup:
                times.append(dt)
                cpu.append(dc)
    times.sort()
    cpu.sort()
    # process_cpu_s: CPU time of all the process's threads; at --threads 1
    # it does not grow when other processes load the machine, unlike wall time.
    print(json.dumps({"median_s": times[len(times) // 2], "min_s": times[0],
                      "process_cpu_s": cpu[len(cpu) // 2], "iters": args.iters, "threads": args.threads,
                      "batch": args.batch}))


if __name__ == "__main__":
    main()
