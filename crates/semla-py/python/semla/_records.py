"""Plain records the Rust core returns."""

from typing import NamedTuple, Optional

__all__ = ["Retrieval"]


class Retrieval(NamedTuple):
    """One adapter of a mixture. ``distance`` and ``similarity`` are the
    retrieval's (Euclidean distance and ``1 / distance``, or cosine distance
    and similarity); they are None where the adapters were given, not
    retrieved. The weights of one mixture sum to 1 when retrieved."""

    name: str
    distance: Optional[float]
    similarity: Optional[float]
    weight: float
