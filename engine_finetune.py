"""Train and evaluate loops for scene classification (EuroSAT single-label, BigEarthNet multi-label).

The loops take everything explicitly (model, loader, the shared ``OptimStep``, criterion, metric
collection); ``main_finetune.py`` does the wiring. One engine serves both task types: the paper
needed a hand edit to switch to its BigEarthNet engine (spec §6.3). The finetuning recipe's parts
live here too, for every user (``main_finetune``, ``downstream_tasks``, label efficiency,
benchmarks): pretrained-encoder loading, linear-probe head, criterion, mixup, parameter groups and
the classification datasets of the command line.

Hot-loop hygiene: no ``.item()`` or host synchronisation except on log steps (every
``print_freq`` micro-steps) and at epoch end; the running loss is summed on the device.

References:
    He et al., MAE (facebookresearch/mae, engine_finetune.py) for the overall loop.
    Hong et al., SpectralGPT (IEEE TPAMI 2024).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.layers import trunc_normal_
from timm.loss import SoftTargetCrossEntropy
from timm.optim import Lars
from torch import nn
from torchmetrics import MeanMetric, MetricCollection

import models_registry
import models_vit_tensor
from evaluation.metrics import to_python
from util.training.checkpoint import (
    CheckpointError,
    load_weights_file,
)
from util.training.checkpoint_meta import checkpoint_meta
from util.training.loader import data_source
from util.training.logger import THROUGHPUT, TrainLogger
from util.training.optim import OptimStep, layer_decay_param_groups
from util.training.runtime import all_reduce_mean, unsharded, unwrap_model
from util.training.sensor_input import (
    model_groups,
    sensor_meta,
    sensor_of,
    sensor_transforms,
    set_input_groups,
)

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
    start: int = 0,
    on_update: Callable[[int], bool] | None = None,
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
        start: micro-steps of this epoch already done (a resumed run); ``loader`` yields the rest.
        on_update: called with the micro-steps done after each optimiser update; True stops the
            epoch (``util.training.loop``: mid-epoch checkpoints, ``--stop_after_steps``).

    Returns:
        ``{"loss": mean training loss, "lr": last lr, "img_per_s": throughput}`` (the key of
        every trainer: ``util.training.logger.THROUGHPUT``).
    """
    model.train()
    loss_sum = torch.zeros((), device=device)
    seen = 0
    t0 = time.perf_counter()
    total = start + len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    if max_steps is not None and total is not None:
        total = min(total, max_steps)
    bar = log.progress(loader, total=total, desc=f"train {epoch}") if log else loader
    it = -1
    for it, batch in enumerate(bar, start):
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
                rate = seen * images.shape[0] / max(time.perf_counter() - t0, 1e-9)
                log.log_step(
                    epoch,
                    step.num_updates,
                    {"loss": loss, "lr": step.lr, THROUGHPUT: rate},
                    it=it,
                    total=total,
                )
        if out.stepped and on_update is not None and on_update(it + 1):
            break
    if seen == 0:
        raise RuntimeError(
            "the training loader yielded no batch: the (sub)set is smaller than --batch_size "
            "times the number of processes (the train loader drops the last partial batch)"
        )
    step.check_finite(f"epoch {epoch}, end")
    elapsed = time.perf_counter() - t0
    batch_size = images.shape[0]
    loss = all_reduce_mean(loss_sum / seen)
    return {
        "loss": float(loss),
        "lr": step.lr,
        THROUGHPUT: seen * batch_size / max(elapsed, 1e-9),
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


# --------------------------------------------------------------------------------------------
# the finetuning recipe
# --------------------------------------------------------------------------------------------
HEAD_KEYS = frozenset({"head.weight", "head.bias"})


def build_classifier(args: argparse.Namespace, num_classes: int) -> nn.Module:
    """Classifier named by ``--model`` (or the ``--eval`` checkpoint's metadata), built through
    ``models_registry`` (names and options checked); ``--input_size`` defaults to the factory's
    own size."""
    kwargs: dict[str, Any] = dict(
        num_classes=num_classes, drop_path_rate=0.0 if args.linear_probe else args.drop_path
    )
    if args.input_size is not None:
        kwargs["img_size"] = args.input_size
    source = (args.resume or args.finetune) if args.eval else None
    model = models_registry.build_model("models_vit_tensor", args.model, kwargs, source=source)
    args.input_size = model.patch_embed.img_size[0]
    return set_input_groups(model, model_groups(sensor_of(args)))  # --sensor / --bands


def load_pretrained(model: nn.Module, path: str) -> dict[str, list[str]]:
    """Load encoder weights for finetuning through ``checkpoint_filter_fn``, then reset the head.

    Paper checkpoints (``model`` key, separate q/k/v, with or without the decoder) and ours are
    accepted; position tables are carried over and resampled to the model's input size, decoder
    and mask token are dropped. The only keys the checkpoint may lack are the head's.

    Returns:
        The conversion report: ``missing``, ``dropped`` and ``resampled`` key lists.

    Raises:
        ValueError: if the checkpoint lacks any encoder weight (wrong file or model size).
    """
    state = load_weights_file(path)
    report: dict[str, list[str]] = {}
    converted = models_vit_tensor.checkpoint_filter_fn(state, model, report=report)
    missing = set(report["missing"])
    if not missing <= HEAD_KEYS:
        raise ValueError(
            f"{path} does not hold a full encoder for this model: missing {sorted(missing - HEAD_KEYS)}"
            " (is it a SpectralGPT checkpoint of the same size as the chosen --model?)"
        )
    model.load_state_dict(converted, strict=True)
    model.reset_classifier(model.num_classes)  # fresh head: trunc-normal std 2e-5, zero bias
    logger.info(
        "loaded %s: %d tensors used, %d dropped (decoder etc.), resampled %s, head re-initialised",
        path,
        len(converted) - len(missing),
        len(report["dropped"]),
        report["resampled"] or "nothing",
    )
    return report


def make_linear_probe(model: nn.Module) -> nn.Module:
    """MAE linear probing: frozen encoder, head = BatchNorm1d(affine=False) + Linear (std 0.01)."""
    head = model.head
    trunc_normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    model.head = nn.Sequential(nn.BatchNorm1d(head.in_features, affine=False, eps=1e-6), head).to(
        head.weight.device
    )
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("head.")
    return model


def load_for_eval(model: nn.Module, path: str) -> None:
    """Load a finetuned classifier (ours) strictly; a BatchNorm head means a linear probe."""
    state = load_weights_file(path)
    if "head.1.weight" in state and not isinstance(model.head, nn.Sequential):
        make_linear_probe(model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"--eval needs a finetuned classifier checkpoint of the chosen --model with "
            f"{model.num_classes} classes (e.g. OUTPUT_DIR/checkpoint-best.pth); {path} does not "
            f"fit: {err}"
        ) from err
    logger.info("evaluating weights from %s", path)


def build_param_groups(
    model: nn.Module, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], torch.optim.Optimizer | None]:
    """Parameter groups of finetuning (layer-wise lr decay) or of a linear probe (``--linear_probe``:
    the head's trainable parameters, no decay on 1-d ones), and the optimiser when it is not
    ``build_optimisation``'s AdamW (``--probe_optimizer lars``)."""
    if not args.linear_probe:
        return layer_decay_param_groups(model, args.weight_decay, args.layer_decay), None
    head = [p for p in model.head.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in head if p.ndim > 1], "always_adapt": True},
        {"params": [p for p in head if p.ndim <= 1], "weight_decay": 0.0},
    ]
    if args.probe_optimizer == "lars":
        return groups, Lars(groups, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    return groups, None


def build_criterion(args: argparse.Namespace, multilabel: bool, mixup_active: bool) -> nn.Module:
    """BCE-with-logits (multi-label); SoftTargetCE with mixup; label-smoothing CE otherwise."""
    if multilabel:
        return nn.BCEWithLogitsLoss()
    if mixup_active:
        return SoftTargetCrossEntropy()  # mixup already smooths the targets
    return nn.CrossEntropyLoss(label_smoothing=args.smoothing)


def build_mixup(args: argparse.Namespace, multilabel: bool, num_classes: int) -> Mixup | None:
    """timm Mixup/CutMix for single-label finetuning when ``--mixup``/``--cutmix`` ask for it."""
    wanted = args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
    if not wanted:
        return None
    if multilabel or args.linear_probe:
        logger.warning(
            "--mixup/--cutmix ignored for %s (as in the paper's BigEarthNet engine / MAE linprobe)",
            "multi-label data" if multilabel else "linear probing",
        )
        return None
    if args.batch_size % 2:
        raise ValueError(f"--mixup/--cutmix need an even --batch_size, got {args.batch_size}")
    return Mixup(
        mixup_alpha=args.mixup,
        cutmix_alpha=args.cutmix,
        cutmix_minmax=args.cutmix_minmax,
        prob=args.mixup_prob,
        switch_prob=args.mixup_switch_prob,
        mode=args.mixup_mode,
        label_smoothing=args.smoothing,
        num_classes=num_classes,
    )


def checkpoint_extra(
    args: argparse.Namespace, dataset, model: nn.Module, num_classes: int
) -> dict[str, Any]:
    """The ``data`` and ``meta`` entries of a classifier's checkpoints (``meta`` also records
    ``linear_probe``: the head is then BatchNorm1d + Linear)."""
    normalization = getattr(dataset.transforms, "normalization", args.normalization)
    classes, bands = list(getattr(dataset, "classes", ())), list(getattr(model, "bands", ()))
    meta = checkpoint_meta(
        model=args.model,
        model_module="models_vit_tensor",
        task="multilabel" if dataset.multilabel else "classify",
        input_size=args.input_size,
        bands=bands or None,
        normalization=normalization,
        classes=classes,
        dataset=dataset.name,
        model_kwargs={"img_size": args.input_size, "num_classes": num_classes},
        native_size=getattr(dataset, "native_size", None),
    )
    meta["linear_probe"] = bool(args.linear_probe)
    meta.update(sensor_meta(args))
    data = {"normalization": normalization, "bands": bands, "input_size": args.input_size,
            "dataset": dataset.name, "classes": classes}  # fmt: skip
    return {"data": data, "meta": meta}


def build_split(args: argparse.Namespace, split: str, is_train: bool):
    """Classification dataset of ``--dataset_type`` for one split, with the finetuning transforms
    (``--train_path`` / ``--test_path``: :func:`util.training.loader.data_source`)."""
    from util.data import IndexFileError, build_dataset, options_from_args, resolve_name
    from util.data.transforms import build_transforms

    name = resolve_name(args.dataset_type)
    flag = "--train_path" if is_train else "--test_path"
    source = data_source(
        args.train_path if is_train else args.test_path, args.data_root, split, flag
    )
    options = options_from_args(name, args)
    if name == "bigearthnet" and args.nb_classes is not None:
        options["num_classes"] = args.nb_classes
    transforms = build_transforms(name, is_train, args.input_size, args.normalization)
    transforms = sensor_transforms(transforms, sensor_of(args))  # --sensor / --bands
    try:
        return build_dataset(name, transforms=transforms, **source, **options)
    except IndexFileError as err:
        hint = ""
        if name == "eurosat":
            hint = (
                " -- if this is a BigEarthNet id list (the paper's README passes "
                "'--dataset_type euro_sat' with one), use --dataset_type bigearthnet_finetune"
            )
        elif name == "bigearthnet":
            hint = " -- if this is a EuroSAT '<path> <label>' list, use --dataset_type euro_sat"
        raise IndexFileError(source["index"] or source["root"], f"{err}{hint}") from err
