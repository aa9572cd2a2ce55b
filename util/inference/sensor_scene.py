"""Scenes of sensors other than Sentinel-2, read as the model's 12 slots; the reader for any input.

:class:`SensorScene` reads a Landsat Collection 2 Level-2 product folder or an HLS granule
(recognised by their file names, :func:`util.inference.products.find_product`) or, with an explicit
``sensor``, any band set of :data:`util.data.sensors.SENSORS` (or custom ``name:nm`` bands) from a
stacked GeoTIFF with band descriptions (or ``file_bands``) or per-band files named by band. Each
window is scaled to reflectance x 10000 (the MTL's factors for Landsat, the table's otherwise),
masked (nodata, and the ``QA_PIXEL`` / ``Fmask`` fill and cloud bits) and mapped onto the model's
slots by wavelength (:class:`util.data.band_adapter.BandAdapter`); :attr:`SensorScene.groups` are
the spectral groups the model must run on.

:func:`open_scene` picks :class:`SensorScene` or the Sentinel-2 :class:`util.inference.scene.Scene`
from the inputs' names, or from ``sensor``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from util.data.band_adapter import BandAdapter
from util.data.sensors import (
    MODEL_DN_PER_REFLECTANCE,
    Sensor,
    SensorError,
    band_key,
    get_sensor,
)
from util.data.sentinel2 import MODEL_BANDS
from util.inference.discovery import (
    BandSource,
    MissingBandError,
    SceneError,
    expand_inputs,
)
from util.inference.products import Product, find_product, product_scales, quality_invalid
from util.inference.scene import BandStack, Scene

logger = logging.getLogger(__name__)

__all__ = ["SENTINEL2_IDS", "SensorScene", "open_scene"]

#: sensors read by the Sentinel-2 :class:`~util.inference.scene.Scene`
SENTINEL2_IDS = ("sentinel2_l1c", "sentinel2_l2a")
_QUALITY = "QUALITY"  # the quality band's key among the sources


class SensorScene(BandStack):
    """One scene of another sensor on one pixel grid, read window by window as the model's slots.

    Args:
        inputs: a Landsat C2 L2 product folder, an HLS granule folder (or their files), or for an
            explicit ``sensor`` a stacked file / folder of per-band files.
        bands: the model's slots (Sentinel-2 names, in token order).
        sensor: a sensor id or custom ``name:nm,...`` list; default: from the file names.
        sensor_bands: use only these bands of the sensor (e.g. ``B2,B3,B4,B5``).
        file_bands: band order of a stacked file without band descriptions (sensor band names).
        resampling: for bands on another grid than the finest.
        mask_bits: quality bits that make a pixel nodata (default
            :data:`util.inference.products.DEFAULT_MASK_BITS`); ``()`` masks fill only.

    Attributes:
        sensor: the band set read (its order is that of :attr:`adapter`'s input).
        adapter: the wavelength map onto the model's slots.
        bands: the model's slots (what :meth:`read` returns).
        groups: spectral groups to run the model on (None: all).
        product: the recognised product, or None.
    """

    def __init__(
        self,
        inputs: str | os.PathLike | Sequence[str | os.PathLike],
        bands: Sequence[str] = MODEL_BANDS,
        sensor: str | Sensor | None = None,
        sensor_bands: Sequence[str] | str | None = None,
        file_bands: Sequence[str] | None = None,
        resampling: str = "bilinear",
        mask_bits: Sequence[str] | None = None,
    ) -> None:
        self.product = find_product(inputs)
        if self.product is None and sensor is None:
            raise SceneError(
                None,
                "cannot tell the sensor from the file names (not a Landsat Collection 2 Level-2 "
                "or HLS product): pass --sensor (e.g. landsat8, rgbn, or red:665,nir:842)",
            )
        base = get_sensor(sensor if sensor is not None else self.product.sensor)
        self.mask_bits = mask_bits
        if self.product is not None:
            chosen = get_sensor(base, sensor_bands) if sensor_bands else base
            found = {band_key(b): b for b in self.product.bands}
            held = [b.name for b in chosen.bands if band_key(b.name) in found]
            if not sensor_bands and len(held) < len(chosen.bands):  # the bands the product holds
                chosen = chosen.select(held) if held else chosen
            missing = [b.name for b in chosen.bands if band_key(b.name) not in found]
            if missing or not chosen.bands:
                raise MissingBandError(
                    None,
                    f"{self.product.name}: band(s) {', '.join(missing) or 'of ' + base.id} not "
                    f"found (the product holds {', '.join(self.product.bands)})",
                )
            sources = _product_sources(self.product, chosen, found)
            scales = product_scales(self.product)
            per_band = [scales[found[band_key(b.name)]] for b in chosen.bands]
        else:
            chosen = get_sensor(base, sensor_bands) if sensor_bands else base
            sources = _sensor_sources(inputs, chosen, file_bands)
            per_band = [chosen.scale] * len(chosen.bands)
        self.sensor = chosen
        self.adapter = BandAdapter(chosen, model_bands=bands)
        self.bands = self.adapter.model_bands
        self.groups = self.adapter.groups
        super().__init__(sources, resampling, nearest=(_QUALITY,))
        k = MODEL_DN_PER_REFLECTANCE
        self._gain = np.array([s.gain * k for s in per_band], np.float32)[:, None, None]
        self._offset = np.array([s.offset * k for s in per_band], np.float32)[:, None, None]
        c = len(chosen.bands)
        table = [np.nan if s.nodata is None else s.nodata for s in per_band]
        self.nodata = np.where(np.isnan(self.nodata[:c]), table, self.nodata[:c]).astype(np.float32)
        self._has_quality = _QUALITY in sources

    def read(self, row: int, col: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Window ``[row, row + height) x [col, col + width)`` of the grid.

        Returns:
            ``(image, valid)``: ``(S, height, width)`` float32 model slots (reflectance x 10000;
            0 in dropped groups and at invalid pixels), and a bool ``(height, width)`` map that
            is False where a band is nodata or not finite, or the quality band marks fill or one
            of ``mask_bits``.
        """
        raw = self.read_raw(row, col, height, width)
        c = len(self.sensor.bands)
        dn = raw[:c]
        valid = np.isfinite(dn).all(0) & (dn != self.nodata[:, None, None]).all(0)
        if self._has_quality:
            valid &= ~quality_invalid(raw[c], self.product.quality_kind, self.mask_bits)
        x = dn * self._gain + self._offset
        x[:, ~valid] = 0.0
        return self.adapter(x), valid

    def describe(self) -> str:
        groups = "all" if self.groups is None else ", ".join(map(str, self.groups))
        text = f"{self.sensor.id} ({', '.join(self.sensor.band_names)}): " + super().describe()
        text += f"; model spectral groups: {groups}"
        if self._has_quality:
            text += f"; {Path(self.sources[_QUALITY].path).name} masks fill and clouds"
        return text

    def metadata(self) -> dict[str, Any]:
        """What an output file records about its input (sensor, bands, groups, product)."""
        meta = self.adapter.metadata()
        if self.product is not None:
            meta["product"] = self.product.name
        return meta


def _product_sources(
    product: Product, sensor: Sensor, found: dict[str, str]
) -> dict[str, BandSource]:
    import rasterio

    sources = {}
    files = [(b.name, product.bands[found[band_key(b.name)]]) for b in sensor.bands]
    if product.quality is not None:
        files.append((_QUALITY, product.quality))
    for name, path in files:
        with rasterio.open(path) as src:
            res = abs(src.transform.a)
        sources[name] = BandSource(name, str(path), 1, res)
    return sources


def _sensor_sources(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    sensor: Sensor,
    file_bands: Sequence[str] | None,
) -> dict[str, BandSource]:
    """Find each band of ``sensor`` by name: a stacked file's band descriptions (or
    ``file_bands``), or single-band files whose name has a part that is a band name."""
    import rasterio

    found: dict[str, BandSource] = {}
    for path in expand_inputs(inputs):
        with rasterio.open(path) as src:
            count, desc, res = src.count, src.descriptions, abs(src.transform.a)
        if count > 1 or file_bands:
            names = list(file_bands) if file_bands else list(desc)
            if len(names) != count:
                raise SceneError(
                    path, f"--input_bands names {len(names)} bands, the file has {count}"
                )
            pairs = list(enumerate(names, start=1))
        else:  # a single-band file: its description, else a part of its name
            parts = re.split(r"[_\-.\s]+", path.name.rsplit(".", 1)[0])
            pairs = [(1, n) for n in (desc[0], *parts)]
        for index, name in pairs:
            try:
                band = sensor.bands[sensor.index(name)].name if name else None
            except SensorError:
                band = None
            if band is None:
                continue
            if band not in found or res < found[band].resolution:
                found[band] = BandSource(band, str(path), index, res)
            if count == 1 and not file_bands:
                break  # one band per single-band file
    missing = [b.name for b in sensor.bands if b.name not in found]
    if missing:
        raise MissingBandError(
            None,
            f"band(s) {', '.join(missing)} of {sensor.id} not found in {inputs}: give a stacked "
            "GeoTIFF whose band descriptions name the bands (or --input_bands), or per-band "
            "files named by band",
        )
    return {b.name: found[b.name] for b in sensor.bands}


def open_scene(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    bands: Sequence[str] = MODEL_BANDS,
    file_bands: Sequence[str] | None = None,
    resampling: str = "bilinear",
    dn_offset: Any = "auto",
    sensor: str | Sensor | None = None,
    sensor_bands: Sequence[str] | str | None = None,
    default_sensor: Sensor | None = None,
) -> Scene | SensorScene:
    """The reader for ``inputs``: a Landsat C2 L2 / HLS product (by its names) or an explicit
    non-Sentinel-2 ``sensor`` -> :class:`SensorScene`; otherwise the Sentinel-2 :class:`Scene`.
    ``default_sensor`` (the band set a checkpoint was trained on) stands in for ``sensor`` when
    that is None and the names say nothing.

    Raises:
        SceneError: ``sensor`` says Sentinel-2 but the names are another sensor's product.
    """
    chosen = get_sensor(sensor) if sensor is not None else None
    if chosen is not None and chosen.id in SENTINEL2_IDS:
        product = find_product(inputs)
        if product is not None:
            raise SceneError(
                None,
                f"--sensor {sensor} but the files are a {product.sensor} product ({product.name})",
            )
        return Scene(inputs, bands, file_bands, resampling, dn_offset)
    if chosen is None and find_product(inputs) is None:
        if default_sensor is not None and default_sensor.id.split("[")[0] not in SENTINEL2_IDS:
            logger.info("sensor %s: the checkpoint's (pass --sensor to change)", default_sensor.id)
            return SensorScene(inputs, bands, default_sensor, sensor_bands, file_bands, resampling)
        return Scene(inputs, bands, file_bands, resampling, dn_offset)
    return SensorScene(inputs, bands, chosen, sensor_bands, file_bands, resampling)
