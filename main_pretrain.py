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
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import models_mae_spectral
from engine_pretrain import batch_images, save_reconstruction, train_one_epoch
from util.training import args as uargs
from util.training.checkpoint import (
    check_training_state,
    find_resume_checkpoint,
    load_checkpoint_file,
    load_training_state,
    load_weights_file,
    save_training_state,
)
from util.training.checkpoint_meta import checkpoint_meta, fill_args_from_checkpoint, read_metadata
from util.training.cli import add_debug_arg, run, setup_logging
from util.training.logger import TrainLogger, measure_flops, peak_flops
from util.training.runtime import (
    barrier,
    cleanup_distributed,
    init_distributed,
    is_main_process,
    is_sharded,
    seed_everything,
    setup_backends,
    unwrap_model,
    wrap_model_from_args,
)
from util.training.optim import (
    OptimStep,
    build_scheduler,
    create_adamw,
    effective_batch_size,
    effective_lr,
    pretrain_param_groups,
)

logger = logging.getLogger("main_pretrain")


DEFAULT_MODEL = "mae_vit_base_patch8_96"
DEFAULT_INPUT_SIZE = 96


def get_args_parser() -> argparse.ArgumentParser:
    """Pretraining options (MAE style); ``--help`` lists them with their defaults."""
    parser = argparse.ArgumentParser(
        "main_pretrain.py",
        description="SpectralGPT masked-autoencoder pretraining (3D spectral-spatial tokens).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
    uargs.add_optim_args(parser)
    uargs.add_data_args(parser)
    uargs.add_runtime_args(parser)
    uargs.add_logging_args(parser)
    uargs.add_distributed_args(parser)
    uargs.add_paper_compat_args(parser)
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
        ckpt = load_checkpoint_file(resume)
        check_training_state(ckpt, resume)
        meta = read_metadata(ckpt)
        del ckpt
        fill_args_from_checkpoint(
            args,
            resume,
            {
                "model": meta["model"],
                "input_size": meta["input_size"],
                "normalization": meta["normalization"],
            },
        )
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


def check_visible_tokens(num_patches: int, mask_ratio: float) -> int:
    """Visible tokens per image at ``mask_ratio``; raises ValueError when none would be left."""
    keep = int(num_patches * (1 - mask_ratio))
    if keep < 1:
        raise ValueError(
            f"--mask_ratio {mask_ratio} leaves no visible token of the {num_patches} per image; "
            f"use at most {1 - 1 / num_patches:.4f}"
        )
    return keep


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
class MaskBands:
    """Replace the listed bands (model order) by their per-image mean after normalisation.

    The paper (``--masked_bands``) fills raw digital numbers with the dataset mean before its
    min-max scaling; filling after normalisation keeps the value in the model's input range.
    """

    def __init__(self, transforms: Any, bands: list[int]):
        self.transforms, self.bands = transforms, list(bands)

    def __call__(self, sample: dict) -> dict:
        sample = self.transforms(sample) if self.transforms is not None else dict(sample)
        image = sample["image"].clone()
        image[self.bands] = image[self.bands].mean(dim=(-2, -1), keepdim=True)
        sample["image"] = image
        return sample


def build_pretrain_dataset(args: argparse.Namespace) -> tuple[Dataset, dict[str, Any]]:
    """Training dataset from ``--dataset_type/--train_path/--data_root`` and its metadata.

    ``--train_path`` is an index file (image paths relative to ``--data_root``, default: the
    index file's folder) or a dataset root in the official layout (its ``train`` split).

    Returns:
        The dataset and ``{"dataset", "normalization", "bands", "input_size"}`` for checkpoints.
    """
    from util.data import build_dataset, resolve_name
    from util.data.sentinel2 import MODEL_BANDS
    from util.data.transforms import build_transforms

    try:
        name = resolve_name(args.dataset_type)
    except KeyError as e:
        raise ValueError(f"--dataset_type: {e.args[0]}") from None
    uargs.check_band_flags(name, args.dropped_bands)
    if args.masked_bands and not all(0 <= b < len(MODEL_BANDS) for b in args.masked_bands):
        raise ValueError(
            f"--masked_bands {args.masked_bands}: indices must be in 0..11 (model order)"
        )
    if not args.train_path:
        raise ValueError("--train_path is required: an index file (csv/txt) or a dataset folder")
    path = Path(args.train_path)
    if path.is_file():
        root, index = (Path(args.data_root) if args.data_root else path.parent), path
    elif path.is_dir():
        root, index = path, None
    else:
        raise FileNotFoundError(f"--train_path {path} does not exist")
    try:
        transforms = build_transforms(
            name,
            is_train=not args.no_augment,
            input_size=args.input_size,
            normalization=args.normalization,
            task="pretrain",
        )
    except KeyError as e:
        raise ValueError(f"--normalization: {e.args[0]}") from None
    normalization = transforms.normalization
    if args.masked_bands:
        transforms = MaskBands(transforms, args.masked_bands)
    options: dict[str, Any] = {"skip_bad_samples": args.skip_bad_samples}
    if getattr(args, "native_size", None) is not None:
        options["native_size"] = args.native_size
    if name == "bigearthnet":
        options["load_labels"] = False  # pretraining reads images only (no label JSON needed)
    dataset = build_dataset(
        name,
        root,
        split=None if index is not None else "train",
        index=index,
        transforms=transforms,
        **options,
    )
    meta = {
        "dataset": name,
        "normalization": normalization,
        "bands": list(MODEL_BANDS),
        "input_size": args.input_size,
    }
    return dataset, meta


# ----------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------
def load_initial_weights(model: torch.nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load weights of any image size (paper or own checkpoint) for a fresh start.

    Goes through ``models_mae_spectral.checkpoint_filter_fn``: q/k/v fused, spatial position
    tables of encoder and decoder resampled to this model's grid, everything else copied as is.

    Returns:
        The filter's report (``missing``, ``dropped``, ``resampled`` keys).
    """
    report: dict[str, list[str]] = {}
    state = models_mae_spectral.checkpoint_filter_fn(load_weights_file(path), model, report=report)
    model.load_state_dict(state)
    logger.info(
        "initial weights from %s (resampled: %s; not in the file: %s)",
        path,
        report.get("resampled"),
        report.get("missing"),
    )
    return report


def _measure_step_flops(
    model: torch.nn.Module,
    sample: torch.Tensor,
    batch_size: int,
    mask_ratio: float,
    step: OptimStep,
) -> int:
    """FLOPs of one micro-step (forward + backward) at ``batch_size``, RNG and grads untouched."""
    core = unwrap_model(model)
    x = sample.unsqueeze(0).expand(batch_size, *sample.shape).contiguous()
    noise = torch.rand(batch_size, core.num_patches, generator=torch.Generator().manual_seed(0))
    noise = noise.to(x.device)

    def fwd_bwd() -> None:
        with step.autocast():
            loss, _, _ = core(x, mask_ratio=mask_ratio, noise=noise)
        loss.backward()

    flops = measure_flops(fwd_bwd)
    core.zero_grad(set_to_none=True)
    return flops


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------
def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run pretraining; returns the last epoch's statistics and the paths it wrote."""
    resume = resolve_args(args)
    init_distributed(args)
    if not is_main_process():
        logging.getLogger().setLevel(logging.WARNING)
    seed_everything(args.seed)
    device = args.device
    dtype = uargs.resolve_dtype(args.dtype, device)
    args.dtype = str(dtype).replace("torch.", "")  # record the resolved value in args.json
    setup_backends(device)
    if args.spatial_mask:
        logger.warning("--spatial_mask applies to the paper's group_c models only; ignored")
    output_dir = Path(args.output_dir)
    if is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)

    # data
    dataset, data_meta = build_pretrain_dataset(args)
    sampler = DistributedSampler(
        dataset, num_replicas=args.world_size, rank=args.rank, shuffle=True, seed=args.seed
    )
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.num_workers,
        pin_memory=args.pin_mem and device.type == "cuda",
        drop_last=True,
        # workers are re-created each epoch: their RNG seeds are then drawn from the main process's
        # RNG at the epoch start, which a resumed run restores (persistent workers would not be)
        persistent_workers=False,
    )
    steps_per_epoch = len(loader) // args.accum_iter
    if steps_per_epoch < 1:
        raise ValueError(
            f"{len(dataset)} training samples are fewer than one optimiser step needs "
            f"(batch_size {args.batch_size} x accum_iter {args.accum_iter} x {args.world_size} "
            "processes); lower --batch_size/--accum_iter or add data"
        )

    # model (--input_size sets its image size; the paper built the factory's size regardless)
    name_size = args.model.rsplit("_", 1)[-1]
    if name_size.isdigit() and int(name_size) != args.input_size:
        logger.warning(
            "--model %s is built at --input_size %d px (position tables sized for %d px)",
            args.model,
            args.input_size,
            args.input_size,
        )
    model_kwargs = {"img_size": args.input_size, "norm_pix_loss": args.norm_pix_loss}
    model = models_mae_spectral.create_model(args.model, **model_kwargs)
    check_visible_tokens(model.num_patches, args.mask_ratio)
    ckpt_meta = checkpoint_meta(
        model=args.model,
        model_module="models_mae_spectral",
        task="pretrain",
        input_size=args.input_size,
        bands=data_meta["bands"],
        normalization=data_meta["normalization"],
        classes=[],
        dataset=data_meta["dataset"],
        model_kwargs=model_kwargs,
    )
    init_from = args.resume_different_size or args.finetune
    if init_from:
        load_initial_weights(model, init_from)
    model.to(device)

    # wrapping (FSDP shards the parameters in place: before the optimiser), optimiser, schedule
    train_model = wrap_model_from_args(model, args, dtype)
    lr = effective_lr(args)
    skip = model.no_weight_decay() if args.no_wd_pos else ()
    optimizer = create_adamw(pretrain_param_groups(model, args.weight_decay, skip), lr=lr)
    scheduler = build_scheduler(optimizer, args, steps_per_epoch)
    step = OptimStep(
        train_model,
        optimizer,
        scheduler,
        device_type=device.type,
        dtype=dtype,
        accum_iter=args.accum_iter,
        clip_grad=args.clip_grad,
    )

    global_step = 0
    if resume is not None:
        args.start_epoch, global_step = load_training_state(resume, model, optimizer, step)
    if is_main_process():
        uargs.save_args(args, output_dir)
    logger.info(
        "model %s (%.1fM params), %d samples, %d steps/epoch, eff. batch %d, lr %.3g, dtype %s",
        args.model,
        sum(p.numel() for p in model.parameters()) / 1e6,
        len(dataset),
        steps_per_epoch,
        effective_batch_size(args),
        lr,
        args.dtype,
    )

    # a fixed sample for the figure (and the FLOP count), drawn without touching the RNG streams
    with torch.random.fork_rng(devices=[]):
        vis_image = batch_images(dataset[0])
    peak = peak_flops(device, dtype)
    flops = (
        _measure_step_flops(model, vis_image.to(device), args.batch_size, args.mask_ratio, step)
        if peak
        else None
    )

    log = TrainLogger(
        output_dir,
        log_dir=args.log_dir,
        wandb_project=args.wandb,
        wandb_entity=args.wandb_entity,
        config=uargs.args_to_dict(args),
        progress=False if args.no_progress else None,
    )
    if resume is not None:
        log.mark_resume(args.start_epoch, global_step, resume)
    log.start_run(args.start_epoch, args.epochs)
    stats: dict[str, Any] = {}
    ckpt_path = vis_path = None
    if args.start_epoch >= args.epochs:
        logger.info(
            "nothing to train: epoch %d of --epochs %d is done", args.start_epoch, args.epochs
        )
    try:
        for epoch in range(args.start_epoch, args.epochs):
            sampler.set_epoch(epoch)
            stats = train_one_epoch(
                train_model,
                loader,
                step,
                epoch=epoch,
                device=device,
                mask_ratio=args.mask_ratio,
                seed=args.seed,
                print_freq=args.print_freq,
                log=log,
                flops_per_step=flops,
                peak_flops=peak,
            )
            final = epoch + 1 == args.epochs
            numbered = (epoch + 1) % args.save_every == 0 or final
            ckpt_path = save_training_state(
                output_dir,
                epoch,
                model,
                optimizer,
                step,
                args,
                extra={"data": data_meta, "meta": ckpt_meta},
                numbered=numbered,
            )
            log.log_epoch(epoch, stats, step=step.num_updates)
            if (
                (is_main_process() or is_sharded(model))  # a sharded forward is collective
                and args.vis_every
                and ((epoch + 1) % args.vis_every == 0 or final)
            ):
                vis_path = save_reconstruction(
                    output_dir / f"reconstruction-{epoch}.png",
                    model,
                    vis_image,
                    args.mask_ratio,
                    seed=args.seed,
                    autocast=step.autocast(),
                    title=f"epoch {epoch}, train loss {stats['loss']:.4f}",
                )
            logger.info(
                "epoch %d: loss %.4f (masked %.4f, spectral %.4f), lr %.3g, %.1f img/s",
                epoch,
                stats["loss"],
                stats["loss_masked"],
                stats["loss_spectral"],
                stats["lr"],
                stats["img_per_s"],
            )
        from util.data import report_skipped

        report_skipped(dataset)
        barrier()
    finally:
        log.close()
        cleanup_distributed()
    return {
        "rank": args.rank,
        "stats": stats,
        "checkpoint": ckpt_path,
        "log": log.jsonl_path,
        "reconstruction": vis_path,
        "output_dir": output_dir,
    }


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv`` (default: ``sys.argv``), run :func:`main` and print where the outputs are.

    User errors (bad flag, missing/corrupt file, ...) print one ``error:`` line and exit 2.
    """
    args = get_args_parser().parse_args(argv)
    setup_logging(args.debug)
    result = run(main, args)
    if result["rank"] == 0 and result["checkpoint"] is not None:
        print(f"checkpoint:     {result['checkpoint']}")
        print(f"log:            {result['log']}")
        if result["reconstruction"] is not None:
            print(f"reconstruction: {result['reconstruction']}")
    return result


if __name__ == "__main__":
    cli()
