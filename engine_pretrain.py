"""One pretraining epoch of the SpectralGPT masked autoencoder, and the reconstruction figure.

The hot loop does no host synchronisation except on log steps (every ``print_freq`` micro-steps
and the last one): losses, gradient norms and the non-finite flag stay on the device until then.

Masking noise comes from a generator seeded by ``(seed, epoch)`` and identical on every rank; each
rank takes the rows of its own samples of the global batch (``DistributedSampler`` interleaves
them), so a run's masks -- and its result -- do not depend on how the global batch is split over
processes, and resuming at an epoch boundary reproduces the masks exactly.

References: MAE (facebookresearch/mae, engine_pretrain.py), spec §6.2.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from util.logger import TrainLogger, mfu
from util.misc import all_reduce_mean, get_rank, get_world_size, unwrap_model
from util.optim import OptimStep

logger = logging.getLogger(__name__)


def batch_images(batch: Any) -> torch.Tensor:
    """The image tensor of a batch: ``batch["image"]`` (dict samples) or ``batch[0]`` (tuples)."""
    if isinstance(batch, dict):
        return batch["image"]
    if isinstance(batch, list | tuple):
        return batch[0]
    return batch


def mask_generator(device: torch.device | str, seed: int, epoch: int) -> torch.Generator:
    """Masking-noise generator for ``epoch``, the same on every rank."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed) * 1_000_003 + int(epoch))
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
) -> dict[str, float]:
    """Train the MAE for one epoch and return its averaged statistics.

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
    total = len(loader) if hasattr(loader, "__len__") else None
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
    start = window_start = time.perf_counter()
    last_rate: dict[str, float | None] = {}

    for it, batch in enumerate(bar):
        if total is not None and it >= total:
            break
        imgs = batch_images(batch).to(device, non_blocking=True)
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
                log.log_step(epoch, epoch * (total or 0) + it, scalars)
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{scalars['loss']:.4f}", lr=f"{scalars['lr']:.2e}")
            window_start, window_steps, window_samples = time.perf_counter(), 0, 0

    optim_step.check_finite(f"the end of epoch {epoch}")
    if n_steps == 0:
        raise ValueError(f"epoch {epoch}: the data loader yielded no batch")
    elapsed = time.perf_counter() - start
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
# reconstruction figure
# ----------------------------------------------------------------------------------------------
DEFAULT_VIS_BANDS = ("B02", "B04", "B08", "B11")


@torch.no_grad()
def reconstruction_grid(
    model: nn.Module,
    image: torch.Tensor,
    mask_ratio: float,
    bands: tuple[str, ...] = DEFAULT_VIS_BANDS,
    seed: int = 0,
    autocast: Any = None,
    min_side: int = 128,
) -> torch.Tensor:
    """Rows = bands, columns = input / masked input / reconstruction, for one ``(12, H, W)`` image.

    The reconstruction shows the model's prediction at hidden patches and the input at visible
    ones. Each band is scaled to [0, 1] with the input's min/max. Returns ``(rows*3, 1, S, S)``.
    """
    core = unwrap_model(model)
    was_training = core.training
    core.eval()
    x = image.unsqueeze(0).to(next(core.parameters()).device)
    gen = torch.Generator(device=x.device)
    gen.manual_seed(seed)
    noise = torch.rand(1, core.num_patches, generator=gen, device=x.device)
    try:
        ctx = autocast if autocast is not None else torch.autocast(x.device.type, enabled=False)
        with ctx:
            _, pred, mask = core(x, mask_ratio=mask_ratio, noise=noise)
    finally:
        core.train(was_training)
    pred = pred.float()
    target = core.patchify(
        core.to_5d(x).index_select(2, core.pred_band_index), core.t_pred_patch_size
    )
    if core.norm_pix_loss:  # predictions are per-token normalised: undo with the target's stats
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        pred = pred * (var + 1e-6) ** 0.5 + mean
    token_mask = mask.unsqueeze(-1).expand_as(pred)
    recon = core.unpatchify(pred * token_mask + target * (1 - token_mask), core.t_pred_patch_size)
    pix_mask = core.unpatchify(token_mask.contiguous(), core.t_pred_patch_size)
    inp = core.unpatchify(target, core.t_pred_patch_size)  # (1, 1, T', H, W)

    all_bands = list(getattr(core, "bands", ()))
    pred_names = [all_bands[i] for i in core.pred_band_index.tolist()] if all_bands else []
    idx = [pred_names.index(b) for b in bands if b in pred_names] or [0]
    tiles = []
    for i in idx:
        band = inp[0, 0, i]
        lo, hi = band.min(), band.max()
        scale = (hi - lo).clamp_min(1e-8)
        for img in (band, band * (1 - pix_mask[0, 0, i]), recon[0, 0, i]):
            tiles.append(((img - lo) / scale).clamp(0, 1))
    grid = torch.stack(tiles).unsqueeze(1)
    if grid.shape[-1] < min_side:
        grid = F.interpolate(grid, scale_factor=-(-min_side // grid.shape[-1]), mode="nearest")
    return grid.cpu()


def save_reconstruction(
    path: str | Path,
    model: nn.Module,
    image: torch.Tensor,
    mask_ratio: float,
    seed: int = 0,
    autocast: Any = None,
) -> Path | None:
    """Write the :func:`reconstruction_grid` of ``image`` as a PNG (3 columns) and return its path.

    For an FSDP-sharded model call it on every rank (the forward is collective); only rank 0
    writes, the other ranks get ``None``.
    """
    from torchvision.utils import save_image

    grid = reconstruction_grid(model, image, mask_ratio, seed=seed, autocast=autocast)
    if get_rank() != 0:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path, nrow=3, padding=2, pad_value=1.0)
    return path
