"""A checkpoint -> a model ready for a prediction task, with what predicting needs to know.

:func:`load_model` rebuilds the checkpoint's model from its metadata
(:func:`util.training.checkpoint_meta.read_metadata`: factory and module, keyword arguments, input
size, bands, normalisation, classes), loads the weights through the module's
``checkpoint_filter_fn`` and checks that they fit the task (:func:`resolve_task`). The windowed
prediction over a scene is :mod:`util.inference.predict`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

import models_registry
from util.data.contract import InputContract
from util.data.sensor_view import sensor_from_metadata
from util.data.sensors import Sensor
from util.data.transforms import get_normalization

logger = logging.getLogger(__name__)

__all__ = ["TASKS", "LoadedModel", "load_model", "resolve_task"]

TASKS = ("auto", "classify", "segment", "change", "embed")


@dataclass
class LoadedModel:
    """A model ready for a task, with what predicting needs from its checkpoint's metadata.

    ``model`` maps normalised tiles ``(B, 12, t, t)`` (``(B, 2, 12, t, t)`` for change) to logits
    ``(B, K, t, t)`` (dense) or ``(B, K)`` (classifier); for ``embed`` it is (or holds as
    ``encoder``) a ``SpectralViT``. ``sensor``: the band set the model was trained on (the
    checkpoint's ``sensor_bands``; None: Sentinel-2 L2A), the default sensor of its inputs.
    """

    model: nn.Module
    task: str  # classify | segment | change | embed
    input_size: int
    patch_size: int
    bands: tuple[str, ...]
    normalization: str
    classes: list[str]
    multilabel: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    sensor: Sensor | None = None
    #: what the model expects of its input (scale, DN offset, native size): every scene is
    #: checked against it (:func:`util.data.contract.plan_input`)
    contract: InputContract = field(default_factory=InputContract)


def resolve_task(requested: str, meta_task: str | None) -> str:
    """``auto`` -> the checkpoint's task (segment / change / classify; a pretraining checkpoint
    -> embed); an explicit task must fit the checkpoint (any checkpoint can ``embed``)."""
    if requested not in TASKS:
        raise ValueError(f"--task must be one of {', '.join(TASKS)}, got {requested!r}")
    natural = {
        "segment": "segment",
        "change": "change",
        "classify": "classify",
        "multilabel": "classify",
        "pretrain": "embed",
    }.get(meta_task or "")
    if requested == "auto":
        if natural is None:
            raise ValueError(
                "--task auto: the checkpoint does not record its task; pass --task "
                "classify|segment|change|embed"
            )
        return natural
    if requested != "embed" and natural is not None and requested != natural:
        raise ValueError(
            f"--task {requested} does not fit this checkpoint (a {meta_task} model); use "
            f"--task {natural} or --task embed"
        )
    return requested


def load_model(
    checkpoint: str | os.PathLike,
    task: str = "auto",
    model_name: str | None = None,
    input_size: int | None = None,
    normalization: str | None = None,
) -> LoadedModel:
    """Build the checkpoint's model from its metadata and load its weights.

    Args:
        checkpoint: a checkpoint of this project (any task), or the paper's (``model_name`` then
            names the factory, e.g. ``mae_vit_base_patch8_128``).
        task: see :func:`resolve_task`.
        model_name, input_size, normalization: override what the metadata records.

    Raises:
        FileNotFoundError / RuntimeError (unreadable file), ValueError (task or model unknown).
    """
    from util.training.checkpoint import load_checkpoint_file
    from util.training.checkpoint_meta import read_metadata

    ckpt = load_checkpoint_file(checkpoint)
    meta = read_metadata(ckpt)
    name = model_name or meta.get("model")
    module_name = meta.get("model_module")
    if model_name and model_name != meta.get("model"):
        module_name = None  # the metadata's module may not hold this name
    if not name:
        raise ValueError(
            f"{checkpoint}: the checkpoint does not record its model; pass --model (e.g. "
            "mae_vit_base_patch8_128 for SpectralGPT+.pth)"
        )
    # the file's names and options only select among this project's factories (checked
    # before anything is imported; a crafted model_module imports nothing)
    if module_name is None:
        module_name = models_registry.find_module(name, checkpoint)
    kwargs = models_registry.check_kwargs(meta.get("model_kwargs"), checkpoint)
    size = input_size or meta.get("input_size") or kwargs.get("img_size")
    if size:
        kwargs["img_size"] = int(size)
    model = models_registry.build_model(module_name, name, kwargs, source=checkpoint)
    module = models_registry.get_module(module_name)
    report: dict[str, list[str]] = {}
    state = module.checkpoint_filter_fn(ckpt, model, report)
    model.load_state_dict(state, strict=True)
    task = resolve_task(task, meta.get("task"))
    enc = getattr(model, "encoder", model)
    missing = list(report.get("missing", []))
    if hasattr(model, "encoder"):
        enc_missing = [k for k in missing if k.startswith("encoder.")]
    else:
        enc_missing = [k for k in missing if not k.startswith(("head", "decoder", "mask_token"))]
    if enc_missing:
        raise ValueError(
            f"{checkpoint}: encoder weights missing for {name}: {', '.join(enc_missing[:6])}"
        )
    if task != "embed" and any(not k.startswith(("decoder", "mask_token")) for k in missing):
        raise ValueError(
            f"{checkpoint}: the weights lack {', '.join(missing[:6])}"
            f"{' ...' if len(missing) > 6 else ''}: the file is not a trained {task} model of "
            f"{name}; use --task embed for an encoder-only checkpoint"
        )
    model.eval()
    norm = normalization or meta.get("normalization")
    if not norm:
        norm = "minmax"  # the pretraining scheme (spec §5.3)
        logger.warning(
            "%s records no normalisation; using %s (pass --normalization to choose)",
            checkpoint,
            norm,
        )
    get_normalization(norm)  # fail early on an unknown name
    classes = list(meta.get("classes") or [])
    num_classes = getattr(model, "num_classes", 0) or 0
    if task == "change":
        classes = classes or ["no change", "change"]
    elif task in ("classify", "segment") and len(classes) != num_classes:
        classes = [f"class {i}" for i in range(num_classes)]
    bands = tuple(getattr(model, "bands", None) or enc.bands)
    contract = InputContract.from_dict({**meta, "bands": bands, "normalization": norm})
    return LoadedModel(
        model=model,
        task=task,
        input_size=int(enc.patch_embed.img_size[0]),
        patch_size=int(enc.patch_embed.patch_size[0]),
        bands=bands,
        normalization=norm,
        classes=classes,
        multilabel=meta.get("task") == "multilabel",
        meta=meta,
        contract=contract,
        sensor=sensor_from_metadata(meta),
    )
