"""Sentinel-2 band discovery by name: which file (and band of it) holds each band of a scene.

A scene is one stacked GeoTIFF whose bands carry their names as band descriptions, or per-band
files (``T32TQM_20230601T101559_B05_20m.jp2``, ``B05.tif``, ``<patch>_B05.tif``) given as a folder
(searched recursively, so a whole ``.SAFE`` granule or its ``IMG_DATA`` folder works), a list of
files, or a mix. Bands are found by *name* through the band registry
(:func:`util.data.sentinel2.canonical_band`), never by position; a band present at several
resolutions (``R10m``/``R20m``/``R60m``) is taken from its finest file. Also the product's DN
offsets (:func:`safe_dn_offsets`) and the errors every scene reader raises.

rasterio is imported lazily.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from util.data.sentinel2 import BANDS, MODEL_BANDS, canonical_band

logger = logging.getLogger(__name__)

__all__ = [
    "RASTER_SUFFIXES",
    "BandSource",
    "MissingBandError",
    "SceneError",
    "band_from_filename",
    "discover_bands",
    "expand_inputs",
    "safe_dn_offsets",
]

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt")


class SceneError(ValueError):
    """The scene cannot be read as given. ``path`` is the offending file or folder."""

    def __init__(self, path: str | os.PathLike | None, message: str):
        self.path = None if path is None else str(path)
        super().__init__(message if path is None else f"{path}: {message}")


class MissingBandError(SceneError, KeyError):
    """A band the model needs is in none of the input files."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return self.args[0]


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


def expand_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
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
    for path in expand_inputs(inputs):
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
            names = _names_of_stack(path, count, descriptions, file_bands, bands)
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
            f"the model needs {len(bands)} bands ({', '.join(bands)}); {len(missing)} missing "
            f"from {where}: {', '.join(missing)} (found: {have}). Add the missing bands as "
            "per-band files named like B05.tif / *_B05_20m.jp2 (or in a stacked GeoTIFF whose "
            "band descriptions name them), or declare another sensor's bands with --sensor",
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
    path: Path,
    count: int,
    descriptions: Sequence[str | None],
    file_bands: Sequence[str] | None,
    bands: Sequence[str] = MODEL_BANDS,
) -> list[str | None]:
    if file_bands:
        if len(file_bands) != count:
            raise SceneError(
                path, f"--input_bands names {len(file_bands)} bands but the file has {count}"
            )
        return [canonical_band(b) for b in file_bands]
    names = [_band_or_none(d) for d in descriptions]
    if not any(names):
        what = (
            f"its band descriptions ({', '.join(map(str, descriptions))}) name no Sentinel-2 band"
            if any(descriptions)
            else "the file has no band descriptions"
        )
        raise SceneError(path, f"cannot tell which of its {count} bands is which: {what}; "
                         + _stack_hint(count, bands))  # fmt: skip
    return names


#: band order of the usual stacked exports, by band count (L1C: 13 bands, L2A: without B10)
_STACK_ORDERS = {13: tuple(BANDS), 12: tuple(b for b in BANDS if b != "B10")}


def _stack_hint(count: int, bands: Sequence[str]) -> str:
    """What to do about a stack of ``count`` unnamed bands when the model needs ``bands``."""
    need = ", ".join(bands)
    if count < len(bands):
        return (
            f"the model needs {len(bands)} bands ({need}) and this file holds {count}, so at "
            f"least {len(bands) - count} are missing whatever --input_bands says: add the "
            "missing bands as per-band files (B05.tif, ...) next to it and name this file's "
            "bands with --input_bands, or declare them by wavelength with --sensor (e.g. "
            "--sensor blue:490,green:560,red:665) to use the spectral groups they fill"
        )
    order = _STACK_ORDERS.get(count, tuple(bands) if count == len(bands) else None)
    example = f", e.g. --input_bands {','.join(order)}" if order else ""
    return (
        f"pass --input_bands with its {count} band names in file order{example} (the model "
        f"needs {need}), or --sensor for another sensor's bands"
    )
