"""Map any sensor's bands onto the model's 12 Sentinel-2 slots by wavelength.

SpectralGPT's tokens hold 3 consecutive bands (its 12 slots B01..B12 without B10 form 4 spectral
groups: (B01, B02, B03), (B04, B05, B06), (B07, B08, B8A), (B09, B11, B12)). A
:class:`BandAdapter` turns an image of another band set into those 12 slots with one linear map
``(12, C_in)`` (:attr:`BandAdapter.weights`), and says which spectral groups carry information
(:attr:`BandAdapter.present_groups`); the encoder then runs on the tokens of those groups only
(the ``groups`` argument of ``models_vit_tensor.SpectralViT``), as it does on the visible tokens
when masking.

The rule, for each model slot at centre wavelength ``l`` (S2A centres, :mod:`util.data.sensors`),
with the input bands' centres ``x_1 < ... < x_C``:

1. ``x_1 <= l <= x_C``: linear interpolation in wavelength between the two input bands that
   bracket ``l`` (exactly ``numpy.interp``); a slot at an input band's own centre takes that band
   unchanged.
2. ``l`` outside ``[x_1, x_C]`` by at most ``max_extrapolation_nm`` (:data:`MAX_EXTRAPOLATION_NM`,
   60 nm): the nearest input band's value (flat, as ``numpy.interp`` extrapolates).
3. Further out: the slot is not covered.

A spectral group is *present* when all three of its slots are covered and at least one input band
lies within its wavelength range widened by ``max_extrapolation_nm`` on both sides; otherwise the
group is dropped: its slots get weight 0 (zeros in the output, flagged in :attr:`slot_present`)
and its tokens must be left out of the sequence (``groups=adapter.present_groups``), never fed as
zeros. Cirrus bands (common name ``cirrus``: Sentinel-2 B10, HLS L30 B09) sense the atmosphere,
not the surface, and get weight 0.

When every slot is one input band unchanged (Sentinel-2 L2A or L1C input) the map is a band
selection (:attr:`BandAdapter.index`) and is applied as one, so the output is bit-identical to the
input's bands.

Input values are on the model's scale, reflectance x 10000 (``Sensor.to_model_scale``;
:meth:`BandAdapter.from_dn` does both steps).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from util.data.sensors import SENSORS, Sensor, SensorBand, SensorError, get_sensor, parse_custom
from util.data.sentinel2 import MODEL_BANDS, canonical_band

__all__ = ["MAX_EXTRAPOLATION_NM", "BandAdapter", "interpolation_weights", "model_band_centres"]

#: how far (nm) a model slot may lie beyond the outermost input band and still take its value
MAX_EXTRAPOLATION_NM = 60.0

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def interpolation_weights(source_nm: Sequence[float], target_nm: Sequence[float]) -> np.ndarray:
    """``(len(target_nm), len(source_nm))`` matrix of ``numpy.interp`` over wavelength.

    ``weights @ values`` equals ``numpy.interp(target_nm, source_nm, values)`` (sources in any
    order, distinct centres): linear between the two bracketing sources, flat beyond the ends; a
    target at a source's centre gets weight exactly 1 on it.
    """
    src = np.asarray(source_nm, dtype=np.float64)
    dst = np.asarray(target_nm, dtype=np.float64)
    order = np.argsort(src)
    if len(np.unique(src)) != len(src):
        raise SensorError(f"two bands share a centre wavelength: {src.tolist()}")
    weights = np.zeros((len(dst), len(src)))
    for c in range(len(src)):
        weights[:, c] = np.interp(dst, src[order], (order == c).astype(np.float64))
    return weights


def model_band_centres(model_bands: Sequence[str] = MODEL_BANDS) -> np.ndarray:
    """S2A centre wavelengths (nm) of the model's slots, ``(len(model_bands),)`` float64."""
    s2 = SENSORS["sentinel2_l1c"]
    return np.array([s2.band(canonical_band(b)).centre_nm for b in model_bands], dtype=np.float64)


class BandAdapter:
    """Linear map of an input band set onto the model's slots; see the module docstring.

    Args:
        sensor: a sensor id (``landsat8``), a :class:`~util.data.sensors.Sensor`, a custom
            ``"name:nm,..."`` string, a ``{name: nm}`` mapping or a sequence of
            :class:`~util.data.sensors.SensorBand`.
        bands: keep only these bands of ``sensor`` (in this order: the input's band axis).
        model_bands: the model's slots, Sentinel-2 band names in token order.
        group_size: slots per spectral token (3).
        max_extrapolation_nm: rule 2's margin.

    Attributes:
        sensor: the input band set (its band order is the input's channel order).
        weights: ``(S, C_in)`` float64; ``output[s] = sum_c weights[s, c] * input[c]``.
        slot_present: ``(S,)`` bool, False for the slots of dropped groups (weight rows of 0).
        present_groups: indices of the spectral groups that carry information.
        index: ``(S,)`` input band per slot when the map is a pure selection, else None.

    Raises:
        SensorError: the band set covers none of the model's spectral groups.
    """

    def __init__(
        self,
        sensor: str | Sensor | Mapping[str, float] | Sequence[SensorBand],
        bands: Sequence[str] | str | None = None,
        model_bands: Sequence[str] = MODEL_BANDS,
        group_size: int = 3,
        max_extrapolation_nm: float = MAX_EXTRAPOLATION_NM,
    ) -> None:
        if isinstance(sensor, Mapping):
            sensor = parse_custom(sensor)
        elif not isinstance(sensor, (str, Sensor)):
            sensor = Sensor("custom", "custom bands", tuple(sensor))
        self.sensor = get_sensor(sensor, bands)
        self.model_bands = tuple(canonical_band(b) for b in model_bands)
        if len(self.model_bands) % group_size:
            raise ValueError(
                f"{len(self.model_bands)} model bands do not split into groups of {group_size}"
            )
        self.group_size = group_size
        self.max_extrapolation_nm = float(max_extrapolation_nm)
        slots = model_band_centres(self.model_bands)
        self.slot_centres = slots
        usable = np.array([b.common_name != "cirrus" for b in self.sensor.bands])
        if not usable.any():
            raise SensorError(f"{self.sensor.id}: no band other than cirrus to map from")
        centres = self.sensor.centres
        cols = np.flatnonzero(usable)
        xs = np.sort(centres[cols])
        weights = np.zeros((len(slots), len(centres)))
        weights[:, cols] = interpolation_weights(centres[cols], slots)
        beyond = np.maximum(xs[0] - slots, slots - xs[-1])  # > 0 outside [x_1, x_C]
        covered = beyond <= self.max_extrapolation_nm
        n_groups = len(slots) // group_size
        present = []
        for g in range(n_groups):
            s = slice(g * group_size, (g + 1) * group_size)
            lo = slots[s].min() - self.max_extrapolation_nm
            hi = slots[s].max() + self.max_extrapolation_nm
            if covered[s].all() and ((xs >= lo) & (xs <= hi)).any():
                present.append(g)
        if not present:
            raise SensorError(
                f"{self.sensor.id}: bands at {', '.join(f'{x:g}' for x in xs)} nm cover none of the "
                "model's spectral groups (Sentinel-2 B01-B12, 443-2202 nm)"
            )
        self.present_groups: tuple[int, ...] = tuple(present)
        self.num_groups = n_groups
        self.slot_present = np.repeat(np.isin(np.arange(n_groups), present), group_size)
        weights[~self.slot_present] = 0.0
        self.weights = weights
        one_hot = (np.count_nonzero(weights, axis=1) == 1) & (weights.max(axis=1) == 1.0)
        self.index = weights.argmax(axis=1) if one_hot.all() else None
        self._torch_cache: dict[tuple[Any, Any], torch.Tensor] = {}

    # ---- facts ----------------------------------------------------------------------------------
    @property
    def all_groups(self) -> bool:
        """True when every spectral group is present (the model runs on its full sequence)."""
        return len(self.present_groups) == self.num_groups

    @property
    def groups(self) -> tuple[int, ...] | None:
        """What to pass as the model's ``groups`` argument: None when all are present."""
        return None if self.all_groups else self.present_groups

    def describe(self) -> str:
        """One line per slot: how it is made (for logs and reports)."""
        names = self.sensor.band_names
        lines = []
        for s, band in enumerate(self.model_bands):
            row = self.weights[s]
            if not self.slot_present[s]:
                how = "dropped (its spectral group has no input band)"
            else:
                how = " + ".join(f"{row[c]:.3f} {names[c]}" for c in np.flatnonzero(row))
            lines.append(f"{band} ({self.slot_centres[s]:g} nm) = {how}")
        return "\n".join(lines)

    def metadata(self) -> dict[str, Any]:
        """What a checkpoint or an output file records about the input band set."""
        return {
            "sensor": self.sensor.id,
            "bands": list(self.sensor.band_names),
            "centres_nm": [float(b.centre_nm) for b in self.sensor.bands],
            "present_groups": list(self.present_groups),
            "max_extrapolation_nm": self.max_extrapolation_nm,
        }

    # ---- applying -------------------------------------------------------------------------------
    def __call__(self, x: ArrayT) -> ArrayT:
        """``(..., C_in, H, W)`` on the model's scale -> ``(..., S, H, W)`` (numpy or torch).

        Dropped slots are 0. Non-finite values in an input band reach every slot that band feeds
        (and, through 0 x NaN, every slot in the matrix path): mask nodata before.
        """
        c = len(self.sensor.bands)
        if x.ndim < 3 or x.shape[-3] != c:
            raise ValueError(
                f"expected (..., {c}, H, W) with the bands {', '.join(self.sensor.band_names)} "
                f"on axis -3, got shape {tuple(x.shape)}"
            )
        if isinstance(x, torch.Tensor):
            if self.index is not None:
                return x.index_select(-3, torch.as_tensor(self.index, device=x.device))
            w = self._weights_like(x)
            return torch.einsum("sc,...chw->...shw", w, x)
        if self.index is not None:
            return np.take(x, self.index, axis=-3)
        w = self.weights.astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32)
        return np.einsum("sc,...chw->...shw", w, x)

    def from_dn(self, dn: np.ndarray) -> np.ndarray:
        """The sensor's stored digital numbers ``(..., C_in, H, W)`` -> model slots (float32)."""
        return self(self.sensor.to_model_scale(dn))

    def _weights_like(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype if x.is_floating_point() else torch.float32
        key = (x.device, dtype)
        if key not in self._torch_cache:
            self._torch_cache[key] = torch.as_tensor(self.weights, dtype=dtype, device=x.device)
        return self._torch_cache[key]

    def __repr__(self) -> str:
        return (
            f"BandAdapter({self.sensor.id}: {len(self.sensor.bands)} bands -> "
            f"{len(self.model_bands)} slots, groups {list(self.present_groups)})"
        )
