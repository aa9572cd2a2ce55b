"""Data side of dense finetuning (OSCD change detection, SegMunich segmentation).

* :data:`TASKS` - per task: dataset name, model task, default and paper models, defaults.
* :func:`make_splits` / :func:`write_splits` - validation carved from the training split, never
  from the test split: OSCD holds out ``val_cities`` seeded cities, SegMunich a seeded
  ``val_fraction`` of the training stems (or the names listed in a split file). The lists are
  written to ``OUTPUT_DIR/splits/{train,val,test}.txt`` and the datasets are built from them.
* :func:`run_splits` - the splits of a run: carved from the flags when training; for ``--eval``
  the lists the training run saved next to its checkpoint (``<ckpt dir>/splits/val.txt``).
* :func:`check_disjoint` - the leakage guard (train / val / test scenes are distinct files).
* :func:`build_transforms` - a split's transforms (``--normalization``; ``--sensor`` / ``--bands``
  wrap them in ``util.data.sensor_view.SensorView``).
* :class:`EvalScenes` - whole scenes for evaluation; with ``--skip_bad_samples`` a bad scene is
  left out (counted), never replaced by another scene (which would be counted twice).
* :class:`SceneCrops` - training samples: random ``input_size`` crops of whole scenes (OSCD
  cities, SegMunich images) with flips and rot90 (``util.data.transforms``, the same geometric
  transform for both dates and the mask), each scene drawn in proportion to its area.
* :func:`class_pixel_counts` / :func:`class_weights` - ``none``, ``inverse_freq`` or ``paper``
  (OSCD: ``[20 p, 2 (1 - p)]`` from the changed fraction ``p`` of the training pixels, spec §7.1).
"""

from __future__ import annotations

import argparse
import bisect
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from evaluation.metrics import DENSE_IGNORE_INDEX

logger = logging.getLogger(__name__)

#: ``--task`` -> what it means
TASKS: dict[str, dict[str, Any]] = {
    "oscd": {
        "dataset": "oscd",
        "task": "change",
        "model": "change_detector_vit_base_patch8_128",
        "paper_model": "paper_oscd_vit_base_patch8_128",
        "crop_repeats": 4.0,  # ~ the paper's stride-63 tiles per 128^2 of city area
        "cache": True,  # 24 cities: keep decoded scenes in each loader worker
    },
    "segmunich": {
        "dataset": "segmunich",
        "task": "segment",
        "model": "segmenter_vit_base_patch8_128",
        "paper_model": "paper_segmunich_vit_base_patch8_128",
        "crop_repeats": 1.0,  # 128 px images = one crop each, as the paper's whole images
        "cache": False,
    },
}

CLASS_WEIGHTS = ("none", "inverse_freq", "paper")


class LeakageError(RuntimeError):
    """Training, validation and test scenes overlap."""


# --------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------
def _names(dataset) -> list[str]:
    return list(dataset.cities) if hasattr(dataset, "cities") else list(dataset.stems)


def make_splits(
    task: str,
    data_root: str | os.PathLike,
    val_count: int | None = None,
    val_fraction: float | None = None,
    val_split: str | os.PathLike | None = None,
    seed: int = 0,
) -> dict[str, list[str]]:
    """Scene names of the ``train``, ``val`` and ``test`` splits.

    Validation comes from the official training split only: the names listed in ``val_split``
    (a file, one name per line or comma-separated), else ``val_count`` names (OSCD) or a
    ``val_fraction`` share (SegMunich; at least one) drawn with ``seed``. The test split is the
    official one, untouched.

    Raises:
        ValueError: a listed validation name is not in the training split, or nothing is left
            to train on.
    """
    from util.data import build_dataset

    name = TASKS[task]["dataset"]
    train = _names(build_dataset(name, data_root, split="train"))
    test = _names(build_dataset(name, data_root, split="test"))
    if val_split:
        path = Path(val_split)
        if not path.is_file():
            raise FileNotFoundError(f"--val_split {path}: no such file")
        listed = [
            Path(n.strip()).stem if name == "segmunich" else n.strip()
            for ln in path.read_text().splitlines()
            if ln.strip() and not ln.startswith("#")
            for n in ln.split(",")
            if n.strip()
        ]
        unknown = sorted(set(listed) - set(train))
        if unknown:
            raise ValueError(
                f"--val_split {path}: {len(unknown)} names are not in the training split "
                f"(validation is carved from train, never from test): {unknown[:5]}"
            )
        val = [n for n in train if n in set(listed)]
    else:
        rng = np.random.default_rng(seed)
        if val_count is None:
            frac = 0.1 if val_fraction is None else val_fraction
            if not 0.0 <= frac < 1.0:
                raise ValueError(f"--val_fraction must be in [0, 1), got {frac}")
            val_count = max(1, round(frac * len(train))) if frac > 0 else 0
        if not 0 <= val_count < len(train):
            raise ValueError(
                f"cannot hold out {val_count} of the {len(train)} training scenes for validation"
            )
        picked = set(rng.choice(len(train), size=val_count, replace=False).tolist())
        val = [n for i, n in enumerate(train) if i in picked]
    kept = [n for n in train if n not in set(val)]
    if not kept:
        raise ValueError("no training scenes left after the validation hold-out")
    return {"train": kept, "val": val, "test": test}


def write_splits(splits: dict[str, list[str]], output_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``OUTPUT_DIR/splits/<split>.txt`` (one name per line); returns the paths."""
    folder = Path(output_dir) / "splits"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, names in splits.items():
        paths[split] = folder / f"{split}.txt"
        paths[split].write_text("".join(f"{n}\n" for n in names))
    return paths


def run_splits(args: Any, checkpoint: dict[str, Any] | None = None) -> dict[str, list[str]]:
    """The ``train`` / ``val`` / ``test`` scene names of a run (``args``: the dense flags).

    Training carves them with :func:`make_splits` from ``--val_cities`` / ``--val_fraction`` /
    ``--val_split`` / ``--split_seed``. ``--eval`` (``checkpoint`` given) without ``--val_split``
    reads the validation list the training run saved next to its checkpoint
    (``<ckpt dir>/splits/val.txt``), else carves with the split flags recorded in the
    checkpoint, so ``--eval_split val`` evaluates the scenes the checkpoint was selected on.
    """
    task, flags = args.task, vars(args)
    val_split = args.val_split
    if checkpoint is not None and not val_split:
        saved = Path(args.resume or args.finetune).parent / "splits" / "val.txt"
        recorded = checkpoint.get("args") if isinstance(checkpoint.get("args"), dict) else {}
        if saved.is_file():
            val_split = saved
            logger.info("validation split: %s (saved by the training run)", saved)
        elif recorded:
            flags = {k: recorded.get(k, v) for k, v in flags.items()}
            val_split = flags.get("val_split")
            logger.info("validation split: carved with the training run's recorded flags")
        else:
            logger.warning("no split lists next to the checkpoint and no recorded flags: the "
                           "validation split is carved from the current flags")  # fmt: skip
    return make_splits(
        task, args.data_root, val_count=flags["val_cities"] if task == "oscd" else None,
        val_fraction=flags["val_fraction"], val_split=val_split, seed=flags["split_seed"],
    )  # fmt: skip


def build_split_dataset(
    task: str,
    data_root: str | os.PathLike,
    split: str,
    names_file: str | os.PathLike | None,
    transforms: Callable[[dict], dict] | None = None,
    **options: Any,
):
    """Dataset of one split: ``train``/``val`` read the official training folders restricted to
    the names in ``names_file``; ``test`` reads the official test split."""
    from util.data import build_dataset

    name = TASKS[task]["dataset"]
    folder = "test" if split == "test" else "train"
    if names_file is None:
        return build_dataset(name, data_root, split=folder, transforms=transforms, **options)
    if name == "segmunich":  # stems of the list, images under <root>/<folder>/
        return build_dataset(
            name, data_root, split=folder, index=names_file, transforms=transforms, **options
        )
    return build_dataset(name, data_root, index=names_file, transforms=transforms, **options)


def split_datasets(
    task: str,
    data_root: str | os.PathLike,
    splits: dict[str, list[str]],
    split_dir: str | os.PathLike,
    transforms: Callable[[dict], dict] | None,
    train: bool = True,
    skip_bad_samples: bool = False,
    **options: Any,
) -> tuple[Any, Any, Any]:
    """``(train, val, test)`` datasets of ``splits`` as listed in ``split_dir`` (:func:`write_splits`):
    ``train`` without transforms (None unless ``train``; a bad scene replaced by the next good
    one with ``skip_bad_samples``), ``val`` (None when empty) and ``test`` with ``transforms`` as
    :class:`EvalScenes` (a bad scene left out); checked to share no scene (:func:`check_disjoint`)."""

    def build(split: str, tf: Callable[[dict], dict] | None, **skip: bool):
        names = Path(split_dir) / f"{split}.txt" if split != "test" else None
        return build_split_dataset(task, data_root, split, names, tf, **options, **skip)

    train_ds = build("train", None, skip_bad_samples=skip_bad_samples) if train else None
    val_ds = EvalScenes(build("val", transforms), skip_bad_samples) if splits["val"] else None
    test_ds = EvalScenes(build("test", transforms), skip_bad_samples)
    check_disjoint(train=train_ds, val=val_ds, test=test_ds)
    return train_ds, val_ds, test_ds


class EvalScenes(Dataset):
    """Whole scenes of a dense dataset for evaluation (attributes are the dataset's).

    With ``skip_bad_samples`` a scene that raises ``SampleError`` is logged, counted
    (``num_skipped``, ``skipped``; ``util.data.skipped_count`` sums the loader workers) and
    yields ``{"skipped": 1}``, which the evaluation leaves out; without, the error propagates.
    """

    def __init__(self, dataset, skip_bad_samples: bool = False) -> None:
        self.dataset = dataset
        self.skip_bad_samples = skip_bad_samples
        self.num_skipped = 0
        self.skipped: list[str] = []
        self._skip_counter = (
            torch.zeros((), dtype=torch.int64).share_memory_() if skip_bad_samples else None
        )

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from util.data import SampleError

        try:
            return self.dataset[index]
        except SampleError as err:
            if not self.skip_bad_samples:
                raise
            _count_skip(self, err.path)
            logger.warning("leaving bad scene %d out of the evaluation (%s)", index, err)
            return {"skipped": torch.ones((), dtype=torch.int64)}


def _count_skip(dataset, path: str) -> None:
    """Count one skipped sample the way ``util.data.base.SentinelDataset`` does."""
    if getattr(dataset, "_skip_counter", None) is not None:
        dataset._skip_counter += 1
    dataset.num_skipped += 1
    dataset.skipped.append(path)


def scene_files(dataset) -> set[str]:
    """Resolved image locations of a dense dataset's scenes (the leakage guard's identity)."""
    if hasattr(dataset, "image_dirs"):
        return {str(Path(d).resolve()) for d in dataset.image_dirs}
    base = Path(dataset.root) / dataset.mode / "img"
    return {str((base / f"{s}.tif").resolve()) for s in dataset.stems}


def check_disjoint(**datasets) -> None:
    """Raise :class:`LeakageError` if any two of the given datasets share a scene file."""
    files = {k: scene_files(d) for k, d in datasets.items() if d is not None}
    keys = list(files)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            shared = files[a] & files[b]
            if shared:
                raise LeakageError(
                    f"{a} and {b} share {len(shared)} scene(s), e.g. {sorted(shared)[0]}"
                )


# --------------------------------------------------------------------------------------------
# training samples
# --------------------------------------------------------------------------------------------
class SceneCrops(Dataset):
    """Random crops of whole scenes for training.

    Each epoch holds ``max(1, round(repeats * H * W / input_size**2))`` samples of a scene of
    ``H x W`` pixels (none of a scene whose header cannot be read, when the dataset skips bad
    samples: counted there; a scene that fails later is replaced by the dataset's next good
    one, also counted); sample ``i`` reads its scene (from a per-worker cache when ``cache``) and
    applies ``transform`` (``util.data.transforms.build_transforms(name, True, input_size)``: per-scene
    normalisation, ``RandomCrop(input_size)`` - images smaller than a crop are padded with 0 and
    the mask with 255, which the loss ignores - horizontal / vertical flips and rot90, the same
    geometric draw for image (both dates) and mask).

    Args:
        dataset: a dense dataset built with ``transforms=None`` that has ``scene_info``.
        transform: the training transform.
        input_size: crop side.
        repeats: crops per ``input_size**2`` of scene area per epoch.
        cache: keep decoded scenes in memory (per worker process).
    """

    def __init__(
        self,
        dataset,
        transform: Callable[[dict], dict],
        input_size: int,
        repeats: float = 1.0,
        cache: bool = False,
    ) -> None:
        if dataset.transforms is not None:
            raise ValueError("SceneCrops needs a dataset built with transforms=None")
        self.dataset = dataset
        self.transform = transform
        self.cache = cache
        self._cache: dict[int, dict[str, torch.Tensor]] = {}
        from util.data import SampleError

        counts = []
        for i in range(len(dataset)):
            try:
                info = dataset.scene_info(i)
            except SampleError as err:
                if not getattr(dataset, "skip_bad_samples", False):
                    raise
                _count_skip(dataset, err.path)
                logger.warning("skipping bad scene %d for training (%s)", i, err)
                counts.append(0)
                continue
            counts.append(max(1, round(repeats * info["height"] * info["width"] / input_size**2)))
        if counts and not any(counts):
            raise ValueError("every training scene is bad (--skip_bad_samples skipped them all)")
        self.counts = counts
        self._ends = np.cumsum(counts).tolist()

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def scene_of(self, index: int) -> int:
        """Scene index of sample ``index``."""
        return bisect.bisect_right(self._ends, index)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        scene = self.scene_of(index)
        sample = self._cache.get(scene) if self.cache else None
        if sample is None:
            sample = self.dataset[scene]
            if self.cache:
                self._cache[scene] = sample
        return self.transform(dict(sample))


# --------------------------------------------------------------------------------------------
# class weights
# --------------------------------------------------------------------------------------------
def class_pixel_counts(dataset, num_classes: int) -> torch.Tensor:
    """Pixels of each class over a dense dataset's masks (255 = ignore, not counted)."""
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for i in range(len(dataset)):
        mask = dataset[i]["mask"].flatten()
        mask = mask[mask != DENSE_IGNORE_INDEX]
        counts += torch.bincount(mask, minlength=num_classes)[:num_classes].double()
    return counts


def class_weights(mode: str, counts: torch.Tensor, task: str) -> torch.Tensor | None:
    """Cross-entropy class weights (float32) from training pixel counts, or None.

    ``none``: unweighted. ``inverse_freq``: ``total / (K * count_c)`` (sklearn's "balanced"; 0 for
    classes absent from the training masks). ``paper``: OSCD ``[20 p, 2 (1 - p)]`` with ``p`` the
    changed fraction (spec §7.1); the paper's SegMunich loss was unweighted, so ``paper`` is
    ``none`` there.
    """
    if mode not in CLASS_WEIGHTS:
        raise ValueError(f"--class_weights must be one of {CLASS_WEIGHTS}, got {mode!r}")
    total = float(counts.sum())
    if mode == "none" or (mode == "paper" and task != "change"):
        return None
    if total <= 0:
        raise ValueError("the training masks hold no labelled pixel: cannot weight classes")
    if mode == "paper":
        p = float(counts[1]) / total
        return torch.tensor([20.0 * p, 2.0 * (1.0 - p)], dtype=torch.float32)
    k = counts.numel()
    w = torch.where(counts > 0, total / (k * counts.clamp(min=1)), torch.zeros_like(counts))
    return w.float()


def dataset_class_weights(mode: str, dataset, num_classes: int, task: str) -> torch.Tensor | None:
    """:func:`class_weights` of ``dataset``'s masks, read only when ``mode`` weights ``task``."""
    if mode == "none" or (mode == "paper" and task != "change"):
        return None
    return class_weights(mode, class_pixel_counts(dataset, num_classes), task)


def format_weights(weights: torch.Tensor | None, classes: Sequence[str]) -> str:
    if weights is None:
        return "none"
    return ", ".join(f"{c} {w:.3g}" for c, w in zip(classes, weights.tolist()))


def build_transforms(args: argparse.Namespace, is_train: bool) -> Callable[[dict], dict]:
    """Training (random ``--input_size`` crops) or evaluation transforms of ``--task``'s dataset,
    in ``--sensor`` / ``--bands``' band set (``util.training.sensor_input``) when given."""
    from util.data.transforms import build_transforms as dataset_transforms
    from util.training.sensor_input import sensor_of, sensor_transforms

    size = args.input_size if is_train else None
    tf = dataset_transforms(TASKS[args.task]["dataset"], is_train, size, args.normalization)
    return sensor_transforms(tf, sensor_of(args))


def default_crop_repeats(task: str, value: float | None) -> float:
    """``--crop_repeats`` or the task's default."""
    r = TASKS[task]["crop_repeats"] if value is None else value
    if not (r > 0 and math.isfinite(r)):
        raise ValueError(f"--crop_repeats must be > 0, got {value}")
    return r
