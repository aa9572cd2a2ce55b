"""The errors of the data layer: a :class:`SampleError` family for samples that cannot be read
(each names the offending file; ``--skip_bad_samples`` replaces such samples) and
:class:`IndexFileError` for index / split files, raised when a dataset is built."""

from __future__ import annotations

import os

from util.training.cli import UserError

__all__ = [
    "BandCountError",
    "CorruptFileError",
    "DTypeError",
    "IndexFileError",
    "InputScaleError",
    "LabelError",
    "MissingFileError",
    "NonFiniteError",
    "SampleError",
    "ShapeMismatchError",
]


class SampleError(UserError):
    """A sample cannot be read. ``path`` is the offending file.

    ``SampleError(text)`` (one argument) is how a DataLoader worker's error is re-raised in the
    main process: the type survives, ``text`` is the worker's report.
    """

    def __init__(self, path: str | os.PathLike, message: str | None = None):
        if message is None:
            self.path = ""
            super().__init__(str(path))
            return
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")


class MissingFileError(SampleError, FileNotFoundError):
    """A file named by the layout or an index does not exist."""


class CorruptFileError(SampleError):
    """The file is not a readable raster (truncated, not a TIFF, unreadable PNG, ...)."""


class BandCountError(SampleError):
    """The raster holds a different number of bands than the layout declares."""


class NonFiniteError(SampleError):
    """The raster contains NaN or Inf pixels."""


class DTypeError(SampleError):
    """The file's pixel type is not one the dataset is published in (e.g. a uint8 copy)."""


class InputScaleError(DTypeError):
    """The pixels are on no scale the model takes (8-bit, out of range, bands on mixed scales) or,
    under ``--strict_input``, on another scale than the model's (see :mod:`util.data.contract`)."""


class ShapeMismatchError(SampleError):
    """Files that must share a grid (bands of one image, two dates, image and label) do not."""


class LabelError(SampleError):
    """A label name / code is unknown, or a label file is malformed."""


class IndexFileError(ValueError):
    """An index or split file is missing, empty or malformed (raised when the dataset is built)."""

    def __init__(self, path: str | os.PathLike, message: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")
