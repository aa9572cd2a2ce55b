"""Sentinel-2 band registry and band-order mapping.

Every loader declares the band names stored in its files and maps them to the model's 12-band order
by *name* (never by position), so a pixel always reaches the spectral token slot it was pretrained on.

References: ESA Sentinel-2 MSI band table (centre wavelengths, native resolutions); spec §5.1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "BANDS",
    "Band",
    "L1C_BANDS",
    "MODEL_BANDS",
    "band_indices",
    "to_model_order",
]


class Band(NamedTuple):
    """One Sentinel-2 MSI band: centre wavelength (nm) and native ground sampling distance (m)."""

    wavelength_nm: int
    resolution_m: int


#: The 13 Sentinel-2 MSI bands, in the usual L1C order (B8A after B08, B10 present).
BANDS: dict[str, Band] = {
    "B01": Band(443, 60),
    "B02": Band(490, 10),
    "B03": Band(560, 10),
    "B04": Band(665, 10),
    "B05": Band(705, 20),
    "B06": Band(740, 20),
    "B07": Band(783, 20),
    "B08": Band(842, 10),
    "B8A": Band(865, 20),
    "B09": Band(945, 60),
    "B10": Band(1375, 60),
    "B11": Band(1610, 20),
    "B12": Band(2190, 20),
}

#: 13-band order of fMoW-Sentinel / SSL4EO / SatMAE files (B8A 9th, B10 11th).
L1C_BANDS: tuple[str, ...] = tuple(BANDS)

#: The 12 bands the model expects, in token order: groups of 3 are (B01,B02,B03), (B04,B05,B06),
#: (B07,B08,B8A), (B09,B11,B12). B10 (cirrus) is not used.
MODEL_BANDS: tuple[str, ...] = (
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B8A",
    "B09",
    "B11",
    "B12",
)

_ALIASES = {f"B{i}": f"B{i:02d}" for i in range(1, 13)} | {"B08A": "B8A"}


def canonical_band(name: str) -> str:
    """Return the registry spelling of a band name (``"B2"`` / ``"b02"`` -> ``"B02"``, ``"B08A"`` -> ``"B8A"``).

    Raises:
        KeyError: if ``name`` is not a Sentinel-2 band.
    """
    key = name.strip().upper()
    key = _ALIASES.get(key, key)
    if key not in BANDS:
        raise KeyError(f"unknown Sentinel-2 band {name!r}; known bands: {', '.join(BANDS)}")
    return key


def band_indices(file_bands: Sequence[str], target_bands: Sequence[str] = MODEL_BANDS) -> list[int]:
    """Positions in ``file_bands`` of each band of ``target_bands`` (matched by name).

    Args:
        file_bands: band names in the order they are stored (e.g. a file's band order).
        target_bands: wanted band names, in the wanted order (default: the model order).

    Returns:
        ``idx`` such that ``array[idx]`` puts a ``file_bands``-ordered array in ``target_bands`` order.

    Raises:
        KeyError: if a target band is missing from ``file_bands`` (the message lists which).
    """
    stored = [canonical_band(b) for b in file_bands]
    if len(set(stored)) != len(stored):
        raise ValueError(f"duplicate band names in {list(file_bands)}")
    pos = {b: i for i, b in enumerate(stored)}
    wanted = [canonical_band(b) for b in target_bands]
    missing = [b for b in wanted if b not in pos]
    if missing:
        raise KeyError(f"bands {missing} are not among the stored bands {stored}")
    return [pos[b] for b in wanted]


def to_model_order(
    array: np.ndarray, file_bands: Sequence[str], target_bands: Sequence[str] = MODEL_BANDS
) -> np.ndarray:
    """Reorder a band-first array ``(C, ...)`` from ``file_bands`` order to ``target_bands`` order.

    Works for numpy arrays and torch tensors (anything supporting integer-list indexing on axis 0).

    Raises:
        ValueError: if ``array.shape[0] != len(file_bands)``.
        KeyError: if a target band is missing from ``file_bands``.
    """
    if array.shape[0] != len(file_bands):
        raise ValueError(
            f"array has {array.shape[0]} bands on axis 0 but {len(file_bands)} band names were given"
        )
    idx = band_indices(file_bands, target_bands)
    if idx == list(range(len(file_bands))):
        return array
    return array[idx]
