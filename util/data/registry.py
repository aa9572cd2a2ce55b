"""The dataset registry: names and the paper's aliases, ``build_dataset``, collate, and the count
of samples replaced because they were bad."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import default_collate

from util.data.base import SentinelDataset
from util.data.bigearthnet import BigEarthNet
from util.data.eurosat import EuroSAT
from util.data.fmow import FMoWSentinel
from util.data.oscd import OSCD
from util.data.segmunich import SegMunich

logger = logging.getLogger(__name__)

__all__ = [
    "ALIASES",
    "DATASETS",
    "build_dataset",
    "collate",
    "report_skipped",
    "resolve_name",
    "skipped_count",
]

DATASETS: dict[str, type[SentinelDataset]] = {
    "fmow_sentinel": FMoWSentinel,
    "bigearthnet": BigEarthNet,
    "eurosat": EuroSAT,
    "oscd": OSCD,
    "segmunich": SegMunich,
}

#: The paper's ``--dataset_type`` names -> registry names.
ALIASES: dict[str, str] = {
    "sentinel": "fmow_sentinel",
    "fmow": "fmow_sentinel",
    "bigearthnet_finetune": "bigearthnet",
    "euro_sat": "eurosat",
    "tum_128": "segmunich",
}


def resolve_name(name: str) -> str:
    """Registry name for ``name`` or one of the paper's aliases (case-insensitive).

    Raises:
        KeyError: listing the known names.
    """
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in DATASETS:
        known = sorted(DATASETS) + sorted(ALIASES)
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(known)}")
    return key


def build_dataset(
    name: str,
    root: str | os.PathLike,
    split: str | None = None,
    index: str | os.PathLike | None = None,
    transforms: Callable[[dict], dict] | None = None,
    **options: Any,
) -> SentinelDataset:
    """Build a dataset by registry name or paper alias.

    ``split`` defaults to ``"train"`` when neither ``split`` nor ``index`` is given. ``options`` are
    the class's keyword arguments (e.g. ``skip_bad_samples=True``, ``num_classes=43``,
    ``years=None``, ``patch_size=128``, ``fill="band_mean"``).
    """
    cls = DATASETS[resolve_name(name)]
    if split is None and index is None:
        split = "train"
    return cls(root, split=split, index=index, transforms=transforms, **options)


def options_from_args(name: str, args: Any) -> dict[str, Any]:
    """``build_dataset`` options every trainer takes from its flags: ``--skip_bad_samples``,
    ``--strict_input``, ``--native_size`` and, for BigEarthNet, ``--ben_version`` (``auto``:
    detected from the folder)."""
    options: dict[str, Any] = {"skip_bad_samples": bool(getattr(args, "skip_bad_samples", False))}
    if getattr(args, "strict_input", False):
        options["strict_input"] = True
    if getattr(args, "native_size", None) is not None:
        options["native_size"] = args.native_size
    version = getattr(args, "ben_version", None)
    if name == "bigearthnet" and version not in (None, "auto"):
        options["ben_version"] = int(version)
    return options


def collate(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Default collate for dict samples (all samples of a batch must share their shapes)."""
    return default_collate(batch)


def skipped_count(ds: Any) -> int:
    """Samples replaced because they were bad, so far, by ``ds`` in this process and all its
    DataLoader workers (a bad file is counted each time it is asked for, e.g. once per epoch)."""
    while isinstance(ds, torch.utils.data.Subset):
        ds = ds.dataset
    counter = getattr(ds, "_skip_counter", None)
    return int(counter) if counter is not None else int(getattr(ds, "num_skipped", 0))


def report_skipped(ds: Any) -> int:
    """Log the run's skipped-sample count summed over workers and processes (collective).

    Returns the total (0 when ``skip_bad_samples`` is off or nothing was skipped).
    """
    from util.training.runtime import get_world_size, is_main_process

    total = skipped_count(ds)
    if get_world_size() > 1:
        import torch.distributed as dist

        t = torch.tensor(float(total), device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t)
        total = int(t.item())
    if total and is_main_process():
        logger.warning(
            "replaced %d bad samples in this run (all workers and processes; --skip_bad_samples); "
            "the warnings above name the files, `python -m util.data.check NAME ROOT` lists them all",
            total,
        )
    return total
