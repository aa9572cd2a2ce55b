"""The reconstruction figure of a masked autoencoder: what pretraining has learned, by eye.

:func:`save_reconstruction` masks one image with a seeded draw, reconstructs it and draws the
figure ``main_pretrain`` writes every ``--vis_every`` epochs (bands x input / masked input /
reconstruction, the spectra of a few hidden pixels, and the hidden-pixel error next to the mean
fill's); :func:`reconstruct` returns the numbers, :func:`reconstruction_grid` a plain tensor grid.
How to read it: docs/pretraining.md.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from util.training.runtime import get_rank, unwrap_model

logger = logging.getLogger(__name__)

DEFAULT_VIS_BANDS = ("B02", "B04", "B08", "B11")


@torch.no_grad()
def reconstruct(
    model: nn.Module,
    image: torch.Tensor,
    mask_ratio: float,
    seed: int = 0,
    autocast: Any = None,
) -> dict[str, Any]:
    """Mask one ``(12, H, W)`` image with a seeded draw and reconstruct it.

    Returns ``input``, ``recon`` (prediction at hidden patches, input elsewhere), ``hidden``
    (1 at hidden pixels), each ``(B, H, W)`` float on the CPU for the ``B`` reconstructed bands,
    ``bands`` (their names) and ``loss`` (the model's loss on this draw).
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
            loss, pred, mask = core(x, mask_ratio=mask_ratio, noise=noise)
    finally:
        core.train(was_training)
    pred = pred.float()
    target = core.patchify(
        core.to_5d(x).index_select(2, core.pred_band_index), core.t_pred_patch_size
    ).float()
    if core.norm_pix_loss:  # predictions are per-token normalised: undo with the target's stats
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        pred = pred * (var + 1e-6) ** 0.5 + mean
    token_mask = mask.float().unsqueeze(-1).expand_as(pred)
    recon = core.unpatchify(pred * token_mask + target * (1 - token_mask), core.t_pred_patch_size)
    hidden = core.unpatchify(token_mask.contiguous(), core.t_pred_patch_size)
    inp = core.unpatchify(target, core.t_pred_patch_size)  # (1, 1, T', H, W)
    all_bands = list(getattr(core, "bands", ()))
    idx = core.pred_band_index.tolist()
    names = [all_bands[i] for i in idx] if all_bands else [f"band {i}" for i in idx]
    return {
        "input": inp[0, 0].cpu(),
        "recon": recon[0, 0].cpu(),
        "hidden": hidden[0, 0].cpu(),
        "bands": names,
        "loss": float(loss),
    }


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
    ones. Each band is scaled to [0, 1] with the input's min/max. Returns ``(rows*3, 1, S, S)``
    (the plain tensor grid; :func:`save_reconstruction` draws the annotated figure).
    """
    r = reconstruct(model, image, mask_ratio, seed=seed, autocast=autocast)
    idx = [r["bands"].index(b) for b in bands if b in r["bands"]] or [0]
    tiles = []
    for i in idx:
        band = r["input"][i]
        lo, hi = band.min(), band.max()
        scale = (hi - lo).clamp_min(1e-8)
        for img in (band, band * (1 - r["hidden"][i]), r["recon"][i]):
            tiles.append(((img - lo) / scale).clamp(0, 1))
    grid = torch.stack(tiles).unsqueeze(1)
    if grid.shape[-1] < min_side:
        grid = F.interpolate(grid, scale_factor=-(-min_side // grid.shape[-1]), mode="nearest")
    return grid


def _spectra_pixels(hidden: torch.Tensor, count: int = 3) -> list[tuple[int, int]]:
    """A few pixels hidden in every band, spread over the image (deterministic)."""
    every = hidden.bool().all(dim=0)
    ys, xs = torch.nonzero(every, as_tuple=True)
    if len(ys) == 0:
        ys, xs = torch.nonzero(hidden.bool().any(dim=0), as_tuple=True)
    if len(ys) == 0:
        return []
    picks = torch.linspace(0, len(ys) - 1, min(count, len(ys))).round().long()
    return [(int(ys[k]), int(xs[k])) for k in picks]


def save_reconstruction(
    path: str | Path,
    model: nn.Module,
    image: torch.Tensor,
    mask_ratio: float,
    seed: int = 0,
    autocast: Any = None,
    title: str | None = None,
    bands: tuple[str, ...] = DEFAULT_VIS_BANDS,
) -> Path | None:
    """Write the reconstruction figure of one image as a PNG and return its path.

    Safe to call on every rank (the forward then runs on all of them, as a sharded model needs);
    only rank 0 draws and writes, the other ranks get ``None``.

    Left: rows = bands (name, wavelength), columns = input / masked input (hidden patches blank)
    / reconstruction, one colour scale per band shared by the three columns (colour bar in
    normalised input units). Right: the true and reconstructed 12-band spectra of a few hidden
    pixels by wavelength, with the mean-fill baseline (the visible pixels' mean spectrum). The
    title carries ``title`` (e.g. epoch and loss), the mask ratio, and the hidden-pixel error of
    the reconstruction next to that of the mean fill, which the PNG also stores as text
    (``hidden_pixel_mse``, ``mean_fill_mse``). Uses matplotlib (Agg backend).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from util.data.sentinel2 import BANDS

    r = reconstruct(model, image, mask_ratio, seed=seed, autocast=autocast)
    if get_rank() != 0:
        return None
    inp, rec, hidden, names = r["input"], r["recon"], r["hidden"], r["bands"]
    rows = [names.index(b) for b in bands if b in names] or [0]
    hid = hidden.bool()
    vis = ~hid
    # mean fill: every hidden pixel gets its band's mean over the visible pixels
    mean_vis = torch.stack(
        [inp[b][vis[b]].mean() if vis[b].any() else inp[b].mean() for b in range(len(names))]
    )
    n_hid = int(hid.sum())
    if n_hid:
        err_model = float(((rec - inp)[hid] ** 2).mean())
        err_mean = float(((mean_vis[:, None, None].expand_as(inp) - inp)[hid] ** 2).mean())
        if err_model < 0.9 * err_mean:
            how = "better than the mean fill"
        elif err_model <= 1.1 * err_mean:
            how = "about the mean fill: band levels learned, detail not yet"
        else:
            how = "worse than the mean fill: train longer"
        verdict = f"hidden-pixel MSE {err_model:.4f} vs {err_mean:.4f} for the mean fill ({how})"
        errors = {"hidden_pixel_mse": f"{err_model:.6g}", "mean_fill_mse": f"{err_mean:.6g}"}
    else:
        verdict, errors = "nothing hidden", {}

    fig = plt.figure(figsize=(11.5, 2.3 * len(rows) + 0.9), dpi=100)
    grid = fig.add_gridspec(len(rows), 6, width_ratios=[1, 1, 1, 0.07, 0.45, 2.2], wspace=0.2)
    for row, b in enumerate(rows):
        band = inp[b]
        lo, hi = float(band.min()), float(band.max())
        if hi <= lo:
            hi = lo + 1e-6
        masked = band.clone().masked_fill(hid[b], float("nan"))
        im = None
        for col, (img, head) in enumerate(
            ((band, "input"), (masked, "masked input"), (rec[b], "reconstruction"))
        ):
            ax = fig.add_subplot(grid[row, col])
            cmap = plt.get_cmap("viridis").copy()
            cmap.set_bad("white")
            im = ax.imshow(img.numpy(), cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(head, fontsize=10)
            if col == 0:
                wl = BANDS[names[b]].wavelength_nm if names[b] in BANDS else None
                ax.set_ylabel(f"{names[b]}" + (f"\n{wl} nm" if wl else ""), fontsize=9)
        fig.colorbar(im, cax=fig.add_subplot(grid[row, 3]))
    ax = fig.add_subplot(grid[:, 5])
    wl = [BANDS[n].wavelength_nm if n in BANDS else i for i, n in enumerate(names)]
    colours = plt.get_cmap("tab10").colors
    for k, (y, x) in enumerate(_spectra_pixels(hidden)):
        c = colours[k % len(colours)]
        ax.plot(wl, inp[:, y, x].numpy(), "-o", color=c, ms=3, label=f"pixel ({y},{x}) true")
        ax.plot(wl, rec[:, y, x].numpy(), "--s", color=c, ms=3, label="reconstructed")
    ax.plot(wl, mean_vis.numpy(), ":", color="grey", label="mean fill (visible pixels)")
    ax.set_xticks([w for w, n in zip(wl, names) if n in ("B02", "B04", "B08", "B11", "B12")])
    ax.tick_params(axis="x", labelsize=8)
    ax.set_xlabel("wavelength (nm)")
    ax.set_ylabel("normalised value")
    ax.set_title("spectra of hidden pixels", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    head = f"{title} | " if title else ""
    fig.suptitle(
        f"{head}mask ratio {mask_ratio:g} of the 3D tokens (bands x patches), "
        f"loss on this image {r['loss']:.4f}\n{verdict}",
        fontsize=10,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight", metadata=errors)  # PNG text: the errors (demo summary)
    plt.close(fig)
    logger.info("%s: %s", path.name, verdict)
    return path
