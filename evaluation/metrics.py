"""Evaluation metrics for scene classification (EuroSAT single-label, BigEarthNet multi-label).

Every metric is a torchmetrics object: ``update`` once per batch, ``compute`` once per evaluation
(synchronised across DDP ranks by torchmetrics), then ``reset``. Nothing is averaged per batch:
the paper's BigEarthNet "mAP" was a batch-size-weighted mean of per-batch micro AP (spec §6.3,
bug 24); here average precision is computed over the whole evaluation set, micro and macro.

Values are reported in percent, as in the paper's tables.

References:
    torchmetrics (Lightning-AI), classification metrics.
    Sechidis et al., "On the Stratification of Multi-Label Data", ECML PKDD 2011 (see util.data.subset).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassStatScores,
    MultilabelAveragePrecision,
    MultilabelF1Score,
    MultilabelStatScores,
)

from util.data import IGNORE_INDEX

logger = logging.getLogger(__name__)

# The metric that selects ``checkpoint-best.pth`` unless ``--best_metric`` says otherwise.
# Single-label: top-1 accuracy (the paper's EuroSAT number). Multi-label: dataset-level micro mAP
# (the averaging the paper's BigEarthNet code intended, computed over the whole set).
DEFAULT_MAIN_METRIC = {False: "acc1", True: "mAP_micro"}


def build_metrics(num_classes: int, multilabel: bool) -> MetricCollection:
    """Build the metric collection for a classification task.

    Args:
        num_classes: Number of classes (EuroSAT 10; BigEarthNet 19 or 43).
        multilabel: True for multi-hot targets (BigEarthNet), False for integer labels (EuroSAT).

    Returns:
        A ``MetricCollection``. Single-label keys: ``acc1``, ``acc5`` (top-k with
        k = min(5, num_classes)), ``acc_macro`` (mean per-class accuracy) and ``acc_per_class``
        (vector). Multi-label keys: ``mAP_micro``, ``mAP_macro``, ``f1_micro`` (threshold 0.5 on
        sigmoid probabilities), ``f1_macro`` and ``ap_per_class`` (vector). Both also hold
        ``support`` (per-class ``[tp, fp, tn, fn, support]``), which :func:`to_python` turns into
        per-class sample counts and uses to mark the scores of absent classes as undefined.
        Feed it logits: ``update(logits, target)``; multi-label targets must be integer {0, 1}.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if multilabel:
        metrics = {
            "mAP_micro": MultilabelAveragePrecision(num_labels=num_classes, average="micro"),
            "mAP_macro": MultilabelAveragePrecision(num_labels=num_classes, average="macro"),
            "ap_per_class": MultilabelAveragePrecision(num_labels=num_classes, average=None),
            "f1_micro": MultilabelF1Score(num_labels=num_classes, average="micro"),
            "f1_macro": MultilabelF1Score(num_labels=num_classes, average="macro"),
            "support": MultilabelStatScores(num_labels=num_classes, average=None),
        }
    else:
        metrics = {
            "acc1": MulticlassAccuracy(num_classes=num_classes, top_k=1, average="micro"),
            "acc5": MulticlassAccuracy(
                num_classes=num_classes, top_k=min(5, num_classes), average="micro"
            ),
            "acc_macro": MulticlassAccuracy(num_classes=num_classes, average="macro"),
            "acc_per_class": MulticlassAccuracy(num_classes=num_classes, average=None),
            "support": MulticlassStatScores(num_classes=num_classes, average=None),
        }
    return MetricCollection(metrics)


def main_metric_name(multilabel: bool, override: str | None = None) -> str:
    """Name of the metric that selects the best checkpoint (higher is better)."""
    name = override or DEFAULT_MAIN_METRIC[multilabel]
    valid = _SCALAR_NAMES[multilabel]
    if name not in valid:
        raise ValueError(
            f"--best_metric {name!r} is not a scalar metric of this task; choose from {sorted(valid)}"
        )
    return name


_SCALAR_NAMES = {
    False: {"acc1", "acc5", "acc_macro"},
    True: {"mAP_micro", "mAP_macro", "f1_micro", "f1_macro"},
}


def to_python(results: Mapping[str, torch.Tensor | float]) -> dict[str, float | list[float]]:
    """Turn computed metric tensors into JSON-friendly numbers, accuracies/AP/F1 in percent.

    The key ``loss`` (if present) is passed through unscaled. ``support`` (per-class stat scores
    of :func:`build_metrics`) becomes the per-class count of evaluated samples of the class
    (positives for multi-label), and every per-class score of a class with no sample is NaN
    (undefined; torchmetrics reports 0 or -0 there), shown as ``n/a`` by :func:`format_metrics`.
    """
    out: dict[str, float | list[float]] = {}
    absent: list[bool] | None = None
    for name, value in results.items():
        value = torch.as_tensor(value).detach().double().cpu()
        if name == "support":
            counts = [int(c) for c in value.reshape(-1, 5)[:, 4].tolist()]
            out[name] = counts
            absent = [c == 0 for c in counts]
            continue
        scale = 1.0 if name == "loss" else 100.0
        if value.ndim == 0:
            out[name] = float(value) * scale
        else:
            out[name] = [float(v) * scale for v in value]
    if absent is not None:
        for name, values in out.items():
            if name != "support" and isinstance(values, list) and len(values) == len(absent):
                out[name] = [math.nan if a else v for v, a in zip(values, absent)]
    return out


def _num(value: float, fmt: str) -> str:
    """``value`` formatted, or ``n/a`` (right-aligned to the same width) when undefined."""
    if isinstance(value, float) and not math.isfinite(value):
        width = "".join(c for c in fmt.split(".")[0] if c.isdigit())
        return f"{'n/a':>{width}}" if width else "n/a"
    return f"{value:{fmt}}"


def format_metrics(results: Mapping[str, float | list[float]], class_names=None) -> str:
    """One readable line of scalar metrics, then one line per class for vector metrics.

    Scores of classes absent from the evaluation (NaN, see :func:`to_python`) read ``n/a``;
    ``support`` is listed as sample counts.
    """
    scalars = "  ".join(
        f"{k} {_num(v, '.2f')}" for k, v in results.items() if not isinstance(v, list)
    )
    lines = [scalars]
    for key, values in results.items():
        if isinstance(values, list):
            names = list(class_names) if class_names is not None else []
            if len(names) != len(values):
                names = [str(i) for i in range(len(values))]
            fmt = "6d" if key == "support" else "6.2f"
            lines.append(f"{key}:")
            lines.extend(f"  {n:>40s} {_num(v, fmt)}" for n, v in zip(names, values))
    return "\n".join(lines)


def eval_shard(num_samples: int, rank: int, world_size: int) -> range:
    """Indices of the evaluation set handled by ``rank``: every sample on exactly one rank.

    Unlike ``torch.utils.data.DistributedSampler`` (and timm's ``OrderedDistributedSampler``),
    nothing is padded or repeated, so metrics synced across ranks count each sample once.
    Ranks may get one sample more or fewer; evaluation must therefore not run collective ops
    per batch (call the unwrapped model, not the DDP wrapper). A ``range`` is a valid
    ``DataLoader(sampler=...)``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid rank {rank} for world size {world_size}")
    return range(rank, num_samples, world_size)


# --------------------------------------------------------------------------------------------
# dense tasks (OSCD change detection, SegMunich segmentation)
# --------------------------------------------------------------------------------------------
DENSE_IGNORE_INDEX = IGNORE_INDEX  # 255: masks' ignore value (one definition, util.data.base)

#: the metric that selects the best dense checkpoint (on the validation split) per task
DENSE_MAIN_METRIC = {"change": "f1_change", "segment": "miou"}


def build_confusion_matrix(num_classes: int, ignore_index: int = DENSE_IGNORE_INDEX):
    """One global confusion matrix per evaluation, indexed ``[target, prediction]``.

    A torchmetrics ``MulticlassConfusionMatrix`` (summed across DDP ranks by ``compute()``), fed
    class-index maps: ``update(pred (N, H, W) int, target (N, H, W) int)``; pixels whose target is
    ``ignore_index`` are not counted. Argument validation is off (it would sync with the host on
    every update); targets must be in ``[0, num_classes)`` or ``ignore_index``.
    """
    from torchmetrics.classification import MulticlassConfusionMatrix

    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return MulticlassConfusionMatrix(
        num_classes=num_classes, ignore_index=ignore_index, validate_args=False
    )


def class_key(name: str) -> str:
    """Metric-key form of a class name: ``"no change"`` -> ``no_change``."""
    out = "".join(c if c.isalnum() else "_" for c in name.lower())
    while "__" in out:
        out = out.replace("__", "_")
    return out.strip("_")


def dense_metrics(
    cm: torch.Tensor,
    class_names: list[str] | tuple[str, ...] | None = None,
    task: str = "segment",
) -> dict[str, float | int | list]:
    """All dense metrics from one confusion matrix ``cm[target, prediction]`` (values in percent).

    Keys: ``oa`` (overall accuracy), per class ``iou_<class>``, ``precision_<class>``,
    ``recall_<class>``, ``f1_<class>`` (class names as :func:`class_key`; NaN where undefined:
    precision without predictions of the class, recall without target pixels, IoU / F1 when the
    class has neither), ``miou`` (mean IoU over the classes present in target or prediction -
    absent classes are left out and listed in ``absent_classes``), ``mf1`` (likewise), ``pixels``
    (evaluated pixel count). ``task="change"`` (OSCD, class 1 = change): the change-class values
    are then ``precision_change``, ``recall_change``, ``f1_change`` (the paper's headline metric),
    ``iou_change``. ``task="segment"`` with a background class 0 also gives ``miou_nobg`` (mean
    over the non-background classes present).
    """
    cm = torch.as_tensor(cm).detach().double().cpu()
    k = cm.shape[0]
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix must be square, got {tuple(cm.shape)}")
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}-class confusion matrix")
    if task == "change" and k != 2:
        raise ValueError(f"change detection has 2 classes, got {k}")
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    tp = cm.diag()
    target_sum = cm.sum(1)  # row: pixels of the class in the target
    pred_sum = cm.sum(0)  # column: pixels predicted as the class
    total = cm.sum()

    def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return torch.where(den > 0, num / den.clamp(min=1), nan)

    precision = ratio(tp, pred_sum)
    recall = ratio(tp, target_sum)
    union = target_sum + pred_sum - tp
    iou = ratio(tp, union)
    f1 = ratio(2 * tp, target_sum + pred_sum)
    present = union > 0
    out: dict[str, float | int | list] = {
        "oa": float(tp.sum() / total) * 100 if total > 0 else float("nan"),
        "miou": float(iou[present].mean()) * 100 if present.any() else float("nan"),
        "mf1": float(f1[present].mean()) * 100 if present.any() else float("nan"),
        "pixels": int(total),
        "absent_classes": [names[i] for i in range(k) if not present[i]],
    }
    if task == "segment" and k > 2:
        fg = present.clone()
        fg[0] = False
        out["miou_nobg"] = float(iou[fg].mean()) * 100 if fg.any() else float("nan")
    keys = [class_key(n) for n in names]
    if task == "change":
        keys = ["no_change", "change"]
    for metric, values in (("iou", iou), ("precision", precision), ("recall", recall), ("f1", f1)):
        for key, v in zip(keys, values.tolist()):
            out[f"{metric}_{key}"] = v * 100
    return out


def format_dense_metrics(results: Mapping[str, float | int | list], task: str) -> str:
    """A short readable summary: headline numbers, then a per-class table."""
    head = ["oa", "miou"] + (
        ["f1_change", "precision_change", "recall_change", "iou_change"]
        if task == "change"
        else ["miou_nobg", "mf1"]
    )
    line = "  ".join(
        f"{k} {_num(results[k], '.2f')}" for k in head if isinstance(results.get(k), float | int)
    )
    classes = [k[len("iou_") :] for k in results if k.startswith("iou_")]
    rows = [f"{'class':>40s}   IoU  prec  recall   F1"]
    for c in classes:
        vals = [results.get(f"{m}_{c}", float("nan")) for m in ("iou", "precision", "recall", "f1")]
        rows.append(f"{c:>40s} " + " ".join(_num(v, "5.1f") for v in vals))
    absent = results.get("absent_classes") or []
    note = f"\nleft out of mIoU (no pixels in target or prediction): {absent}" if absent else ""
    return line + "\n" + "\n".join(rows) + note
