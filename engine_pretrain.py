"""One pretraining epoch of the SpectralGPT masked autoencoder, and the pretraining set-up.

The hot loop does no host synchronisation except on log steps (every ``print_freq`` micro-steps
and the last one): losses, gradient norms and the non-finite flag stay on the device until then.

Masking noise of micro-step ``it`` comes from a generator seeded by ``(seed, epoch, it)``, identical
on every rank; each rank takes the rows of its own samples of the global batch (the sampler
interleaves them), so a run's masks -- and its result -- do not depend on how the global batch is
split over processes, and a run resumed at any optimiser step (``start``) draws the same masks.

References: MAE (facebookresearch/mae, engine_pretrain.py), spec §6.2.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

import models_mae_spectral
from util.training.args import check_band_flags
from util.training.checkpoint import load_weights_file
from util.training.checkpoint_meta import checkpoint_meta
from util.training.loader import data_source, derive_seed
from util.training.logger import TrainLogger, measure_flops, mfu
from util.training.optim import OptimStep
from util.training.runtime import all_reduce_mean, get_rank, get_world_size, unwrap_model

logger = logging.getLogger(__name__)


def batch_images(batch: Any) -> torch.Tensor:
    """The image tensor of a batch: ``batch["image"]`` (dict samples) or ``batch[0]`` (tuples)."""
    if isinstance(batch, dict):
        return batch["image"]
    if isinstance(batch, list | tuple):
        return batch[0]
    return batch


def mask_generator(
    device: torch.device | str,
    seed: int,
    epoch: int,
    it: int = 0,
    gen: torch.Generator | None = None,
) -> torch.Generator:
    """Masking-noise generator of micro-step ``it`` of ``epoch``, the same on every rank
    (``gen``, when given, is re-seeded instead of making a new one)."""
    g = gen if gen is not None else torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, epoch, it))
    return g


def masking_noise(
    gen: torch.Generator, batch_size: int, num_patches: int, device: torch.device | str
) -> torch.Tensor:
    """``(batch_size, num_patches)`` uniform noise: this rank's rows of the global batch's noise."""
    world, rank = get_world_size(), get_rank()
    noise = torch.rand(batch_size * world, num_patches, generator=gen, device=device)
    return noise[rank::world] if world > 1 else noise


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optim_step: OptimStep,
    epoch: int,
    device: torch.device,
    mask_ratio: float,
    seed: int = 0,
    print_freq: int = 20,
    log: TrainLogger | None = None,
    flops_per_step: float | None = None,
    peak_flops: float | None = None,
    max_steps: int | None = None,
    start: int = 0,
    on_update: Callable[[int], bool] | None = None,
) -> dict[str, float]:
    """Train the MAE for one epoch (from micro-step ``start``) and return its averaged statistics.

    Args:
        model: the (possibly compiled and/or DDP-wrapped) ``MaskedAutoencoderViT``.
        loader: yields batches (dicts with ``image`` ``(N, 12, H, W)``, or tuples).
        optim_step: the optimisation step (optimizer, schedule, accumulation, autocast).
        epoch: epoch index (for the masking noise and messages).
        device: where the batches go.
        mask_ratio: fraction of tokens hidden.
        seed: run seed (masking noise).
        print_freq: log every N micro-steps.
        log: logging sink (rank 0 writes).
        flops_per_step: FLOPs of one micro-step (forward + backward) on this process, for MFU.
        peak_flops: the device's peak FLOP/s, for MFU.
        max_steps: stop after this many micro-steps (benchmarks, debugging).
        start: micro-steps of this epoch already done (a resumed run); ``loader`` yields the rest.
        on_update: called with the micro-steps done after each optimiser update; True stops the
            epoch (``util.training.loop``: mid-epoch checkpoints, ``--stop_after_steps``).

    Returns:
        ``loss``, ``loss_masked``, ``loss_spectral`` (means over the epoch and all ranks), ``lr``
        (at the end), ``grad_norm`` (mean over optimiser steps), ``img_per_s`` (all ranks),
        ``step_time`` (seconds per micro-step), ``mfu`` (if known), ``steps``.
    """
    model.train()
    core = unwrap_model(model)
    num_patches = core.num_patches
    world = get_world_size()
    gen = mask_generator(device, seed, epoch)
    total = start + len(loader) if hasattr(loader, "__len__") else None
    if max_steps is not None:
        total = min(total, max_steps) if total is not None else max_steps
    if total is not None:
        # whole accumulation windows only: no gradient is carried into the next epoch, so a run
        # resumed at an epoch boundary continues exactly
        total -= total % optim_step.accum_iter
        if total == 0:
            raise ValueError(
                f"epoch {epoch} has fewer batches than --accum_iter {optim_step.accum_iter}: "
                "no optimiser step would happen"
            )

    zero = torch.zeros((), device=device)
    sums = {"loss": zero.clone(), "loss_masked": zero.clone(), "loss_spectral": zero.clone()}
    grad_norm_sum, n_updates = zero.clone(), 0
    n_steps = n_samples = 0
    window_steps, window_samples = 0, 0
    bar = log.progress(loader, total=total, desc=f"epoch {epoch}") if log else loader
    t0 = window_start = time.perf_counter()
    last_rate: dict[str, float | None] = {}

    for it, batch in enumerate(bar, start):
        if total is not None and it >= total:
            break
        imgs = batch_images(batch).to(device, non_blocking=True)
        mask_generator(device, seed, epoch, it, gen)
        noise = masking_noise(gen, imgs.shape[0], num_patches, device)

        def closure(imgs=imgs, noise=noise):
            loss, _, _ = model(imgs, mask_ratio=mask_ratio, noise=noise)
            return loss, core.last_loss_terms

        out = optim_step(it, closure)
        sums["loss"] += out.loss.float()
        for k in ("loss_masked", "loss_spectral"):
            if k in (out.extras or {}):
                sums[k] += out.extras[k].float()
        if out.grad_norm is not None:
            grad_norm_sum += out.grad_norm.float()
            n_updates += 1
        n_steps += 1
        n_samples += imgs.shape[0]
        window_steps += 1
        window_samples += imgs.shape[0]

        last = total is not None and it + 1 >= total
        if it % print_freq == 0 or last:
            optim_step.check_finite(f"epoch {epoch}, step {it}")  # host sync (log steps only)
            now = time.perf_counter()
            dt = max(now - window_start, 1e-9)
            rate = window_steps / dt
            last_rate = {
                "img_per_s": window_samples * world / dt,
                "step_time": dt / window_steps,
                "mfu": mfu(flops_per_step, rate, peak_flops),
            }
            scalars = {
                "loss": out.loss.item(),
                **{k: v.item() for k, v in (out.extras or {}).items()},
                "lr": optim_step.lr,
                "grad_norm": out.grad_norm.item() if out.grad_norm is not None else None,
                **last_rate,
            }
            if log is not None:
                log.log_step(epoch, epoch * (total or 0) + it, scalars, it=it, total=total)
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{scalars['loss']:.4f}", lr=f"{scalars['lr']:.2e}")
            window_start, window_steps, window_samples = time.perf_counter(), 0, 0
        if out.stepped and on_update is not None and on_update(it + 1):
            break

    optim_step.check_finite(f"the end of epoch {epoch}")
    if n_steps == 0:
        raise ValueError(f"epoch {epoch}: the data loader yielded no batch")
    elapsed = time.perf_counter() - t0
    stats = {k: float(all_reduce_mean(v / n_steps)) for k, v in sums.items()}
    stats["grad_norm"] = (
        float(all_reduce_mean(grad_norm_sum / max(n_updates, 1))) if n_updates else None
    )
    stats["lr"] = optim_step.lr
    stats["img_per_s"] = n_samples * world / elapsed
    stats["step_time"] = elapsed / n_steps
    stats["mfu"] = mfu(flops_per_step, n_steps / elapsed, peak_flops)
    stats["steps"] = n_steps
    return stats


# ----------------------------------------------------------------------------------------------
# pretraining set-up: data, initial weights, FLOPs
# ----------------------------------------------------------------------------------------------
def check_visible_tokens(num_patches: int, mask_ratio: float) -> int:
    """Visible tokens per image at ``mask_ratio``; raises ValueError when none would be left."""
    keep = int(num_patches * (1 - mask_ratio))
    if keep < 1:
        raise ValueError(
            f"--mask_ratio {mask_ratio} leaves no visible token of the {num_patches} per image; "
            f"use at most {1 - 1 / num_patches:.4f}"
        )
    return keep


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
        The dataset and ``{"dataset", "normalization", "bands", "input_size", "native_size"}``
        for checkpoints.
    """
    from util.data import build_dataset, options_from_args, resolve_name
    from util.data.sentinel2 import MODEL_BANDS
    from util.data.transforms import build_transforms

    try:
        name = resolve_name(args.dataset_type)
    except KeyError as e:
        raise ValueError(f"--dataset_type: {e.args[0]}") from None
    check_band_flags(name, args.dropped_bands)
    if args.masked_bands and not all(0 <= b < len(MODEL_BANDS) for b in args.masked_bands):
        raise ValueError(
            f"--masked_bands {args.masked_bands}: indices must be in 0..11 (model order)"
        )
    source = data_source(args.train_path, args.data_root, "train", "--train_path")
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
    options = options_from_args(name, args)
    if name == "bigearthnet":
        options["load_labels"] = False  # pretraining reads images only (no label JSON needed)
    dataset = build_dataset(name, transforms=transforms, **source, **options)
    meta = {
        "dataset": name,
        "normalization": normalization,
        "bands": list(MODEL_BANDS),
        "input_size": args.input_size,
        "native_size": getattr(dataset, "native_size", None),  # of the files (input contract)
    }
    return dataset, meta


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


def build_mae(args: argparse.Namespace, data_meta: dict[str, Any]) -> tuple[nn.Module, dict]:
    """The MAE of ``--model`` at ``--input_size`` (initial weights from ``--resume_different_size``
    or ``--finetune``), and the ``meta`` entry of its checkpoints."""
    name_size = args.model.rsplit("_", 1)[-1]
    if name_size.isdigit() and int(name_size) != args.input_size:
        logger.warning(  # the paper built the factory's size regardless of --input_size
            "--model %s is built at --input_size %d px (position tables sized for %d px)",
            args.model,
            args.input_size,
            args.input_size,
        )
    model_kwargs = {"img_size": args.input_size, "norm_pix_loss": args.norm_pix_loss}
    model = models_mae_spectral.create_model(args.model, **model_kwargs)
    check_visible_tokens(model.num_patches, args.mask_ratio)
    meta = checkpoint_meta(
        model=args.model,
        model_module="models_mae_spectral",
        task="pretrain",
        input_size=args.input_size,
        bands=data_meta["bands"],
        normalization=data_meta["normalization"],
        classes=[],
        dataset=data_meta["dataset"],
        model_kwargs=model_kwargs,
        native_size=data_meta.get("native_size"),
    )
    if args.resume_different_size or args.finetune:
        load_initial_weights(model, args.resume_different_size or args.finetune)
    return model, meta


def measure_step_flops(
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
