"""SemLA from Python, step by step, on the demo's model and library.

    cargo run --release -p semla-cli -- demo --quick      # writes semla-demo-out/
    python docs/python_example.py [MODEL_DIR LIBRARY_DIR IMAGE [OUT_PNG]]

Defaults: semla-demo-out/model, semla-demo-out/library, one of the package's
test photos, and overlay.png. Opens the library, retrieves the adapters for
the image, fuses them by hand with add_weighted_adapter and checks that this is
what SemLA.segment does, then writes the overlay with the chosen adapters
(and shows it if matplotlib is installed).
"""

import sys
from pathlib import Path

import numpy as np

import semla

args = sys.argv[1:]
model_dir = Path(args[0]) if len(args) > 0 else Path("semla-demo-out/model")
library_dir = Path(args[1]) if len(args) > 1 else Path("semla-demo-out/library")
image_path = Path(args[2]) if len(args) > 2 else Path(__file__).parent.parent / "crates/semla-py/tests/fixtures/images/fog.png"
out_path = Path(args[3]) if len(args) > 3 else Path("overlay.png")

# 1. The library: PEFT adapter folders with their prototypes.
library = semla.AdapterLibrary.open(library_dir)
print(f"{len(library)} adapters, embedder {library.embedder['embedder_spec'] if library.embedder else 'unrecorded'}")
for name in library.names[:5]:
    config = library.config(name)
    print(f"  {name:<20} r={config.r} alpha={config.lora_alpha} modules={len(config.target_modules or [])}")

# 2. SemLA: the segmenter, the library, the embedder the library records.
model = semla.Segmenter.from_pretrained(model_dir)
sl = semla.SemLA(model, library, top_k=3, temperature=0.1)
image = semla.read_image(image_path)  # uint8 [H, W, 3]

# 3. Retrieval for this image: nearest prototypes, temperature softmax.
mixture = library.retrieve(sl.embed(image), top_k=3, temperature=0.1, sources=sl.sources)
print(f"\n{image_path.name}: adapters retrieved")
for r in mixture:
    print(f"  {r.name:<20} distance {r.distance:.4f}  weight {r.weight:.3f}")

# 4. Fuse them exactly (peft's add_weighted_adapter, "cat") and segment.
merged = semla.add_weighted_adapter(
    [library[r.name] for r in mixture], [r.weight for r in mixture], combination_type="cat"
)
by_hand = model.segment(image, adapters=[merged])
result = sl.segment(image)  # the same, in one call
assert [a.name for a in result.adapters] == [r.name for r in mixture]
assert np.array_equal(by_hand.labels, result.labels), "fusing by hand must give SemLA's labels"

# 5. The overlay, and which classes were found.
overlay = model.overlay(image, result.labels)
semla.write_image(out_path, overlay)
names = model.class_names or [str(c) for c in range(model.num_classes)]
found = {names[c]: int(n) for c, n in enumerate(result.class_pixels()) if n}
print(f"\nclasses (pixels): {found}")
print(f"timings (s): {', '.join(f'{k} {v:.4f}' for k, v in result.timings.items() if k.endswith('_s'))}")
print(f"overlay written to {out_path}")

try:
    import matplotlib.pyplot as plt
except ImportError:
    plt = None
if plt is not None:
    plt.imshow(overlay)
    plt.title(", ".join(f"{a.name} {a.weight:.2f}" for a in result.adapters))
    plt.axis("off")
    plt.show()
