#!/usr/bin/env python3
"""Reference fixtures for semla-models' CAT-Seg (crates/semla-models/tests/fixtures/catseg/).

Runs the OFFICIAL CAT-Seg code (SemLA's copy, `catseg/cat_seg/...`, imported from the extracted
SemLA source tree given on the command line, together with the pure-python parts of an extracted
detectron2 tree) on two tiny CAT-Seg models whose weights follow a deterministic protocol that the
Rust tests re-implement, and writes small fixtures:

- base.yaml, tiny_l.yaml, tiny_b.yaml, classes.json: the CAT-Seg configs (official form, `_BASE_`
  inheritance) and the class list (TEST/TRAIN_CLASS_JSON). base.yaml has three EXTRA keys under
  MODEL.SEM_SEG_HEAD that the official code does not know (CLIP_VISION_HEADS, CLIP_TEXT_HEADS,
  CLIP_GUIDANCE_LAYERS, 0-based block indices); they are registered on the cfg before merging.
  CLIP widths/layers/patch/context/vocab are given only by the tensor shapes (keys_*.json), as the
  official `clip.build_model` reads them from a state dict.
- keys_tiny_l.json, keys_tiny_b.json: every tensor a released checkpoint would contain (upstream
  layout: `attn.{q,k,v}_proj_weight` split, fused `attn.in_proj_bias`; without SemLA's alias keys
  `attn.{q,k,v}_proj.weight`, which are the same Parameters, and without buffers such as
  `swin_block.block_2.attn_mask`, which keep the values the official code computes), in state-dict
  order, with the `scale`/`offset` of the protocol below.
- keys_adapter_tiny_l.json + adapter_tiny_l/ (written by peft `save_pretrained`): a LoRA adapter
  (r=4, alpha=8) on a subset of the official target modules, tensors set by the same protocol under
  their full key names as stored in adapter_model.safetensors.
- image.png: the deterministic 200x150 RGB input (record height/width 150/200).
- outputs_tiny_l.safetensors, outputs_tiny_b.safetensors, outputs_tiny_l_adapter.safetensors:
  official outputs (see OUTPUTS below); summary.json: statistics, sanity checks, self-check values,
  versions and sha256 of the official source files that ran.
- train_labels.png + training_tiny_l_adapter.safetensors: one official TRAINING forward of the tiny
  L model under adapter_tiny_l (peft, trainable): the loss (CATSeg.forward in train mode, BCE with
  logits against one-hot targets) and the gradient of every LoRA factor (`grad.<saved key>`).
- target_modules_214.json: SemLA's 214 LoRA target module names (`MODEL.LORA.MODUELS` of
  catseg/cat_seg/config.py::add_lora_config), sorted.
- checkpoint_views.pth / checkpoint_views.safetensors: a detectron2-style checkpoint
  `{"model": OrderedDict, "iteration": 7}` with shared-storage views at different storage offsets,
  a transposed (non-contiguous) tensor, a float16 tensor, a 0-d scalar and a `module.`-prefixed
  key; the safetensors file holds the same tensors made contiguous (expected values).

Deterministic weight protocol (per tensor, values in C order):
  seed = FNV-1a 64 over the UTF-8 key name (basis 0xcbf29ce484222325, prime 0x100000001b3);
  SplitMix64 from state = seed: state += 0x9E3779B97F4A7C15; z = state;
  z = (z ^ z>>30) * 0xBF58476D1CE4E5B9; z = (z ^ z>>27) * 0x94D049BB133111EB; z ^= z>>31 (mod 2^64);
  u = f32(z >> 40) / f32(2^24) * 2 - 1 (f32); value = f32(offset) + f32(scale) * u (f32, a separate
  multiply and add, no fused multiply-add).
Scale/offset rule (written into keys_*.json; the Rust side never guesses): 1-D norm weights
(LayerNorm, GroupNorm) offset 1 scale 0.1; every bias (incl. in_proj_bias) offset 0 scale 0.05;
Linear/Conv2d weights and q/k/v_proj_weight scale GAIN/sqrt(fan_in) (GAIN = sqrt(3), i.e. variance
1/fan_in) with fan_in = prod(shape[1:]);
ConvTranspose2d weights (kernel == stride, no overlap) and `x @ W` matrices (visual.proj,
text_projection) fan_in = shape[0]; token_embedding 0.5; class_embedding 0.5; positional
embeddings 0.2; padding_tokens/padding_guidance 0.5; logit_scale offset 0 scale 0.05 (unused);
LoRA A GAIN/sqrt(in), LoRA B 0.5/sqrt(r). Every scale is rounded to float32 before use.

Plumbing shimmed (no model maths is re-implemented or altered; every forward below runs the
official modules' code: CATSeg.inference_sliding_window, CATSegHead, CATSegPredictor incl. its
get_text_embeds/cache and clip.tokenize, Aggregator, model_vpt CLIP incl. forward_dense and the
bicubic positional-embedding resize, detectron2 sem_seg_postprocess):
 1. `cat_seg.third_party.clip.load` (which downloads OpenAI weights) is replaced, only while
    `detectron2.modeling.build_model(cfg)` runs, by a function that constructs the official
    `model_vpt.CLIP` class directly with the tiny dimensions (fp32, eval mode) instead of
    `build_model(state_dict)`, whose head counts are hard-coded to width // 64.
 2. The official `CLIP.__init__` hard-codes the visual heads to width // 64 and `CATSeg.__init__`
    registers the guidance hooks on the hard-coded blocks [3, 7] (ViT-B/16) / [7, 15] (others),
    which do not exist in a 4-block model. So the shimmed load first builds the visual tower with
    16 placeholder blocks; right after build_model the visual `transformer` is replaced by a fresh
    official `model_vpt.Transformer(width, layers, CLIP_VISION_HEADS)` (dropping the placeholder
    blocks and their hooks), `CATSeg.layer_indexes` is set to CLIP_GUIDANCE_LAYERS and the
    official `CATSeg.reset_forward_hooks()` registers the hooks on those blocks.
 3. `CATSeg.upsample1/upsample2` are re-created as nn.ConvTranspose2d(visual width -> 256, k2 s2) /
    (visual width -> 128, k4 s4), exactly what `CATSeg.__init__` builds with its hard-coded
    `proj_dim` (1024 / 768) replaced by the tiny visual width.
 4. The three extra config keys are registered on the cfg (defaults 0 / 0 / []) before
    merge_from_file; TRAIN/TEST_CLASS_JSON are pointed at the absolute path of classes.json and
    MODEL.DEVICE is set to "cpu" at run time.
 5. `import cat_seg` is done with the working directory set to SEMLA_SRC/catseg, because its
    dataset registration opens './cat_seg/data/datasets/...' relative to the working directory.
detectron2's C extension `_C` is not built and not needed (detectron2 falls back to dummies).

Usage (PYTHONHASHSEED=0 makes peft's set-ordered `target_modules` reproducible; the script
re-executes itself with it when unset):
  PYTHONHASHSEED=0 python3 tools/reference/catseg_reference.py --semla SEMLA_SRC --detectron2 D2_SRC
SEMLA_SRC = an extracted rezaqorbani/SemLA tree (containing catseg/), D2_SRC = an extracted
facebookresearch/detectron2 tree (containing detectron2/). Needs torch, torchvision, numpy,
safetensors, peft, Pillow, fvcore, iopath, pycocotools, opencv-python-headless, einops, timm,
open_clip_torch (imported by the predictor), ftfy, regex, pyyaml.
"""

import argparse
import collections
import hashlib
import json
import math
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(ROOT, "crates", "semla-models", "tests", "fixtures", "catseg")

if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from weight_protocol import (  # noqa: E402
    GAIN, f32, fnv1a64, protocol_values, protocol_values_scalar, write_keys_json,
)

CLASSES = ["road", "car, automobile", "traffic light"]
IMAGE_H, IMAGE_W = 150, 200
SELF_CHECK_KEY = "sem_seg_head.predictor.transformer.conv1.weight"

# CLIP geometry of the tiny variants. It reaches the Rust side only through the tensor shapes
# in keys_*.json (the official clip.build_model reads exactly these from a state dict).
CLIP_GEOMETRY = {
    "tiny_l": dict(embed_dim=64, image_resolution=336, vision_layers=4, vision_width=128,
                   vision_patch_size=14, context_length=77, vocab_size=49408,
                   transformer_width=64, transformer_layers=2),
    "tiny_b": dict(embed_dim=64, image_resolution=224, vision_layers=4, vision_width=128,
                   vision_patch_size=16, context_length=77, vocab_size=49408,
                   transformer_width=64, transformer_layers=2),
}
PLACEHOLDER_VISION_LAYERS = 16  # > 15, so CATSeg.__init__'s hard-coded hooks find their blocks

BASE_YAML = """\
# Tiny CAT-Seg (random weights, deterministic protocol) in the form of CAT-Seg's configs/config.yaml.
# The last three SEM_SEG_HEAD keys are NOT official: semla's loader reads them for non-released
# sizes (the official code derives heads as width // 64 and hard-codes the guidance layers).
MODEL:
  META_ARCHITECTURE: "CATSeg"
  PIXEL_MEAN: [123.675, 116.280, 103.530]
  PIXEL_STD: [58.395, 57.120, 57.375]
  SEM_SEG_HEAD:
    NAME: "CATSegHead"
    IGNORE_VALUE: 255
    NUM_CLASSES: 3
    TRAIN_CLASS_JSON: "classes.json"
    TEST_CLASS_JSON: "classes.json"
    CLIP_PRETRAINED: "ViT-L/14@336px"
    PROMPT_DEPTH: 0
    PROMPT_LENGTH: 0
    TEXT_GUIDANCE_DIM: 64
    TEXT_GUIDANCE_PROJ_DIM: 32
    APPEARANCE_GUIDANCE_DIM: 64
    APPEARANCE_GUIDANCE_PROJ_DIM: 32
    DECODER_DIMS: [32, 16]
    DECODER_GUIDANCE_DIMS: [256, 128]
    DECODER_GUIDANCE_PROJ_DIMS: [32, 16]
    NUM_LAYERS: 2
    NUM_HEADS: 4
    HIDDEN_DIMS: 64
    POOLING_SIZES: [1, 1]
    FEATURE_RESOLUTION: [24, 24]
    WINDOW_SIZES: 12
    ATTENTION_TYPE: "linear"
    CLIP_FINETUNE: "attention"
    CLIP_VISION_HEADS: 4
    CLIP_TEXT_HEADS: 2
    CLIP_GUIDANCE_LAYERS: [1, 2]
  PROMPT_ENSEMBLE_TYPE: "single"
INPUT:
  MIN_SIZE_TEST: 640
  SIZE_DIVISIBILITY: 384
  FORMAT: "RGB"
  DATASET_MAPPER_NAME: "mask_former_semantic"
TEST:
  SLIDING_WINDOW: True
VERSION: 2
"""

VARIANT_YAML = {
    "tiny_l": '_BASE_: base.yaml\nMODEL:\n  SEM_SEG_HEAD:\n    CLIP_PRETRAINED: "ViT-L/14@336px"\n',
    "tiny_b": '_BASE_: base.yaml\nMODEL:\n  SEM_SEG_HEAD:\n    CLIP_PRETRAINED: "ViT-B/16"\n',
}

# LoRA sites (full dotted names as in SemLA's MODUELS), a subset valid for the tiny_l model.
LORA_R, LORA_ALPHA = 4, 8
LORA_TARGETS = [
    "sem_seg_head.predictor.clip_model.visual.transformer.resblocks.1.mlp.c_fc",
    "sem_seg_head.predictor.clip_model.visual.transformer.resblocks.3.mlp.c_fc",
    "sem_seg_head.predictor.clip_model.visual.transformer.resblocks.0.mlp.c_proj",
    "sem_seg_head.predictor.clip_model.visual.transformer.resblocks.3.mlp.c_proj",
    "sem_seg_head.predictor.clip_model.visual.transformer.resblocks.0.attn.q_proj",
    "sem_seg_head.predictor.clip_model.visual.transformer.resblocks.3.attn.v_proj",
    "sem_seg_head.predictor.clip_model.transformer.resblocks.0.mlp.c_fc",
    "sem_seg_head.predictor.clip_model.transformer.resblocks.1.mlp.c_proj",
    "sem_seg_head.predictor.transformer.layers.0.swin_block.block_1.attn.q",
    "sem_seg_head.predictor.transformer.layers.0.swin_block.block_2.attn.k",
    "sem_seg_head.predictor.transformer.layers.1.swin_block.block_2.attn.v",
    "sem_seg_head.predictor.transformer.layers.0.swin_block.block_1.attn.proj",
    "sem_seg_head.predictor.transformer.layers.1.swin_block.block_2.mlp.fc1",
    "sem_seg_head.predictor.transformer.layers.0.attention.attention.q",
    "sem_seg_head.predictor.transformer.layers.1.attention.attention.v",
    "sem_seg_head.predictor.transformer.layers.0.attention.MLP.0",
    "sem_seg_head.predictor.transformer.layers.1.attention.MLP.2",
]
INERT_SITES = ("attn.q_proj", "attn.k_proj", "attn.v_proj")

OFFICIAL_FILES = [
    "catseg/cat_seg/cat_seg_model.py",
    "catseg/cat_seg/config.py",
    "catseg/cat_seg/modeling/heads/cat_seg_head.py",
    "catseg/cat_seg/modeling/transformer/cat_seg_predictor.py",
    "catseg/cat_seg/modeling/transformer/model.py",
    "catseg/cat_seg/third_party/model_vpt.py",
    "catseg/cat_seg/third_party/clip.py",
    "catseg/cat_seg/third_party/simple_tokenizer.py",
]

# --- deterministic weight protocol -------------------------------------------------------------

def init_rule(name, shape, module):
    """(scale, offset) of one checkpoint tensor; `module` is the module owning the tensor."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf.endswith("bias"):
        return f32(0.05), 0.0
    if leaf == "logit_scale":
        return f32(0.05), 0.0
    if leaf == "class_embedding" or leaf in ("padding_tokens", "padding_guidance"):
        return f32(0.5), 0.0
    if leaf == "positional_embedding":
        return f32(0.2), 0.0
    if isinstance(module, nn.Embedding):
        return f32(0.5), 0.0
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
        assert len(shape) == 1
        return f32(0.1), 1.0
    if leaf in ("proj", "text_projection") or isinstance(module, nn.ConvTranspose2d):
        fan_in = shape[0]
    else:
        assert isinstance(module, (nn.Linear, nn.Conv2d, nn.MultiheadAttention)), (name, type(module))
        fan_in = int(np.prod(shape[1:]))
    return f32(GAIN / math.sqrt(fan_in)), 0.0


def lora_rule(name, shape):
    if ".lora_A." in name:
        return f32(GAIN / math.sqrt(shape[1])), 0.0
    assert ".lora_B." in name
    return f32(0.5 / math.sqrt(shape[1])), 0.0


# --- official code plumbing --------------------------------------------------------------------

def import_official(semla_src, d2_src):
    catseg_dir = os.path.join(os.path.abspath(semla_src), "catseg")
    sys.path.insert(0, os.path.abspath(d2_src))
    sys.path.insert(0, catseg_dir)
    cwd = os.getcwd()
    os.chdir(catseg_dir)  # shim 5: dataset registration opens files relative to the cwd
    try:
        import cat_seg  # noqa: F401  (registers CATSeg / CATSegHead)
        from cat_seg import add_cat_seg_config, add_lora_config
        from cat_seg.third_party import clip, model_vpt
        import detectron2
        from detectron2.config import get_cfg
        from detectron2.modeling import build_model
    finally:
        os.chdir(cwd)
    return dict(add_cat_seg_config=add_cat_seg_config, add_lora_config=add_lora_config, clip=clip,
                model_vpt=model_vpt, get_cfg=get_cfg, build_model=build_model,
                detectron2=detectron2)


def make_cfg(off, yaml_path, classes_path):
    cfg = off["get_cfg"]()
    off["add_cat_seg_config"](cfg)
    # shim 4: semla's extra keys, unknown to the official config
    cfg.MODEL.SEM_SEG_HEAD.CLIP_VISION_HEADS = 0
    cfg.MODEL.SEM_SEG_HEAD.CLIP_TEXT_HEADS = 0
    cfg.MODEL.SEM_SEG_HEAD.CLIP_GUIDANCE_LAYERS = []
    cfg.merge_from_file(yaml_path)
    cfg.MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON = classes_path
    cfg.MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON = classes_path
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def build_catseg(off, cfg, geometry):
    """Official detectron2 build_model(cfg) with the tiny CLIP (shims 1-3)."""
    clip, model_vpt = off["clip"], off["model_vpt"]
    head_cfg = cfg.MODEL.SEM_SEG_HEAD

    def tiny_clip_load(name, device="cpu", jit=True, prompt_depth=0, prompt_length=0):
        g = geometry
        model = model_vpt.CLIP(
            g["embed_dim"], g["image_resolution"], PLACEHOLDER_VISION_LAYERS, g["vision_width"],
            g["vision_patch_size"], g["context_length"], g["vocab_size"], g["transformer_width"],
            head_cfg.CLIP_TEXT_HEADS, g["transformer_layers"],
            prompt_depth=prompt_depth, prompt_length=prompt_length)
        return model.to(device).eval(), None

    real_load = clip.load
    clip.load = tiny_clip_load
    try:
        model = off["build_model"](cfg)
    finally:
        clip.load = real_load
    visual = model.sem_seg_head.predictor.clip_model.visual
    width = geometry["vision_width"]
    visual.transformer = model_vpt.Transformer(
        width, geometry["vision_layers"], head_cfg.CLIP_VISION_HEADS,
        prompt_length=head_cfg.PROMPT_LENGTH, prompt_depth=head_cfg.PROMPT_DEPTH)
    model.upsample1 = nn.ConvTranspose2d(width, 256, kernel_size=2, stride=2)
    model.upsample2 = nn.ConvTranspose2d(width, 128, kernel_size=4, stride=4)
    model.layer_indexes = list(head_cfg.CLIP_GUIDANCE_LAYERS)
    model.reset_forward_hooks()
    return model.to(cfg.MODEL.DEVICE).eval()


def checkpoint_keys(model):
    """(name, tensor, owning module) of every tensor of a released checkpoint, state-dict order."""
    sd = model.state_dict(keep_vars=True)
    buffers = {n for n, _ in model.named_buffers()}
    modules = dict(model.named_modules())
    out = []
    for name, t in sd.items():
        if name in buffers:
            continue
        if name.endswith((".attn.q_proj.weight", ".attn.k_proj.weight", ".attn.v_proj.weight")):
            upstream = name[: -len(".q_proj.weight")] + "." + name.split(".")[-2] + "_weight"
            assert sd[upstream] is t, name  # SemLA alias of the upstream Parameter
            continue
        owner = modules[name.rsplit(".", 1)[0]] if "." in name else model
        out.append((name, t, owner))
    return out


def apply_protocol(model):
    entries = []
    with torch.no_grad():
        for name, t, owner in checkpoint_keys(model):
            shape = list(t.shape)
            scale, offset = init_rule(name, shape, owner)
            vals = protocol_values(name, int(np.prod(shape)) if shape else 1, scale, offset)
            t.copy_(torch.from_numpy(vals.reshape(shape)))
            entries.append({"name": name, "shape": shape, "dtype": "f32", "scale": scale, "offset": offset})
    return entries


# --- input image -------------------------------------------------------------------------------

def make_image():
    y, x = np.mgrid[0:IMAGE_H, 0:IMAGE_W].astype(np.float64)
    r = 40 + 150 * x / IMAGE_W + 20 * np.sin(y / 9.0)
    g = 30 + 120 * y / IMAGE_H + 15 * np.cos(x / 13.0)
    b = 90 + 60 * np.sin((x + y) / 25.0)
    img = np.stack([r, g, b], axis=-1)
    for (y0, y1, x0, x1), col in [((20, 60, 30, 90), (205, 40, 40)),
                                  ((80, 140, 115, 185), (30, 160, 60)),
                                  ((8, 40, 140, 190), (240, 230, 80)),
                                  ((100, 130, 10, 60), (20, 20, 30))]:
        img[y0:y1, x0:x1] = np.array(col, dtype=np.float64) + 0.3 * (img[y0:y1, x0:x1] - 128)
    img += (6 * np.sin(x * 1.7 + y * 2.3) * np.cos(x * 0.9 - y * 1.3))[..., None]
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


# --- running the official model ----------------------------------------------------------------

def run_official(model, image_chw):
    """One official eval forward (sliding window), capturing intermediate tensors by hooks."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    predictor = base.sem_seg_head.predictor
    cap = {}
    hooks = [
        predictor.clip_model.visual.register_forward_hook(lambda m, a, o: cap.__setitem__("dense", o)),
        predictor.transformer.conv1.register_forward_pre_hook(lambda m, a: cap.__setitem__("corr", a[0])),
        predictor.transformer.register_forward_hook(lambda m, a, o: cap.__setitem__("logits", o)),
    ]
    try:
        with torch.no_grad():
            out = model([{"image": image_chw, "height": IMAGE_H, "width": IMAGE_W}])
    finally:
        for h in hooks:
            h.remove()
    assert len(base.layers) == 2, len(base.layers)
    T = len(CLASSES)
    probs = out[0]["sem_seg"]
    res = collections.OrderedDict()
    res["token_ids"] = predictor.tokens.to(torch.int64)
    res["text_embeddings"] = predictor.cache[:, 0, :]
    res["dense_features"] = cap["dense"][4]
    res["guidance_0"] = base.layers[0][:, 4, :]
    res["guidance_1"] = base.layers[1][:, 4, :]
    res["cost_volume"] = cap["corr"].reshape(5, T, 24, 24)[4]
    res["logits"] = cap["logits"][4]
    res["logits_tile0"] = cap["logits"][0]
    res["probabilities"] = probs
    res["prediction"] = probs.argmax(dim=0).to(torch.int64)
    shapes = {"token_ids": (T, 77), "text_embeddings": (T, 64), "dense_features": (577, 64),
              "guidance_0": (577, 128), "guidance_1": (577, 128), "cost_volume": (T, 24, 24),
              "logits": (T, 96, 96), "logits_tile0": (T, 96, 96), "probabilities": (T, IMAGE_H, IMAGE_W),
              "prediction": (IMAGE_H, IMAGE_W)}
    for k, s in shapes.items():
        assert tuple(res[k].shape) == s, (k, tuple(res[k].shape), s)
    return collections.OrderedDict((k, v.detach().contiguous().clone()) for k, v in res.items())


def stats(res):
    out = {}
    for k, v in res.items():
        f = v.double()
        out[k] = {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", ""),
                  "min": f.min().item(), "max": f.max().item(), "mean": f.mean().item(),
                  "std": f.std().item() if v.numel() > 1 else 0.0}
    pred = res["prediction"]
    counts = torch.bincount(pred.flatten(), minlength=len(CLASSES)).tolist()
    p = res["probabilities"]
    top2 = p.topk(2, dim=0).values
    margin = (top2[0] - top2[1]).double()
    out["sanity"] = {
        "prediction_class_counts": counts,
        "top1_top2_probability_margin_min": margin.min().item(),
        "pixels_with_margin_below_1e-5": int((margin < 1e-5).sum().item()),
        "classes_predicted": int(sum(c > 0 for c in counts)),
        "probabilities_frac_below_0.01": (p < 0.01).double().mean().item(),
        "probabilities_frac_above_0.99": (p > 0.99).double().mean().item(),
    }
    if "cost_volume" in res:
        out["sanity"]["cost_volume_std"] = res["cost_volume"].double().std().item()
    return out


def check_sanity(name, st):
    s = st["sanity"]
    print(f"[{name}] sanity: {json.dumps(s)}")
    for k in ("logits", "probabilities", "text_embeddings", "dense_features"):
        if k in st:
            print(f"[{name}]   {k}: min {st[k]['min']:.5g} max {st[k]['max']:.5g} "
                  f"mean {st[k]['mean']:.5g} std {st[k]['std']:.5g}")
    ok = (s["classes_predicted"] >= 2 and s["probabilities_frac_below_0.01"] < 0.5
          and s["probabilities_frac_above_0.99"] < 0.5 and s.get("cost_volume_std", 1.0) > 1e-3)
    if not ok:
        print(f"[{name}] WARNING: sanity criteria not met")
    return ok


def save_outputs(path, res, keep):
    from safetensors.torch import save_file
    save_file({k: res[k] for k in keep}, path, metadata={"format": "pt"})


# --- PEFT adapter ------------------------------------------------------------------------------

def adapter_fixture(off, cfg, geometry, out_dir, image_chw, base_res):
    import peft
    from safetensors.torch import load_file

    adapter_dir = os.path.join(out_dir, "adapter_tiny_l")
    if os.path.isdir(adapter_dir):
        shutil.rmtree(adapter_dir)

    # 1. inject LoRA as SemLA's train_net.py::add_lora does, set the tensors by the protocol, save.
    model = build_catseg(off, cfg, geometry)
    apply_protocol(model)
    config = peft.LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                             target_modules=LORA_TARGETS, bias="none",
                             use_rslora=False, use_dora=False)
    pm = peft.get_peft_model(model, config)  # adapter name "default": files land in adapter_dir
    params = dict(pm.named_parameters())
    entries = []
    with torch.no_grad():
        for site in LORA_TARGETS:
            for ab in ("lora_A", "lora_B"):
                saved = f"base_model.model.{site}.{ab}.weight"
                t = params[f"base_model.model.{site}.{ab}.default.weight"]
                shape = list(t.shape)
                scale, offset = lora_rule(saved, shape)
                t.copy_(torch.from_numpy(protocol_values(saved, int(np.prod(shape)), scale, offset).reshape(shape)))
                entries.append({"name": saved, "shape": shape, "dtype": "f32", "scale": scale, "offset": offset})
    pm.save_pretrained(adapter_dir)
    saved_sd = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    assert sorted(saved_sd) == sorted(e["name"] for e in entries), sorted(saved_sd)
    for e in entries:
        ref = protocol_values(e["name"], int(np.prod(e["shape"])), e["scale"], e["offset"])
        assert np.array_equal(saved_sd[e["name"]].numpy().ravel(), ref), e["name"]
    write_keys_json(os.path.join(out_dir, "keys_adapter_tiny_l.json"),
                    {"variant": "tiny_l_adapter", "base": "keys_tiny_l.json", "r": LORA_R,
                     "lora_alpha": LORA_ALPHA, "target_modules": LORA_TARGETS}, entries)
    del pm, model

    # 2. SemLA inference: a FRESH base model (empty text cache) wrapped by PeftModel.from_pretrained.
    fresh = build_catseg(off, cfg, geometry)
    apply_protocol(fresh)
    assert fresh.sem_seg_head.predictor.cache is None
    pm = peft.PeftModel.from_pretrained(fresh, adapter_dir)
    pm.eval()
    res = run_official(pm, image_chw)

    # 3. inertness of the CLIP attn.{q,k,v}_proj sites: zero their B and rerun on another fresh model.
    fresh2 = build_catseg(off, cfg, geometry)
    apply_protocol(fresh2)
    pm2 = peft.PeftModel.from_pretrained(fresh2, adapter_dir)
    pm2.eval()
    with torch.no_grad():
        for n, p in pm2.named_parameters():
            if ".lora_B." in n and any(s in n for s in INERT_SITES):
                p.zero_()
    res_inert = run_official(pm2, image_chw)
    notes = {
        "inert_qkv_sites_max_abs_diff_probabilities":
            (res["probabilities"] - res_inert["probabilities"]).abs().max().item(),
        "inert_qkv_sites_max_abs_diff_logits": (res["logits"] - res_inert["logits"]).abs().max().item(),
        "text_embeddings_max_abs_diff_vs_base": (res["text_embeddings"] - base_res["text_embeddings"]).abs().max().item(),
        "logits_max_abs_diff_vs_base": (res["logits"] - base_res["logits"]).abs().max().item(),
        "text_cache": "fresh base model per run (predictor.cache None before the first forward), so the "
                      "text embeddings are computed with the adapter's live text mlp LoRA; a predictor "
                      "that had already run without the adapter would keep its cached base text "
                      "embeddings (the diff above) in eval mode.",
    }
    print("[tiny_l_adapter] notes:", json.dumps(notes, indent=1))
    return res, notes


# --- training: the official loss and the LoRA gradients ---------------------------------------

def make_train_labels():
    """A deterministic label map for the training fixture: the image's four rectangles as classes
    1, 2, 1, 2 on a class-0 background, with an ignore (255) band of 6 rows."""
    labels = np.zeros((IMAGE_H, IMAGE_W), dtype=np.uint8)
    for (y0, y1, x0, x1), c in [((20, 60, 30, 90), 1), ((80, 140, 115, 185), 2),
                                ((8, 40, 140, 190), 1), ((100, 130, 10, 60), 2)]:
        labels[y0:y1, x0:x1] = c
    labels[70:76, :] = 255
    return labels


def training_fixture(off, cfg, geometry, out_dir, image_chw):
    """One official training forward (CATSeg.forward in train mode: the non-sliding path, logits
    upsampled to the label size, BCE-with-logits against one-hot targets with all-zero targets at
    ignore pixels) of the tiny L model under adapter_tiny_l loaded trainable by peft, then
    backward: the loss and every LoRA factor's gradient."""
    import peft
    from PIL import Image

    labels = make_train_labels()
    Image.fromarray(labels).save(os.path.join(out_dir, "train_labels.png"), optimize=True)
    labels = np.array(Image.open(os.path.join(out_dir, "train_labels.png")))
    fresh = build_catseg(off, cfg, geometry)
    apply_protocol(fresh)
    pm = peft.PeftModel.from_pretrained(fresh, os.path.join(out_dir, "adapter_tiny_l"), is_trainable=True)
    pm.train()
    sem_seg = torch.as_tensor(labels.astype(np.int64))
    losses = pm([{"image": image_chw, "sem_seg": sem_seg, "height": IMAGE_H, "width": IMAGE_W}])
    loss = losses["loss_sem_seg"]
    loss.backward()
    res = collections.OrderedDict()
    res["loss"] = loss.detach().reshape(1).clone()
    for n, p in pm.named_parameters():
        if p.requires_grad:
            assert ".lora_" in n, n
            saved = n.replace(".default.weight", ".weight")
            # A factor the loss never reaches (the q/k/v LoRAs of SemLA's CLIP attention, which
            # reads the base in_proj weights directly) has no gradient: recorded as zeros.
            grad = torch.zeros_like(p) if p.grad is None else p.grad
            res["grad." + saved] = grad.detach().contiguous().clone()
    print(f"[training] loss {res['loss'].item():.6f}; {len(res) - 1} LoRA gradients, max |g| "
          f"{max(v.abs().max().item() for k, v in res.items() if k != 'loss'):.3e}")
    return res


# --- checkpoint with views ---------------------------------------------------------------------

def checkpoint_views(out_dir):
    from safetensors.torch import save_file
    big = torch.arange(48, dtype=torch.float32).reshape(12, 4) * 0.25 - 3.0  # one storage, 48 floats
    q = big[0:4]        # storage offset 0
    k = big[4:8]        # storage offset 16
    v = big[8:12]       # storage offset 32
    base_t = torch.arange(15, dtype=torch.float32).reshape(3, 5) / 7.0
    transposed = base_t.t()  # (5, 3), strides (1, 5)
    assert not transposed.is_contiguous()
    sd = collections.OrderedDict()
    sd["plain.weight"] = torch.linspace(-1.0, 1.0, 6, dtype=torch.float32).reshape(2, 3)
    sd["attn.q_proj_weight"] = q
    sd["attn.v_proj_weight"] = v
    sd["attn.k_proj_weight"] = k
    sd["transposed.weight"] = transposed
    sd["half.weight"] = (torch.arange(8, dtype=torch.float32) * 0.3 - 1.0).to(torch.float16).reshape(2, 4)
    sd["logit_scale"] = torch.tensor(4.6052, dtype=torch.float32)
    sd["module.prefixed.bias"] = torch.tensor([0.5, -0.25, 2.0], dtype=torch.float32)
    torch.save({"model": sd, "iteration": 7}, os.path.join(out_dir, "checkpoint_views.pth"))
    back = torch.load(os.path.join(out_dir, "checkpoint_views.pth"), weights_only=True)["model"]
    assert back["attn.k_proj_weight"].untyped_storage().data_ptr() == back["attn.q_proj_weight"].untyped_storage().data_ptr()
    assert back["attn.k_proj_weight"].storage_offset() == 16 and back["attn.v_proj_weight"].storage_offset() == 32
    assert back["transposed.weight"].stride() == (1, 5)
    save_file({k2: t.contiguous().clone() for k2, t in sd.items()},
              os.path.join(out_dir, "checkpoint_views.safetensors"), metadata={"format": "pt"})


# --- main --------------------------------------------------------------------------------------

def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--semla", required=True, help="extracted rezaqorbani/SemLA tree (SEMLA_SRC)")
    ap.add_argument("--detectron2", required=True, help="extracted facebookresearch/detectron2 tree (D2_SRC)")
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)

    # protocol self-check: vectorised == scalar
    for name, n, s, o in [(SELF_CHECK_KEY, 64, 0.25, 0.0), ("x", 8, 0.1, 1.0), ("", 3, 1.0, 0.0)]:
        assert np.array_equal(protocol_values(name, n, s, o), protocol_values_scalar(name, n, s, o)), name

    off = import_official(args.semla, args.detectron2)
    import peft
    import safetensors
    import transformers

    # configs, classes, image
    with open(os.path.join(out, "base.yaml"), "w") as f:
        f.write(BASE_YAML)
    for v, text in VARIANT_YAML.items():
        with open(os.path.join(out, f"{v}.yaml"), "w") as f:
            f.write(text)
    classes_path = os.path.join(out, "classes.json")
    with open(classes_path, "w") as f:
        json.dump(CLASSES, f)
        f.write("\n")
    from PIL import Image
    Image.fromarray(make_image()).save(os.path.join(out, "image.png"), optimize=True)
    image = np.array(Image.open(os.path.join(out, "image.png")).convert("RGB"))
    assert image.shape == (IMAGE_H, IMAGE_W, 3)
    image_chw = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))  # DatasetMapper form

    summary = collections.OrderedDict()
    summary["versions"] = {"python": sys.version.split()[0], "torch": torch.__version__,
                           "numpy": np.__version__, "peft": peft.__version__,
                           "transformers": transformers.__version__,
                           "safetensors": safetensors.__version__,
                           "detectron2": off["detectron2"].__version__}
    summary["official_sources_sha256"] = {p: sha256(os.path.join(args.semla, p)) for p in OFFICIAL_FILES}
    summary["gain"] = GAIN
    all_ok = True
    results = {}
    keep = {
        "tiny_l": ["token_ids", "text_embeddings", "dense_features", "guidance_0", "guidance_1",
                   "cost_volume", "logits", "logits_tile0", "probabilities", "prediction"],
        "tiny_b": ["token_ids", "text_embeddings", "dense_features", "cost_volume", "logits",
                   "probabilities", "prediction"],
    }
    cfgs = {}
    for variant in ("tiny_l", "tiny_b"):
        cfg = make_cfg(off, os.path.join(out, f"{variant}.yaml"), classes_path)
        cfgs[variant] = cfg
        model = build_catseg(off, cfg, CLIP_GEOMETRY[variant])
        entries = apply_protocol(model)
        write_keys_json(os.path.join(out, f"keys_{variant}.json"),
                        {"variant": variant, "config": f"{variant}.yaml"}, entries)
        n_values = sum(int(np.prod(e["shape"])) for e in entries)
        print(f"[{variant}] {len(entries)} checkpoint tensors, {n_values} values; "
              f"clip_resolution {model.clip_resolution}, guidance layers {model.layer_indexes}")
        if variant == "tiny_l":
            e = next(e for e in entries if e["name"] == SELF_CHECK_KEY)
            first4 = protocol_values(SELF_CHECK_KEY, 4, e["scale"], e["offset"])
            live = model.state_dict()[SELF_CHECK_KEY].flatten()[:4].numpy()
            assert np.array_equal(first4, live)
            summary["self_check"] = {"name": SELF_CHECK_KEY, "seed_fnv1a64": f"{fnv1a64(SELF_CHECK_KEY):#018x}",
                                     "scale": e["scale"], "offset": e["offset"],
                                     "first4": [float(x) for x in first4],
                                     "first4_hex": [x.view(np.uint32).item().to_bytes(4, "big").hex() for x in first4]}
            print("self-check:", json.dumps(summary["self_check"]))
        res = run_official(model, image_chw)
        results[variant] = res
        st = stats({k: res[k] for k in keep[variant]})
        all_ok &= check_sanity(variant, st)
        summary[variant] = st
        save_outputs(os.path.join(out, f"outputs_{variant}.safetensors"), res, keep[variant])
        del model

    res_a, notes = adapter_fixture(off, cfgs["tiny_l"], CLIP_GEOMETRY["tiny_l"], out, image_chw, results["tiny_l"])
    keep_a = ["token_ids", "text_embeddings", "logits", "probabilities", "prediction"]
    st = stats({k: res_a[k] for k in keep_a})
    all_ok &= check_sanity("tiny_l_adapter", st)
    summary["tiny_l_adapter"] = st
    summary["tiny_l_adapter_notes"] = notes
    save_outputs(os.path.join(out, "outputs_tiny_l_adapter.safetensors"), res_a, keep_a)
    res_t = training_fixture(off, cfgs["tiny_l"], CLIP_GEOMETRY["tiny_l"], out, image_chw)
    summary["training_tiny_l_adapter"] = {"loss": res_t["loss"].item(), "gradients": len(res_t) - 1}
    save_outputs(os.path.join(out, "training_tiny_l_adapter.safetensors"), res_t, list(res_t))

    # the 214 official LoRA target modules
    cfg = off["get_cfg"]()
    off["add_cat_seg_config"](cfg)
    off["add_lora_config"](cfg)
    mods = sorted(cfg.MODEL.LORA.MODUELS)
    assert len(mods) == 214 and len(set(mods)) == 214, len(mods)
    with open(os.path.join(out, "target_modules_214.json"), "w") as f:
        f.write("[\n" + ",\n".join("  " + json.dumps(m) for m in mods) + "\n]\n")

    checkpoint_views(out)
    summary["sanity_ok"] = bool(all_ok)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    total = 0
    for dirpath, _, files in os.walk(out):
        for fn in sorted(files):
            p = os.path.join(dirpath, fn)
            total += os.path.getsize(p)
            print(f"{os.path.getsize(p):>9}  {os.path.relpath(p, out)}")
    print(f"{total:>9}  total; sanity {'OK' if all_ok else 'NOT MET'}")


if __name__ == "__main__":
    main()
