"""SpectralGPT masked-autoencoder pretraining (wiring only; the epoch lives in engine_pretrain).

Single process::

    python main_pretrain.py --model mae_vit_tiny_patch8_96 --dataset_type fmow_sentinel \
        --train_path DATA/train.csv --epochs 2 --batch_size 8 --device cpu

Several processes / nodes (env:// rendezvous; gloo on CPU, NCCL on CUDA)::

    torchrun --nproc_per_node=8 main_pretrain.py --batch_size 16 --accum_iter 32 --blr 0.0002 \
        --epochs 200 --warmup_epochs 20 --input_size 96 --mask_ratio 0.90 \
        --model mae_vit_base_patch8_96 --dataset_type sentinel --dropped_bands 10 --train_path ...

Stage 2 (BigEarthNet, 128 px) from a stage-1 checkpoint: ``--resume_different_size CKPT`` (spatial
position tables resampled). ``--resume CKPT`` / ``--auto_resume`` continue a run exactly.

References: MAE (facebookresearch/mae, main_pretrain.py), spec §6.4.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

import engine_pretrain as engine
import models_mae_spectral
from evaluation.reconstruction import save_reconstruction
from util.data import report_skipped
from util.training import args as uargs
from util.training.checkpoint import find_resume_checkpoint
from util.training.cli import add_debug_arg, parse_and_run
from util.training.loader import train_loader_from_args
from util.training.logger import peak_flops
from util.training.loop import EpochEnd, TrainLoop, checkpoint_flags, train_logger, training_process
from util.training.optim import (
    build_optimisation,
    effective_batch_size,
    effective_lr,
    pretrain_param_groups,
)
from util.training.runtime import barrier, is_main_process, is_sharded, wrap_model_from_args

logger = logging.getLogger("main_pretrain")

DEFAULT_MODEL = "mae_vit_base_patch8_96"
DEFAULT_INPUT_SIZE = 96


def get_args_parser() -> argparse.ArgumentParser:
    """Pretraining options (MAE style); ``--help`` lists them with their defaults."""
    parser = argparse.ArgumentParser(
        "main_pretrain.py",
        description="SpectralGPT masked-autoencoder pretraining (3D spectral-spatial tokens).",
        formatter_class=uargs.HelpFormatter,
    )
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model",
        default=None,
        help=f"pretraining model (default {DEFAULT_MODEL}, or the --resume checkpoint's); one of "
        f"{', '.join(sorted(models_mae_spectral.MODELS))}",
    )
    g.add_argument("--mask_ratio", type=float, default=0.90, help="fraction of 3D tokens hidden")
    g.add_argument(
        "--norm_pix_loss",
        action="store_true",
        help="normalise each target token by its mean/std (off in the paper)",
    )
    g.add_argument(
        "--spatial_mask", action="store_true", help="paper flag for group_c models; unused"
    )
    g.add_argument(
        "--no_wd_pos",
        action="store_true",
        help="no weight decay on position tables and mask token (the paper decays them)",
    )
    g.add_argument(
        "--resume_different_size",
        default="",
        metavar="CKPT",
        help="start from the weights of a checkpoint of another image size (stage 1 -> stage 2); "
        "spatial position tables are resampled, optimizer and epoch start fresh",
    )
    g.add_argument(
        "--finetune",
        "--init_from",
        dest="finetune",
        default="",
        metavar="CKPT",
        help="initial weights (e.g. the released SpectralGPT.pth, any image size); optimizer and "
        "epoch start fresh, and the log says which tensors were loaded or resampled",
    )
    g.add_argument(
        "--no_augment",
        action="store_true",
        help="train on the evaluation transform (resize + centre crop) instead of random crops/flips",
    )
    uargs.add_common_args(parser)
    parser.set_defaults(input_size=None)  # DEFAULT_INPUT_SIZE, or the --resume checkpoint's
    add_debug_arg(parser)
    return parser


def resolve_args(args: argparse.Namespace) -> Path | None:
    """Check flags and fill defaults before any heavy work; returns the checkpoint to resume.

    ``--resume``/``--auto_resume``: the checkpoint must be a full training state; its model name,
    input size and normalisation are used when the flags are not given (given and different: a
    one-line error). Warm-up is shortened when it would fill the run; ``--mask_ratio`` must be in
    [0, 1).
    """
    if not 0.0 <= args.mask_ratio < 1.0:
        raise ValueError(
            f"--mask_ratio must be in [0, 1) (the fraction of tokens hidden, e.g. 0.9), got "
            f"{args.mask_ratio}"
        )
    resume = find_resume_checkpoint(args.resume, args.auto_resume, args.output_dir)
    if resume is not None:
        checkpoint_flags(args, resume, ("model", "input_size", "normalization"))
    if args.model is None:
        args.model = DEFAULT_MODEL
    if args.input_size is None:
        args.input_size = DEFAULT_INPUT_SIZE
    if args.model not in models_mae_spectral.MODELS:
        raise ValueError(
            f"--model {args.model!r} is not a pretraining model; one of "
            f"{', '.join(sorted(models_mae_spectral.MODELS))}"
        )
    uargs.validate_common_args(args)
    uargs.clamp_warmup(args)
    return resume


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run pretraining; returns the last epoch's statistics and the paths it wrote."""
    resume = resolve_args(args)
    with training_process(args) as output_dir:
        device, dtype = args.device, uargs.resolve_dtype(args.dtype, args.device)
        args.dtype = str(dtype).replace("torch.", "")  # record the resolved value in args.json
        if args.spatial_mask:
            logger.warning("--spatial_mask applies to the paper's group_c models only; ignored")

        dataset, data_meta = engine.build_pretrain_dataset(args)
        loader = train_loader_from_args(dataset, args)
        model, meta = engine.build_mae(args, data_meta)
        model.to(device)

        # wrapping (FSDP shards the parameters in place: before the optimiser), optimiser, schedule
        train_model = wrap_model_from_args(model, args, dtype)
        lr = effective_lr(args)
        skip = model.no_weight_decay() if args.no_wd_pos else ()
        groups = pretrain_param_groups(model, args.weight_decay, skip)
        optimizer, _, step, epoch_batches = build_optimisation(
            train_model, groups, args, len(loader), device.type, dtype, betas=(0.9, 0.95)
        )
        log = train_logger(args)
        loop = TrainLoop(
            args, model, optimizer, step, loader, log,
            epoch_batches=epoch_batches, extra={"data": data_meta, "meta": meta},
        )  # fmt: skip
        loop.resume(resume)
        if is_main_process():
            uargs.save_args(args, output_dir)
        logger.info(
            "model %s (%.1fM params), %d samples, %d steps/epoch, eff. batch %d, lr %.3g, dtype %s",
            args.model, sum(p.numel() for p in model.parameters()) / 1e6, len(dataset),
            epoch_batches // args.accum_iter, effective_batch_size(args), lr, args.dtype,
        )  # fmt: skip

        # a fixed sample for the figure (and the FLOP count), drawn without touching the RNG streams
        with torch.random.fork_rng(devices=[]):
            vis_image = engine.batch_images(dataset[0])
        peak = peak_flops(device, dtype)
        flops = peak and engine.measure_step_flops(model, vis_image.to(device), args.batch_size,
                                            args.mask_ratio, step)  # fmt: skip
        vis_path = None

        def train_epoch(epoch: int, start: int, on_update) -> dict[str, Any]:
            return engine.train_one_epoch(
                train_model, loader, step, epoch=epoch, device=device, mask_ratio=args.mask_ratio,
                seed=args.seed, print_freq=args.print_freq, log=log, flops_per_step=flops,
                peak_flops=peak, start=start, on_update=on_update,
            )  # fmt: skip

        def end_epoch(epoch: int, stats: dict[str, Any]) -> EpochEnd:
            nonlocal vis_path
            due = args.vis_every and ((epoch + 1) % args.vis_every == 0 or epoch + 1 == args.epochs)
            if due and (is_main_process() or is_sharded(model)):  # a sharded forward is collective
                vis_path = save_reconstruction(
                    output_dir / f"reconstruction-{epoch}.png", model, vis_image,
                    args.mask_ratio, seed=args.seed, autocast=step.autocast(),
                    title=f"epoch {epoch}, train loss {stats['loss']:.4f}",
                )  # fmt: skip
            logger.info(
                "epoch %d: loss %.4f (masked %.4f, spectral %.4f), lr %.3g, %.1f img/s",
                epoch, stats["loss"], stats["loss_masked"], stats["loss_spectral"], stats["lr"],
                stats["img_per_s"],
            )  # fmt: skip
            return EpochEnd()

        try:
            loop.run(train_epoch, end_epoch)
            report_skipped(dataset)
            barrier()
        finally:
            log.close()
    return dict(rank=args.rank, stats=loop.stats, checkpoint=loop.checkpoint, log=log.jsonl_path,
                reconstruction=vis_path, output_dir=output_dir, stopped=loop.stopped)  # fmt: skip


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv`` (default: ``sys.argv``), run :func:`main` and print where the outputs are.

    User errors (bad flag, missing/corrupt file, ...) print one ``error:`` line and exit 2.
    """
    result = parse_and_run(get_args_parser(), main, argv)
    if result["rank"] == 0 and result["checkpoint"] is not None:
        print(f"checkpoint:     {result['checkpoint']}")
        print(f"log:            {result['log']}")
        if result["reconstruction"] is not None:
            print(f"reconstruction: {result['reconstruction']}")
    return result


if __name__ == "__main__":
    cli()
