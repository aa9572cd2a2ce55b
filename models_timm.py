"""timm registration of the SpectralGPT model factories.

:func:`register_timm` makes every factory of a model module a timm model
(``timm.create_model("spectralgpt_<name>", ...)``) whose ``pretrained_cfg`` is a
:class:`SpectralPretrainedCfg` (input size, band names, normalisation). Each model module calls it
once at import time (``models_vit_tensor``, ``models_mae_spectral``,
``downstream_tasks.models_dense``), so importing the module registers its models.

The band names come from ``util.data.sentinel2`` (band facts: constants, numpy only), the one
module of the data layer a model module may import.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
from timm.models import DefaultCfg, PretrainedCfg, build_model_with_cfg, register_model

from util.data.sentinel2 import MODEL_BANDS

__all__ = ["TIMM_PREFIX", "SpectralPretrainedCfg", "register_timm"]

TIMM_PREFIX = "spectralgpt_"


@dataclass
class SpectralPretrainedCfg(PretrainedCfg):
    """timm's ``PretrainedCfg`` plus what a multispectral consumer needs: the band names on the
    input's band axis and the name of the normalisation (``util.data.transforms.NORMALIZATIONS``) that
    turns raw digital numbers into the model's input; ``mean``/``std`` are then applied on top
    (identity for the per-image min-max scheme the pretraining used)."""

    bands: tuple[str, ...] = ()
    normalization: str | None = None


def _pretrained_cfg(geometry: Mapping[str, int], num_classes: int) -> SpectralPretrainedCfg:
    frames, size = geometry["num_frames"], geometry["img_size"]
    return SpectralPretrainedCfg(
        input_size=(frames, size, size),
        fixed_input_size=False,  # any multiple of the patch size (position tables resampled)
        interpolation="bicubic",
        crop_pct=224 / 256,
        mean=(0.0,) * frames,
        std=(1.0,) * frames,
        num_classes=num_classes,
        # no ``classifier``: timm would drop the head whenever num_classes differs from this
        # default; checkpoint_filter_fn keeps a matching head and re-initialises another one
        classifier=None,
        bands=tuple(MODEL_BANDS) if frames == len(MODEL_BANDS) else (),
        normalization="minmax",  # the pretraining scheme (spec §5.3); finetuned files record theirs
        license="apache-2.0",
        paper_name="SpectralGPT: Spectral Remote Sensing Foundation Model",
        paper_ids="doi:10.1109/TPAMI.2024.3362475",
    )


def register_timm(
    module_name: str,
    names: Mapping[str, Callable[..., nn.Module]],
    create: Callable[..., nn.Module],
    filter_fn: Callable[..., dict[str, torch.Tensor]],
    num_classes: int = -1,
    geometry: Mapping[str, int] | None = None,
) -> list[str]:
    """Register ``names`` in timm as ``spectralgpt_<name>`` and expose the factories at module level.

    Each timm entry point wraps ``create(name, **kwargs)`` (the module's one lookup) in timm's
    ``build_model_with_cfg``, so ``timm.create_model("spectralgpt_vit_base_patch8_128",
    num_classes=10)`` builds the same model as ``create_model("vit_base_patch8_128",
    num_classes=10)``, ``pretrained=True`` with ``pretrained_cfg_overlay=dict(file=CKPT)`` loads
    a checkpoint through ``filter_fn``, and ``model.pretrained_cfg`` carries the input size, band
    names and normalisation. ``num_classes`` is the factories' default class count (-1: timm
    passes none, e.g. the MAE, or factories that pick it per model); ``geometry``
    (``img_size``, ``num_frames``) defaults to each factory's ``geometry`` attribute.

    Returns:
        The registered timm names.
    """
    module = sys.modules[module_name]
    default_cfgs = module.__dict__.setdefault("default_cfgs", {})  # where timm looks them up
    drop = ("in_chans", "global_pool")
    registered = []
    for name, factory in names.items():
        timm_name = TIMM_PREFIX + name

        def entry(pretrained: bool = False, _name: str = name, _timm: str = timm_name, **kwargs):
            # timm passes the input channel count of a 3-channel RGB world as in_chans; here every
            # band is one channel of one spectral token (in_chans=1), so it is dropped
            model = build_model_with_cfg(
                partial(create, _name),
                _timm,
                pretrained,
                pretrained_filter_fn=filter_fn,
                kwargs_filter=drop,
                **kwargs,
            )
            enc = getattr(model, "encoder", model)  # dense models hold the encoder
            h, w = enc.patch_embed.img_size  # the built size (img_size= may differ)
            model.pretrained_cfg["input_size"] = (enc.num_frames, h, w)
            return model

        entry.__name__ = entry.__qualname__ = timm_name
        entry.__module__ = module_name
        entry.__doc__ = f"timm entry point of ``{module_name}.create_model({name!r}, **kwargs)``."
        default_cfgs[timm_name] = DefaultCfg(
            tags=deque([""]),
            cfgs={"": _pretrained_cfg(geometry or factory.geometry, num_classes)},
        )
        if not hasattr(module, name):  # the paper's module-level factory names
            setattr(module, name, factory)
            module.__all__.append(name)
        setattr(module, timm_name, register_model(entry))
        registered.append(timm_name)
    return registered
