"""``downstream_tasks/train.py``'s command line: its own flag groups and their resolution.

:func:`add_dense_args` adds the dense groups (task and model, validation split, evaluation) to a
parser that already holds the shared groups of :mod:`util.training.args`;
:func:`resolve_dense_args` fills the task-dependent defaults and rejects inconsistent flags with a
message naming them; :func:`eval_checkpoint_defaults` takes ``--eval``'s model, options and input
size from the checkpoint. The recipe itself (model, weights, evaluation) is in
``downstream_tasks.engine_dense``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from downstream_tasks.dense_data import CLASS_WEIGHTS, TASKS, default_crop_repeats
from downstream_tasks.engine_dense import PROTOCOLS
from evaluation.metrics import DENSE_MAIN_METRIC
from util.training.args import validate_common_args
from util.training.checkpoint import load_checkpoint_file
from util.training.sensor_input import add_sensor_args, sensor_args_from_checkpoint, sensor_of

logger = logging.getLogger(__name__)


def add_dense_args(parser: argparse.ArgumentParser) -> None:
    """``downstream_tasks/train.py``'s own flags: task and model, validation split, evaluation."""
    g = parser.add_argument_group("dense task")
    g.add_argument("--task", choices=sorted(TASKS), default=None, help="oscd or segmunich")
    g.add_argument(
        "--model",
        default=None,
        help="dense model name (default: change_detector_vit_base_patch8_128 for oscd, "
        "segmenter_vit_base_patch8_128 for segmunich; paper_oscd_vit_base_patch8_128 / "
        "paper_segmunich_vit_base_patch8_128 are the paper's architectures)",
    )
    g.add_argument(
        "--finetune",
        default="",
        help="encoder weights: SpectralGPT(+).pth or one of our checkpoints",
    )
    g.add_argument(
        "--model_kwargs",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="more factory arguments, e.g. fusion=absdiff reduction=linear channels=128 "
        "indices=[3,5,7,11] (values are Python literals; recorded in the checkpoint)",
    )
    g.add_argument("--freeze_encoder", action="store_true", help="train the neck and head only")
    g.add_argument("--drop_path", type=float, default=0.1, help="stochastic depth of the encoder")
    g.add_argument("--layer_decay", type=float, default=0.9, help="layer-wise lr decay (1: off)")
    g.add_argument(
        "--class_weights",
        choices=CLASS_WEIGHTS,
        default="paper",
        help="cross-entropy class weights: paper = OSCD's [20p, 2(1-p)] from the changed "
        "fraction p of the training pixels (SegMunich: unweighted, as in the paper)",
    )
    g.add_argument(
        "--crop_repeats",
        type=float,
        default=None,
        help="random crops per epoch per input_size^2 of scene area (default: oscd 4, about the "
        "paper's stride-63 tile count; segmunich 1)",
    )

    add_sensor_args(parser)
    s = parser.add_argument_group("validation split (carved from train; test is never used)")
    s.add_argument("--val_cities", type=int, default=3, help="oscd: training cities held out")
    s.add_argument("--val_fraction", type=float, default=0.1, help="segmunich: share of stems")
    s.add_argument("--val_split", default=None, help="file of validation names (overrides both)")
    s.add_argument("--split_seed", type=int, default=0, help="seed of the validation draw")

    e = parser.add_argument_group("evaluation")
    e.add_argument("--eval", action="store_true", help="only evaluate --resume (or --finetune)")
    e.add_argument("--eval_split", choices=("test", "val"), default="test", help="with --eval")
    e.add_argument("--no_test", action="store_true", help="skip the final test evaluation")
    e.add_argument("--eval_every", type=int, default=1, help="validate every N epochs")
    e.add_argument(
        "--eval_protocol",
        choices=PROTOCOLS,
        default="whole",
        help="whole: sliding window over whole scenes, each pixel counted once; paper: the paper's "
        "overlapping tiles (stride --paper_stride) each counted; both: paper_* keys next to ours",
    )
    e.add_argument("--eval_stride", type=int, default=None, help="window stride (default size/2)")
    e.add_argument("--eval_batch_size", type=int, default=16, help="windows per forward")
    e.add_argument("--blend", choices=("uniform", "cosine"), default="uniform")
    e.add_argument(
        "--paper_stride", type=int, default=None, help="paper protocol stride (default size/2 - 1)"
    )
    e.add_argument("--best_metric", default=None, help="default f1_change (oscd) / miou")
    e.add_argument(
        "--vis_scenes",
        type=int,
        default=2,
        help="figures vis/<epochNNN|test|eval_SPLIT>_<scene>.png of the first N scenes of each "
        "evaluation (validation: every --vis_every epochs)",
    )
    e.add_argument("--save_predictions", default=None, help="folder for <scene>.tif class maps")
    e.add_argument(
        "--max_steps_per_epoch", type=int, default=None, help="cap training batches (smoke runs)"
    )
    e.add_argument(
        "--fill",
        choices=("neighbour", "band_mean"),
        default="neighbour",
        help="segmunich: how the missing B01/B09 are filled",
    )


def resolve_dense_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill task-dependent defaults; reject inconsistent flags with a message naming them."""
    if args.task is None and args.dataset_type in TASKS:
        args.task = args.dataset_type
    if args.task is None:
        raise ValueError("give --task oscd or --task segmunich")
    validate_common_args(args)
    if not args.data_root:
        if args.train_path and Path(args.train_path).is_dir():
            args.data_root = args.train_path
        else:
            raise ValueError(f"--data_root: the {args.task} dataset folder is required")
    if not Path(args.data_root).is_dir():
        raise FileNotFoundError(f"--data_root {args.data_root}: no such folder")
    args.dataset_type = TASKS[args.task]["dataset"]
    if args.eval and not (args.resume or args.finetune):
        raise ValueError("--eval needs a checkpoint: give --resume CKPT")
    args.output_dir = run_output_dir(args)
    if not 0.0 < args.layer_decay <= 1.0:
        raise ValueError(f"--layer_decay must be in (0, 1], got {args.layer_decay}")
    if not args.eval:  # with --eval, --input_size may still come from the checkpoint
        resolve_stride(args)
    if args.eval_every < 1:
        raise ValueError(f"--eval_every must be >= 1, got {args.eval_every}")
    args.crop_repeats = default_crop_repeats(args.task, args.crop_repeats)
    args.best_metric = args.best_metric or DENSE_MAIN_METRIC[TASKS[args.task]["task"]]
    sensor_of(args)  # --sensor / --bands: fail early
    return args


def holds_training_run(folder: Path) -> bool:
    """``folder`` holds a training run's outputs (checkpoints, or a log with training records)."""
    if any(folder.glob("checkpoint-*.pth")):
        return True
    log = folder / "log.jsonl"
    if not log.is_file():
        return False
    for line in filter(str.strip, log.read_text().splitlines()):
        try:
            if json.loads(line).get("type") != "eval":
                return True
        except (json.JSONDecodeError, AttributeError):
            return True  # not an evaluation log: leave it alone
    return False


def run_output_dir(args: argparse.Namespace) -> str:
    """Training: ``--output_dir`` (default ``./output_dense``). ``--eval``: ``--output_dir``, else
    ``eval-<split>`` next to the checkpoint; a folder holding a training run gets an
    ``eval-<split>`` subfolder, and a previous evaluation's log there is replaced, so an
    evaluation never appends to another run's log."""
    if not args.eval:
        return args.output_dir or "./output_dense"
    ckpt_dir = Path(args.resume or args.finetune).parent
    out = Path(args.output_dir) if args.output_dir else ckpt_dir / f"eval-{args.eval_split}"
    if holds_training_run(out):
        logger.info("%s holds a training run: evaluating into %s", out, f"eval-{args.eval_split}")
        out = out / f"eval-{args.eval_split}"
    if os.environ.get("RANK", "0") == "0" and (out / "log.jsonl").is_file():  # before the
        (out / "log.jsonl").unlink(missing_ok=True)  # process group: torchrun's rank 0 (or alone)
        logger.info("evaluation outputs: %s (the previous evaluation's log replaced)", out)
    return str(out)


def resolve_stride(args: argparse.Namespace) -> None:
    """``--eval_stride`` defaults to half a window; it must not leave gaps."""
    if args.eval_stride is None:
        args.eval_stride = max(1, args.input_size // 2)
    if not 0 < args.eval_stride <= args.input_size:
        raise ValueError(f"--eval_stride must be in [1, --input_size], got {args.eval_stride}")


def eval_checkpoint_defaults(args: argparse.Namespace, path: str) -> dict[str, Any]:
    """--eval: model name, its options and input size from the checkpoint's meta unless given."""
    ckpt = load_checkpoint_file(path)
    meta = ckpt.get("meta") or {}
    sensor_args_from_checkpoint(args, meta, path, resume=False)
    if args.model is None and meta.get("model"):
        args.model = meta["model"]
    saved = dict(meta.get("model_kwargs") or {})
    size = saved.pop("img_size", None) or meta.get("input_size")
    saved.pop("num_classes", None)
    if not args.model_kwargs and saved:
        args.model_kwargs = saved  # the factory options the weights were trained with
    if size and args.input_size != size:
        logger.info("--input_size %s -> %s (from %s)", args.input_size, size, path)
        args.input_size = int(size)
    return ckpt
