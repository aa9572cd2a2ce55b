"""Train and evaluate loops for scene classification (EuroSAT single-label, BigEarthNet multi-label).

The engine takes everything explicitly (model, loader, the shared ``OptimStep``, criterion, metric
collection); ``main_finetune.py`` does the wiring. One engine serves both task types: the paper
needed a hand edit to switch to its BigEarthNet engine (spec §6.3).

Hot-loop hygiene: no ``.item()`` or host synchronisation except on log steps (every
``print_freq`` micro-steps) and at epoch end; the running loss is summed on the device.

References:
    He et al., MAE (facebookresearch/mae, engine_finetune.py) for the overall loop.
    Hong et al., SpectralGPT (IEEE TPAMI 2024).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, MetricCollection

from util.training.logger import TrainLogger
from evaluation.metrics import to_python
from util.training.runtime import all_reduce_mean, unsharded, unwrap_model
from util.training.optim import OptimStep

logger = logging.getLogger(__name__)


def _batch_to(
    batch: dict[str, Any], device: torch.device, target_key: str = "label"
) -> tuple[torch.Tensor, torch.Tensor]:
    images = batch["image"].to(device, non_blocking=True)
    target = batch[target_key].to(device, non_blocking=True)
    return images, target


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[dict[str, Any]],
    step: OptimStep,
    criterion: nn.Module,
    device: torch.device,
    epoch: int,
    mixup_fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    | None = None,
    print_freq: int = 20,
    max_steps: int | None = None,
    log: TrainLogger | None = None,
    target_key: str = "label",
) -> dict[str, float]:
    """Train for one epoch (scene classification, and dense tasks with ``target_key="mask"``).

    Args:
        model: the (possibly DDP-wrapped, compiled) classifier.
        loader: yields dicts with ``image`` ``(N, 12, H, W)`` and ``label`` (int64 class ids, or
            float multi-hot for multi-label data).
        step: the shared optimisation step (autocast, accumulation, clipping, scheduler).
        criterion: loss on ``(logits, target)``; soft targets when ``mixup_fn`` is given.
        device: device of the model.
        epoch: epoch index (for messages).
        mixup_fn: timm ``Mixup`` (single-label only) or None.
        print_freq: log (and check the loss for NaN/inf) every this many micro-steps.
        max_steps: stop after this many micro-steps (smoke tests); None for the whole loader.
        log: rank-0 progress bar and step logging (TensorBoard / jsonl / wandb), or None.
        target_key: the batch entry holding the target (``"mask"`` for OSCD / SegMunich, whose
            criterion is a pixel-wise cross-entropy).

    Returns:
        ``{"loss": mean training loss, "lr": last lr, "images_per_s": throughput}``.
    """
    model.train()
    loss_sum = torch.zeros((), device=device)
    seen = 0
    start = time.perf_counter()
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    if max_steps is not None and total is not None:
        total = min(total, max_steps)
    bar = log.progress(loader, total=total, desc=f"train {epoch}") if log else loader
    it = -1
    for it, batch in enumerate(bar):
        if max_steps is not None and it >= max_steps:
            break
        images, target = _batch_to(batch, device, target_key)
        if mixup_fn is not None:
            images, target = mixup_fn(images, target)

        def closure(images=images, target=target):
            return criterion(model(images), target)

        out = step(it, closure)
        loss_sum += out.loss.float()
        seen += 1
        if (it + 1) % print_freq == 0:
            step.check_finite(f"epoch {epoch}, step {it}")
            loss = float(loss_sum) / seen
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{step.lr:.2e}")
            if log is not None:
                rate = seen * images.shape[0] / max(time.perf_counter() - start, 1e-9)
                log.log_step(
                    epoch,
                    step.num_updates,
                    {"loss": loss, "lr": step.lr, "images_per_s": rate},
                    it=it,
                    total=total,
                )
    if seen == 0:
        raise RuntimeError(
            "the training loader yielded no batch: the (sub)set is smaller than --batch_size "
            "times the number of processes (the train loader drops the last partial batch)"
        )
    step.check_finite(f"epoch {epoch}, end")
    elapsed = time.perf_counter() - start
    batch_size = images.shape[0]
    loss = all_reduce_mean(loss_sum / seen)
    return {
        "loss": float(loss),
        "lr": step.lr,
        "images_per_s": seen * batch_size / max(elapsed, 1e-9),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[dict[str, Any]],
    metrics: MetricCollection,
    device: torch.device,
    multilabel: bool,
    autocast: Callable[[], Any] | None = None,
    max_steps: int | None = None,
    log: TrainLogger | None = None,
) -> dict[str, float | list[float]]:
    """Evaluate on a whole (sharded) set; metrics are synced across processes.

    Each process must get a disjoint shard (``evaluation.metrics.eval_shard``) so every sample is
    counted once; shards may differ in length, so the unwrapped model is called (a DDP forward
    could issue collectives, which would hang on uneven shards), and an FSDP-sharded model is held
    unsharded for the evaluation (``util.training.runtime.unsharded``) so that its forwards are local.

    Args:
        model: the classifier (DDP/compiled wrappers are removed for evaluation).
        loader: yields ``image`` / ``label`` dicts as in training.
        metrics: from ``evaluation.metrics.build_metrics``; reset before and after.
        device: model device.
        multilabel: BigEarthNet-style multi-hot targets (BCE loss) vs class ids (CE loss).
        autocast: zero-argument context-manager factory (``OptimStep.autocast``), or None.
        max_steps: evaluate only this many batches per process (smoke tests).
        log: supplies the rank-0 progress bar, or None.

    Returns:
        Metric values (percent; see ``evaluation.metrics``) plus ``loss`` (un-smoothed CE or BCE).
    """
    net = unwrap_model(model)
    was_training = net.training
    net.eval()
    metrics = metrics.to(device)
    metrics.reset()
    loss_mean = MeanMetric().to(device)
    bar = log.progress(loader, desc="eval") if log else loader
    with unsharded(net):
        for i, batch in enumerate(bar):
            if max_steps is not None and i >= max_steps:
                break
            images, target = _batch_to(batch, device)
            with autocast() if autocast is not None else contextlib.nullcontext():
                logits = net(images)
            logits = logits.float()
            if multilabel:
                loss = F.binary_cross_entropy_with_logits(logits, target.float())
                metrics.update(logits, target.long())
            else:
                loss = F.cross_entropy(logits, target)
                metrics.update(logits, target)
            loss_mean.update(loss, weight=images.shape[0])
    results = dict(metrics.compute())
    results["loss"] = loss_mean.compute()
    metrics.reset()
    net.train(was_training)
    return to_python(results)
