"""From encoder tokens to 2D feature maps: spectral-group reduction, fusion and a feature pyramid.

The encoder's tokens are 3D: ``(N, t*h*w, D)`` ordered spectral group, then row, then column
(``models_vit_tensor``). Dense heads want 2D maps ``(N, C, h, w)``. :func:`tokens_to_maps` does the
reshape and collapses the ``t`` spectral groups one of three ways:

* ``concat`` - groups into channels, ``(N, t*D, h, w)`` with channel ``g*D + d`` (TerraTorch's
  ``ReshapeTokensToImage`` with ``effective_time_dim = t``; PANGAEA's choice for SpectralGPT);
* ``linear`` - a learned ``Linear(t -> 1)`` over the groups (the paper's OSCD / SegMunich ``fc``);
* ``mean``   - the average over the groups.

References:
    Li et al., "Exploring Plain Vision Transformer Backbones for Object Detection" (ViTDet simple
    feature pyramid: deconvolutions / identity / max-pool from one ViT map).
    Marsocci et al., "PANGAEA: A Global and Inclusive Benchmark for Geospatial Foundation Models".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

__all__ = [
    "REDUCTIONS",
    "FUSIONS",
    "tokens_to_maps",
    "fuse",
    "GroupReduction",
    "FeaturePyramid",
    "default_indices",
    "group_norm",
]

REDUCTIONS = ("concat", "linear", "mean")
FUSIONS = ("diff", "absdiff", "concat")


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups, or the largest divisor of ``channels`` below it."""
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


def tokens_to_maps(
    tokens: torch.Tensor,
    grid: tuple[int, int, int],
    reduction: str,
    linear: nn.Linear | None = None,
    groups: Sequence[int] | None = None,
) -> torch.Tensor:
    """``(N, t*h*w, D)`` tokens -> 2D map ``(N, C, h, w)`` with the spectral groups reduced.

    Args:
        tokens: encoder tokens in (group, row, col) order.
        grid: the encoder's token grid ``(t, h, w)``.
        reduction: ``concat`` (C = t*D, channel ``g*D + d``), ``linear`` (C = D, ``linear`` is a
            ``Linear(t, 1)`` applied across groups) or ``mean`` (C = D).
        linear: the ``Linear(t, 1)`` for ``reduction="linear"``.
        groups: the spectral groups the tokens hold (the encoder ran on these only; default all),
            so ``tokens`` is ``(N, len(groups)*h*w, D)``. ``mean`` averages the present groups;
            ``concat`` and ``linear`` see zeros in the absent groups' places (their channels are
            0, their ``Linear`` weights multiply 0), so C and the layers are those of the full grid.
    """
    t, h, w = grid
    if groups is not None and len(groups) < t:
        x = tokens.unflatten(1, (len(groups), h, w))  # (N, g, h, w, D)
        if reduction == "mean":
            return x.mean(1).permute(0, 3, 1, 2)
        full = x.new_zeros(x.shape[0], t, h, w, x.shape[-1])
        full[:, list(groups)] = x
        x = full
    else:
        x = tokens.unflatten(1, (t, h, w))  # (N, t, h, w, D)
    if reduction == "concat":
        return rearrange(x, "n t h w d -> n (t d) h w")
    if reduction == "mean":
        return x.mean(1).permute(0, 3, 1, 2)
    if reduction == "linear":
        if linear is None:
            raise ValueError("reduction='linear' needs the Linear(t, 1) module")
        # (N, h, w, D, t) @ (t,) + b: the paper's Linear(4 -> 1) over the permuted groups
        return linear(x.permute(0, 2, 3, 4, 1)).squeeze(-1).permute(0, 3, 1, 2)
    raise ValueError(f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")


def fuse(a: torch.Tensor, b: torch.Tensor, fusion: str) -> torch.Tensor:
    """Combine the two dates' maps: ``a - b``, ``|a - b|`` or channel concat ``[a, b]``."""
    if fusion == "diff":
        return a - b
    if fusion == "absdiff":
        return (a - b).abs()
    if fusion == "concat":
        return torch.cat([a, b], dim=1)
    raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")


def default_indices(depth: int) -> list[int]:
    """Tapped blocks (0-based): 3, 5, 7, 11 for depth 12 (PANGAEA), same depth fractions otherwise."""
    return [max(0, round(depth * f / 12) - 1) for f in (4, 6, 8, 12)]


class GroupReduction(nn.Module):
    """One tapped level: tokens -> map with :func:`tokens_to_maps` (holds ``fc`` for ``linear``)."""

    def __init__(self, groups: int, dim: int, reduction: str = "concat") -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(
                f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}"
            )
        self.reduction = reduction
        self.fc = nn.Linear(groups, 1) if reduction == "linear" else None
        if self.fc is not None:  # start as the mean over groups
            nn.init.constant_(self.fc.weight, 1.0 / groups)
            nn.init.zeros_(self.fc.bias)
        self.out_channels = groups * dim if reduction == "concat" else dim

    def forward(
        self,
        tokens: torch.Tensor,
        grid: tuple[int, int, int],
        groups: Sequence[int] | None = None,
    ) -> torch.Tensor:
        return tokens_to_maps(tokens, grid, self.reduction, self.fc, groups)


class FeaturePyramid(nn.Module):
    """Rescale one map per level by ``scales`` (ViTDet simple pyramid).

    x4: ConvT 2x2 -> GroupNorm -> GELU -> ConvT 2x2 (to ``dim // 2`` channels); x2: ConvT 2x2 (to
    ``dim``); x1: identity; x0.5: 2x2 max-pool (ceil mode, so odd grids work). Output channels are
    in :attr:`out_channels`.
    """

    def __init__(
        self, in_channels: Sequence[int], dim: int, scales: Sequence[float] = (4, 2, 1, 0.5)
    ) -> None:
        super().__init__()
        if len(in_channels) != len(scales):
            raise ValueError(
                f"the pyramid has {len(scales)} scales {tuple(scales)} but {len(in_channels)} "
                "tapped levels; pass as many indices as scales"
            )
        self.scales = tuple(scales)
        ops, out = [], []
        for c, s in zip(in_channels, scales):
            if s == 4:
                half = dim // 2
                ops.append(
                    nn.Sequential(
                        nn.ConvTranspose2d(c, dim, 2, 2),
                        group_norm(dim),
                        nn.GELU(),
                        nn.ConvTranspose2d(dim, half, 2, 2),
                    )
                )
                out.append(half)
            elif s == 2:
                ops.append(nn.ConvTranspose2d(c, dim, 2, 2))
                out.append(dim)
            elif s == 1:
                ops.append(nn.Identity())
                out.append(c)
            elif s == 0.5:
                ops.append(nn.MaxPool2d(2, ceil_mode=True))
                out.append(c)
            else:
                raise ValueError(f"unsupported pyramid scale {s}; use 4, 2, 1 or 0.5")
        self.ops = nn.ModuleList(ops)
        self.out_channels = out

    def forward(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [op(m) for op, m in zip(self.ops, maps)]


def resize_to(x: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize to ``size`` (no-op when already that size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)
