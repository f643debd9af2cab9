#!/usr/bin/env python3
"""PyTorch + peft reference timings of CAT-Seg for `semla bench speed --catseg`.

Runs the OFFICIAL CAT-Seg model (SemLA's `catseg/` with detectron2, built from the official
`configs/vitb_384.yaml` or `vitl_336.yaml` with SemLA's inference overrides POOLING_SIZES [1, 1]
and TEST.SLIDING_WINDOW True) at its real size with random weights, on --threads CPU threads,
batch 1, the 19 Cityscapes classes (`datasets/cs19.json`), a random 1024x2048 uint8 image with a
512x1024 record (what `semla bench speed` times):

- plain: `model([{"image", "height", "width"}])` in eval mode (the official sliding window);
- semla: the query embedded by a separate transformers CLIPModel ViT-L/14 at 224 px (the official
  embedder; random weights, an already preprocessed input), retrieval (Euclidean distances to
  5 prototypes, 1/d, top-3, softmax at T=0.05), then peft's add_weighted_adapter(cat) of the
  top 3 of 5 rank-8 adapters over every official LoRA module of this model (random A and B),
  set_adapter, the forward, delete_adapter: the official per-image path.

The official predictor caches its class text embeddings after the first forward (eval mode), so
neither path here re-encodes the class names per image; semla's `semla` path does (under each
image's mixture) unless `--text-cache first-image`.

The only shim: `cat_seg.third_party.clip.load`, which would download OpenAI weights, is replaced
while `build_model(cfg)` runs by the official `model_vpt.CLIP` class constructed with the real
geometry of the checkpoint (what `clip.build_model` reads from its state dict), in float32 as
`clip.load` returns it on a CPU. Nothing of the model's maths is touched.

Usage:
  python3 tools/reference/catseg_speed.py --semla SEMLA_SRC --detectron2 D2_SRC [--size b|l]
      [--threads 2] [--runs 3] [--warmup 1]
Prints JSON: {"timings": [{"model", "path", "median_s", "min_s", "runs", "vs_plain"}], "threads",
"sites", "peak_rss_bytes", "load_average_start", "load_average_end", "versions"}.
"""

import argparse
import json
import os
import resource
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# catseg_reference re-executes the interpreter unless this is set (its fixtures need it; these
# timings do not).
os.environ["PYTHONHASHSEED"] = "0"
import catseg_reference as ref  # noqa: E402  (import_official, make_cfg)
from semla_speed import load_average, retrieve, timed  # noqa: E402  (the CLIP script's helpers)

import numpy as np  # noqa: E402
import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import CLIPConfig, CLIPModel  # noqa: E402

# The CLIP geometry of the released checkpoints, as OpenAI's build_model reads it.
GEOMETRY = {
    "b": dict(yaml="vitb_384.yaml", embed_dim=512, image_resolution=224, vision_layers=12,
              vision_width=768, vision_patch_size=16, transformer_width=512,
              transformer_layers=12),
    "l": dict(yaml="vitl_336.yaml", embed_dim=768, image_resolution=336, vision_layers=24,
              vision_width=1024, vision_patch_size=14, transformer_width=768,
              transformer_layers=12),
}
IMAGE_H, IMAGE_W = 1024, 2048
RECORD_H, RECORD_W = 512, 1024


def build_real(off, cfg, g):
    clip, model_vpt = off["clip"], off["model_vpt"]

    def real_geometry_load(name, device="cpu", jit=True, prompt_depth=0, prompt_length=0):
        model = model_vpt.CLIP(
            g["embed_dim"], g["image_resolution"], g["vision_layers"], g["vision_width"],
            g["vision_patch_size"], 77, 49408, g["transformer_width"],
            g["transformer_width"] // 64, g["transformer_layers"],
            prompt_depth=prompt_depth, prompt_length=prompt_length)
        return model.to(device).float().eval(), None

    real_load = clip.load
    clip.load = real_geometry_load
    try:
        model = off["build_model"](cfg)
    finally:
        clip.load = real_load
    return model.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--semla", required=True, help="extracted rezaqorbani/SemLA tree")
    ap.add_argument("--detectron2", required=True, help="extracted facebookresearch/detectron2 tree")
    ap.add_argument("--size", choices=["b", "l"], default="b")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--adapters", type=int, default=5)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_start = load_average()

    g = GEOMETRY[args.size]
    catseg_dir = os.path.join(os.path.abspath(args.semla), "catseg")
    off = ref.import_official(args.semla, args.detectron2)
    cfg = ref.make_cfg(off, os.path.join(catseg_dir, "configs", g["yaml"]),
                       os.path.join(catseg_dir, "datasets", "cs19.json"))
    cfg.defrost()
    cfg.MODEL.SEM_SEG_HEAD.POOLING_SIZES = [1, 1]  # SemLA's get_domain_args
    cfg.TEST.SLIDING_WINDOW = True
    cfg.freeze()
    plain = build_real(off, cfg, g)
    adapted = build_real(off, cfg, g)
    adapted.load_state_dict(plain.state_dict())

    with open(os.path.join(ref.DEFAULT_OUT, "target_modules_214.json")) as f:
        official = json.load(f)
    official = official["target_modules"] if isinstance(official, dict) else official
    modules = dict(adapted.named_modules())
    targets = [n for n in official if n in modules]
    lora = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=targets,
                      init_lora_weights=False)  # random A and B: a non-trivial update
    names = [f"domain{i}" for i in range(args.adapters)]
    pm = get_peft_model(adapted, lora, adapter_name=names[0])
    for name in names[1:]:
        pm.add_adapter(name, lora)
    pm.eval()

    embedder = CLIPModel(CLIPConfig(
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                           num_attention_heads=16, patch_size=14),
        text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12),
        projection_dim=768)).eval()
    rng = np.random.default_rng(1)
    prototypes = {n: rng.standard_normal(768).astype(np.float32) for n in names}
    query_px = torch.randn(1, 3, 224, 224)
    image = torch.randint(0, 256, (3, IMAGE_H, IMAGE_W), dtype=torch.uint8)
    batch = [{"image": image, "height": RECORD_H, "width": RECORD_W}]

    def semla():
        query = embedder.get_image_features(pixel_values=query_px)[0].numpy()
        chosen, weights = retrieve(query, prototypes, top_k=args.top_k)
        pm.add_weighted_adapter(chosen, weights, adapter_name="semla", combination_type="cat")
        pm.set_adapter("semla")
        out = pm(batch)
        pm.set_adapter(names[0])
        pm.delete_adapter("semla")
        return out

    label = f"catseg-{args.size}-{IMAGE_H}x{IMAGE_W}"
    timings = []
    with torch.no_grad():
        for path, fn in [("plain", lambda: plain(batch)), ("semla", semla)]:
            median, fastest = timed(args.runs, args.warmup, fn)
            timings.append({"model": label, "path": path, "median_s": median, "min_s": fastest,
                            "runs": args.runs, "load_average": load_average()})
            print(f"[catseg_speed] {label} {path}: median {median:.2f} s", file=sys.stderr)
    for t in timings:
        t["vs_plain"] = t["median_s"] / timings[0]["median_s"]
    result = {
        "timings": timings,
        "threads": args.threads,
        "sites": len(targets),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_rss_note": "two CAT-Seg models (plain and peft-wrapped) and the CLIP-L embedder",
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
