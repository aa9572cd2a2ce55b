"""Landsat Collection 2 Level-2 and HLS v2 products on disk: names, scaling metadata, quality bits.

* Landsat C2 L2: a product folder ``LC08_L2SP_PPPRRR_YYYYMMDD_yyyymmdd_02_T1`` holding
  ``<id>_SR_B1.TIF`` ... (surface reflectance, uint16), ``<id>_QA_PIXEL.TIF`` (fill and cloud
  bits) and ``<id>_MTL.txt`` / ``<id>_MTL.xml`` whose ``LEVEL2_SURFACE_REFLECTANCE_PARAMETERS``
  give each band's ``REFLECTANCE_MULT_BAND_n`` / ``REFLECTANCE_ADD_BAND_n`` (the MTL also holds
  Level-1 TOA factors of the same names in another group: only the Level-2 group is read). The
  prefix names the satellite (``LC08`` Landsat 8, ``LC09``, ``LE07``, ``LT05`` / ``LT04``).
* HLS v2: ``HLS.S30.T32TQM.2023152T101559.v2.0.B01.tif`` ... and ``....Fmask.tif``; ``S30`` and
  ``L30`` name the sensor, the scale is the table's (0.0001).

:func:`find_product` recognises either from file names alone (a folder, the product's files, or a
folder holding one product); :func:`quality_invalid` turns a ``QA_PIXEL`` / ``Fmask`` window into
the pixels to treat as nodata.
"""

from __future__ import annotations

import logging
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from util.data.sensors import (
    HLS_FMASK_BITS,
    LANDSAT_PRODUCT_PREFIX,
    LANDSAT_QA_BITS,
    SENSORS,
    ReflectanceScale,
)
from util.inference.discovery import SceneError

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MASK_BITS",
    "Product",
    "find_product",
    "parse_mtl",
    "quality_invalid",
]

_LANDSAT_NAME = re.compile(
    r"^(?P<id>(?P<prefix>L[CEOT]0[4-9])_L2S[PR]_\d{6}_\d{8}_\d{8}_\d{2}_(?:T1|T2|RT))_"
    r"(?P<part>SR_B\d{1,2}|QA_PIXEL|MTL)\.(?P<ext>tiff?|txt|xml)$",
    re.IGNORECASE,
)
_HLS_NAME = re.compile(
    r"^(?P<id>HLS\.(?P<product>S30|L30)\.T\d{2}[A-Z]{3}\.\d{7}T\d{6}\.v\d+\.\d+)\."
    r"(?P<part>B\d\d|B8A|Fmask)\.tiff?$",
    re.IGNORECASE,
)
_PREFIX_SENSOR = {v: k for k, v in LANDSAT_PRODUCT_PREFIX.items()} | {"LT04": "landsat5_tm"}
#: quality bits that make a pixel nodata by default (fill is always nodata)
DEFAULT_MASK_BITS = {
    "landsat_qa_pixel": ("dilated_cloud", "cirrus", "cloud", "cloud_shadow"),
    "hls_fmask": ("cloud", "adjacent", "cloud_shadow"),
}


@dataclass
class Product:
    """One Landsat C2 L2 product or HLS granule found on disk.

    Attributes:
        sensor: sensor id of :data:`util.data.sensors.SENSORS` (from the name's prefix).
        name: the product / granule id.
        bands: sensor band name (``B5``, ``B8A``) -> file.
        quality: the ``QA_PIXEL`` / ``Fmask`` file, or None.
        quality_kind: ``landsat_qa_pixel`` or ``hls_fmask``.
        metadata: the MTL file, or None.
        scales: per band, the scaling the metadata states (missing: the table's).
    """

    sensor: str
    name: str
    bands: dict[str, Path] = field(default_factory=dict)
    quality: Path | None = None
    quality_kind: str = ""
    metadata: Path | None = None
    scales: dict[str, ReflectanceScale] = field(default_factory=dict)


def _files(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Candidate files: a folder's files (and those of its sub-folders, one level), or the files
    given."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.is_file())
            out += sorted(f for d in p.iterdir() if d.is_dir() for f in d.iterdir() if f.is_file())
        elif p.is_file():
            out.append(p)
            # the product's other files (MTL, QA) sit next to a band file given alone
            out += sorted(f for f in p.parent.iterdir() if f.is_file() and f != p)
    return out


def find_product(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> Product | None:
    """The Landsat C2 L2 product or HLS granule among ``inputs`` (named as the providers name
    them), or None when no file has such a name (e.g. Sentinel-2 input).

    When band files are given explicitly, only those bands are used (the quality and MTL files
    next to them are still found).

    Raises:
        SceneError: files of several products are mixed (the message names two of them).
    """
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    explicit = {Path(i).resolve() for i in items if Path(i).is_file()}
    found: dict[str, Product] = {}
    for f in _files(inputs):
        m = _LANDSAT_NAME.match(f.name)
        if m:
            prod = found.setdefault(
                m["id"],
                Product(
                    _PREFIX_SENSOR[m["prefix"].upper()], m["id"], quality_kind="landsat_qa_pixel"
                ),
            )
            part = m["part"].upper()
            if part == "QA_PIXEL":
                prod.quality = f
            elif part == "MTL":
                if prod.metadata is None or f.suffix.lower() == ".txt":
                    prod.metadata = f
            elif not explicit or f.resolve() in explicit:
                prod.bands[part.removeprefix("SR_")] = f
            continue
        m = _HLS_NAME.match(f.name)
        if m:
            sensor = f"hls_{m['product'].lower()}"
            prod = found.setdefault(m["id"], Product(sensor, m["id"], quality_kind="hls_fmask"))
            part = m["part"].upper()
            if part == "FMASK":
                prod.quality = f
            elif not explicit or f.resolve() in explicit:
                prod.bands[part] = f
    found = {k: v for k, v in found.items() if v.bands}
    if not found:
        return None
    if len(found) > 1:
        a, b = sorted(found)[:2]
        raise SceneError(
            None, f"files of several products ({a}, {b} ...): give one product's folder"
        )
    prod = next(iter(found.values()))
    if prod.metadata is not None:
        prod.scales = _mtl_scales(prod.metadata)
    elif prod.quality_kind == "landsat_qa_pixel":
        logger.warning(
            "%s: no MTL file; using the Collection 2 Level-2 scaling of the table", prod.name
        )
    return prod


# --------------------------------------------------------------------------------------------------
# MTL
# --------------------------------------------------------------------------------------------------
def parse_mtl(text: str) -> dict[str, dict[str, str]]:
    """Parse a Landsat ``_MTL.txt`` (ODL ``GROUP = ... END_GROUP``) into ``{group: {key: value}}``
    (innermost group; quotes removed)."""
    groups: dict[str, dict[str, str]] = {}
    stack: list[str] = []
    for line in text.splitlines():
        if "=" not in line:
            continue
        key, value = (x.strip() for x in line.split("=", 1))
        if key == "GROUP":
            stack.append(value)
            groups.setdefault(value, {})
        elif key == "END_GROUP":
            if stack:
                stack.pop()
        elif stack:
            groups[stack[-1]][key] = value.strip('"')
    return groups


def _mtl_scales(path: Path) -> dict[str, ReflectanceScale]:
    """Per band (``B1`` ...) the Level-2 surface reflectance scaling of an MTL (.txt or .xml)."""
    group = "LEVEL2_SURFACE_REFLECTANCE_PARAMETERS"
    try:
        if path.suffix.lower() == ".xml":
            node = ET.parse(path).getroot().find(f".//{group}")
            values = {} if node is None else {c.tag: (c.text or "").strip() for c in node}
        else:
            values = parse_mtl(path.read_text(encoding="utf-8", errors="replace")).get(group, {})
    except (OSError, ET.ParseError) as err:
        raise SceneError(path, f"cannot read the product metadata ({err})") from err
    if not values:
        raise SceneError(path, f"no {group} group: not a Collection 2 Level-2 metadata file")
    scales = {}
    for key, mult in values.items():
        m = re.fullmatch(r"REFLECTANCE_MULT_BAND_(\d+)", key)
        if m and f"REFLECTANCE_ADD_BAND_{m[1]}" in values:
            try:
                gain, offset = float(mult), float(values[f"REFLECTANCE_ADD_BAND_{m[1]}"])
            except ValueError as err:
                raise SceneError(path, f"unreadable scale factor for band {m[1]} ({err})") from err
            scales[f"B{m[1]}"] = ReflectanceScale(gain=gain, offset=offset, nodata=0.0)
    return scales


# --------------------------------------------------------------------------------------------------
# Quality bits
# --------------------------------------------------------------------------------------------------
def quality_invalid(
    quality: np.ndarray, kind: str, mask_bits: Sequence[str] | None = None
) -> np.ndarray:
    """Bool map of the pixels a quality band marks as fill or as one of ``mask_bits``.

    Args:
        quality: a ``QA_PIXEL`` (``kind="landsat_qa_pixel"``) or ``Fmask`` (``"hls_fmask"``)
            window, any numeric dtype.
        kind: the quality band's format.
        mask_bits: names of :data:`util.data.sensors.LANDSAT_QA_BITS` /
            :data:`util.data.sensors.HLS_FMASK_BITS` to mask (default :data:`DEFAULT_MASK_BITS`:
            clouds, their shadows and surroundings).
    """
    bits_of = {"landsat_qa_pixel": LANDSAT_QA_BITS, "hls_fmask": HLS_FMASK_BITS}.get(kind)
    if bits_of is None:
        raise ValueError(f"unknown quality band kind {kind!r}")
    names = DEFAULT_MASK_BITS[kind] if mask_bits is None else tuple(mask_bits)
    unknown = [n for n in names if n not in bits_of]
    if unknown:
        raise ValueError(f"unknown {kind} bits {unknown}; known: {', '.join(bits_of)}")
    q = np.nan_to_num(np.asarray(quality), nan=0).astype(np.int64)
    selected = sum(1 << bits_of[n] for n in names)
    bad = (q & selected) != 0
    if kind == "landsat_qa_pixel":
        bad |= (q & (1 << LANDSAT_QA_BITS["fill"])) != 0
    else:
        bad |= q == 255
    return bad


def product_scales(product: Product) -> dict[str, ReflectanceScale]:
    """Each band's scaling: the metadata's, else the table's for the product's sensor."""
    table = SENSORS[product.sensor].scale
    return {b: product.scales.get(b, table) for b in product.bands}
