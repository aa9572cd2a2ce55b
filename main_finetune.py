"""Finetune (or linear-probe, or evaluate) a SpectralGPT encoder for scene classification.

Single-label EuroSAT (10 classes) and multi-label BigEarthNet (19 or 43 classes) are selected by
``--dataset_type`` alone; ``--nb_classes`` defaults from the dataset. Both finetuning commands of
the paper's README run as written apart from data paths. Examples::

    # EuroSAT from the released SpectralGPT+ weights, 2 GPUs (paper README command)
    torchrun --nproc_per_node=2 main_finetune.py --batch_size 16 --accum_iter 8 --blr 0.0002 \
        --epochs 150 --input_size 128 --patch_size 8 --weight_decay 0.05 --drop_path 0.2 \
        --reprob 0.25 --mixup 0.8 --cutmix 1.0 --model_type tensor --model vit_base_patch8_128 \
        --dataset_type euro_sat --dropped_bands 10 --finetune SpectralGPT+.pth \
        --train_path data/train_euro_result.txt --test_path data/val_euro_result.txt

    # BigEarthNet-19 on a stratified 10 % of the training set
    torchrun --nproc_per_node=2 main_finetune.py --model vit_base_patch8_128 \
        --dataset_type bigearthnet --train_path BE/bigearthnet_train.txt \
        --test_path BE/bigearthnet_val.txt --finetune SpectralGPT+.pth --train_fraction 0.1

    # evaluate a finetuned checkpoint (model, input size, classes, normalisation and dataset
    # come from the checkpoint)
    python main_finetune.py --eval --resume output_dir/checkpoint-best.pth \
        --test_path data/val_euro_result.txt

References:
    He et al., MAE (facebookresearch/mae: main_finetune.py, main_linprobe.py).
    Hong et al., SpectralGPT (IEEE TPAMI 2024).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from timm.data import Mixup
from timm.layers import trunc_normal_
from timm.loss import SoftTargetCrossEntropy
from timm.optim import Lars, param_groups_layer_decay
from torch import nn

import models_vit_tensor
from engine_finetune import evaluate, train_one_epoch
from util.training import args as common_args
from util.training.args import args_to_dict, resolve_dtype, save_args
from util.training.checkpoint import (
    CheckpointError,
    check_training_state,
    find_resume_checkpoint,
    load_checkpoint_file,
    load_training_state,
    load_weights_file,
    save_epoch_checkpoints,
)
from util.training.checkpoint_meta import checkpoint_meta, fill_args_from_checkpoint, read_metadata
from util.training.cli import add_debug_arg, run, setup_logging
from util.training.logger import TrainLogger
from evaluation.metrics import build_metrics, eval_shard, format_metrics, main_metric_name
from util.training.runtime import (
    cleanup_distributed,
    init_distributed,
    is_main_process,
    seed_everything,
    setup_backends,
    wrap_model_from_args,
)
from util.training.optim import autocast, build_optimisation, effective_lr
from util.data.subset import write_subset

logger = logging.getLogger("main_finetune")

HEAD_KEYS = frozenset({"head.weight", "head.bias"})
DEFAULT_MODEL = "vit_base_patch8_128"
#: linear-probe base lr per optimiser (lr = blr x effective batch / 256 unless --lr)
PROBE_BLR = {"adamw": 0.1, "lars": 0.1}
DEFAULT_DATASET = "eurosat"


# --------------------------------------------------------------------------------------------
# arguments
# --------------------------------------------------------------------------------------------
def get_args_parser() -> argparse.ArgumentParser:
    """All flags: the shared groups of ``util.training.args`` plus finetuning's own (``--help`` lists them)."""
    parser = argparse.ArgumentParser(
        "main_finetune.py",
        description="Finetune, linear-probe or evaluate a SpectralGPT classifier (EuroSAT, "
        "BigEarthNet).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common_args.add_optim_args(parser)
    common_args.add_data_args(parser)
    common_args.add_runtime_args(parser)
    common_args.add_logging_args(parser)
    common_args.add_distributed_args(parser)
    common_args.add_paper_compat_args(parser)

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

    p = parser.add_argument_group("paper compatibility (no effect)")
    p.add_argument("--dist_eval", action="store_true", help="always on: eval is sharded, unpadded")
    p.add_argument("--global_pool", action="store_true", help="always on (mean over all tokens)")
    p.add_argument("--cls_token", action="store_false", dest="global_pool")
    for flag, default in [("--reprob", 0.25), ("--remode", "pixel"), ("--recount", 1)]:
        p.add_argument(flag, default=default, help="dead flag in the paper's code; ignored")
    p.add_argument("--resplit", action="store_true", help="dead flag in the paper's code; ignored")
    p.add_argument("--aa", default=None, help="dead flag in the paper's code; ignored")
    p.add_argument("--color_jitter", default=None, help="dead flag in the paper's code; ignored")

    parser.set_defaults(
        batch_size=64,
        epochs=50,
        blr=None,
        weight_decay=None,
        min_lr=1e-14,  # the paper's defaults (spec §6.7); the README commands do not override them
        warmup_epochs=20,
        input_size=None,
        dataset_type=None,  # DEFAULT_DATASET, or the checkpoint's
        output_dir="./output_finetune",
        vis_every=0,
        save_every=10,
    )
    add_debug_arg(parser)
    return parser


def _checkpoint_defaults(args: argparse.Namespace) -> None:
    """``--eval`` / ``--resume``: model, input size, classes, normalisation and dataset from the
    checkpoint's metadata where the flags are not given (given and different: one-line error)."""
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


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
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
    common_args.validate_common_args(
        argparse.Namespace(**{**vars(args), "input_size": args.input_size or 8})
    )
    common_args.clamp_warmup(args)
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
    common_args.check_band_flags(name, args.dropped_bands)
    return args


# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------
def build_model(args: argparse.Namespace, num_classes: int) -> nn.Module:
    """Classifier named by ``--model``; ``--input_size`` defaults to the factory's own size."""
    kwargs: dict[str, Any] = dict(
        num_classes=num_classes, drop_path_rate=0.0 if args.linear_probe else args.drop_path
    )
    if args.input_size is not None:
        kwargs["img_size"] = args.input_size
    model = models_vit_tensor.create_model(args.model, **kwargs)
    args.input_size = model.patch_embed.img_size[0]
    return model


def load_pretrained(model: nn.Module, path: str) -> dict[str, list[str]]:
    """Load encoder weights for finetuning through ``checkpoint_filter_fn``, then reset the head.

    Paper checkpoints (``model`` key, separate q/k/v, with or without the decoder) and ours are
    accepted; position tables are carried over and resampled to the model's input size, decoder
    and mask token are dropped. The only keys the checkpoint may lack are the head's.

    Returns:
        The conversion report: ``missing``, ``dropped`` and ``resampled`` key lists.

    Raises:
        ValueError: if the checkpoint lacks any encoder weight (wrong file or model size).
    """
    state = load_weights_file(path)
    report: dict[str, list[str]] = {}
    converted = models_vit_tensor.checkpoint_filter_fn(state, model, report=report)
    missing = set(report["missing"])
    if not missing <= HEAD_KEYS:
        raise ValueError(
            f"{path} does not hold a full encoder for this model: missing {sorted(missing - HEAD_KEYS)}"
            " (is it a SpectralGPT checkpoint of the same size as the chosen --model?)"
        )
    model.load_state_dict(converted, strict=True)
    model.reset_classifier(model.num_classes)  # fresh head: trunc-normal std 2e-5, zero bias
    logger.info(
        "loaded %s: %d tensors used, %d dropped (decoder etc.), resampled %s, head re-initialised",
        path,
        len(converted) - len(missing),
        len(report["dropped"]),
        report["resampled"] or "nothing",
    )
    return report


def make_linear_probe(model: nn.Module) -> nn.Module:
    """MAE linear probing: frozen encoder, head = BatchNorm1d(affine=False) + Linear (std 0.01)."""
    head = model.head
    trunc_normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    model.head = nn.Sequential(nn.BatchNorm1d(head.in_features, affine=False, eps=1e-6), head).to(
        head.weight.device
    )
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("head.")
    return model


def build_param_groups(
    model: nn.Module, weight_decay: float, layer_decay: float
) -> list[dict[str, Any]]:
    """Layer-wise lr decay groups (timm, from the model's ``group_matcher``; spec §4.4)."""
    return param_groups_layer_decay(
        model,
        weight_decay=weight_decay,
        no_weight_decay_list=tuple(model.no_weight_decay()),
        layer_decay=layer_decay,
    )


def build_criterion(args: argparse.Namespace, multilabel: bool, mixup_active: bool) -> nn.Module:
    """BCE-with-logits (multi-label); SoftTargetCE with mixup; label-smoothing CE otherwise."""
    if multilabel:
        return nn.BCEWithLogitsLoss()
    if mixup_active:
        return SoftTargetCrossEntropy()  # mixup already smooths the targets
    return nn.CrossEntropyLoss(label_smoothing=args.smoothing)


def build_mixup(args: argparse.Namespace, multilabel: bool, num_classes: int) -> Mixup | None:
    """timm Mixup/CutMix for single-label finetuning when ``--mixup``/``--cutmix`` ask for it."""
    wanted = args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
    if not wanted:
        return None
    if multilabel or args.linear_probe:
        logger.warning(
            "--mixup/--cutmix ignored for %s (as in the paper's BigEarthNet engine / MAE linprobe)",
            "multi-label data" if multilabel else "linear probing",
        )
        return None
    if args.batch_size % 2:
        raise ValueError(f"--mixup/--cutmix need an even --batch_size, got {args.batch_size}")
    return Mixup(
        mixup_alpha=args.mixup,
        cutmix_alpha=args.cutmix,
        cutmix_minmax=args.cutmix_minmax,
        prob=args.mixup_prob,
        switch_prob=args.mixup_switch_prob,
        mode=args.mixup_mode,
        label_smoothing=args.smoothing,
        num_classes=num_classes,
    )


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def _split_source(args: argparse.Namespace, path: str, split: str) -> dict[str, Any]:
    """``--train_path``/``--test_path`` as in main_pretrain: an index file, or a dataset root.

    An index file's relative image paths resolve against ``--data_root`` (default: the index
    file's folder); a folder is a dataset root whose official split files are used; with neither,
    ``--data_root`` and the split name are used.
    """
    if path and Path(path).is_file():
        return dict(root=args.data_root or str(Path(path).parent), index=path, split=None)
    if path and Path(path).is_dir():
        return dict(root=path, index=None, split=split)
    if path:
        raise FileNotFoundError(
            f"{'--train_path' if split == 'train' else '--test_path'} {path}: "
            "no such index file or dataset folder"
        )
    if args.data_root:
        return dict(root=args.data_root, index=None, split=split)
    raise ValueError(
        f"no data for the {split} split: give --{'train' if split == 'train' else 'test'}_path "
        "(index file or dataset folder) or --data_root"
    )


def build_split(args: argparse.Namespace, split: str, is_train: bool):
    """Dataset for one split with the finetuning transforms of ``--dataset_type``."""
    from util.data import IndexFileError, build_dataset, resolve_name
    from util.data.transforms import build_transforms

    name = resolve_name(args.dataset_type)
    source = _split_source(args, args.train_path if is_train else args.test_path, split)
    options: dict[str, Any] = {"skip_bad_samples": args.skip_bad_samples}
    if getattr(args, "native_size", None) is not None:
        options["native_size"] = args.native_size
    if name == "bigearthnet" and args.nb_classes is not None:
        options["num_classes"] = args.nb_classes
    transforms = build_transforms(name, is_train, args.input_size, args.normalization)
    try:
        return build_dataset(name, transforms=transforms, **source, **options)
    except IndexFileError as err:
        hint = ""
        if name == "eurosat":
            hint = (
                " -- if this is a BigEarthNet id list (the paper's README passes "
                "'--dataset_type euro_sat' with one), use --dataset_type bigearthnet_finetune"
            )
        elif name == "bigearthnet":
            hint = " -- if this is a EuroSAT '<path> <label>' list, use --dataset_type euro_sat"
        raise IndexFileError(source["index"] or source["root"], f"{err}{hint}") from err


def build_loaders(args, train_ds, val_ds):
    """Train: shuffled (DistributedSampler under DDP), drop_last. Eval: unpadded shards."""
    from util.data import collate

    common = dict(
        num_workers=args.num_workers,
        pin_memory=args.pin_mem and args.device.type == "cuda",
        collate_fn=collate,
        persistent_workers=args.num_workers > 0,
    )
    train_loader = None
    if train_ds is not None:
        if args.distributed:
            sampler = torch.utils.data.DistributedSampler(
                train_ds, shuffle=True, seed=args.seed, drop_last=True
            )
        else:
            sampler = torch.utils.data.RandomSampler(
                train_ds, generator=torch.Generator().manual_seed(args.seed)
            )
        train_loader = torch.utils.data.DataLoader(
            train_ds, batch_size=args.batch_size, sampler=sampler, drop_last=True, **common
        )
    val_loader = torch.utils.data.DataLoader(
        val_ds,
        batch_size=args.batch_size,
        sampler=eval_shard(len(val_ds), args.rank, args.world_size),
        drop_last=False,
        **common,
    )
    return train_loader, val_loader


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def _load_for_eval(model: nn.Module, path: str) -> None:
    """Load a finetuned classifier (ours) strictly; a BatchNorm head means a linear probe."""
    state = load_weights_file(path)
    if "head.1.weight" in state and not isinstance(model.head, nn.Sequential):
        make_linear_probe(model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"--eval needs a finetuned classifier checkpoint of the chosen --model with "
            f"{model.num_classes} classes (e.g. OUTPUT_DIR/checkpoint-best.pth); {path} does not "
            f"fit: {err}"
        ) from err
    logger.info("evaluating weights from %s", path)


def _print(*parts: Any) -> None:
    if is_main_process():
        print(*parts, flush=True)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Finetune / linear-probe / evaluate; returns the last and best evaluation metrics."""
    resolve_args(args)
    init_distributed(args)
    seed_everything(args.seed)
    setup_backends(args.device)
    output_dir = Path(args.output_dir)
    if is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)

    from util.data import DATASETS, resolve_name

    # classes from the dataset (the paper's default of 62 is a bug, spec §6.7); the model fixes
    # --input_size when it was not given, and the transforms need it, so the model comes first
    num_classes = args.nb_classes or DATASETS[resolve_name(args.dataset_type)].num_classes
    model = build_model(args, num_classes)
    val_ds = build_split(args, "val", is_train=False)
    multilabel = bool(val_ds.multilabel)
    if val_ds.num_classes != num_classes:
        raise ValueError(
            f"--nb_classes {args.nb_classes} does not match {val_ds.name}, which has "
            f"{val_ds.num_classes} classes"
        )
    args.nb_classes = num_classes
    train_ds = None if args.eval else build_split(args, "train", is_train=True)
    if train_ds is not None and args.train_fraction < 1.0:
        subset_file = output_dir / "train_subset.txt" if is_main_process() else None
        indices, report = write_subset(train_ds, args.train_fraction, args.subset_seed, subset_file)
        _print(f"training on a stratified subset: {report.splitlines()[0]}")
        if subset_file is not None:
            logger.info("subset written to %s\n%s", subset_file, report)
        train_ds = torch.utils.data.Subset(train_ds, indices.tolist())
    if is_main_process():
        save_args(args, output_dir)

    # ---- model ----
    if args.eval:
        _load_for_eval(model, args.resume or args.finetune)
    elif args.finetune:
        load_pretrained(model, args.finetune)
    if args.linear_probe and not isinstance(model.head, nn.Sequential):
        make_linear_probe(model)
    device = args.device
    model.to(device)
    model_without_ddp = model
    dtype = resolve_dtype(args.dtype, device)
    model = wrap_model_from_args(model, args, dtype)
    metrics = build_metrics(num_classes, multilabel)
    main_name = main_metric_name(multilabel, args.best_metric)
    log = TrainLogger(
        output_dir,
        args.log_dir,
        args.wandb,
        args.wandb_entity,
        args_to_dict(args),
        progress=False if args.no_progress else None,
    )
    train_loader, val_loader = build_loaders(args, train_ds, val_ds)
    n_params = sum(p.numel() for p in model_without_ddp.parameters())
    n_train = sum(p.numel() for p in model_without_ddp.parameters() if p.requires_grad)
    _print(
        f"{args.model}: {n_params / 1e6:.2f} M parameters ({n_train / 1e6:.2f} M trained), "
        f"input {args.input_size} px, {num_classes} classes"
        f"{' multi-label' if multilabel else ''}; train {len(train_ds) if train_ds else 0} / "
        f"eval {len(val_ds)} samples on {args.world_size} process(es), {device}, {dtype}"
    )

    def run_eval() -> dict[str, Any]:
        return evaluate(
            model,
            val_loader,
            metrics,
            device,
            multilabel,
            partial(autocast, device.type, dtype),
            max_steps=args.max_steps_per_epoch,
            log=log,
        )

    if args.eval:
        results = run_eval()
        _print(format_metrics(results, getattr(val_ds, "classes", None)))
        log.write_json({"type": "eval", "checkpoint": args.resume or args.finetune, **results})
        log.close()
        cleanup_distributed()
        return {"last": results, "best": results}

    # ---- optimisation ----
    lr_source = (
        "--lr"
        if args.lr is not None
        else (
            f"blr {args.blr:.3g} x eff. batch {args.batch_size * args.accum_iter * args.world_size} / 256"
        )
    )
    effective_lr(args)
    if args.linear_probe:
        head = [p for p in model_without_ddp.head.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in head if p.ndim > 1], "always_adapt": True},
            {"params": [p for p in head if p.ndim <= 1], "weight_decay": 0.0},
        ]
        optimizer = None  # AdamW (0.9, 0.999), made by build_optimisation
        if args.probe_optimizer == "lars":
            optimizer = Lars(groups, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    else:
        groups = build_param_groups(model_without_ddp, args.weight_decay, args.layer_decay)
        optimizer = None  # AdamW (0.9, 0.999)
    optimizer, scheduler, step, train_steps = build_optimisation(
        model, groups, args, len(train_loader), device.type, dtype, optimizer=optimizer
    )
    mixup_fn = build_mixup(args, multilabel, num_classes)
    criterion = build_criterion(args, multilabel, mixup_fn is not None)

    best = {"epoch": -1, main_name: -math.inf}
    resume = find_resume_checkpoint(args.resume, args.auto_resume, output_dir)
    if resume:
        args.start_epoch, global_step = load_training_state(
            resume, model_without_ddp, optimizer, step
        )
        best = load_checkpoint_file(resume).get("best", best)
        log.mark_resume(args.start_epoch, global_step, resume)
    log.start_run(args.start_epoch, args.epochs)
    _print(
        f"lr {args.lr:.3g} ({lr_source}), "
        f"{f'linear probe ({args.probe_optimizer})' if args.linear_probe else f'layer decay {args.layer_decay}'}, "
        f"criterion {type(criterion).__name__}, best checkpoint by {main_name}"
    )

    data_meta = {
        "normalization": getattr(val_ds.transforms, "normalization", args.normalization),
        "bands": list(getattr(model_without_ddp, "bands", ())),
        "input_size": args.input_size,
        "dataset": val_ds.name,
        "classes": list(getattr(val_ds, "classes", ())),
    }
    ckpt_meta = checkpoint_meta(
        model=args.model,
        model_module="models_vit_tensor",
        task="multilabel" if multilabel else "classify",
        input_size=args.input_size,
        bands=data_meta["bands"] or None,
        normalization=data_meta["normalization"],
        classes=data_meta["classes"],
        dataset=val_ds.name,
        model_kwargs={"img_size": args.input_size, "num_classes": num_classes},
    )
    ckpt_meta["linear_probe"] = bool(args.linear_probe)  # head = BatchNorm1d + Linear
    results: dict[str, Any] = {}
    start = time.time()
    for epoch in range(args.start_epoch, args.epochs):
        if isinstance(train_loader.sampler, torch.utils.data.DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        train_stats = train_one_epoch(
            model,
            train_loader,
            step,
            criterion,
            device,
            epoch,
            mixup_fn,
            print_freq=args.print_freq,
            max_steps=train_steps,
            log=log,
        )
        results = run_eval()
        is_best = results[main_name] > best[main_name]
        if is_best:
            best = {"epoch": epoch, **{k: v for k, v in results.items() if not isinstance(v, list)}}
        last_epoch = epoch + 1 == args.epochs
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
            extra={"data": data_meta, "meta": ckpt_meta},
        )
        scalars = {k: v for k, v in results.items() if not isinstance(v, list)}
        log.log_epoch(
            epoch,
            {
                **{f"train_{k}": v for k, v in train_stats.items()},
                **{f"val_{k}": v for k, v in scalars.items()},
            },
            step=step.num_updates,
        )
        log.write_json({"type": "eval", "epoch": epoch, **results})  # per-class values too
        now = datetime.datetime.now().isoformat(sep=" ", timespec="seconds")
        _print(
            f"{now} epoch {epoch}: train loss {train_stats['loss']:.4f}, "
            f"{train_stats['images_per_s']:.1f} img/s, "
            + ", ".join(f"{k} {v:.2f}" for k, v in scalars.items())
            + f" | best {main_name} {best[main_name]:.2f} (epoch {best['epoch']})"
        )
    from util.data import report_skipped

    report_skipped(train_ds)
    _print(f"training took {time.time() - start:.0f} s; last evaluation:")
    _print(format_metrics(results, getattr(val_ds, "classes", None)))
    _print(
        f"best {main_name} {best[main_name]:.2f} at epoch {best['epoch']}: "
        f"{output_dir / 'checkpoint-best.pth'}"
    )
    log.close()
    cleanup_distributed()
    return {"last": results, "best": best}


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv`` (default: ``sys.argv``) and run :func:`main`; user errors (bad flag, missing
    or corrupt file, ...) print one ``error:`` line and exit 2."""
    args = get_args_parser().parse_args(argv)
    setup_logging(args.debug)
    return run(main, args)


if __name__ == "__main__":
    cli()
