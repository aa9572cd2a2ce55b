"""Evaluation of dense models on whole scenes (OSCD change detection, SegMunich segmentation).

Training uses ``engine_finetune.train_one_epoch`` (the one training loop, here with
``target_key="mask"`` and a pixel-wise cross-entropy). This module evaluates:

* ``protocol="whole"`` (default): every scene is predicted whole by a sliding window of
  ``tile`` px windows at ``stride`` (``util.inference.tiling``), logits blend-averaged, and every pixel of
  every scene is counted exactly once in one global confusion matrix (synced across ranks).
* ``protocol="paper"``: the paper's OSCD counting (spec §7.5): ``tile`` px tiles at
  ``paper_stride`` (63 for 128 px) from :func:`util.inference.tiling.paper_tile_starts`, each tile
  predicted on its own and counted, so overlaps count several times and the far border strip
  never; kept only to put our number next to the paper's.

Evaluation shards whole scenes across ranks without padding (``evaluation.metrics.eval_shard``) and calls
the unwrapped model (shards may differ in length). Outputs: metrics (``evaluation.metrics.dense_metrics``
names), optional per-scene PNGs and GeoTIFF predictions.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

import models_registry
from downstream_tasks import models_dense
from downstream_tasks.dense_data import TASKS
from downstream_tasks.dense_figures import save_scene_png
from evaluation.metrics import (
    DENSE_IGNORE_INDEX,
    build_confusion_matrix,
    dense_metrics,
)
from util.inference.tiling import paper_tile_starts, sliding_window_inference
from util.training.checkpoint import load_weights_file
from util.training.checkpoint_meta import checkpoint_meta
from util.training.loader import build_eval_loader
from util.training.logger import TrainLogger
from util.training.runtime import unsharded, unwrap_model
from util.training.sensor_input import (
    model_groups,
    sensor_meta,
    sensor_of,
    set_input_groups,
)

logger = logging.getLogger(__name__)

PROTOCOLS = ("whole", "paper", "both")
MODEL_MODULE = "downstream_tasks.models_dense"


def _tiles_fn(net: nn.Module, autocast: Callable[[], Any] | None) -> Callable:
    def fn(tiles: torch.Tensor) -> torch.Tensor:
        if autocast is None:
            return net(tiles)
        with autocast():
            return net(tiles)

    return fn


@torch.no_grad()
def predict_scene(
    net: nn.Module,
    image: torch.Tensor,
    num_classes: int,
    tile: int,
    stride: int,
    batch_size: int = 16,
    blend: str = "uniform",
    autocast: Callable[[], Any] | None = None,
) -> torch.Tensor:
    """Whole-scene logits ``(N, K, H, W)`` float32 of ``image`` ``(N, [2,] 12, H, W)``."""
    return sliding_window_inference(
        _tiles_fn(net, autocast), image, tile, stride, batch_size, num_classes, blend
    )


@torch.no_grad()
def paper_protocol_update(
    net: nn.Module,
    image: torch.Tensor,
    mask: torch.Tensor,
    cm,
    tile: int,
    stride: int,
    batch_size: int = 16,
    autocast: Callable[[], Any] | None = None,
) -> int:
    """Count the paper's overlapping tiles of one scene into ``cm``; returns the tile count."""
    fn = _tiles_fn(net, autocast)
    h, w = image.shape[-2:]
    windows = [
        (y, x)
        for y in paper_tile_starts(h, tile, stride)
        for x in paper_tile_starts(w, tile, stride)
    ]
    for b in range(0, len(windows), batch_size):
        chunk = windows[b : b + batch_size]
        tiles = torch.cat([image[..., y : y + tile, x : x + tile] for y, x in chunk])
        targets = torch.cat([mask[..., y : y + tile, x : x + tile] for y, x in chunk])
        cm.update(fn(tiles).float().argmax(1), targets)
    return len(windows)


@torch.no_grad()
def _evaluate_scenes(
    model: nn.Module,
    dataset,
    device: torch.device,
    num_classes: int,
    tile: int,
    stride: int,
    shard: Sequence[int],
    class_names: Sequence[str],
    task: str,
    protocol: str = "whole",
    paper_stride: int | None = None,
    batch_size: int = 16,
    blend: str = "uniform",
    autocast: Callable[[], Any] | None = None,
    num_workers: int = 0,
    vis_dir: str | os.PathLike | None = None,
    vis_scenes: int = 0,
    vis_prefix: str = "",
    save_predictions: str | os.PathLike | None = None,
    log: TrainLogger | None = None,
) -> dict[str, Any]:
    """Evaluate on whole scenes of ``dataset`` (this rank's ``shard`` of scene indices).

    Args:
        model: the dense model (wrappers are removed); called as ``model(image_batch)``.
        dataset: dense dataset with evaluation transforms (normalisation only) and ``scene_info``.
        device: model device.
        num_classes: ``K``.
        tile, stride: sliding-window geometry of ``protocol="whole"``.
        shard: scene indices of this rank (``evaluation.metrics.eval_shard``; no padding).
        class_names: names in class order (metric keys).
        task: ``"change"`` or ``"segment"``.
        protocol: ``whole``, ``paper`` or ``both`` (paper metrics then carry a ``paper_`` prefix).
        paper_stride: stride of the paper's tiles (default ``tile // 2 - 1``, 63 for 128 px).
        batch_size: windows per forward.
        blend: ``uniform`` or ``cosine`` window weights.
        autocast: zero-argument context factory (bf16) or None.
        num_workers: loader workers for reading scenes.
        vis_dir / vis_scenes / vis_prefix: write the figures of the first ``vis_scenes`` scenes
            of the shard to ``vis_dir/<prefix><name>.png`` (``downstream_tasks.dense_figures``).
        save_predictions: folder for ``<name>.tif`` class maps (input CRS and transform).
        log: rank-0 progress bar.

    Returns:
        ``evaluation.metrics.dense_metrics`` keys (percent) plus ``loss`` (pixel-mean cross-entropy of
        the whole-scene logits), ``scenes`` (evaluated) and, for the paper protocol, ``paper_*`` /
        ``tiles``. Scenes a ``dense_data.EvalScenes`` left out (``--skip_bad_samples``) are
        counted in no metric and logged with their number.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"--eval_protocol must be one of {PROTOCOLS}, got {protocol!r}")
    net = unwrap_model(model)
    was_training = net.training
    net.eval()
    whole = protocol in ("whole", "both")
    paper = protocol in ("paper", "both")
    paper_stride = paper_stride or max(1, tile // 2 - 1)
    cm = build_confusion_matrix(num_classes).to(device)
    cm_paper = build_confusion_matrix(num_classes).to(device)
    loss_mean = MeanMetric().to(device)
    scenes = torch.zeros((), device=device)
    tiles = torch.zeros((), device=device)
    left_out = torch.zeros((), device=device)
    drawn = 0
    loader = build_eval_loader(dataset, 1, shard, num_workers=num_workers)
    bar = log.progress(loader, total=len(shard), desc="eval") if log else loader
    for index, batch in zip(shard, bar):
        if "skipped" in batch:  # a bad scene, left out (never replaced by another one)
            left_out += 1
            continue
        image = batch["image"].to(device, non_blocking=True)
        mask = batch["mask"].to(device, non_blocking=True)
        scenes += 1
        if paper:
            tiles += paper_protocol_update(
                net, image, mask, cm_paper, tile, paper_stride, batch_size, autocast
            )
        if not whole:
            continue
        logits = predict_scene(net, image, num_classes, tile, stride, batch_size, blend, autocast)
        pred = logits.argmax(1)
        cm.update(pred, mask)
        valid = (mask != DENSE_IGNORE_INDEX).sum()
        if valid > 0:
            loss = F.cross_entropy(logits, mask, ignore_index=DENSE_IGNORE_INDEX)
            loss_mean.update(loss, weight=valid)
        draw = vis_dir is not None and drawn < vis_scenes
        if draw or save_predictions:
            info = dataset.scene_info(index)
            if draw:
                drawn += 1
                save_scene_png(
                    Path(vis_dir) / f"{vis_prefix}{info['name']}.png", image[0].float().cpu(),
                    mask[0].cpu(), pred[0].cpu(), task, class_names, info["name"],
                )  # fmt: skip
            if save_predictions:
                write_prediction_tif(Path(save_predictions) / f"{info['name']}.tif", pred[0], info)
    results: dict[str, Any] = {}
    total_scenes = _sum(scenes)
    if whole:
        results.update(dense_metrics(cm.compute(), class_names, task))
        results["loss"] = float(loss_mean.compute())
    if paper:
        paper_res = dense_metrics(cm_paper.compute(), class_names, task)
        if protocol == "paper":
            results.update(paper_res)
        else:
            results.update({f"paper_{k}": v for k, v in paper_res.items()})
        results["tiles"] = int(_sum(tiles))
    results["scenes"] = int(total_scenes)
    n_left_out = int(_sum(left_out))
    if n_left_out:
        logger.warning(
            "left %d bad scene(s) out of this evaluation (--skip_bad_samples): its metrics count "
            "%d of %d scenes; the warnings above name the files", n_left_out,
            results["scenes"], results["scenes"] + n_left_out,
        )  # fmt: skip
    net.train(was_training)
    return results


@torch.no_grad()
def evaluate(model: nn.Module, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Whole-scene evaluation (arguments and result: :func:`_evaluate_scenes`).

    Scenes differ in size, so ranks run different numbers of forwards: an FSDP2-sharded model is
    held unsharded for the evaluation (``util.training.runtime.unsharded``), so its forwards are local.
    """
    with unsharded(model):
        return _evaluate_scenes(model, *args, **kwargs)


def eval_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`evaluate` that the evaluation flags set."""
    return dict(
        tile=args.input_size,
        stride=args.eval_stride,
        protocol=args.eval_protocol,
        paper_stride=args.paper_stride,
        batch_size=args.eval_batch_size,
        blend=args.blend,
        num_workers=min(args.num_workers, 2),
        vis_scenes=args.vis_scenes,
    )


def _sum(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t)
    return t


# --------------------------------------------------------------------------------------------
# outputs a user looks at
# --------------------------------------------------------------------------------------------
def write_prediction_tif(path: Path, pred: torch.Tensor, info: dict[str, Any]) -> Path:
    """Class indices ``(H, W)`` as a uint8 GeoTIFF with the input's CRS and transform (written by
    ``util.inference.scene.GeoTiffWriter``, the writer ``predict.py`` uses)."""
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    from util.inference.scene import GeoTiffWriter

    array = pred.to(torch.uint8).cpu().numpy()
    writer = GeoTiffWriter(
        path,
        crs=CRS.from_wkt(info["crs"]) if info.get("crs") else None,
        transform=Affine(*info["transform"]) if info.get("transform") else None,
        height=array.shape[0],
        width=array.shape[1],
        count=1,
        dtype="uint8",
        nodata=None,
    )
    writer.write_rows(array[None])
    return writer.close()


# --------------------------------------------------------------------------------------------
# the dense recipe: model, pretrained encoder, checkpoint metadata
# --------------------------------------------------------------------------------------------
def parse_model_kwargs(items: list[str] | dict[str, Any]) -> dict[str, Any]:
    """``["fusion=absdiff", "channels=128"]`` -> ``{"fusion": "absdiff", "channels": 128}``."""
    import ast

    if isinstance(items, dict):
        return dict(items)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--model_kwargs: expected KEY=VALUE, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value  # a bare word: a string
    return out


def model_kwargs(args: argparse.Namespace, num_classes: int) -> dict[str, Any]:
    """Factory keyword arguments recorded in the checkpoint's ``meta``."""
    return {
        **parse_model_kwargs(args.model_kwargs),
        "img_size": args.input_size,
        "num_classes": num_classes,
    }


def build_dense_model(args: argparse.Namespace, num_classes: int) -> nn.Module:
    """The dense model named by ``--model``; it must solve ``--task``'s kind of task."""
    kwargs = dict(model_kwargs(args, num_classes), drop_path_rate=args.drop_path)
    if args.freeze_encoder:
        kwargs["freeze_encoder"] = True
    source = (args.resume or args.finetune) if args.eval else None  # names/options from a file
    model = models_registry.build_model(MODEL_MODULE, args.model, kwargs, source=source)
    task = TASKS[args.task]["task"]
    if getattr(model, "task", task) != task:
        raise ValueError(
            f"--model {args.model} is a {model.task} model, --task {args.task} needs {task}"
        )
    return set_input_groups(model, model_groups(sensor_of(args)))  # --sensor / --bands


def load_pretrained(model: nn.Module, path: str) -> dict[str, list[str]]:
    """Encoder weights from a SpectralGPT(+) checkpoint (paper format) or ours.

    Raises:
        ValueError: the file lacks encoder weights of this model (wrong file or size).
    """
    state = load_weights_file(path)
    report: dict[str, list[str]] = {}
    converted = models_dense.checkpoint_filter_fn(state, model, report=report)
    missing_encoder = [k for k in report["missing"] if k.startswith("encoder.")]
    if missing_encoder:
        raise ValueError(
            f"--finetune {path} does not hold this model's encoder: missing {missing_encoder[:5]} "
            f"({len(missing_encoder)} in all; is it a SpectralGPT checkpoint of the same size?)"
        )
    model.load_state_dict(converted, strict=True)
    logger.info(
        "loaded %s: %d tensors; new (neck/head): %d; dropped: %d; resampled: %s",
        path,
        len(converted) - len(report["missing"]),
        len(report["missing"]),
        len(report["dropped"]),
        report["resampled"] or "nothing",
    )
    return report


def load_for_eval(model: nn.Module, path: str, args: argparse.Namespace) -> None:
    """Load a finetuned dense model (ours) strictly for ``--eval``."""
    try:
        model.load_state_dict(load_weights_file(path), strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"--eval needs a finetuned {args.task} checkpoint of --model {args.model}: {err}"
        ) from err


def checkpoint_extra(
    args: argparse.Namespace, model: nn.Module, dataset, normalization: str
) -> dict[str, Any]:
    """The ``data`` and ``meta`` entries (CONTRACTS §3 schema) of the checkpoints
    ``downstream_tasks/train.py`` writes."""
    meta = checkpoint_meta(
        model=args.model,
        model_module=MODEL_MODULE,
        task=getattr(model, "task", TASKS[args.task]["task"]),
        input_size=args.input_size,
        bands=list(getattr(model, "bands", ())) or None,
        normalization=normalization,
        classes=list(dataset.classes),
        dataset=dataset.name,
        model_kwargs=model_kwargs(args, dataset.num_classes),
        native_size=getattr(dataset, "native_size", None),
    )
    meta.update(sensor_meta(args))
    data = {"normalization": normalization, "bands": meta["bands"], "input_size": args.input_size,
            "dataset": dataset.name, "classes": list(dataset.classes)}  # fmt: skip
    return {"data": data, "meta": meta}
