"""Sentinel-2 scenes on disk: band discovery by name, windowed reading on one grid, GeoTIFF writing.

Reading (:class:`Scene`): a scene is one stacked GeoTIFF whose bands carry their names as band
descriptions, or per-band files (``T32TQM_20230601T101559_B05_20m.jp2``, ``B05.tif``,
``<patch>_B05.tif``) given as a folder (searched recursively, so a whole ``.SAFE`` granule or its
``IMG_DATA`` folder works), a list of files, or a mix. Bands are found by *name* through the band
registry (:func:`util.data.sentinel2.canonical_band`), never by position; a band present at several
resolutions (``R10m``/``R20m``/``R60m``) is taken from its finest file. All bands are brought to
the grid of the finest band (the 10 m grid) by a GDAL ``WarpedVRT`` (bilinear by default), so a
window is read and resampled on the fly and the scene is never held in memory.

Writing (:class:`GeoTiffWriter`): rows are appended top to bottom and written in whole rows of
internal tiles (so GDAL never keeps partially written, compressed blocks in its cache), DEFLATE
compressed, with overviews, a colour table and tags.

rasterio is imported lazily (this module may be imported where only the model is needed).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from util.data.sentinel2 import BANDS, MODEL_BANDS, canonical_band

logger = logging.getLogger(__name__)

__all__ = [
    "RASTER_SUFFIXES",
    "BandSource",
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

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt")
RESAMPLING = ("nearest", "bilinear", "cubic", "average")
#: GDAL block cache while predicting: holds one row of compressed blocks of every band (a
#: Sentinel-2 JP2 granule's 1024 px tile rows) so strips are not decoded twice; bounds GDAL's memory
GDAL_CACHE_MB = 256


class SceneError(ValueError):
    """The scene cannot be read as given. ``path`` is the offending file or folder."""

    def __init__(self, path: str | os.PathLike | None, message: str):
        self.path = None if path is None else str(path)
        super().__init__(message if path is None else f"{path}: {message}")


class MissingBandError(SceneError, KeyError):
    """A band the model needs is in none of the input files."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return self.args[0]


class GridMismatchError(SceneError):
    """Two inputs that must share one pixel grid (``--input``, ``--input2``) do not."""


def gdal_env(**options: Any):
    """``rasterio.Env`` with a bounded block cache (``GDAL_CACHEMAX`` MB) and compressed overviews."""
    import rasterio

    options.setdefault("GDAL_CACHEMAX", GDAL_CACHE_MB)
    options.setdefault("COMPRESS_OVERVIEW", "DEFLATE")
    return rasterio.Env(**options)


# --------------------------------------------------------------------------------------------------
# Band discovery
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BandSource:
    """Where one band lives: ``path``, 1-based ``index`` in that file, pixel size in CRS units."""

    band: str
    path: str
    index: int
    resolution: float


_TOKEN_SPLIT = re.compile(r"[_\-.\s]+")


def band_from_filename(path: str | os.PathLike) -> str | None:
    """The Sentinel-2 band named in a file name (``T32TQM_..._B8A_20m.jp2`` -> ``B8A``), or None.

    The stem is split at ``_ - .`` and exactly one part must be a band name (``B02``, ``B2``,
    ``B8A``, ``B08A``, any case); parts like the tile id or the date never match.
    """
    parts = _TOKEN_SPLIT.split(Path(path).name.rsplit(".", 1)[0])
    found = set()
    for part in parts:
        try:
            found.add(canonical_band(part))
        except KeyError:
            continue
    return found.pop() if len(found) == 1 else None


#: SAFE folders that hold masks and previews, never image bands (``QI_DATA/MSK_QUALIT_B04.jp2``
#: names a band but is a quality mask)
_SKIP_DIRS = frozenset({"QI_DATA", "AUX_DATA", "HTML", "rep_info", "DATASTRIP"})


def _expand(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Files to inspect: folders are searched recursively for raster files (sorted), leaving out
    the SAFE mask / auxiliary folders and ``MSK_*`` files."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not items:
        raise SceneError(None, "no input given")
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                if f.suffix.lower() in RASTER_SUFFIXES
                and not f.name.upper().startswith("MSK_")
                and not _SKIP_DIRS.intersection(f.relative_to(p).parts[:-1])
                and f.is_file()
            )
            if not found:
                raise SceneError(
                    p, f"no raster files ({', '.join(RASTER_SUFFIXES)}) in this folder"
                )
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise SceneError(p, "no such file or folder")
    return files


_OFFSET_RE = re.compile(
    r"<(?:BOA|RADIO)_ADD_OFFSET\s+band_id=\"(\d+)\"\s*>\s*(-?[\d.]+)\s*<", re.IGNORECASE
)


def safe_dn_offsets(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
) -> dict[str, float]:
    """Per-band DN offsets of a Sentinel-2 product (processing baseline >= 04.00: L2A
    ``BOA_ADD_OFFSET``, L1C ``RADIO_ADD_OFFSET``, usually -1000) from the ``MTD_MSIL2A.xml`` /
    ``MTD_MSIL1C.xml`` of a folder input; ``{}`` when there is none (older baselines, other data).

    ``reflectance x 10000 = DN + offset``: adding the offsets puts new products on the scale of the
    archives the models were trained on.
    """
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    for item in items:
        p = Path(item)
        if not p.is_dir():
            continue
        for name in ("MTD_MSIL2A.xml", "MTD_MSIL1C.xml"):
            hits = sorted(p.rglob(name))
            if hits:
                text = hits[0].read_text(encoding="utf-8", errors="replace")
                bands = list(BANDS)  # band_id 0..12 in the L1C order (B8A 9th, B10 11th)
                return {
                    bands[int(i)]: float(v)
                    for i, v in _OFFSET_RE.findall(text)
                    if int(i) < len(bands)
                }
    return {}


def discover_bands(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    file_bands: Sequence[str] | None = None,
    bands: Sequence[str] = MODEL_BANDS,
) -> dict[str, BandSource]:
    """Find each of ``bands`` in the inputs, by name.

    A single-band file is named by its file name; a multi-band file by its band descriptions, or by
    ``file_bands`` (the file's band order, e.g. ``--input_bands``) when it has none. Files in a
    folder that name no band (``TCI``, ``SCL``, masks) are skipped. A band found in several files
    is taken from the finest one (SAFE ``R10m`` before ``R20m``); two files of equal resolution for
    one band are an error.

    Raises:
        SceneError: unreadable input, a multi-band file without band names, or a duplicate band.
        MissingBandError: a band of ``bands`` is in no file (the message names it).
    """
    import rasterio
    from rasterio.errors import RasterioError

    explicit = isinstance(inputs, (str, os.PathLike)) and Path(inputs).is_file()
    found: dict[str, BandSource] = {}
    for path in _expand(inputs):
        try:
            with rasterio.open(path) as src:
                count, descriptions, res = src.count, src.descriptions, abs(src.transform.a)
        except RasterioError as err:
            raise SceneError(path, f"cannot open raster ({err})") from err
        if count == 1:
            name = band_from_filename(path)
            if name is None and descriptions[0]:
                name = _band_or_none(descriptions[0])
            if name is None:
                if explicit or (file_bands and len(file_bands) == 1):
                    raise SceneError(
                        path,
                        "cannot tell which band this file holds: its name carries no band "
                        "name (e.g. B05.tif, T32TQM_20230601T101559_B05_20m.jp2)",
                    )
                logger.debug("skipping %s (no band name)", path)
                continue
            names = [name]
        else:
            names = _names_of_stack(path, count, descriptions, file_bands)
        for i, name in enumerate(names, start=1):
            if name is None:
                continue
            source = BandSource(name, str(path), i, res)
            prev = found.get(name)
            if prev is None or res < prev.resolution:
                found[name] = source
            elif res == prev.resolution:
                raise SceneError(
                    path,
                    f"band {name} is also in {prev.path} at the same resolution; pass one "
                    "of them (e.g. one granule's folder)",
                )
    missing = [b for b in bands if canonical_band(b) not in found]
    if missing:
        have = ", ".join(sorted(found, key=list(BANDS).index)) or "none"
        where = inputs if isinstance(inputs, (str, os.PathLike)) else ", ".join(map(str, inputs))
        raise MissingBandError(
            None,
            f"band{'s' if len(missing) > 1 else ''} {', '.join(missing)} not found in {where} "
            f"(found: {have}). The model needs {', '.join(bands)}: give per-band files named "
            "like B05.tif / *_B05_20m.jp2, or a stacked GeoTIFF with band descriptions (or "
            "--input_bands naming its band order)",
        )
    return {canonical_band(b): found[canonical_band(b)] for b in bands}


def _band_or_none(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return canonical_band(name)
    except KeyError:
        return band_from_filename(name)  # descriptions like "B02 (490 nm)" or "S2_B02"


def _names_of_stack(
    path: Path, count: int, descriptions: Sequence[str | None], file_bands: Sequence[str] | None
) -> list[str | None]:
    if file_bands:
        if len(file_bands) != count:
            raise SceneError(
                path, f"--input_bands names {len(file_bands)} bands but the file has {count}"
            )
        return [canonical_band(b) for b in file_bands]
    names = [_band_or_none(d) for d in descriptions]
    if not any(names):
        raise SceneError(
            path,
            f"cannot tell which of its {count} bands is which: the file has no band "
            "descriptions; pass --input_bands with its band order, e.g. "
            "--input_bands B01,B02,B03,B04,B05,B06,B07,B08,B8A,B09,B10,B11,B12",
        )
    return names


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------
class Scene:
    """The bands of one scene on one pixel grid, read window by window in model band order.

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
    """

    def __init__(
        self,
        inputs: str | os.PathLike | Sequence[str | os.PathLike],
        bands: Sequence[str] = MODEL_BANDS,
        file_bands: Sequence[str] | None = None,
        resampling: str = "bilinear",
        dn_offset: str | float | Mapping[str, float] = "auto",
    ):
        import rasterio
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        if resampling not in RESAMPLING:
            raise ValueError(f"resampling must be one of {RESAMPLING}, got {resampling!r}")
        self.bands = tuple(canonical_band(b) for b in bands)
        self.sources = discover_bands(inputs, file_bands, self.bands)
        self.resampling = resampling
        self._files: dict[str, Any] = {}
        self._readers: dict[str, Any] = {}
        try:
            for s in self.sources.values():
                if s.path not in self._files:
                    self._files[s.path] = rasterio.open(s.path)
            # the grid: the finest band's file (first in band order among equals)
            ref_path = min(self.sources.values(), key=lambda s: s.resolution).path
            ref = self._files[ref_path]
            self.crs, self.transform = ref.crs, ref.transform
            self.height, self.width = ref.height, ref.width
            for path, src in self._files.items():
                if (src.crs, src.transform, src.shape) == (ref.crs, ref.transform, ref.shape):
                    self._readers[path] = src
                else:
                    self._readers[path] = WarpedVRT(
                        src,
                        crs=ref.crs,
                        transform=ref.transform,
                        width=ref.width,
                        height=ref.height,
                        resampling=Resampling[resampling],
                    )
        except Exception:
            self.close()
            raise
        self.nodata = np.array(
            [
                self._files[s.path].nodata if self._files[s.path].nodata is not None else 0.0
                for s in self.sources.values()
            ],
            dtype=np.float32,
        )
        if dn_offset == "auto":
            offsets = safe_dn_offsets(inputs)
        elif isinstance(dn_offset, Mapping):
            offsets = {canonical_band(k): float(v) for k, v in dn_offset.items()}
        else:
            offsets = dict.fromkeys(self.bands, float(dn_offset))
        self.dn_offset = np.array([offsets.get(b, 0.0) for b in self.bands], dtype=np.float32)
        # one read per file: (positions in model order, 1-based indexes in the file)
        self._plan: list[tuple[str, list[int], list[int]]] = []
        for path in self._files:
            pos = [i for i, s in enumerate(self.sources.values()) if s.path == path]
            idx = [list(self.sources.values())[i].index for i in pos]
            self._plan.append((path, pos, idx))

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def resolution(self) -> float:
        """Pixel size of the grid in CRS units (metres for UTM)."""
        return abs(self.transform.a)

    @property
    def resampled_bands(self) -> list[str]:
        """Bands read through a resampling VRT (their file is on another grid)."""
        return [
            b for b, s in self.sources.items() if self._readers[s.path] is not self._files[s.path]
        ]

    def read(self, row: int, col: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Window ``[row, row + height) x [col, col + width)`` of the grid.

        Returns:
            ``(image, valid)``: ``(C, height, width)`` float32 digital numbers in model band order
            (plus ``dn_offset``), and a bool ``(height, width)`` map that is False where any band
            is nodata (the file's nodata value, else 0) or not finite.
        """
        from rasterio.windows import Window

        window = Window(col, row, width, height)
        out = np.empty((len(self.bands), height, width), dtype=np.float32)
        for path, pos, idx in self._plan:
            out[pos] = self._readers[path].read(idx, window=window, out_dtype="float32")
        valid = np.isfinite(out).all(0)
        valid &= (out != self.nodata[:, None, None]).all(0)
        valid &= (out != 0).all(0)
        if self.dn_offset.any():
            out += self.dn_offset[:, None, None]
        return out, valid

    def describe(self) -> str:
        files = len(self._files)
        res = self.resolution
        text = (
            f"{self.height} x {self.width} px at {res:g} m ({self.height * self.width * res * res / 1e6:.1f} "
            f"km2), {len(self.bands)} bands from {files} file{'s' if files > 1 else ''}"
        )
        if self.resampled_bands:
            text += f", {', '.join(self.resampled_bands)} resampled ({self.resampling})"
        if self.dn_offset.any():
            text += f", DN offset {sorted(set(self.dn_offset.tolist()))}"
        return text

    def close(self) -> None:
        for path, reader in self._readers.items():
            if reader is not self._files.get(path):
                reader.close()
        for src in self._files.values():
            src.close()
        self._readers, self._files = {}, {}

    def __enter__(self) -> Scene:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_same_grid(a: Scene, b: Scene, name_a: str = "--input", name_b: str = "--input2") -> None:
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


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------
class GeoTiffWriter:
    """Write a raster top to bottom in row strips: tiled, DEFLATE, overviews, colour table, tags.

    Rows given to :meth:`write_rows` are buffered until a whole row of internal tiles is complete
    and written then, so memory stays at ``count x block x width`` values whatever the raster size.
    ``float16`` is stored as half-precision floats (GDAL ``NBITS=16`` on Float32; readers see
    float32).

    Args:
        path: output file (its folder is created).
        crs, transform, height, width: the output grid.
        count: number of bands.
        dtype: ``uint8``, ``float16`` or ``float32``.
        nodata: nodata value (255 for classes, NaN for floats).
        colormap: ``{value: (r, g, b)}`` for band 1 (class maps).
        tags: dataset metadata (values that are not strings are JSON encoded).
        descriptions: per-band names.
        overview_resampling: ``nearest`` for classes, ``average`` for continuous values.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        crs: Any,
        transform: Any,
        height: int,
        width: int,
        count: int,
        dtype: str,
        nodata: float | None,
        colormap: Mapping[int, tuple[int, int, int]] | None = None,
        tags: Mapping[str, Any] | None = None,
        descriptions: Sequence[str] | None = None,
        overview_resampling: str = "nearest",
    ):
        import rasterio

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.height, self.width, self.count = height, width, count
        self.dtype = dtype
        self.overview_resampling = overview_resampling
        store = "float32" if dtype == "float16" else dtype
        self.np_dtype = np.dtype(store)
        itemsize = 2 if dtype == "float16" else self.np_dtype.itemsize
        # tile height: 256 rows, fewer for wide multi-band rasters (embeddings) so one row of
        # tiles stays under ~64 MB
        block = 256
        while block > 16 and count * block * width * itemsize > 64 * 2**20:
            block //= 2
        self.block = block
        profile = dict(
            driver="GTiff",
            height=height,
            width=width,
            count=count,
            dtype=store,
            crs=crs,
            transform=transform,
            nodata=nodata,
            tiled=True,
            blockxsize=256,
            blockysize=block,
            compress="deflate",
            predictor=2 if self.np_dtype.kind in "ui" else 1,
            zlevel=6,
            BIGTIFF="IF_SAFER",
            interleave="pixel" if count <= 4 else "band",
        )
        if dtype == "float16":
            profile["nbits"] = 16
        self._dst = rasterio.open(self.path, "w", **profile)
        if colormap:
            self._dst.write_colormap(1, {int(k): tuple(v) + (255,) for k, v in colormap.items()})
        if tags:
            self._dst.update_tags(
                **{k: v if isinstance(v, str) else json.dumps(v) for k, v in tags.items()}
            )
        for i, d in enumerate(descriptions or (), start=1):
            self._dst.set_band_description(i, d)
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self.rows_written = 0

    def write_rows(self, rows: np.ndarray) -> None:
        """Append ``(count, n, width)`` rows below those written so far."""
        if rows.shape[0] != self.count or rows.shape[2] != self.width:
            raise ValueError(f"expected ({self.count}, n, {self.width}) rows, got {rows.shape}")
        self._pending.append(np.asarray(rows, dtype=self.np_dtype))
        self._pending_rows += rows.shape[1]
        if self._pending_rows >= self.block:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        from rasterio.windows import Window

        if not self._pending:
            return
        data = np.concatenate(self._pending, axis=1) if len(self._pending) > 1 else self._pending[0]
        n = data.shape[1] if final else data.shape[1] // self.block * self.block
        if n:
            if self.rows_written + n > self.height:
                raise ValueError(f"{self.path}: more rows written than the raster's {self.height}")
            self._dst.write(data[:, :n], window=Window(0, self.rows_written, self.width, n))
            self.rows_written += n
        rest = data[:, n:]
        self._pending = [rest] if rest.shape[1] else []
        self._pending_rows = rest.shape[1]

    def close(self) -> Path:
        """Write what is left, then add overviews (halving until under 256 px)."""
        from rasterio.enums import Resampling

        if self._dst is None:
            return self.path
        self._flush(final=True)
        self._dst.close()
        self._dst = None
        if self.rows_written != self.height:
            raise ValueError(f"{self.path}: {self.rows_written} of {self.height} rows were written")
        factors, f = [], 2
        while max(self.height, self.width) / f >= 256:
            factors.append(f)
            f *= 2
        if factors:
            import rasterio

            with rasterio.open(self.path, "r+") as dst:
                dst.build_overviews(factors, Resampling[self.overview_resampling])
                dst.update_tags(ns="rio_overview", resampling=self.overview_resampling)
        return self.path

    def abort(self) -> None:
        """Close without finishing (after an error); the partial file is removed."""
        if self._dst is not None:
            self._dst.close()
            self._dst = None
        self.path.unlink(missing_ok=True)


def write_qgis_style(
    raster: str | os.PathLike,
    colours: Mapping[int, tuple[int, int, int]],
    labels: Mapping[int, str],
) -> Path:
    """``<raster>.qml`` next to a class map: the paletted style QGIS applies when the layer is
    added (colours and class names in the legend; nodata stays transparent)."""
    from xml.sax.saxutils import quoteattr

    entries = "\n".join(
        f'        <paletteEntry value="{v}" color="#{r:02x}{g:02x}{b:02x}" alpha="255" '
        f"label={quoteattr(labels.get(v, str(v)))}/>"
        for v, (r, g, b) in sorted(colours.items())
    )
    text = f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22.0" styleCategories="Symbology">
  <pipe>
    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">
      <colorPalette>
{entries}
      </colorPalette>
    </rasterrenderer>
  </pipe>
</qgis>
"""
    path = Path(raster).with_suffix(".qml")
    path.write_text(text, encoding="utf-8")
    return path


def write_stack(
    path: str | os.PathLike,
    image: np.ndarray,
    bands: Iterable[str],
    crs: Any,
    transform: Any,
    nodata: float | None = None,
) -> Path:
    """Write ``(C, H, W)`` as one GeoTIFF whose band descriptions are the band names (the stacked
    layout :class:`Scene` reads; useful to prepare inputs)."""
    import rasterio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=image.shape[1],
        width=image.shape[2],
        count=image.shape[0],
        dtype=image.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
    ) as dst:
        dst.write(image)
        for i, b in enumerate(bands, start=1):
            dst.set_band_description(i, canonical_band(b))
    return path
