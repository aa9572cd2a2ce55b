"""Checkpoint metadata (format v2): how to rebuild the model and its input from a checkpoint alone.

Every checkpoint of this project carries ``meta`` = :func:`checkpoint_meta` (factory name and
module, the factory's keyword arguments, task, input size, bands, normalisation, class names,
dataset). :func:`read_metadata` returns it for any checkpoint we can read (derived for format v1
files and the paper's), :func:`fill_args_from_checkpoint` takes flag values from it, and
:func:`describe_checkpoint` summarises a file. Command line::

    python -m util.training.checkpoint_meta info CKPT [--json] [--sha256] [--md5]

Reading and writing the files themselves is :mod:`util.training.checkpoint`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch

from models_convert import unwrap_state_dict
from util.training.checkpoint import OWN_FORMATS, TRAINING_STATE_KEYS, load_checkpoint_file

logger = logging.getLogger(__name__)

__all__ = [
    "META_KEYS",
    "TASKS",
    "checkpoint_meta",
    "describe_checkpoint",
    "file_sha256",
    "fill_args_from_checkpoint",
    "read_metadata",
]

META_KEYS = (
    "model",
    "model_module",
    "model_kwargs",
    "task",
    "input_size",
    "bands",
    "normalization",
    "classes",
    "dataset",
    "sensor",
    "sensor_bands",
    "input_scale",
    "input_dn_offset",
    "native_size",
)
#: what a checkpoint that records no sensor was trained on (``util.data.sensor_view``)
DEFAULT_SENSOR = "sentinel2_l2a"
TASKS = ("pretrain", "classify", "multilabel", "segment", "change")


def checkpoint_meta(
    model: str | None,
    model_module: str,
    task: str,
    input_size: int | None,
    bands: list[str] | tuple[str, ...] | None = None,
    normalization: str | None = None,
    classes: list[str] | tuple[str, ...] | None = None,
    dataset: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    native_size: int | None = None,
    input_scale: str = "dn",
    input_dn_offset: float = 0.0,
) -> dict[str, Any]:
    """The ``meta`` entry of a v2 checkpoint (plain, weights-only-loadable types).

    Args:
        model: factory name (``create_model(model, **model_kwargs)`` in ``model_module``).
        model_module: ``models_mae_spectral``, ``models_vit_tensor`` or
            ``downstream_tasks.models_dense``.
        task: one of :data:`TASKS`.
        input_size: image side the model was built for (px).
        bands: band names in input order (default ``util.data.sentinel2.MODEL_BANDS``).
        normalization: name of the input normalisation (``util.data.transforms.NORMALIZATIONS``).
        classes: class names, in output order (``[]`` for pretraining).
        dataset: registry name of the training data.
        model_kwargs: the factory's keyword arguments (``img_size``, ``num_classes``, ...).
        native_size, input_scale, input_dn_offset: the input contract
            (:class:`util.data.contract.InputContract`): image side of the training files
            (``None``: sizes varied), their radiometric scale (``dn``: digital numbers, the
            archives' scale and what every loader delivers; ``reflectance``) and the DN offset
            they still carried (0 for every archive).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if bands is None:
        from util.data.sentinel2 import MODEL_BANDS

        bands = MODEL_BANDS
    from util.training.args import _plain

    return {
        "model": model,
        "model_module": model_module,
        "model_kwargs": _plain(dict(model_kwargs or {})),
        "task": task,
        "input_size": None if input_size is None else int(input_size),
        "bands": list(bands),
        "normalization": normalization,
        "classes": list(classes or []),
        "dataset": dataset,
        # the band set of the training data (``util.training.sensor_input.sensor_meta``)
        "sensor": DEFAULT_SENSOR,
        "sensor_bands": None,
        "input_scale": input_scale,
        "input_dn_offset": float(input_dn_offset),
        "native_size": None if native_size is None else int(native_size),
    }


def _plain_args(args: Any) -> dict[str, Any]:
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return dict(args) if isinstance(args, dict) else {}


def _meta_from_weights(state: dict[str, Any]) -> dict[str, Any]:
    """What the tensors say: decoder present, classes (head rows), input size (spatial table)."""
    out: dict[str, Any] = {}
    if not isinstance(state, dict) or not state:
        return out
    keys = list(state)
    out["has_decoder"] = any(k.startswith(("decoder", "mask_token")) for k in keys)
    head = next((state[k] for k in keys if k.endswith("head.weight") or k == "head.1.weight"), None)
    if torch.is_tensor(head) and head.ndim == 2:
        out["num_classes"] = int(head.shape[0])
    pos = next((state[k] for k in keys if k.endswith("pos_embed_spatial")), None)
    if torch.is_tensor(pos) and pos.ndim == 3:
        side = math.isqrt(int(pos.shape[1]))
        if side * side == pos.shape[1]:
            out["input_size"] = side * 8  # patch size 8 (every released model)
    return out


def read_metadata(ckpt_or_path: dict[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's ``meta`` (:func:`checkpoint_meta` keys), for any file we can read.

    v2 files return their ``meta``; v1 files (``args`` + ``data``) and the paper's files
    (``args`` Namespace, tensors only) get it derived, with what cannot be known set to ``None``
    (e.g. the paper's model names, which are not this project's factories).
    """
    ckpt = ckpt_or_path if isinstance(ckpt_or_path, dict) else load_checkpoint_file(ckpt_or_path)
    if isinstance(ckpt.get("meta"), dict):
        meta = dict.fromkeys(META_KEYS)
        meta.update(ckpt["meta"])
        meta["sensor"] = meta["sensor"] or DEFAULT_SENSOR
        return meta
    args = _plain_args(ckpt.get("args"))
    data = ckpt.get("data") if isinstance(ckpt.get("data"), dict) else {}
    weights = _meta_from_weights(unwrap_state_dict(ckpt))
    own = ckpt.get("format") in OWN_FORMATS
    pretrain = weights.get("has_decoder", False) or "mask_ratio" in args
    module = "models_mae_spectral" if pretrain else "models_vit_tensor"
    name = args.get("model")
    if name is not None:
        import models_mae_spectral
        import models_vit_tensor

        known = (models_mae_spectral if pretrain else models_vit_tensor).MODELS
        if not own or name not in known:
            name = None  # the paper's names are not this project's factories
    input_size = data.get("input_size") or weights.get("input_size")
    if own and args.get("input_size"):
        input_size = input_size or args["input_size"]
    classes = list(data.get("classes") or [])
    dataset = data.get("dataset")
    if dataset is None and own and args.get("dataset_type"):
        try:
            from util.data import resolve_name

            dataset = resolve_name(str(args["dataset_type"]))
        except KeyError:
            dataset = None
    num_classes = weights.get("num_classes") or (len(classes) if classes else None)
    if pretrain:
        task = "pretrain"
    elif dataset == "bigearthnet":
        task = "multilabel"
    else:
        task = "classify"
    kwargs: dict[str, Any] = {}
    if input_size:
        kwargs["img_size"] = int(input_size)
    if not pretrain and num_classes:
        kwargs["num_classes"] = int(num_classes)
    from util.data.sentinel2 import MODEL_BANDS

    return checkpoint_meta(
        model=name,
        model_module=module,
        task=task,
        input_size=input_size,
        bands=data.get("bands") or list(MODEL_BANDS),
        normalization=data.get("normalization"),
        classes=classes,
        dataset=dataset,
        model_kwargs=kwargs,
    )


def fill_args_from_checkpoint(
    args: argparse.Namespace, path: str | os.PathLike, values: dict[str, Any]
) -> dict[str, Any]:
    """Take flag values from a checkpoint's metadata where the user gave none.

    Args:
        args: parsed arguments; a flag counts as "not given" when its value is ``None``.
        path: the checkpoint (for the messages).
        values: ``{flag dest: value recorded in the checkpoint}`` (``None``: not recorded).

    Returns:
        ``{flag: value}`` of the flags filled in (the caller says so in its log).

    Raises:
        ValueError: a flag was given with a value that differs from the checkpoint's (one line
            naming the flag, both values and the file).
    """
    taken: dict[str, Any] = {}
    for flag, recorded in values.items():
        if recorded is None:
            continue
        given = getattr(args, flag, None)
        if given is None:
            setattr(args, flag, recorded)
            taken[flag] = recorded
        elif given != recorded:
            raise ValueError(
                f"--{flag} {given} differs from the {recorded} stored in {path}; leave --{flag} "
                "out to use the checkpoint's value"
            )
    if taken:
        logger.info(
            "from %s: %s",
            path,
            ", ".join(f"--{k} {v}" for k, v in taken.items()),
        )
    return taken


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20, algorithm: str = "sha256") -> str:
    """Hex digest of a file (to check a download against a published checksum; Zenodo lists
    md5)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def describe_checkpoint(
    path: str | os.PathLike, sha256: bool = False, md5: bool = False
) -> dict[str, Any]:
    """Summary of a checkpoint: format, epoch/step, metadata, tensor and parameter counts."""
    path = Path(path)
    ckpt = load_checkpoint_file(path)
    state = unwrap_state_dict(ckpt) if isinstance(ckpt, dict) else {}
    tensors = {k: v for k, v in state.items() if torch.is_tensor(v)}
    info: dict[str, Any] = {
        "file": str(path),
        "bytes": path.stat().st_size,
        "format": ckpt.get("format", "unknown (not written by this project; e.g. the paper's)"),
        "entries": sorted(str(k) for k in ckpt),
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
        "resumable": ckpt.get("format") in OWN_FORMATS
        and all(k in ckpt for k in TRAINING_STATE_KEYS),
        "tensors": len(tensors),
        "parameters": int(sum(v.numel() for v in tensors.values())),
        "has_decoder": any(k.startswith("decoder") for k in tensors),
        "meta": read_metadata(ckpt),
    }
    if isinstance(ckpt.get("metrics"), dict):
        info["metrics"] = {k: v for k, v in ckpt["metrics"].items() if isinstance(v, int | float)}
    if sha256:
        info["sha256"] = file_sha256(path)
    if md5:
        info["md5"] = file_sha256(path, algorithm="md5")
    return info


def get_args_parser() -> argparse.ArgumentParser:
    """``python -m util.training.checkpoint_meta info CKPT [--json] [--sha256] [--md5]``."""
    from util.training.cli import add_debug_arg

    parser = argparse.ArgumentParser(
        prog="python -m util.training.checkpoint_meta",
        description="Inspect a checkpoint: metadata (model, input size, bands, normalisation, "
        "classes), format, epoch, tensor and parameter counts.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print a checkpoint's metadata and summary")
    info.add_argument("checkpoint", help="a .pth file (ours or the released SpectralGPT(+).pth)")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.add_argument("--sha256", action="store_true", help="also hash the file (SHA-256)")
    info.add_argument(
        "--md5", action="store_true", help="also hash the file (MD5, as Zenodo lists)"
    )
    add_debug_arg(info)
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the ``info`` command and print its result; returns it."""
    result = describe_checkpoint(args.checkpoint, sha256=args.sha256, md5=args.md5)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return result
    meta = result.pop("meta")
    for key, value in result.items():
        print(f"{key + ':':16s}{value}")
    print("meta:")
    for key, value in meta.items():
        if key == "classes" and value and len(value) > 12:
            value = f"{len(value)} classes: {', '.join(map(str, value[:6]))}, ..."
        print(f"  {key + ':':16s}{value}")
    return {**result, "meta": meta}


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv`` and run :func:`main` with the shared error handling."""
    from util.training.cli import parse_and_run

    return parse_and_run(get_args_parser(), main, argv)


if __name__ == "__main__":
    cli()
