"""Tiling of large images: tile origins, blend weights and in-memory sliding-window inference.

Whole-scene evaluation of a dense model trained on ``tile x tile`` crops: overlapping tiles are
run through the model in batches, their logits are accumulated with a per-pixel blend weight and
divided by the accumulated weight, so every pixel of the scene is predicted exactly once, whatever
the scene size (smaller than a tile, or not a multiple of the stride). The same origins and weights
serve the windowed raster predictor (``predict``), which must import them from here.

* :func:`tile_starts` - origins covering ``[0, length)``, the last tile aligned to the far end.
* :func:`paper_tile_starts` - the paper's OSCD origins (``63 i``, far border strip uncovered).
* :func:`blend_weights` - ``uniform`` (plain average) or ``cosine`` (Hann-like, strictly positive).
* :func:`coverage` - the accumulated weight of every pixel (what the logits are divided by).
* :func:`sliding_window_inference` - the whole stitched ``(N, K, H, W)`` logits.

References: MONAI ``sliding_window_inference`` and TerraTorch ``tiled_inference`` (the idea of
weighted overlap averaging; no code taken).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "BLEND_MODES",
    "blend_weights",
    "coverage",
    "paper_tile_starts",
    "sliding_window_inference",
    "tile_starts",
]

BLEND_MODES = ("uniform", "cosine")


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile origins covering ``[0, length)`` with step ``stride``; the last tile ends at ``length``.

    Returns ``[0]`` when ``length <= tile`` (the caller pads such an image up to one tile).

    Raises:
        ValueError: if ``tile`` or ``stride`` is not positive, or ``stride > tile`` (gaps).
    """
    if tile < 1 or stride < 1:
        raise ValueError(f"tile and stride must be >= 1, got tile {tile}, stride {stride}")
    if stride > tile:
        raise ValueError(f"stride {stride} > tile {tile} would leave pixels uncovered")
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def paper_tile_starts(length: int, tile: int = 128, stride: int = 63) -> list[int]:
    """The paper's OSCD tile origins (spec §7.1): ``stride * i`` for ``i < ceil((L - tile + 1) /
    stride)``. The last tile is *not* aligned to the border, so a strip at the far edge is never
    covered; overlapping pixels are counted once per tile by the paper's metrics."""
    n = math.ceil((length - tile + 1) / stride)
    return [stride * i for i in range(max(n, 0))]


def blend_weights(
    tile_h: int,
    tile_w: int,
    mode: str = "uniform",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per-pixel weight ``(tile_h, tile_w)`` of a tile's logits, strictly positive everywhere.

    ``uniform``: all ones (overlaps are plainly averaged). ``cosine``: the outer product of
    ``sin(pi * (i + 0.5) / n)`` profiles - highest in the tile centre, small but non-zero at the
    edges, so the seams of tiles (where the model sees the least context) count less.
    """
    if mode == "uniform":
        return torch.ones(tile_h, tile_w, device=device)
    if mode == "cosine":

        def profile(n: int) -> torch.Tensor:
            return torch.sin(
                math.pi * (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n
            )

        return profile(tile_h)[:, None] * profile(tile_w)[None, :]
    raise ValueError(f"blend mode must be one of {BLEND_MODES}, got {mode!r}")


def coverage(
    height: int, width: int, tile: int, stride: int, blend: str = "uniform", device=None
) -> torch.Tensor:
    """Accumulated blend weight ``(H', W')`` of every pixel, ``H' = max(H, tile)`` (padded size)."""
    hp, wp = max(height, tile), max(width, tile)
    weight = blend_weights(tile, tile, blend, device=device)
    total = torch.zeros(hp, wp, device=device)
    for y in tile_starts(hp, tile, stride):
        for x in tile_starts(wp, tile, stride):
            total[y : y + tile, x : x + tile] += weight
    return total


@torch.no_grad()
def sliding_window_inference(
    fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tile: int,
    stride: int,
    batch_size: int,
    out_channels: int,
    blend: str = "uniform",
    pad_value: float = 0.0,
) -> torch.Tensor:
    """Stitched logits of ``fn`` over overlapping ``tile x tile`` windows of ``image``.

    Args:
        fn: maps a batch of tiles ``(B, ..., tile, tile)`` to logits ``(B, K, tile, tile)`` (run it
            under autocast for bf16; the logits are accumulated in float32).
        image: ``(N, ..., H, W)`` - e.g. ``(N, 12, H, W)`` or OSCD's ``(N, 2, 12, H, W)``.
        tile: window side (a multiple of the model's patch size).
        stride: step between windows (``<= tile``); the last window is aligned to the border.
        batch_size: windows per ``fn`` call (windows of different images may share a call).
        out_channels: ``K``.
        blend: ``uniform`` or ``cosine`` (see :func:`blend_weights`).
        pad_value: fill for images smaller than a tile (padded at the bottom/right, cropped back).

    Returns:
        ``(N, K, H, W)`` float32 logits on ``image``'s device: the blend-weighted mean of the
        window logits covering each pixel.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    h, w = image.shape[-2:]
    pad_h, pad_w = max(0, tile - h), max(0, tile - w)
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h), value=pad_value)  # any number of leading dims
    hp, wp = h + pad_h, w + pad_w
    n = image.shape[0]
    device = image.device
    weight = blend_weights(tile, tile, blend, device=device)
    out = torch.zeros(n, out_channels, hp, wp, device=device, dtype=torch.float32)
    windows = [
        (i, y, x)
        for i in range(n)
        for y in tile_starts(hp, tile, stride)
        for x in tile_starts(wp, tile, stride)
    ]
    for b in range(0, len(windows), batch_size):
        chunk = windows[b : b + batch_size]
        batch = torch.stack([image[i, ..., y : y + tile, x : x + tile] for i, y, x in chunk])
        logits = fn(batch)
        if logits.shape[-3:] != (out_channels, tile, tile):
            raise ValueError(
                f"fn returned {tuple(logits.shape)} for {len(chunk)} tiles; expected "
                f"(B, {out_channels}, {tile}, {tile})"
            )
        logits = logits.float() * weight
        for k, (i, y, x) in enumerate(chunk):
            out[i, :, y : y + tile, x : x + tile] += logits[k]
    out /= coverage(hp, wp, tile, stride, blend, device=device)
    return out[..., :h, :w]
