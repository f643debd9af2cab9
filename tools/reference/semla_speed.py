#!/usr/bin/env python3
"""PyTorch + peft reference timings for `semla bench speed`.

What the official SemLA code does per image, on CLIP ViT-B/16 at 224 px (transformers'
CLIPModel, standard config, random weights), batch 1, on --threads CPU threads, with
5 rank-8 LoRA adapters (peft) on q_proj, v_proj, fc1, fc2 of every vision layer:

- plain: the base model's image features (a separate model without peft wrappers);
- semla: query embedding (a forward of the plain model), retrieval (Euclidean
  distances to 5 prototypes, 1/d, top-3, softmax at T=0.05, numpy), then
  add_weighted_adapter(combination_type="cat"), set_adapter, forward, delete_adapter;
- semla-given-embedding: the same without the embedding forward;
- merge: add_weighted_adapter(cat), set_adapter, merge_adapter, forward,
  unmerge_adapter, delete_adapter (merging the fused adapter into the weights).

Prints JSON: {"timings": [{"model", "path", "median_s", "min_s", "runs"}], "threads",
"load_average_start", "load_average_end", "versions"}. `semla bench speed --reference`
and `semla bench chart --reference` chart it next to ours.
"""

import argparse
import json
import os
import time

import numpy as np
import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import CLIPConfig, CLIPModel

MODEL = "clip-vit-b16-224"


def load_average():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def timed(runs, warmup, fn):
    times = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
    times.sort()
    return times[len(times) // 2], times[0]


def retrieve(query, prototypes, top_k=3, temperature=0.05):
    names = list(prototypes)
    d = np.array([np.linalg.norm(query - prototypes[n]) for n in names])
    s = 1.0 / d
    order = np.argsort(-s)[:top_k]
    z = s[order] / temperature
    w = np.exp(z - z.max())
    w /= w.sum()
    return [names[i] for i in order], [float(x) for x in w]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--adapters", type=int, default=5)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--out", help="also write the JSON to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_start = load_average()

    cfg = CLIPConfig(vision_config=dict(patch_size=16))
    plain = CLIPModel(cfg).eval()
    adapted = CLIPModel(cfg).eval()
    adapted.load_state_dict(plain.state_dict())
    lora = LoraConfig(
        r=args.rank,
        lora_alpha=2 * args.rank,
        target_modules=r".*vision_model\.encoder\.layers\.\d+\.(self_attn\.(q_proj|v_proj)|mlp\.(fc1|fc2))",
        init_lora_weights=False,  # random A and B: a non-trivial update, as trained adapters
    )
    names = [f"domain{i}" for i in range(args.adapters)]
    model = get_peft_model(adapted, lora, adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, lora)
    model.eval()
    rng = np.random.default_rng(1)
    dim = cfg.projection_dim
    prototypes = {n: rng.standard_normal(dim).astype(np.float32) for n in names}
    px = torch.randn(1, 3, 224, 224)

    def fused_forward(query, merge):
        chosen, weights = retrieve(query, prototypes)
        model.add_weighted_adapter(chosen, weights, adapter_name="semla", combination_type="cat")
        model.set_adapter("semla")
        if merge:
            model.merge_adapter()
        model.base_model.model.get_image_features(pixel_values=px)
        if merge:
            model.unmerge_adapter()
        model.set_adapter(names[0])
        model.delete_adapter("semla")

    def semla():
        query = plain.get_image_features(pixel_values=px)[0].numpy()
        fused_forward(query, merge=False)

    given = prototypes[names[0]] + 0.1 * rng.standard_normal(dim).astype(np.float32)

    timings = []
    with torch.inference_mode():
        paths = [
            ("plain", lambda: plain.get_image_features(pixel_values=px)),
            ("semla", semla),
            ("semla-given-embedding", lambda: fused_forward(given, merge=False)),
            ("merge", lambda: fused_forward(given, merge=True)),
        ]
        for path, fn in paths:
            median, fastest = timed(args.runs, args.warmup, fn)
            timings.append({"model": MODEL, "path": path, "median_s": median, "min_s": fastest,
                            "runs": args.runs, "load_average": load_average()})
    plain_median = timings[0]["median_s"]
    for t in timings:
        t["vs_plain"] = t["median_s"] / plain_median
    result = {
        "timings": timings,
        "threads": args.threads,
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__},
    }
    text = json.dumps(result, indent=2)
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.out)
    print(text)


if __name__ == "__main__":
    main()
