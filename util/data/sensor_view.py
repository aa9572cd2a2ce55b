"""Sentinel-2 samples seen as another sensor would see them, put back on the model's 12 slots.

The datasets of the registry hold Sentinel-2 images (the 12 model bands). Training or evaluating
a model for another band set (``--sensor`` / ``--bands`` of ``main_finetune``,
``downstream_tasks/train.py`` and the label-efficiency benchmark) wraps a dataset's transforms in
a :class:`SensorView`, which turns each sample into what that sensor would deliver:

1. **render** (:func:`render_weights`): the 12 Sentinel-2 bands interpolated over wavelength at
   the sensor's band centres (linear, ``numpy.interp``; the rule the synthetic-scene writer
   :mod:`util.data.synthetic_sensors` applies to its surfaces). This is a spectral simulation:
   the pixels stay on the dataset's grid (a 30 m sensor's coarser pixels are not simulated), and
   each band is the reflectance at its centre, not integrated over its response curve.
2. **slot map** (:func:`slot_map`): the sensor's bands -> the model's 12 slots. ``adapter`` is the
   wavelength adapter (:class:`util.data.band_adapter.BandAdapter`), what a real scene of that
   sensor goes through in ``predict.py``; ``nearest`` (each slot copies the sensor band nearest in
   wavelength) and ``zeros`` (slots with a sensor band within :data:`ZERO_FILL_TOLERANCE_NM` take
   it, the others are 0) are the baselines of ``benchmarks/sensor_transfer.py``.
3. the dataset's own transforms (normalisation, augmentation), then the slots that carry nothing
   set to 0 in the *normalised* image: the slots of the adapter's dropped spectral groups (the
   model leaves their tokens out: ``groups``) and the unmatched slots of ``zeros`` (a missing band
   reads as the normalisation's centre, e.g. the dataset mean under z-scoring).

Steps 1 and 2 are one ``(12, 12)`` matrix applied to the raw values before normalisation. For
Sentinel-2 L2A itself every step is the identity and the sample comes back bit for bit.

A dataset that already holds the sensor's bands (``simulate=False``) skips step 1.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from util.data.band_adapter import (
    MAX_EXTRAPOLATION_NM,
    BandAdapter,
    interpolation_weights,
    model_band_centres,
)
from util.data.sensors import SENSORS, Sensor, SensorError, get_sensor, parse_custom

__all__ = [
    "DEFAULT_SENSOR",
    "SLOT_MAPS",
    "ZERO_FILL_TOLERANCE_NM",
    "SensorView",
    "SlotMap",
    "flags_from_metadata",
    "render_weights",
    "sensor_from_flags",
    "sensor_from_metadata",
    "sensor_record",
    "slot_map",
]

#: the band set of the datasets and of checkpoints that record none
DEFAULT_SENSOR = "sentinel2_l2a"
#: how the sensor's bands reach the model's slots (see the module docstring)
SLOT_MAPS = ("adapter", "nearest", "zeros")
#: ``zeros``: a slot takes a sensor band whose centre lies within this many nm of its own
ZERO_FILL_TOLERANCE_NM = 25.0


def render_weights(sensor: str | Sensor) -> np.ndarray:
    """``(C, 12)`` map from the model's Sentinel-2 slots to ``sensor``'s bands (``numpy.interp``
    over wavelength).

    Raises:
        SensorError: a band lies beyond the Sentinel-2 range (443-2202 nm) by more than
            :data:`~util.data.band_adapter.MAX_EXTRAPOLATION_NM` (it cannot be simulated).
    """
    sensor = get_sensor(sensor)
    slots = model_band_centres()
    far = [
        f"{b.name} ({b.centre_nm:g} nm)"
        for b in sensor.bands
        if b.centre_nm < slots.min() - MAX_EXTRAPOLATION_NM
        or b.centre_nm > slots.max() + MAX_EXTRAPOLATION_NM
    ]
    if far:
        raise SensorError(
            f"{sensor.id}: band(s) {', '.join(far)} lie outside the Sentinel-2 range "
            f"({slots.min():g}-{slots.max():g} nm) and cannot be simulated from Sentinel-2 data"
        )
    return interpolation_weights(slots, sensor.centres)


@dataclass(frozen=True)
class SlotMap:
    """How a band set reaches the model's slots: ``weights`` ``(12, C)``, ``live`` ``(12,)`` (False:
    the slot carries nothing and is 0 after normalisation) and the model's ``groups`` (None: all)."""

    how: str
    weights: np.ndarray
    live: np.ndarray
    groups: tuple[int, ...] | None


def slot_map(
    sensor: str | Sensor, how: str = "adapter", tolerance_nm: float = ZERO_FILL_TOLERANCE_NM
) -> SlotMap:
    """The ``adapter``, ``nearest`` or ``zeros`` map of ``sensor`` (module docstring)."""
    sensor = get_sensor(sensor)
    if how == "adapter":
        a = BandAdapter(sensor)
        return SlotMap(how, a.weights, a.slot_present.copy(), a.groups)
    if how not in SLOT_MAPS:
        raise ValueError(f"slot map must be one of {', '.join(SLOT_MAPS)}, got {how!r}")
    usable = np.array([b.common_name != "cirrus" for b in sensor.bands])
    distance = np.abs(model_band_centres()[:, None] - sensor.centres[None, :])
    distance[:, ~usable] = np.inf
    nearest = distance.argmin(1)
    live = np.ones(len(nearest), bool)
    if how == "zeros":
        live = distance[np.arange(len(nearest)), nearest] <= tolerance_nm
    weights = np.zeros((len(nearest), len(sensor.bands)))
    weights[np.flatnonzero(live), nearest[live]] = 1.0
    return SlotMap(how, weights, live, None)


class SensorView:
    """``sample -> sample``: a Sentinel-2 sample as ``sensor`` sees it, on the model's slots.

    Args:
        transforms: the dataset's own transforms (normalisation, augmentation), or None.
        sensor: a sensor id, a custom ``name:nm,...`` list or a :class:`Sensor`.
        how: one of :data:`SLOT_MAPS`.
        simulate: the samples hold the 12 model bands (render them at the sensor's centres);
            False: they already hold the sensor's bands, in its order.

    Attributes:
        groups: the spectral groups the model must run on (None: all).
        normalization: the wrapped transforms' normalisation name (what checkpoints record).
    """

    accepts_band_groups = False  # the dataset puts the bands on one grid first

    def __init__(
        self,
        transforms: Callable[[dict], dict] | None,
        sensor: str | Sensor,
        how: str = "adapter",
        simulate: bool = True,
    ) -> None:
        self.transforms = transforms
        self.sensor = get_sensor(sensor)
        self.slots = slot_map(self.sensor, how)
        matrix = (
            self.slots.weights @ render_weights(self.sensor) if simulate else self.slots.weights
        )
        self.identity = matrix.shape[0] == matrix.shape[1] and np.array_equal(
            matrix, np.eye(len(matrix))
        )
        self.matrix = torch.as_tensor(matrix, dtype=torch.float32)
        self.dead = torch.as_tensor(np.flatnonzero(~self.slots.live))
        self.groups = self.slots.groups
        self.normalization = getattr(transforms, "normalization", None)

    def __call__(self, sample: dict) -> dict:
        image = sample["image"]
        if image.shape[-3] != self.matrix.shape[1]:
            raise ValueError(
                f"{self.sensor.id}: expected images with {self.matrix.shape[1]} bands on axis -3, "
                f"got shape {tuple(image.shape)}"
            )
        out = dict(sample)
        if not self.identity:
            out["image"] = torch.einsum("sc,...chw->...shw", self.matrix, image.float())
        if self.transforms is not None:
            out = self.transforms(out)
        if len(self.dead):
            out["image"] = out["image"].index_fill(-3, self.dead, 0.0)
        return out

    def __repr__(self) -> str:
        return (
            f"SensorView({self.sensor.id}, {self.slots.how}, groups={self.groups}, "
            f"transforms={self.transforms!r})"
        )


# --------------------------------------------------------------------------------------------------
# flags and checkpoints
# --------------------------------------------------------------------------------------------------
def sensor_from_flags(sensor: str | None, bands: str | None) -> Sensor | None:
    """The band set of ``--sensor ID|name:nm,...`` and ``--bands NAMES|name:nm,...``.

    ``--bands`` names bands of ``--sensor`` (default Sentinel-2 L2A, e.g. ``B02,B03,B04,B08``) or,
    as ``name:wavelength_nm`` pairs, defines custom bands (then without ``--sensor``). Returns
    None when neither is given, or for all 12 bands of Sentinel-2 L2A (the datasets' own bands:
    nothing to change).

    Raises:
        SensorError: unknown sensor or band, malformed pairs, both flags defining bands.
    """
    if not sensor and not bands:
        return None
    if bands and ":" in bands:
        if sensor and sensor.strip().lower() != "custom":
            raise SensorError(
                f"--bands {bands}: name:wavelength_nm pairs define custom bands; leave --sensor "
                f"{sensor} out (or name that sensor's bands, e.g. --bands B2,B3,B4)"
            )
        return parse_custom(bands)
    if sensor and sensor.strip().lower() == "custom":
        raise SensorError(
            "--sensor custom needs --bands name:wavelength_nm,... (e.g. red:665,nir:842)"
        )
    found = get_sensor(sensor or DEFAULT_SENSOR, bands or None)
    return None if found.id == DEFAULT_SENSOR else found  # all 12 bands: nothing to do


def _base_id(sensor: Sensor) -> str:
    return sensor.id.split("[", 1)[0]


def sensor_record(sensor: Sensor | None) -> dict[str, Any]:
    """Checkpoint ``meta`` entries of a model trained on ``sensor``'s bands: ``sensor`` (the
    table's id, or ``custom``) and ``sensor_bands`` (:meth:`BandAdapter.metadata`: band names,
    centres, present groups); Sentinel-2 L2A data (None) records ``sensor_bands: None``."""
    if sensor is None:
        return {"sensor": DEFAULT_SENSOR, "sensor_bands": None}
    return {"sensor": _base_id(sensor), "sensor_bands": BandAdapter(sensor).metadata()}


def sensor_from_metadata(meta: Mapping[str, Any]) -> Sensor | None:
    """The band set a checkpoint's model was trained on (:func:`sensor_record`), or None for
    Sentinel-2 L2A (also every checkpoint that records nothing)."""
    record = meta.get("sensor_bands")
    if not isinstance(record, Mapping) or not record.get("bands"):
        return None
    base = str(meta.get("sensor") or record.get("sensor") or "custom").split("[", 1)[0]
    bands = [str(b) for b in record["bands"]]
    try:
        known = get_sensor(base) if base in SENSORS else None
    except SensorError:
        known = None
    if known is not None:
        return get_sensor(known, bands) if list(known.band_names) != bands else known
    centres = record.get("centres_nm") or []
    if len(centres) != len(bands):
        raise SensorError(f"checkpoint sensor record {dict(record)} lists no centre per band")
    return parse_custom(dict(zip(bands, map(float, centres))))


def flags_from_metadata(meta: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(--sensor, --bands)`` values that rebuild a checkpoint's band set (None, None for
    Sentinel-2 L2A); inverse of :func:`sensor_from_flags`."""
    sensor = sensor_from_metadata(meta)
    if sensor is None:
        return None, None
    base = _base_id(sensor)
    if base in SENSORS:
        full = list(SENSORS[base].band_names) == list(sensor.band_names)
        return base, None if full else ",".join(sensor.band_names)
    return None, ",".join(f"{b.name}:{b.centre_nm:g}" for b in sensor.bands)
