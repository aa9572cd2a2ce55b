"""The training skeleton of every trainer: process set-up, resume, the epoch loop, checkpoints.

``main_pretrain``, ``main_finetune`` and ``downstream_tasks/train.py`` build their data, model and
optimiser, then hand the loop to :class:`TrainLoop` with two callables: ``train_epoch`` (runs the
engine's ``train_one_epoch``) and ``end_epoch`` (evaluation, figures, the summary line). The loop
owns everything a run's continuity depends on:

* resuming from ``--resume`` / ``--auto_resume``: weights, optimiser, update count, the sampler
  position and, right before training continues, the RNG states;
* checkpoints: ``checkpoint-last.pth`` (+ numbered, + ``checkpoint-best.pth``) at every epoch end,
  and mid-epoch every ``--save_every_steps`` optimiser steps with the position in the epoch;
* ``--stop_after_steps N``: save and return cleanly after ``N`` optimiser steps in all
  (preemptible or time-limited jobs continue with ``--auto_resume``).

Together with :mod:`util.training.loader` (seeded samples, epoch-seeded order, no hidden RNG draws)
a run stopped after any optimiser step, or killed after a checkpoint, continues to the same
weights and optimiser state as an uninterrupted run (``tests/test_resume.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from util.training.args import args_to_dict
from util.training.checkpoint import (
    check_training_state,
    load_checkpoint_file,
    restore_training_state,
    save_epoch_checkpoints,
    save_training_state,
    set_rng_state,
)
from util.training.checkpoint_meta import fill_args_from_checkpoint, read_metadata
from util.training.logger import TrainLogger
from util.training.optim import OptimStep
from util.training.runlock import RunLock
from util.training.runtime import (
    cleanup_distributed,
    init_distributed,
    is_main_process,
    seed_everything,
    setup_backends,
)

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def training_process(args: argparse.Namespace) -> Iterator[Path]:
    """Process set-up of a trainer (training and ``--eval`` alike): process group and device
    (``init_distributed``), quiet logs on ranks > 0, seeds (``--seed`` + rank), backend settings,
    the output folder (yielded) held by this run alone (:class:`RunLock`: a second run on the same
    ``--output_dir`` stops with one line naming the first); the lock is released and the process
    group destroyed on the way out, also after an error."""
    init_distributed(args)
    try:
        if not is_main_process():
            logging.getLogger().setLevel(logging.WARNING)
        seed_everything(args.seed)
        setup_backends(args.device)
        output_dir = Path(args.output_dir)
        with RunLock(output_dir):  # rank 0 locks (creating the folder); every rank learns
            yield output_dir
    finally:
        cleanup_distributed()


def checkpoint_flags(
    args: argparse.Namespace,
    path: str | Path,
    names: tuple[str, ...] = (),
    training_state: bool = True,
) -> dict[str, Any]:
    """Metadata of checkpoint ``path`` (which must be a full training state if
    ``training_state``, i.e. resumable); the flags ``names`` (metadata keys) that were not given
    take the checkpoint's values (given and different: a one-line error naming the flag)."""
    ckpt = load_checkpoint_file(path)
    if training_state:
        check_training_state(ckpt, path)
    meta = read_metadata(ckpt)
    fill_args_from_checkpoint(args, path, {name: meta.get(name) for name in names})
    return meta


def train_logger(args: argparse.Namespace) -> TrainLogger:
    """The run's :class:`TrainLogger` from the shared logging flags."""
    return TrainLogger(
        args.output_dir,
        args.log_dir,
        args.wandb,
        args.wandb_entity,
        args_to_dict(args),
        progress=False if getattr(args, "no_progress", False) else None,
    )


def print_main(*parts: Any) -> None:
    """``print`` on rank 0 only (the lines a user reads: set-up summary, epochs, results)."""
    if is_main_process():
        print(*parts, flush=True)


def scalars(results: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics dict (per-class lists left out)."""
    return {k: v for k, v in results.items() if isinstance(v, int | float)}


def epoch_record(train_stats: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """``train_*`` statistics and ``val_*`` metrics of an epoch, as logged."""
    return {
        **{f"train_{k}": v for k, v in train_stats.items()},
        **{f"val_{k}": v for k, v in scalars(metrics).items()},
    }


@dataclass
class EpochEnd:
    """What ``end_epoch`` hands back: the evaluation metrics (stored in the epoch's checkpoints and
    logged as ``val_*``; ``{}`` when it was not evaluated) and whether they are the best so far
    (:meth:`TrainLoop.select`)."""

    metrics: dict[str, Any] = field(default_factory=dict)
    is_best: bool = False


#: ``train_epoch(epoch, start, on_update)``: run the engine over ``epoch`` from micro-batch
#: ``start``, calling ``on_update(batches_done)`` after each optimiser update and stopping when it
#: returns True; returns the epoch's statistics
TrainEpoch = Callable[[int, int, Callable[[int], bool]], dict[str, Any]]


class TrainLoop:
    """Epoch loop, resume and checkpoints of one training run.

    Args:
        args: parsed flags (``output_dir``, ``epochs``, ``save_every``, ``save_every_steps``,
            ``stop_after_steps``, ``world_size`` ...); ``args.start_epoch`` is set on resume.
        model: the model as trained (wrapped or not; checkpoints store it unwrapped).
        optimizer, step: its optimiser and :class:`OptimStep`.
        loader: the training loader of :mod:`util.training.loader`.
        log: the run's logger.
        epoch_batches: micro-batches per rank in an epoch (after ``--max_steps_per_epoch``, whole
            accumulation windows): the engine's last update of an epoch comes after this many.
        extra: checkpoint entries (``data``, ``meta``).
        best_metric: metric that selects ``checkpoint-best.pth`` (higher is better); None for no
            best checkpoint (pretraining).
    """

    def __init__(
        self,
        args: argparse.Namespace,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        step: OptimStep,
        loader: DataLoader,
        log: TrainLogger,
        *,
        epoch_batches: int,
        extra: dict[str, Any],
        best_metric: str | None = None,
    ) -> None:
        self.args, self.model, self.optimizer, self.step = args, model, optimizer, step
        self.loader, self.log, self.extra = loader, log, extra
        log.accum_iter = step.accum_iter  # step lines count optimiser steps
        self.epoch_batches = epoch_batches
        self.output_dir = Path(args.output_dir)
        self.best_metric = best_metric
        self.best: dict[str, Any] | None = (
            {"epoch": -1, best_metric: -math.inf} if best_metric else None
        )
        self.batch_samples = loader.batch_size * args.world_size  # samples per micro-step
        self.start_epoch, self.start_batch, self.start_sample = args.start_epoch, 0, 0
        self.checkpoint: Path | None = None  # the last checkpoint written (rank 0)
        self.stats: dict[str, Any] = {}  # the last epoch's training statistics
        self.metrics: dict[str, Any] = {}  # the last epoch's evaluation metrics
        self.stopped = False  # --stop_after_steps ended the run before --epochs
        self._rng: dict[str, Any] | None = None
        self._epoch = self._batch0 = self._sample0 = 0
        self._stop = self._stopped_mid = False

    # -- resume ----------------------------------------------------------------------------
    def resume(self, path: str | Path | None) -> None:
        """Continue the run saved in ``path`` (None: a fresh run). The RNG states are applied by
        :meth:`run`, right before the first batch."""
        if path is None:
            return
        r = restore_training_state(path, self.model, self.optimizer, self.step)
        self.start_epoch, self._rng = r.epoch, r.rng
        if self.best is not None and r.best is not None:
            self.best = r.best
        if r.loop:
            same = (r.loop.get("batch_size"), r.loop.get("world_size")) == (
                self.loader.batch_size,
                self.args.world_size,
            )
            batches, samples = int(r.loop["batches"]), int(r.loop["samples"])
            batches = batches if same else samples // self.batch_samples
            batches -= batches % self.step.accum_iter
            if not same:
                logger.warning(
                    "%s was written with another batch size or world size: epoch %d continues "
                    "after its first %d samples, not exactly as the interrupted run would have",
                    path, r.epoch, samples,
                )  # fmt: skip
            if batches >= self.epoch_batches:
                logger.warning(
                    "%s: epoch %d was complete; starting epoch %d", path, r.epoch, r.epoch + 1
                )
                self.start_epoch += 1
            else:
                self.start_batch, self.start_sample = batches, samples
        self.args.start_epoch = self.start_epoch
        self.log.mark_resume(self.start_epoch, r.global_step, path, self.start_batch)

    # -- the loop --------------------------------------------------------------------------
    def select(self, epoch: int, metrics: dict[str, Any], force: bool = False) -> bool:
        """Record ``metrics`` of ``epoch`` as the best if its ``best_metric`` beats the best so
        far (or ``force``: e.g. the last epoch of a run without validation); returns whether it
        did."""
        if self.best is None:
            return False
        value = metrics.get(self.best_metric)
        if not force and not (value is not None and value > self.best[self.best_metric]):
            return False
        self.best = {"epoch": epoch, **scalars(metrics)}
        return True

    def run(self, train_epoch: TrainEpoch, end_epoch: Callable[[int, dict], EpochEnd]) -> TrainLoop:
        """Train epochs ``start_epoch .. epochs - 1``: ``train_epoch``, then ``end_epoch``, then
        the epoch's checkpoints and log record (statistics as they are without
        a ``best_metric``, else ``train_*`` and ``val_*``). Returns ``self`` (``stats``, ``best``,
        ``checkpoint``, ``stopped``)."""
        args = self.args
        self.log.start_run(self.start_epoch, args.epochs)
        if self._rng is not None:
            set_rng_state(self._rng)  # nothing between here and the first batch draws from them
            self._rng = None
        if self.start_epoch >= args.epochs:
            logger.info(
                "nothing to train: epoch %d of --epochs %d is done", self.start_epoch, args.epochs
            )
        limit = getattr(args, "stop_after_steps", None)
        if limit and self.step.num_updates >= limit:
            logger.info(
                "--stop_after_steps %d: %d steps are done already", limit, self.step.num_updates
            )
            self.stopped = self.start_epoch < args.epochs
            return self
        for epoch in range(self.start_epoch, args.epochs):
            first = epoch == self.start_epoch
            self._epoch = epoch
            self._batch0, self._sample0 = (self.start_batch, self.start_sample) if first else (0, 0)
            self.loader.sampler.set_epoch(epoch, self._sample0)  # type: ignore[union-attr]
            self.stats = train_epoch(epoch, self._batch0, self._on_update)
            if self._stopped_mid:
                break
            end = end_epoch(epoch, self.stats)
            self.metrics = end.metrics
            self._save_epoch(epoch, end)
            record = self.stats if self.best is None else epoch_record(self.stats, end.metrics)
            self.log.log_epoch(epoch, record, step=self.step.num_updates)
            if self._stop:
                break
        self.stopped = self._stop and self.step.num_updates < self._total_updates()
        if self.stopped:
            logger.info(
                "stopped after %d optimiser steps (--stop_after_steps); continue with "
                "--auto_resume or --resume %s",
                self.step.num_updates, self.output_dir / "checkpoint-last.pth",
            )  # fmt: skip
        return self

    def _total_updates(self) -> int:
        return self.args.epochs * (self.epoch_batches // self.step.accum_iter)

    def _on_update(self, batches: int) -> bool:
        """After an optimiser update, ``batches`` micro-batches into the epoch: save a mid-epoch
        checkpoint when due; True stops the epoch (``--stop_after_steps`` reached)."""
        updates = self.step.num_updates
        limit = getattr(self.args, "stop_after_steps", None)
        self._stop = self._stop or bool(limit and updates >= limit)
        if batches >= self.epoch_batches:
            return False  # the epoch's last update: its end saves (and stops)
        every = getattr(self.args, "save_every_steps", None)
        if self._stop or (every and updates % every == 0):
            self._save_position(batches)
        self._stopped_mid = self._stop
        return self._stop

    def _best_extra(self) -> dict[str, Any]:
        return {} if self.best is None else {"best": self.best}

    def _save_position(self, batches: int) -> None:
        samples = self._sample0 + (batches - self._batch0) * self.batch_samples
        loop = {"epoch": self._epoch, "batches": batches, "samples": samples,
                "batch_size": self.loader.batch_size, "world_size": self.args.world_size}  # fmt: skip
        self.checkpoint = save_training_state(
            self.output_dir, self._epoch - 1, self.model, self.optimizer, self.step, self.args,
            extra={**self.extra, **self._best_extra(), "loop": loop}, numbered=False,
        )  # fmt: skip

    def _save_epoch(self, epoch: int, end: EpochEnd) -> None:
        args = self.args
        numbered = (epoch + 1) % args.save_every == 0 or epoch + 1 == args.epochs
        parts = (self.output_dir, epoch, self.model, self.optimizer, self.step, args)
        if self.best is None:
            self.checkpoint = save_training_state(*parts, extra=self.extra, numbered=numbered)
        else:
            self.checkpoint = save_epoch_checkpoints(
                *parts, self.best, end.metrics, end.is_best, numbered, extra=self.extra
            )
