"""One synthetic scene written as several sensors' products: Sentinel-2, Landsat C2 L2, HLS, RGBN.

The surface is rendered once (:func:`render_sensor_scene`: the land covers, spectra and texture of
:func:`util.data.synthetic.render_scene`, at 10 m, with a few clouds) and then *observed* by each
sensor: its 13 Sentinel-2 reflectances per pixel are interpolated over wavelength at the sensor's
band centres (:func:`util.data.band_adapter.interpolation_weights`; the cover spectra of
:data:`util.data.synthetic.COVERS` are piecewise linear between the Sentinel-2 centres), averaged
to the sensor's ground sampling distance, and stored with the sensor's digital-number scaling
(:mod:`util.data.sensors`) in its real on-disk layout:

* Sentinel-2: per-band GeoTIFFs at native resolution named like a granule's images
  (``T32TQM_20230601T101559_B05_20m.tif``), DN = reflectance x 10000;
* Landsat Collection 2 Level-2 (``landsat8``/``landsat9``/``landsat7_etm``/``landsat5_tm``): a
  product folder ``LC08_L2SP_PPPRRR_YYYYMMDD_yyyymmdd_02_T1`` with ``<name>_SR_B<n>.TIF`` (uint16,
  ``DN x 0.0000275 - 0.2``, nodata 0), ``<name>_QA_PIXEL.TIF`` (fill, dilated cloud, cloud and
  clear bits with their confidences) and ``<name>_MTL.txt`` (scale factors under
  ``LEVEL2_SURFACE_REFLECTANCE_PARAMETERS``), 30 m;
* HLS v2 (``S30``/``L30``): ``HLS.S30.T32TQM.2023152T101559.v2.0.B01.tif`` ... (int16, scale
  0.0001, nodata -9999) and ``...Fmask.tif`` (bit 1 cloud, bit 2 adjacent to cloud), 30 m;
* RGBN: one 4-band GeoTIFF (blue, green, red, NIR as band descriptions), 10 m, DN = reflectance
  x 10000.

All on one UTM grid (EPSG:32632), so a 30 m product covers exactly the 10 m scene's extent.
Library: :func:`write_sensor_scenes`; CLI: ``python -m util.data.synthetic_sensors ROOT``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

from util.data.band_adapter import interpolation_weights
from util.data.sensors import (
    HLS_FMASK_BITS,
    LANDSAT_PRODUCT_PREFIX,
    LANDSAT_QA_BITS,
    SENSORS,
    Sensor,
    get_sensor,
)
from util.data.synthetic import COVERS, render_scene

logger = logging.getLogger(__name__)

__all__ = [
    "SyntheticScene",
    "observe",
    "render_sensor_scene",
    "write_hls",
    "write_landsat_c2l2",
    "write_rgbn",
    "write_sentinel2",
    "write_sensor_scenes",
]

EPSG = 32632  # WGS 84 / UTM zone 32N
_LANDSAT_SENSOR_ID = {"landsat8": ("LANDSAT_8", "OLI_TIRS"), "landsat9": ("LANDSAT_9", "OLI_TIRS"),
                      "landsat7_etm": ("LANDSAT_7", "ETM"), "landsat5_tm": ("LANDSAT_5", "TM")}  # fmt: skip
_S2_GSD = {10: "10m", 20: "20m", 60: "60m"}


@dataclass
class SyntheticScene:
    """A rendered surface: reflectance ``(13, H, W)`` in Sentinel-2 L1C band order at 10 m, the
    cover index map (into ``covers``), a cloud mask, the upper-left corner in UTM metres and
    the acquisition date. ``fill_cols`` columns on the left are outside the swath (nodata)."""

    reflectance: np.ndarray
    cover: np.ndarray
    covers: tuple[str, ...]
    cloud: np.ndarray
    origin: tuple[float, float]
    acquired: date
    fill_cols: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        return self.reflectance.shape[1], self.reflectance.shape[2]


def render_sensor_scene(
    size: int = 240,
    seed: int = 0,
    covers: Sequence[str] = ("water", "forest", "annual_crop", "bare_soil", "built_up"),
    cloud_bias: float | None = -1.0,
    fill_cols: int = 0,
) -> SyntheticScene:
    """Render a ``size x size`` px (10 m) scene; ``size`` must be a multiple of 6 (the 60 m
    Sentinel-2 bands and the 30 m products tile it exactly). ``cloud_bias`` adds clouds (None:
    none; larger = more); ``fill_cols`` (a multiple of 3) marks left columns as outside the swath.
    """
    if size % 6 or size <= 0:
        raise ValueError(f"size must be a positive multiple of 6 (10 m px), got {size}")
    if fill_cols % 3:
        raise ValueError(f"fill_cols must be a multiple of 3, got {fill_cols}")
    unknown = [c for c in covers if c not in COVERS]
    if unknown:
        raise ValueError(f"unknown covers {unknown}; choose from {', '.join(COVERS)}")
    rng = np.random.default_rng(seed)
    names = tuple(covers) + (("cloud",) if cloud_bias is not None else ())
    bias = [0.0] * len(covers) + ([cloud_bias] if cloud_bias is not None else [])
    cover, refl, _ = render_scene(rng, size, size, names, bias=bias)
    cloud = cover == names.index("cloud") if cloud_bias is not None else np.zeros_like(cover, bool)
    origin = (float(rng.uniform(3e5, 7e5)) // 60 * 60, float(rng.uniform(4.9e6, 5.5e6)) // 60 * 60)
    return SyntheticScene(refl, cover, names, cloud, origin, date(2023, 6, 1), fill_cols)


def _block_mean(x: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor x factor`` pixel blocks of ``(..., H, W)``."""
    if factor == 1:
        return x
    *lead, h, w = x.shape
    return x.reshape(*lead, h // factor, factor, w // factor, factor).mean((-3, -1))


def observe(scene: SyntheticScene, sensor: str | Sensor, gsd: float) -> np.ndarray:
    """The scene's reflectance at ``sensor``'s band centres, averaged to ``gsd`` metres:
    ``(C, H * 10 / gsd, W * 10 / gsd)`` float32."""
    sensor = get_sensor(sensor)
    weights = interpolation_weights(SENSORS["sentinel2_l1c"].centres, sensor.centres)
    refl = np.einsum("cs,shw->chw", weights.astype(np.float32), scene.reflectance)
    return _block_mean(refl, int(gsd // 10)).astype(np.float32)


def _write_tif(
    path: Path,
    array: np.ndarray,
    scene: SyntheticScene,
    gsd: float,
    nodata: float | None = None,
    descriptions: Sequence[str] = (),
    tags: dict[str, str] | None = None,
) -> Path:
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    from util.inference.geotiff import write_array

    north_up = Affine(gsd, 0.0, scene.origin[0], 0.0, -gsd, scene.origin[1])
    crs = CRS.from_epsg(EPSG)
    return write_array(path, array, crs, north_up, nodata, descriptions, tags, compress="deflate")


def _masks(scene: SyntheticScene, gsd: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fill, cloud, near_cloud)`` bool maps at ``gsd``: cloud where over half a pixel is cloud,
    near_cloud where some of it is (and not cloud)."""
    f = int(gsd // 10)
    frac = _block_mean(scene.cloud.astype(np.float32), f)
    fill = np.zeros(frac.shape, bool)
    fill[:, : scene.fill_cols // f] = True
    cloud = (frac > 0.5) & ~fill
    return fill, cloud, (frac > 0) & ~cloud & ~fill


# --------------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------------
def write_sentinel2(root: str | Path, scene: SyntheticScene, tile: str = "T32TQM") -> Path:
    """Per-band GeoTIFFs of the 12 L2A bands at native resolution in ``root/<granule>/``; fill
    columns are DN 0 (the nodata of Sentinel-2 products). Returns the folder."""
    s2 = SENSORS["sentinel2_l2a"]
    stamp = f"{scene.acquired:%Y%m%d}T101559"
    folder = Path(root) / f"{tile}_{stamp}"
    refl = observe(scene, s2, 10)
    dn = s2.scale.to_dn(refl)
    for i, band in enumerate(s2.bands):
        f = int(band.gsd_m // 10)
        data = s2.scale.to_dn(_block_mean(refl[i], f)) if f > 1 else dn[i]
        data[:, : scene.fill_cols // f] = 0
        name = f"{tile}_{stamp}_{band.name}_{_S2_GSD[int(band.gsd_m)]}.tif"
        _write_tif(folder / name, data, scene, band.gsd_m, nodata=0)
    return folder


def landsat_product_id(sensor: str, acquired: date, path_row: tuple[int, int] = (195, 27)) -> str:
    """``LC08_L2SP_195027_20230601_20230607_02_T1`` (processed 6 days after acquisition)."""
    processed = date.fromordinal(acquired.toordinal() + 6)
    return (f"{LANDSAT_PRODUCT_PREFIX[sensor]}_L2SP_{path_row[0]:03d}{path_row[1]:03d}_"
            f"{acquired:%Y%m%d}_{processed:%Y%m%d}_02_T1")  # fmt: skip


def _qa_pixel(fill: np.ndarray, cloud: np.ndarray, near: np.ndarray) -> np.ndarray:
    b = LANDSAT_QA_BITS
    low_conf = (1 << 8) | (1 << 10) | (1 << 12) | (1 << 14)  # cloud/shadow/snow/cirrus conf low
    qa = np.full(fill.shape, (1 << b["clear"]) | low_conf, np.uint16)
    qa[near] = (1 << b["dilated_cloud"]) | low_conf
    qa[cloud] = (1 << b["cloud"]) | (3 << 8) | (1 << 10) | (1 << 12) | (1 << 14)
    qa[fill] = 1 << b["fill"]
    return qa


def _mtl(product: str, sensor: Sensor, sid: str, scene: SyntheticScene, shape) -> str:
    spacecraft, sensor_id = _LANDSAT_SENSOR_ID[sid]
    nums = [b.name[1:] for b in sensor.bands]
    s = sensor.scale
    lines = ["GROUP = LANDSAT_METADATA_FILE", "  GROUP = PRODUCT_CONTENTS",
             '    ORIGIN = "Image courtesy of the U.S. Geological Survey"',
             f'    LANDSAT_PRODUCT_ID = "{product}"', '    PROCESSING_LEVEL = "L2SP"',
             '    COLLECTION_NUMBER = 02']  # fmt: skip
    lines += [f'    FILE_NAME_BAND_{n} = "{product}_SR_B{n}.TIF"' for n in nums]
    lines += [f'    FILE_NAME_QUALITY_L1_PIXEL = "{product}_QA_PIXEL.TIF"',
              f'    FILE_NAME_METADATA_ODL = "{product}_MTL.txt"', "  END_GROUP = PRODUCT_CONTENTS",
              "  GROUP = IMAGE_ATTRIBUTES", f'    SPACECRAFT_ID = "{spacecraft}"',
              f'    SENSOR_ID = "{sensor_id}"', "    WRS_PATH = 195", "    WRS_ROW = 27",
              f"    DATE_ACQUIRED = {scene.acquired:%Y-%m-%d}", "  END_GROUP = IMAGE_ATTRIBUTES",
              "  GROUP = PROJECTION_ATTRIBUTES", '    MAP_PROJECTION = "UTM"', '    DATUM = "WGS84"',
              f"    UTM_ZONE = {EPSG % 100}", "    GRID_CELL_SIZE_REFLECTIVE = 30.00",
              f"    REFLECTIVE_LINES = {shape[0]}", f"    REFLECTIVE_SAMPLES = {shape[1]}",
              "  END_GROUP = PROJECTION_ATTRIBUTES",
              "  GROUP = LEVEL2_SURFACE_REFLECTANCE_PARAMETERS"]  # fmt: skip
    for n in nums:
        lines += [f"    REFLECTANCE_MAXIMUM_BAND_{n} = {s.to_reflectance(np.array(65535))[()]:.6f}",
                  f"    REFLECTANCE_MINIMUM_BAND_{n} = {s.to_reflectance(np.array(1))[()]:.6f}"]  # fmt: skip
    for n in nums:
        lines += [f"    QUANTIZE_CAL_MAX_BAND_{n} = 65535", f"    QUANTIZE_CAL_MIN_BAND_{n} = 1"]
    for n in nums:
        lines += [f"    REFLECTANCE_MULT_BAND_{n} = {s.gain:.4E}",
                  f"    REFLECTANCE_ADD_BAND_{n} = {s.offset:.6f}"]  # fmt: skip
    lines += ["  END_GROUP = LEVEL2_SURFACE_REFLECTANCE_PARAMETERS",
              "END_GROUP = LANDSAT_METADATA_FILE", "END", ""]  # fmt: skip
    return "\n".join(lines)


def write_landsat_c2l2(root: str | Path, scene: SyntheticScene, sensor: str = "landsat8") -> Path:
    """A Landsat Collection 2 Level-2 product folder (30 m) of ``scene``; returns the folder."""
    if sensor not in LANDSAT_PRODUCT_PREFIX:
        raise ValueError(
            f"sensor must be one of {', '.join(LANDSAT_PRODUCT_PREFIX)}, got {sensor!r}"
        )
    ls = SENSORS[sensor]
    product = landsat_product_id(sensor, scene.acquired)
    folder = Path(root) / product
    refl = observe(scene, ls, 30)
    fill, cloud, near = _masks(scene, 30)
    dn = ls.scale.to_dn(refl)
    dn[:, fill] = 0
    for i, band in enumerate(ls.bands):
        _write_tif(folder / f"{product}_SR_{band.name}.TIF", dn[i], scene, 30, nodata=0)
    _write_tif(folder / f"{product}_QA_PIXEL.TIF", _qa_pixel(fill, cloud, near), scene, 30, 1)
    (folder / f"{product}_MTL.txt").write_text(_mtl(product, ls, sensor, scene, fill.shape))
    return folder


def hls_granule_id(product: str, acquired: date, tile: str = "T32TQM") -> str:
    """``HLS.S30.T32TQM.2023152T101559.v2.0`` (year and day of year)."""
    return f"HLS.{product}.{tile}.{acquired:%Y%j}T101559.v2.0"


def write_hls(root: str | Path, scene: SyntheticScene, product: str = "S30") -> Path:
    """An HLS v2 granule (``S30`` or ``L30``, 30 m) in ``root/<granule id>/``; returns the folder."""
    sid = {"S30": "hls_s30", "L30": "hls_l30"}.get(product)
    if sid is None:
        raise ValueError(f"HLS product must be S30 or L30, got {product!r}")
    hls = SENSORS[sid]
    granule = hls_granule_id(product, scene.acquired)
    folder = Path(root) / granule
    refl = observe(scene, hls, 30)
    fill, cloud, near = _masks(scene, 30)
    dn = hls.scale.to_dn(refl)
    dn[:, fill] = int(hls.scale.nodata)
    tags = {"scale_factor": str(hls.scale.gain), "add_offset": "0.0"}
    for i, band in enumerate(hls.bands):
        _write_tif(folder / f"{granule}.{band.name}.tif", dn[i], scene, 30, hls.scale.nodata,
                   tags=tags)  # fmt: skip
    b = HLS_FMASK_BITS
    fmask = np.zeros(fill.shape, np.uint8)
    fmask[near] = 1 << b["adjacent"]
    fmask[cloud] = 1 << b["cloud"]
    fmask[fill] = 255
    _write_tif(folder / f"{granule}.Fmask.tif", fmask, scene, 30, nodata=255)
    return folder


def write_rgbn(path: str | Path, scene: SyntheticScene) -> Path:
    """A 4-band (blue, green, red, NIR) uint16 GeoTIFF at 10 m, DN = reflectance x 10000."""
    rgbn = SENSORS["rgbn"]
    dn = rgbn.scale.to_dn(observe(scene, rgbn, 10))
    dn[:, :, : scene.fill_cols] = 0
    names = [b.common_name or b.name for b in rgbn.bands]
    return _write_tif(Path(path), dn, scene, 10, nodata=0, descriptions=names)


def write_sensor_scenes(
    root: str | Path,
    scene: SyntheticScene | None = None,
    sensors: Sequence[str] = ("sentinel2", "landsat8", "hls_s30", "hls_l30", "rgbn"),
) -> dict[str, Path]:
    """Write one scene (default: :func:`render_sensor_scene`) as each of ``sensors``
    (``sentinel2``, ``landsat8``/``landsat9``/``landsat7_etm``/``landsat5_tm``, ``hls_s30``,
    ``hls_l30``, ``rgbn``); returns the written folder (file for ``rgbn``) per sensor."""
    scene = scene or render_sensor_scene()
    root = Path(root)
    out: dict[str, Path] = {}
    for s in sensors:
        if s == "sentinel2":
            out[s] = write_sentinel2(root / "sentinel2", scene)
        elif s in LANDSAT_PRODUCT_PREFIX:
            out[s] = write_landsat_c2l2(root / s, scene, s)
        elif s in ("hls_s30", "hls_l30"):
            out[s] = write_hls(root / "hls", scene, s[-3:].upper())
        elif s == "rgbn":
            out[s] = write_rgbn(root / "rgbn" / "scene_rgbn.tif", scene)
        else:
            raise ValueError(f"cannot write sensor {s!r}")
        logger.info("wrote %s: %s", s, out[s])
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="output folder")
    parser.add_argument("--size", type=int, default=240, help="10 m pixels per side (x6)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fill_cols", type=int, default=0, help="nodata columns (x3) on the left")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write_sensor_scenes(
        args.root, render_sensor_scene(args.size, args.seed, fill_cols=args.fill_cols)
    )


if __name__ == "__main__":
    main()
