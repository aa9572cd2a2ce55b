"""Distributed set-up, seeding and small helpers shared by every training entry point.

Launch modes handled by :func:`init_distributed`:

* ``python main_*.py ...``: one process, no process group.
* ``torchrun --nproc_per_node=N main_*.py ...`` (single or multi node): ``env://`` rendezvous from
  the ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` variables torchrun sets.
  NCCL on CUDA, gloo on CPU.

References: MAE (facebookresearch/mae, util/training/runtime.py) for the overall shape of these helpers.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import os
import random
from collections.abc import Iterator
from typing import Any

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
    """Speed settings for a training process: on CUDA cuDNN autotuning and TF32
    matmuls/convolutions; on CPU :func:`keep_freed_memory`."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        keep_freed_memory()


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc <malloc.h> mallopt parameters


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the OS.

    A CPU train step allocates and frees gigabytes of activations. By default glibc serves every
    block above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and unmaps it on free, so
    each step page-faults all of it in again: about 1.2 million minor faults and 3-5 CPU s of
    kernel time per ViT-B OSCD step at batch 2 (``benchmarks/bench_dense.py --allocator``).
    With mmap off and heap trimming off, freed blocks are reused and later steps take no faults;
    the process's resident memory stays at its peak instead of shrinking between steps, and can
    sit above the default's peak where sizes do not repeat (fragmentation: +5 % for our OSCD
    step, +26 % for the paper's own code, which is why the benchmark reports both set-ups).
    To keep glibc's defaults, set ``MALLOC_TRIM_THRESHOLD_=131072`` in the environment.

    Process-wide; once per process is enough (later calls are cheap). Does nothing (returns
    ``False``) where glibc's ``mallopt`` is missing (macOS, musl), when ``MALLOC_MMAP_MAX_`` /
    ``MALLOC_TRIM_THRESHOLD_`` are set, or when ``LD_PRELOAD`` names another allocator
    (jemalloc, tcmalloc): the user's choice wins.
    """
    if any(k in os.environ for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    if "malloc" in os.environ.get("LD_PRELOAD", ""):  # jemalloc, tcmalloc, mimalloc
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc only (musl has a no-op mallopt)  # noqa: B018
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


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


def parameter_summary(model: nn.Module) -> str:
    """``12.34 M parameters (1.23 M trained)``: the start of a trainer's set-up line."""
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{total / 1e6:.2f} M parameters ({trained / 1e6:.2f} M trained)"


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel and ``torch.compile`` wrappers (in any nesting order).

    FSDP2 (``fully_shard``) and regional compilation change the module in place, so a sharded
    model is returned as is; see :func:`is_sharded`.
    """
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


# --------------------------------------------------------------------------------------------
# wrapping: DDP / FSDP2, activation checkpointing, regional compilation
# --------------------------------------------------------------------------------------------
STRATEGIES = ("ddp", "fsdp")


def _fsdp_api() -> Any:
    """``torch.distributed.fsdp`` when it has FSDP2's public ``fully_shard`` (torch >= 2.6)."""
    try:
        import torch.distributed.fsdp as fsdp
    except ImportError:  # torch built without distributed support
        return None
    return fsdp if hasattr(fsdp, "fully_shard") and hasattr(fsdp, "FSDPModule") else None


def fsdp_available() -> bool:
    """Whether this torch has FSDP2 (``--strategy fsdp``)."""
    return _fsdp_api() is not None


def check_strategy(strategy: str) -> None:
    """Raise ``ValueError`` naming ``--strategy`` for an unknown value or an FSDP-less torch."""
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if strategy == "fsdp" and not fsdp_available():
        raise ValueError(
            f"--strategy fsdp needs torch >= 2.6 (public FSDP2 torch.distributed.fsdp.fully_shard); "
            f"this is torch {torch.__version__}: upgrade torch or use --strategy ddp"
        )


def is_sharded(model: nn.Module) -> bool:
    """True when ``model`` was sharded by FSDP2 (its forward/backward are then collective)."""
    fsdp = _fsdp_api()
    return fsdp is not None and isinstance(unwrap_model(model), fsdp.FSDPModule)


@contextlib.contextmanager
def unsharded(model: nn.Module) -> Iterator[None]:
    """Inside the block an FSDP2-sharded ``model`` holds its full parameters on every rank, so
    its forwards issue no collectives and ranks may run different numbers of them (evaluation of
    whole scenes of different sizes). Entering and leaving are collective; a no-op otherwise."""
    if not is_sharded(model):
        yield
        return
    fsdp = _fsdp_api()
    core = unwrap_model(model)
    units = [m for m in core.modules() if isinstance(m, fsdp.FSDPModule)]
    core.set_reshard_after_forward(False, recurse=True)
    for m in units:
        m.unshard()
    try:
        yield
    finally:
        for m in units:
            m.reshard()
            m.set_reshard_after_forward(
                getattr(m, "reshard_after_forward_default", True), recurse=False
            )


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The timm ``Block`` s of ``model`` (encoder, MAE decoder, a dense model's encoder), in order:
    the units of FSDP sharding, activation checkpointing and regional compilation."""
    from timm.models.vision_transformer import Block

    return [m for m in model.modules() if isinstance(m, Block)]


def _set_grad_checkpointing(model: nn.Module) -> None:
    targets = [m for m in model.modules() if hasattr(m, "set_grad_checkpointing")]
    if not targets:
        raise ValueError(
            f"--grad_checkpointing: {type(model).__name__} has no set_grad_checkpointing() method"
        )
    for m in targets:  # a dense model forwards it to its encoder; setting both is harmless
        m.set_grad_checkpointing(True)


def wrap_model(
    model: nn.Module,
    compile: bool = False,
    distributed: bool = False,
    device: torch.device | str | None = None,
    *,
    strategy: str = "ddp",
    grad_checkpointing: bool = False,
    reshard_after_forward: bool = True,
    param_dtype: torch.dtype | None = None,
) -> nn.Module:
    """The module the training loop calls. Call it after ``model.to(device)`` and BEFORE building
    the optimiser (FSDP replaces the parameters by sharded ``DTensor`` s).

    In this order: activation checkpointing (``model.set_grad_checkpointing()``), regional
    ``torch.compile`` (each transformer block compiled in place, so compile time stays that of one
    block and state-dict keys do not change), then the data-parallel strategy:

    * ``"ddp"``: ``DistributedDataParallel`` when ``distributed`` (a wrapper; keep a reference to
      the unwrapped model for checkpoints and evaluation).
    * ``"fsdp"``: FSDP2 ``fully_shard`` on every transformer block and at the root, in place (the
      returned object IS ``model``), after broadcasting rank 0's weights (as DDP does). On CUDA with ``param_dtype`` bf16/fp16 the
      ``MixedPrecisionPolicy`` all-gathers parameters and computes in ``param_dtype`` and reduces
      gradients in float32. ``reshard_after_forward=False`` keeps gathered block parameters until
      backward (ZeRO-2-like: faster, more memory). In a single process there is nothing to shard
      and the model is returned unsharded.

    Raises:
        ValueError: unknown ``strategy``, FSDP on torch < 2.6, or a model without
            ``set_grad_checkpointing`` under ``grad_checkpointing``.
    """
    check_strategy(strategy)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if grad_checkpointing:
        _set_grad_checkpointing(model)
    blocks = transformer_blocks(model)
    if compile:
        if blocks:
            for blk in blocks:
                blk.compile()
        else:  # no block structure: compile the whole model (unwrap_model strips _orig_mod)
            model = torch.compile(model)
    if not distributed:
        return model
    if strategy == "ddp":
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    fsdp = _fsdp_api()
    kwargs: dict[str, Any] = {}
    if device.type == "cuda" and param_dtype in (torch.bfloat16, torch.float16):
        kwargs["mp_policy"] = fsdp.MixedPrecisionPolicy(
            param_dtype=param_dtype, reduce_dtype=torch.float32
        )
    root = unwrap_model(model)
    # each rank initialised its own weights (seed + rank): start from rank 0's, as DDP does
    with torch.no_grad():
        for t in [*root.parameters(), *root.buffers()]:
            dist.broadcast(t.data, src=0)
    for blk in blocks:
        fsdp.fully_shard(blk, reshard_after_forward=reshard_after_forward, **kwargs)
        blk.reshard_after_forward_default = reshard_after_forward  # restored by `unsharded`
    # the root's own parameters (embeddings, norms, heads) are small and used right at the start
    # of backward: keep them gathered between forward and backward
    fsdp.fully_shard(root, reshard_after_forward=False, **kwargs)
    root.reshard_after_forward_default = False
    return model


def wrap_model_from_args(
    model: nn.Module, args: argparse.Namespace, param_dtype: torch.dtype | None = None
) -> nn.Module:
    """:func:`wrap_model` with the shared flags of ``util.training.args`` (``--compile``, ``--strategy``,
    ``--grad_checkpointing``, ``--no_reshard_after_forward``) and ``init_distributed``'s fields."""
    return wrap_model(
        model,
        getattr(args, "compile", False),
        args.distributed,
        args.device,
        strategy=getattr(args, "strategy", "ddp"),
        grad_checkpointing=getattr(args, "grad_checkpointing", False),
        reshard_after_forward=getattr(args, "reshard_after_forward", True),
        param_dtype=param_dtype,
    )


@contextlib.contextmanager
def no_grad_sync(model: nn.Module, skip: bool = True) -> Iterator[None]:
    """Accumulate gradients locally (no all-reduce / reduce-scatter) while ``skip`` is true:
    DDP's ``no_sync()``, FSDP2's ``set_requires_gradient_sync(False)``; else a no-op."""
    if not skip:
        yield
    elif isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    elif is_sharded(model):
        core = unwrap_model(model)
        core.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            core.set_requires_gradient_sync(True)
    else:
        yield


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
