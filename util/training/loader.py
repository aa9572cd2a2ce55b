"""The one way training data reaches a trainer: seeded samples, an epoch-seeded sampler, resumable.

Every trainer (``main_pretrain``, ``main_finetune``, ``downstream_tasks/train.py``) and the label
efficiency evaluation builds its loaders here, so that a run's result is a function of its flags
and seed only:

* **Order.** :class:`EpochSampler` is a ``DistributedSampler`` (also in one process) whose order
  is a permutation seeded by ``seed + epoch``; rank ``r`` of ``W`` takes every ``W``-th sample.
  It can start mid-epoch (``set_epoch(epoch, start)``: ``start`` samples of the epoch, counted
  over all ranks, are already done); ``util.training.loop`` saves that position in checkpoints.
* **Augmentation.** :class:`SeededSamples` draws each sample under torch / numpy / python RNGs
  seeded from ``(seed, epoch, index)`` (:func:`derive_seed`), in whichever process reads it, and
  leaves the caller's RNG streams untouched. Random crops and flips therefore do not depend on
  ``--num_workers``, on which worker reads a sample, or on whether the run was resumed; worker
  processes carry no state that matters, so keeping them alive between epochs is safe.
* **No hidden draws.** Each loader has its own ``torch.Generator``: starting an epoch does not
  draw from the global RNG, whose stream (dropout, drop path, mixup) is saved in checkpoints.

With the RNG states restored and the sampler position known, a run stopped after any optimiser
step continues to the same weights as an uninterrupted one (``util.training.loop``).
"""

from __future__ import annotations

import argparse
import contextlib
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def derive_seed(*words: int) -> int:
    """A 63-bit seed from integers (e.g. ``(seed, epoch, index)``), well mixed (NumPy SeedSequence)."""
    entropy = [int(w) % 2**64 for w in words]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) >> 1


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed torch (CPU), numpy and python RNGs with ``seed`` inside the block; restore them after."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


class SeededSamples(Dataset):
    """``dataset`` read with keys ``(epoch, index)``, each sample under RNGs seeded from
    ``(seed, epoch, index)`` (:func:`seeded_rngs`)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        with seeded_rngs(derive_seed(self.seed, epoch, index)):
            return self.dataset[index]


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` order (shuffled with ``seed + epoch``, ``drop_last``) that can start
    mid-epoch and yields ``(epoch, index)`` keys for :class:`SeededSamples`.

    Rank ``r`` of ``W`` takes ``order[start + r :: W]`` for ``(total - start) // W`` samples: from
    ``start = 0`` exactly ``DistributedSampler``'s share, and from a ``start`` saved by a run of
    the same world size exactly the rest of it. A position saved with another world size still
    continues with the samples not yet seen (split evenly, the few left over dropped).

    Args:
        dataset: the dataset (only its length is used).
        num_replicas, rank: world size and this process's rank.
        seed: shuffling seed (the same on every rank).
        shuffle: False for the dataset's own order (tests).
    """

    def __init__(
        self,
        dataset: Any,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        super().__init__(
            dataset,
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=True,
        )
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Epoch to draw, and how many of its samples (all ranks together) are already done."""
        if not 0 <= start <= self.total_size:
            raise ValueError(f"start {start} is outside the epoch's {self.total_size} samples")
        super().set_epoch(epoch)
        self.start = int(start)

    def order(self) -> list[int]:
        """The epoch's order over all ranks (``total_size`` indices)."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(len(self.dataset), generator=g).tolist()  # type: ignore[arg-type]
        else:
            indices = list(range(len(self.dataset)))  # type: ignore[arg-type]
        return indices[: self.total_size]

    def __len__(self) -> int:
        return (self.total_size - self.start) // self.num_replicas

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        end = self.start + len(self) * self.num_replicas
        for index in self.order()[self.start + self.rank : end : self.num_replicas]:
            yield self.epoch, index


def build_train_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    collate_fn: Callable[[list], Any] | None = None,
    pin_memory: bool = False,
    persistent_workers: bool = False,
) -> DataLoader:
    """Training loader: :class:`EpochSampler` over :class:`SeededSamples`, whole batches only.

    Call ``loader.sampler.set_epoch(epoch, start)`` before each epoch. ``persistent_workers``
    (with ``num_workers > 0``) keeps worker processes and what they cache between epochs; it
    cannot change results, since no randomness lives in a worker.
    """
    return DataLoader(
        SeededSamples(dataset, seed),
        batch_size=batch_size,
        sampler=EpochSampler(dataset, world_size, rank, seed),
        drop_last=True,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        generator=torch.Generator().manual_seed(int(seed)),
    )


def train_loader_from_args(dataset: Dataset, args: argparse.Namespace, **kwargs: Any) -> DataLoader:
    """:func:`build_train_loader` with ``--batch_size``, ``--seed``, ``--num_workers``,
    ``--pin_mem`` and ``init_distributed``'s rank and world size; ``kwargs`` add or override.

    Raises:
        ValueError: an epoch would not reach one optimiser step (``--accum_iter`` batches).
    """
    options: dict[str, Any] = dict(
        seed=args.seed,
        rank=args.rank,
        world_size=args.world_size,
        num_workers=args.num_workers,
        pin_memory=args.pin_mem and torch.device(args.device).type == "cuda",
    )
    loader = build_train_loader(dataset, args.batch_size, **{**options, **kwargs})
    accum = getattr(args, "accum_iter", 1)
    if len(loader) < accum:
        raise ValueError(
            f"{len(dataset)} training samples are fewer than one optimiser step needs (batch_size "  # type: ignore[arg-type]
            f"{args.batch_size} x accum_iter {accum} x {args.world_size} processes); lower "
            "--batch_size/--accum_iter or add data"
        )
    return loader


def build_eval_loader(
    dataset: Dataset,
    batch_size: int,
    indices: Sequence[int] | None = None,
    *,
    num_workers: int = 0,
    collate_fn: Callable[[list], Any] | None = None,
    pin_memory: bool = False,
    persistent_workers: bool = False,
) -> DataLoader:
    """Evaluation loader over ``indices`` (default: all, in order), partial last batch kept.

    Its own generator: evaluating draws nothing from the training RNG stream.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=list(range(len(dataset))) if indices is None else list(indices),  # type: ignore[arg-type]
        drop_last=False,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        generator=torch.Generator().manual_seed(0),
    )


def data_source(path: str, data_root: str | None, split: str, flag: str) -> dict[str, Any]:
    """Where a split's data is: ``{"root", "index", "split"}`` for ``build_dataset``.

    ``path`` (the value of ``flag``, e.g. ``--train_path``) is an index file, whose relative image
    paths resolve against ``data_root`` (default: the file's folder), or a dataset root whose
    official ``split`` is used; without ``path``, ``data_root`` and ``split``.

    Raises:
        FileNotFoundError: ``path`` does not exist. ValueError: neither ``path`` nor ``data_root``.
    """
    if path and Path(path).is_file():
        return {"root": data_root or str(Path(path).parent), "index": path, "split": None}
    if path and Path(path).is_dir():
        return {"root": path, "index": None, "split": split}
    if path:
        raise FileNotFoundError(f"{flag} {path}: no such index file or dataset folder")
    if data_root:
        return {"root": data_root, "index": None, "split": split}
    raise ValueError(
        f"no data for the {split} split: give {flag} (index file or dataset folder) or --data_root"
    )
