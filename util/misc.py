"""Distributed set-up, seeding and small helpers shared by every training entry point.

Launch modes handled by :func:`init_distributed`:

* ``python main_*.py ...``: one process, no process group.
* ``torchrun --nproc_per_node=N main_*.py ...`` (single or multi node): ``env://`` rendezvous from
  the ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` variables torchrun sets.
  NCCL on CUDA, gloo on CPU.

References: MAE (facebookresearch/mae, util/misc.py) for the overall shape of these helpers.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import random

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)


def default_device() -> str:
    """Return ``"cuda"`` when a CUDA device is visible, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def init_distributed(args: argparse.Namespace) -> argparse.Namespace:
    """Initialise (or skip) the process group and pick this process's device.

    Sets ``args.distributed``, ``args.rank``, ``args.world_size``, ``args.local_rank``,
    ``args.device`` (a ``torch.device``) and ``args.dist_backend``.

    Args:
        args: parsed arguments; ``args.device`` (``"cuda"``, ``"cpu"``, ``"cuda:1"`` ... or
            ``None`` for automatic) and optionally ``args.dist_url`` are read.

    Returns:
        The same namespace, updated in place.

    Raises:
        RuntimeError: if ``--device cuda`` is requested on a machine without CUDA.
    """
    requested = getattr(args, "device", None) or default_device()
    device_type = torch.device(requested).type
    if device_type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "--device cuda was requested but no CUDA device is available; use --device cpu"
        )

    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    if "RANK" in os.environ and env_world > 1:
        args.rank = int(os.environ["RANK"])
        args.world_size = env_world
        args.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        args.distributed = True
    else:
        args.rank, args.world_size, args.local_rank = 0, 1, 0
        args.distributed = False

    if device_type == "cuda":
        # One GPU per process: the local rank picks it (an explicit index only when single-process).
        index = args.local_rank if args.distributed else torch.device(requested).index or 0
        torch.cuda.set_device(index)
        args.device = torch.device("cuda", index)
    else:
        args.device = torch.device(device_type)

    args.dist_backend = "nccl" if device_type == "cuda" else "gloo"
    if args.distributed and not dist.is_initialized():
        dist.init_process_group(
            backend=args.dist_backend,
            init_method=getattr(args, "dist_url", None) or "env://",
            world_size=args.world_size,
            rank=args.rank,
            timeout=datetime.timedelta(minutes=30),
            device_id=args.device if device_type == "cuda" else None,
        )
        logger.info(
            "distributed init: rank %d/%d (local %d) on %s, backend %s",
            args.rank,
            args.world_size,
            args.local_rank,
            args.device,
            args.dist_backend,
        )
    return args


def setup_backends(device: torch.device | str) -> None:
    """Speed settings for a CUDA training process: cuDNN autotuning, TF32 matmuls/convolutions."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def cleanup_distributed() -> None:
    """Destroy the default process group if one was created."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def get_rank() -> int:
    """Rank of this process (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in single-process runs)."""
    return get_rank() == 0


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel and ``torch.compile`` wrappers (in any nesting order)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def wrap_model(
    model: nn.Module, compile: bool, distributed: bool, device: torch.device
) -> nn.Module:
    """The module the training loop calls: ``torch.compile`` first (if asked), then DDP.

    Keep a reference to the unwrapped ``model`` for checkpoints and evaluation helpers.
    """
    if compile:
        model = torch.compile(model)
    if distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return model


def seed_everything(seed: int) -> int:
    """Seed python, numpy and torch (all devices) with ``seed + rank``; returns the seed used."""
    seed = int(seed) + get_rank()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed


def all_reduce_mean(value: torch.Tensor | float) -> torch.Tensor | float:
    """Average a tensor (or a python number) over all processes; identity when not distributed.

    A python number comes back as a python float (this syncs with the host); a tensor comes back
    as a new tensor on its own device (no host sync).
    """
    world = get_world_size()
    if world == 1:
        return value
    is_tensor = torch.is_tensor(value)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = value.detach().clone() if is_tensor else torch.tensor(float(value), device=device)
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= world
    return t if is_tensor else t.item()


def barrier() -> None:
    """Synchronise all processes (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
