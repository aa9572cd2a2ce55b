"""Command-line option groups shared by every trainer (MAE style).

Each ``add_*_args(parser)`` adds one argument group to a parser and returns the group;
:func:`add_common_args` adds them all. The trainers add their own groups (``finetune_args``,
``downstream_tasks/dense_args``, ``main_pretrain``), then ``set_defaults(...)`` for their own
defaults. Flags of the paper's code that have no effect here (``--model_type
tensor``, ``--patch_size``, ``--master_port`` ...) are still accepted so the paper's README
commands run as written; :func:`validate_common_args` rejects values we cannot honour with a
message naming the flag.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
#: most DataLoader workers a process starts by default (MAE's recipes use 8-10)
MAX_DEFAULT_WORKERS = 8


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``ArgumentDefaultsHelpFormatter`` that appends ``(default: X)`` only where it says
    something: not when the help text already states its default, not for ``None`` (a default
    the help describes or that is computed later) and not for on/off switches."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "default" in text.lower()
            or action.default is None
            or action.default is argparse.SUPPRESS
            or action.nargs == 0  # store_true / store_false / store_const / count-like switches
        ):
            return action.help
        return super()._get_help_string(action)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask: what ``taskset`` / a batch scheduler's
    cpuset allows, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def default_num_workers(cap: int = MAX_DEFAULT_WORKERS) -> int:
    """Default ``--num_workers``: the CPUs available to this process, shared among the processes
    torchrun starts on this node (``LOCAL_WORLD_SIZE``), one left for the training process
    itself, at most ``cap``; 0 (load in the main process) on a single CPU."""
    per_node = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1), 1)
    return max(0, min(cap, available_cpus() // per_node - 1))


def add_optim_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Batch, schedule, optimiser and numerics flags."""
    g = parser.add_argument_group("optimisation")
    g.add_argument("--batch_size", type=int, default=16, help="batch size per process (per GPU)")
    g.add_argument("--epochs", type=int, default=200)
    g.add_argument(
        "--accum_iter",
        type=int,
        default=1,
        help="gradient accumulation micro-steps per optimiser step (effective batch = "
        "batch_size * accum_iter * world_size)",
    )
    g.add_argument(
        "--lr",
        type=float,
        default=None,
        help="absolute learning rate (default: blr * eff_batch / 256)",
    )
    g.add_argument(
        "--blr", type=float, default=1e-3, help="base lr per 256 samples of effective batch"
    )
    g.add_argument("--min_lr", type=float, default=0.0, help="lr floor of the cosine schedule")
    g.add_argument("--weight_decay", type=float, default=0.05)
    g.add_argument("--warmup_epochs", type=float, default=0, help="linear warm-up length in epochs")
    g.add_argument(
        "--clip_grad",
        type=float,
        default=None,
        help="clip the global gradient L2 norm (off by default)",
    )
    g.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default=None,
        help="autocast dtype (default: bfloat16 on CUDA, float32 on CPU); float16 uses a GradScaler",
    )
    g.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile each transformer block (regional: compile time of one block; "
        "with every --strategy)",
    )
    return g


def add_data_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Dataset location, preprocessing and loader flags."""
    g = parser.add_argument_group("data")
    g.add_argument(
        "--dataset_type",
        default="sentinel",
        help="dataset name: registry names (fmow_sentinel, bigearthnet, eurosat, oscd, segmunich) "
        "or the paper's (sentinel, bigearthnet_finetune, euro_sat)",
    )
    g.add_argument("--train_path", default="", help="training index file (csv/txt) or dataset root")
    g.add_argument("--test_path", default="", help="evaluation index file or dataset root")
    g.add_argument(
        "--data_root",
        default=None,
        help="folder the relative image paths of index files are resolved against "
        "(default: the index file's folder)",
    )
    g.add_argument("--input_size", type=int, default=96, help="image side fed to the model (px)")
    g.add_argument(
        "--num_workers",
        type=int,
        default=default_num_workers(),
        help=f"DataLoader worker processes per training process (default here: "
        f"{default_num_workers()}: the CPUs available to the process, shared by the processes of "
        f"a node, one kept for training, at most {MAX_DEFAULT_WORKERS})",
    )
    g.add_argument("--pin_mem", action="store_true", help="pin loader memory (default on)")
    g.add_argument("--no_pin_mem", action="store_false", dest="pin_mem")
    parser.set_defaults(pin_mem=True)
    g.add_argument(
        "--skip_bad_samples",
        action="store_true",
        help="log and skip unreadable images instead of stopping",
    )
    g.add_argument(
        "--strict_input",
        action="store_true",
        help="refuse image files on another radiometric scale than the model's digital numbers "
        "(e.g. float reflectance 0-1 exports) instead of converting them (one log line says so)",
    )
    g.add_argument(
        "--ben_version",
        default=None,
        choices=("auto", "1", "2"),
        help="BigEarthNet layout: 1 (split CSVs + JSON labels), 2 (reBEN: metadata.parquet + "
        "BigEarthNet-S2/<tile>/<patch>/); default: detected from the folder",
    )
    g.add_argument(
        "--normalization",
        default=None,
        help="normalisation name (default: the dataset's paper default); recorded in checkpoints",
    )
    g.add_argument(
        "--dropped_bands",
        type=int,
        nargs="*",
        default=None,
        help="paper flag: indices of the 13-band input to drop; only '10' (B10, cirrus) is meaningful "
        "since the loaders already return the 12 model bands",
    )
    g.add_argument(
        "--native_size",
        type=int,
        default=None,
        metavar="PX",
        help="image side stored in the files, checked for datasets with a published fixed size "
        "(EuroSAT: 64); set it for other copies (e.g. 32 for small synthetic images), 0 accepts any",
    )
    g.add_argument(
        "--masked_bands",
        type=int,
        nargs="*",
        default=None,
        help="indices (model order) of bands to replace by their mean before the transform",
    )
    return g


def add_runtime_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Output, device, seeding, resume and checkpoint cadence flags."""
    g = parser.add_argument_group("runtime")
    g.add_argument("--output_dir", default="./output_dir", help="checkpoints, args.json, log.jsonl")
    g.add_argument("--log_dir", default=None, help="TensorBoard folder (default: OUTPUT_DIR)")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    g.add_argument("--seed", type=int, default=0, help="seed; each process uses seed + rank")
    g.add_argument("--resume", default="", help="checkpoint to continue training from (exactly)")
    g.add_argument(
        "--auto_resume",
        action="store_true",
        help="continue from OUTPUT_DIR/checkpoint-last.pth if it exists",
    )
    g.add_argument(
        "--start_epoch", type=int, default=0, help="first epoch (overridden by a resume)"
    )
    g.add_argument(
        "--save_every",
        type=int,
        default=10,
        help="keep checkpoint-<epoch>.pth every N epochs and at the end "
        "(checkpoint-last.pth is updated every epoch)",
    )
    g.add_argument(
        "--save_every_steps",
        type=int,
        default=None,
        metavar="N",
        help="also write checkpoint-last.pth every N optimiser steps, with the position in the "
        "epoch: --auto_resume then continues mid-epoch, exactly as if never stopped",
    )
    g.add_argument(
        "--stop_after_steps",
        type=int,
        default=None,
        metavar="N",
        help="save checkpoint-last.pth and exit cleanly after N optimiser steps in all (for "
        "preemptible or time-limited jobs; continue with --auto_resume)",
    )
    g.add_argument("--print_freq", type=int, default=20, help="log every N optimiser micro-steps")
    return g


def add_logging_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Experiment-tracking flags."""
    g = parser.add_argument_group("logging")
    g.add_argument(
        "--wandb",
        default=None,
        metavar="PROJECT",
        help="log to Weights & Biases project PROJECT (offline when no API key is configured)",
    )
    g.add_argument("--wandb_entity", default=None, help="wandb entity (team or user)")
    g.add_argument(
        "--no_progress",
        action="store_true",
        help="no progress bars (they are off anyway when stdout is not a terminal); a log line "
        "with loss, img/s and ETA every --print_freq steps instead",
    )
    g.add_argument(
        "--vis_every",
        type=int,
        default=1,
        help="write a reconstruction PNG every N epochs (0: off)",
    )
    return g


def add_distributed_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Data-parallel strategy and memory flags, and launcher flags (torchrun's environment
    variables decide the world; the launcher flags are accepted for compatibility)."""
    g = parser.add_argument_group("distributed and memory")
    g.add_argument(
        "--strategy",
        choices=("ddp", "fsdp"),
        default="ddp",
        help="data parallelism over torchrun's processes: ddp (full replica per GPU) or fsdp "
        "(FSDP2: parameters, gradients and optimiser state sharded per transformer block; "
        "torch >= 2.6). Checkpoints are the same files either way",
    )
    g.add_argument(
        "--no_reshard_after_forward",
        dest="reshard_after_forward",
        action="store_false",
        help="fsdp: keep each block's gathered parameters from forward to backward (one "
        "all-gather less per block, more memory)",
    )
    g.add_argument(
        "--grad_checkpointing",
        action="store_true",
        help="recompute each transformer block (encoder and decoder) in backward instead of "
        "storing its activations: less memory, ~1/3 more compute",
    )
    g.add_argument(
        "--world_size", type=int, default=1, help="ignored: taken from torchrun's WORLD_SIZE"
    )
    g.add_argument(
        "--local-rank",
        "--local_rank",
        dest="local_rank",
        type=int,
        default=int(os.environ.get("LOCAL_RANK", 0)),
        help="ignored: taken from torchrun's LOCAL_RANK",
    )
    g.add_argument("--dist_on_itp", action="store_true", help="accepted for compatibility; unused")
    g.add_argument("--dist_url", default="env://", help="rendezvous URL (torchrun: env://)")
    g.add_argument(
        "--master_port",
        "--master-port",
        type=int,
        default=None,
        help="accepted for the paper's README commands; give it to torchrun instead",
    )
    return g


def add_paper_compat_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Model-selection flags of the paper's CLIs that have no effect on the tensor models."""
    g = parser.add_argument_group("paper compatibility (no effect)")
    g.add_argument(
        "--model_type",
        default="tensor",
        help="paper flag; only 'tensor' (SpectralGPT's 3D tokens) is implemented",
    )
    g.add_argument(
        "--patch_size", type=int, default=8, help="paper flag; the model name fixes the patch size"
    )
    g.add_argument(
        "--grouped_bands",
        type=int,
        nargs="+",
        action="append",
        default=[],
        help="group_c only; unused",
    )
    return g


def add_common_args(parser: argparse.ArgumentParser, paper_compat: bool = True) -> None:
    """Every shared group: optimisation, data, runtime, logging, distributed and (with
    ``paper_compat``) the paper's model-selection flags that have no effect."""
    shared = (
        add_optim_args,
        add_data_args,
        add_runtime_args,
        add_logging_args,
        add_distributed_args,
    )
    for add in shared:
        add(parser)
    if paper_compat:
        add_paper_compat_args(parser)


def validate_common_args(args: argparse.Namespace) -> None:
    """Reject flag values this implementation cannot honour, naming the flag.

    Raises:
        ValueError: on an unsupported value.
    """
    if getattr(args, "model_type", "tensor") not in (None, "tensor"):
        raise ValueError(
            f"--model_type {args.model_type!r} is not implemented: only 'tensor' (SpectralGPT's 3D-token "
            "models) exists in this re-implementation"
        )
    for flag in ("batch_size", "epochs", "accum_iter"):
        if getattr(args, flag, 1) is not None and getattr(args, flag, 1) < 1:
            raise ValueError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if getattr(args, "save_every", 1) < 1:
        raise ValueError(f"--save_every must be >= 1, got {args.save_every}")
    for flag in ("save_every_steps", "stop_after_steps"):
        if getattr(args, flag, None) is not None and getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if getattr(args, "print_freq", 1) < 1:
        raise ValueError(f"--print_freq must be >= 1, got {args.print_freq}")
    if getattr(args, "warmup_epochs", 0) < 0:
        raise ValueError(f"--warmup_epochs must be >= 0, got {args.warmup_epochs}")
    if getattr(args, "strategy", "ddp") != "ddp":
        from util.training.runtime import check_strategy

        check_strategy(args.strategy)
    if getattr(args, "input_size", 8) % 8 != 0:
        raise ValueError(
            f"--input_size must be a multiple of the patch size 8, got {args.input_size}"
        )


def clamp_warmup(args: argparse.Namespace) -> None:
    """Shorten ``--warmup_epochs`` that would fill the whole run, with a warning.

    A warm-up as long as the run (or longer) never reaches the peak lr / never decays; it becomes
    10 % of ``--epochs`` (the MAE recipes' ratio: 40 of 400 pretraining, 5 of 50 finetuning
    epochs). Call it before any heavy work.
    """
    epochs, warmup = getattr(args, "epochs", None), getattr(args, "warmup_epochs", None)
    if epochs is None or warmup is None or warmup < epochs:
        return
    new = round(0.1 * epochs, 3)
    logger.warning(
        "--warmup_epochs %g is not shorter than --epochs %d: warm-up shortened to %g epochs "
        "(10%% of the run); pass --warmup_epochs explicitly to choose",
        warmup,
        epochs,
        new,
    )
    args.warmup_epochs = new


# datasets whose files hold all 13 Sentinel-2 bands (B10 included)
THIRTEEN_BAND_DATASETS = {"fmow_sentinel", "eurosat"}


def check_band_flags(name: str, dropped_bands: list[int] | None) -> None:
    """Validate ``--dropped_bands`` for dataset ``name`` (loaders return the 12 model bands).

    The paper's ``--dropped_bands 10`` (drop B10 of 13-band files) is accepted and has nothing
    left to do; anything else would remove a band the 12-band model needs.
    """
    dropped = dropped_bands or []
    if not dropped:
        return
    if name in THIRTEEN_BAND_DATASETS and list(dropped) == [10]:
        logger.info(
            "--dropped_bands 10: B10 (cirrus) is already left out by the %s loader, which maps the "
            "file's bands to the 12 model bands by name",
            name,
        )
        return
    if name in THIRTEEN_BAND_DATASETS:
        raise ValueError(
            f"--dropped_bands {' '.join(map(str, dropped))}: only '10' (B10) is supported; the "
            f"{name} loader returns the 12 bands the model expects and dropping others would not fit "
            "the 12-band model"
        )
    raise ValueError(
        f"--dropped_bands {' '.join(map(str, dropped))}: {name} images have no B10 and are read as "
        "the 12 model bands already (the paper's code would drop a real band here); remove the flag"
    )


def resolve_dtype(name: str | None, device: torch.device | str) -> torch.dtype:
    """Map ``--dtype`` to a torch dtype; ``None`` means bfloat16 on CUDA, float32 elsewhere."""
    if name is None:
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"--dtype {name!r} is not one of {sorted(DTYPES)}")
    return DTYPES[name]


def args_to_dict(args: argparse.Namespace) -> dict[str, Any]:
    """Plain, JSON- and ``torch.load(weights_only=True)``-safe copy of the arguments."""
    out: dict[str, Any] = {}
    for key, value in vars(args).items():
        out[key] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)  # torch.device, torch.dtype, Path, ...


def save_args(args: argparse.Namespace, output_dir: str | os.PathLike) -> Path:
    """Write the resolved arguments to ``output_dir/args.json`` and return its path."""
    path = Path(output_dir) / "args.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(args_to_dict(args), indent=2, sort_keys=True) + "\n")
    return path
