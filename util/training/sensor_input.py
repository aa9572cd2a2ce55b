"""``--sensor`` / ``--bands`` of the trainers: train or evaluate on another sensor's band set.

One mechanism for ``main_finetune``, ``downstream_tasks/train.py`` and label efficiency
(docs/sensors.md):

* **data**: each split's transforms are wrapped in :class:`util.data.sensor_view.SensorView`: the
  Sentinel-2 samples of the dataset are rendered at the sensor's band centres and mapped onto the
  model's 12 slots by the wavelength adapter (:func:`sensor_transforms`);
* **model**: :func:`set_input_groups` records on the model the spectral groups that input fills,
  and a forward pre-hook passes them as ``groups=`` to every call that gives none. The engines'
  loops (``model(images)``), DDP / FSDP / ``torch.compile`` wrappers and the state-dict keys stay
  as they are (nothing is wrapped); code that calls a sub-method directly (``forward_features``)
  passes :func:`input_groups` itself;
* **checkpoint**: :func:`sensor_meta` gives the ``sensor`` / ``sensor_bands`` entries of ``meta``
  (:func:`util.data.sensor_view.sensor_record`); :func:`sensor_args_from_checkpoint` takes the
  flags back from them.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from util.data.band_adapter import BandAdapter
from util.data.sensor_view import (
    SensorView,
    flags_from_metadata,
    sensor_from_flags,
    sensor_from_metadata,
    sensor_record,
)
from util.data.sensors import Sensor

logger = logging.getLogger(__name__)

__all__ = [
    "add_sensor_args",
    "input_groups",
    "model_groups",
    "sensor_args_from_checkpoint",
    "sensor_meta",
    "sensor_of",
    "sensor_transforms",
    "set_input_groups",
]


def add_sensor_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """``--sensor`` and ``--bands`` (default: the dataset's own Sentinel-2 bands)."""
    g = parser.add_argument_group("sensor (train / evaluate for another band set; docs/sensors.md)")
    g.add_argument(
        "--sensor", default=None, metavar="ID|name:nm,...",
        help="the band set the model is for: landsat8, hls_prithvi6, rgbn, ... "
        "(util/data/sensors.py) or custom name:wavelength_nm pairs; the Sentinel-2 samples are "
        "rendered at its band centres and mapped onto the 12 model slots by wavelength, spectral "
        "groups without a band are left out of the token sequence; recorded in the checkpoint",
    )  # fmt: skip
    g.add_argument(
        "--bands", default=None, metavar="NAMES|name:nm,...",
        help="only these bands of --sensor (default Sentinel-2 L2A, e.g. B02,B03,B04,B08), or "
        "custom bands as name:wavelength_nm pairs (e.g. blue:490,red:665,nir:842)",
    )  # fmt: skip
    return g


def sensor_of(args: argparse.Namespace | Mapping[str, Any]) -> Sensor | None:
    """The band set of ``args.sensor`` / ``args.bands`` (None: Sentinel-2 L2A, nothing changes).

    Raises:
        SensorError (a ``ValueError``): one line naming the flag.
    """
    get = args.get if isinstance(args, Mapping) else lambda k: getattr(args, k, None)
    return sensor_from_flags(get("sensor"), get("bands"))


def sensor_transforms(
    transforms: Callable[[dict], dict] | None, sensor: Sensor | None, simulate: bool = True
) -> Callable[[dict], dict] | None:
    """``transforms`` wrapped in a :class:`SensorView` of ``sensor`` (unchanged for None)."""
    if sensor is None:
        return transforms
    return SensorView(transforms, sensor, "adapter", simulate)


def model_groups(sensor: Sensor | None) -> tuple[int, ...] | None:
    """The spectral groups ``sensor``'s bands fill (None: all, the full token sequence)."""
    return None if sensor is None else BandAdapter(sensor).groups


def _fill_groups(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    groups = getattr(module, "input_groups", None)
    if groups is not None and "groups" not in kwargs:
        kwargs = {**kwargs, "groups": groups}
    return args, kwargs


def set_input_groups(model: nn.Module, groups: Sequence[int] | None) -> nn.Module:
    """Make every ``model(x)`` call run on ``groups`` (None: all) unless it passes ``groups=``.

    The model must accept ``groups`` in ``forward`` (``SpectralViT``/``VisionTransformer`` and
    the dense models do); the groups live in ``model.input_groups`` (not in the state dict).
    """
    model.input_groups = None if groups is None else tuple(int(g) for g in groups)
    if getattr(model, "_input_groups_hook", None) is None and groups is not None:
        model._input_groups_hook = model.register_forward_pre_hook(_fill_groups, with_kwargs=True)
    if groups is not None:
        logger.info("model runs on spectral groups %s", list(model.input_groups))
    return model


def input_groups(model: nn.Module) -> tuple[int, ...] | None:
    """The groups :func:`set_input_groups` gave ``model`` (None: all)."""
    from util.training.runtime import unwrap_model

    return getattr(unwrap_model(model), "input_groups", None)


def sensor_meta(args: argparse.Namespace) -> dict[str, Any]:
    """``{"sensor": ..., "sensor_bands": ...}`` of ``--sensor`` / ``--bands`` for a checkpoint's
    ``meta`` (:func:`util.data.sensor_view.sensor_record`)."""
    return sensor_record(sensor_of(args))


def sensor_args_from_checkpoint(
    args: argparse.Namespace, meta: Mapping[str, Any], path: str, resume: bool
) -> None:
    """Take ``--sensor`` / ``--bands`` from a checkpoint's record when neither flag is given.

    A resumed run must keep the band set it was trained on (``resume``: a different one is an
    error); an evaluation may use another (that is a transfer evaluation), so it only defaults.
    """
    recorded = sensor_from_metadata(meta)
    if getattr(args, "sensor", None) or getattr(args, "bands", None):
        given = sensor_of(args)
        same = _band_set(given) == _band_set(recorded)
        if resume and not same:
            raise ValueError(
                f"--sensor/--bands give {_describe(given)}, but {path} was trained on "
                f"{_describe(recorded)}; leave both flags out to continue with the checkpoint's"
            )
        return
    if recorded is None:
        return
    args.sensor, args.bands = flags_from_metadata(meta)
    logger.info("from %s: --sensor %s --bands %s", path, args.sensor, args.bands)


def _band_set(sensor: Sensor | None) -> tuple[tuple[str, float], ...] | None:
    return None if sensor is None else tuple((b.name, b.centre_nm) for b in sensor.bands)


def _describe(sensor: Sensor | None) -> str:
    return "Sentinel-2 L2A" if sensor is None else f"{sensor.id} ({', '.join(sensor.band_names)})"
