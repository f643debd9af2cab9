"""The exceptions semla raises: one base, ``SemlaError``, and a subclass per
kind of failure. The messages are the Rust core's: they name the file, the
adapter or the setting at fault."""

__all__ = [
    "SemlaError",
    "AdapterFormatError",
    "LibraryError",
    "UnknownAdapterError",
    "ModelError",
    "ImageError",
    "ShapeError",
    "DatasetError",
]


class SemlaError(Exception):
    """Base of every error semla raises (a bad setting raises it directly)."""


class AdapterFormatError(SemlaError, ValueError):
    """An adapter's files are unusable: its ``adapter_config.json``, its
    weights, its prototype, or an adapter that does not fit the model."""


class LibraryError(SemlaError):
    """An adapter library is unusable: its folder, its embedder record, its
    prototypes, a query from another embedder."""


class UnknownAdapterError(LibraryError, KeyError):
    """A name the library does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelError(SemlaError):
    """A model folder (or an embedder's model) is unusable."""


class ImageError(SemlaError, ValueError):
    """An image file cannot be read or decoded (truncated, corrupt, too large)."""


class ShapeError(SemlaError, ValueError):
    """An array of the wrong shape, dtype, layout or size."""


class DatasetError(SemlaError):
    """A label map or a dataset folder is unusable."""
