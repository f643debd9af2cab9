#!/usr/bin/env python3
"""Reference fixtures for semla-models' CLIP (crates/semla-models/tests/fixtures/clip/).

Builds, with transformers 4.46 and PIL:

- tokenizer_ids.json: ids of 30+ strings from a faithful copy of OpenAI's
  `SimpleTokenizer` (no ftfy: basic_clean = html.unescape twice + strip), 77-token
  contexts with zero padding (OpenAI's `clip.tokenize(truncate=True)`), plus the ids
  of transformers' `CLIPTokenizer` (EOT padding) built from the same vocabulary.
- photo_a.png (640x480) and photo_b.png (150x190): deterministic synthetic photos;
  resized_*.png: PIL's bicubic resize as `CLIPImageProcessor` does it (checked here to
  invert exactly to the processor's output after the centre crop); preprocess.json:
  sizes, sum and samples of the normalised tensor.
- tiny/: a tiny random CLIPModel (config.json + model.safetensors in float16; the
  float32 model used for the outputs holds the same float16-exact weights) and
  outputs.json with its image features, hidden states, dense tokens (224 px and
  288 px / 224x288 with interpolate_pos_encoding=True) and text features.
- tiny_lora/: a PEFT LoRA adapter on the tiny model and the adapted image features.

Usage: python3 tools/reference/clip_reference.py [VOCAB.txt.gz]
(the vocabulary defaults to the copy vendored in crates/semla-models/data/).
"""

import gzip
import html
import json
import os
import sys
import tempfile
from functools import lru_cache

import numpy as np
import regex as re
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "crates", "semla-models", "tests", "fixtures", "clip")
VOCAB = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    ROOT, "crates", "semla-models", "data", "bpe_simple_vocab_16e6.txt.gz")


# --- OpenAI's SimpleTokenizer, reproduced (ftfy left out) -------------------------

@lru_cache()
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def get_pairs(word):
    return {(a, b) for a, b in zip(word[:-1], word[1:])}


class SimpleTokenizer:
    def __init__(self, bpe_path):
        self.byte_encoder = bytes_to_unicode()
        merges = gzip.open(bpe_path).read().decode("utf-8").split("\n")
        merges = merges[1:49152 - 256 - 2 + 1]
        self.merges = [tuple(m.split()) for m in merges]
        vocab = list(bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab]
        for m in self.merges:
            vocab.append("".join(m))
        vocab.extend(["<|startoftext|>", "<|endoftext|>"])
        self.vocab = vocab
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.bpe_ranks = dict(zip(self.merges, range(len(self.merges))))
        self.cache = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}
        self.pat = re.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            re.IGNORECASE)

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = get_pairs(word)
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                    new_word.extend(word[i:j])
                    i = j
                except ValueError:
                    new_word.extend(word[i:])
                    break
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = get_pairs(word)
        word = " ".join(word)
        self.cache[token] = word
        return word

    def encode(self, text):
        text = html.unescape(html.unescape(text)).strip()
        text = re.sub(r"\s+", " ", text).strip().lower()
        ids = []
        for token in re.findall(self.pat, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return ids

    def context(self, text, length=77):
        """clip.tokenize(text, truncate=True)."""
        ids = [49406] + self.encode(text) + [49407]
        if len(ids) > length:
            ids = ids[:length]
            ids[-1] = 49407
        return ids + [0] * (length - len(ids))


STRINGS = [
    "a photo of a road.",
    "sidewalk",
    "a photo of a sidewalk.",
    "",
    "   ",
    "Hello, World!",
    "HELLO world",
    "it's a dog's life, isn't it? we'll see, they've gone, I'm here, you'd know, they're",
    "The year 2024 had 365 days and 12.5% growth",
    "123456789",
    "naïve café résumé über Straße",
    "Ελληνικά και русский текст",
    "日本語のテキスト 中文",
    "emoji 🚗🚲 🚦 road 🙂",
    "tabs\tand\nnewlines   and    spaces",
    "a &amp; b &lt;c&gt; &quot;quoted&quot; &#39;x&#39; &#x263A;",
    "double &amp;amp; escaped",
    "punctuation!!! ... ??? --- (brackets) [square] {curly} @#$%^&*",
    "<|startoftext|>special<|endoftext|> tokens",
    "e-mail: someone@example.com, url https://example.org/path?q=1",
    "snake_case and CamelCase and kebab-case",
    "a photo of a traffic sign, a photo of a pole, a photo of vegetation",
    "terrain, sky, person, rider, car, truck, bus, train, motorcycle, bicycle",
    "x" * 300,
    " ".join(["word"] * 100),
    " ".join(f"token{i}" for i in range(60)),
    "Ünïcödé ÀÉÎÕÜ ñ ç ø å æ œ",
    "don't", "DON'T", "o'clock", "'s", "rock'n'roll",
    "road", "roads", "building", "wall", "fence",
    "ﬁ ligature and ½ fraction and ² superscript",
    "zero-width\u200bjoiner and nbsp\u00a0here",
]


def hf_tokenizer(tok, tmp):
    """transformers' CLIPTokenizer on vocab.json + merges.txt built like SimpleTokenizer's encoder."""
    from transformers import CLIPTokenizer
    vocab_path = os.path.join(tmp, "vocab.json")
    merges_path = os.path.join(tmp, "merges.txt")
    with open(vocab_path, "w", encoding="utf-8") as f:
        json.dump(tok.encoder, f, ensure_ascii=False)
    with open(merges_path, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in tok.merges:
            f.write(f"{a} {b}\n")
    return CLIPTokenizer(vocab_path, merges_path, pad_token="<|endoftext|>")


def tokenizer_fixture(tok):
    with tempfile.TemporaryDirectory() as tmp:
        hf = hf_tokenizer(tok, tmp)
        cases = []
        for s in STRINGS:
            ids = tok.context(s)
            hf_ids = hf(s, padding="max_length", max_length=77, truncation=True)["input_ids"]
            eot_padded = list(ids)
            n = len([i for i in ids if i != 0])
            eot_padded[n:] = [49407] * (77 - n)
            cases.append({"text": s, "ids": ids, "hf_ids": hf_ids, "hf_agrees": hf_ids == eot_padded})
    assert cases[0]["ids"][:8] == [49406, 320, 1125, 539, 320, 1759, 269, 49407]
    assert cases[1]["ids"][:3] == [49406, 23278, 49407]
    with open(os.path.join(OUT, "tokenizer_ids.json"), "w", encoding="utf-8") as f:
        json.dump({"generator": "OpenAI SimpleTokenizer without ftfy; hf_ids from transformers "
                                "CLIPTokenizer (no ftfy) with EOT padding", "cases": cases},
                  f, ensure_ascii=False, indent=0)
    print("tokenizer:", sum(c["hf_agrees"] for c in cases), "of", len(cases), "agree with transformers")
    return cases


# --- Deterministic synthetic photos ----------------------------------------------

def synthetic_photo(width, height, seed):
    """A street-like scene: sky gradient, road, shapes with hard edges, windows, a checker texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.zeros((height, width, 3))
    horizon = 0.45 * height
    sky = y < horizon
    img[sky] = np.stack([90 + 80 * y / horizon, 140 + 60 * y / horizon, 230 - 30 * y / horizon], -1)[sky]
    ground = ~sky
    img[ground] = np.stack([70 + 40 * (y / height), 70 + 35 * (y / height), 75 + 30 * (y / height)], -1)[ground]
    # lane markings: thin slanted stripes
    lane = ground & (np.abs((x - width / 2) - (y - horizon) * 0.8) < 3 + 4 * (y - horizon) / height)
    img[lane] = [235, 235, 220]
    # buildings: rectangles with windows
    for i in range(5):
        x0 = int(rng.uniform(0, width * 0.9))
        w = int(rng.uniform(width * 0.08, width * 0.2))
        h = int(rng.uniform(height * 0.15, height * 0.35))
        colour = rng.uniform(60, 200, 3)
        box = (x >= x0) & (x < x0 + w) & (y >= horizon - h) & (y < horizon)
        img[box] = colour
        windows = box & ((x.astype(int) // 6) % 2 == 0) & ((y.astype(int) // 8) % 2 == 0)
        img[windows] = colour * 0.4
    # a red disc (traffic sign) and a green blob (tree)
    disc = (x - width * 0.8) ** 2 + (y - height * 0.35) ** 2 < (0.06 * height) ** 2
    img[disc] = [220, 30, 40]
    blob = ((x - width * 0.2) / 1.3) ** 2 + (y - height * 0.3) ** 2 < (0.1 * height) ** 2
    img[blob] = [40, 150, 60] + 30 * np.sin(x[blob] / 2.0)[:, None]
    # fine checker texture bottom-left (aliasing test for the resampler)
    tex = (x < width * 0.25) & (y > height * 0.8)
    img[tex] = 255 * (((x[tex].astype(int) + y[tex].astype(int)) % 2))[:, None]
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def preprocess_fixture():
    from transformers import CLIPImageProcessor
    proc = CLIPImageProcessor()
    record = {}
    for name, (w, h, seed) in {"a": (640, 480, 1), "b": (150, 190, 2)}.items():
        arr = synthetic_photo(w, h, seed)
        path = os.path.join(OUT, f"photo_{name}.png")
        Image.fromarray(arr).save(path, optimize=True)
        img = Image.open(path).convert("RGB")
        short, long = min(img.size), max(img.size)
        new_long = int(224 * long / short)
        size = (new_long, 224) if img.size[0] >= img.size[1] else (224, new_long)
        resized = img.resize(size, resample=Image.BICUBIC)
        resized.save(os.path.join(OUT, f"resized_{name}.png"), optimize=True)
        pixels = proc(images=img, return_tensors="np")["pixel_values"][0]  # [3, 224, 224] float32
        # The crop in uint8 (inverse of rescale+normalise), checked against the resized image.
        rw, rh = resized.size
        top, left = (rh - 224) // 2, (rw - 224) // 2
        cropped = np.asarray(resized)[top:top + 224, left:left + 224]
        mean = np.array(proc.image_mean, dtype=np.float32)[:, None, None]
        std = np.array(proc.image_std, dtype=np.float32)[:, None, None]
        back = np.round((pixels * std + mean) * 255).astype(np.int64)
        assert np.array_equal(back, cropped.transpose(2, 0, 1)), "crop/normalise inversion failed"
        rng = np.random.default_rng(10)
        idx = rng.integers(0, pixels.size, 500)
        record[name] = {
            "source": [h, w],
            "resized": [rh, rw],
            "sum": float(pixels.astype(np.float64).sum()),
            "sample_index": idx.tolist(),
            "sample_value": pixels.reshape(-1)[idx].astype(float).tolist(),
        }
    with open(os.path.join(OUT, "preprocess.json"), "w") as f:
        json.dump(record, f)


# --- Tiny CLIP ----------------------------------------------------------------------

def tiny_model():
    from transformers import CLIPConfig, CLIPModel
    cfg = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu"),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=224, patch_size=32, hidden_act="quick_gelu"),
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = CLIPModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name or "layrnorm" in name or "layernorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
            elif name == "logit_scale":
                continue
            else:
                p.copy_(0.2 * torch.randn_like(p))
        # float16-exact weights: the committed float16 file holds exactly these values.
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


def lists(t):
    return t.detach().double().numpy().tolist()


def model_fixture(model, tok):
    from transformers import CLIPImageProcessor
    from safetensors.torch import save_file
    tiny = os.path.join(OUT, "tiny")
    os.makedirs(tiny, exist_ok=True)
    model.config.save_pretrained(tiny)
    state = {k: v.half().contiguous() for k, v in model.state_dict().items() if "position_ids" not in k}
    save_file(state, os.path.join(tiny, "model.safetensors"), metadata={"format": "pt"})

    imgs = [Image.open(os.path.join(OUT, f"photo_{n}.png")).convert("RGB") for n in ("a", "b")]
    out = {}
    with torch.no_grad():
        px = CLIPImageProcessor()(images=imgs, return_tensors="pt")["pixel_values"]
        vis = model.vision_model(pixel_values=px, output_hidden_states=True)
        out["layer0_output_a"] = lists(vis.hidden_states[1][0])
        out["image_features"] = lists(model.get_image_features(pixel_values=px))
        out["pooled_output"] = lists(vis.pooler_output)
        out["last_hidden_state_a"] = lists(vis.last_hidden_state[0])
        patches = vis.last_hidden_state[:, 1:]
        out["dense_post_layernorm_a"] = lists(model.vision_model.post_layernorm(patches)[0])
        out["dense_projected_a"] = lists(model.visual_projection(model.vision_model.post_layernorm(patches))[0])

        # Other input sizes: interpolate_pos_encoding=True (bicubic on the position grid).
        px288 = CLIPImageProcessor(size={"shortest_edge": 288}, crop_size={"height": 288, "width": 288})(
            images=imgs[:1], return_tensors="pt")["pixel_values"]
        vis288 = model.vision_model(pixel_values=px288, interpolate_pos_encoding=True)
        out["image_features_288_a"] = lists(model.get_image_features(pixel_values=px288, interpolate_pos_encoding=True))
        out["last_hidden_state_288_a"] = lists(vis288.last_hidden_state[0])
        px_rect = CLIPImageProcessor(crop_size={"height": 224, "width": 288})(
            images=imgs[:1], return_tensors="pt")["pixel_values"]
        assert tuple(px_rect.shape) == (1, 3, 224, 288)
        vis_rect = model.vision_model(pixel_values=px_rect, interpolate_pos_encoding=True)
        out["last_hidden_state_224x288_a"] = lists(vis_rect.last_hidden_state[0])
        out["image_features_224x288_a"] = lists(
            model.get_image_features(pixel_values=px_rect, interpolate_pos_encoding=True))

        texts = ["a photo of a road.", "sidewalk", "a photo of a traffic sign, a photo of a pole",
                 "Hello, World!", " ".join(["word"] * 100)]
        ids = torch.tensor([tok.context(t) for t in texts])
        out["texts"] = texts
        out["text_ids"] = ids.tolist()
        out["text_features"] = lists(model.get_text_features(input_ids=ids))
        out["logit_scale"] = float(model.logit_scale)
    with open(os.path.join(tiny, "outputs.json"), "w") as f:
        json.dump(out, f)


def lora_fixture(model):
    """A PEFT LoRA adapter on the tiny model: the paths must be the checkpoint paths."""
    from peft import LoraConfig, get_peft_model
    from transformers import CLIPImageProcessor
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "fc1", "fc2"], lora_dropout=0.0,
                     init_lora_weights=True)
    peft_model = get_peft_model(model, cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_((0.3 * torch.randn_like(p)).half().float())
    lora_dir = os.path.join(OUT, "tiny_lora")
    peft_model.save_pretrained(lora_dir)
    img = Image.open(os.path.join(OUT, "photo_a.png")).convert("RGB")
    with torch.no_grad():
        px = CLIPImageProcessor()(images=img, return_tensors="pt")["pixel_values"]
        feats = peft_model.get_image_features(pixel_values=px)
    with open(os.path.join(lora_dir, "outputs.json"), "w") as f:
        json.dump({"image_features_a": lists(feats), "scaling": 4 / 2}, f)
    # PEFT writes a README.md next to the adapter; it is not needed.
    readme = os.path.join(lora_dir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)


def main():
    os.makedirs(OUT, exist_ok=True)
    tok = SimpleTokenizer(VOCAB)
    tokenizer_fixture(tok)
    preprocess_fixture()
    model = tiny_model()
    model_fixture(model, tok)
    lora_fixture(model)


if __name__ == "__main__":
    main()
