"""``main_finetune``'s command line: its own flag groups and the resolution of every flag.

:func:`add_finetune_args` adds the finetuning groups (model, recipe, linear probe, subsets,
evaluation, and the paper's flags that have no effect) to a parser that already holds the shared
groups of :mod:`util.training.args`; :func:`resolve_finetune_args` fills the mode-dependent
defaults (from the ``--eval`` / ``--resume`` checkpoint's metadata first) and rejects
inconsistent flags with a message naming them, before any heavy work. The recipe itself (model,
weights, criterion, mixup, parameter groups, datasets) is in ``engine_finetune``.
"""

from __future__ import annotations

import argparse
import logging

from util.training import args as uargs
from util.training.checkpoint import (
    CheckpointError,
    check_training_state,
    find_resume_checkpoint,
    load_checkpoint_file,
)
from util.training.checkpoint_meta import fill_args_from_checkpoint, read_metadata
from util.training.sensor_input import add_sensor_args, sensor_args_from_checkpoint, sensor_of

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "vit_base_patch8_128"
DEFAULT_DATASET = "eurosat"
#: linear-probe base lr per optimiser (lr = blr x effective batch / 256 unless --lr)
PROBE_BLR = {"adamw": 0.1, "lars": 0.1}


def add_finetune_args(parser: argparse.ArgumentParser) -> None:
    """``main_finetune``'s own flags (model, recipe, linear probe, subsets, evaluation) and the
    paper's flags that have no effect here."""
    g = parser.add_argument_group("finetuning")
    g.add_argument(
        "--model",
        default=None,
        help=f"classifier name (default {DEFAULT_MODEL}, or the --eval/--resume checkpoint's); "
        "mae_vit_* names resolve to the classifier of the same geometry",
    )
    g.add_argument(
        "--finetune",
        "--init_from",
        dest="finetune",
        default="",
        help="pretrained checkpoint to start from (SpectralGPT.pth / SpectralGPT+.pth or ours)",
    )
    g.add_argument(
        "--nb_classes", type=int, default=None, help="default: from the dataset (10, 19 or 43)"
    )
    g.add_argument("--drop_path", type=float, default=0.1, help="stochastic depth rate")
    g.add_argument("--layer_decay", type=float, default=0.75, help="layer-wise lr decay")
    g.add_argument(
        "--smoothing", type=float, default=0.1, help="label smoothing (single-label only)"
    )
    g.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (single-label only)")
    g.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (single-label only)")
    g.add_argument("--cutmix_minmax", type=float, nargs=2, default=None)
    g.add_argument("--mixup_prob", type=float, default=1.0)
    g.add_argument("--mixup_switch_prob", type=float, default=0.5)
    g.add_argument("--mixup_mode", default="batch", choices=["batch", "pair", "elem"])
    g.add_argument(
        "--linear_probe",
        action="store_true",
        help="freeze the encoder, train a BatchNorm + linear head (see --probe_optimizer)",
    )
    g.add_argument(
        "--probe_optimizer",
        choices=("adamw", "lars"),
        default="adamw",
        help="linear-probe optimiser: adamw (default blr 0.1, learns at any batch size) or lars "
        "(MAE's recipe for batch 16384, default blr 0.1; barely moves at batch sizes below ~4096)",
    )
    g.add_argument(
        "--eval",
        action="store_true",
        help="only evaluate the classifier in --resume CKPT (or --finetune CKPT); model, input "
        "size, classes, normalisation and dataset come from the checkpoint unless given",
    )
    g.add_argument(
        "--train_fraction",
        type=float,
        default=1.0,
        help="train on a stratified, seeded subset of this share of the training set",
    )
    g.add_argument("--subset_seed", type=int, default=0, help="seed of --train_fraction's subset")
    g.add_argument(
        "--best_metric",
        default=None,
        help="metric that selects checkpoint-best.pth (default acc1, or mAP_micro for multi-label)",
    )
    g.add_argument(
        "--max_steps_per_epoch",
        type=int,
        default=None,
        help="cap training (and evaluation) batches per epoch, for smoke runs",
    )

    add_sensor_args(parser)
    p = parser.add_argument_group("paper compatibility (no effect)")
    p.add_argument("--dist_eval", action="store_true", help="always on: eval is sharded, unpadded")
    p.add_argument("--global_pool", action="store_true", help="always on (mean over all tokens)")
    p.add_argument("--cls_token", action="store_false", dest="global_pool")
    for flag, default in [("--reprob", 0.25), ("--remode", "pixel"), ("--recount", 1)]:
        p.add_argument(flag, default=default, help="dead flag in the paper's code; ignored")
    p.add_argument("--resplit", action="store_true", help="dead flag in the paper's code; ignored")
    p.add_argument("--aa", default=None, help="dead flag in the paper's code; ignored")
    p.add_argument("--color_jitter", default=None, help="dead flag in the paper's code; ignored")


def _checkpoint_defaults(args: argparse.Namespace) -> None:
    """``--eval`` / ``--resume``: model, input size, classes, normalisation and dataset from the
    checkpoint's metadata where the flags are not given (given and different: one-line error);
    ``--native_size`` of the training files where not given (another value is no error)."""
    if args.eval:
        path = args.resume or args.finetune
    else:
        path = find_resume_checkpoint(args.resume, args.auto_resume, args.output_dir)
    if not path:
        return
    ckpt = load_checkpoint_file(path)
    if not args.eval:
        check_training_state(ckpt, path)
    meta = read_metadata(ckpt)
    del ckpt
    sensor_args_from_checkpoint(args, meta, path, resume=not args.eval)
    if meta["task"] not in ("classify", "multilabel"):
        raise CheckpointError(
            f"--{'eval' if args.eval else 'resume'} needs a finetuned classifier checkpoint; "
            f"{path} is a {meta['task']} checkpoint (start finetuning from it with --finetune "
            f"{path})"
        )
    num_classes = (meta.get("model_kwargs") or {}).get("num_classes") or (
        len(meta["classes"]) if meta.get("classes") else None
    )
    dataset = meta.get("dataset")
    if dataset is not None and args.dataset_type is not None:
        from util.data import resolve_name

        try:  # the paper's alias for the same dataset is not a difference
            if resolve_name(args.dataset_type) == dataset:
                dataset = args.dataset_type
        except KeyError as e:
            raise ValueError(f"--dataset_type: {e.args[0]}") from None
    if meta.get("linear_probe") and not args.eval and not args.linear_probe:
        logger.info("--resume %s: a linear-probe run; continuing it as one (--linear_probe)", path)
        args.linear_probe = True
    fill_args_from_checkpoint(
        args,
        path,
        {
            "model": meta.get("model"),
            "input_size": meta.get("input_size"),
            "nb_classes": num_classes,
            "normalization": meta.get("normalization"),
            "dataset_type": dataset,
        },
    )
    if args.native_size is None and meta.get("native_size"):  # the training files' size: a
        args.native_size = int(meta["native_size"])  # default only (other copies may differ)
        logger.info("from %s: --native_size %d", path, args.native_size)


def resolve_finetune_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill mode-dependent defaults and reject inconsistent flags with a message naming them.

    Runs before any heavy work: checkpoint metadata (``--eval``/``--resume``), defaults, warm-up
    clamped to the run, flag ranges.
    """
    if args.eval and not (args.resume or args.finetune):
        raise ValueError("--eval needs a checkpoint: give --resume CKPT (or --finetune CKPT)")
    _checkpoint_defaults(args)
    if args.model is None:
        args.model = DEFAULT_MODEL
    if args.dataset_type is None:
        args.dataset_type = DEFAULT_DATASET
    # --input_size may still be None here (= the model's own size, checked when it is built)
    uargs.validate_common_args(
        argparse.Namespace(**{**vars(args), "input_size": args.input_size or 8})
    )
    uargs.clamp_warmup(args)
    if args.blr is None:
        # finetune: MAE's recipe; probe: LARS as MAE, AdamW's default chosen from runs (README)
        args.blr = PROBE_BLR[args.probe_optimizer] if args.linear_probe else 1e-3
    if args.weight_decay is None:
        args.weight_decay = 0.0 if args.linear_probe else 0.05
    if not 0.0 < args.train_fraction <= 1.0:
        raise ValueError(f"--train_fraction must be in (0, 1], got {args.train_fraction}")
    if not 0.0 < args.layer_decay <= 1.0:
        raise ValueError(f"--layer_decay must be in (0, 1], got {args.layer_decay}")
    from util.data import resolve_name

    try:
        name = resolve_name(args.dataset_type)
    except KeyError as e:
        raise ValueError(f"--dataset_type: {e.args[0]}") from None
    uargs.check_band_flags(name, args.dropped_bands)
    sensor_of(args)  # --sensor / --bands: fail early
    return args
