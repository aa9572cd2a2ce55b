"""Checkpoint writing (atomic) and reading (weights-only by default).

Files written by :func:`save_training_state` load with ``torch.load(path, weights_only=True)``:
arguments are stored as a plain dict and every RNG state as tensors, lists and numbers.

Layout of a training checkpoint::

    {"model": state dict (no "module." / "_orig_mod." prefixes), "optimizer": ..., "scaler": ...,
     "epoch": int, "global_step": int, "rng": [per-rank RNG states], "args": dict,
     "data": {"normalization": str, "bands": [..], "input_size": int},
     "meta": checkpoint_meta.checkpoint_meta(...), "format": "spectralgpt-v2",
     "loop": {"epoch": int, "batches": int, "samples": int, ...}}   # mid-epoch files only

``epoch`` is the last finished epoch (-1: none). A checkpoint written mid-epoch (``--save_every_steps``,
``--stop_after_steps``) also has ``loop``: in epoch ``loop["epoch"]``, ``batches`` micro-batches
per rank (``samples`` over all ranks) are done; :func:`restore_training_state` continues there.

``meta`` (format v2) says how to rebuild the model and its input: factory name and module, the
factory's keyword arguments, task, input size, bands, normalisation, class names and dataset.
:func:`util.training.checkpoint_meta.read_metadata` returns it for any checkpoint (derived for v1
files and the paper's); ``python -m util.training.checkpoint_meta info CKPT`` prints it.

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
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from models_convert import unwrap_state_dict
from util.training.args import args_to_dict
from util.training.atomic_files import AtomicWriteError, atomic_alias, atomic_write
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


class CheckpointWriteError(CheckpointError, AtomicWriteError):
    """A checkpoint could not be written (disk full, quota, permissions, I/O error); the previous
    file at that path is intact and no temp file is left (one line naming the file; exit 2)."""


class NonFiniteWeightsError(FloatingPointError):
    """The weights about to be saved hold NaN/inf; nothing was written."""


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` with ``torch.save`` atomically: temp file in the same folder, fsync, rename.

    A crash (even SIGKILL) at any moment leaves either the previous file or the new one at
    ``path``, never a truncated file.

    Raises:
        CheckpointWriteError: the write failed (full disk, quota, permissions ...; one line
            naming the file); the previous file is intact.
    """

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(Path(path), write, what="checkpoint", error=CheckpointWriteError)


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
        atomic_alias(path, last, what="checkpoint", error=CheckpointWriteError)
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
        loop: the checkpoint's position in ``epoch`` (module docstring; ``{}``: epoch start).
        rng: this rank's RNG states, or None (not saved, or another world size); restore them with
            :func:`set_rng_state` right before training continues.
        best: the checkpoint's ``best`` record, if any.
    """

    epoch: int
    global_step: int
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
    epoch = int(loop["epoch"]) if loop else int(ckpt.get("epoch", -1)) + 1
    where = f"epoch {epoch}, {loop['batches']} batches done" if loop else f"epoch {epoch - 1} done"
    logger.info("resumed from %s (%s)", path, where)
    return ResumeState(epoch, global_step, loop, rng, ckpt.get("best"))


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
