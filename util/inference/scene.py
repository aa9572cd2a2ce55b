"""Scenes on disk read window by window on one pixel grid: Sentinel-2 (:class:`Scene`) and the
reader every sensor shares (:class:`BandStack`).

Bands are found by name (:mod:`util.inference.discovery`; Landsat and HLS products in
:mod:`util.inference.products`, read by :class:`util.inference.sensor_scene.SensorScene`). All
bands are brought to the grid of the finest band (the 10 m grid of Sentinel-2) by a GDAL
``WarpedVRT`` (bilinear by default), so a window is read and resampled on the fly and the scene is
never held in memory. :func:`util.inference.sensor_scene.open_scene` picks the reader for an input.

GeoTIFF writing lives in :mod:`util.inference.geotiff` (its names are re-exported here).
rasterio is imported lazily (this module may be imported where only the model is needed).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from util.data.sentinel2 import MODEL_BANDS, canonical_band
from util.inference.discovery import (  # noqa: F401  (re-exported: the scene API in one place)
    RASTER_SUFFIXES,
    BandSource,
    MissingBandError,
    SceneError,
    band_from_filename,
    discover_bands,
    safe_dn_offsets,
)
from util.inference.geotiff import GeoTiffWriter, write_qgis_style, write_stack  # noqa: F401

logger = logging.getLogger(__name__)

__all__ = [
    "RASTER_SUFFIXES",
    "RESAMPLING",
    "BandSource",
    "BandStack",
    "GeoTiffWriter",
    "GridMismatchError",
    "MissingBandError",
    "Scene",
    "SceneError",
    "band_from_filename",
    "check_same_grid",
    "discover_bands",
    "gdal_env",
    "safe_dn_offsets",
    "write_qgis_style",
    "write_stack",
]

RESAMPLING = ("nearest", "bilinear", "cubic", "average")
#: GDAL block cache while predicting: holds one row of compressed blocks of every band (a
#: Sentinel-2 JP2 granule's 1024 px tile rows) so strips are not decoded twice; bounds GDAL's memory
GDAL_CACHE_MB = 256


class GridMismatchError(SceneError):
    """Two inputs that must share one pixel grid (``--input``, ``--input2``) do not."""


def gdal_env(**options: Any):
    """``rasterio.Env`` with a bounded block cache (``GDAL_CACHEMAX`` MB) and compressed overviews."""
    import rasterio

    options.setdefault("GDAL_CACHEMAX", GDAL_CACHE_MB)
    options.setdefault("COMPRESS_OVERVIEW", "DEFLATE")
    return rasterio.Env(**options)


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------
class BandStack:
    """Bands from one or several raster files on one pixel grid, read window by window.

    Args:
        sources: :class:`BandSource` per band name, in the order :meth:`read_raw` returns them.
        resampling: how bands of another grid are resampled onto the grid (``bilinear``,
            ``cubic``, ``nearest``, ``average``).
        nearest: band names always resampled ``nearest`` (bit masks such as ``QA_PIXEL``).

    Attributes:
        height, width, crs, transform: the grid (that of the finest band; the first in
            ``sources`` order among equals).
        sources: as given.
        nodata: per band, the file's nodata value (NaN when the file has none).
    """

    def __init__(
        self,
        sources: Mapping[str, BandSource],
        resampling: str = "bilinear",
        nearest: Sequence[str] = (),
    ) -> None:
        import rasterio
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        if resampling not in RESAMPLING:
            raise ValueError(f"resampling must be one of {RESAMPLING}, got {resampling!r}")
        self.sources = dict(sources)
        self.resampling = resampling
        self._files: dict[str, Any] = {}
        self._readers: dict[str, Any] = {}
        nearest_paths = {self.sources[b].path for b in nearest if b in self.sources}
        try:
            for s in self.sources.values():
                if s.path not in self._files:
                    self._files[s.path] = rasterio.open(s.path)
            ref = self._files[min(self.sources.values(), key=lambda s: s.resolution).path]
            self.crs, self.transform = ref.crs, ref.transform
            self.height, self.width = ref.height, ref.width
            for path, src in self._files.items():
                if (src.crs, src.transform, src.shape) == (ref.crs, ref.transform, ref.shape):
                    self._readers[path] = src
                else:
                    how = "nearest" if path in nearest_paths else resampling
                    self._readers[path] = WarpedVRT(
                        src,
                        crs=ref.crs,
                        transform=ref.transform,
                        width=ref.width,
                        height=ref.height,
                        resampling=Resampling[how],
                    )
        except Exception:
            self.close()
            raise
        nodata = [self._files[s.path].nodata for s in self.sources.values()]
        self.nodata = np.array([np.nan if v is None else v for v in nodata], dtype=np.float32)
        # one read per file: (positions in source order, 1-based indexes in the file)
        listed = list(self.sources.values())
        self._plan: list[tuple[str, list[int], list[int]]] = []
        for path in self._files:
            pos = [i for i, s in enumerate(listed) if s.path == path]
            self._plan.append((path, pos, [listed[i].index for i in pos]))

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def resolution(self) -> float:
        """Pixel size of the grid in CRS units (metres for UTM)."""
        return abs(self.transform.a)

    @property
    def file_dtypes(self) -> dict[str, str]:
        """Pixel type (numpy name) of each file read, by path (the input contract's 8-bit rule)."""
        return {path: src.dtypes[0] for path, src in self._files.items()}

    @property
    def resampled_bands(self) -> list[str]:
        """Bands read through a resampling VRT (their file is on another grid)."""
        return [
            b for b, s in self.sources.items() if self._readers[s.path] is not self._files[s.path]
        ]

    def read_raw(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        """Window ``[row, row + height) x [col, col + width)``: ``(len(sources), height, width)``
        float32 values as stored, in ``sources`` order."""
        from rasterio.windows import Window

        window = Window(col, row, width, height)
        out = np.empty((len(self.sources), height, width), dtype=np.float32)
        for path, pos, idx in self._plan:
            out[pos] = self._readers[path].read(idx, window=window, out_dtype="float32")
        return out

    def describe(self) -> str:
        files = len(self._files)
        res = self.resolution
        text = (
            f"{self.height} x {self.width} px at {res:g} m ({self.height * self.width * res * res / 1e6:.1f} "
            f"km2), {len(self.sources)} bands from {files} file{'s' if files > 1 else ''}"
        )
        if self.resampled_bands:
            text += f", {', '.join(self.resampled_bands)} resampled ({self.resampling})"
        return text

    def close(self) -> None:
        for path, reader in self._readers.items():
            if reader is not self._files.get(path):
                reader.close()
        for src in self._files.values():
            src.close()
        self._readers, self._files = {}, {}

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Scene(BandStack):
    """The Sentinel-2 bands of one scene on one pixel grid, read window by window in model band
    order.

    Args:
        inputs: a stacked file, a folder, or a list of files/folders (see :func:`discover_bands`).
        bands: the band names the model needs, in its order.
        file_bands: band order of a stacked file without band descriptions.
        resampling: how bands of another grid (20/60 m) are resampled onto the finest band's grid
            (``bilinear``, ``cubic``, ``nearest``, ``average``).
        dn_offset: added to each band's DN after the nodata test: ``"auto"`` (the product's
            ``BOA_ADD_OFFSET`` / ``RADIO_ADD_OFFSET`` when a SAFE metadata file is found, see
            :func:`safe_dn_offsets`), a number for every band, or a ``{band: offset}`` dict.

    Attributes:
        height, width, crs, transform: the output grid (that of the finest band).
        sources: :class:`BandSource` per band.
        nodata: per band, the value that marks a missing pixel (the file's nodata, else 0).
        groups: None (Sentinel-2 input fills every spectral group of the model).
    """

    groups = None

    def __init__(
        self,
        inputs: str | os.PathLike | Sequence[str | os.PathLike],
        bands: Sequence[str] = MODEL_BANDS,
        file_bands: Sequence[str] | None = None,
        resampling: str = "bilinear",
        dn_offset: str | float | Mapping[str, float] = "auto",
    ):
        if resampling not in RESAMPLING:
            raise ValueError(f"resampling must be one of {RESAMPLING}, got {resampling!r}")
        self.bands = tuple(canonical_band(b) for b in bands)
        super().__init__(discover_bands(inputs, file_bands, self.bands), resampling)
        self.nodata = np.nan_to_num(self.nodata, nan=0.0)
        if dn_offset == "auto":
            offsets = safe_dn_offsets(inputs)
        elif isinstance(dn_offset, Mapping):
            offsets = {canonical_band(k): float(v) for k, v in dn_offset.items()}
        else:
            offsets = dict.fromkeys(self.bands, float(dn_offset))
        self.dn_offset = np.array([offsets.get(b, 0.0) for b in self.bands], dtype=np.float32)

    def read(self, row: int, col: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Window ``[row, row + height) x [col, col + width)`` of the grid.

        Returns:
            ``(image, valid)``: ``(C, height, width)`` float32 digital numbers in model band order
            (plus ``dn_offset``), and a bool ``(height, width)`` map that is False where any band
            is nodata (the file's nodata value, else 0) or not finite.
        """
        out = self.read_raw(row, col, height, width)
        valid = np.isfinite(out).all(0)
        valid &= (out != self.nodata[:, None, None]).all(0)
        valid &= (out != 0).all(0)
        if self.dn_offset.any():
            out += self.dn_offset[:, None, None]
        return out, valid

    def describe(self) -> str:
        text = super().describe()
        if self.dn_offset.any():
            text += f", DN offset {sorted(set(self.dn_offset.tolist()))}"
        return text


def check_same_grid(
    a: BandStack, b: BandStack, name_a: str = "--input", name_b: str = "--input2"
) -> None:
    """Raise :class:`GridMismatchError` unless ``a`` and ``b`` share CRS, transform and size."""
    problems = []
    if a.crs != b.crs:
        problems.append(f"CRS {a.crs} vs {b.crs}")
    if not a.transform.almost_equals(b.transform, precision=1e-6 * max(a.resolution, 1e-9)):
        problems.append(f"transform {tuple(a.transform)[:6]} vs {tuple(b.transform)[:6]}")
    if a.shape != b.shape:
        problems.append(f"size {a.shape} vs {b.shape}")
    if problems:
        where = next(iter(b.sources.values())).path
        raise GridMismatchError(
            where,
            f"{name_b} is not on the pixel grid of {name_a} ({'; '.join(problems)}); "
            "change detection needs both dates on one grid (e.g. gdalwarp one onto the other)",
        )
