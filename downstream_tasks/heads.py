"""Decode heads: our UPerNet (GroupNorm) and the paper's FPNHEAD / neck branches (kept apart).

:class:`UPerHead` is the UPerNet decoder of Xiao et al. as configured in mmsegmentation (PPM with
average pooling at 1, 2, 3, 6; 1x1 laterals; 3x3 FPN convs; 3x3 fusion; dropout; 1x1 classifier),
written in plain torch with timm's ``ConvNormAct`` and GroupNorm instead of BatchNorm, so outputs
do not depend on the batch size, the number of ranks or the tiling. segmentation_models_pytorch
0.6's ``UPerNetDecoder`` was checked and not used: it supports no GroupNorm (batch/layer/instance
norm only) and hard-codes BatchNorm in its PSP bottleneck, drops the first two of six expected
encoder levels and adds a LayerNorm per level.

The paper's dense head (spec §7.2, §8.2) differs in function: four parallel branches from one map
(1x1 conv + GN + GELU + transposed conv), adaptive MAX pooling in the PPM, 1x1 instead of 3x3
convs, align_corners=True upsampling and a 3x3 classifier. It is therefore a separate module,
:class:`PaperFPNHead` (+ :func:`paper_branch`), whose sub-module names are the paper's, so its
released checkpoints load key for key.

References:
    Xiao et al., "Unified Perceptual Parsing for Scene Understanding", ECCV 2018.
    Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from timm.layers import ConvNormAct

from downstream_tasks.necks import group_norm, resize_to

__all__ = ["UPerHead", "PaperFPNHead", "paper_branch"]


def _cna(cin: int, cout: int, k: int) -> ConvNormAct:
    """Conv (no bias) -> GroupNorm (32 groups or fewer) -> ReLU."""
    groups = group_norm(cout).num_groups
    return ConvNormAct(
        cin,
        cout,
        k,
        padding=k // 2,
        norm_layer=nn.GroupNorm,
        act_layer=nn.ReLU,
        norm_kwargs=dict(num_groups=groups),
    )


class UPerHead(nn.Module):
    """UPerNet decoder over a feature pyramid (highest resolution first) -> logits at level 0.

    Args:
        in_channels: channels of each pyramid level, highest resolution first.
        num_classes: output classes.
        channels: decoder width.
        pool_scales: PPM bin sizes (average pooling) on the lowest-resolution level.
        dropout: channel dropout before the classifier.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 256,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        top = in_channels[-1]
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), _cna(top, channels, 1)) for s in pool_scales
        )
        self.ppm_bottleneck = _cna(top + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(_cna(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(_cna(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = _cna(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        top = feats[-1]
        size = top.shape[-2:]
        psp = [top] + [resize_to(m(top), size) for m in self.ppm]
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        laterals.append(self.ppm_bottleneck(torch.cat(psp, dim=1)))
        for i in range(len(laterals) - 1, 0, -1):  # top-down
            laterals[i - 1] = laterals[i - 1] + resize_to(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size0 = outs[0].shape[-2:]
        fused = self.fpn_bottleneck(torch.cat([resize_to(o, size0) for o in outs], dim=1))
        return self.conv_seg(self.dropout(fused))


# --------------------------------------------------------------------------------------------
# The paper's modules (different function from ours; names are the checkpoint's)
# --------------------------------------------------------------------------------------------
def _paper_cgd(cin: int, cout: int, groups: int, dropout: float) -> nn.Sequential:
    """Conv1x1 (bias) -> GroupNorm(groups) -> GELU [-> Dropout]: the paper's repeated recipe."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 1), nn.GroupNorm(groups, cout), nn.GELU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def paper_branch(dim: int, mid: int, out: int, scale: int, dropout: float = 0.0) -> nn.Sequential:
    """The paper's neck branch ``convK``: Conv1x1 -> GN(32) -> GELU [-> ConvT scale] [-> Dropout].

    Indices 0, 1, 3 hold parameters (``conv0.3.weight`` is the transposed conv), as in the paper.
    """
    layers: list[nn.Module] = [nn.Conv2d(dim, mid, 1), nn.GroupNorm(32, mid), nn.GELU()]
    if scale > 1:
        layers.append(nn.ConvTranspose2d(mid, out, scale, scale))
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class _PaperPPM(nn.Module):
    """PPM with adaptive MAX pooling, 1x1 conv (bias, no norm) per bin, align_corners upsampling."""

    def __init__(
        self, channels: int, out_channels: int, bins: Sequence[int], dropout: float
    ) -> None:
        super().__init__()
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveMaxPool2d(b), nn.Conv2d(channels, out_channels, 1))
            for b in bins
        )
        self.final = _paper_cgd(channels + len(bins) * out_channels, out_channels, 16, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [resize_to(m(x), size, align_corners=True) for m in self.psp_modules]
        return self.final(torch.cat(pooled + [x], dim=1))


class PaperFPNHead(nn.Module):
    """The paper's ``FPNHEAD`` (spec §7.2 step 5): PPM on the 2048-channel map, top-down 1x1 fusion.

    Input: ``[c0 (256 @ x8), c1 (512 @ x4), c2 (1024 @ x2), c3 (2048 @ x1)]``; output
    ``(N, out_channels, H, W)`` at c0's resolution.

    Args:
        channels: channels of the lowest-resolution map (2048).
        out_channels: decoder width (256).
        ppm_dropout: dropout at the end of the PPM (0 for OSCD, 0.5 for SegMunich).
        dropout: dropout in the fusion convs (0.5 in both).
    """

    def __init__(
        self,
        channels: int = 2048,
        out_channels: int = 256,
        ppm_dropout: float = 0.0,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        c, o = channels, out_channels
        self.PPMHead = _PaperPPM(c, o, (1, 2, 3, 6), ppm_dropout)
        self.Conv_fuse1 = _paper_cgd(c // 2, o, 16, dropout)
        self.Conv_fuse1_ = _paper_cgd(o, o, 16, dropout)
        self.Conv_fuse2 = _paper_cgd(c // 4, o, 16, dropout)
        self.Conv_fuse2_ = _paper_cgd(o, o, 16, dropout)
        self.Conv_fuse3 = _paper_cgd(c // 8, o, 16, dropout)
        self.Conv_fuse3_ = _paper_cgd(o, o, 16, dropout)
        self.fuse_all = _paper_cgd(4 * o, o, 16, dropout)
        self.conv_x1 = nn.Conv2d(o, o, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        c0, c1, c2, c3 = feats
        x1 = self.PPMHead(c3)
        x = self.conv_x1(resize_to(x1, c2.shape[-2:], align_corners=True)) + self.Conv_fuse1(c2)
        x2 = self.Conv_fuse1_(x)
        x = resize_to(x2, c1.shape[-2:], align_corners=True) + self.Conv_fuse2(c1)
        x3 = self.Conv_fuse2_(x)
        x = resize_to(x3, c0.shape[-2:], align_corners=True) + self.Conv_fuse3(c0)
        x4 = self.Conv_fuse3_(x)
        size = x4.shape[-2:]
        ups = [resize_to(f, size, align_corners=True) for f in (x1, x2, x3)]
        return self.fuse_all(torch.cat(ups + [x4], dim=1))
