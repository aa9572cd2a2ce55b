"""GeoTIFF writing: row-strip writer with tiles, compression, overviews and tags; QGIS styles;
band stacks with band names (the layout :class:`util.inference.scene.Scene` reads).

rasterio is imported lazily (this module may be imported where only the model is needed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from util.data.sentinel2 import canonical_band

__all__ = ["GeoTiffWriter", "write_qgis_style", "write_stack"]


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


def write_array(
    path: str | os.PathLike,
    array: np.ndarray,
    crs: Any,
    transform: Any,
    nodata: float | None = None,
    descriptions: Iterable[str] = (),
    tags: Mapping[str, str] | None = None,
    **creation_options: Any,
) -> Path:
    """Write a whole ``(C, H, W)`` (or ``(H, W)``) array as one GeoTIFF in one go: the small-file
    writer (inputs prepared for :class:`Scene`, the synthetic datasets); :class:`GeoTiffWriter`
    writes large outputs strip by strip.

    Args:
        crs, transform: the grid (anything rasterio takes: ``CRS``, EPSG string; ``Affine``).
        nodata: the nodata value, or None.
        descriptions: band descriptions, in band order (fewer than the bands: the rest unset).
        tags: dataset-level tags.
        **creation_options: GDAL creation options (e.g. ``compress="deflate"``).
    """
    import rasterio

    array = array[None] if array.ndim == 2 else array
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=array.shape[1],
        width=array.shape[2],
        count=array.shape[0],
        dtype=array.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
        **creation_options,
    ) as dst:
        dst.write(array)
        for i, text in enumerate(descriptions, start=1):
            dst.set_band_description(i, text)
        if tags:
            dst.update_tags(**tags)
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
    names = [canonical_band(b) for b in bands]
    return write_array(path, image, crs, transform, nodata, descriptions=names)
