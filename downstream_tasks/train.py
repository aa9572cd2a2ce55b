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

    # evaluate the best checkpoint on the test split (outputs in out/oscd/eval-test/; with
    # --eval_split val, the validation cities the training run saved in out/oscd/splits/)
    python downstream_tasks/train.py --task oscd --data_root OSCD --eval \
        --resume out/oscd/checkpoint-best.pth --save_predictions out/oscd/pred

References: spec §7 (OSCD) and §8 (SegMunich); MAE main_finetune (the CLI's shape).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python downstream_tasks/train.py`: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torch import nn

from downstream_tasks import dense_args, dense_data
from downstream_tasks import engine_dense as engine
from engine_finetune import train_one_epoch
from evaluation.metrics import DENSE_IGNORE_INDEX, eval_shard, format_dense_metrics
from util.training import args as common_args
from util.training import checkpoint as ckpt
from util.training.loader import train_loader_from_args
from util.training.loop import EpochEnd, TrainLoop, print_main, train_logger, training_process
from util.training.optim import autocast, build_optimisation, effective_lr, layer_decay_param_groups
from util.training.runtime import barrier, is_main_process, parameter_summary, wrap_model_from_args

logger = logging.getLogger("downstream_tasks.train")


def get_args_parser() -> argparse.ArgumentParser:
    """The shared groups of ``util.training.args`` plus the dense task's own flags."""
    parser = argparse.ArgumentParser("SpectralGPT dense finetuning", add_help=False)
    common_args.add_common_args(parser, paper_compat=False)
    dense_args.add_dense_args(parser)
    parser.set_defaults(
        batch_size=16,
        epochs=100,
        blr=1.6e-3,  # lr 1e-4 at an effective batch of 16
        weight_decay=0.05,
        warmup_epochs=5,
        min_lr=1e-6,
        input_size=128,
        dataset_type=None,
        output_dir=None,  # training: ./output_dense; --eval: next to the checkpoint
        vis_every=1,
        save_every=10,
    )
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or only evaluate) a dense model; returns ``{"best", "test", "last", ...}``."""
    dense_args.resolve_dense_args(args)
    with training_process(args) as output_dir:
        from util.data import collate, options_from_args, report_skipped

        spec, task = dense_data.TASKS[args.task], dense_data.TASKS[args.task]["task"]
        eval_ckpt = None
        if args.eval:
            eval_ckpt = dense_args.eval_checkpoint_defaults(args, args.resume or args.finetune)
            dense_args.resolve_stride(args)
        args.model = args.model or spec["model"]

        # ---- splits (rank 0 writes the lists; every rank reads them) and datasets ----
        splits = dense_data.run_splits(args, eval_ckpt)  # --eval: the training run's lists
        if is_main_process():
            dense_data.write_splits(splits, output_dir)
        barrier()
        eval_tf = dense_data.build_transforms(args, is_train=False)  # --sensor / --bands
        options = options_from_args(spec["dataset"], args)  # --skip_bad_samples, --native_size
        options.update({} if spec["dataset"] == "oscd" else {"fill": args.fill})
        options["strict_input"] = args.strict_input  # the input contract (util/data/contract.py)
        train_raw, val_ds, test_ds = dense_data.split_datasets(
            args.task, args.data_root, splits, output_dir / "splits", eval_tf, not args.eval,
            **options,
        )  # fmt: skip
        num_classes, class_names = test_ds.num_classes, list(test_ds.classes)

        # ---- model ----
        model = engine.build_dense_model(args, num_classes)
        if args.eval:
            engine.load_for_eval(model, args.resume or args.finetune, args)
        elif args.finetune:
            engine.load_pretrained(model, args.finetune)
        device, dtype = args.device, common_args.resolve_dtype(args.dtype, args.device)
        model_without_ddp = model.to(device)
        log = train_logger(args)
        if is_main_process():
            common_args.save_args(args, output_dir)
        options = dict(
            device=device, num_classes=num_classes, class_names=class_names, task=task,
            autocast=partial(autocast, device.type, dtype), log=log, **engine.eval_options(args),
        )  # fmt: skip

        def run_eval(ds, tag: str, vis: bool = True, save_predictions=None) -> dict[str, Any]:
            """Whole-scene metrics of ``ds``; figures of its first --vis_scenes scenes if ``vis``."""
            shard = eval_shard(len(ds), args.rank, args.world_size)
            vis_dir = output_dir / "vis" if vis and is_main_process() else None
            return engine.evaluate(model_without_ddp, ds, shard=shard, vis_dir=vis_dir,
                            vis_prefix=f"{tag}_", save_predictions=save_predictions, **options)  # fmt: skip

        print_main(
            f"{args.model}: {parameter_summary(model)}, {args.task} ({task}, {num_classes} "
            f"classes), windows {args.input_size} px stride {args.eval_stride}, "
            f"{args.world_size} process(es), {device}, {dtype}\nsplits: "
            + ", ".join(f"{k} {len(v)}" for k, v in splits.items())
            + f" scenes (lists in {output_dir / 'splits'})"
        )

        if args.eval:
            ds = test_ds if args.eval_split == "test" else val_ds
            if ds is None:
                raise ValueError("--eval_split val: the validation split is empty")
            results = run_eval(ds, f"eval_{args.eval_split}", True, args.save_predictions)
            print_main(format_dense_metrics(results, task))
            record = {"type": "eval", "split": args.eval_split, "protocol": args.eval_protocol}
            log.write_json({**record, "checkpoint": args.resume or args.finetune, **results})
            log.close()
            best = eval_ckpt.get("best")
            return {"rank": args.rank, "test": results, "best": best, "output_dir": output_dir}

        # ---- training data, optimisation, the loop ----
        train_tf = dense_data.build_transforms(args, is_train=True)
        crops = (args.input_size, args.crop_repeats, spec["cache"])
        train_ds = dense_data.SceneCrops(train_raw, train_tf, *crops)
        weights = dense_data.dataset_class_weights(args.class_weights, train_raw, num_classes, task)
        print_main(
            f"training: {len(train_ds)} random {args.input_size} px crops per epoch from "
            f"{len(train_raw)} scenes; class weights: {dense_data.format_weights(weights, class_names)}"
        )
        criterion = nn.CrossEntropyLoss(
            weight=None if weights is None else weights.to(device), ignore_index=DENSE_IGNORE_INDEX
        )
        loader = train_loader_from_args(train_ds, args, collate_fn=collate, persistent_workers=True)
        model = wrap_model_from_args(model, args, dtype)
        effective_lr(args)
        groups = layer_decay_param_groups(model_without_ddp, args.weight_decay, args.layer_decay)
        optimizer, _, step, train_steps = build_optimisation(
            model, groups, args, len(loader), device.type, dtype
        )
        extra = engine.checkpoint_extra(args, model_without_ddp, test_ds, eval_tf.normalization)
        loop = TrainLoop(
            args, model, optimizer, step, loader, log, epoch_batches=train_steps,
            extra=extra, best_metric=args.best_metric,
        )  # fmt: skip
        loop.resume(ckpt.find_resume_checkpoint(args.resume, args.auto_resume, output_dir))
        name = args.best_metric
        print_main(f"lr {args.lr:.3g}, layer decay {args.layer_decay}, best checkpoint by val {name}")  # fmt: skip

        def train_epoch(epoch: int, start: int, on_update) -> dict[str, Any]:
            return train_one_epoch(
                model, loader, step, criterion, device, epoch, print_freq=args.print_freq,
                max_steps=train_steps, log=log, target_key="mask", start=start, on_update=on_update,
            )  # fmt: skip

        def end_epoch(epoch: int, stats: dict[str, Any]) -> EpochEnd:
            last, results = epoch + 1 == args.epochs, {}
            summary = f"epoch {epoch}: train loss {stats['loss']:.4f}"
            if val_ds is not None and ((epoch + 1) % args.eval_every == 0 or last):
                vis = bool(args.vis_every) and (epoch + 1) % args.vis_every == 0
                results = run_eval(val_ds, f"epoch{epoch:03d}", vis)
                log.write_json({"type": "eval", "split": "val", "epoch": epoch,
                                "protocol": args.eval_protocol, **results})  # fmt: skip
            # without a validation split the last epoch's weights are the selected ones
            is_best = loop.select(epoch, results, force=val_ds is None and last)
            if results:
                summary += (
                    f", val {name} {results[name]:.2f}, loss {results.get('loss', float('nan')):.4f}"
                    f" | best {loop.best[name]:.2f} (epoch {loop.best['epoch']})"
                )
            print_main(summary)
            return EpochEnd(results, is_best)

        start = time.time()
        loop.run(train_epoch, end_epoch)
        report_skipped(train_raw)  # bad scenes replaced in training (all workers and ranks)
        print_main(f"training took {time.time() - start:.0f} s")

        # ---- the test split, once, with the selected checkpoint ----
        test_results: dict[str, Any] = {}
        best_path, best = output_dir / "checkpoint-best.pth", loop.best
        if not args.no_test and not loop.stopped:
            barrier()
            if best_path.is_file():
                ckpt.load_model_state(model_without_ddp, ckpt.load_weights_file(best_path))
            test_results = run_eval(test_ds, "test", True, args.save_predictions)
            record = {"type": "test", "split": "test", "epoch": best["epoch"],
                      "protocol": args.eval_protocol, "checkpoint": str(best_path)}  # fmt: skip
            log.write_json({**record, **test_results})
            if is_main_process() and best_path.is_file():
                state = ckpt.load_checkpoint_file(best_path)
                state["test_metrics"] = test_results
                ckpt.save_checkpoint(best_path, state)
            print_main(f"test (checkpoint of epoch {best['epoch']}, selected on val {name}):")
            print_main(format_dense_metrics(test_results, task))
        log.close()
        return {"rank": args.rank, "last": loop.metrics, "best": best, "test": test_results,
                "train": loop.stats, "output_dir": output_dir, "stopped": loop.stopped}  # fmt: skip


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv`` (default: ``sys.argv``) and run :func:`main`; user errors (bad flag, missing
    or corrupt file, ...) print one ``error:`` line and exit 2 (``--debug``: the traceback)."""
    from util.training.cli import add_debug_arg, parse_and_run

    parser = argparse.ArgumentParser(
        "SpectralGPT dense finetuning (OSCD change detection, SegMunich segmentation)",
        parents=[get_args_parser()],
        formatter_class=common_args.HelpFormatter,
    )
    add_debug_arg(parser)
    return parse_and_run(parser, main, argv)


if __name__ == "__main__":
    cli()
