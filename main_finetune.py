"""Finetune (or linear-probe, or engine.evaluate) a SpectralGPT encoder for scene classification.

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

    # engine.evaluate a finetuned checkpoint (model, input size, classes, normalisation and dataset
    # come from the checkpoint)
    python main_finetune.py --eval --resume output_dir/checkpoint-best.pth \
        --test_path data/val_euro_result.txt

References:
    He et al., MAE (facebookresearch/mae: main_finetune.py, main_linprobe.py).
    Hong et al., SpectralGPT (IEEE TPAMI 2024).
"""

from __future__ import annotations

import argparse
import logging
import time
from functools import partial
from typing import Any

import torch
from torch import nn

import engine_finetune as engine
import finetune_args
from evaluation.metrics import build_metrics, eval_shard, format_metrics, main_metric_name
from util.data.subset import write_subset
from util.training import args as common_args
from util.training.args import resolve_dtype, save_args
from util.training.checkpoint import find_resume_checkpoint
from util.training.cli import add_debug_arg, parse_and_run
from util.training.loader import build_eval_loader, train_loader_from_args
from util.training.loop import (
    EpochEnd,
    TrainLoop,
    print_main,
    scalars,
    train_logger,
    training_process,
)
from util.training.optim import autocast, build_optimisation, effective_lr
from util.training.runtime import is_main_process, parameter_summary, wrap_model_from_args

logger = logging.getLogger("main_finetune")


def get_args_parser() -> argparse.ArgumentParser:
    """All flags: the shared groups of ``util.training.args`` plus ``finetune_args``' own."""
    parser = argparse.ArgumentParser(
        "main_finetune.py",
        description="Finetune, linear-probe or evaluate a SpectralGPT classifier (EuroSAT, "
        "BigEarthNet).",
        formatter_class=common_args.HelpFormatter,
    )
    common_args.add_common_args(parser)
    finetune_args.add_finetune_args(parser)

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


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Finetune / linear-probe / evaluate; returns the last and best evaluation metrics."""
    finetune_args.resolve_finetune_args(args)
    with training_process(args) as output_dir:
        from util.data import DATASETS, collate, report_skipped, resolve_name

        # classes from the dataset (the paper's default of 62 is a bug, spec §6.7); the model fixes
        # --input_size when it was not given, and the transforms need it: the model comes first
        num_classes = args.nb_classes or DATASETS[resolve_name(args.dataset_type)].num_classes
        model = engine.build_classifier(args, num_classes)
        val_ds = engine.build_split(args, "val", is_train=False)
        multilabel = bool(val_ds.multilabel)
        if val_ds.num_classes != num_classes:
            raise ValueError(
                f"--nb_classes {args.nb_classes} does not match {val_ds.name}, which has "
                f"{val_ds.num_classes} classes"
            )
        args.nb_classes = num_classes
        train_ds = None if args.eval else engine.build_split(args, "train", is_train=True)
        if train_ds is not None and args.train_fraction < 1.0:
            subset_file = output_dir / "train_subset.txt" if is_main_process() else None
            indices, report = write_subset(
                train_ds, args.train_fraction, args.subset_seed, subset_file
            )
            print_main(f"training on a stratified subset: {report.splitlines()[0]}")
            logger.info("subset written to %s\n%s", subset_file, report)
            train_ds = torch.utils.data.Subset(train_ds, indices.tolist())
        if is_main_process():
            save_args(args, output_dir)

        if args.eval:
            engine.load_for_eval(model, args.resume or args.finetune)
        elif args.finetune:
            engine.load_pretrained(model, args.finetune)
        if args.linear_probe and not isinstance(model.head, nn.Sequential):
            engine.make_linear_probe(model)
        device, dtype = args.device, resolve_dtype(args.dtype, args.device)
        model_without_ddp = model.to(device)
        model = wrap_model_from_args(model, args, dtype)
        metrics = build_metrics(num_classes, multilabel)
        main_name = main_metric_name(multilabel, args.best_metric)
        log = train_logger(args)
        val_loader = build_eval_loader(
            val_ds, args.batch_size, eval_shard(len(val_ds), args.rank, args.world_size),
            num_workers=args.num_workers, collate_fn=collate, persistent_workers=True,
            pin_memory=args.pin_mem and device.type == "cuda",
        )  # fmt: skip
        print_main(
            f"{args.model}: {parameter_summary(model_without_ddp)}, input {args.input_size} px, "
            f"{num_classes} classes{' multi-label' * multilabel}; "
            f"train {len(train_ds) if train_ds else 0} / eval {len(val_ds)} samples on "
            f"{args.world_size} process(es), {device}, {dtype}"
        )

        def run_eval() -> dict[str, Any]:
            amp = partial(autocast, device.type, dtype)
            return engine.evaluate(
                model, val_loader, metrics, device, multilabel, amp, args.max_steps_per_epoch, log
            )

        if args.eval:
            results = run_eval()
            print_main(format_metrics(results, getattr(val_ds, "classes", None)))
            log.write_json({"type": "eval", "checkpoint": args.resume or args.finetune, **results})
            log.close()
            return {"last": results, "best": results}

        # ---- optimisation and the loop ----
        train_loader = train_loader_from_args(
            train_ds, args, collate_fn=collate, persistent_workers=True
        )
        lr_source = "--lr" if args.lr is not None else (
            f"blr {args.blr:.3g} x eff. batch {args.batch_size * args.accum_iter * args.world_size} / 256"
        )  # fmt: skip
        effective_lr(args)
        groups, optimizer = engine.build_param_groups(model_without_ddp, args)
        optimizer, _, step, train_steps = build_optimisation(
            model, groups, args, len(train_loader), device.type, dtype, optimizer=optimizer
        )
        mixup_fn = engine.build_mixup(args, multilabel, num_classes)
        criterion = engine.build_criterion(args, multilabel, mixup_fn is not None)
        extra = engine.checkpoint_extra(args, val_ds, model_without_ddp, num_classes)
        loop = TrainLoop(
            args, model, optimizer, step, train_loader, log, epoch_batches=train_steps,
            extra=extra, best_metric=main_name,
        )  # fmt: skip
        loop.resume(find_resume_checkpoint(args.resume, args.auto_resume, output_dir))
        how = f"linear probe ({args.probe_optimizer})" if args.linear_probe else ""
        print_main(
            f"lr {args.lr:.3g} ({lr_source}), {how or f'layer decay {args.layer_decay}'}, "
            f"criterion {type(criterion).__name__}, "
            f"best checkpoint by {main_name}"
        )

        def train_epoch(epoch: int, start: int, on_update) -> dict[str, Any]:
            return engine.train_one_epoch(
                model, train_loader, step, criterion, device, epoch, mixup_fn, args.print_freq,
                train_steps, log, start=start, on_update=on_update,
            )  # fmt: skip

        def end_epoch(epoch: int, stats: dict[str, Any]) -> EpochEnd:
            results = run_eval()
            is_best = loop.select(epoch, results)
            log.write_json({"type": "eval", "epoch": epoch, **results})  # per-class values too
            best = loop.best
            print_main(
                f"{time.strftime('%Y-%m-%d %H:%M:%S')} epoch {epoch}: train loss {stats['loss']:.4f}, "
                f"{stats['img_per_s']:.1f} img/s, "
                + ", ".join(f"{k} {v:.2f}" for k, v in scalars(results).items())
                + f" | best {main_name} {best[main_name]:.2f} (epoch {best['epoch']})"
            )
            return EpochEnd(results, is_best)

        start = time.time()
        loop.run(train_epoch, end_epoch)
        report_skipped(train_ds)
        best = loop.best
        if not loop.stopped:
            print_main(f"training took {time.time() - start:.0f} s; last evaluation:")
            print_main(format_metrics(loop.metrics, getattr(val_ds, "classes", None)))
            print_main(
                f"best {main_name} {best[main_name]:.2f} at epoch {best['epoch']}: "
                f"{output_dir / 'checkpoint-best.pth'}"
            )
        log.close()
        return {"last": loop.metrics, "best": best, "stopped": loop.stopped}


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv`` (default: ``sys.argv``) and run :func:`main`; user errors (bad flag, missing
    or corrupt file, ...) print one ``error:`` line and exit 2."""
    return parse_and_run(get_args_parser(), main, argv)


if __name__ == "__main__":
    cli()
