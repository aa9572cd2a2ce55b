"""Optimiser, learning-rate schedule and THE optimisation step, shared by every training loop.

* :func:`effective_lr` - ``lr = blr * batch_size * accum_iter * world_size / 256`` unless ``--lr``.
* :func:`pretrain_param_groups` - the paper's weight-decay rule (timm ``param_groups_weight_decay``).
* :func:`layer_decay_param_groups` - layer-wise lr decay of finetuning (timm ``param_groups_layer_decay``).
* :func:`create_adamw` - AdamW, fused kernels where the parameters' device supports them.
* :func:`build_scheduler` - timm ``CosineLRScheduler`` stepped per optimiser update, equivalent to
  MAE's per-iteration warm-up + half-cosine (spec §6.1), honouring ``lr_scale`` in param groups.
* :class:`OptimStep` - autocast, gradient accumulation (DDP ``no_sync`` on non-final micro-steps),
  GradScaler for float16 only, clipping, ``zero_grad(set_to_none=True)``, scheduler update, and a
  device-side non-finite-loss flag checked only when asked (log steps, epoch end).

References: MAE (util/lr_sched.py, util/misc.NativeScalerWithGradNormCount), timm (optim, scheduler),
nanoGPT (a short, visible training step).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch import nn

from util.training.runtime import no_grad_sync

logger = logging.getLogger(__name__)


def effective_batch_size(args: argparse.Namespace) -> int:
    """``batch_size * accum_iter * world_size``."""
    return args.batch_size * args.accum_iter * getattr(args, "world_size", 1)


def effective_lr(args: argparse.Namespace) -> float:
    """Absolute learning rate: ``--lr`` if given, else ``blr * eff_batch / 256`` (spec §6.1).

    Also stores the result in ``args.lr`` so it is logged and checkpointed.
    """
    if args.lr is None:
        args.lr = args.blr * effective_batch_size(args) / 256
    return args.lr


def pretrain_param_groups(
    model: nn.Module, weight_decay: float, skip_list: Collection[str] = ()
) -> list[dict[str, Any]]:
    """Weight-decay groups of the paper's pretraining (spec §6.4).

    No decay for parameters with ``ndim <= 1`` or names ending in ``.bias``; decay for every other
    parameter, including position tables and ``mask_token`` unless their names are in
    ``skip_list`` (e.g. ``model.no_weight_decay()`` when ``--no_wd_pos`` is given).
    """
    return param_groups_weight_decay(
        model, weight_decay=weight_decay, no_weight_decay_list=tuple(skip_list)
    )


def layer_decay_param_groups(
    model: nn.Module, weight_decay: float, layer_decay: float
) -> list[dict[str, Any]]:
    """Layer-wise lr decay groups of the trainable parameters (timm, from the model's
    ``group_matcher``; spec §4.4): finetuning of classifiers and dense models."""
    return param_groups_layer_decay(
        model,
        weight_decay=weight_decay,
        no_weight_decay_list=tuple(model.no_weight_decay()),
        layer_decay=layer_decay,
    )


def _fused_supported(params: Iterable[torch.Tensor]) -> bool:
    devices = {p.device.type for p in params}
    if not devices:
        return False
    # torch >= 2.4 has fused AdamW for CPU as well as CUDA/MPS/XPU; all parameters must be
    # floating point and on one kind of supported device.
    return len(devices) == 1 and devices <= {"cuda", "cpu", "mps", "xpu"}


def create_adamw(
    param_groups: Iterable[dict[str, Any]] | Iterable[torch.Tensor],
    lr: float,
    betas: tuple[float, float] = (0.9, 0.95),
    weight_decay: float = 0.0,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW with fused kernels when every parameter lives on a device that supports them.

    Args:
        param_groups: param groups (dicts, e.g. from :func:`pretrain_param_groups`) or parameters.
        lr: base learning rate (groups without their own ``lr`` use it).
        betas: Adam betas; the paper's pretraining uses ``(0.9, 0.95)``.
        weight_decay: decay for groups that do not set their own.
        fused: force fused on/off; ``None`` picks it automatically.
    """
    groups = list(param_groups)
    params = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    if fused is None:
        fused = _fused_supported(params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused)


def build_scheduler(
    optimizer: torch.optim.Optimizer, args: argparse.Namespace, steps_per_epoch: int
) -> CosineLRScheduler:
    """Per-update warm-up + half-cosine schedule, equal to MAE's ``adjust_learning_rate``.

    ``lr(k) = lr * k / W`` for update ``k < W = warmup_epochs * steps_per_epoch``, then
    ``min_lr + (lr - min_lr) * (1 + cos(pi * (k - W) / (T - W))) / 2`` with ``T = epochs *
    steps_per_epoch``; groups carrying ``lr_scale`` get ``lr * lr_scale``. Call
    ``scheduler.step_update(k)`` after the k-th update (``OptimStep`` does it).

    Args:
        optimizer: optimiser whose groups hold the base lr (``effective_lr``) as ``lr``.
        args: reads ``epochs``, ``warmup_epochs``, ``min_lr``.
        steps_per_epoch: optimiser updates per epoch (``len(loader) // accum_iter``).

    A fractional ``warmup_epochs`` is rounded to a whole number of updates.
    """
    if steps_per_epoch < 1:
        raise ValueError(
            f"an epoch has {steps_per_epoch} optimiser steps: the dataset is smaller than "
            "batch_size * accum_iter * world_size"
        )
    warmup_t = round(args.warmup_epochs * steps_per_epoch)
    total_t = args.epochs * steps_per_epoch
    if warmup_t > total_t:
        raise ValueError(f"--warmup_epochs {args.warmup_epochs} exceeds --epochs {args.epochs}")
    return CosineLRScheduler(
        optimizer,
        t_initial=max(1, total_t - warmup_t),
        lr_min=args.min_lr,
        warmup_t=warmup_t,
        warmup_lr_init=0.0,
        warmup_prefix=True,
        t_in_epochs=False,
    )


def autocast(device_type: str, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast for ``dtype`` on ``device_type`` (a no-op for float32): training and evaluation."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device_type).type, dtype=dtype)


def _total_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 gradient norm without modifying the gradients (torch >= 2.6 API, else clip by inf).

    Under FSDP2 the gradients are sharded ``DTensor`` s: the norm is then reduced over the ranks
    (``full_tensor()``) so every rank gets the norm of the whole model's gradient.
    """
    if hasattr(torch.nn.utils, "get_total_norm"):
        norm = torch.nn.utils.get_total_norm(
            [p.grad for p in params if p.grad is not None], foreach=True
        )
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    return torch.nn.utils.clip_grad_norm_(params, float("inf"), foreach=True)  # scale factor is 1


def _clip_grads(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm to ``max_norm``; return the norm before clipping."""
    if hasattr(torch.nn.utils, "clip_grads_with_norm_"):
        norm = _total_norm(params)
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)
        return norm
    return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)


@dataclass
class StepOutput:
    """Result of one micro-step: ``loss`` (detached, un-divided), ``grad_norm`` (tensor on the
    final micro-step, else None), ``stepped`` (optimiser updated), ``extras`` (closure's extras)."""

    loss: torch.Tensor
    grad_norm: torch.Tensor | None
    stepped: bool
    extras: Any = None


class NonFiniteLossError(FloatingPointError):
    """Raised when a non-finite loss was seen since the last check."""


class OptimStep:
    """The single optimisation-step helper.

    Example::

        step = OptimStep(model, optimizer, scheduler, device_type="cuda", dtype=torch.bfloat16,
                         accum_iter=4, clip_grad=1.0)
        for it, batch in enumerate(loader):
            out = step(it, lambda: model(batch)[0])
            if it % print_freq == 0:
                step.check_finite(f"epoch {epoch}, step {it}")

    The loss closure runs under :meth:`autocast`; backward of ``loss / accum_iter`` runs without
    gradient synchronisation on non-final micro-steps (DDP ``no_sync()``, FSDP2
    ``set_requires_gradient_sync(False)``, :func:`util.training.runtime.no_grad_sync`). Clipping and the
    logged norm use the global norm (reduced over ranks for FSDP's sharded gradients). On the final micro-step: unscale
    (float16 only), clip or measure the gradient norm, ``optimizer.step``, ``scaler.update``,
    ``zero_grad(set_to_none=True)``, ``num_updates += 1`` and ``scheduler.step_update(num_updates)``.
    Nothing in a call synchronises with the host.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: CosineLRScheduler | None = None,
        device_type: str = "cpu",
        dtype: torch.dtype = torch.float32,
        accum_iter: int = 1,
        clip_grad: float | None = None,
        compute_grad_norm: bool = True,
    ) -> None:
        if accum_iter < 1:
            raise ValueError(f"accum_iter must be >= 1, got {accum_iter}")
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.device_type = torch.device(device_type).type
        self.dtype = dtype
        self.accum_iter = accum_iter
        self.clip_grad = clip_grad
        self.compute_grad_norm = compute_grad_norm
        self.num_updates = 0
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=dtype == torch.float16)
        self._params = [p for g in optimizer.param_groups for p in g["params"]]
        self._nonfinite: torch.Tensor | None = None
        self._window_start = "start of training"

    # -- numerics --------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for ``dtype`` (a no-op for float32); use it for evaluation too."""
        return autocast(self.device_type, self.dtype)

    def check_finite(self, where: str) -> None:
        """Raise :class:`NonFiniteLossError` if any loss since the last check was NaN/inf.

        This is the only host synchronisation of the helper; call it on log steps and at epoch end.

        Args:
            where: a description of the current position ("epoch 3, step 120"), used in the message.
        """
        if self._nonfinite is not None and bool(self._nonfinite):
            raise NonFiniteLossError(
                f"non-finite loss between {self._window_start} and {where}; lower the learning rate "
                "(--blr), enable --clip_grad, or try --dtype bfloat16/float32"
            )
        self._window_start = where

    # -- the step --------------------------------------------------------------------------
    def __call__(self, it: int, loss_closure: Callable[[], Any]) -> StepOutput:
        """Run one micro-step.

        Args:
            it: micro-step index (within the epoch or global); the update happens when
                ``(it + 1) % accum_iter == 0``.
            loss_closure: runs the forward and returns the loss tensor or ``(loss, extras)``.
        """
        final = (it + 1) % self.accum_iter == 0
        with no_grad_sync(self.model, skip=not final):
            with self.autocast():
                out = loss_closure()
            loss, extras = out if isinstance(out, tuple) else (out, None)
            bad = ~torch.isfinite(loss.detach())
            self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
            loss_for_grad = loss / self.accum_iter if self.accum_iter > 1 else loss
            self.scaler.scale(loss_for_grad).backward()

        grad_norm = None
        if final:
            grad_norm = self._update()
        return StepOutput(loss=loss.detach(), grad_norm=grad_norm, stepped=final, extras=extras)

    def _update(self) -> torch.Tensor | None:
        grad_norm = None
        if self.clip_grad is not None or self.compute_grad_norm:
            self.scaler.unscale_(self.optimizer)  # no-op when the scaler is disabled
            if self.clip_grad is not None:
                grad_norm = _clip_grads(self._params, self.clip_grad)
            else:
                grad_norm = _total_norm(self._params)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.num_updates += 1
        if self.scheduler is not None:
            self.scheduler.step_update(self.num_updates)
        return grad_norm

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"scaler": ..., "num_updates": ...}`` for exact resume."""
        return {"scaler": self.scaler.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore scaler and update count, and put the schedule's lr back where it was."""
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.num_updates = int(state.get("num_updates", 0))
        if self.scheduler is not None:
            self.scheduler.step_update(self.num_updates)

    @property
    def lr(self) -> float:
        """Largest learning rate over the param groups (what MAE/finetune logs)."""
        return max(g["lr"] for g in self.optimizer.param_groups)


def build_optimisation(
    model: nn.Module,
    param_groups: list[dict[str, Any]],
    args: argparse.Namespace,
    num_batches: int,
    device_type: str,
    dtype: torch.dtype,
    betas: tuple[float, float] = (0.9, 0.999),
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[torch.optim.Optimizer, CosineLRScheduler, OptimStep, int]:
    """AdamW (unless ``optimizer`` is given) + per-update schedule + :class:`OptimStep` for a loop
    of ``num_batches`` batches per epoch (capped by ``--max_steps_per_epoch``), as the finetuning
    entry points wire them.

    Returns:
        ``(optimizer, scheduler, step, train_steps)``: ``train_steps`` is the number of micro-steps
        to run per epoch - whole accumulation windows only, so no gradient is carried into the next
        epoch and each epoch makes exactly the ``steps // accum_iter`` updates the schedule assumes.
    """
    if optimizer is None:
        optimizer = create_adamw(param_groups, lr=args.lr, betas=betas)
    steps = num_batches
    if getattr(args, "max_steps_per_epoch", None):
        steps = min(steps, args.max_steps_per_epoch)
    scheduler = build_scheduler(optimizer, args, steps // args.accum_iter)
    step = OptimStep(
        model,
        optimizer,
        scheduler,
        device_type=device_type,
        dtype=dtype,
        accum_iter=args.accum_iter,
        clip_grad=args.clip_grad,
    )
    return optimizer, scheduler, step, steps // args.accum_iter * args.accum_iter
