"""Dense finetuning and evaluation: OSCD change detection, SegMunich segmentation (wiring only).

Training samples are random ``--input_size`` crops of whole scenes with flips and rot90; the
model is selected on a validation split carved from the training split (OSCD: ``--val_cities``
cities, SegMunich: ``--val_fraction`` of the stems, or ``--val_split FILE``); the test split is
evaluated once at the end, with the best checkpoint, on whole scenes (sliding window, every pixel
counted once). Examples::

    # our defaults, OSCD, from the released SpectralGPT+ weights, 2 processes
    torchrun --nproc_per_node=2 downstream_tasks/train.py --task oscd --data_root OSCD \
        --finetune SpectralGPT+.pth --output_dir out/oscd

    # the paper's OSCD setting (its model, lr, weight decay, batch, loss weights, tile counting)
    python downstream_tasks/train.py --task oscd --data_root OSCD --finetune SpectralGPT+.pth \
        --model paper_oscd_vit_base_patch8_128 --epochs 300 --batch_size 32 --lr 1e-4 \
        --weight_decay 1e-5 --layer_decay 1.0 --warmup_epochs 0 --drop_path 0.5 \
        --class_weights paper --eval_protocol both

    # evaluate the best checkpoint on the test split, writing GeoTIFF predictions
    python downstream_tasks/train.py --task oscd --data_root OSCD --eval \
        --resume out/oscd/checkpoint-best.pth --save_predictions out/oscd/pred

References: spec §7 (OSCD) and §8 (SegMunich); MAE main_finetune (the CLI's shape).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python downstream_tasks/train.py`: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from downstream_tasks.dense_data import (
    CLASS_WEIGHTS,
    TASKS,
    SceneCrops,
    build_split_dataset,
    check_disjoint,
    class_pixel_counts,
    class_weights,
    default_crop_repeats,
    format_weights,
    make_splits,
    write_splits,
)
from downstream_tasks.engine_dense import PROTOCOLS, evaluate
from engine_finetune import train_one_epoch
from util.training import args as common_args
from util.training.args import args_to_dict, resolve_dtype, save_args
from util.training.checkpoint import (
    find_resume_checkpoint,
    load_checkpoint_file,
    load_model_state,
    load_training_state,
    load_weights_file,
    save_checkpoint,
    save_epoch_checkpoints,
)
from util.training.logger import TrainLogger
from evaluation.metrics import DENSE_IGNORE_INDEX, DENSE_MAIN_METRIC, eval_shard, format_dense_metrics
from util.training.runtime import (
    barrier,
    cleanup_distributed,
    init_distributed,
    is_main_process,
    seed_everything,
    setup_backends,
    wrap_model_from_args,
)
from util.training.optim import autocast, build_optimisation, effective_lr

logger = logging.getLogger("downstream_tasks.train")

MODEL_MODULE = "downstream_tasks.models_dense"


# --------------------------------------------------------------------------------------------
# arguments
# --------------------------------------------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    """The shared groups of ``util.training.args`` plus the dense task's own flags."""
    parser = argparse.ArgumentParser("SpectralGPT dense finetuning", add_help=False)
    common_args.add_optim_args(parser)
    common_args.add_data_args(parser)
    common_args.add_runtime_args(parser)
    common_args.add_logging_args(parser)
    common_args.add_distributed_args(parser)

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
    e.add_argument("--vis_scenes", type=int, default=2, help="PNG of the first N val scenes")
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

    parser.set_defaults(
        batch_size=16,
        epochs=100,
        blr=1.6e-3,  # lr 1e-4 at an effective batch of 16
        weight_decay=0.05,
        warmup_epochs=5,
        min_lr=1e-6,
        input_size=128,
        dataset_type=None,
        num_workers=4,
        output_dir="./output_dense",
        vis_every=1,
        save_every=10,
    )
    return parser


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill task-dependent defaults; reject inconsistent flags with a message naming them."""
    if args.task is None and args.dataset_type in TASKS:
        args.task = args.dataset_type
    if args.task is None:
        raise ValueError("give --task oscd or --task segmunich")
    common_args.validate_common_args(args)
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
    if not 0.0 < args.layer_decay <= 1.0:
        raise ValueError(f"--layer_decay must be in (0, 1], got {args.layer_decay}")
    if not args.eval:  # with --eval, --input_size may still come from the checkpoint
        resolve_stride(args)
    if args.eval_every < 1:
        raise ValueError(f"--eval_every must be >= 1, got {args.eval_every}")
    args.crop_repeats = default_crop_repeats(args.task, args.crop_repeats)
    args.best_metric = args.best_metric or DENSE_MAIN_METRIC[TASKS[args.task]["task"]]
    return args


def resolve_stride(args: argparse.Namespace) -> None:
    """``--eval_stride`` defaults to half a window; it must not leave gaps."""
    if args.eval_stride is None:
        args.eval_stride = max(1, args.input_size // 2)
    if not 0 < args.eval_stride <= args.input_size:
        raise ValueError(f"--eval_stride must be in [1, --input_size], got {args.eval_stride}")


# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------
def parse_model_kwargs(items: list[str] | dict[str, Any]) -> dict[str, Any]:
    """``["fusion=absdiff", "channels=128"]`` -> ``{"fusion": "absdiff", "channels": 128}``."""
    import ast

    if isinstance(items, dict):
        return dict(items)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--model_kwargs: expected KEY=VALUE, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value  # a bare word: a string
    return out


def model_kwargs(args: argparse.Namespace, num_classes: int) -> dict[str, Any]:
    """Factory keyword arguments recorded in the checkpoint's ``meta``."""
    return {
        **parse_model_kwargs(args.model_kwargs),
        "img_size": args.input_size,
        "num_classes": num_classes,
    }


def build_model(args: argparse.Namespace, num_classes: int) -> nn.Module:
    """The dense model named by ``--model`` (default: the task's)."""
    from downstream_tasks import models_dense

    kwargs = dict(model_kwargs(args, num_classes), drop_path_rate=args.drop_path)
    if args.freeze_encoder:
        kwargs["freeze_encoder"] = True
    return models_dense.create_model(args.model, **kwargs)


def load_pretrained(model: nn.Module, path: str) -> dict[str, list[str]]:
    """Encoder weights from a SpectralGPT(+) checkpoint (paper format) or ours.

    Raises:
        ValueError: the file lacks encoder weights of this model (wrong file or size).
    """
    from downstream_tasks import models_dense

    state = load_weights_file(path)
    report: dict[str, list[str]] = {}
    converted = models_dense.checkpoint_filter_fn(state, model, report=report)
    missing_encoder = [k for k in report["missing"] if k.startswith("encoder.")]
    if missing_encoder:
        raise ValueError(
            f"--finetune {path} does not hold this model's encoder: missing {missing_encoder[:5]} "
            f"({len(missing_encoder)} in all; is it a SpectralGPT checkpoint of the same size?)"
        )
    model.load_state_dict(converted, strict=True)
    logger.info(
        "loaded %s: %d tensors; new (neck/head): %d; dropped: %d; resampled: %s",
        path,
        len(converted) - len(report["missing"]),
        len(report["missing"]),
        len(report["dropped"]),
        report["resampled"] or "nothing",
    )
    return report


def build_param_groups(model: nn.Module, weight_decay: float, layer_decay: float):
    """Layer-decay groups of the trainable parameters (``main_finetune``'s, via group_matcher)."""
    from main_finetune import build_param_groups as groups

    return groups(model, weight_decay, layer_decay)


def checkpoint_meta(args: argparse.Namespace, model: nn.Module, dataset, normalization: str):
    """The ``meta`` entry (CONTRACTS §3 schema) of the checkpoints this script writes."""
    fields = dict(
        model=args.model,
        model_module=MODEL_MODULE,
        task=getattr(model, "task", TASKS[args.task]["task"]),
        input_size=args.input_size,
        bands=list(getattr(model, "bands", ())) or None,
        normalization=normalization,
        classes=list(dataset.classes),
        dataset=dataset.name,
        model_kwargs=model_kwargs(args, dataset.num_classes),
    )
    try:
        from util.training.checkpoint_meta import checkpoint_meta as build
    except ImportError:  # before util.training.checkpoint_meta gains it: the same schema, written here
        from util.data.sentinel2 import MODEL_BANDS

        fields["bands"] = fields["bands"] or list(MODEL_BANDS)
        return fields
    return build(**fields)


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def _print(*parts: Any) -> None:
    if is_main_process():
        print(*parts, flush=True)


def _scalars(results: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in results.items() if isinstance(v, int | float)}


def _model_from_checkpoint(args: argparse.Namespace, path: str) -> dict[str, Any]:
    """--eval: model name, its options and input size from the checkpoint's meta unless given."""
    ckpt = load_checkpoint_file(path)
    meta = ckpt.get("meta") or {}
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


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or only evaluate) a dense model; returns ``{"best", "test", "last", ...}``."""
    resolve_args(args)
    init_distributed(args)
    if not is_main_process():
        logging.getLogger().setLevel(logging.WARNING)
    seed_everything(args.seed)
    setup_backends(args.device)
    output_dir = Path(args.output_dir)
    spec = TASKS[args.task]
    from util.data.transforms import build_transforms

    eval_ckpt = None
    if args.eval:
        eval_ckpt = _model_from_checkpoint(args, args.resume or args.finetune)
        resolve_stride(args)
    args.model = args.model or spec["model"]

    # ---- splits (rank 0 writes the lists; every rank reads them) ----
    splits = make_splits(
        args.task,
        args.data_root,
        val_count=args.val_cities if spec["dataset"] == "oscd" else None,
        val_fraction=args.val_fraction,
        val_split=args.val_split,
        seed=args.split_seed,
    )
    if is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)
        write_splits(splits, output_dir)
    barrier()
    split_files = {k: output_dir / "splits" / f"{k}.txt" for k in splits}
    options = {"fill": args.fill} if spec["dataset"] == "segmunich" else {}
    eval_tf = build_transforms(spec["dataset"], False, None, args.normalization)

    def eval_set(split: str):
        names = split_files[split] if split != "test" else None
        return build_split_dataset(args.task, args.data_root, split, names, eval_tf, **options)

    test_ds = eval_set("test")
    val_ds = eval_set("val") if splits["val"] else None
    train_raw = None
    if not args.eval:
        train_raw = build_split_dataset(
            args.task, args.data_root, "train", split_files["train"], None, **options
        )
    check_disjoint(train=train_raw, val=val_ds, test=test_ds)
    ref_ds = test_ds
    num_classes, class_names = ref_ds.num_classes, list(ref_ds.classes)
    task = spec["task"]
    normalization = eval_tf.normalization

    # ---- model ----
    model = build_model(args, num_classes)
    if getattr(model, "task", task) != task:
        raise ValueError(
            f"--model {args.model} is a {model.task} model, --task {args.task} needs {task}"
        )
    if args.eval:
        try:
            model.load_state_dict(load_weights_file(args.resume or args.finetune), strict=True)
        except RuntimeError as err:
            raise ValueError(
                f"--eval needs a finetuned {args.task} checkpoint of --model {args.model}: {err}"
            ) from err
    elif args.finetune:
        load_pretrained(model, args.finetune)
    device = args.device
    model.to(device)
    model_without_ddp = model
    dtype = resolve_dtype(args.dtype, device)
    amp = partial(autocast, device.type, dtype)
    log = TrainLogger(output_dir, args.log_dir, args.wandb, args.wandb_entity, args_to_dict(args))
    if is_main_process():
        save_args(args, output_dir)

    def run_eval(ds, tag: str, vis: bool = True, save_predictions=None) -> dict[str, Any]:
        """Whole-scene metrics of ``ds``; PNGs of its first --vis_scenes scenes if ``vis``."""
        return evaluate(
            model_without_ddp,
            ds,
            device,
            num_classes,
            args.input_size,
            args.eval_stride,
            eval_shard(len(ds), args.rank, args.world_size),
            class_names,
            task,
            protocol=args.eval_protocol,
            paper_stride=args.paper_stride,
            batch_size=args.eval_batch_size,
            blend=args.blend,
            autocast=amp,
            num_workers=min(args.num_workers, 2),
            vis_dir=output_dir / "vis" if vis else None,
            vis_scenes=args.vis_scenes,
            vis_prefix=f"{tag}_",
            save_predictions=save_predictions,
            log=log,
        )

    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    _print(
        f"{args.model}: {n_params / 1e6:.2f} M parameters ({n_train / 1e6:.2f} M trained), "
        f"{args.task} ({task}, {num_classes} classes), windows {args.input_size} px stride "
        f"{args.eval_stride}, {args.world_size} process(es), {device}, {dtype}"
    )
    _print(
        "splits: "
        + ", ".join(f"{k} {len(v)}" for k, v in splits.items())
        + f" scenes (lists in {output_dir / 'splits'})"
    )

    if args.eval:
        ds = test_ds if args.eval_split == "test" else val_ds
        if ds is None:
            raise ValueError("--eval_split val: the validation split is empty")
        results = run_eval(ds, f"eval_{args.eval_split}", True, args.save_predictions)
        _print(format_dense_metrics(results, task))
        record = {"type": "eval", "split": args.eval_split, "protocol": args.eval_protocol}
        log.write_json({**record, "checkpoint": args.resume or args.finetune, **results})
        log.close()
        cleanup_distributed()
        return {
            "rank": args.rank,
            "test": results,
            "best": eval_ckpt.get("best"),
            "output_dir": output_dir,
        }

    # ---- training data ----
    train_tf = build_transforms(spec["dataset"], True, args.input_size, args.normalization)
    train_ds = SceneCrops(
        train_raw, train_tf, args.input_size, args.crop_repeats, cache=spec["cache"]
    )
    weights = None
    if args.class_weights != "none" and not (args.class_weights == "paper" and task != "change"):
        counts = class_pixel_counts(train_raw, num_classes)
        weights = class_weights(args.class_weights, counts, task)
    _print(
        f"training: {len(train_ds)} random {args.input_size} px crops per epoch from "
        f"{len(train_raw)} scenes; class weights: {format_weights(weights, class_names)}"
    )
    criterion = nn.CrossEntropyLoss(
        weight=None if weights is None else weights.to(device), ignore_index=DENSE_IGNORE_INDEX
    )
    from util.data import collate

    # a DistributedSampler also in one process: its epoch-seeded order makes resume exact
    sampler = torch.utils.data.DistributedSampler(
        train_ds,
        num_replicas=args.world_size,
        rank=args.rank,
        shuffle=True,
        seed=args.seed,
        drop_last=True,
    )
    train_loader = torch.utils.data.DataLoader(
        train_ds,
        batch_size=args.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=args.num_workers,
        pin_memory=args.pin_mem and device.type == "cuda",
        collate_fn=collate,
        persistent_workers=args.num_workers > 0,
    )

    # ---- optimisation ----
    model = wrap_model_from_args(model, args, dtype)
    effective_lr(args)
    groups = build_param_groups(model_without_ddp, args.weight_decay, args.layer_decay)
    optimizer, scheduler, step, train_steps = build_optimisation(
        model, groups, args, len(train_loader), device.type, dtype
    )
    main_name = args.best_metric
    best: dict[str, Any] = {"epoch": -1, main_name: -math.inf}
    resume = find_resume_checkpoint(args.resume, args.auto_resume, output_dir)
    if resume:
        args.start_epoch, _ = load_training_state(resume, model_without_ddp, optimizer, step)
        best = load_checkpoint_file(resume).get("best", best)
    meta = checkpoint_meta(args, model_without_ddp, ref_ds, normalization)
    data_meta = {
        "normalization": normalization,
        "bands": meta["bands"],
        "input_size": args.input_size,
        "dataset": ref_ds.name,
        "classes": class_names,
    }
    _print(f"lr {args.lr:.3g}, layer decay {args.layer_decay}, best checkpoint by val {main_name}")

    best_path = output_dir / "checkpoint-best.pth"
    results: dict[str, Any] = {}
    train_stats: dict[str, Any] = {}
    start = time.time()
    for epoch in range(args.start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        train_stats = train_one_epoch(
            model,
            train_loader,
            step,
            criterion,
            device,
            epoch,
            print_freq=args.print_freq,
            max_steps=train_steps,
            log=log,
            target_key="mask",
        )
        last_epoch = epoch + 1 == args.epochs
        evaluated = val_ds is not None and ((epoch + 1) % args.eval_every == 0 or last_epoch)
        if evaluated:
            vis = bool(args.vis_every) and (epoch + 1) % args.vis_every == 0
            results = run_eval(val_ds, f"epoch{epoch:03d}", vis)
            is_best = results[main_name] > best[main_name]
        else:
            results, is_best = {}, val_ds is None and last_epoch  # no validation: keep the last
        if is_best:
            best = {"epoch": epoch, **_scalars(results)}
        save_epoch_checkpoints(
            output_dir,
            epoch,
            model,
            optimizer,
            step,
            args,
            best,
            results,
            is_best,
            numbered=(epoch + 1) % args.save_every == 0 or last_epoch,
            extra={"data": data_meta, "meta": meta},
        )
        log.log_epoch(
            epoch,
            {
                **{f"train_{k}": v for k, v in train_stats.items()},
                **{f"val_{k}": v for k, v in _scalars(results).items()},
            },
            step=step.num_updates,
        )
        if evaluated:
            log.write_json(
                {
                    "type": "eval",
                    "split": "val",
                    "epoch": epoch,
                    "protocol": args.eval_protocol,
                    **results,
                }
            )
        summary = f"epoch {epoch}: train loss {train_stats['loss']:.4f}"
        if evaluated:
            summary += (
                f", val {main_name} {results[main_name]:.2f}, loss {results.get('loss', float('nan')):.4f}"
                f" | best {best[main_name]:.2f} (epoch {best['epoch']})"
            )
        _print(summary)
    _print(f"training took {time.time() - start:.0f} s")

    # ---- the test split, once, with the selected checkpoint ----
    test_results: dict[str, Any] = {}
    if not args.no_test:
        barrier()
        if best_path.is_file():
            load_model_state(model_without_ddp, load_weights_file(best_path))
        test_results = run_eval(test_ds, "test", True, args.save_predictions)
        record = {
            "type": "test",
            "split": "test",
            "epoch": best["epoch"],
            "protocol": args.eval_protocol,
        }
        log.write_json({**record, "checkpoint": str(best_path), **test_results})
        if is_main_process() and best_path.is_file():
            ckpt = load_checkpoint_file(best_path)
            ckpt["test_metrics"] = test_results
            save_checkpoint(best_path, ckpt)
        _print(f"test (checkpoint of epoch {best['epoch']}, selected on val {main_name}):")
        _print(format_dense_metrics(test_results, task))
    log.close()
    cleanup_distributed()
    return {
        "rank": args.rank,
        "last": results,
        "best": best,
        "test": test_results,
        "train": train_stats,
        "output_dir": output_dir,
    }


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv`` (default: ``sys.argv``) and run :func:`main`; user errors (bad flag, missing
    or corrupt file, ...) print one ``error:`` line and exit 2 (``--debug``: the traceback)."""
    from util.training.cli import add_debug_arg, run, setup_logging

    parser = argparse.ArgumentParser(
        "SpectralGPT dense finetuning (OSCD change detection, SegMunich segmentation)",
        parents=[get_args_parser()],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_debug_arg(parser)
    args = parser.parse_args(argv)
    setup_logging(args.debug)
    return run(main, args)


if __name__ == "__main__":
    cli()
