"""The dataset base class: root and index file, band mapping, transforms, skip-bad-samples.

Every dataset class reads the layout its data is distributed in, declares the band names stored in
its files and maps them to :data:`util.data.sentinel2.MODEL_BANDS` by name. With
``transforms=None`` a sample is the raw file values as float32, in model band order, on the 10 m
grid of the files (no resize, no normalisation)::

    {"image": (12, H, W) float32, "label": int64 scalar}          # fmow_sentinel, eurosat
    {"image": (12, H, W) float32, "label": (K,) float32 multi-hot}  # bigearthnet (K = 19 or 43)
    {"image": (2, 12, H, W) float32, "mask": (H, W) int64}        # oscd (0 no change, 1 change)
    {"image": (12, H, W) float32, "mask": (H, W) int64}           # segmunich (0..12, 255 ignore)

Bad input raises a :class:`SampleError` subclass naming the file. With ``skip_bad_samples=True``
a bad sample is logged, counted (``dataset.num_skipped``, ``dataset.skipped``) and replaced on
access by the next good one (validation happens when a sample is read, not by a pre-scan, so
start-up stays instant on 700k-file datasets; counts are per DataLoader worker process).

References: torchgeo (dataset layouts, dict samples), spec §5 and §7.1/§8.1 (the paper's loaders).
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from util.data.contract import InputContract
from util.data.errors import IndexFileError, SampleError, ShapeMismatchError
from util.data.raster import BandGroups, first_existing, read_raster
from util.data.sentinel2 import MODEL_BANDS, band_indices, canonical_band

logger = logging.getLogger(__name__)

__all__ = [
    "IGNORE_INDEX",
    "RasterClassificationDataset",
    "SentinelDataset",
    "read_index_lines",
]

#: Mask value of pixels without a label (padding, unlabelled codes); losses and metrics skip it.
IGNORE_INDEX = 255


def read_index_lines(path: Path) -> list[str]:
    """Non-empty, non-comment lines of an index / split file, stripped.

    Raises:
        IndexFileError: the file is missing or holds no line.
    """
    if not path.is_file():
        raise IndexFileError(path, "index/split file not found")
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise IndexFileError(path, "index/split file is empty")
    return lines


# --------------------------------------------------------------------------------------------------
# Base classes
# --------------------------------------------------------------------------------------------------


class SentinelDataset(Dataset):
    """Common behaviour: root and index file, transforms, skip-bad-samples, band mapping.

    A subclass sets the class attributes and implements :meth:`_read_index` (fill its sample
    list from the index file), ``__len__`` and :meth:`_load` (one raw sample); its own keyword
    options are the parameters of :meth:`_set_options`.

    Args:
        root: data root.
        split: split name; the index file is the first of :attr:`split_files` that exists.
        index: explicit index file (the paper's formats); overrides ``split``.
        transforms: callable on the sample dict (see :mod:`util.data.transforms`).
        skip_bad_samples: replace an unreadable sample by the next good one (logged, counted).
        file_bands: band names stored in the files, in file order (default: the published order).
        dtypes: accept only these pixel types (numpy names); default: any type the input
            contract accepts.
        native_size: image side to check instead of the published one (0: accept any size).
        strict_input: refuse image files on another radiometric scale than the model's
            (``--strict_input``) instead of converting them.
        **options: the dataset's own options (:meth:`_set_options`).
    """

    #: registry name
    name: str = ""
    #: band names stored in the files, in file order
    file_bands: tuple[str, ...] = MODEL_BANDS
    num_classes: int = 0
    multilabel: bool = False
    classes: tuple[str, ...] = ()
    #: normalisation the paper used for this dataset in finetuning / downstream (spec §5.3)
    default_normalization: str = "minmax"
    #: normalisation the paper used when pretraining on this dataset (per-image min-max)
    pretrain_normalization: str = "minmax"
    #: pixel types accepted (numpy names; others raise DTypeError), ``None``: any type the input
    #: contract accepts (8-bit refused; float reflectance copies converted to DN, one log line)
    dtypes: tuple[str, ...] | None = None
    #: what every image read is checked against (:mod:`util.data.contract`): the model bands as
    #: digital numbers, the scale of every published archive
    contract: InputContract = InputContract()
    #: published image side (px) checked on read, ``None``: sizes vary
    native_size: int | None = None
    #: where a split's index file lives, relative to ``root`` (``{split}`` is filled in); the
    #: first that exists is read, and a missing one is reported under the first name
    split_files: tuple[str, ...] = ()

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = "train",
        index: str | os.PathLike | None = None,
        transforms: Callable[[dict], dict] | None = None,
        skip_bad_samples: bool = False,
        file_bands: Sequence[str] | None = None,
        dtypes: Sequence[str] | None = None,
        native_size: int | None = None,
        strict_input: bool = False,
        **options: Any,
    ):
        known = inspect.signature(self._set_options).parameters
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unknown options {unknown}; "
                f"its own options are {sorted(known) or 'none'}"
            )
        self._set_options(**options)
        self.transforms = transforms
        self.skip_bad_samples = skip_bad_samples
        self.strict_input = bool(strict_input)
        if file_bands is not None:
            self.file_bands = tuple(canonical_band(b) for b in file_bands)
        if dtypes is not None:
            self.dtypes = tuple(np.dtype(d).name for d in dtypes)
        if native_size is not None:
            self.native_size = int(native_size) or None  # 0: accept any size
        self._model_idx = self._model_band_indices()
        self.num_skipped = 0
        self.skipped: list[str] = []
        # skip count shared by the DataLoader workers (each holds a copy of the dataset)
        self._skip_counter = (
            torch.zeros((), dtype=torch.int64).share_memory_() if skip_bad_samples else None
        )
        self.root = Path(root)
        if index is None and split is None:
            raise ValueError(f"{self.name} needs split= or index=")
        self.index_path = Path(index) if index is not None else self.split_file(split)
        #: the split name, or the index file's stem (names the split's folders in some layouts)
        self.split = split if split is not None else self.index_path.stem
        self._read_index(self.index_path, explicit=index is not None)

    def _set_options(self) -> None:
        """Take the dataset's own keyword options (subclasses declare them as parameters)."""

    def split_file(self, split: str) -> Path:
        """Index file of ``split``: the first of :attr:`split_files` that exists."""
        return first_existing([self.root / f.format(split=split) for f in self.split_files])

    def _read_index(self, index: Path, explicit: bool) -> None:
        """Read the sample list from ``index`` (``explicit``: given as ``index=``, else the
        split's file); may point :attr:`index_path` at what it really read."""
        raise NotImplementedError

    def _model_band_indices(self) -> list[int]:
        """Positions in ``file_bands`` of the model bands (subclasses may fill missing bands)."""
        return band_indices(self.file_bands, MODEL_BANDS)

    def __len__(self) -> int:
        raise NotImplementedError

    def _load(self, index: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {self.name} of length {n}")
        index %= n
        tries = 0
        while True:
            try:
                sample = self._load(index)
                break
            except SampleError as err:
                if not self.skip_bad_samples:
                    raise
                if tries == 0 and self._skip_counter is not None:
                    self._skip_counter += 1  # one per replaced sample, however many tries
                self.num_skipped += 1
                self.skipped.append(err.path)
                logger.warning(
                    "skipping bad sample %d (%s); %d skipped so far", index, err, self.num_skipped
                )
                tries += 1
                if tries >= n:
                    raise SampleError(
                        err.path, f"every sample of this {self.name} dataset is bad"
                    ) from err
                index = (index + 1) % n
        image = sample["image"]
        if isinstance(image, BandGroups) and not getattr(
            self.transforms, "accepts_band_groups", False
        ):
            sample["image"] = image.to_grid()
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    def _read_stacked(self, path: Path) -> torch.Tensor:
        """One multi-band file holding ``file_bands``; only the model bands are decoded."""
        array = read_raster(
            path, len(self.file_bands), self._model_idx, dtypes=self.dtypes,
            contract=self.contract, strict=self.strict_input,
        )  # fmt: skip
        self._check_size(path, array.shape[-2:])
        return torch.from_numpy(array)

    def _check_size(self, path: str | os.PathLike, shape: Sequence[int]) -> None:
        n = self.native_size
        if n is not None and tuple(shape) != (n, n):
            raise ShapeMismatchError(
                path,
                f"image is {shape[0]} x {shape[1]} px, {self.name} images are {n} x {n} (the "
                "published size); for another copy declare its size (native_size=..., "
                "--native_size PX; 0 accepts any)",
            )


class RasterClassificationDataset(SentinelDataset):
    """One multi-band raster and one class index per sample (fMoW-Sentinel, EuroSAT).

    :meth:`_read_index` fills ``paths`` (image files) and ``labels`` (class indices).
    """

    paths: list[Path]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, index: int) -> dict[str, torch.Tensor]:
        image = self._read_stacked(self.paths[index])
        return {"image": image, "label": torch.tensor(self.labels[index], dtype=torch.int64)}
