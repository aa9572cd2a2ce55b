"""Sentinel-2 datasets in their published on-disk layouts, behind one registry.

Every class reads the layout the data is distributed in, declares the band names stored in its files
and maps them to :data:`util.data.sentinel2.MODEL_BANDS` by name. With ``transforms=None`` a sample is
the raw file values as float32, in model band order, on the 10 m grid of the files (no resize, no
normalisation)::

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

import csv
import json
import logging
import os
import struct
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from util.training.cli import UserError
from util.data.sentinel2 import L1C_BANDS, MODEL_BANDS, band_indices, canonical_band
from util.inference.tiling import tile_starts

logger = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "BandCountError",
    "BandGroups",
    "BigEarthNet",
    "CorruptFileError",
    "DTypeError",
    "EuroSAT",
    "FMoWSentinel",
    "IndexFileError",
    "LabelError",
    "MissingFileError",
    "NonFiniteError",
    "OSCD",
    "SampleError",
    "SegMunich",
    "ShapeMismatchError",
    "build_dataset",
    "collate",
    "raster_georef",
    "read_raster",
    "resolve_name",
]

# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


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


class ShapeMismatchError(SampleError):
    """Files that must share a grid (bands of one image, two dates, image and label) do not."""


class LabelError(SampleError):
    """A label name / code is unknown, or a label file is malformed."""


class IndexFileError(ValueError):
    """An index or split file is missing, empty or malformed (raised when the dataset is built)."""

    def __init__(self, path: str | os.PathLike, message: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")


# --------------------------------------------------------------------------------------------------
# Raster reading
# --------------------------------------------------------------------------------------------------

_RESAMPLING = ("nearest", "bilinear", "cubic")


def read_raster(
    path: str | os.PathLike,
    expected_bands: int | None = None,
    indexes: Sequence[int] | None = None,
    check_finite: bool = True,
    dtypes: Sequence[str] | None = None,
) -> np.ndarray:
    """Read a GeoTIFF band-sequentially as float32 ``(C, H, W)`` (plain uncompressed TIFFs
    directly, anything else through rasterio).

    Args:
        path: raster file.
        expected_bands: if given, the file must hold exactly this many bands.
        indexes: 0-based bands to read (default: all), in the wanted order.
        check_finite: raise :class:`NonFiniteError` on NaN/Inf (only floating-point files can
            hold them, so integer files cost nothing).
        dtypes: accepted pixel types (numpy names, e.g. ``("uint16",)``); ``None`` accepts any.

    Raises:
        MissingFileError, CorruptFileError, BandCountError, NonFiniteError, DTypeError.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(path, "file not found")
    array = _read_plain_tiff(path)
    if array is not None:
        count, is_float = array.shape[0], array.dtype.kind == "f"
        _check_dtype(path, array.dtype.name, dtypes)
        if expected_bands is not None and count != expected_bands:
            raise BandCountError(path, f"expected {expected_bands} bands, the file has {count}")
        if indexes is not None:
            array = array[list(indexes)]
        array = array.astype(np.float32, order="C")  # a writable copy, band-sequential
    else:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning, RasterioError

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(path) as src:
                    if expected_bands is not None and src.count != expected_bands:
                        raise BandCountError(
                            path, f"expected {expected_bands} bands, the file has {src.count}"
                        )
                    _check_dtype(path, np.dtype(src.dtypes[0]).name, dtypes)
                    idx = None if indexes is None else [i + 1 for i in indexes]
                    is_float = np.dtype(src.dtypes[0]).kind == "f"
                    array = src.read(idx, out_dtype="float32")
        except SampleError:
            raise
        except (RasterioError, OSError) as err:
            raise CorruptFileError(path, f"cannot read raster ({err})") from err
    if check_finite and is_float and not np.isfinite(array).all():
        raise NonFiniteError(path, "contains NaN or Inf pixels")
    return array


def _check_dtype(path: str, name: str, dtypes: Sequence[str] | None) -> None:
    if dtypes is not None and name not in dtypes:
        raise DTypeError(
            path,
            f"pixels are {name}, this dataset is published as {'/'.join(dtypes)} (digital numbers, "
            "reflectance x 10000); its fixed normalisations would shift other scales. Convert the "
            f"file, or accept the type explicitly with build_dataset(..., dtypes=({name!r}, ...))",
        )


#: TIFF tags the direct reader needs: ImageWidth, ImageLength, BitsPerSample, Compression,
#: StripOffsets, SamplesPerPixel, StripByteCounts, PlanarConfiguration, TileWidth, SampleFormat
_TIFF_TAGS = frozenset((256, 257, 258, 259, 273, 277, 279, 284, 322, 339))
_TIFF_TYPES = {3: "H", 4: "I"}  # SHORT, LONG
_TIFF_KINDS = {1: "u", 2: "i", 3: "f"}  # SampleFormat -> numpy kind


def _read_plain_tiff(path: str) -> np.ndarray | None:
    """Native-dtype ``(C, H, W)`` view of an uncompressed, striped classic TIFF (the BigEarthNet,
    EuroSAT and fMoW-Sentinel files), read with one ``read()`` and ``np.frombuffer``; ``None`` for
    anything else (compressed, tiled, BigTIFF, odd bit depths, short or malformed file), which the
    caller then reads with rasterio (which also produces the precise error for a bad file). For
    such small files opening through GDAL costs ~30x, through Pillow ~10x the read itself
    (``bench_loader.py`` component rows)."""
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        return _decode_plain_tiff(data)
    except (struct.error, IndexError, ValueError):  # a malformed directory: rasterio judges
        return None


def _decode_plain_tiff(data: bytes) -> np.ndarray | None:
    head = data[:4]
    if head == b"II*\x00":
        e = "<"
    elif head == b"MM\x00*":
        e = ">"
    else:
        return None
    tags: dict[int, tuple[int, ...]] = {}
    (ifd,) = struct.unpack_from(e + "I", data, 4)
    (n,) = struct.unpack_from(e + "H", data, ifd)
    entries = struct.unpack_from(e + "HHI4s" * n, data, ifd + 2)
    for k in range(0, 4 * n, 4):
        tag, typ, count, raw = entries[k : k + 4]
        if tag not in _TIFF_TAGS:
            continue
        code = _TIFF_TYPES.get(typ)
        if code is None:
            return None
        fmt = f"{e}{count}{code}"
        if struct.calcsize(fmt) <= 4:
            tags[tag] = struct.unpack_from(fmt, raw)
        else:
            tags[tag] = struct.unpack_from(fmt, data, struct.unpack(e + "I", raw)[0])
    if 322 in tags or tags.get(259, (1,)) != (1,) or 256 not in tags or 257 not in tags:
        return None
    width, height = tags[256][0], tags[257][0]
    spp = tags.get(277, (1,))[0]
    bits, formats = set(tags.get(258, (1,))), set(tags.get(339, (1,)))
    if len(bits) != 1 or len(formats) != 1:  # one data type for all bands
        return None
    b, kind = bits.pop(), _TIFF_KINDS.get(formats.pop())
    if kind is None or b not in (8, 16, 32, 64):
        return None
    dtype = np.dtype(f"{e}{kind}{b // 8}")
    offsets, counts = tags.get(273, ()), tags.get(279, ())
    count = width * height * spp
    if (
        not offsets
        or len(offsets) != len(counts)
        or sum(counts) != count * dtype.itemsize
        or max(o + c for o, c in zip(offsets, counts)) > len(data)
    ):
        return None
    start, pos = offsets[0], offsets[0]
    for o, c in zip(offsets, counts):  # strips are normally back to back: a view of the bytes
        if o != pos:
            data, start = b"".join(data[o : o + c] for o, c in zip(offsets, counts)), 0
            break
        pos += c
    array = np.frombuffer(data, dtype, count=count, offset=start)
    if spp == 1 or tags.get(284, (1,))[0] == 2:  # one band, or band-sequential planes
        return array.reshape(spp, height, width)
    return array.reshape(height, width, spp).transpose(2, 0, 1)  # pixel-interleaved


class BandGroups:
    """The bands of one patch at their native resolutions, before any resampling.

    ``groups`` holds ``(band positions, (c, h, w) float32)`` per file size, ``shape`` the output
    grid (the largest band's size, e.g. BigEarthNet's 10 m 120 px) and ``resampling`` how
    :meth:`to_grid` brings the other sizes onto it. Datasets return this only to a transform that
    declares ``accepts_band_groups`` (the training transform then resamples each group once, from
    its own grid straight to the output size); everyone else gets :meth:`to_grid`.
    """

    __slots__ = ("groups", "shape", "resampling", "num_bands")

    def __init__(
        self,
        groups: list[tuple[list[int], torch.Tensor]],
        shape: tuple[int, int],
        resampling: str | None,
    ):
        self.groups, self.shape, self.resampling = groups, shape, resampling
        self.num_bands = sum(len(idx) for idx, _ in groups)

    def to_grid(self) -> torch.Tensor:
        """``(C, H, W)`` float32 on ``shape``: bands of another size resampled with
        ``torch.nn.functional.interpolate``."""
        import torch.nn.functional as F

        out = torch.empty((self.num_bands, *self.shape), dtype=torch.float32)
        for idx, group in self.groups:
            if tuple(group.shape[-2:]) != self.shape:
                mode = {"bilinear": "bilinear", "cubic": "bicubic", "nearest": "nearest-exact"}[
                    self.resampling
                ]
                kwargs = {} if mode == "nearest-exact" else {"align_corners": False}
                group = F.interpolate(group[None], size=self.shape, mode=mode, **kwargs)[0]
            out[idx] = group
        return out


def read_band_groups(
    paths: Sequence[str | os.PathLike],
    out_shape: tuple[int, int] | None = None,
    resampling: str | None = "bilinear",
    check_finite: bool = True,
    dtypes: Sequence[str] | None = None,
) -> BandGroups:
    """Read single-band rasters as float32, grouped by size, without resampling
    (:func:`read_band_files` puts them on one grid). Arguments and errors as there."""
    if resampling is not None and resampling not in _RESAMPLING:
        raise ValueError(f"resampling must be one of {_RESAMPLING}, got {resampling!r}")
    by_shape: dict[tuple[int, int], tuple[list[int], list[np.ndarray]]] = {}
    for i, p in enumerate(paths):
        arr = read_raster(p, expected_bands=1, check_finite=check_finite, dtypes=dtypes)
        idx, arrays = by_shape.setdefault(arr.shape[-2:], ([], []))
        idx.append(i)
        arrays.append(arr[0])
    shape = tuple(out_shape) if out_shape is not None else max(by_shape)
    if resampling is None:
        for src_shape, (idx, _) in by_shape.items():
            if src_shape != shape:
                raise ShapeMismatchError(
                    paths[idx[0]], f"band size {src_shape} != {shape} of the other bands"
                )
    groups = [(idx, torch.from_numpy(np.stack(arrays))) for idx, arrays in by_shape.values()]
    return BandGroups(groups, shape, resampling)


def read_band_files(
    paths: Sequence[str | os.PathLike],
    out_shape: tuple[int, int] | None = None,
    resampling: str | None = "bilinear",
    check_finite: bool = True,
    dtypes: Sequence[str] | None = None,
) -> torch.Tensor:
    """Read single-band rasters and stack them as float32 ``(C, H, W)`` on one grid.

    Bands of another size (e.g. 20/60 m bands of a 10 m patch) are resampled to ``out_shape``
    (default: the largest band, i.e. the 10 m grid) with ``torch.nn.functional.interpolate``: ``bilinear``
    (matches GDAL's bilinear, which torchgeo uses, to 0.5 DN), ``cubic`` (torch bicubic, a=-0.75)
    or ``nearest`` (pixel-centre nearest); ``None`` requires all files to share one size.

    Raises:
        MissingFileError, CorruptFileError, BandCountError, NonFiniteError, ShapeMismatchError.
    """
    return read_band_groups(paths, out_shape, resampling, check_finite, dtypes).to_grid()


def _read_png_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a grayscale PNG label map as uint8 ``(H, W)``."""
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(path, "file not found")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L"))
    except (UnidentifiedImageError, OSError) as err:
        raise CorruptFileError(path, f"cannot read image ({err})") from err


def _first_existing(candidates: Sequence[Path]) -> Path:
    """First candidate that exists, else the first one (so the error names the canonical path)."""
    for c in candidates:
        if c.exists():
            return c
    return candidates[0]


def raster_georef(path: str | os.PathLike) -> dict[str, Any]:
    """``{"path", "height", "width", "crs", "transform"}`` of a raster (header only; CRS as WKT
    or None, transform as the 6 GDAL-order affine coefficients ``a, b, c, d, e, f``)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(path, "file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return {
                    "path": path,
                    "height": src.height,
                    "width": src.width,
                    "crs": src.crs.to_wkt() if src.crs else None,
                    "transform": list(src.transform)[:6],
                }
    except RasterioError as err:
        raise CorruptFileError(path, f"cannot read raster ({err})") from err


# --------------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------------


class SentinelDataset(Dataset):
    """Common behaviour: transforms, skip-bad-samples, band mapping.

    Subclasses implement ``_load(index) -> sample dict`` and set the class attributes.
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
    #: pixel types the image files are published in (numpy names); others raise DTypeError
    dtypes: tuple[str, ...] = ("uint16",)
    #: published image side (px) checked on read, ``None``: sizes vary
    native_size: int | None = None

    def __init__(
        self,
        transforms: Callable[[dict], dict] | None = None,
        skip_bad_samples: bool = False,
        file_bands: Sequence[str] | None = None,
        dtypes: Sequence[str] | None = None,
        native_size: int | None = None,
    ):
        self.transforms = transforms
        self.skip_bad_samples = skip_bad_samples
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
            path, expected_bands=len(self.file_bands), indexes=self._model_idx, dtypes=self.dtypes
        )
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


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise IndexFileError(path, "index/split file not found")
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise IndexFileError(path, "index/split file is empty")
    return lines


# --------------------------------------------------------------------------------------------------
# fMoW-Sentinel
# --------------------------------------------------------------------------------------------------

FMOW_CATEGORIES: tuple[str, ...] = (
    "airport", "airport_hangar", "airport_terminal", "amusement_park", "aquaculture",
    "archaeological_site", "barn", "border_checkpoint", "burial_site", "car_dealership",
    "construction_site", "crop_field", "dam", "debris_or_rubble", "educational_institution",
    "electric_substation", "factory_or_powerplant", "fire_station", "flooded_road", "fountain",
    "gas_station", "golf_course", "ground_transportation_station", "helipad", "hospital",
    "impoverished_settlement", "interchange", "lake_or_pond", "lighthouse", "military_facility",
    "multi-unit_residential", "nuclear_powerplant", "office_building", "oil_or_gas_facility", "park",
    "parking_lot_or_garage", "place_of_worship", "police_station", "port", "prison", "race_track",
    "railway_bridge", "recreational_facility", "road_bridge", "runway", "shipyard", "shopping_mall",
    "single-unit_residential", "smokestack", "solar_farm", "space_facility", "stadium",
    "storage_tank", "surface_mine", "swimming_pool", "toll_booth", "tower", "tunnel_opening",
    "waste_disposal", "water_treatment_facility", "wind_farm", "zoo",
)  # fmt: skip
FMOW_COLUMNS = ("category", "location_id", "image_id", "timestamp")


class FMoWSentinel(SentinelDataset):
    """fMoW-Sentinel (13-band L1C GeoTIFFs of varying size) indexed by the CSV of spec §5.5.

    ``root`` is the folder the CSV's ``image_path`` column is relative to (the paper's hard-coded
    prefix); absolute ``image_path`` values are used as they are. Without an ``image_path`` column
    the path is derived as ``fmow-sentinel/<split>/<cat>/<cat>_<loc>/<cat>_<loc>_<img>.tif``.

    Args:
        root: data root.
        split: ``train`` / ``val`` / ``test_gt``: reads ``<root>/fmow-sentinel/<split>.csv`` (or
            ``<root>/<split>.csv``).
        index: explicit CSV path (the paper's ``--train_path``); overrides ``split``.
        years: inclusive year range kept (paper: 2000..2020); ``None`` keeps every row.
        transforms, skip_bad_samples, file_bands: see :class:`SentinelDataset`.
    """

    name = "fmow_sentinel"
    file_bands = L1C_BANDS
    num_classes = len(FMOW_CATEGORIES)
    classes = FMOW_CATEGORIES
    default_normalization = "minmax"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = "train",
        index: str | os.PathLike | None = None,
        transforms: Callable[[dict], dict] | None = None,
        years: tuple[int, int] | None = (2000, 2020),
        skip_bad_samples: bool = False,
        file_bands: Sequence[str] | None = None,
        dtypes: Sequence[str] | None = None,
        native_size: int | None = None,
    ):
        super().__init__(transforms, skip_bad_samples, file_bands, dtypes, native_size)
        import pandas as pd

        self.root = Path(root)
        if index is None:
            if split is None:
                raise ValueError("fmow_sentinel needs split= or index=")
            index = _first_existing(
                [self.root / "fmow-sentinel" / f"{split}.csv", self.root / f"{split}.csv"]
            )
        index = Path(index)
        if not index.is_file():
            raise IndexFileError(index, "index CSV not found")
        try:
            df = pd.read_csv(index)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise IndexFileError(index, f"malformed CSV ({err})") from err
        missing = [c for c in FMOW_COLUMNS if c not in df.columns]
        if missing:
            raise IndexFileError(index, f"missing columns {missing}; has {list(df.columns)}")
        if len(df) == 0:
            raise IndexFileError(index, "index CSV has no rows")
        unknown = sorted(set(df["category"]) - set(FMOW_CATEGORIES))
        if unknown:
            raise IndexFileError(index, f"unknown fMoW categories {unknown[:5]}")
        if years is not None:
            ts = pd.to_datetime(df["timestamp"], errors="coerce", utc=True, format="ISO8601")
            if ts.isna().any():
                bad = df["timestamp"][ts.isna()].iloc[0]
                raise IndexFileError(index, f"unparseable timestamp {bad!r}")
            keep = (ts.dt.year >= years[0]) & (ts.dt.year <= years[1])
            df = df[keep.to_numpy()]
            if len(df) == 0:
                raise IndexFileError(index, f"no rows with a year in {years[0]}..{years[1]}")
        if "image_path" in df.columns:
            rel = df["image_path"].astype(str).tolist()
        else:
            sp = split or index.stem
            rel = [
                f"fmow-sentinel/{sp}/{c}/{c}_{loc}/{c}_{loc}_{img}.tif"
                for c, loc, img in zip(df["category"], df["location_id"], df["image_id"])
            ]
        self.index_path = index
        self.root = self._image_root(rel, index)
        self.paths = [self.root / p for p in rel]  # an absolute p replaces root
        lookup = {c: i for i, c in enumerate(FMOW_CATEGORIES)}
        self.labels = [lookup[c] for c in df["category"]]

    def _image_root(self, rel: list[str], index: Path) -> Path:
        """Folder the CSV's relative ``image_path`` values resolve against.

        ``root`` first; then the CSV's folder and its parent: the official ``train.csv`` lives in
        ``<data>/fmow-sentinel/`` and its paths start with ``fmow-sentinel/...``, so they resolve
        against ``<data>``. The first folder holding the first rows' files wins (logged when it
        is not ``root``); if none does, ``root`` is kept and reads name the missing file there.
        """
        probe = [p for p in rel[:3] if not Path(p).is_absolute()]
        if not probe:
            return self.root
        candidates = [self.root, index.parent, index.parent.parent]
        for base in dict.fromkeys(candidates):
            if all((base / p).is_file() for p in probe):
                if base != self.root:
                    logger.info(
                        "%s: image paths resolved against %s (not %s), where the files are",
                        index,
                        base,
                        self.root,
                    )
                return base
        return self.root

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, index: int) -> dict[str, torch.Tensor]:
        image = self._read_stacked(self.paths[index])
        return {"image": image, "label": torch.tensor(self.labels[index], dtype=torch.int64)}


# --------------------------------------------------------------------------------------------------
# BigEarthNet-S2 v1
# --------------------------------------------------------------------------------------------------

#: BigEarthNet's 43 CORINE land-cover names, in the official label-index order.
BEN43_CLASSES: tuple[str, ...] = (
    "Continuous urban fabric", "Discontinuous urban fabric", "Industrial or commercial units",
    "Road and rail networks and associated land", "Port areas", "Airports",
    "Mineral extraction sites", "Dump sites", "Construction sites", "Green urban areas",
    "Sport and leisure facilities", "Non-irrigated arable land", "Permanently irrigated land",
    "Rice fields", "Vineyards", "Fruit trees and berry plantations", "Olive groves", "Pastures",
    "Annual crops associated with permanent crops", "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest",
    "Natural grassland", "Moors and heathland", "Sclerophyllous vegetation",
    "Transitional woodland/shrub", "Beaches, dunes, sands", "Bare rock", "Sparsely vegetated areas",
    "Burnt areas", "Inland marshes", "Peatbogs", "Salt marshes", "Salines", "Intertidal flats",
    "Water courses", "Water bodies", "Coastal lagoons", "Estuaries", "Sea and ocean",
)  # fmt: skip

#: BigEarthNet-19 nomenclature, in index order (spec §5.5).
BEN19_CLASSES: tuple[str, ...] = (
    "Urban fabric", "Industrial or commercial units", "Arable land", "Permanent crops", "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation", "Transitional woodland/shrub",
    "Beaches, dunes, sands", "Inland wetlands", "Coastal wetlands", "Inland waters",
    "Marine waters",
)  # fmt: skip

_BEN_GROUPS = {
    "Urban fabric": ("Continuous urban fabric", "Discontinuous urban fabric"),
    "Arable land": ("Non-irrigated arable land", "Permanently irrigated land", "Rice fields"),
    "Permanent crops": (
        "Vineyards", "Fruit trees and berry plantations", "Olive groves",
        "Annual crops associated with permanent crops",
    ),
    "Natural grassland and sparsely vegetated areas": ("Natural grassland", "Sparsely vegetated areas"),
    "Moors, heathland and sclerophyllous vegetation": ("Moors and heathland", "Sclerophyllous vegetation"),
    "Inland wetlands": ("Inland marshes", "Peatbogs"),
    "Coastal wetlands": ("Salt marshes", "Salines"),
    "Inland waters": ("Water bodies", "Water courses"),
    "Marine waters": ("Coastal lagoons", "Estuaries", "Sea and ocean"),
}  # fmt: skip

#: 43-name -> 19-class index; names absent here (roads, ports, bare rock, ...) have no 19-class label.
BEN43_TO_19: dict[str, int] = {
    **{n: BEN19_CLASSES.index(n) for n in BEN43_CLASSES if n in BEN19_CLASSES},
    **{n: BEN19_CLASSES.index(g) for g, names in _BEN_GROUPS.items() for n in names},
}


class BigEarthNet(SentinelDataset):
    """BigEarthNet-S2 v1 patches: one GeoTIFF per band, or the paper's pre-stacked 12-band tif.

    Layouts read (auto-detected per patch):

    * official: ``<root>[/BigEarthNet-v1.0]/<patch>/<patch>_B01.tif`` ... ``_B12.tif``, ``_B8A.tif``
      (10/20/60 m bands at native size: 120/60/20 px), resampled on read to the 10 m grid;
    * paper: ``<root>/<patch>/<patch>.tif`` (12 bands in model order, already on one grid).

    Labels come from ``<patch>_labels_metadata.json`` (``labels``: CORINE names).

    Args:
        root: data root.
        split: ``train``/``val``/``test``: official ``<root>/bigearthnet-<split>.csv`` (rows
            ``s2_name,s1_name``), falling back to the paper's ``<root>/bigearthnet_<split>.txt``.
        index: explicit index: a plain id list (one patch id per line, the paper's
            ``bigearthnet_*.txt``), an official split CSV, or the paper's pretraining CSV with an
            ``image_path`` column (``<id>/<id>.tif``).
        num_classes: 19 (BigEarthNet-19, default) or 43 (original CORINE names).
        resampling: interpolation of the 20/60 m bands onto the 10 m grid: ``bilinear``
            (default, like torchgeo), ``cubic`` or ``nearest``. Used for raw samples and the eval
            transform; the training transform (random resized crop) instead samples every band
            bicubically from its own native grid straight to the output size.
        stacked: ``True`` reads only ``<patch>.tif``, ``False`` only the per-band files, ``None``
            (default) the stacked file when it exists.
        load_labels: ``False`` skips the metadata JSON (``label`` is then absent); ``None``
            (default) loads labels except when ``index`` is the paper's pretraining CSV.
    """

    name = "bigearthnet"
    file_bands = MODEL_BANDS
    multilabel = True
    num_classes = 19
    classes = BEN19_CLASSES
    default_normalization = "sentinel_2sigma_fmow"
    pretrain_normalization = "minmax"
    subdirs = ("", "BigEarthNet-v1.0")

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = "train",
        index: str | os.PathLike | None = None,
        transforms: Callable[[dict], dict] | None = None,
        num_classes: int = 19,
        resampling: str = "bilinear",
        stacked: bool | None = None,
        load_labels: bool | None = None,
        skip_bad_samples: bool = False,
        file_bands: Sequence[str] | None = None,
        dtypes: Sequence[str] | None = None,
        native_size: int | None = None,
    ):
        super().__init__(transforms, skip_bad_samples, file_bands, dtypes, native_size)
        if num_classes not in (19, 43):
            raise ValueError(f"bigearthnet num_classes must be 19 or 43, got {num_classes}")
        if resampling not in _RESAMPLING:
            raise ValueError(f"resampling must be one of {_RESAMPLING}, got {resampling!r}")
        self.root = Path(root)
        self.num_classes = num_classes
        self.classes = BEN19_CLASSES if num_classes == 19 else BEN43_CLASSES
        self.resampling = resampling
        self.stacked = stacked
        if index is None:
            if split is None:
                raise ValueError("bigearthnet needs split= or index=")
            index = _first_existing(
                [self.root / f"bigearthnet-{split}.csv", self.root / f"bigearthnet_{split}.txt"]
            )
        self.index_path = Path(index)
        self.patches, is_pretrain_csv = self._parse_index(self.index_path)
        self.load_labels = (not is_pretrain_csv) if load_labels is None else load_labels

    @staticmethod
    def _parse_index(path: Path) -> tuple[list[str], bool]:
        """Patch ids of an index file, and whether it is the paper's pretraining CSV."""
        lines = _read_lines(path)
        first = lines[0].split(",")
        if "image_path" in first:  # the paper's pretraining CSV: ,category,image_path
            col = first.index("image_path")
            ids = []
            for n, ln in enumerate(lines[1:], start=2):
                cells = next(csv.reader([ln]))
                if len(cells) <= col:
                    raise IndexFileError(path, f"line {n}: expected an image_path column: {ln!r}")
                ids.append(Path(cells[col]).parent.name or Path(cells[col]).stem)
            if not ids:
                raise IndexFileError(path, "index has a header but no rows")
            return ids, True
        ids = []
        if lines[0].split(",")[0].strip().lower() in ("s2_name", "patch_id", "name", "id"):
            lines = lines[1:]  # an optional header row
            if not lines:
                raise IndexFileError(path, "index has a header but no rows")
        for n, ln in enumerate(lines, start=1):
            pid = ln.split(",")[0].strip()  # official CSV: s2_name,s1_name ; plain list: id
            if not pid or any(ch.isspace() for ch in pid) or pid.count("_") < 3:
                raise IndexFileError(path, f"line {n}: not a BigEarthNet patch id: {ln!r}")
            ids.append(pid)
        return ids, False

    def __len__(self) -> int:
        return len(self.patches)

    def patch_dir(self, patch: str) -> Path:
        """Folder holding ``patch`` (the first of ``<root>/<patch>``, ``<root>/BigEarthNet-v1.0/<patch>``)."""
        return _first_existing([self.root / sub / patch for sub in self.subdirs])

    def _read_bands(self, folder: Path, patch: str) -> BandGroups:
        # grid = the 10 m bands' size (B02); 20/60 m bands are resampled onto it (to_grid), or
        # straight to the output by a transform that accepts band groups (training crop)
        paths = [folder / f"{patch}_{band}.tif" for band in MODEL_BANDS]
        return read_band_groups(paths, resampling=self.resampling, dtypes=self.dtypes)

    def labels_of(self, folder: Path, patch: str) -> torch.Tensor:
        """Multi-hot target from ``<patch>_labels_metadata.json``."""
        path = folder / f"{patch}_labels_metadata.json"
        if not path.is_file():
            raise MissingFileError(path, "file not found")
        try:
            names = json.loads(path.read_text())["labels"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
            raise LabelError(path, f"malformed labels metadata ({err!r})") from err
        if not isinstance(names, list):
            raise LabelError(path, "'labels' must be a list of CORINE names")
        target = torch.zeros(self.num_classes, dtype=torch.float32)
        for name in names:
            if name not in BEN43_CLASSES:
                raise LabelError(path, f"unknown label name {name!r}")
            if self.num_classes == 43:
                target[BEN43_CLASSES.index(name)] = 1.0
            elif name in BEN43_TO_19:
                target[BEN43_TO_19[name]] = 1.0
        return target

    def _load(self, index: int) -> dict[str, torch.Tensor]:
        patch = self.patches[index]
        folder = self.patch_dir(patch)
        stacked_file = folder / f"{patch}.tif"
        use_stacked = self.stacked if self.stacked is not None else stacked_file.is_file()
        if use_stacked:
            image = self._read_stacked(stacked_file)
        else:
            image = self._read_bands(folder, patch)
        sample = {"image": image}
        if self.load_labels:
            sample["label"] = self.labels_of(folder, patch)
        return sample


# --------------------------------------------------------------------------------------------------
# EuroSAT-MS
# --------------------------------------------------------------------------------------------------

EUROSAT_CLASSES: tuple[str, ...] = (
    "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
    "PermanentCrop", "Residential", "River", "SeaLake",
)  # fmt: skip
#: Band order inside the official EuroSAT-MS GeoTIFFs: B8A is stored LAST (spec §5.1).
EUROSAT_FILE_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A",
)  # fmt: skip
EUROSAT_SUBDIR = "ds/images/remote_sensing/otherDatasets/sentinel_2"


class EuroSAT(SentinelDataset):
    """EuroSAT-MS: class folders ``tif/<Class>/<Class>_<n>.tif`` of 13-band 64 px GeoTIFFs.

    ``root`` may be the extracted archive root (``<root>/ds/images/.../sentinel_2/tif``) or the
    folder holding ``tif/`` directly (the paper's ``data/``).

    Args:
        split: ``train``/``val``/``test``: torchgeo split files ``<root>/eurosat-<split>.txt``
            listing ``<Class>_<n>.jpg`` names; ``all``: every tif of the class folders.
        index: the paper's index file (``<relative path><whitespace><label>`` per line, paths like
            ``tif/Residential/Residential_2029.tif`` relative to ``root``); overrides ``split``.
        file_bands: band order of the files (default: official order, B8A last); pass
            ``util.data.sentinel2.L1C_BANDS`` for copies re-ordered with B8A after B08.
    """

    name = "eurosat"
    file_bands = EUROSAT_FILE_BANDS
    num_classes = 10
    classes = EUROSAT_CLASSES
    default_normalization = "zscore_eurosat"
    native_size = 64  # every EuroSAT-MS image is 64 x 64 px

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
    ):
        super().__init__(transforms, skip_bad_samples, file_bands, dtypes, native_size)
        self.root = Path(root)
        base = _first_existing([self.root / EUROSAT_SUBDIR, self.root])
        if index is not None:
            index = Path(index)
            self.index_path = index
            self.paths, self.labels = [], []
            for n, ln in enumerate(_read_lines(index), start=1):
                parts = ln.split()
                if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                    raise IndexFileError(index, f"line {n}: expected '<path> <label>', got {ln!r}")
                label = int(parts[1])
                if not 0 <= label < self.num_classes:
                    raise IndexFileError(index, f"line {n}: label {label} outside 0..9")
                rel = Path(parts[0])
                self.paths.append(
                    rel if rel.is_absolute() else _first_existing([self.root / rel, base / rel])
                )
                self.labels.append(label)
        elif split == "all":  # every tif of the class folders (no split files needed)
            self.index_path = base / "tif"
            self.paths, self.labels = [], []
            for label, cls in enumerate(EUROSAT_CLASSES):
                found = sorted((base / "tif" / cls).glob("*.tif"))
                self.paths += found
                self.labels += [label] * len(found)
            if not self.paths:
                raise IndexFileError(base / "tif", "no <Class>/<Class>_<n>.tif files found")
        else:
            if split is None:
                raise ValueError("eurosat needs split= or index=")
            split_file = self.root / f"eurosat-{split}.txt"
            self.index_path = split_file
            self.paths, self.labels = [], []
            for n, ln in enumerate(_read_lines(split_file), start=1):
                stem = Path(ln).stem
                cls = stem.rsplit("_", 1)[0]
                if cls not in EUROSAT_CLASSES:
                    raise IndexFileError(split_file, f"line {n}: unknown EuroSAT class in {ln!r}")
                self.paths.append(base / "tif" / cls / f"{stem}.tif")
                self.labels.append(EUROSAT_CLASSES.index(cls))

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, index: int) -> dict[str, torch.Tensor]:
        image = self._read_stacked(self.paths[index])
        return {"image": image, "label": torch.tensor(self.labels[index], dtype=torch.int64)}


# --------------------------------------------------------------------------------------------------
# OSCD
# --------------------------------------------------------------------------------------------------

OSCD_IMAGES = "Onera Satellite Change Detection dataset - Images"
OSCD_LABELS = (
    "Onera Satellite Change Detection dataset - Train Labels",
    "Onera Satellite Change Detection dataset - Test Labels",
)


class OSCD(SentinelDataset):
    """Onera Satellite Change Detection: two dates per city, one GeoTIFF per band, change map PNG.

    Reads the official layout (``<root>/Onera ... - Images/<city>/imgs_{1,2}_rect/B01.tif``,
    ``<root>/Onera ... - {Train,Test} Labels/<city>/cm/cm.png``, city lists ``train.txt`` /
    ``test.txt`` = one comma-separated line) or the paper's merged copy (everything under
    ``<root>/<city>/``, lists in ``<root>``). The ``_rect`` bands are already co-registered on the
    10 m grid and are read as they are (no second zoom, spec §7.1).

    Args:
        split: ``train`` or ``test`` (city list file).
        index: explicit city-list file.
        patch_size: if set, the dataset yields ``patch_size`` tiles with ``stride`` (default
            ``patch_size // 2 - 1`` as in the paper), the last row/column aligned to the border so
            every pixel is covered; ``None`` yields whole city images (sizes differ per city).
            With tiles, each worker keeps the cities it has read in memory as float32
            (~35 MB for a 600 x 600 px city; the 14 training cities fit in ~0.5 GB).
    """

    name = "oscd"
    file_bands = MODEL_BANDS  # one file per band; B10 is never read
    num_classes = 2
    classes = ("no change", "change")
    default_normalization = "minmax"
    dtypes = ("uint16", "int16", "float32")  # copies exist in each; 8-bit ones are not L1C DN

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = "train",
        index: str | os.PathLike | None = None,
        transforms: Callable[[dict], dict] | None = None,
        patch_size: int | None = None,
        stride: int | None = None,
        skip_bad_samples: bool = False,
        file_bands: Sequence[str] | None = None,
        dtypes: Sequence[str] | None = None,
        native_size: int | None = None,
    ):
        super().__init__(transforms, skip_bad_samples, file_bands, dtypes, native_size)
        self.root = Path(root)
        image_base = _first_existing([self.root / OSCD_IMAGES, self.root])
        if index is None:
            if split is None:
                raise ValueError("oscd needs split= or index=")
            index = _first_existing([image_base / f"{split}.txt", self.root / f"{split}.txt"])
        index = Path(index)
        self.index_path = index
        cities = [c.strip() for ln in _read_lines(index) for c in ln.split(",") if c.strip()]
        if not cities:
            raise IndexFileError(index, "no city names")
        self.cities = cities
        self.image_dirs = [image_base / c for c in cities]
        self.layout = "official" if (self.root / OSCD_IMAGES).is_dir() else "merged"
        if (
            self.layout == "official"
        ):  # change maps under "... - Train Labels" / "... - Test Labels"
            first = (
                OSCD_LABELS[1]
                if (split or index.stem).lower().startswith("test")
                else OSCD_LABELS[0]
            )
            subs = (first, *(d for d in OSCD_LABELS if d != first))
        else:  # the paper's merged copy: <root>/<city>/cm/cm.png
            subs = ("",)
        self.label_files = [
            _first_existing([self.root / sub / c / "cm" / "cm.png" for sub in subs]) for c in cities
        ]
        self.patch_size = patch_size
        self.stride = (
            stride if stride is not None else (patch_size // 2 - 1 if patch_size else None)
        )
        self.tiles: list[tuple[int, int, int]] = []
        if patch_size is not None:
            self._cache: dict[int, dict[str, torch.Tensor]] = {}
            for ci, d in enumerate(self.image_dirs):
                h, w = self._shape(d / "imgs_1_rect" / "B04.tif")
                for r in tile_starts(h, patch_size, self.stride):
                    for c in tile_starts(w, patch_size, self.stride):
                        self.tiles.append((ci, r, c))

    @staticmethod
    def _shape(path: Path) -> tuple[int, int]:
        import rasterio

        if not path.is_file():
            raise MissingFileError(path, "file not found")
        try:
            with rasterio.open(path) as src:
                return src.height, src.width
        except rasterio.errors.RasterioError as err:
            raise CorruptFileError(path, f"cannot read raster ({err})") from err

    def __len__(self) -> int:
        return len(self.tiles) if self.patch_size is not None else len(self.cities)

    def scene_info(self, index: int) -> dict[str, Any]:
        """Whole-city record: ``name`` (city) plus :func:`raster_georef` of date 1's B04."""
        return {
            "name": self.cities[index],
            **raster_georef(self.image_dirs[index] / "imgs_1_rect" / "B04.tif"),
        }

    def _read_date(self, folder: Path) -> torch.Tensor:
        # official `_rect` names are B01.tif ...; the paper also accepts "<prefix>B01.tif"
        names = os.listdir(folder) if folder.is_dir() else []
        paths = []
        for band in MODEL_BANDS:
            hits = sorted(n for n in names if n.endswith(f"{band}.tif"))
            paths.append(folder / (hits[0] if hits else f"{band}.tif"))  # missing -> named error
        return read_band_files(paths, resampling=None, dtypes=self.dtypes)

    def _load_city(self, ci: int) -> dict[str, torch.Tensor]:
        d = self.image_dirs[ci]
        d1, d2 = self._read_date(d / "imgs_1_rect"), self._read_date(d / "imgs_2_rect")
        if d1.shape != d2.shape:
            raise ShapeMismatchError(
                d / "imgs_2_rect", f"date 2 is {tuple(d2.shape[1:])}, date 1 {tuple(d1.shape[1:])}"
            )
        cm = _read_png_mask(self.label_files[ci])
        if cm.shape != tuple(d1.shape[1:]):
            raise ShapeMismatchError(
                self.label_files[ci], f"change map {cm.shape} != image {tuple(d1.shape[1:])}"
            )
        return {
            "image": torch.stack([d1, d2]),
            "mask": torch.from_numpy((cm != 0).astype(np.int64)),
        }

    def _load(self, index: int) -> dict[str, torch.Tensor]:
        if self.patch_size is None:
            return self._load_city(index)
        ci, r, c = self.tiles[index]
        if ci not in self._cache:  # whole cities are small (<= ~1.2k px side); keep them
            self._cache[ci] = self._load_city(ci)
        city = self._cache[ci]
        p = self.patch_size
        return {
            "image": city["image"][..., r : r + p, c : c + p].clone(),
            "mask": city["mask"][r : r + p, c : c + p].clone(),
        }


# --------------------------------------------------------------------------------------------------
# SegMunich
# --------------------------------------------------------------------------------------------------

#: Bands of the SegMunich (TUM_128) images, in file order (maintainer, SpectralGPT issue #31).
SEGMUNICH_FILE_BANDS: tuple[str, ...] = (
    "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12",
)  # fmt: skip
#: Raw label code -> training index (the paper's remap; all 13 codes of the data set).
SEGMUNICH_CODES: dict[int, int] = {
    0: 0, 21: 1, 22: 2, 23: 3, 31: 4, 5: 5, 32: 6, 33: 7, 41: 8, 13: 9, 14: 10, 11: 11, 12: 12,
}  # fmt: skip
SEGMUNICH_CLASSES: tuple[str, ...] = (
    "background",
    "arable land",
    "permanent crops",
    "pastures",
    "forests",
    "water",
    "shrub and herbaceous vegetation",
    "open spaces with little or no vegetation",
    "wetlands",
    "mine, dump and construction sites",
    "artificial non-agricultural vegetated areas",
    "urban fabric",
    "industrial, commercial and transport units",
)  # fmt: skip  (CORINE level-2 reading of the codes; the paper names none)
IGNORE_INDEX = 255
#: How the two bands SegMunich lacks (B01, B09) are filled (see README, "Differences").
SEGMUNICH_FILL = {
    "neighbour": {"B01": "B02", "B09": "B8A"},  # nearest measured wavelength, same units
    "band_mean": None,  # per-pixel mean of the 10 bands (the paper's value, put in the right slots)
}


class SegMunich(SentinelDataset):
    """SegMunich (TUM_128): ``<root>/<mode>/img/<stem>.tif`` (10 bands), ``label/<stem>.tif``.

    The 10 bands B02..B12 are placed in their model slots; B01 and B09 are filled by ``fill``:
    ``"neighbour"`` (default: B01 <- B02, B09 <- B8A, the nearest measured wavelengths, so the value
    range and per-band min-max behave like real bands) or ``"band_mean"`` (per-pixel mean over the
    10 bands - the paper's filler, but placed in the B01/B09 slots instead of appended). Label codes
    are remapped to 0..12 (255 stays ignore; any other code is a :class:`LabelError`).

    Args:
        split: ``train`` / ``test``: stems from ``<root>/dataset/<split>.txt``; images under
            ``<root>/<split>/``.
        index: explicit stem list; images are then looked up under ``<root>/<split or index stem>``.
    """

    name = "segmunich"
    file_bands = SEGMUNICH_FILE_BANDS
    num_classes = len(SEGMUNICH_CLASSES)
    classes = SEGMUNICH_CLASSES
    default_normalization = "minmax"
    dtypes = ("uint16", "int16", "float32")  # copies exist in each; 8-bit ones are not L1C DN

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = "train",
        index: str | os.PathLike | None = None,
        transforms: Callable[[dict], dict] | None = None,
        fill: str = "neighbour",
        skip_bad_samples: bool = False,
        file_bands: Sequence[str] | None = None,
        dtypes: Sequence[str] | None = None,
        native_size: int | None = None,
    ):
        if fill not in SEGMUNICH_FILL:
            raise ValueError(f"fill must be one of {tuple(SEGMUNICH_FILL)}, got {fill!r}")
        self.fill = fill
        super().__init__(transforms, skip_bad_samples, file_bands, dtypes, native_size)
        self.root = Path(root)
        if index is None:
            if split is None:
                raise ValueError("segmunich needs split= or index=")
            index = self.root / "dataset" / f"{split}.txt"
        index = Path(index)
        self.index_path = index
        self.mode = split if split is not None else index.stem
        self.stems = [Path(s).stem for s in _read_lines(index)]
        lut = np.full(256, -1, dtype=np.int64)
        for code, idx in SEGMUNICH_CODES.items():
            lut[code] = idx
        lut[IGNORE_INDEX] = IGNORE_INDEX
        self._lut = lut

    def _model_band_indices(self) -> list[int]:
        present = {b: i for i, b in enumerate(self.file_bands)}
        rule = SEGMUNICH_FILL[self.fill]
        out = []
        for b in MODEL_BANDS:
            if b in present:
                out.append(present[b])
            elif rule is None:
                out.append(-1)  # the appended per-pixel band mean
            elif rule.get(b) in present:
                out.append(present[rule[b]])
            else:
                raise KeyError(f"band {b} is neither stored nor fillable from {self.file_bands}")
        return out

    def __len__(self) -> int:
        return len(self.stems)

    def scene_info(self, index: int) -> dict[str, Any]:
        """``name`` (file stem) plus :func:`raster_georef` of the image file."""
        path = self.root / self.mode / "img" / f"{self.stems[index]}.tif"
        return {"name": self.stems[index], **raster_georef(path)}

    def _load(self, index: int) -> dict[str, torch.Tensor]:
        stem = self.stems[index]
        base = self.root / self.mode
        img_path = base / "img" / f"{stem}.tif"
        raw = read_raster(img_path, expected_bands=len(self.file_bands), dtypes=self.dtypes)
        if self.fill == "band_mean":
            mean = raw.mean(axis=0, keepdims=True)
            raw = np.concatenate([raw, mean])  # index -1 picks the mean
        image = torch.from_numpy(np.ascontiguousarray(raw[self._model_idx]))
        lab_path = base / "label" / f"{stem}.tif"
        codes = read_raster(lab_path, expected_bands=1)[0]
        if codes.shape != tuple(image.shape[1:]):
            raise ShapeMismatchError(
                lab_path, f"label {codes.shape} != image {tuple(image.shape[1:])}"
            )
        if codes.min() < 0 or codes.max() > 255 or not np.array_equal(codes, np.round(codes)):
            raise LabelError(lab_path, "label codes must be integers in 0..255")
        mask = self._lut[codes.astype(np.int64)]
        if (mask < 0).any():
            bad = sorted(set(np.unique(codes[mask < 0]).astype(int).tolist()))
            raise LabelError(
                lab_path, f"unknown label codes {bad}; known {sorted(SEGMUNICH_CODES)}"
            )
        return {"image": image, "mask": torch.from_numpy(mask)}


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

DATASETS: dict[str, type[SentinelDataset]] = {
    "fmow_sentinel": FMoWSentinel,
    "bigearthnet": BigEarthNet,
    "eurosat": EuroSAT,
    "oscd": OSCD,
    "segmunich": SegMunich,
}

#: The paper's ``--dataset_type`` names -> registry names.
ALIASES: dict[str, str] = {
    "sentinel": "fmow_sentinel",
    "fmow": "fmow_sentinel",
    "bigearthnet_finetune": "bigearthnet",
    "euro_sat": "eurosat",
    "tum_128": "segmunich",
}


def resolve_name(name: str) -> str:
    """Registry name for ``name`` or one of the paper's aliases (case-insensitive).

    Raises:
        KeyError: listing the known names.
    """
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in DATASETS:
        known = sorted(DATASETS) + sorted(ALIASES)
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(known)}")
    return key


def build_dataset(
    name: str,
    root: str | os.PathLike,
    split: str | None = None,
    index: str | os.PathLike | None = None,
    transforms: Callable[[dict], dict] | None = None,
    **options: Any,
) -> SentinelDataset:
    """Build a dataset by registry name or paper alias.

    ``split`` defaults to ``"train"`` when neither ``split`` nor ``index`` is given. ``options`` are
    the class's keyword arguments (e.g. ``skip_bad_samples=True``, ``num_classes=43``,
    ``years=None``, ``patch_size=128``, ``fill="band_mean"``).
    """
    cls = DATASETS[resolve_name(name)]
    if split is None and index is None:
        split = "train"
    return cls(root, split=split, index=index, transforms=transforms, **options)


def collate(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Default collate for dict samples (all samples of a batch must share their shapes)."""
    return default_collate(batch)


def skipped_count(ds: Any) -> int:
    """Samples replaced because they were bad, so far, by ``ds`` in this process and all its
    DataLoader workers (a bad file is counted each time it is asked for, e.g. once per epoch)."""
    while isinstance(ds, torch.utils.data.Subset):
        ds = ds.dataset
    counter = getattr(ds, "_skip_counter", None)
    return int(counter) if counter is not None else int(getattr(ds, "num_skipped", 0))


def report_skipped(ds: Any) -> int:
    """Log the run's skipped-sample count summed over workers and processes (collective).

    Returns the total (0 when ``skip_bad_samples`` is off or nothing was skipped).
    """
    from util.training.runtime import get_world_size, is_main_process

    total = skipped_count(ds)
    if get_world_size() > 1:
        import torch.distributed as dist

        t = torch.tensor(float(total), device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t)
        total = int(t.item())
    if total and is_main_process():
        logger.warning(
            "replaced %d bad samples in this run (all workers and processes; --skip_bad_samples); "
            "the warnings above name the files, `python -m util.data.datasets NAME ROOT` lists them all",
            total,
        )
    return total


def dataset_summary(ds: SentinelDataset) -> str:
    """One line describing a dataset (for CLIs)."""
    return (
        f"{ds.name}: {len(ds)} samples from {getattr(ds, 'index_path', '?')}, "
        f"{ds.num_classes} classes{' (multi-label)' if ds.multilabel else ''}, "
        f"bands {','.join(MODEL_BANDS)}"
    )


def scan(ds: SentinelDataset, progress: bool = True) -> list[tuple[int, SampleError]]:
    """Read every sample once (no transforms) and return ``(index, error)`` for the bad ones.

    A pre-scan alternative to ``skip_bad_samples``: run it once, fix or drop the listed files.
    """
    from tqdm.auto import tqdm

    bad = []
    for i in tqdm(range(len(ds)), desc=f"scanning {ds.name}", disable=not progress, unit="sample"):
        try:
            ds._load(i)
        except SampleError as err:
            bad.append((i, err))
    return bad


def get_args_parser():
    """Arguments of ``python -m util.data.datasets``."""
    import argparse

    from util.training.cli import add_debug_arg

    parser = argparse.ArgumentParser(
        prog="python -m util.data.datasets",
        description="Check a dataset: build it, read every sample, list unreadable files.",
    )
    parser.add_argument("name", help=f"one of {', '.join(DATASETS)} (or a paper alias)")
    parser.add_argument("root", help="dataset root")
    parser.add_argument("--split", default=None)
    parser.add_argument("--index", default=None, help="an index file (the paper's formats)")
    parser.add_argument(
        "--native_size",
        type=int,
        default=None,
        help="image side of this copy for datasets with a published size (EuroSAT 64); 0: any",
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=None,
        help="pixel types to accept instead of the dataset's published ones (e.g. float32)",
    )
    add_debug_arg(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m util.data.datasets NAME ROOT [--split S | --index F]``: summarise and scan a dataset.

    Returns 0 when every sample reads, 1 when some do not; a user error (unknown name, missing
    index) prints one ``error:`` line and exits 2.
    """
    from util.training.cli import run

    args = get_args_parser().parse_args(argv)
    return run(_scan_cli, args)


def _scan_cli(args: Any) -> int:
    try:
        name = resolve_name(args.name)
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    options = {k: getattr(args, k) for k in ("native_size", "dtypes") if getattr(args, k)}
    if args.native_size == 0:
        options["native_size"] = 0
    ds = build_dataset(name, args.root, split=args.split, index=args.index, **options)
    print(dataset_summary(ds))
    bad = scan(ds)
    for i, err in bad:
        print(f"bad sample {i}: {err}")
    print(f"{len(ds) - len(bad)} good, {len(bad)} bad")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
