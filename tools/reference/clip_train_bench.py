#!/usr/bin/env python3
"""PyTorch + peft baseline for `cargo bench -p semla-train --bench clip_lora_step`.

One LoRA training step on CLIP ViT-B/16's vision tower (transformers' CLIPModel,
standard config with 16 px patches, random weights, 224 px): peft LoRA r=8,
alpha 16 on q_proj, v_proj, fc1, fc2 of every vision encoder layer; loss =
cross-entropy of 100 x cosine similarity between the image features and fixed
random class embeddings; backward; torch.optim.AdamW (lr 1e-3, PyTorch's
defaults). Prints one JSON line: {"median_s", "min_s", "steps", "threads", "batch",
"trainable"}.
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import CLIPConfig, CLIPModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--classes", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(vision_config=dict(patch_size=16)))
    targets = r".*vision_model\.encoder\.layers\.\d+\.(self_attn\.(q_proj|v_proj)|mlp\.(fc1|fc2))"
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    pixels = torch.randn(args.batch, 3, 224, 224)
    classes = F.normalize(torch.randn(args.classes, model.config.projection_dim), dim=-1)
    labels = torch.arange(args.batch) % args.classes
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        features = F.normalize(model.get_image_features(pixel_values=pixels), dim=-1)
        loss = F.cross_entropy(100.0 * features @ classes.T, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(dt)
    times.sort()
    print(json.dumps({"median_s": times[len(times) // 2], "min_s": times[0], "steps": args.steps,
                      "threads": args.threads, "batch": args.batch,
                      "trainable": sum(p.numel() for p in params)}))


if __name__ == "__main__":
    main()
