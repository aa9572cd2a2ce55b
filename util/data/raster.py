"""Raster reading for every dataset: GeoTIFF bands as float32 with the data layer's errors, a direct
reader for plain uncompressed TIFFs, per-band files grouped by resolution, PNG masks, georeference.
"""

from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from util.data.contract import InputContract, plan_sample
from util.data.errors import (
    BandCountError,
    CorruptFileError,
    DTypeError,
    InputScaleError,
    MissingFileError,
    NonFiniteError,
    SampleError,
    ShapeMismatchError,
)

__all__ = [
    "BandGroups",
    "check_resampling",
    "first_existing",
    "open_raster",
    "raster_georef",
    "read_band_files",
    "read_band_groups",
    "read_png_mask",
    "read_raster",
    "require_file",
]

_RESAMPLING = ("nearest", "bilinear", "cubic")


def require_file(path: str | os.PathLike) -> str:
    """``path`` as a string if it is a file, else :class:`MissingFileError`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(path, "file not found")
    return path


def first_existing(candidates: Sequence[Path]) -> Path:
    """First candidate that exists, else the first one (so the error names the canonical path)."""
    for c in candidates:
        if c.exists():
            return c
    return candidates[0]


@contextmanager
def open_raster(path: str | os.PathLike) -> Iterator[Any]:
    """``rasterio.open(path)`` with the library's errors: :class:`MissingFileError`, and
    :class:`CorruptFileError` for anything rasterio cannot open or read inside the block
    (a missing georeference is not an error: plain TIFFs and PNGs have none)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    path = require_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                yield src
    except SampleError:
        raise
    except (RasterioError, OSError) as err:
        raise CorruptFileError(path, f"cannot read raster ({err})") from err


def read_raster(
    path: str | os.PathLike,
    expected_bands: int | None = None,
    indexes: Sequence[int] | None = None,
    check_finite: bool = True,
    dtypes: Sequence[str] | None = None,
    contract: InputContract | None = None,
    strict: bool = False,
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
        contract: check the pixels read against this input contract
            (:func:`util.data.contract.plan_sample`) and return them on its scale (a reflectance
            copy converted to DN, one log line); ``None`` (label rasters): no check.
        strict: with ``contract``, refuse a file on another scale (``--strict_input``).

    Raises:
        MissingFileError, CorruptFileError, BandCountError, NonFiniteError, DTypeError,
        InputScaleError (8-bit pixels, values of no Sentinel-2 scale; strict: another scale).
    """
    array, dtype, nodata = _read(path, expected_bands, indexes, check_finite, dtypes)
    if contract is not None:
        plan = plan_sample(array, contract, path, strict, dtype, nodata, error=InputScaleError)
        array = plan.apply(array)
    return array


def _read(
    path: str | os.PathLike,
    expected_bands: int | None,
    indexes: Sequence[int] | None,
    check_finite: bool,
    dtypes: Sequence[str] | None,
) -> tuple[np.ndarray, str, float | None]:
    """:func:`read_raster` without the contract: ``(float32 pixels, the file's pixel type,
    its nodata value or None)``."""
    path = require_file(path)
    array = _read_plain_tiff(path)
    nodata = None  # the direct reader does not parse GDAL's nodata tag (0 counts as missing anyway)
    if array is not None:
        dtype = array.dtype
        _check_bands(path, array.shape[0], dtype, expected_bands, dtypes)
        if indexes is not None:
            array = array[list(indexes)]
        array = array.astype(np.float32, order="C")  # a writable copy, band-sequential
    else:
        with open_raster(path) as src:
            dtype = np.dtype(src.dtypes[0])
            _check_bands(path, src.count, dtype, expected_bands, dtypes)
            idx = None if indexes is None else [i + 1 for i in indexes]
            array = src.read(idx, out_dtype="float32")
            nodata = src.nodata
    if check_finite and dtype.kind == "f" and not np.isfinite(array).all():
        raise NonFiniteError(path, "contains NaN or Inf pixels")
    return array, dtype.name, nodata


def _check_bands(
    path: str,
    count: int,
    dtype: np.dtype,
    expected_bands: int | None,
    dtypes: Sequence[str] | None,
) -> None:
    name = dtype.name
    if dtypes is not None and name not in dtypes:
        raise DTypeError(
            path,
            f"pixels are {name}, only {'/'.join(dtypes)} are accepted here (dtypes=...); other "
            "scales are checked and converted by the input contract when dtypes is left out",
        )
    if expected_bands is not None and count != expected_bands:
        raise BandCountError(path, f"expected {expected_bands} bands, the file has {count}")


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


def check_resampling(resampling: str | None, optional: bool = True) -> None:
    """``ValueError`` unless ``resampling`` is one of ``nearest/bilinear/cubic`` (or ``None``
    where ``optional``: every band must then come on one grid)."""
    if not (optional and resampling is None) and resampling not in _RESAMPLING:
        raise ValueError(f"resampling must be one of {_RESAMPLING}, got {resampling!r}")


def read_band_groups(
    paths: Sequence[str | os.PathLike],
    out_shape: tuple[int, int] | None = None,
    resampling: str | None = "bilinear",
    check_finite: bool = True,
    dtypes: Sequence[str] | None = None,
    contract: InputContract | None = None,
    strict: bool = False,
) -> BandGroups:
    """Read single-band rasters as float32, grouped by size, without resampling
    (:func:`read_band_files` puts them on one grid). Arguments and errors as there; the
    ``contract`` check looks at the bands together (a dark band alone can fall under the DN
    range), and names the first file."""
    check_resampling(resampling)
    by_shape: dict[tuple[int, int], tuple[list[int], list[np.ndarray]]] = {}
    dtype, nodata = "float32", None
    for i, p in enumerate(paths):
        arr, file_dtype, file_nodata = _read(p, 1, None, check_finite, dtypes)
        if i == 0:
            dtype, nodata = file_dtype, file_nodata
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
    if contract is not None and paths:
        plan = plan_sample(
            _band_sample(groups, len(paths)), contract, paths[0], strict, dtype, nodata,
            error=InputScaleError,
        )  # fmt: skip
        if plan.converts:
            groups = [(idx, plan.apply(g)) for idx, g in groups]
    return BandGroups(groups, shape, resampling)


def _band_sample(groups: list[tuple[list[int], torch.Tensor]], count: int) -> np.ndarray:
    """``(count, n)`` strided pixels of every band (the same number from bands of any size)."""
    n = min(256, min(g[0].numel() for _, g in groups))
    out = np.empty((count, n), dtype=np.float32)
    for idx, g in groups:
        flat = g.numpy().reshape(len(idx), -1)
        out[idx] = flat[:, :: flat.shape[1] // n][:, :n]
    return out


def read_band_files(
    paths: Sequence[str | os.PathLike],
    out_shape: tuple[int, int] | None = None,
    resampling: str | None = "bilinear",
    check_finite: bool = True,
    dtypes: Sequence[str] | None = None,
    contract: InputContract | None = None,
    strict: bool = False,
) -> torch.Tensor:
    """Read single-band rasters and stack them as float32 ``(C, H, W)`` on one grid.

    Bands of another size (e.g. 20/60 m bands of a 10 m patch) are resampled to ``out_shape``
    (default: the largest band, i.e. the 10 m grid) with ``torch.nn.functional.interpolate``: ``bilinear``
    (matches GDAL's bilinear, which torchgeo uses, to 0.5 DN), ``cubic`` (torch bicubic, a=-0.75)
    or ``nearest`` (pixel-centre nearest); ``None`` requires all files to share one size.

    Raises:
        MissingFileError, CorruptFileError, BandCountError, NonFiniteError, ShapeMismatchError,
        InputScaleError (``contract``: see :func:`read_raster`).
    """
    groups = read_band_groups(paths, out_shape, resampling, check_finite, dtypes, contract, strict)
    return groups.to_grid()


def read_png_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a grayscale PNG label map as uint8 ``(H, W)``."""
    from PIL import Image, UnidentifiedImageError

    path = require_file(path)
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L"))
    except (UnidentifiedImageError, OSError) as err:
        raise CorruptFileError(path, f"cannot read image ({err})") from err


def raster_georef(path: str | os.PathLike) -> dict[str, Any]:
    """``{"path", "height", "width", "crs", "transform"}`` of a raster (header only; CRS as WKT
    or None, transform as the 6 GDAL-order affine coefficients ``a, b, c, d, e, f``)."""
    with open_raster(path) as src:
        return {
            "path": os.fspath(path),
            "height": src.height,
            "width": src.width,
            "crs": src.crs.to_wkt() if src.crs else None,
            "transform": list(src.transform)[:6],
        }
