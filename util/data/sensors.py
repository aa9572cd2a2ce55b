"""Optical sensors by band name and wavelength, and their digital-number scaling.

One table (:data:`SENSORS`) of the multispectral sensors a SpectralGPT model can be applied to:
each band with its centre wavelength, an approximate full width at half maximum and ground
sampling distance; each sensor with the affine map from its stored digital numbers to surface
(or top-of-atmosphere) reflectance. :class:`util.data.band_adapter.BandAdapter` maps any band set
of this table onto the model's 12 Sentinel-2 slots by wavelength.

The model's own input contract is Sentinel-2 L2A digital numbers as in the archives it was
trained on: reflectance x 10000 (:data:`MODEL_DN_PER_REFLECTANCE`), in the band order of
:data:`util.data.sentinel2.MODEL_BANDS`, before any normalisation
(:mod:`util.data.transforms` normalises raw DN). :meth:`Sensor.to_model_scale` puts another
sensor's digital numbers on that scale.

Facts (``/shared/reference/sensors.md``; providers' specifications, rounded):

* Sentinel-2 MSI: centres and widths of S2A. S2B and S2C differ by a few nm per band (the
  largest differences are in B07 and B12); the S2A values are used for all three satellites,
  which is well inside what the linear interpolation can resolve. L2A reflectance is
  ``(DN + BOA_ADD_OFFSET) / 10000`` with ``BOA_ADD_OFFSET = -1000`` from processing baseline
  04.00 (25 Jan 2022) on and 0 before (:func:`sentinel2_scale`); the scene reader applies the
  product's own offset (``util.inference.scene.safe_dn_offsets``).
* Landsat 4-9 Collection 2 Level-2 surface reflectance: ``DN x 0.0000275 - 0.2``, uint16,
  nodata 0, valid DN 7273-43636. Landsat 8/9 OLI widths are the USGS band passes; TM/ETM+ likewise.
* HLS v2 (S30, L30): ``DN x 0.0001``, int16, nodata -9999; S30 keeps the Sentinel-2 band names,
  L30 the OLI numbering (B01-B07, B09 cirrus).
* PlanetScope SuperDove surface reflectance: ``DN / 10000``, nodata 0.

Widths are informative (the adapter uses centres only).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

__all__ = [
    "HLS_FMASK_BITS",
    "LANDSAT_PRODUCT_PREFIX",
    "LANDSAT_QA_BITS",
    "MODEL_DN_PER_REFLECTANCE",
    "S2_BOA_ADD_OFFSET_DN",
    "SENSORS",
    "ReflectanceScale",
    "Sensor",
    "SensorBand",
    "SensorError",
    "band_key",
    "get_sensor",
    "parse_custom",
    "sentinel2_scale",
]

#: the model's input scale: Sentinel-2 L2A digital numbers = reflectance x 10000
MODEL_DN_PER_REFLECTANCE = 10000.0
#: Sentinel-2 ``BOA_ADD_OFFSET`` / ``RADIO_ADD_OFFSET`` from processing baseline 04.00 on
S2_BOA_ADD_OFFSET_DN = -1000.0


class SensorError(ValueError):
    """An unknown sensor, band name or malformed band specification (one-line user error)."""


@dataclass(frozen=True)
class SensorBand:
    """One band: ``name`` as the sensor's products spell it, centre and width in nm, GSD in m.

    ``common_name`` is the STAC ``eo:common_name`` (``blue``, ``nir08``, ``swir16`` ...) where the
    band has one; names are matched case-insensitively, ``B1`` = ``B01`` = ``SR_B1``.
    """

    name: str
    centre_nm: float
    width_nm: float | None = None
    gsd_m: float | None = None
    common_name: str | None = None


@dataclass(frozen=True)
class ReflectanceScale:
    """``reflectance = DN * gain + offset``; ``nodata`` marks missing pixels in the stored DN."""

    gain: float
    offset: float = 0.0
    nodata: float | None = 0.0
    dtype: str = "uint16"

    def to_reflectance(self, dn: np.ndarray) -> np.ndarray:
        """Digital numbers -> reflectance (float32; nodata is not masked here)."""
        return np.asarray(dn, dtype=np.float32) * np.float32(self.gain) + np.float32(self.offset)

    def to_dn(self, reflectance: np.ndarray) -> np.ndarray:
        """Reflectance -> stored digital numbers (rounded, clipped to ``dtype``; nodata avoided)."""
        info = np.iinfo(self.dtype)
        dn = np.rint((np.asarray(reflectance, dtype=np.float64) - self.offset) / self.gain)
        lo = info.min
        if self.nodata is not None and self.nodata == info.min:
            lo += 1
        dn = np.clip(dn, lo, info.max)
        if self.nodata is not None and info.min <= self.nodata <= info.max:
            dn[dn == self.nodata] = self.nodata + 1
        return dn.astype(self.dtype)


def sentinel2_scale(add_offset_dn: float = 0.0) -> ReflectanceScale:
    """Sentinel-2 L1C/L2A scaling: ``(DN + add_offset_dn) / 10000``; pass
    :data:`S2_BOA_ADD_OFFSET_DN` for products of processing baseline >= 04.00."""
    return ReflectanceScale(gain=1e-4, offset=add_offset_dn * 1e-4, nodata=0.0)


def band_key(name: str) -> str:
    """Matching key of a band name: upper case, ``SR_`` prefix and zero padding dropped."""
    key = name.strip().upper()
    key = key.removeprefix("SR_")
    return re.sub(r"^B0*(\d)", r"B\1", key)


@dataclass(frozen=True)
class Sensor:
    """A sensor's bands (in the order of its products) and its DN scaling."""

    id: str
    title: str
    bands: tuple[SensorBand, ...]
    scale: ReflectanceScale = field(default_factory=lambda: ReflectanceScale(1e-4))

    def __post_init__(self) -> None:
        keys = [band_key(b.name) for b in self.bands]
        if len(set(keys)) != len(keys):
            raise SensorError(f"sensor {self.id!r}: duplicate band names {self.band_names}")
        centres = [b.centre_nm for b in self.bands]
        if len(set(centres)) != len(centres):
            raise SensorError(f"sensor {self.id!r}: two bands share a centre wavelength {centres}")
        if not self.bands:
            raise SensorError(f"sensor {self.id!r} has no bands")

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    @property
    def centres(self) -> np.ndarray:
        """Centre wavelengths (nm), ``(C,)`` float64, in band order."""
        return np.array([b.centre_nm for b in self.bands], dtype=np.float64)

    def index(self, name: str) -> int:
        """Position of the band called ``name`` (its name or common name, any case, ``B1`` = ``B01``).

        Raises:
            SensorError: no such band (the message lists the sensor's bands).
        """
        key = band_key(name)
        for i, b in enumerate(self.bands):
            if key == band_key(b.name) or (b.common_name and key == b.common_name.upper()):
                return i
        raise SensorError(
            f"sensor {self.id} has no band {name!r}; its bands: {', '.join(self.band_names)}"
        )

    def band(self, name: str) -> SensorBand:
        return self.bands[self.index(name)]

    def select(self, names: Iterable[str]) -> Sensor:
        """The same sensor restricted to ``names`` (in that order), e.g. from ``--bands``."""
        bands = tuple(self.band(n) for n in names)
        return replace(self, id=f"{self.id}[{','.join(b.name for b in bands)}]", bands=bands)

    def to_model_scale(self, dn: np.ndarray) -> np.ndarray:
        """Stored DN ``(C, ...)`` -> reflectance x 10000 (the model's scale), float32.

        Sentinel-2 DN (already on that scale) come back unchanged, bit for bit.
        """
        factor = self.scale.gain * MODEL_DN_PER_REFLECTANCE  # in float64: 1e-4 * 1e4 == 1.0
        bias = self.scale.offset * MODEL_DN_PER_REFLECTANCE
        x = np.asarray(dn, dtype=np.float32)
        if factor == 1.0 and bias == 0.0:
            return x
        return x * np.float32(factor) + np.float32(bias)


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------
def _bands(rows: Sequence[tuple]) -> tuple[SensorBand, ...]:
    return tuple(SensorBand(*row) for row in rows)


# Sentinel-2 MSI, S2A centres / widths (nm), GSD (m), L1C order (B8A 9th, B10 11th)
_S2 = _bands([
    ("B01", 442.7, 21, 60, "coastal"), ("B02", 492.4, 66, 10, "blue"),
    ("B03", 559.8, 36, 10, "green"), ("B04", 664.6, 31, 10, "red"),
    ("B05", 704.1, 15, 20, "rededge"), ("B06", 740.5, 15, 20, None), ("B07", 782.8, 20, 20, None),
    ("B08", 832.8, 106, 10, "nir"), ("B8A", 864.7, 21, 20, "nir08"),
    ("B09", 945.1, 20, 60, "nir09"), ("B10", 1373.5, 31, 60, "cirrus"),
    ("B11", 1613.7, 91, 20, "swir16"), ("B12", 2202.4, 175, 20, "swir22"),
])  # fmt: skip
_S2_L2A = tuple(b for b in _S2 if b.name != "B10")
# Landsat 8/9 OLI reflective bands of Collection 2 Level-2 (SR_B1 ... SR_B7)
_OLI = _bands([
    ("B1", 443, 20, 30, "coastal"), ("B2", 482, 65, 30, "blue"), ("B3", 561, 75, 30, "green"),
    ("B4", 655, 50, 30, "red"), ("B5", 865, 40, 30, "nir08"), ("B6", 1609, 100, 30, "swir16"),
    ("B7", 2201, 200, 30, "swir22"),
])  # fmt: skip
_TM = _bands([
    ("B1", 485, 70, 30, "blue"), ("B2", 560, 80, 30, "green"), ("B3", 660, 60, 30, "red"),
    ("B4", 830, 140, 30, "nir"), ("B5", 1650, 200, 30, "swir16"), ("B7", 2215, 270, 30, "swir22"),
])  # fmt: skip
_ETM = _bands([
    ("B1", 477, 65, 30, "blue"), ("B2", 560, 80, 30, "green"), ("B3", 661, 60, 30, "red"),
    ("B4", 835, 125, 30, "nir"), ("B5", 1650, 200, 30, "swir16"), ("B7", 2220, 260, 30, "swir22"),
])  # fmt: skip
# HLS L30: OLI bands renamed B01..B07, plus the cirrus band B09 (thermal B10/B11 left out)
_L30 = tuple(
    SensorBand(f"B{b.name[1:]:0>2}", b.centre_nm, b.width_nm, 30, b.common_name) for b in _OLI
) + (SensorBand("B09", 1373, 20, 30, "cirrus"),)
_SUPERDOVE = _bands([
    ("coastal_blue", 443, 20, 3, "coastal"), ("blue", 490, 50, 3, "blue"),
    ("green_i", 531, 36, 3, None), ("green", 565, 36, 3, "green"), ("yellow", 610, 20, 3, "yellow"),
    ("red", 665, 30, 3, "red"), ("rededge", 705, 16, 3, "rededge"), ("nir", 865, 40, 3, "nir"),
])  # fmt: skip
_C2_L2 = ReflectanceScale(gain=0.0000275, offset=-0.2, nodata=0.0, dtype="uint16")
_HLS = ReflectanceScale(gain=1e-4, offset=0.0, nodata=-9999.0, dtype="int16")


def _s2_subset(names: Sequence[str]) -> tuple[SensorBand, ...]:
    by_name = {b.name: b for b in _S2}
    return tuple(by_name[n] for n in names)


def _at30(bands: Iterable[SensorBand]) -> tuple[SensorBand, ...]:
    return tuple(replace(b, gsd_m=30) for b in bands)


_TABLE = (
    Sensor("sentinel2_l1c", "Sentinel-2 MSI Level-1C (13 bands)", _S2, sentinel2_scale()),
    Sensor("sentinel2_l2a", "Sentinel-2 MSI Level-2A (12 bands, no B10)", _S2_L2A, sentinel2_scale()),
    Sensor("landsat8", "Landsat 8 OLI, Collection 2 Level-2 SR", _OLI, _C2_L2),
    Sensor("landsat9", "Landsat 9 OLI-2, Collection 2 Level-2 SR", _OLI, _C2_L2),
    Sensor("landsat7_etm", "Landsat 7 ETM+, Collection 2 Level-2 SR", _ETM, _C2_L2),
    Sensor("landsat5_tm", "Landsat 4-5 TM, Collection 2 Level-2 SR", _TM, _C2_L2),
    Sensor("hls_s30", "HLS v2 S30 (Sentinel-2, 30 m)", _at30(_S2), _HLS),
    Sensor("hls_l30", "HLS v2 L30 (Landsat 8/9, 30 m)", _L30, _HLS),
    Sensor(
        "hls_prithvi6",
        "HLS, Prithvi's 6 bands (blue, green, red, narrow NIR, SWIR 1, SWIR 2)",
        _at30(_s2_subset(("B02", "B03", "B04", "B8A", "B11", "B12"))),
        _HLS,
    ),
    Sensor("planetscope_superdove", "PlanetScope SuperDove SR (8 bands)", _SUPERDOVE),
    Sensor("rgbn", "4-band blue, green, red, NIR (Sentinel-2 10 m band centres)",
           _s2_subset(("B02", "B03", "B04", "B08")), sentinel2_scale()),
)  # fmt: skip
#: sensors by id
SENSORS: dict[str, Sensor] = {s.id: s for s in _TABLE}
#: Landsat Collection 2 ``QA_PIXEL`` bits (confidences in bits 8-15 are not named here)
LANDSAT_QA_BITS = {"fill": 0, "dilated_cloud": 1, "cirrus": 2, "cloud": 3, "cloud_shadow": 4,
                   "snow": 5, "clear": 6, "water": 7}  # fmt: skip
#: Landsat product id prefix (``LC08_L2SP_...``) of each Landsat sensor of the table
LANDSAT_PRODUCT_PREFIX = {"landsat8": "LC08", "landsat9": "LC09", "landsat7_etm": "LE07",
                          "landsat5_tm": "LT05"}  # fmt: skip
#: HLS v2 ``Fmask`` bits (6-7: aerosol level; the value 255 is fill)
HLS_FMASK_BITS = {"cirrus": 0, "cloud": 1, "adjacent": 2, "cloud_shadow": 3, "snow": 4, "water": 5}

#: alternative spellings accepted by :func:`get_sensor`
_ALIASES = {
    "sentinel2": "sentinel2_l2a", "s2": "sentinel2_l2a", "s2_l2a": "sentinel2_l2a",
    "s2_l1c": "sentinel2_l1c", "landsat4_tm": "landsat5_tm", "landsat7": "landsat7_etm",
    "landsat5": "landsat5_tm", "lc08": "landsat8", "lc09": "landsat9", "le07": "landsat7_etm",
    "lt05": "landsat5_tm", "lt04": "landsat5_tm", "hls": "hls_prithvi6", "superdove": "planetscope_superdove",
}  # fmt: skip


def parse_custom(
    spec: str | Mapping[str, float], scale: ReflectanceScale | None = None, name: str = "custom"
) -> Sensor:
    """A sensor from ``"name:centre_nm[:width_nm],..."`` (e.g. ``"red:665,nir:842:40"``) or a
    ``{name: centre_nm}`` mapping; digital numbers are reflectance x 10000 unless ``scale`` says
    otherwise.

    Raises:
        SensorError: malformed pairs, non-positive or duplicate wavelengths, duplicate names.
    """
    if isinstance(spec, Mapping):
        rows = [(str(k), float(v), None) for k, v in spec.items()]
    else:
        rows = []
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            fields = part.split(":")
            try:
                if len(fields) not in (2, 3) or not fields[0].strip():
                    raise ValueError
                centre = float(fields[1])
                width = float(fields[2]) if len(fields) == 3 else None
            except ValueError:
                raise SensorError(
                    f"custom band {part!r}: expected name:wavelength_nm[:width_nm], "
                    "e.g. red:665 or nir:842:40"
                ) from None
            rows.append((fields[0].strip(), centre, width))
    if not rows:
        raise SensorError(f"custom band list {spec!r} names no band (name:wavelength_nm,...)")
    bad = [r[0] for r in rows if not r[1] > 0 or (r[2] is not None and not r[2] > 0)]
    if bad:
        raise SensorError(f"custom bands {bad}: wavelengths and widths must be positive (nm)")
    bands = tuple(SensorBand(n, c, w) for n, c, w in rows)
    return Sensor(name, f"custom bands {', '.join(b.name for b in bands)}", bands,
                  scale or sentinel2_scale())  # fmt: skip


def get_sensor(sensor: str | Sensor, bands: Sequence[str] | str | None = None) -> Sensor:
    """Look a sensor up by id (``landsat8``, an alias such as ``lc08``), or parse a custom
    ``name:wavelength_nm,...`` list; ``bands`` (a list or a comma-separated string) keeps those
    bands in that order.

    Raises:
        SensorError: an unknown id (the message lists the known ones) or band.
    """
    if isinstance(sensor, Sensor):
        found = sensor
    elif ":" in sensor:
        found = parse_custom(sensor)
    else:
        key = sensor.strip().lower().replace("-", "_")
        key = _ALIASES.get(key, key)
        if key not in SENSORS:
            raise SensorError(
                f"unknown sensor {sensor!r}; choose one of {', '.join(SENSORS)}, or give "
                "custom bands as name:wavelength_nm,... (e.g. red:665,nir:842)"
            )
        found = SENSORS[key]
    if bands:
        names = bands.split(",") if isinstance(bands, str) else list(bands)
        found = found.select(n.strip() for n in names if n.strip())
    return found
