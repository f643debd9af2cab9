"""semla: adaptive semantic segmentation with a library of LoRA adapters.

For every image, SemLA embeds it, finds the nearest domain prototypes of an
adapter library, weights the top-k adapters by a temperature softmax, fuses
them exactly and segments. The maths runs in semla's Rust core, with the GIL
released; numpy arrays go in and out.

    import semla
    model = semla.Segmenter.from_pretrained("model")
    library = semla.AdapterLibrary.open("library")
    sl = semla.SemLA(model, library, top_k=5, temperature=0.05)
    result = sl.segment("frame.png")      # or a uint8 [H, W, 3] array
    result.labels, result.adapters

PEFT-shaped pieces: ``AdapterLibrary[name]`` is an ``Adapter`` (``config`` is
its ``LoraConfig``), ``add_weighted_adapter`` merges adapters as PEFT does
(``cat`` exact), and ``Adapter.save_pretrained`` writes a folder that
``peft.PeftModel.from_pretrained`` loads.
"""

import os as _os

# candle runs element-wise ops on a persistent thread pool that a forked child
# (a PyTorch DataLoader worker) would inherit without its threads, and hang
# on. Unless the user chose CANDLE_NUM_THREADS, the extension module makes
# that pool without workers as it loads (element-wise ops then run on the
# calling thread; matrix products and semla's fused kernels still use every
# core). The variable is set for the import only.
_candle_threads = _os.environ.get("CANDLE_NUM_THREADS")
if _candle_threads is None:
    _os.environ["CANDLE_NUM_THREADS"] = "1"
try:
    from . import _semla  # noqa: F401  (makes candle's pool)
finally:
    if _candle_threads is None:
        del _os.environ["CANDLE_NUM_THREADS"]

from ._errors import (
    AdapterFormatError,
    DatasetError,
    ImageError,
    LibraryError,
    ModelError,
    SemlaError,
    ShapeError,
    UnknownAdapterError,
)
from ._records import Retrieval
from ._semla import (
    Adapter,
    AdapterLibrary,
    ConfusionMatrix,
    LoraConfig,
    SemLA,
    Segmentation,
    Segmenter,
    __version__,
    add_weighted_adapter,
    read_image,
    read_label_map,
    write_image,
)

__all__ = [
    "Adapter",
    "AdapterFormatError",
    "AdapterLibrary",
    "ConfusionMatrix",
    "DatasetError",
    "ImageError",
    "LibraryError",
    "LoraConfig",
    "ModelError",
    "Retrieval",
    "SemLA",
    "SemlaError",
    "Segmentation",
    "Segmenter",
    "ShapeError",
    "UnknownAdapterError",
    "__version__",
    "add_weighted_adapter",
    "read_image",
    "read_label_map",
    "write_image",
]
