"""The input contract: what a model expects of its input, and the one check every input passes.

A model is trained on Sentinel-2 bands on one radiometric scale; fed the same scene on another
scale it silently predicts something else (issue 19: the EuroSAT classifier gives class 2 on a
uint16 scene and class 9 on the same scene as float reflectance). :class:`InputContract` records
what the model expects (stored in checkpoint metadata, see :meth:`InputContract.to_dict`) and
:func:`check_input` checks an array or file against it, converting between scales with one log
line (or refusing under ``--strict_input``) and refusing what cannot be right with one line naming
the file and the fix.

Scales (:data:`SCALES`):

* ``dn`` - Sentinel-2 L1C/L2A digital numbers, ``reflectance x 10000``, the archives' scale
  (fMoW-Sentinel, EuroSAT, BigEarthNet, OSCD, SegMunich: every model of this project). Products
  of processing baseline >= 04.00 add ``BOA_ADD_OFFSET`` / ``RADIO_ADD_OFFSET`` (-1000):
  ``reflectance x 10000 = DN + offset``; :class:`util.inference.scene.Scene` adds that offset
  (``--dn_offset auto``), so inputs reach the check on the archive scale. ``dn_offset`` of a
  contract is the offset its *training* DN still carried (0 for every archive).
* ``reflectance`` - surface/TOA reflectance 0-1 (float; Google Earth Engine and Sentinel Hub
  exports divide DN by 10000).

How the scale of an input is told (:func:`plan_input`): pixels that are 0, non-finite or the
file's nodata are ignored; over the rest (all bands pooled, at most :data:`MAX_SAMPLE` pixels per
band) the 1st and 99th percentiles ``p1``/``p99`` are taken.

==========================  =============================================================
``p99 <= 1.5``              reflectance (float pixels only; ``p1 >= -0.11``)
``1.5 < p99 < 100``         neither: refused (percent reflectance, a rescaled copy ...)
``100 <= p99 <= 20000``     digital numbers (``p1 >= -1000``, the baseline-04.00 offset)
``p99 > 20000``             out of range: refused
==========================  =============================================================

Real scenes sit far from the borders: the brightest percent of a dark open-water scene is about
0.03 reflectance / 300 DN, clouds and snow stay below 1.5 / 15000. Percent reflectance (0-100)
mostly falls in the refused gap; above 100 (bright clouds at the 99th percentile) it cannot be
told from digital numbers. A band whose ``p99 <= 1.5``
while the pooled pixels are digital numbers is a band on another scale (refused). 8-bit pixels
(uint8/int8/bool) are refused whatever their values: they are renderings, not measurements.

Checkpoint metadata keys (all optional; files written before them read as the defaults):
``bands`` and ``normalization`` (already stored), ``input_scale`` (default ``"dn"``),
``input_dn_offset`` (default 0.0) and ``native_size`` (default ``None``).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from util.data.sentinel2 import MODEL_BANDS, band_indices, canonical_band
from util.training.cli import UserError

logger = logging.getLogger(__name__)

__all__ = [
    "DN_P1_MIN",
    "DN_P99_MAX",
    "DN_P99_MIN",
    "REFLECTANCE_P1_MIN",
    "REFLECTANCE_P99_MAX",
    "SCALES",
    "InputContract",
    "InputContractError",
    "InputPlan",
    "check_input",
    "plan_input",
    "plan_sample",
    "read_input",
    "sample_windows",
]

SCALES = ("dn", "reflectance")
#: digital numbers per unit reflectance
DN_PER_REFLECTANCE = 10000.0
#: percentiles of the valid pixels that decide the scale
PCT_LOW, PCT_HIGH = 1.0, 99.0
REFLECTANCE_P99_MAX = 1.5
REFLECTANCE_P1_MIN = -0.11  # L2A offset -1000 -> -0.1, plus rounding
DN_P99_MIN = 100.0
DN_P99_MAX = 20000.0
DN_P1_MIN = -1000.0  # harmonised new-baseline products: DN + BOA_ADD_OFFSET >= -1000
#: pixels per band the percentiles are taken over (a strided subsample of larger inputs)
MAX_SAMPLE = 1 << 16
#: values the quick test of :func:`plan_sample` takes from an integer file's pixels
QUICK_SAMPLE = 1024
#: pixels per band the full decision of :func:`plan_sample` takes from a float file
FULL_SAMPLE = 256
#: pixel types that are renderings, never Sentinel-2 measurements
REFUSED_DTYPES = ("uint8", "int8", "bool")

_FIX_SCALE = (
    "give Sentinel-2 digital numbers (reflectance x 10000, e.g. uint16) or float reflectance 0-1"
)


class InputContractError(UserError):
    """An input does not meet a model's input contract (one line naming the file and the fix).

    Same signature as ``util.data.errors.SampleError``: ``(path, message)``.
    """

    def __init__(self, path: str | os.PathLike | None, message: str):
        self.path = "" if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


# --------------------------------------------------------------------------------------------------
# The contract
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputContract:
    """What a model expects of its input.

    Args:
        bands: band names in the model's input order (default: the 12 model bands).
        scale: ``dn`` or ``reflectance`` (see the module docstring).
        dn_offset: for ``dn``: the offset the training DN carried (``reflectance x 10000 =
            DN + dn_offset``); 0 for every archive the project trains on.
        native_size: image side (px) of the training images (``--native_size``), ``None`` if
            they varied / were not checked.
        normalization: name of the normalisation applied after the check
            (``util.data.transforms.NORMALIZATIONS``).
    """

    bands: tuple[str, ...] = MODEL_BANDS
    scale: str = "dn"
    dn_offset: float = 0.0
    native_size: int | None = None
    normalization: str | None = None

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"input scale must be one of {SCALES}, got {self.scale!r}")
        object.__setattr__(self, "bands", tuple(canonical_band(b) for b in self.bands))
        object.__setattr__(self, "dn_offset", float(self.dn_offset))
        if self.native_size is not None:
            object.__setattr__(self, "native_size", int(self.native_size))

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint-metadata keys (plain types): merge into ``meta``."""
        return {
            "bands": list(self.bands),
            "input_scale": self.scale,
            "input_dn_offset": self.dn_offset,
            "native_size": self.native_size,
            "normalization": self.normalization,
        }

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any]) -> InputContract:
        """From checkpoint metadata (other keys ignored; missing or ``None`` keys take the
        defaults, so files written before these keys read as DN on the model bands)."""

        def get(key: str, default: Any) -> Any:
            value = meta.get(key)
            return default if value is None else value

        return cls(
            bands=tuple(get("bands", MODEL_BANDS)),
            scale=str(get("input_scale", "dn")),
            dn_offset=float(get("input_dn_offset", 0.0)),
            native_size=meta.get("native_size"),
            normalization=meta.get("normalization"),
        )

    def describe(self) -> str:
        if self.scale == "reflectance":
            return "reflectance 0-1"
        off = f", offset {self.dn_offset:g}" if self.dn_offset else ""
        return f"digital numbers (reflectance x 10000{off})"


# --------------------------------------------------------------------------------------------------
# The decision
# --------------------------------------------------------------------------------------------------
@dataclass
class InputPlan:
    """How an input relates to a contract: its detected scale and the map onto the contract's.

    ``apply(x)`` returns ``x * gain + offset`` on valid pixels (not 0, finite, not ``nodata``);
    invalid pixels keep their value, so nodata stays recognisable downstream.
    """

    source: str
    detected: str | None  # "dn" | "reflectance" | None (no valid pixel: nothing to tell)
    target: str
    gain: float = 1.0
    offset: float = 0.0
    p1: float = float("nan")
    p99: float = float("nan")
    nodata: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def converts(self) -> bool:
        return self.gain != 1.0 or self.offset != 0.0

    def apply(self, x: Any) -> Any:
        """Map ``x`` (numpy or torch) onto the contract's scale; float32 when converted, else
        ``x`` itself."""
        if not self.converts:
            return x
        if self.offset == 0.0 and self.nodata in (None, 0.0):  # a plain scale keeps 0, NaN, inf
            if _is_torch(x):
                return x.float() * self.gain
            return np.multiply(x, np.float32(self.gain), dtype=np.float32)
        if _is_torch(x):
            import torch

            x = x.float()
            valid = torch.isfinite(x) & (x != 0)
            if self.nodata is not None:
                valid &= x != self.nodata
            return torch.where(valid, x * self.gain + self.offset, x)
        x = np.asarray(x, dtype=np.float32)
        valid = np.isfinite(x) & (x != 0)
        if self.nodata is not None:
            valid &= x != self.nodata
        return np.where(valid, x * np.float32(self.gain) + np.float32(self.offset), x).astype(
            np.float32, copy=False
        )


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


@functools.lru_cache(maxsize=64)  # called on every sample a loader reads
def _dtype_name(dtype: Any) -> str:
    """numpy name of a numpy/torch dtype or type name (``torch.bfloat16`` -> ``bfloat16``)."""
    text = str(dtype).replace("torch.", "")
    try:
        return np.dtype(text).name
    except TypeError:
        return text


def _bands_first(x: np.ndarray) -> np.ndarray:
    """``(C, N)`` view of ``(C, N)``, ``(C, H, W)`` or ``(N, C, H, W)`` pixels."""
    if x.ndim == 2:
        return x
    if x.ndim == 3:
        return x.reshape(x.shape[0], -1)
    if x.ndim == 4:
        return np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
    raise ValueError(f"expected (C, N), (C, H, W) or (N, C, H, W) pixels, got shape {x.shape}")


def _sample(x: Any) -> np.ndarray:
    """At most :data:`MAX_SAMPLE` pixels per band, as float64 numpy ``(C, n)`` (strided, so the
    whole input is never copied)."""
    if _is_torch(x):
        x = x.detach()
        flat = x.reshape(x.shape[0], -1) if x.ndim <= 3 else x.movedim(1, 0).reshape(x.shape[1], -1)
        step = max(1, flat.shape[1] // MAX_SAMPLE)
        return flat[:, ::step].cpu().double().numpy()
    flat = _bands_first(np.asarray(x))
    step = max(1, flat.shape[1] // MAX_SAMPLE)
    return flat[:, ::step].astype(np.float64)


def _percentiles(values: np.ndarray, qs: Sequence[float]) -> tuple[float, ...]:
    """Nearest-rank percentiles of a flat array by one ``np.partition`` (``np.percentile``'s
    overhead is 25x that on the 1024 values of a loader's sample)."""
    n = values.size
    ks = [min(n - 1, max(0, round(q / 100.0 * (n - 1)))) for q in qs]
    part = np.partition(values, ks)
    return tuple(float(part[k]) for k in ks)


def _band_percentile(sample: np.ndarray, valid: np.ndarray, q: float) -> list[float | None]:
    """Nearest-rank percentile ``q`` of each band's valid values (``None``: none valid), by one
    sort of the ``(C, n)`` sample with the invalid values first."""
    ordered, n = np.sort(np.where(valid, sample, -np.inf), axis=1), sample.shape[1]
    at = [
        (c, n - k + round(q / 100.0 * (k - 1))) if k else None for c, k in enumerate(valid.sum(1))
    ]
    return [None if i is None else float(ordered[i]) for i in at]


def plan_input(
    x: Any,
    contract: InputContract,
    source: str | os.PathLike | None = None,
    strict: bool = False,
    dtype: Any = None,
    nodata: float | None = None,
    error: Callable[[str, str], Exception] = InputContractError,
) -> InputPlan:
    """Tell the scale of ``x`` and plan its map onto ``contract`` (the decision of
    :func:`check_input`; for large inputs pass a sample, e.g. :func:`sample_windows`).

    Args:
        x: pixels in contract band order, ``(C, N)``, ``(C, H, W)`` or ``(N, C, H, W)``, numpy
            or torch.
        contract: what the model expects.
        source: the file (named in messages).
        strict: refuse an input that needs converting (``--strict_input``).
        dtype: the pixel type of the file ``x`` was read from (default ``x.dtype``; readers that
            return float32 pass the file's type so the integer/8-bit rules apply).
        nodata: a value marking missing pixels (besides 0 and non-finite values).
        error: exception type raised with ``(source, message)``.

    Raises:
        ``error``: 8-bit pixels, values of no Sentinel-2 scale, bands on mixed scales, or (strict)
            an input on another scale than the contract's.
    """
    src = "" if source is None else str(source)
    name = _dtype_name(dtype if dtype is not None else x.dtype)
    if name in REFUSED_DTYPES:
        raise error(
            src,
            f"pixels are {name} (8-bit: a display or PNG/JPEG rendering, not Sentinel-2 "
            f"measurements); {_FIX_SCALE}: export the original bands",
        )
    sample = _sample(x)
    valid = np.isfinite(sample) & (sample != 0)
    if nodata is not None:
        valid &= sample != nodata
    plan = InputPlan(src, None, contract.scale, nodata=nodata)
    if not valid.any():
        return plan  # nothing to tell from (all nodata): left as is
    pooled = sample[valid]
    plan.p1, plan.p99 = _percentiles(pooled, (PCT_LOW, PCT_HIGH))
    integer = name.startswith(("int", "uint"))
    stats = f"1st-99th percentile {plan.p1:.4g} to {plan.p99:.4g}"
    if plan.p99 <= REFLECTANCE_P99_MAX:
        if integer:
            raise error(
                src,
                f"integer pixels of value 0-1 ({stats}) are neither digital numbers nor "
                f"reflectance (a mask?); {_FIX_SCALE}",
            )
        detected, low = "reflectance", REFLECTANCE_P1_MIN
    elif plan.p99 < DN_P99_MIN:
        raise error(
            src,
            f"cannot tell the pixel scale ({stats} of the valid pixels: above reflectance 0-"
            f"{REFLECTANCE_P99_MAX:g}, below digital numbers {DN_P99_MIN:g}-{DN_P99_MAX:g}; "
            f"percent reflectance or a rescaled copy?); {_FIX_SCALE}",
        )
    elif plan.p99 <= DN_P99_MAX:
        detected, low = "dn", DN_P1_MIN
    else:
        raise error(
            src,
            f"pixel values out of range ({stats}; digital numbers reach about {DN_P99_MAX:g}): "
            f"check the file's nodata value and scale; {_FIX_SCALE}",
        )
    if plan.p1 < low:
        raise error(
            src,
            f"pixel values out of range ({stats}; {detected.replace('dn', 'digital numbers')} "
            f"start at {low:g}): check the file's nodata value (declare it in the file) and "
            f"scale; {_FIX_SCALE}",
        )
    if detected == "dn":
        band_p99 = _band_percentile(sample, valid, PCT_HIGH)
        odd = [
            contract.bands[i] if len(contract.bands) == len(band_p99) else str(i)
            for i, p in enumerate(band_p99)
            if p is not None and p <= REFLECTANCE_P99_MAX
        ]
        if odd:
            raise error(
                src,
                f"band{'s' if len(odd) > 1 else ''} {', '.join(odd)} look like reflectance 0-1 "
                f"while the others are digital numbers; give every band on one scale",
            )
    plan.detected = detected
    if detected == contract.scale:
        return plan
    if strict:
        raise error(
            src,
            f"pixels are {'reflectance 0-1' if detected == 'reflectance' else 'digital numbers'} "
            f"({stats}) but the model takes {contract.describe()}; convert the file, or leave "
            "out --strict_input to convert on the fly",
        )
    if detected == "reflectance":  # -> DN: reflectance x 10000 = DN + dn_offset
        plan.gain, plan.offset = DN_PER_REFLECTANCE, -contract.dn_offset
    else:  # DN (archive scale, offset applied) -> reflectance
        plan.gain = 1.0 / DN_PER_REFLECTANCE
    _announce(plan, contract)
    return plan


def plan_sample(
    x: np.ndarray,
    contract: InputContract,
    source: str | os.PathLike | None = None,
    strict: bool = False,
    dtype: Any = None,
    nodata: float | None = None,
    error: Callable[[str, str], Exception] = InputContractError,
) -> InputPlan:
    """:func:`plan_input` at the cost a per-sample read can afford (the dataset loaders).

    Integer pixels (the archives' DN) take a quick test: 1st/99th percentiles of at most
    :data:`QUICK_SAMPLE` strided values of all bands pooled; in the digital-number range that is
    the whole check (no per-band test: an integer band cannot be reflectance 0-1). Anything else
    gets :func:`plan_input` on at most :data:`FULL_SAMPLE` strided pixels per band. ``x``:
    ``(C, N)`` or ``(C, H, W)`` numpy; arguments as :func:`plan_input`.
    """
    src = "" if source is None else str(source)
    name = _dtype_name(dtype if dtype is not None else x.dtype)
    if contract.scale == "dn" and name.startswith(("int", "uint")) and name not in REFUSED_DTYPES:
        flat = x.reshape(-1)
        values = flat[:: max(1, flat.size // QUICK_SAMPLE)]
        keep = values != 0
        if nodata is not None:
            keep &= values != nodata
        values = values[keep]
        if values.size == 0:
            return InputPlan(src, None, contract.scale, nodata=nodata)
        p1, p99 = _percentiles(values, (PCT_LOW, PCT_HIGH))
        if DN_P99_MIN <= p99 <= DN_P99_MAX and p1 >= DN_P1_MIN:
            return InputPlan(src, "dn", contract.scale, p1=p1, p99=p99, nodata=nodata)
    flat = x.reshape(x.shape[0], -1)
    sample = flat[:, :: max(1, flat.shape[1] // FULL_SAMPLE)]
    return plan_input(sample, contract, source, strict, name, nodata, error)


_announced: set[tuple[str, str, float]] = set()


def _announce(plan: InputPlan, contract: InputContract) -> None:
    """The one log line of a conversion (INFO the first time per kind and process, then DEBUG,
    so a dataset of converted copies does not log every sample)."""
    key = (str(plan.detected), contract.scale, contract.dn_offset)
    level = logging.DEBUG if key in _announced else logging.INFO
    _announced.add(key)
    frm = "reflectance 0-1" if plan.detected == "reflectance" else "digital numbers"
    logger.log(
        level,
        "%s: pixels are %s (99th percentile %.4g); converted to %s as the model expects "
        "(x %g%s; --strict_input refuses instead)",
        plan.source or "input",
        frm,
        plan.p99,
        contract.describe(),
        plan.gain,
        f" {plan.offset:+g}" if plan.offset else "",
    )


# --------------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------------
def _match_bands(
    x: Any,
    names: Sequence[str | None] | None,
    contract: InputContract,
    src: str,
    error: Callable[[str, str], Exception],
) -> Any:
    """``x`` with its bands (axis -3, or 0 of ``(C, N)``) in contract order."""
    axis = 0 if x.ndim == 2 else x.ndim - 3
    count = x.shape[axis]
    need = len(contract.bands)
    wanted = ", ".join(contract.bands)
    if names is not None and all(names):
        have = [canonical_band(n) for n in names]  # type: ignore[arg-type]
        if len(have) != count:
            raise error(src, f"{len(have)} band names given for {count} bands")
        missing = [b for b in contract.bands if b not in have]
        if missing:
            raise error(
                src,
                f"the model needs {need} bands ({wanted}); the input has {count} "
                f"({', '.join(have)}): missing {', '.join(missing)}. Give a file (or files) "
                "holding those bands too",
            )
        idx = band_indices(have, contract.bands)
        if idx == list(range(count)):
            return x
        index: list[Any] = [slice(None)] * x.ndim
        index[axis] = idx
        return x[tuple(index)]
    if count != need:
        raise error(
            src,
            f"the input has {count} bands without names, the model needs {need} ({wanted}); "
            "name the input's bands (band descriptions in the file, or --input_bands) so they "
            "can be matched",
        )
    return x


def read_input(
    path: str | os.PathLike, max_pixels: int | None = None
) -> tuple[np.ndarray, str, list[str | None], float | None]:
    """Read a raster for :func:`check_input`: ``(pixels (C, H, W) in the file's type, dtype
    name, band names from the descriptions (``None`` where a description names no band),
    nodata)``. ``max_pixels`` reads a decimated version (for the scale decision on a large file).

    Raises:
        InputContractError: the file cannot be read.
    """
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(path) as f:
            shape = None
            if max_pixels is not None and f.height * f.width > max_pixels:
                k = (f.height * f.width / max_pixels) ** 0.5
                shape = (f.count, max(1, int(f.height / k)), max(1, int(f.width / k)))
            array = f.read(out_shape=shape)
            names = [_band_name(d) for d in f.descriptions]
            return array, np.dtype(f.dtypes[0]).name, names, f.nodata
    except (RasterioError, OSError) as e:
        raise InputContractError(path, f"cannot read raster ({e})") from e


def _band_name(description: str | None) -> str | None:
    if not description:
        return None
    try:
        return canonical_band(description)
    except KeyError:
        return None


def check_input(
    x: Any,
    contract: InputContract,
    source: str | os.PathLike | None = None,
    strict: bool = False,
    bands: Sequence[str] | None = None,
    dtype: Any = None,
    nodata: float | None = None,
    error: Callable[[str, str], Exception] = InputContractError,
) -> Any:
    """Check an input against ``contract`` and return it on the contract's bands and scale.

    Args:
        x: a raster file (path), or pixels ``(C, H, W)`` / ``(N, C, H, W)`` (numpy or torch).
        contract: what the model expects.
        source: the file named in messages (default: ``x`` when it is a path).
        strict: refuse (instead of convert) an input on another scale (``--strict_input``).
        bands: the input's band names in its order (default: a file's band descriptions;
            unnamed inputs must hold exactly the contract's bands, in its order).
        dtype: the file's pixel type when ``x`` was read as another (e.g. float32).
        nodata: value of missing pixels (default: a file's nodata); 0 always counts as missing.
        error: exception type raised with ``(source, message)``, e.g. a dataset's sample error.

    Returns:
        The pixels in contract band order on the contract's scale: ``x`` itself when nothing
        changes, else a float32 array/tensor (one log line says what was converted).

    Raises:
        ``error`` (:class:`InputContractError`): 8-bit pixels, missing bands, a value range of no
        Sentinel-2 scale, or (strict) another scale; one line naming the file and the fix.
    """
    names: Sequence[str | None] | None = bands
    if isinstance(x, str | os.PathLike):
        source = x if source is None else source
        x, file_dtype, file_names, file_nodata = read_input(x)
        dtype = dtype or file_dtype
        names = names if names is not None else (file_names if any(file_names) else None)
        nodata = file_nodata if nodata is None else nodata
    src = "" if source is None else str(source)
    x = _match_bands(x, names, contract, src, error)
    plan = plan_input(x, contract, src, strict, dtype, nodata, error)
    return plan.apply(x)


def sample_windows(
    read: Callable[[int, int, int, int], tuple[np.ndarray, np.ndarray]],
    height: int,
    width: int,
    size: int = 256,
    per_side: int = 3,
) -> np.ndarray:
    """Valid pixels ``(C, N)`` of ``per_side x per_side`` windows spread over a scene, for
    :func:`plan_input` on inputs too large to check whole.

    Args:
        read: ``read(row, col, height, width) -> (pixels (C, h, w), valid (h, w))``, e.g.
            ``util.inference.scene.Scene.read``.
        height, width: the scene's size.
    """
    h, w = min(size, height), min(size, width)
    rows = np.linspace(0, height - h, per_side).astype(int)
    cols = np.linspace(0, width - w, per_side).astype(int)
    parts = []
    for r in sorted(set(rows.tolist())):
        for c in sorted(set(cols.tolist())):
            pixels, valid = read(r, c, h, w)
            parts.append(pixels[:, valid])
    return np.concatenate(parts, axis=1)
