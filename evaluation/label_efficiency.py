"""Label efficiency: what pretraining buys over random initialisation when labels are scarce.

Three protocols, each at label fractions (stratified, seeded subsets of the training split, drawn
by :func:`util.data.subset.stratified_subset`, the same subset for every initialisation and protocol
of a seed):

* ``knn`` - k-nearest neighbours on frozen features: cosine similarity, ``k = 20``, votes weighted
  by ``exp(similarity / T)`` with ``T = 0.07`` (Wu et al. 2018, as in DINO's evaluation).
* ``linear`` - a linear classifier on frozen features. Features are computed once per image
  (:func:`extract_features`) and cached; the probe is a full-batch L-BFGS fit on standardised
  features (standardising = MAE's BatchNorm-without-affine head at inference), L2 penalty as
  scikit-learn's ``LogisticRegression(C=1)``: seconds on a CPU.
* ``finetune`` - the whole network trained with ``main_finetune``'s recipe (layer-wise lr decay,
  AdamW, warm-up + cosine, label smoothing) and ``engine_finetune``'s loops, short schedule.

Features are the classifier's pooled representation (mean over all tokens, then the encoder's
final norm: ``VisionTransformer.forward_head(..., pre_logits=True)``), i.e. what the finetuning
head sees. Accuracy (single-label: top-1; multi-label: micro mAP) comes from
:func:`evaluation.metrics.build_metrics`, in percent. The two frozen-feature classifiers are in
:mod:`evaluation.probes`, tables and plots of the results in :mod:`evaluation.label_efficiency_report`.

References:
    Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance Discrimination", 2018.
    Caron et al., DINO (facebookresearch/dino, eval_knn.py) - the weighted kNN protocol.
    He et al., MAE - linear probing with a BatchNorm (no affine) + linear head.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from evaluation.probes import fit_linear_probe, knn_scores, linear_probe_scores

logger = logging.getLogger(__name__)

__all__ = [
    "PROTOCOLS",
    "FinetuneConfig",
    "checkpoint_info",
    "build_classifier",
    "extract_features",
    "finetune_scores",
    "label_subsets",
    "resolve_setup",
    "run",
    "score",
    "summarise",
    "format_fraction",
]

PROTOCOLS = ("knn", "linear", "finetune")


# --------------------------------------------------------------------------------------------
# checkpoints and models
# --------------------------------------------------------------------------------------------
def checkpoint_info(path: str | Path) -> dict[str, Any]:
    """Model name, input size and normalisation a checkpoint was trained with.

    From :func:`util.training.checkpoint_meta.read_metadata` (``meta`` of format v2, derived for v1 and the
    paper's files); values the file does not record are None (e.g. the paper's checkpoints,
    which used per-image min-max for pretraining: pass ``--normalization minmax``).
    """
    from util.training.checkpoint_meta import read_metadata

    meta = read_metadata(path)
    return {k: meta.get(k) for k in ("model", "input_size", "normalization")}


def build_classifier(
    model: str,
    input_size: int,
    num_classes: int,
    checkpoint: str | Path | None = None,
    seed: int = 0,
    drop_path: float = 0.0,
    groups: Sequence[int] | None = None,
) -> nn.Module:
    """The classifier of ``model``'s geometry, from ``checkpoint`` or random init (seeded).

    Pretrained weights go through ``engine_finetune.load_pretrained`` (any of this project's or the
    paper's checkpoints; position tables resampled to ``input_size``; head re-initialised).
    ``groups``: the spectral groups its input fills (another sensor's bands; None: all).
    """
    import models_registry
    from engine_finetune import load_pretrained
    from util.training.sensor_input import set_input_groups

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kwargs = dict(img_size=input_size, num_classes=num_classes, drop_path_rate=drop_path)
        net = models_registry.build_model("models_vit_tensor", model, kwargs, source=checkpoint)
        if checkpoint is not None:
            load_pretrained(net, str(checkpoint))
    return set_input_groups(net, groups)


# --------------------------------------------------------------------------------------------
# frozen features
# --------------------------------------------------------------------------------------------
def _loader(dataset, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last=False):
    """Training (``shuffle``: seeded order and augmentation, whole batches) or evaluation loader
    (dataset order, every sample), from :mod:`util.training.loader`."""
    from util.data import collate
    from util.training.loader import build_eval_loader, build_train_loader

    if shuffle:
        return build_train_loader(dataset, batch_size, seed=seed, collate_fn=collate)
    return build_eval_loader(dataset, batch_size, collate_fn=collate)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataset,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled, normed features ``(N, D)`` float32 and labels of every sample, in dataset order."""
    from util.training.optim import autocast
    from util.training.sensor_input import input_groups

    device = torch.device(device)
    model = model.to(device).eval()
    groups = input_groups(model)
    feats, labels = [], []
    batches = _loader(dataset, batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="features", leave=False)
    for batch in batches:
        with autocast(device.type, dtype):
            tokens = model.forward_features(batch["image"].to(device, non_blocking=True), groups)
            feats.append(model.forward_head(tokens, pre_logits=True).float().cpu())
        labels.append(batch["label"])
    return torch.cat(feats), torch.cat(labels)


# --------------------------------------------------------------------------------------------
# full finetuning (main_finetune's recipe, engine_finetune's loops)
# --------------------------------------------------------------------------------------------
@dataclass
class FinetuneConfig:
    """Short finetuning schedule: ``epochs`` over the subset, at least ``min_updates`` updates.

    Small subsets get more epochs (so 1 % of the labels still sees ``min_updates`` optimiser
    steps); ``max_updates`` caps large ones. ``head_init="probe"`` starts the head from the linear
    probe fitted on the same subset's frozen features (LP-FT, Kumar et al. 2022), so a short
    schedule adapts the encoder instead of spending its updates on a head that starts at zero;
    ``"fresh"`` is ``main_finetune``'s head (std 2e-5). The rest follows ``main_finetune``.
    """

    epochs: int = 10
    min_updates: int = 40
    max_updates: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    warmup_fraction: float = 0.1
    weight_decay: float = 0.05
    layer_decay: float = 0.75
    drop_path: float = 0.1
    smoothing: float = 0.1
    min_lr: float = 1e-6
    head_init: str = "probe"

    def schedule(self, n: int) -> tuple[int, int, int]:
        """``(batch_size, steps_per_epoch, epochs)`` for a training subset of ``n`` samples.

        ``epochs`` passes over the subset, clamped to ``[min_updates, max_updates]`` updates in all.
        """
        batch = max(1, min(self.batch_size, n))
        steps = n // batch
        total = max(self.epochs * steps, self.min_updates)
        if self.max_updates is not None:
            total = min(total, self.max_updates)
        epochs = max(1, math.ceil(total / steps))
        return batch, math.ceil(total / epochs), epochs


def finetune_scores(
    model: nn.Module,
    train_set,
    eval_set,
    metrics,
    multilabel: bool,
    config: FinetuneConfig,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Finetune ``model`` (all weights) on ``train_set`` and evaluate it on ``eval_set``.

    Uses ``util.training.optim``'s layer-decay groups, ``engine_finetune.build_criterion``, AdamW,
    schedule and ``OptimStep``, and ``engine_finetune.train_one_epoch`` / ``evaluate``; no model
    selection on the evaluation set (the last epoch is reported).

    Returns:
        The metrics of ``engine_finetune.evaluate`` (percent) plus ``updates``.
    """
    from engine_finetune import build_criterion, evaluate, train_one_epoch
    from util.training.optim import OptimStep, build_scheduler, create_adamw
    from util.training.optim import layer_decay_param_groups as build_param_groups

    device = torch.device(device)
    batch, steps, epochs = config.schedule(len(train_set))
    model = model.to(device)
    groups = build_param_groups(model, config.weight_decay, config.layer_decay)
    optimizer = create_adamw(groups, lr=config.lr, betas=(0.9, 0.999))
    sched_args = argparse.Namespace(
        epochs=epochs, warmup_epochs=config.warmup_fraction * epochs, min_lr=config.min_lr
    )
    step = OptimStep(
        model, optimizer, build_scheduler(optimizer, sched_args, steps), device.type, dtype
    )
    criterion = build_criterion(argparse.Namespace(smoothing=config.smoothing), multilabel, False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # drop path draws
        for epoch in range(epochs):
            loader = _loader(
                train_set, batch, shuffle=True, seed=seed * 1000 + epoch, drop_last=True
            )
            train_one_epoch(
                model, loader, step, criterion, device, epoch, print_freq=10**9, max_steps=steps
            )
    results = evaluate(model, _loader(eval_set, 64), metrics, device, multilabel, step.autocast)
    return {**results, "updates": step.num_updates}


# --------------------------------------------------------------------------------------------
# subsets, scoring, summary
# --------------------------------------------------------------------------------------------
def label_subsets(
    labels: np.ndarray, fractions: Sequence[float], seeds: Sequence[int]
) -> dict[tuple[float, int], np.ndarray]:
    """One stratified subset per ``(fraction, seed)`` (:func:`util.data.subset.stratified_subset`).

    The same subsets serve every initialisation and protocol, so their differences are paired.
    """
    from util.data.subset import stratified_subset

    return {(f, s): stratified_subset(labels, f, s) for f in fractions for s in seeds}


def score(scores: torch.Tensor, labels: torch.Tensor, num_classes: int, multilabel: bool) -> float:
    """Main metric in percent: top-1 accuracy, or micro mAP for multi-label targets."""
    from evaluation.metrics import build_metrics, main_metric_name, to_python

    metrics = build_metrics(num_classes, multilabel)
    metrics.update(scores.float(), labels.long())
    return float(to_python(dict(metrics.compute()))[main_metric_name(multilabel, None)])


def summarise(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-seed results ``{init, protocol, fraction, seed, value}`` -> mean / std rows.

    ``std`` is the sample standard deviation over seeds (0 for a single seed); ``n`` the seeds.
    """
    cells: dict[tuple[str, str, float], list[float]] = {}
    for r in results:
        cells.setdefault((r["init"], r["protocol"], r["fraction"]), []).append(r["value"])
    rows = []
    for (init, protocol, fraction), values in cells.items():
        v = np.asarray(values, dtype=np.float64)
        rows.append(
            {
                "init": init,
                "protocol": protocol,
                "fraction": fraction,
                "mean": round(float(v.mean()), 3),
                "std": round(float(v.std(ddof=1)) if v.size > 1 else 0.0, 3),
                "n": int(v.size),
            }
        )
    return rows


def format_fraction(fraction: float) -> str:
    """A label fraction as a percentage, e.g. ``0.01`` -> ``"1 %"``."""
    return f"{100 * fraction:g} %"


# --------------------------------------------------------------------------------------------
# the whole evaluation
# --------------------------------------------------------------------------------------------
def resolve_setup(
    inits: dict[str, str | Path | None],
    model: str | None = None,
    input_size: int | None = None,
    normalization: str | None = None,
) -> dict[str, Any]:
    """Model, input size and normalisation: explicit values, else the first checkpoint's record.

    Raises:
        ValueError: naming the flag when neither gives a value.
    """
    recorded: dict[str, Any] = {}
    for path in inits.values():
        if path is not None:
            recorded = checkpoint_info(path)
            recorded["from"] = str(path)
            break
    setup = {
        "model": model or recorded.get("model"),
        "input_size": input_size or recorded.get("input_size"),
        "normalization": normalization or recorded.get("normalization"),
        "normalization_source": "--normalization" if normalization else recorded.get("from"),
    }
    for key, flag in (("model", "--model"), ("input_size", "--input_size")):
        if setup[key] is None:
            raise ValueError(
                f"{flag} is needed: "
                + (
                    "no checkpoint was given"
                    if not recorded
                    else f"{recorded['from']} does not record it"
                )
            )
    return setup


def dataset_options(name: str, native_size: int | None = None) -> dict[str, Any]:
    """Options for ``build_dataset``: ``native_size`` (a copy whose images are not the published
    size, e.g. 32 px synthetic EuroSAT) where the dataset class checks sizes, else nothing."""
    import inspect

    from util.data import DATASETS, resolve_name

    if native_size is None:
        return {}
    cls = DATASETS[resolve_name(name)]
    return (
        {"native_size": native_size} if "native_size" in inspect.signature(cls).parameters else {}
    )


def run(
    inits: dict[str, str | Path | None],
    dataset: str,
    root: str | Path,
    train_split: str = "train",
    eval_split: str = "val",
    model: str | None = None,
    input_size: int | None = None,
    normalization: str | None = None,
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    seeds: Sequence[int] = (0, 1, 2),
    protocols: Sequence[str] = PROTOCOLS,
    k: int = 20,
    temperature: float = 0.07,
    finetune: FinetuneConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int = 64,
    native_size: int | None = None,
    sensor: Any = None,
    log: Callable[[str], None] = logger.info,
) -> dict[str, Any]:
    """Evaluate every initialisation with every protocol at every label fraction and seed.

    Args:
        inits: display name -> checkpoint path, or None for random initialisation (seeded by the
            seed, so its spread includes the draw of the random weights).
        dataset, root: a classification dataset of the registry and its folder.
        train_split, eval_split: subsets are drawn from the first, accuracy measured on the second.
        model, input_size, normalization: default to the first checkpoint's record
            (:func:`resolve_setup`); the same values are used for every initialisation.
        fractions: label fractions in (0, 1].
        seeds: one stratified subset (and one random init) per seed.
        protocols: any of :data:`PROTOCOLS`.
        k, temperature: kNN parameters.
        finetune: schedule of the ``finetune`` protocol.
        device, dtype: where and in which autocast dtype the networks run.
        batch_size: feature extraction batch.
        native_size: image side of this copy of the dataset when it is not the published one.
        sensor: evaluate on the dataset rendered in this band set (a sensor id, custom
            ``name:nm,...`` bands or a ``util.data.sensors.Sensor``; ``util.data.sensor_view``):
            wavelength adapter, absent spectral groups left out of the token sequence.
        log: receives one line per finished cell and the notes.

    Returns:
        ``{"results": per-seed values, "rows": mean/std rows, "setup": ..., "notes": [...],
        "metric": name}``.
    """
    from util.data import build_dataset
    from util.data.sensors import get_sensor
    from util.data.subset import dataset_labels
    from util.data.transforms import build_transforms, default_normalization
    from util.training.sensor_input import model_groups, sensor_transforms

    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
        raise ValueError(f"unknown protocol(s) {sorted(unknown)}; choose from {PROTOCOLS}")
    if not all(0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"label fractions must be in (0, 1], got {list(fractions)}")
    finetune = finetune or FinetuneConfig()
    setup = resolve_setup(inits, model, input_size, normalization)
    notes = []
    own = default_normalization(dataset, "finetune")
    if setup["normalization"] is None:
        setup["normalization"] = own
        notes.append(f"no normalisation recorded or given: using {dataset}'s own ({own})")
    elif setup["normalization"] != own:
        notes.append(
            f"features use {setup['normalization']} (from {setup['normalization_source']}); "
            f"{dataset}'s own finetuning normalisation is {own} (--normalization {own} to use it)"
        )
    for note in notes:
        log(f"note: {note}")
    size, norm = setup["input_size"], setup["normalization"]
    sensor = None if sensor is None else get_sensor(sensor)
    groups = model_groups(sensor)
    setup["sensor"] = None if sensor is None else sensor.id
    eval_tf = sensor_transforms(build_transforms(dataset, False, size, norm), sensor)
    opts = dataset_options(dataset, native_size)
    train_feat_ds = build_dataset(dataset, root, split=train_split, transforms=eval_tf, **opts)
    eval_ds = build_dataset(dataset, root, split=eval_split, transforms=eval_tf, **opts)
    num_classes, multilabel = train_feat_ds.num_classes, bool(train_feat_ds.multilabel)
    labels = dataset_labels(train_feat_ds)
    subsets = label_subsets(labels, fractions, seeds)
    frozen = [p for p in protocols if p in ("knn", "linear")]
    if finetune.head_init not in ("probe", "fresh"):
        raise ValueError(
            f"finetune head_init must be 'probe' or 'fresh', got {finetune.head_init!r}"
        )
    lp_ft = "finetune" in protocols and finetune.head_init == "probe"
    train_aug_ds = None
    if "finetune" in protocols:
        train_aug_ds = build_dataset(
            dataset, root, split=train_split,
            transforms=sensor_transforms(build_transforms(dataset, True, size, norm), sensor), **opts,
        )  # fmt: skip
    from evaluation.metrics import build_metrics, main_metric_name

    results: list[dict[str, Any]] = []

    def record(init: str, protocol: str, fraction: float, seed: int, value: float, **extra):
        results.append(
            dict(init=init, protocol=protocol, fraction=fraction, seed=seed, value=value, **extra)
        )
        log(f"{init:>12s} {protocol:8s} {format_fraction(fraction):>7s} seed {seed}: {value:.2f}")

    for init, ckpt in inits.items():
        cached: tuple[torch.Tensor, ...] | None = None
        for seed in seeds:
            if (frozen or lp_ft) and (cached is None or ckpt is None):
                net = build_classifier(
                    setup["model"], size, num_classes, ckpt, seed=seed, groups=groups
                )
                cached = (
                    *extract_features(net, train_feat_ds, batch_size, device, dtype),
                    *extract_features(net, eval_ds, batch_size, device, dtype),
                )
            for fraction in fractions:
                idx = torch.from_numpy(subsets[(fraction, seed)])
                if frozen or lp_ft:
                    xtr, ytr, xte, yte = cached
                    if "knn" in protocols:
                        s = knn_scores(xtr[idx], ytr[idx], xte, num_classes, k, temperature)
                        record(init, "knn", fraction, seed, score(s, yte, num_classes, multilabel))
                    if "linear" in protocols:
                        s = linear_probe_scores(xtr[idx], ytr[idx], xte, num_classes)
                        record(
                            init, "linear", fraction, seed, score(s, yte, num_classes, multilabel)
                        )
                if "finetune" in protocols:
                    net = build_classifier(
                        setup["model"], size, num_classes, ckpt, seed=seed,
                        drop_path=finetune.drop_path, groups=groups,
                    )  # fmt: skip
                    if lp_ft:
                        w, b = fit_linear_probe(xtr[idx], ytr[idx], num_classes)
                        with torch.no_grad():
                            net.head.weight.copy_(w)
                            net.head.bias.copy_(b)
                    res = finetune_scores(
                        net,
                        torch.utils.data.Subset(train_aug_ds, idx.tolist()),
                        eval_ds,
                        build_metrics(num_classes, multilabel),
                        multilabel,
                        finetune,
                        seed=seed,
                        device=device,
                        dtype=dtype,
                    )
                    main = main_metric_name(multilabel, None)
                    record(init, "finetune", fraction, seed, res[main], updates=res["updates"])
    return {
        "results": results,
        "rows": summarise(results),
        "setup": setup,
        "notes": notes,
        "metric": "micro mAP %" if multilabel else "top-1 %",
        "subset_sizes": {str(f): int(len(subsets[(f, seeds[0])])) for f in fractions},
    }
