"""Dense models on the spectral encoder: segmentation (SegMunich) and change detection (OSCD).

Two families, both on the project's one encoder (``models_vit_tensor.SpectralViT``, attribute
``encoder``):

* our defaults, :class:`SpectralSegmenter` and :class:`SpectralChangeDetector`: several tapped
  blocks -> spectral-group reduction (``concat`` | ``linear`` | ``mean``) -> simple feature
  pyramid (x4, x2, x1, x0.5) -> UPerNet head with GroupNorm. The change detector runs the encoder
  once on both dates stacked (2N images) and fuses the dates at every level (``diff`` |
  ``absdiff`` | ``concat``).
* the paper's models, :class:`PaperOSCD` and :class:`PaperSegMunich` (spec §7.2, §8.2): last
  block only, ``Linear(4 -> 1)`` group reduction, four parallel branches ``conv0..conv3`` and the
  paper's FPNHEAD, 3x3 classifier. They load the released downstream checkpoints key for key and
  compute the same function, but return logits (the OSCD model's LogSoftmax and the SegMunich
  model's ``{'out': ...}`` wrapper are left to the caller).

Every model: ``task`` ("segment" | "change"), ``num_classes``, ``patch_size``, ``img_size``,
``bands``, ``encoder``; ``forward`` returns float logits ``(N, K, H, W)``. A change detector also
takes one ``(N, 2, 12, H, W)`` tensor (the OSCD dataset's ``image``). ``create_model(name, ...)``
builds one by name (:data:`MODELS`), :func:`checkpoint_filter_fn` maps any supported checkpoint
onto it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn as nn

from downstream_tasks.heads import PaperFPNHead, UPerHead, paper_branch
from downstream_tasks.necks import (
    FUSIONS,
    FeaturePyramid,
    GroupReduction,
    default_indices,
    fuse,
    resize_to,
    tokens_to_maps,
)
from models_convert import convert_state_dict, unwrap_state_dict
from models_timm import register_timm
from models_vit_tensor import _SIZES, LayerNorm6, SpectralViT

_logger = logging.getLogger(__name__)

__all__ = [
    "SpectralNeck",
    "SpectralSegmenter",
    "SpectralChangeDetector",
    "PaperOSCD",
    "PaperSegMunich",
    "checkpoint_filter_fn",
    "create_model",
    "MODELS",
]


# --------------------------------------------------------------------------------------------
# Our neck
# --------------------------------------------------------------------------------------------
class SpectralNeck(nn.Module):
    """Tapped tokens -> reduced 2D maps (:meth:`to_maps`) -> feature pyramid (:meth:`forward`).

    Args:
        groups: spectral groups ``t`` of the encoder grid.
        embed_dim: encoder width ``D``.
        indices: 0-based tapped blocks, one per pyramid level.
        reduction: ``concat`` | ``linear`` | ``mean`` (see :mod:`downstream_tasks.necks`).
        fusion: for change detection, how the dates are fused between :meth:`to_maps` and
            :meth:`forward` (``concat`` doubles the channels); ``None`` for segmentation.
        dim: width of the upsampling branches (default ``embed_dim``).
        scales: pyramid scales, one per index.
    """

    def __init__(
        self,
        groups: int,
        embed_dim: int,
        indices: Sequence[int],
        reduction: str = "concat",
        fusion: str | None = None,
        dim: int | None = None,
        scales: Sequence[float] = (4, 2, 1, 0.5),
    ) -> None:
        super().__init__()
        self.indices = tuple(indices)
        self.reduction = reduction
        self.reduce = nn.ModuleList(
            GroupReduction(groups, embed_dim, reduction) for _ in self.indices
        )
        mult = 2 if fusion == "concat" else 1
        self.pyramid = FeaturePyramid(
            [r.out_channels * mult for r in self.reduce], dim or embed_dim, scales
        )
        self.out_channels = self.pyramid.out_channels

    def to_maps(
        self, taps: Sequence[torch.Tensor], grid: tuple[int, int, int]
    ) -> list[torch.Tensor]:
        return [r(t, grid) for r, t in zip(self.reduce, taps)]

    def forward(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self.pyramid(maps)


# --------------------------------------------------------------------------------------------
# Shared model plumbing
# --------------------------------------------------------------------------------------------
class _DenseModel(nn.Module):
    """Encoder ownership, freezing, optimiser metadata and input checks shared by all dense models."""

    task = "segment"

    def __init__(self, encoder: SpectralViT, num_classes: int, freeze_encoder: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.num_classes = num_classes
        self.encoder_frozen = False
        if freeze_encoder:
            self.freeze_encoder()

    # ---- contract attributes ---------------------------------------------------------------
    @property
    def patch_size(self) -> int:
        return self.encoder.patch_embed.patch_size[0]

    @property
    def img_size(self) -> int | tuple[int, int]:
        h, w = self.encoder.patch_embed.img_size
        return h if h == w else (h, w)

    @property
    def bands(self) -> tuple[str, ...]:
        return self.encoder.bands

    # ---- encoder control -------------------------------------------------------------------
    def freeze_encoder(self, frozen: bool = True) -> None:
        """Freeze (or unfreeze) the encoder: no gradients, eval mode (no drop path), no graph."""
        self.encoder_frozen = frozen
        self.encoder.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> _DenseModel:
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    def _encoder_context(self):
        return torch.no_grad() if self.encoder_frozen else nullcontext()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Forwarded to the encoder (timm convention) when it supports it."""
        fn = getattr(self.encoder, "set_grad_checkpointing", None)
        if fn is None:
            raise NotImplementedError("this encoder has no set_grad_checkpointing")
        fn(enable)

    # ---- optimiser metadata ------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{k}" for k in self.encoder.no_weight_decay()}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm layer-decay groups: the encoder's (stem, blocks), then its norm + neck + head on top."""
        enc = self.encoder.group_matcher(coarse)
        return dict(
            stem=enc["stem"].replace("^", r"^encoder\."),
            blocks=enc["blocks"].replace("^", r"^encoder\."),
            head=enc["head"].replace("^", r"^encoder\.") + r"|^(?!encoder\.)",
        )

    # ---- inputs -------------------------------------------------------------------------------
    def _check_image(self, x: torch.Tensor, what: str = "x") -> None:
        bands = self.encoder.num_frames
        h, w = self.encoder.patch_embed.img_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (bands, h, w):
            raise ValueError(
                f"{type(self).__name__}: expected {what} of shape (N, {bands}, {h}, {w}) "
                f"(bands, height, width), got {tuple(x.shape)}; build the model with "
                "img_size=(H, W) for another size"
            )

    def _split_dates(
        self, x1: torch.Tensor, x2: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if x2 is None:
            if x1.ndim != 5 or x1.shape[1] != 2:
                raise ValueError(
                    f"{type(self).__name__}: called with one tensor, expected (N, 2, bands, H, W) "
                    f"(both dates), got {tuple(x1.shape)}"
                )
            x1, x2 = x1.unbind(1)
        self._check_image(x1, "x1")
        self._check_image(x2, "x2")
        return x1, x2


# --------------------------------------------------------------------------------------------
# Our models
# --------------------------------------------------------------------------------------------
class SpectralSegmenter(_DenseModel):
    """Encoder -> :class:`SpectralNeck` -> :class:`UPerHead` -> bilinear upsampling to the input size.

    Args:
        encoder: the spectral encoder.
        neck: turns the taps listed in ``neck.indices`` into a pyramid.
        head: decodes the pyramid to logits.
        num_classes: classes of ``head``.
        norm_taps: apply the encoder's (pretrained) final norm to every tapped block, so all levels
            have the same scale and no encoder parameter is left out of the graph.
        freeze_encoder: frozen-encoder probing.
    """

    task = "segment"

    def __init__(
        self,
        encoder: SpectralViT,
        neck: SpectralNeck,
        head: nn.Module,
        num_classes: int,
        norm_taps: bool = True,
        freeze_encoder: bool = False,
    ) -> None:
        super().__init__(encoder, num_classes, freeze_encoder=False)
        depth = len(encoder.blocks)
        bad = [i for i in neck.indices if not 0 <= i < depth]
        if bad:
            raise ValueError(f"indices {bad} out of range for an encoder of depth {depth}")
        self.neck = neck
        self.decode_head = head
        self.norm_taps = norm_taps
        if freeze_encoder:
            self.freeze_encoder()

    @property
    def indices(self) -> tuple[int, ...]:
        return self.neck.indices

    def forward_taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Tokens ``(N, P, D)`` of the tapped blocks, in ``indices`` order (normed if ``norm_taps``)."""
        wanted = sorted(set(self.indices))
        with self._encoder_context():
            feats = self.encoder.forward_intermediates(x, wanted)
            by_index = dict(zip(wanted, feats))
            taps = [by_index[i] for i in self.indices]
            if self.norm_taps:
                taps = [self.encoder.norm(t) for t in taps]
        return taps

    def decode(self, maps: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """Reduced maps -> pyramid -> head -> logits resized to ``size``."""
        logits = self.decode_head(self.neck(maps))
        return resize_to(logits, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 12, H, W)`` -> logits ``(N, num_classes, H, W)``."""
        self._check_image(x)
        maps = self.neck.to_maps(self.forward_taps(x), self.encoder.grid)
        return self.decode(maps, x.shape[-2:])


class SpectralChangeDetector(SpectralSegmenter):
    """Siamese :class:`SpectralSegmenter`: one encoder pass over both dates, fusion at every level.

    Args:
        fusion: ``diff`` (date 1 - date 2), ``absdiff`` (symmetric) or ``concat`` (channels).
        Others as :class:`SpectralSegmenter`; ``neck`` must be built with the same ``fusion``.
    """

    task = "change"

    def __init__(
        self,
        encoder: SpectralViT,
        neck: SpectralNeck,
        head: nn.Module,
        num_classes: int = 2,
        fusion: str = "diff",
        norm_taps: bool = True,
        freeze_encoder: bool = False,
    ) -> None:
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
        super().__init__(encoder, neck, head, num_classes, norm_taps, freeze_encoder)
        self.fusion = fusion

    def forward_fused(self, x1: torch.Tensor, x2: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Fused reduced maps per level (before the pyramid)."""
        x1, x2 = self._split_dates(x1, x2)
        n = x1.shape[0]
        maps = self.neck.to_maps(self.forward_taps(torch.cat([x1, x2])), self.encoder.grid)
        return [fuse(m[:n], m[n:], self.fusion) for m in maps]

    def forward(self, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
        """``x1, x2`` ``(N, 12, H, W)`` (or ``x1`` ``(N, 2, 12, H, W)``) -> logits ``(N, 2, H, W)``."""
        return self.decode(self.forward_fused(x1, x2), x1.shape[-2:])


# --------------------------------------------------------------------------------------------
# The paper's models (spec §7.2, §8.2)
# --------------------------------------------------------------------------------------------
class _PaperDense(_DenseModel):
    """Shared body of the paper's OSCD and SegMunich models; attribute names are the checkpoint's.

    The last block's tokens (no final norm, as in the paper) -> ``fc`` Linear(t -> 1) over the
    spectral groups -> four branches ``conv0..conv3`` (256 @ x8, 512 @ x4, 1024 @ x2, 2048 @ x1 of
    the token grid) -> :class:`PaperFPNHead` ``decoder`` -> ``cls_seg`` Conv3x3.
    """

    def __init__(
        self,
        encoder: SpectralViT,
        num_classes: int,
        branch_dropout: float,
        ppm_dropout: float,
        freeze_encoder: bool = False,
    ) -> None:
        super().__init__(encoder, num_classes, freeze_encoder=False)
        d = encoder.embed_dim
        t = encoder.grid[0]
        self.fc = nn.Sequential(nn.Linear(t, 1))
        self.conv0 = paper_branch(d, 512, 256, 8, branch_dropout)
        self.conv1 = paper_branch(d, 512, 512, 4, branch_dropout)
        self.conv2 = paper_branch(d, 1024, 1024, 2, branch_dropout)
        self.conv3 = paper_branch(d, 2048, 2048, 1, branch_dropout)
        self.decoder = PaperFPNHead(2048, 256, ppm_dropout=ppm_dropout, dropout=0.5)
        self.cls_seg = nn.Sequential(nn.Conv2d(256, num_classes, 3, padding=1))
        self.freeze_encoder(freeze_encoder)

    def freeze_encoder(self, frozen: bool = True) -> None:
        super().freeze_encoder(frozen)
        # the paper never applies the encoder's final norm; freezing it keeps DDP from waiting for
        # its gradients (it is still loaded and saved, so checkpoints stay key-for-key)
        self.encoder.norm.requires_grad_(False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 12, H, W)`` -> group-reduced last-block map ``(B, D, h, w)``."""
        with self._encoder_context():
            tokens = self.encoder.forward_features(x)
        return tokens_to_maps(tokens, self.encoder.grid, "linear", self.fc[0])

    def decode(self, d: torch.Tensor) -> torch.Tensor:
        feats = [self.conv0(d), self.conv1(d), self.conv2(d), self.conv3(d)]
        return self.cls_seg(self.decoder(feats))


class PaperOSCD(_PaperDense):
    """The paper's OSCD change detector: shared encoder on both dates (one batched pass here),
    group-reduced maps subtracted (date 1 - date 2), no dropout in the branches or the PPM.
    Returns logits; the paper applies LogSoftmax."""

    task = "change"

    def __init__(
        self, encoder: SpectralViT, num_classes: int = 2, freeze_encoder: bool = False
    ) -> None:
        super().__init__(encoder, num_classes, 0.0, 0.0, freeze_encoder)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
        x1, x2 = self._split_dates(x1, x2)
        n = x1.shape[0]
        f = self.encode(torch.cat([x1, x2]))
        return self.decode(f[:n] - f[n:])


class PaperSegMunich(_PaperDense):
    """The paper's SegMunich segmenter: Dropout(0.5) closes every branch and the PPM.
    Returns logits; the paper wraps them as ``{'out': logits}``."""

    task = "segment"

    def __init__(
        self, encoder: SpectralViT, num_classes: int = 13, freeze_encoder: bool = False
    ) -> None:
        super().__init__(encoder, num_classes, 0.5, 0.5, freeze_encoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_image(x)
        return self.decode(self.encode(x))


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
def checkpoint_filter_fn(
    state_dict: Mapping[str, Any], model: _DenseModel, report: dict | None = None
) -> dict[str, torch.Tensor]:
    """Map a checkpoint onto a dense model; the result loads with ``strict=True``.

    Accepts: the released SpectralGPT.pth / SpectralGPT+.pth and this project's pretraining
    checkpoints (encoder taken, decoder dropped, spatial tables resampled, neck/head kept from the
    model's init), this project's classification checkpoints (classifier head dropped), the paper's
    downstream checkpoints (``module.`` stripped, q/k/v fused, ``conv0..3``/``fc``/``decoder``/
    ``cls_seg`` loaded into the paper models) and dense checkpoints of this module. The encoder
    part goes through ``models_convert.convert_state_dict`` (one converter).

    Args:
        state_dict: a state dict or a checkpoint holding one under ``model``.
        model: the target dense model.
        report: filled with ``missing`` (keys initialised from the model), ``dropped`` (checkpoint
            keys not used, or shape-mismatched head keys) and ``resampled``.
    """
    sd = unwrap_state_dict(state_dict)
    target = model.state_dict()
    own = {k for k in target if not k.startswith("encoder.")}
    enc_sd: dict[str, torch.Tensor] = {}
    head_sd: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.startswith("encoder."):
            enc_sd[k[len("encoder.") :]] = v
        elif k in own:
            head_sd[k] = v
        else:  # bare encoder keys (pretraining, classifier, paper downstream) and anything else
            enc_sd[k] = v
    enc_report: dict[str, list[str]] = {}
    out = {
        f"encoder.{k}": v
        for k, v in convert_state_dict(enc_sd, model.encoder, report=enc_report).items()
    }
    missing = [f"encoder.{k}" for k in enc_report["missing"]]
    dropped = list(enc_report["dropped"])
    for k in sorted(own):
        v = head_sd.get(k)
        if v is not None and v.shape == target[k].shape:
            out[k] = v.to(target[k].dtype)
            continue
        if v is not None:
            dropped.append(k)
            _logger.info(
                "checkpoint %s has shape %s, model %s: re-initialised",
                k,
                tuple(v.shape),
                tuple(target[k].shape),
            )
        out[k] = target[k]
        missing.append(k)
    if report is not None:
        report.update(
            missing=sorted(missing),
            dropped=sorted(dropped),
            resampled=[f"encoder.{k}" for k in enc_report["resampled"]],
        )
    return out


# --------------------------------------------------------------------------------------------
# Factories
# --------------------------------------------------------------------------------------------
def build_encoder(
    size: str = "base", img_size: int | tuple[int, int] = 128, **kwargs: Any
) -> SpectralViT:
    """The SpectralGPT encoder geometry (12 bands, 3 per token, 8 px patches) at ``size``."""
    if size not in _SIZES:
        raise ValueError(f"unknown encoder size {size!r}; choose one of {', '.join(_SIZES)}")
    cfg: dict[str, Any] = dict(
        img_size=img_size,
        patch_size=8,
        in_chans=1,
        num_frames=12,
        t_patch_size=3,
        mlp_ratio=4.0,
        norm_layer=LayerNorm6,
        **_SIZES[size],
    )
    cfg.update(kwargs)
    encoder = SpectralViT(**cfg)
    encoder._init_encoder_weights()
    return encoder


# decoder width per encoder size: the tiny (debug) model gets a head no heavier than its encoder
_HEAD_CHANNELS = {"tiny": 64, "base": 256, "large": 256}


def _default(size: str, task: str) -> Callable[..., SpectralSegmenter]:
    def factory(
        img_size: int | tuple[int, int] = 128,
        num_classes: int | None = None,
        drop_path_rate: float = 0.1,
        freeze_encoder: bool = False,
        indices: Sequence[int] | None = None,
        reduction: str = "concat",
        fusion: str | None = None,
        channels: int | None = None,
        dropout: float = 0.1,
        norm_taps: bool = True,
        **encoder_kwargs: Any,
    ) -> SpectralSegmenter:
        encoder = build_encoder(size, img_size, drop_path_rate=drop_path_rate, **encoder_kwargs)
        depth = len(encoder.blocks)
        indices = [i % depth for i in indices] if indices is not None else default_indices(depth)
        change = task == "change"
        if not change and fusion is not None:
            raise ValueError("fusion is an option of the change detectors, not of segmenters")
        fusion = fusion or "diff"
        neck = SpectralNeck(
            encoder.grid[0],
            encoder.embed_dim,
            indices,
            reduction,
            fusion=fusion if change else None,
        )
        k = num_classes if num_classes is not None else (2 if change else 13)
        channels = channels or _HEAD_CHANNELS[size]
        head = UPerHead(neck.out_channels, k, channels=channels, dropout=dropout)
        if change:
            return SpectralChangeDetector(encoder, neck, head, k, fusion, norm_taps, freeze_encoder)
        return SpectralSegmenter(encoder, neck, head, k, norm_taps, freeze_encoder)

    return factory


def _paper(cls: type[_PaperDense]) -> Callable[..., _PaperDense]:
    def factory(
        img_size: int | tuple[int, int] = 128,
        num_classes: int | None = None,
        drop_path_rate: float = 0.5,
        freeze_encoder: bool = False,
        **encoder_kwargs: Any,
    ) -> _PaperDense:
        encoder = build_encoder("base", img_size, drop_path_rate=drop_path_rate, **encoder_kwargs)
        kw = {} if num_classes is None else dict(num_classes=num_classes)
        return cls(encoder, freeze_encoder=freeze_encoder, **kw)

    return factory


MODELS: dict[str, Callable[..., nn.Module]] = {
    **{f"segmenter_vit_{s}_patch8_128": _default(s, "segment") for s in ("tiny", "base", "large")},
    **{
        f"change_detector_vit_{s}_patch8_128": _default(s, "change")
        for s in ("tiny", "base", "large")
    },
    "paper_oscd_vit_base_patch8_128": _paper(PaperOSCD),
    "paper_segmunich_vit_base_patch8_128": _paper(PaperSegMunich),
}


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a dense model by name; keywords override the factory defaults.

    Common: ``img_size`` (int or ``(H, W)``, multiples of 8), ``num_classes``, ``drop_path_rate``,
    ``freeze_encoder``; defaults also ``indices``, ``reduction`` (``concat|linear|mean``),
    ``channels``, ``dropout``, ``norm_taps``; change detectors ``fusion`` (``diff|absdiff|concat``).
    Other keywords (``depth``, ...) go to the encoder.
    """
    if name not in MODELS:
        raise ValueError(
            f"unknown dense model {name!r}; choose one of: {', '.join(sorted(MODELS))}"
        )
    return MODELS[name](**kwargs)


#: timm names (``spectralgpt_segmenter_vit_base_patch8_128`` ...); see models_timm.register_timm
TIMM_MODELS = register_timm(
    __name__,
    MODELS,
    create_model,
    checkpoint_filter_fn,
    geometry=dict(img_size=128, num_frames=12),
)
