"""Reproducible low-label training subsets (the paper's "10 % of BigEarthNet", drawn how?).

The paper finetunes on 10 % of the BigEarthNet training set and never says how the subset was
drawn (users asked, upstream issue #30). This module draws it reproducibly: a seeded, stratified,
multi-label-aware subset by iterative stratification (Sechidis et al., 2011): labels are handled
rarest first, and each sample goes to the side (subset / rest) that still needs that label most,
so every class keeps close to ``fraction`` of its positives, rare ones included. For single-label
data it reduces to ordinary per-class stratification.

Use it from the CLI to write a list (one line of the dataset's own index file per selected sample,
so the list is itself a valid ``--train_path``)::

    python -m util.data.subset bigearthnet DATA_ROOT --split train --fraction 0.1 --seed 0 \
        --output bigearthnet_train_10pct_seed0.txt

or from ``main_finetune.py --train_fraction 0.1 --subset_seed 0`` (the list is recorded in the
output dir).

References:
    K. Sechidis, G. Tsoumakas, I. Vlahavas, "On the Stratification of Multi-Label Data",
    ECML PKDD 2011.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def as_multihot(labels: Sequence | np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Labels as a boolean ``(N, C)`` matrix: integer class ids ``(N,)`` are one-hot encoded."""
    y = np.asarray(labels)
    if y.ndim == 1:
        if y.size and (y.min() < 0 or not np.issubdtype(y.dtype, np.integer)):
            raise ValueError("single-label targets must be non-negative integers")
        c = num_classes or (int(y.max()) + 1 if y.size else 0)
        out = np.zeros((len(y), c), dtype=bool)
        out[np.arange(len(y)), y] = True
        return out
    if y.ndim != 2:
        raise ValueError(f"labels must be (N,) class ids or (N, C) multi-hot, got shape {y.shape}")
    return y.astype(bool)


def stratified_subset(labels: Sequence | np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Indices of a seeded, stratified subset holding about ``fraction`` of the samples.

    Args:
        labels: ``(N,)`` integer class ids or ``(N, C)`` multi-hot (bool/0-1) matrix.
        fraction: Share of samples to keep, ``0 < fraction <= 1``.
        seed: Seed of the tie-breaking random generator (same seed, same subset).

    Returns:
        Sorted int64 indices into ``labels``.
    """
    y = as_multihot(labels)
    n, num_classes = y.shape
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0 or n == 0:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    ratios = np.array([fraction, 1.0 - fraction])
    want = ratios * n  # samples still wanted per side (0 = subset, 1 = rest)
    want_label = np.outer(ratios, y.sum(0)).astype(np.float64)  # (2, C) positives still wanted
    side = np.full(n, -1, dtype=np.int64)
    unassigned = y.copy()  # label memberships of samples not yet assigned
    while True:
        counts = unassigned.sum(0)
        live = np.flatnonzero(counts)
        if live.size == 0:
            break
        rarest = live[counts[live] == counts[live].min()]
        label = rng.choice(rarest)
        for i in rng.permutation(np.flatnonzero(unassigned[:, label])):
            need = want_label[:, label]
            best = np.flatnonzero(need == need.max())
            if best.size > 1:
                best = best[want[best] == want[best].max()]
            s = best[0] if best.size == 1 else rng.choice(best)
            side[i] = s
            want_label[s] -= y[i]
            want[s] -= 1
            unassigned[i] = False
    # samples without any label: fill what each side still wants
    empty = rng.permutation(np.flatnonzero(side < 0))
    take = int(np.clip(round(want[0]), 0, empty.size))
    side[empty[:take]] = 0
    return np.sort(np.flatnonzero(side == 0)).astype(np.int64)


def subset_report(labels: Sequence | np.ndarray, indices: np.ndarray) -> str:
    """Per-class positives kept in the subset versus the full set (for logs and the CLI)."""
    y = as_multihot(labels)
    full = y.sum(0)
    sub = y[indices].sum(0)
    lines = [
        f"kept {len(indices)} of {len(y)} samples ({100 * len(indices) / max(len(y), 1):.2f} %)"
    ]
    for c, (a, b) in enumerate(zip(sub, full)):
        share = 100 * a / b if b else float("nan")
        lines.append(f"  class {c:3d}: {a:7d} / {b:7d}  ({share:6.2f} %)")
    return "\n".join(lines)


def write_list(path: str | Path, lines: Sequence[str]) -> Path:
    """Write one entry per line (UTF-8, trailing newline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------
def dataset_labels(dataset) -> np.ndarray:
    """Labels of every sample without decoding images where the dataset allows it.

    EuroSAT-style datasets keep integer ``labels``; BigEarthNet-style ones read each patch's
    label metadata (``labels_of``); anything else is iterated sample by sample.

    Returns:
        ``(N,)`` int64 class ids or ``(N, C)`` bool multi-hot.
    """
    from tqdm.auto import tqdm

    if isinstance(getattr(dataset, "labels", None), list | tuple):
        return np.asarray(dataset.labels, dtype=np.int64)
    if hasattr(dataset, "labels_of") and hasattr(dataset, "patches"):
        rows = [
            dataset.labels_of(dataset.patch_dir(p), p).numpy()
            for p in tqdm(dataset.patches, desc="reading labels", leave=False)
        ]
        return np.stack(rows).astype(bool) if rows else np.zeros((0, dataset.num_classes), bool)
    rows = [
        np.asarray(dataset[i]["label"]) for i in tqdm(range(len(dataset)), desc="reading labels")
    ]
    return np.stack(rows) if rows else np.zeros(0, np.int64)


def sample_ids(dataset) -> list[str]:
    """One index-file line per sample, so a selection of them is itself a valid index file.

    BigEarthNet: the patch id (the paper's id-list format). EuroSAT: ``<path> <label>`` with the
    path relative to the dataset root where possible (the paper's index format). Other datasets:
    the sample number.
    """
    if hasattr(dataset, "patches"):
        return [str(p) for p in dataset.patches]
    if hasattr(dataset, "paths") and isinstance(getattr(dataset, "labels", None), list | tuple):
        root = Path(getattr(dataset, "root", "."))
        out = []
        for path, label in zip(dataset.paths, dataset.labels):
            path = Path(path)
            try:
                path = path.relative_to(root)
            except ValueError:
                pass
            out.append(f"{path.as_posix()} {label}")
        return out
    return [str(i) for i in range(len(dataset))]


def write_subset(
    dataset, fraction: float, seed: int, path: str | Path | None
) -> tuple[np.ndarray, str]:
    """Draw a stratified subset of ``dataset`` and write its index lines to ``path``.

    ``path=None`` only draws it (e.g. on DDP ranks other than 0: the draw is deterministic).

    Returns:
        ``(indices, report)``: sorted sample indices and a per-class summary.
    """
    labels = dataset_labels(dataset)
    indices = stratified_subset(labels, fraction, seed)
    if path is not None:
        ids = sample_ids(dataset)
        write_list(path, [ids[i] for i in indices])
    return indices, subset_report(labels, indices)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: write a stratified subset list of a dataset split or index file."""
    import argparse

    from util.data.registry import build_dataset
    from util.training.cli import add_debug_arg, run

    parser = argparse.ArgumentParser(
        prog="python -m util.data.subset",
        description="Write a seeded, stratified (multi-label aware) subset list of a dataset. "
        "The list has the dataset's index-file format, so it can be passed as --train_path.",
    )
    parser.add_argument("dataset", help="dataset name (bigearthnet, eurosat, or a paper alias)")
    parser.add_argument("root", help="dataset root folder")
    parser.add_argument("--split", default=None, help="split name (default: train)")
    parser.add_argument("--index", default=None, help="index/split file instead of --split")
    parser.add_argument("--fraction", type=float, required=True, help="share to keep, (0, 1]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_classes", type=int, default=None, help="BigEarthNet: 19 or 43")
    parser.add_argument("--output", required=True, help="list file to write")
    add_debug_arg(parser)
    args = parser.parse_args(argv)
    run(_subset_cli, args, build_dataset=build_dataset)


def _subset_cli(args, build_dataset) -> None:
    from util.data.registry import resolve_name

    try:
        resolve_name(args.dataset)
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    options = {} if args.num_classes is None else {"num_classes": args.num_classes}
    ds = build_dataset(args.dataset, args.root, split=args.split, index=args.index, **options)
    _, report = write_subset(ds, args.fraction, args.seed, args.output)
    print(report)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
