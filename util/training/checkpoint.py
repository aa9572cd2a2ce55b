"""Checkpoint writing (atomic) and reading (weights-only by default).

Files written by :func:`save_training_state` load with ``torch.load(path, weights_only=True)``:
arguments are stored as a plain dict and every RNG state as tensors, lists and numbers.

Layout of a training checkpoint::

    {"model": state dict (no "module." / "_orig_mod." prefixes), "optimizer": ..., "scaler": ...,
     "epoch": int, "global_step": int, "rng": [per-rank RNG states], "args": dict,
     "data": {"normalization": str, "bands": [..], "input_size": int},
     "meta": checkpoint_meta(...), "format": "spectralgpt-v2",
     "loop": {"epoch": int, "batches": int, "samples": int, ...}}   # mid-epoch files only

``epoch`` is the last finished epoch (-1: none). A checkpoint written mid-epoch (``--save_every_steps``,
``--stop_after_steps``) also has ``loop``: in epoch ``loop["epoch"]``, ``batches`` micro-batches
per rank (``samples`` over all ranks) are done; :func:`restore_training_state` continues there.

``meta`` (format v2) says how to rebuild the model and its input: factory name and module, the
factory's keyword arguments, task, input size, bands, normalisation, class names and dataset.
:func:`read_metadata` returns it for any checkpoint (derived for v1 files and the paper's);
``python -m util.training.checkpoint info CKPT`` prints it.

The paper's checkpoints (``{"model", "optimizer", "epoch", "scaler", "args": Namespace}``) load
too: ``argparse.Namespace`` is allow-listed for the weights-only unpickler. Resuming
(:func:`load_training_state`) needs this project's full training state; other files initialise
weights only (``--finetune`` / ``--init_from``).

The same layout is written under every strategy: for an FSDP2-sharded model, :func:`model_state_dict`
and :func:`optimizer_state_dict` gather full tensors to rank 0 (on CPU) through
``torch.distributed.checkpoint.state_dict`` (``full_state_dict=True, cpu_offload=True``), and the
optimiser state is stored with the integer parameter ids of ``optimizer.state_dict()``. So a file
written by N FSDP ranks loads in one process or under DDP, and the other way round; loading into a
sharded model keeps each rank's shard of the full tensors (:func:`load_model_state`).

References: torchtitan (atomic, resumable checkpoints), MAE (util/misc.save_model).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from models_vit_tensor import unwrap_state_dict
from util.training.args import args_to_dict
from util.training.cli import UserError
from util.training.runtime import get_rank, get_world_size, is_sharded, unwrap_model

logger = logging.getLogger(__name__)

FORMAT = "spectralgpt-v2"
#: formats written by this project (v1: before ``meta``); anything else is a foreign file
OWN_FORMATS = ("spectralgpt-v1", FORMAT)
#: entries a checkpoint needs for ``--resume`` (exact continuation)
TRAINING_STATE_KEYS = ("model", "optimizer", "epoch", "global_step")


class CheckpointError(UserError):
    """A checkpoint file is missing, unreadable, or not what the caller needs (names the file)."""


class NonFiniteWeightsError(FloatingPointError):
    """The weights about to be saved hold NaN/inf; nothing was written."""


# --------------------------------------------------------------------------------------------
# atomic file writing
# --------------------------------------------------------------------------------------------
def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask (read by setting and restoring it; there is no getter before 3.13)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}."


def _remove_stale_tmp(path: Path) -> None:
    """Delete temp files left next to ``path`` by a writer that was killed mid-write."""
    for stale in path.parent.glob(_tmp_prefix(path) + "*.tmp"):
        try:
            stale.unlink()
            logger.info("removed an incomplete checkpoint write: %s", stale)
        except OSError:
            pass


def _atomic_write(path: Path, write: Callable[[str], None]) -> Path:
    """Run ``write(tmp)`` on a temp file next to ``path``, then rename it onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(path)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; honour the umask like open()
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EFBIG):
            raise OSError(
                e.errno, f"cannot write checkpoint {path}: {e.strerror} (nothing was replaced)"
            ) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def save_checkpoint(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` with ``torch.save`` atomically: temp file in the same folder, fsync, rename.

    A crash (even SIGKILL) at any moment leaves either the previous file or the new one at
    ``path``, never a truncated file.
    """

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())

    return _atomic_write(Path(path), write)


def _atomic_alias(src: Path, dst: Path) -> None:
    """Make ``dst`` a copy of ``src`` atomically (hard link when possible, no extra I/O)."""

    def write(tmp: str) -> None:
        os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:  # no hard links on this file system: copy
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())

    _atomic_write(dst, write)


# --------------------------------------------------------------------------------------------
# RNG states in weights-only-loadable form
# --------------------------------------------------------------------------------------------
def get_rng_state() -> dict[str, Any]:
    """This process's torch / CUDA / numpy / python RNG states as tensors, lists and numbers."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {"version": int(py_version), "state": list(py_state), "gauss_next": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            torch.cuda.set_rng_state(cuda_states[0])
    n = state["numpy"]
    np.random.set_state(
        (
            n["name"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def _gather_rng_states() -> list[dict[str, Any]]:
    """RNG state of every rank (collective: call it on all ranks)."""
    mine = get_rng_state()
    if get_world_size() == 1:
        return [mine]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, mine)
    return gathered


# --------------------------------------------------------------------------------------------
# model / optimiser state under any strategy (plain, DDP, FSDP2)
# --------------------------------------------------------------------------------------------
def _full_options(**kwargs: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the optimiser's parameters in ``optimizer.state_dict()`` id order."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full, unprefixed state dict of ``model`` (wrapped or not).

    Collective for an FSDP2-sharded model (call it on every rank): rank 0 gets full CPU tensors,
    the other ranks an empty dict.
    """
    core = unwrap_model(model)
    if not is_sharded(core):
        return core.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(core, options=_full_options(cpu_offload=True))


def optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` layout (integer ids, full tensors) under any strategy.

    Collective for an FSDP2-sharded model: rank 0 gets the full state, other ranks ``{}``.
    """
    core = unwrap_model(model)
    if not is_sharded(core):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    osd = get_optimizer_state_dict(core, optimizer, options=_full_options(cpu_offload=True))
    if not osd:
        return {}
    ids = {name: i for i, name in enumerate(_param_names(core, optimizer))}
    return {
        "state": {ids[name]: v for name, v in osd["state"].items()},
        "param_groups": [
            {**g, "params": [ids[n] for n in g["params"]]} for g in osd["param_groups"]
        ],
    }


def _like(full: torch.Tensor, ref: Any) -> torch.Tensor:
    """``full`` laid out like ``ref``: this rank's shard when ``ref`` is a ``DTensor`` (sliced from
    the full tensor every rank holds, no communication), else ``full`` itself."""
    if not hasattr(ref, "device_mesh") or not torch.is_tensor(full):
        return full
    from torch.distributed.tensor import distribute_tensor

    full = full.to(device=ref.device, dtype=ref.dtype)
    return distribute_tensor(full, ref.device_mesh, ref.placements, src_data_rank=None)


def save_best_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    epoch: int,
    metrics: dict[str, Any],
    args: argparse.Namespace,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the weights-only ``checkpoint-best.pth`` (``format``, ``model``, ``epoch``,
    ``metrics``, ``args`` + ``extra``, e.g. ``data`` and ``meta``) atomically on rank 0.

    Collective (call it on every rank): an FSDP2-sharded model is gathered first.
    """
    state = model_state_dict(model)
    if get_rank() == 0:
        obj = {
            "format": FORMAT,
            "model": state,
            "epoch": epoch,
            "metrics": metrics,
            "args": args_to_dict(args),
        }
        obj.update(extra or {})
        save_checkpoint(path, obj)


def save_epoch_checkpoints(
    output_dir: str | os.PathLike,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    optim_step: Any,
    args: argparse.Namespace,
    best: dict[str, Any],
    metrics: dict[str, Any],
    is_best: bool,
    numbered: bool,
    extra: dict[str, Any] | None = None,
) -> Path | None:
    """End of a supervised epoch (finetuning, dense tasks): the training state
    (``checkpoint-last.pth`` and, if ``numbered``, ``checkpoint-<epoch>.pth``) with ``best`` and
    ``metrics``, and ``checkpoint-best.pth`` when ``is_best``. Collective; ``extra`` (``data``,
    ``meta``) goes into both files. Returns :func:`save_training_state`'s path."""
    extra = extra or {}
    path = save_training_state(
        output_dir,
        epoch,
        model,
        optimizer,
        optim_step,
        args,
        extra={"best": best, "metrics": metrics, **extra},
        numbered=numbered,
    )
    if is_best:
        save_best_checkpoint(
            Path(output_dir) / "checkpoint-best.pth", model, epoch, metrics, args, extra
        )
    return path


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> Any:
    """Load a full state dict into ``model`` (wrapped or not). Returns ``load_state_dict``'s
    missing/unexpected keys.

    When ``model`` is FSDP2-sharded every rank passes the full dict (every rank reads the file)
    and keeps its own shard of each tensor (``distribute_tensor(src_data_rank=None)``): no
    communication, where ``set_model_state_dict(full_state_dict=True)`` would scatter every
    tensor from rank 0 again.
    """
    core = unwrap_model(model)
    if not is_sharded(core):
        return core.load_state_dict(state, strict=strict)
    current = core.state_dict()
    sharded = {k: _like(v, current[k]) if k in current else v for k, v in state.items()}
    return core.load_state_dict(sharded, strict=strict)


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Inverse of :func:`optimizer_state_dict` (every rank passes the full state when sharded;
    each keeps its shard of the per-parameter tensors, as in :func:`load_model_state`)."""
    core = unwrap_model(model)
    if not is_sharded(core):
        optimizer.load_state_dict(state)
        return
    params = [p for g in optimizer.param_groups for p in g["params"]]
    n_saved = sum(len(g["params"]) for g in state["param_groups"])
    if n_saved != len(params) or len(state["param_groups"]) != len(optimizer.param_groups):
        raise ValueError(
            f"the saved optimiser has {n_saved} parameters in {len(state['param_groups'])} groups, "
            f"this one {len(params)} in {len(optimizer.param_groups)}"
        )
    sharded = {}
    for i, per_param in state["state"].items():
        p = params[int(i)]
        sharded[i] = {
            k: _like(v, p) if torch.is_tensor(v) and v.shape == p.shape else v
            for k, v in per_param.items()
        }
    optimizer.load_state_dict({"state": sharded, "param_groups": state["param_groups"]})


# --------------------------------------------------------------------------------------------
# training state
# --------------------------------------------------------------------------------------------
def save_training_state(
    output_dir: str | os.PathLike,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    optim_step: Any,
    args: argparse.Namespace | dict[str, Any],
    extra: dict[str, Any] | None = None,
    numbered: bool = True,
) -> Path | None:
    """Write ``checkpoint-<epoch>.pth`` (if ``numbered``) and ``checkpoint-last.pth``.

    Collective when distributed (RNG states are gathered from every rank, FSDP shards are gathered
    to rank 0); only rank 0 writes.

    Args:
        output_dir: destination folder.
        epoch: the epoch just finished (resume starts at ``epoch + 1``).
        model: the model, wrapped or not (prefixes are stripped).
        optimizer: its optimiser.
        optim_step: the :class:`util.training.optim.OptimStep` (scaler + update count).
        args: arguments (stored as a plain dict).
        extra: more top-level entries, e.g. ``{"data": {"normalization": ..., "bands": [...],
            "input_size": ...}, "meta": checkpoint_meta(...)}``, and ``loop`` for a mid-epoch
            position (module docstring).
        numbered: also keep ``checkpoint-<epoch>.pth`` (else only ``checkpoint-last.pth``).

    Returns:
        Path of the checkpoint on rank 0, ``None`` on other ranks.

    Raises:
        NonFiniteWeightsError: the weights hold NaN/inf; nothing is written, so
            ``checkpoint-last.pth`` keeps the last good state (the message names it).
    """
    output_dir = Path(output_dir)
    check_weights_finite(model, output_dir / "checkpoint-last.pth", epoch)
    rng = _gather_rng_states()
    model_state = model_state_dict(model)  # collective under FSDP
    optim_state = optimizer_state_dict(model, optimizer)
    if get_rank() != 0:
        return None
    step_state = optim_step.state_dict()
    obj = {
        "format": FORMAT,
        "model": model_state,
        "optimizer": optim_state,
        "scaler": step_state["scaler"],
        "epoch": int(epoch),
        "global_step": int(step_state["num_updates"]),
        "rng": rng,
        "args": args_to_dict(args) if isinstance(args, argparse.Namespace) else dict(args),
    }
    obj.update(extra or {})
    last = output_dir / "checkpoint-last.pth"
    if numbered:
        path = save_checkpoint(output_dir / f"checkpoint-{epoch}.pth", obj)
        _atomic_alias(path, last)
    else:
        path = save_checkpoint(last, obj)
    loop = obj.get("loop")
    where = f"epoch {loop['epoch']} batch {loop['batches']}" if loop else f"epoch {epoch}"
    logger.info("saved %s (%s, step %d)", path, where, obj["global_step"])
    return path


def check_weights_finite(model: nn.Module, last_good: Path, epoch: int) -> None:
    """Raise :class:`NonFiniteWeightsError` if any parameter or buffer of ``model`` is NaN/inf.

    Collective when distributed (the flag is all-reduced), so every rank stops together. One host
    sync per call: meant for checkpoint time, not the training loop.
    """
    local = {  # FSDP shards (DTensors) are checked locally, the flag is then reduced
        k: (t.to_local() if hasattr(t, "to_local") else t)
        for k, t in unwrap_model(model).state_dict().items()
        if t.is_floating_point()
    }
    if not local:
        return
    ok = torch.stack([torch.isfinite(t).all() for t in local.values()]).all().float()
    if get_world_size() > 1:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    if bool(ok):
        return
    bad = [k for k, t in local.items() if not bool(torch.isfinite(t).all())] or ["(another rank)"]
    good = (
        f"the last good checkpoint is {last_good}; resume from it with --resume {last_good} and a "
        "lower --blr/--lr or --clip_grad 1.0"
        if last_good.is_file()
        else "no checkpoint of this run was written yet"
    )
    raise NonFiniteWeightsError(
        f"the weights after epoch {epoch} hold NaN/inf ({len(bad)} tensors, e.g. {bad[0]}): the last "
        f"update diverged; nothing was saved and {good}"
    )


def load_checkpoint_file(path: str | os.PathLike, weights_only: bool = True) -> dict[str, Any]:
    """``torch.load`` on CPU with clear errors for a missing or unreadable file.

    ``argparse.Namespace`` (the paper's ``args`` entry) is allowed by the weights-only unpickler.

    Raises:
        FileNotFoundError: no such file. CheckpointError: unreadable, or not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path}" + (" (that is a folder)" if path.is_dir() else "")
        )
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except PermissionError:
        raise
    except Exception as e:  # zip errors, unpickling errors, truncated files ...
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(e).__name__}: {e}. The file is corrupt, truncated, "
            "not a PyTorch checkpoint, or pickles objects other than tensors and plain containers "
            "(such files are not loaded: unpickling can run arbitrary code)"
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def load_weights_file(
    path: str | os.PathLike, weights_only: bool = True
) -> dict[str, torch.Tensor]:
    """State dict from a paper checkpoint (``{"model": ...}``), one of ours, or a bare state dict.

    Raises:
        FileNotFoundError: the file does not exist.
        RuntimeError: the file cannot be read or holds no state dict.
    """
    obj = load_checkpoint_file(path, weights_only=weights_only)
    state = unwrap_state_dict(obj)  # "model"/"state_dict" entry or bare; DDP/compile prefixes off
    if not state:
        raise CheckpointError(
            f"checkpoint {path} contains no model weights (keys: {sorted(obj)[:10]})"
        )
    return state


def find_resume_checkpoint(
    resume: str, auto_resume: bool, output_dir: str | os.PathLike
) -> Path | None:
    """``--resume PATH`` if given, else ``output_dir/checkpoint-last.pth`` under ``--auto_resume``."""
    if resume:
        return Path(resume)
    if auto_resume:
        last = Path(output_dir) / "checkpoint-last.pth"
        if last.is_file():
            return last
        logger.info("--auto_resume: no %s yet, starting from scratch", last)
    return None


def check_training_state(ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` unless ``ckpt`` is this project's full training state."""
    missing = [k for k in TRAINING_STATE_KEYS if k not in ckpt]
    fmt = ckpt.get("format")
    model = ckpt.get("model")
    if fmt in OWN_FORMATS and not missing and isinstance(model, dict) and model:
        return
    why = (
        f"format {fmt!r}, not one of this project's ({', '.join(OWN_FORMATS)})"
        if fmt not in OWN_FORMATS
        else f"missing {', '.join(missing)}"
        if missing
        else "its 'model' entry is empty"
    )
    raise CheckpointError(
        f"--resume {path}: not a full training state of this project ({why}); resuming needs the "
        "model, optimizer, epoch and step written by main_pretrain/main_finetune. To start from "
        f"its weights use --finetune {path} (alias --init_from), which reports what it loaded"
    )


@dataclass
class ResumeState:
    """Where a restored run continues (:func:`restore_training_state`).

    Attributes:
        epoch: the epoch to run next (the one in progress for a mid-epoch checkpoint).
        global_step: optimiser updates done.
        batches: micro-batches per rank of ``epoch`` already done (0: start it afresh).
        samples: samples of ``epoch`` already done, all ranks together.
        loop: the checkpoint's ``loop`` entry (``{}`` at an epoch boundary).
        rng: this rank's RNG states, or None (not saved, or another world size); restore them with
            :func:`set_rng_state` right before training continues.
        best: the checkpoint's ``best`` record, if any.
    """

    epoch: int
    global_step: int
    batches: int = 0
    samples: int = 0
    loop: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] | None = None
    best: dict[str, Any] | None = None


def restore_training_state(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    optim_step: Any = None,
) -> ResumeState:
    """Restore model, optimiser, scaler and update count from a training checkpoint; return where
    training continues and this rank's RNG states (not applied: the caller restores them when it
    is about to continue, so that nothing in between draws from them).

    Works for a plain, DDP or FSDP2-sharded ``model`` whatever strategy and world size wrote the
    file (every rank reads it). RNG states come back only when the checkpoint was written with
    the same world size (otherwise a warning is logged and the RNGs keep their seeds). The file
    must be this project's full training state (:func:`check_training_state`); the paper's files
    and bare weights initialise a model through ``--finetune`` / ``--init_from`` instead.

    Raises:
        FileNotFoundError / CheckpointError: missing or unreadable file, not a full training
        state, or mismatching weights.
    """
    ckpt = load_checkpoint_file(path)
    check_training_state(ckpt, path)
    target = unwrap_model(model)
    state = unwrap_state_dict(ckpt["model"])
    try:
        load_model_state(target, state)
    except RuntimeError as e:
        raise CheckpointError(
            f"the weights in {path} do not fit this model ({type(target).__name__}): {e}. "
            "To start a new image size from it use --resume_different_size"
        ) from e

    if optimizer is not None and "optimizer" in ckpt:
        try:
            load_optimizer_state(target, optimizer, ckpt["optimizer"])
        except (ValueError, KeyError, IndexError) as e:
            logger.warning("optimizer state in %s does not match (%s); starting it fresh", path, e)
    global_step = int(ckpt.get("global_step", 0))
    if optim_step is not None:
        optim_step.load_state_dict({"scaler": ckpt.get("scaler"), "num_updates": global_step})
    rng = None
    if ckpt.get("rng"):
        if len(ckpt["rng"]) == get_world_size():
            rng = ckpt["rng"][get_rank()]
        else:
            logger.warning(
                "%s was written by %d processes, this run has %d: RNG states not restored",
                path,
                len(ckpt["rng"]),
                get_world_size(),
            )
    loop = dict(ckpt.get("loop") or {})
    epoch = int(ckpt.get("epoch", -1)) + 1
    resume = ResumeState(epoch, global_step, rng=rng, best=ckpt.get("best"))
    if loop:
        resume.epoch, resume.loop = int(loop["epoch"]), loop
        resume.batches, resume.samples = int(loop["batches"]), int(loop["samples"])
        logger.info("resumed from %s (epoch %d, %d batches done)", path, resume.epoch, resume.batches)
    else:
        logger.info("resumed from %s (epoch %d done)", path, epoch - 1)
    return resume


def load_training_state(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    optim_step: Any = None,
    restore_rng: bool = True,
    filter_fn: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]
    | None = None,
) -> tuple[int, int]:
    """:func:`restore_training_state`, RNG states applied at once (``restore_rng``); returns
    ``(start_epoch, global_step)``. ``filter_fn`` is accepted for compatibility and unused."""
    resume = restore_training_state(path, model, optimizer, optim_step)
    if restore_rng and resume.rng is not None:
        set_rng_state(resume.rng)
    return resume.epoch, resume.global_step


# --------------------------------------------------------------------------------------------
# metadata (format v2): how to rebuild the model and its input from a checkpoint alone
# --------------------------------------------------------------------------------------------
META_KEYS = (
    "model",
    "model_module",
    "model_kwargs",
    "task",
    "input_size",
    "bands",
    "normalization",
    "classes",
    "dataset",
)
TASKS = ("pretrain", "classify", "multilabel", "segment", "change")


def checkpoint_meta(
    model: str | None,
    model_module: str,
    task: str,
    input_size: int | None,
    bands: list[str] | tuple[str, ...] | None = None,
    normalization: str | None = None,
    classes: list[str] | tuple[str, ...] | None = None,
    dataset: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``meta`` entry of a v2 checkpoint (plain, weights-only-loadable types).

    Args:
        model: factory name (``create_model(model, **model_kwargs)`` in ``model_module``).
        model_module: ``models_mae_spectral``, ``models_vit_tensor`` or
            ``downstream_tasks.models_dense``.
        task: one of :data:`TASKS`.
        input_size: image side the model was built for (px).
        bands: band names in input order (default ``util.data.sentinel2.MODEL_BANDS``).
        normalization: name of the input normalisation (``util.data.transforms.NORMALIZATIONS``).
        classes: class names, in output order (``[]`` for pretraining).
        dataset: registry name of the training data.
        model_kwargs: the factory's keyword arguments (``img_size``, ``num_classes``, ...).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if bands is None:
        from util.data.sentinel2 import MODEL_BANDS

        bands = MODEL_BANDS
    from util.training.args import _plain

    return {
        "model": model,
        "model_module": model_module,
        "model_kwargs": _plain(dict(model_kwargs or {})),
        "task": task,
        "input_size": None if input_size is None else int(input_size),
        "bands": list(bands),
        "normalization": normalization,
        "classes": list(classes or []),
        "dataset": dataset,
    }


def _plain_args(args: Any) -> dict[str, Any]:
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return dict(args) if isinstance(args, dict) else {}


def _meta_from_weights(state: dict[str, Any]) -> dict[str, Any]:
    """What the tensors say: decoder present, classes (head rows), input size (spatial table)."""
    out: dict[str, Any] = {}
    if not isinstance(state, dict) or not state:
        return out
    keys = list(state)
    out["has_decoder"] = any(k.startswith(("decoder", "mask_token")) for k in keys)
    head = next((state[k] for k in keys if k.endswith("head.weight") or k == "head.1.weight"), None)
    if torch.is_tensor(head) and head.ndim == 2:
        out["num_classes"] = int(head.shape[0])
    pos = next((state[k] for k in keys if k.endswith("pos_embed_spatial")), None)
    if torch.is_tensor(pos) and pos.ndim == 3:
        side = math.isqrt(int(pos.shape[1]))
        if side * side == pos.shape[1]:
            out["input_size"] = side * 8  # patch size 8 (every released model)
    return out


def read_metadata(ckpt_or_path: dict[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's ``meta`` (:func:`checkpoint_meta` keys), for any file we can read.

    v2 files return their ``meta``; v1 files (``args`` + ``data``) and the paper's files
    (``args`` Namespace, tensors only) get it derived, with what cannot be known set to ``None``
    (e.g. the paper's model names, which are not this project's factories).
    """
    ckpt = ckpt_or_path if isinstance(ckpt_or_path, dict) else load_checkpoint_file(ckpt_or_path)
    if isinstance(ckpt.get("meta"), dict):
        meta = dict.fromkeys(META_KEYS)
        meta.update(ckpt["meta"])
        return meta
    args = _plain_args(ckpt.get("args"))
    data = ckpt.get("data") if isinstance(ckpt.get("data"), dict) else {}
    weights = _meta_from_weights(unwrap_state_dict(ckpt))
    own = ckpt.get("format") in OWN_FORMATS
    pretrain = weights.get("has_decoder", False) or "mask_ratio" in args
    module = "models_mae_spectral" if pretrain else "models_vit_tensor"
    name = args.get("model")
    if name is not None:
        import models_mae_spectral
        import models_vit_tensor

        known = (models_mae_spectral if pretrain else models_vit_tensor).MODELS
        if not own or name not in known:
            name = None  # the paper's names are not this project's factories
    input_size = data.get("input_size") or weights.get("input_size")
    if own and args.get("input_size"):
        input_size = input_size or args["input_size"]
    classes = list(data.get("classes") or [])
    dataset = data.get("dataset")
    if dataset is None and own and args.get("dataset_type"):
        try:
            from util.data.datasets import resolve_name

            dataset = resolve_name(str(args["dataset_type"]))
        except KeyError:
            dataset = None
    num_classes = weights.get("num_classes") or (len(classes) if classes else None)
    if pretrain:
        task = "pretrain"
    elif dataset == "bigearthnet":
        task = "multilabel"
    else:
        task = "classify"
    kwargs: dict[str, Any] = {}
    if input_size:
        kwargs["img_size"] = int(input_size)
    if not pretrain and num_classes:
        kwargs["num_classes"] = int(num_classes)
    from util.data.sentinel2 import MODEL_BANDS

    return checkpoint_meta(
        model=name,
        model_module=module,
        task=task,
        input_size=input_size,
        bands=data.get("bands") or list(MODEL_BANDS),
        normalization=data.get("normalization"),
        classes=classes,
        dataset=dataset,
        model_kwargs=kwargs,
    )


def fill_args_from_checkpoint(
    args: argparse.Namespace, path: str | os.PathLike, values: dict[str, Any]
) -> dict[str, Any]:
    """Take flag values from a checkpoint's metadata where the user gave none.

    Args:
        args: parsed arguments; a flag counts as "not given" when its value is ``None``.
        path: the checkpoint (for the messages).
        values: ``{flag dest: value recorded in the checkpoint}`` (``None``: not recorded).

    Returns:
        ``{flag: value}`` of the flags filled in (the caller says so in its log).

    Raises:
        ValueError: a flag was given with a value that differs from the checkpoint's (one line
            naming the flag, both values and the file).
    """
    taken: dict[str, Any] = {}
    for flag, recorded in values.items():
        if recorded is None:
            continue
        given = getattr(args, flag, None)
        if given is None:
            setattr(args, flag, recorded)
            taken[flag] = recorded
        elif given != recorded:
            raise ValueError(
                f"--{flag} {given} differs from the {recorded} stored in {path}; leave --{flag} "
                "out to use the checkpoint's value"
            )
    if taken:
        logger.info(
            "from %s: %s",
            path,
            ", ".join(f"--{k} {v}" for k, v in taken.items()),
        )
    return taken


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20, algorithm: str = "sha256") -> str:
    """Hex digest of a file (to check a download against a published checksum; Zenodo lists
    md5)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def describe_checkpoint(
    path: str | os.PathLike, sha256: bool = False, md5: bool = False
) -> dict[str, Any]:
    """Summary of a checkpoint: format, epoch/step, metadata, tensor and parameter counts."""
    path = Path(path)
    ckpt = load_checkpoint_file(path)
    state = unwrap_state_dict(ckpt) if isinstance(ckpt, dict) else {}
    tensors = {k: v for k, v in state.items() if torch.is_tensor(v)}
    info: dict[str, Any] = {
        "file": str(path),
        "bytes": path.stat().st_size,
        "format": ckpt.get("format", "unknown (not written by this project; e.g. the paper's)"),
        "entries": sorted(str(k) for k in ckpt),
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
        "resumable": ckpt.get("format") in OWN_FORMATS
        and all(k in ckpt for k in TRAINING_STATE_KEYS),
        "tensors": len(tensors),
        "parameters": int(sum(v.numel() for v in tensors.values())),
        "has_decoder": any(k.startswith("decoder") for k in tensors),
        "meta": read_metadata(ckpt),
    }
    if isinstance(ckpt.get("metrics"), dict):
        info["metrics"] = {k: v for k, v in ckpt["metrics"].items() if isinstance(v, int | float)}
    if sha256:
        info["sha256"] = file_sha256(path)
    if md5:
        info["md5"] = file_sha256(path, algorithm="md5")
    return info


def get_args_parser() -> argparse.ArgumentParser:
    """``python -m util.training.checkpoint info CKPT [--json] [--sha256] [--md5]``."""
    from util.training.cli import add_debug_arg

    parser = argparse.ArgumentParser(
        prog="python -m util.training.checkpoint",
        description="Inspect a checkpoint: metadata (model, input size, bands, normalisation, "
        "classes), format, epoch, tensor and parameter counts.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print a checkpoint's metadata and summary")
    info.add_argument("checkpoint", help="a .pth file (ours or the released SpectralGPT(+).pth)")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.add_argument("--sha256", action="store_true", help="also hash the file (SHA-256)")
    info.add_argument(
        "--md5", action="store_true", help="also hash the file (MD5, as Zenodo lists)"
    )
    add_debug_arg(info)
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the ``info`` command and print its result; returns it."""
    result = describe_checkpoint(args.checkpoint, sha256=args.sha256, md5=args.md5)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return result
    meta = result.pop("meta")
    for key, value in result.items():
        print(f"{key + ':':16s}{value}")
    print("meta:")
    for key, value in meta.items():
        if key == "classes" and value and len(value) > 12:
            value = f"{len(value)} classes: {', '.join(map(str, value[:6]))}, ..."
        print(f"  {key + ':':16s}{value}")
    return {**result, "meta": meta}


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv`` and run :func:`main` with the shared error handling."""
    from util.training.cli import run, setup_logging

    args = get_args_parser().parse_args(argv)
    setup_logging(args.debug)
    return run(main, args)


if __name__ == "__main__":
    cli()
