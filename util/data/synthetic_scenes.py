"""Synthetic land-cover scenes for the synthetic data sets, and the file helpers their writers share.

Each scene is a land-cover map with spatial structure (thresholded smooth random fields, mixed
spectra at class borders), each cover with a plausible 13-band reflectance spectrum (:data:`COVERS`:
vegetation red edge and NIR plateau, water absorption in NIR/SWIR, soil rising into SWIR, flat
bright built-up, snow/cloud), plus per-scene spectral variation, per-pixel texture and noise.
:func:`render_scene` draws cover maps (labels come from the cover), :func:`render_land_use` scenes of
land uses (:data:`LAND_USES`: parcels, rows, street grids, rivers, ...). The per-dataset writers
live next to the layouts they imitate (``write_synthetic`` in :mod:`util.data.fmow`, ...);
:mod:`util.data.synthetic` runs them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from util.data.sentinel2 import BANDS, L1C_BANDS

__all__ = [
    "COVERS",
    "CRS_EPSG",
    "GROUND_COVERS",
    "LAND_USES",
    "choose",
    "covering_split",
    "downsample",
    "progress_bar",
    "random_origin",
    "render_land_use",
    "render_scene",
    "select_bands",
    "smooth_fields",
    "to_dn",
    "write_geotiff",
]

# Reflectance spectra (B01..B12 incl. B10, L1C order) per land cover. Values follow the shapes of
# the reference table of typical surfaces; the extra covers are mixtures/variants of those.
# fmt: off
COVERS: dict[str, tuple[float, ...]] = {
    #                B01   B02   B03   B04   B05   B06   B07   B08   B8A   B09    B10    B11   B12
    "water":        (0.12, 0.09, 0.07, 0.04, 0.03, 0.02, 0.02, 0.015, 0.012, 0.005, 0.002, 0.005, 0.003),
    "river":        (0.13, 0.11, 0.11, 0.09, 0.07, 0.05, 0.04, 0.035, 0.03, 0.012, 0.002, 0.015, 0.008),
    "forest":       (0.08, 0.05, 0.06, 0.03, 0.08, 0.22, 0.29, 0.31, 0.33, 0.12, 0.004, 0.14, 0.06),
    "grassland":    (0.10, 0.08, 0.10, 0.06, 0.13, 0.28, 0.34, 0.37, 0.39, 0.15, 0.005, 0.22, 0.12),
    "herbaceous":   (0.11, 0.09, 0.11, 0.10, 0.16, 0.25, 0.29, 0.31, 0.33, 0.13, 0.005, 0.28, 0.18),
    "annual_crop":  (0.10, 0.07, 0.10, 0.05, 0.15, 0.35, 0.44, 0.47, 0.49, 0.18, 0.005, 0.21, 0.10),
    "permanent_crop": (0.12, 0.10, 0.12, 0.13, 0.17, 0.23, 0.26, 0.28, 0.30, 0.11, 0.005, 0.31, 0.23),
    "bare_soil":    (0.13, 0.12, 0.15, 0.20, 0.23, 0.25, 0.27, 0.28, 0.30, 0.10, 0.005, 0.38, 0.30),
    "built_up":     (0.15, 0.14, 0.15, 0.16, 0.18, 0.19, 0.20, 0.21, 0.22, 0.08, 0.005, 0.24, 0.20),
    "industrial":   (0.21, 0.21, 0.22, 0.23, 0.24, 0.25, 0.26, 0.26, 0.27, 0.10, 0.006, 0.30, 0.27),
    "road":         (0.10, 0.09, 0.09, 0.09, 0.10, 0.10, 0.11, 0.11, 0.12, 0.05, 0.003, 0.13, 0.12),
    "wetland":      (0.09, 0.07, 0.07, 0.05, 0.08, 0.14, 0.17, 0.18, 0.19, 0.07, 0.003, 0.09, 0.05),
    "sand":         (0.18, 0.20, 0.25, 0.30, 0.33, 0.35, 0.37, 0.38, 0.40, 0.15, 0.006, 0.45, 0.38),
    "snow":         (0.90, 0.90, 0.88, 0.85, 0.82, 0.80, 0.78, 0.75, 0.72, 0.30, 0.05, 0.10, 0.05),
    "cloud":        (0.60, 0.60, 0.60, 0.60, 0.60, 0.60, 0.60, 0.60, 0.60, 0.40, 0.20, 0.45, 0.35),
}
# fmt: on
_COVER_NAMES = tuple(COVERS)
_SPECTRA = np.array([COVERS[c] for c in _COVER_NAMES], dtype=np.float32)  # (K, 13) L1C order
#: covers of the ground (no snow, no cloud)
GROUND_COVERS = tuple(c for c in _COVER_NAMES if c not in ("snow", "cloud"))
CRS_EPSG = 32632  # WGS 84 / UTM zone 32N


# --------------------------------------------------------------------------------------------------
# Scene rendering
# --------------------------------------------------------------------------------------------------


def smooth_fields(rng: np.random.Generator, k: int, h: int, w: int, cell: float) -> np.ndarray:
    """``k`` smooth random fields ``(k, h, w)`` with correlation length ~``cell`` px, unit-ish std."""
    gh, gw = int(np.ceil(h / cell)) + 2, int(np.ceil(w / cell)) + 2
    grid = torch.from_numpy(rng.standard_normal((1, k, gh, gw)).astype(np.float32))
    up = F.interpolate(
        grid, size=(h + 2 * int(cell), w + 2 * int(cell)), mode="bicubic", align_corners=False
    )
    c = int(cell)
    return up[0, :, c : c + h, c : c + w].numpy()


def render_scene(
    rng: np.random.Generator,
    h: int,
    w: int,
    covers: Sequence[str],
    bias: Sequence[float] | None = None,
    logits: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render a land-cover scene.

    Args:
        rng: random generator (all randomness comes from it).
        h, w: size in pixels (10 m grid).
        covers: cover names present in the scene (keys of :data:`COVERS`).
        bias: per-cover additive bias of the cover logits (larger = more area).
        logits: precomputed ``(len(covers), h, w)`` cover logits (to re-render a changed scene).

    Returns:
        ``(cover, reflectance, logits)``: cover index map ``(h, w)`` into ``covers``, reflectance
        ``(13, h, w)`` float32 in L1C band order, and the logits used.
    """
    k = len(covers)
    if logits is None:
        cell = max(4.0, min(h, w) / 3.0)
        logits = 2.5 * smooth_fields(rng, k, h, w, cell)
        if bias is not None:
            logits += np.asarray(bias, dtype=np.float32)[:, None, None]
    cover = logits.argmax(0)
    soft = np.exp(4.0 * (logits - logits.max(0, keepdims=True)))
    soft /= soft.sum(0, keepdims=True)
    spectra = _SPECTRA[[_COVER_NAMES.index(c) for c in covers]]  # (k, 13)
    spectra = spectra * (1.0 + 0.04 * rng.standard_normal(spectra.shape).astype(np.float32))
    refl = np.einsum("khw,kb->bhw", soft, spectra)
    texture = 1.0 + 0.06 * smooth_fields(rng, 1, h, w, 3.0)
    refl *= texture * rng.uniform(0.93, 1.07)
    refl *= 1.0 + 0.02 * rng.standard_normal(refl.shape).astype(np.float32)
    return cover, refl.astype(np.float32), logits


# --------------------------------------------------------------------------------------------------
# Land-use scenes: spatial-spectral structure built from the same cover library
# --------------------------------------------------------------------------------------------------
# A land use is a layout of covers with its own texture, in 10 m pixels: field parcels with crop
# rows, orchards, a street grid with houses and gardens, large roofs, a highway or a river across
# other land, a lake with its shore, a forest canopy. Each generator returns cover abundances
# (fractions per library cover, mixed at borders) and a brightness modulation (canopy shadows,
# roof materials). EuroSAT-like images show one land use (the class, as in EuroSAT's 64 px
# patches); fMoW-like scenes are mosaics of the same land uses, so what a model learns on the
# second is what the first asks for. Absolute levels do not identify a class: every image gets
# its own illumination and atmosphere (:func:`_atmosphere`).

Abundance = dict[str, np.ndarray]


def _soft(x: np.ndarray, width: float = 0.5) -> np.ndarray:
    """Smooth step 0 -> 1 around ``x = 0`` (mixed pixels at edges)."""
    return (1.0 / (1.0 + np.exp(-np.clip(x / width, -30, 30)))).astype(np.float32)


def _rotated(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates ``(u, v)`` in a frame rotated by a random angle about a random point."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0.0, np.pi)
    xx, yy = xx - rng.uniform(0, w), yy - rng.uniform(0, h)
    return xx * np.cos(a) + yy * np.sin(a), -xx * np.sin(a) + yy * np.cos(a)


def _field(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    return smooth_fields(rng, 1, h, w, cell)[0]


def _parcels(
    rng: np.random.Generator, h: int, w: int, size: float
) -> tuple[np.ndarray, np.ndarray]:
    """Voronoi parcels of mean side ``size`` px: ``(labels (h, w), distance to the border)``."""
    n = max(2, int(round(h * w / size**2)) + 1)
    seeds = rng.uniform(-0.1, 1.1, size=(n, 2)) * np.array([h, w], dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d = np.sqrt(
        (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
    )
    part = np.partition(d, 1, axis=0)
    return d.argmin(0), (part[1] - part[0]) / 2


def _rows(
    rng: np.random.Generator, h: int, w: int, labels: np.ndarray, period: tuple[float, float]
):
    """Per-parcel parallel rows: ``cos`` phase in ``[-1, 1]`` with a parcel's own direction and period."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    n = int(labels.max()) + 1
    angle = rng.uniform(0, np.pi, n)[labels]
    per = rng.uniform(*period, n)[labels]
    phase = rng.uniform(0, 2 * np.pi, n)[labels]
    u = xx * np.cos(angle) + yy * np.sin(angle)
    return np.cos(2 * np.pi * u / per + phase).astype(np.float32)


def _lu_forest(rng, h, w):
    gaps = _soft(_field(rng, h, w, 6.0) - 1.3, 0.3)  # clearings
    crowns = _field(rng, h, w, 1.5)  # tree crowns and their shadows
    return {"forest": 1 - gaps, "grassland": gaps}, 1 + 0.15 * crowns


def _lu_pasture(rng, h, w):
    labels, border = _parcels(rng, h, w, rng.uniform(14, 24))
    hedge = _soft(1.0 - border, 0.4) * float(rng.random() < 0.6)
    bright = 1 + rng.normal(0, 0.06, labels.max() + 1)[labels] + 0.03 * _field(rng, h, w, 5.0)
    return {"grassland": 1 - hedge, "forest": hedge}, bright


def _lu_herbaceous(rng, h, w):
    shrub = _soft(_field(rng, h, w, 3.0) - 0.8, 0.4)
    soil = 0.6 * _soft(_field(rng, h, w, 3.0) - 1.0, 0.4)
    grass = _soft(_field(rng, h, w, 4.0), 0.5)
    rest = (1 - shrub) * (1 - soil)
    return {
        "herbaceous": rest * (1 - 0.5 * grass),
        "grassland": rest * 0.5 * grass,
        "bare_soil": (1 - shrub) * soil,
        "forest": shrub,
    }, 1 + 0.08 * _field(rng, h, w, 2.0)


def _lu_annual_crop(rng, h, w):
    labels, border = _parcels(rng, h, w, rng.uniform(7, 14))
    n = int(labels.max()) + 1
    stage = rng.uniform(0.0, 1.0, n)[labels]  # bare after harvest .. full canopy
    rows = _rows(rng, h, w, labels, (2.0, 3.5))
    veg = np.clip(stage * (0.8 + 0.2 * rows), 0, 1)
    margin = _soft(0.8 - border, 0.3)  # grass strips between fields
    return {
        "annual_crop": veg * (1 - margin),
        "bare_soil": (1 - veg) * (1 - margin),
        "grassland": margin,
    }, 1 + 0.03 * _field(rng, h, w, 3.0)


def _lu_permanent_crop(rng, h, w):
    labels, border = _parcels(rng, h, w, rng.uniform(9, 16))
    rows = _soft(_rows(rng, h, w, labels, (3.0, 5.0)) - 0.2, 0.3)  # tree / vine rows
    grassy = rng.random(int(labels.max()) + 1)[labels]  # inter-rows: grass or bare soil
    return {
        "permanent_crop": rows,
        "herbaceous": (1 - rows) * grassy,
        "bare_soil": (1 - rows) * (1 - grassy),
    }, 1 + 0.04 * _field(rng, h, w, 2.0)


def _grid_distance(u: np.ndarray, spacing: float) -> np.ndarray:
    r = np.mod(u, spacing)
    return np.minimum(r, spacing - r)


def _lu_residential(rng, h, w):
    u, v = _rotated(rng, h, w)
    su, sv = rng.uniform(6, 9), rng.uniform(6, 9)  # blocks of 60-90 m
    street = np.maximum(
        _soft(0.6 - _grid_distance(u, su), 0.3), _soft(0.6 - _grid_distance(v, sv), 0.3)
    )
    houses = _soft(_field(rng, h, w, 1.5) + 0.3, 0.3)  # roofs vs gardens inside the blocks
    trees = _soft(_field(rng, h, w, 2.0) - 0.5, 0.3)
    block = 1 - street
    return {
        "road": street,
        "built_up": block * houses,
        "grassland": block * (1 - houses) * (1 - trees),
        "forest": block * (1 - houses) * trees,
    }, 1 + 0.12 * _field(rng, h, w, 1.2)  # roof materials


def _lu_industrial(rng, h, w):
    u, v = _rotated(rng, h, w)
    s = rng.uniform(10, 16)  # plots of 100-160 m
    iu, iv = np.floor(u / s).astype(np.int64), np.floor(v / s).astype(np.int64)
    cell = (iu - iu.min()) * 1000 + (iv - iv.min())
    ids, inv = np.unique(cell, return_inverse=True)
    kind = rng.choice(3, size=ids.size, p=[0.6, 0.25, 0.15])[inv.reshape(cell.shape)]
    edge = np.minimum(_grid_distance(u, s), _grid_distance(v, s))
    roof = _soft(edge - rng.uniform(1.5, 2.5), 0.3) * (kind == 0)
    lot = 1 - roof
    bright = 1 + rng.normal(0, 0.12, ids.size)[inv.reshape(cell.shape)] * roof
    return {
        "industrial": roof,
        "road": lot * (kind != 2),  # yards, parking, access roads
        "bare_soil": lot * (kind == 2),
    }, bright


def _band_distance(rng, h, w, amplitude: float, wavelength: tuple[float, float]) -> np.ndarray:
    """Distance (px) to the centre line of a band across the image (road, river): a sine of
    ``amplitude`` px and a wavelength drawn from ``wavelength`` in a randomly rotated frame."""
    u, v = _rotated(rng, h, w)
    wave = rng.uniform(*wavelength)
    return np.abs(v - amplitude * np.sin(2 * np.pi * u / wave + rng.uniform(0, 2 * np.pi)))


def _background(rng, h, w, choices: Sequence[str]):
    return LAND_USES[choices[int(rng.integers(len(choices)))]](rng, h, w)


def _overlay(base: tuple[Abundance, np.ndarray], top: Abundance, cover: np.ndarray):
    ab, bright = base
    out = {k: a * (1 - cover) for k, a in ab.items()}
    for k, a in top.items():
        out[k] = out.get(k, 0) + a * cover
    return out, bright * (1 - cover) + cover


def _lu_highway(rng, h, w):
    base = _background(rng, h, w, ("annual_crop", "pasture", "herbaceous"))
    dist = _band_distance(rng, h, w, rng.uniform(0, 3), (30, 80))
    width = rng.uniform(2.0, 3.5)  # 20-35 m carriageway
    road = _soft(width / 2 - dist, 0.4)
    verge = _soft(width / 2 + 1.0 - dist, 0.4) - road  # grass verges
    out, bright = _overlay(base, {"grassland": np.ones((h, w), np.float32)}, verge)
    return _overlay((out, bright), {"road": np.ones((h, w), np.float32)}, road)


def _lu_river(rng, h, w):
    base = _background(rng, h, w, ("forest", "pasture", "annual_crop", "herbaceous"))
    dist = _band_distance(rng, h, w, rng.uniform(1, 5), (20, 50))  # meanders
    width = rng.uniform(2.0, 5.0)
    water = _soft(width / 2 - dist, 0.4)
    banks = _soft(width / 2 + rng.uniform(1, 3) - dist, 0.4) - water  # riparian trees
    out, bright = _overlay(base, {"forest": np.ones((h, w), np.float32)}, banks)
    return _overlay((out, bright), {"river": np.ones((h, w), np.float32)}, water)


def _lu_lake(rng, h, w):
    base = _background(rng, h, w, ("forest", "pasture", "herbaceous"))
    level = _field(rng, h, w, max(6.0, min(h, w) / 2)) + rng.uniform(0.5, 2.5)
    water = _soft(level, 0.3)
    shore = _soft(level + 0.5, 0.3) - water
    beach = "sand" if rng.random() < 0.4 else "wetland"
    out, bright = _overlay(base, {beach: np.ones((h, w), np.float32)}, shore)
    out, bright = _overlay((out, bright), {"water": np.ones((h, w), np.float32)}, water)
    return out, bright * (1 + 0.04 * _field(rng, h, w, 8.0) * water)  # sediment, waves


LAND_USES: dict[str, Callable[[np.random.Generator, int, int], tuple[Abundance, np.ndarray]]] = {
    "annual_crop": _lu_annual_crop,
    "forest": _lu_forest,
    "herbaceous": _lu_herbaceous,
    "highway": _lu_highway,
    "industrial": _lu_industrial,
    "pasture": _lu_pasture,
    "permanent_crop": _lu_permanent_crop,
    "residential": _lu_residential,
    "river": _lu_river,
    "lake": _lu_lake,
}
_WAVELENGTH = np.array([BANDS[b].wavelength_nm for b in L1C_BANDS], dtype=np.float32)


def _atmosphere(rng: np.random.Generator, refl: np.ndarray) -> np.ndarray:
    """Top-of-atmosphere reflectance of one acquisition: ``gain_b * surface + path_b``.

    Per image: a global gain (sun elevation, season: 0.8-1.2) with a few percent per band
    (calibration, adjacency), and path radiance from haze, strongest in the blue and decaying as
    ``(443 nm / wavelength) ** alpha`` (Angstrom exponent 1-2.5, Rayleigh + aerosols), up to 0.08
    reflectance in B01.
    """
    gain = rng.uniform(0.8, 1.2) * (1 + 0.04 * rng.standard_normal(13))
    path = rng.uniform(0.0, 0.08) * (443.0 / _WAVELENGTH) ** rng.uniform(1.0, 2.5)
    return (refl * gain[:, None, None] + path[:, None, None]).astype(np.float32)


def render_land_use(
    rng: np.random.Generator,
    h: int,
    w: int,
    land_uses: Sequence[str],
    bias: Sequence[float] | None = None,
    extra_covers: Sequence[str] = (),
) -> np.ndarray:
    """Top-of-atmosphere reflectance ``(13, h, w)`` (L1C order) of a scene of ``land_uses``.

    One land use fills the image; several form a mosaic of regions (smooth random fields, the
    first favoured by ``bias``) with mixed pixels at their borders. ``extra_covers`` (e.g.
    ``"cloud"``) are laid over as blobs. Each cover's spectrum varies a few percent per image,
    pixels carry 2 % noise, and the whole image gets its own illumination and atmosphere.
    """
    parts = [LAND_USES[name](rng, h, w) for name in land_uses]
    if len(parts) == 1:
        ab, bright = parts[0]
    else:
        logits = 2.5 * smooth_fields(rng, len(parts), h, w, max(4.0, min(h, w) / 3.0))
        if bias is not None:
            logits += np.asarray(bias, dtype=np.float32)[:, None, None]
        soft = np.exp(4.0 * (logits - logits.max(0, keepdims=True)))
        soft /= soft.sum(0, keepdims=True)
        ab, bright = {}, np.zeros((h, w), np.float32)
        for weight, (a, b) in zip(soft, parts):
            for k, x in a.items():
                ab[k] = ab.get(k, 0) + weight * x
            bright += weight * b
    for cover in extra_covers:
        blob = _soft(_field(rng, h, w, max(4.0, min(h, w) / 3.0)) - rng.uniform(0.5, 1.5), 0.3)
        ab, bright = _overlay((ab, bright), {cover: np.ones((h, w), np.float32)}, blob)
    names = list(ab)
    weights = np.stack([np.broadcast_to(ab[k], (h, w)) for k in names]).astype(np.float32)
    weights /= np.maximum(weights.sum(0, keepdims=True), 1e-6)
    spectra = _SPECTRA[[_COVER_NAMES.index(c) for c in names]]
    spectra = spectra * (1.0 + 0.04 * rng.standard_normal(spectra.shape).astype(np.float32))
    refl = np.einsum("khw,kb->bhw", weights, spectra) * np.asarray(bright, np.float32)[None]
    refl *= 1.0 + 0.02 * rng.standard_normal(refl.shape).astype(np.float32)
    return _atmosphere(rng, np.clip(refl, 0.0, None))


# --------------------------------------------------------------------------------------------------
# Helpers of the per-dataset writers
# --------------------------------------------------------------------------------------------------


def progress_bar(total: int, desc: str, enabled: bool):
    """tqdm bar over ``range(total)`` (silent unless ``enabled``)."""
    from tqdm.auto import tqdm

    return tqdm(range(total), desc=desc, disable=not enabled, unit="img")


def to_dn(refl: np.ndarray) -> np.ndarray:
    """Reflectance -> uint16 digital numbers (x 10000)."""
    return np.clip(np.rint(refl * 10000.0), 1, 65535).astype(np.uint16)


def downsample(band: np.ndarray, factor: int) -> np.ndarray:
    """Block mean of ``band`` by ``factor`` (a 20 m / 60 m band from the 10 m grid)."""
    if factor == 1:
        return band
    h, w = band.shape
    return band.reshape(h // factor, factor, w // factor, factor).mean((1, 3))


def write_geotiff(path: Path, array: np.ndarray, res: float, origin: tuple[float, float]) -> None:
    """Write ``(C, H, W)`` (or ``(H, W)``) as a GeoTIFF with UTM CRS and a north-up geotransform."""
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    from util.inference.geotiff import write_array

    north_up = Affine(res, 0.0, origin[0], 0.0, -res, origin[1])
    write_array(path, array, CRS.from_epsg(CRS_EPSG), north_up)


def random_origin(rng: np.random.Generator) -> tuple[float, float]:
    """Upper-left corner ``(x, y)`` in metres of a scene somewhere in the UTM zone."""
    return float(rng.uniform(3e5, 7e5)), float(rng.uniform(4.9e6, 5.5e6))


def choose(
    rng: np.random.Generator, pool: Sequence[str], n: int, exclude: Sequence[str] = ()
) -> list[str]:
    """``n`` distinct names of ``pool`` (all of them if fewer) other than ``exclude``, at random."""
    pool = [c for c in pool if c not in exclude]
    return [pool[i] for i in rng.choice(len(pool), size=min(n, len(pool)), replace=False)]


def select_bands(refl: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Bands ``names`` (in that order) of an L1C-ordered ``(13, H, W)`` array."""
    return refl[[L1C_BANDS.index(b) for b in names]]


def covering_split(
    labels: Sequence[set], sizes: dict[str, int], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Random split of ``len(labels)`` images into ``sizes`` (the last split takes the rest) in
    which every split holds every label whenever the counts allow.

    Labels are placed rarest first, one image per split that lacks the label (the last, largest
    split first, so a label of two images is in training and one held-out split); the rest is
    filled at random. ``labels[i]`` is the set of labels of image ``i`` (one class or several).
    """
    names = list(sizes)
    n = len(labels)
    order = [int(i) for i in rng.permutation(n)]
    cap = {k: sizes[k] for k in names[:-1]}
    cap[names[-1]] = n - sum(cap.values())
    assigned: dict[str, list[int]] = {k: [] for k in names}
    free = set(range(n))
    count: dict = {}
    for ls in labels:
        for lab in ls:
            count[lab] = count.get(lab, 0) + 1
    for lab in sorted(count, key=lambda x: (count[x], str(x))):
        for k in [names[-1], *names[:-1]]:
            if len(assigned[k]) >= cap[k] or any(lab in labels[i] for i in assigned[k]):
                continue
            pick = next((i for i in order if i in free and lab in labels[i]), None)
            if pick is None:
                break
            assigned[k].append(pick)
            free.discard(pick)
    for i in order:
        if i in free:
            k = next(k for k in names if len(assigned[k]) < cap[k])
            assigned[k].append(i)
    return {k: np.array(sorted(v), dtype=np.int64) for k, v in assigned.items()}
