"""SpectralGPT spectral ViT: 3D patch embedding, factorised position tables, timm blocks.

This module owns the one encoder of the project (:class:`SpectralViT`). The pretraining model
(``models_mae_spectral.MaskedAutoencoderViT``) and the finetuning classifier
(:class:`VisionTransformer`) both inherit from it, so parameter names stay those of the paper's
checkpoints at the top level (``patch_embed.proj``, ``pos_embed_spatial``, ``pos_embed_temporal``,
``blocks.N``, ``norm``).

Token layout (spec §1.3): an image ``(N, T, H, W)`` with ``T`` bands is cut into tokens of
``t_patch_size`` consecutive bands x ``patch_size`` x ``patch_size`` pixels. Tokens are ordered
spectral-group major, then row, then column: ``k = g * h * w + row * w + col``.

References:
    He et al., "Masked Autoencoders Are Scalable Vision Learners" (facebookresearch/mae).
    Feichtenhofer et al., "Masked Autoencoders As Spatiotemporal Learners" (facebookresearch/mae_st).
    Wightman, timm (``Block``, ``resample_abs_pos_embed``, layer-decay groups).
    Hong et al., "SpectralGPT: Spectral Remote Sensing Foundation Model", IEEE TPAMI 2024.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange
from timm.layers import to_2tuple, trunc_normal_
from timm.models.vision_transformer import Block

from models_timm import register_timm

_logger = logging.getLogger(__name__)

__all__ = [
    "PatchEmbed3d",
    "SpectralViT",
    "VisionTransformer",
    "spectral_pos_embed",
    "checkpoint_filter_fn",
    "create_model",
    "MODELS",
    "TIMM_MODELS",
]

LayerNorm6 = partial(nn.LayerNorm, eps=1e-6)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------
class PatchEmbed3d(nn.Module):
    """Cut ``(N, C, T, H, W)`` into 3D tokens with one Conv3d of kernel = stride ``(u, p, p)``.

    The Conv3d is kept as the parameter holder (``proj``; keys ``patch_embed.proj.weight/bias`` as
    in the paper's checkpoints). Because kernel equals stride, it is exactly a linear map of each
    flattened patch, which is how it is evaluated: :meth:`forward_patches` projects patches laid out
    by :func:`patchify`, so the MAE can embed only the visible tokens.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 1,
        embed_dim: int = 768,
        frames: int = 12,
        t_patch_size: int = 3,
    ) -> None:
        super().__init__()
        img_size = to_2tuple(img_size)
        patch_size = to_2tuple(patch_size)
        if img_size[0] % patch_size[0] or img_size[1] % patch_size[1]:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        if frames % t_patch_size:
            raise ValueError(
                f"num_frames (bands) {frames} is not a multiple of t_patch_size {t_patch_size}"
            )
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.frames = frames
        self.t_patch_size = t_patch_size
        self.input_size = (
            frames // t_patch_size,
            img_size[0] // patch_size[0],
            img_size[1] // patch_size[1],
        )
        self.t_grid_size = self.input_size[0]
        self.grid_size = self.input_size[1]
        self.num_patches = self.input_size[0] * self.input_size[1] * self.input_size[2]
        kernel = (t_patch_size, patch_size[0], patch_size[1])
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error unless ``x`` is ``(N, C, T, H, W)`` of the configured size."""
        expected = (self.in_chans, self.frames, *self.img_size)
        if x.ndim != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"expected input (N, {self.frames}, {self.img_size[0]}, {self.img_size[1]}) "
                f"(bands, height, width) for this model, got {tuple(x.shape)}"
            )

    def forward_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Project flattened patches ``(..., u*p*p*C)`` (layout of :func:`patchify`) to ``(..., D)``."""
        weight = self.proj.weight  # (D, C, u, p, p)
        if self.in_chans == 1:  # (u, p, p) order already; no permute, so grads keep their layout
            weight = weight.flatten(1)
        else:
            weight = weight.permute(0, 2, 3, 4, 1).flatten(1)  # (D, u, p, p, C) -> (D, K)
        return F.linear(patches, weight, self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, T, H, W)`` -> tokens ``(N, P, D)`` in group-major order."""
        self.check_input(x)
        return self.forward_patches(patchify(x, self.patch_size[0], self.t_patch_size))


def patchify(imgs: torch.Tensor, patch_size: int, t_patch_size: int) -> torch.Tensor:
    """``(N, C, T, H, W)`` -> ``(N, t*h*w, u*p*p*C)``; token order (g, row, col), inner (u, p, p, C)."""
    return rearrange(
        imgs,
        "n c (t u) (h p) (w q) -> n (t h w) (u p q c)",
        u=t_patch_size,
        p=patch_size,
        q=patch_size,
    )


def unpatchify(
    x: torch.Tensor, patch_size: int, t_patch_size: int, grid: tuple[int, int, int], chans: int = 1
) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(N, t*h*w, u*p*p*C)`` -> ``(N, C, T, H, W)``."""
    t, h, w = grid
    return rearrange(
        x,
        "n (t h w) (u p q c) -> n c (t u) (h p) (w q)",
        t=t,
        h=h,
        w=w,
        u=t_patch_size,
        p=patch_size,
        q=patch_size,
        c=chans,
    )


def spectral_pos_embed(spatial: torch.Tensor, spectral: torch.Tensor) -> torch.Tensor:
    """Combine factorised tables: ``(1, L, D)`` + ``(1, t, D)`` -> ``(1, t*L, D)``.

    Token ``(g, s)`` gets ``spatial[s] + spectral[g]`` (spatial index fastest). The one helper used
    by the encoder, the decoder and the classifier.
    """
    return (spectral[:, :, None, :] + spatial[:, None, :, :]).flatten(1, 2)


# --------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------
class SpectralViT(nn.Module):
    """The SpectralGPT encoder: 3D patch embedding, position tables, timm ``Block`` s, final norm.

    Keyword names follow the paper's classes (spec §1.1, §4.1) so existing configs work.

    Args:
        img_size: input height = width in pixels.
        patch_size: spatial patch side ``p``.
        in_chans: channels per band (1 in every SpectralGPT config).
        embed_dim: token width ``D``.
        depth: number of transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / ``D``.
        num_frames: number of bands ``T`` (12).
        t_patch_size: bands per token ``u`` (3).
        no_qkv_bias: disable the qkv bias (the paper keeps it on).
        qk_scale: must be ``None`` (the scale is ``head_dim ** -0.5``, as in the paper).
        drop_rate: dropout after attention projection and in the MLP.
        attn_drop_rate: attention-probability dropout.
        drop_path_rate: stochastic depth, linearly increasing over blocks.
        norm_layer: normalisation layer (``LayerNorm`` eps 1e-6 in every factory).
        sep_pos_embed: factorised spatial + spectral tables (True) or one joint table.
        cls_embed: not supported (no released config uses a class token).
        trunc_init: truncated-normal instead of xavier init of linear layers (spec §1.10).
        patch_embed: patch embedding class.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 1,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_frames: int = 12,
        t_patch_size: int = 3,
        no_qkv_bias: bool = False,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_layer: Callable[..., nn.Module] = LayerNorm6,
        sep_pos_embed: bool = True,
        cls_embed: bool = False,
        trunc_init: bool = False,
        patch_embed: type[nn.Module] = PatchEmbed3d,
    ) -> None:
        super().__init__()
        if cls_embed:
            raise ValueError(
                "cls_embed=True is not supported: no SpectralGPT config uses a class token"
            )
        if qk_scale is not None:
            raise ValueError(
                "qk_scale must be None: attention uses head_dim ** -0.5 as in the paper"
            )
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_frames = num_frames
        self.t_patch_size = t_patch_size
        self.sep_pos_embed = sep_pos_embed
        self.trunc_init = trunc_init
        self.patch_embed = patch_embed(
            img_size, patch_size, in_chans, embed_dim, num_frames, t_patch_size
        )
        t, h, w = self.patch_embed.input_size
        if sep_pos_embed:
            self.pos_embed_spatial = nn.Parameter(torch.zeros(1, h * w, embed_dim))
            self.pos_embed_temporal = nn.Parameter(torch.zeros(1, t, embed_dim))
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, t * h * w, embed_dim))
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                qkv_bias=not no_qkv_bias,
                proj_drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[i],
                norm_layer=norm_layer,
            )
            for i in range(depth)
        )
        self.norm = norm_layer(embed_dim)
        self.grad_checkpointing = False

    # ---- geometry -------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid ``(t, h, w)``."""
        return self.patch_embed.input_size

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    @property
    def bands(self) -> tuple[str, ...]:
        """Sentinel-2 band names expected on the input's band axis, in order."""
        from util.data.sentinel2 import MODEL_BANDS  # local import: the data layer is optional here

        if len(MODEL_BANDS) != self.num_frames:
            raise AttributeError(f"no band list defined for a {self.num_frames}-band model")
        return tuple(MODEL_BANDS)

    def to_5d(self, imgs: torch.Tensor) -> torch.Tensor:
        """Accept ``(N, T, H, W)`` (single channel per band) or ``(N, C, T, H, W)``."""
        if imgs.ndim == 4:
            imgs = imgs.unsqueeze(1)
        self.patch_embed.check_input(imgs)
        return imgs

    def patchify(self, imgs: torch.Tensor, t_patch_size: int | None = None) -> torch.Tensor:
        """``(N, T, H, W)`` or ``(N, C, T, H, W)`` -> ``(N, P, u*p*p*C)``."""
        if imgs.ndim == 4:
            imgs = imgs.unsqueeze(1)
        return patchify(imgs, self.patch_embed.patch_size[0], t_patch_size or self.t_patch_size)

    def unpatchify(self, x: torch.Tensor, t_patch_size: int | None = None) -> torch.Tensor:
        """Inverse of :meth:`patchify`; returns ``(N, C, T', H, W)``."""
        u = t_patch_size or self.t_patch_size
        p = self.patch_embed.patch_size[0]
        t, h, w = self.grid
        chans = x.shape[-1] // (u * p * p)
        return unpatchify(x, p, u, (t, h, w), chans)

    def pos_embed_full(self) -> torch.Tensor:
        """Position table for all ``P`` tokens, ``(1, P, D)``."""
        if self.sep_pos_embed:
            return spectral_pos_embed(self.pos_embed_spatial, self.pos_embed_temporal)
        return self.pos_embed

    # ---- init -----------------------------------------------------------------------------
    def _init_encoder_weights(self) -> None:
        """MAE-style init (spec §1.10), shared by the pretraining model and the classifier."""
        for name, p in self.named_parameters(recurse=False):
            if name.startswith("pos_embed"):
                trunc_normal_(p, std=0.02)
        w = self.patch_embed.proj.weight
        if self.trunc_init:
            trunc_normal_(w, std=1.0)
        else:
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        self.apply(self._init_module)
        if not self.trunc_init:  # the paper's q, k, v are separate layers, each xavier-initialised
            for m in self.modules():
                if isinstance(getattr(m, "qkv", None), nn.Linear):
                    for chunk in m.qkv.weight.data.chunk(3, dim=0):
                        nn.init.xavier_uniform_(chunk)

    def _init_module(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            if self.trunc_init:
                trunc_normal_(m.weight, std=0.02)
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ---- forward ----------------------------------------------------------------------------
    def embed(self, imgs: torch.Tensor) -> torch.Tensor:
        """Tokens with position embedding, ``(N, P, D)``."""
        return self.patch_embed(self.to_5d(imgs)) + self.pos_embed_full()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each transformer block in backward instead of storing its activations (timm
        convention). Applies to every block list of the model (the MAE decoder's too)."""
        self.grad_checkpointing = enable

    def run_block(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``blk(x)``, through non-reentrant ``torch.utils.checkpoint`` when checkpointing is on."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
        return blk(x)

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = self.run_block(blk, x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Token features after the last block, before the final norm: ``(N, P, D)``."""
        return self.forward_blocks(self.embed(x))

    def forward_intermediates(
        self, x: torch.Tensor, indices: list[int] | tuple[int, ...] | None = None
    ) -> list[torch.Tensor]:
        """Outputs ``(N, P, D)`` of the blocks listed in ``indices`` (default: all), for dense heads."""
        wanted = set(range(len(self.blocks)) if indices is None else indices)
        out = []
        x = self.embed(x)
        for i, blk in enumerate(self.blocks):
            x = self.run_block(blk, x)
            if i in wanted:
                out.append(x)
        return out

    # ---- optimiser metadata ------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "pos_embed_spatial", "pos_embed_temporal", "cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Layer groups for timm's ``param_groups_layer_decay``: stem=0, blocks.i=i+1, norm/head=last."""
        return dict(
            stem=r"^pos_embed|^patch_embed|^cls_token",
            blocks=r"^blocks\.(\d+)",
            # final norm and head share the top layer (lr scale 1.0, spec §4.4); timm's
            # (r"^norm", (99999,)) would merge the norm into the last block's group instead
            head=r"^norm|^fc_norm|^head",
        )


# --------------------------------------------------------------------------------------------
# Classifier
# --------------------------------------------------------------------------------------------
class VisionTransformer(SpectralViT):
    """Finetuning classifier: encoder -> mean over ALL tokens -> pretrained ``norm`` -> head.

    The paper pools tokens ``1..P-1`` (dropping a real patch token, spec §4.2) and uses a single
    zero-initialised position table; here every token is pooled and ``sep_pos_embed`` defaults to
    True so pretrained tables carry over.
    """

    def __init__(
        self,
        num_frames: int = 12,
        t_patch_size: int = 3,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 1,
        num_classes: int = 10,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        no_qkv_bias: bool = False,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        norm_layer: Callable[..., nn.Module] = LayerNorm6,
        dropout: float = 0.0,
        sep_pos_embed: bool = True,
        cls_embed: bool = False,
        trunc_init: bool = False,
    ) -> None:
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            num_frames=num_frames,
            t_patch_size=t_patch_size,
            no_qkv_bias=no_qkv_bias,
            qk_scale=qk_scale,
            drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
            norm_layer=norm_layer,
            sep_pos_embed=sep_pos_embed,
            cls_embed=cls_embed,
            trunc_init=trunc_init,
        )
        self.num_classes = num_classes
        self.head_drop = nn.Dropout(dropout)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_encoder_weights()
        self.reset_classifier(num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        """New head; weight trunc-normal std 2e-5 and zero bias (MAE finetuning recipe)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=2e-5)
            nn.init.zeros_(self.head.bias)

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens ``(N, P, D)`` -> logits ``(N, K)`` (or the pooled, normed vector if ``pre_logits``)."""
        x = self.norm(x.mean(dim=1))
        if pre_logits:
            return x
        return self.head(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 12, H, W)`` -> logits ``(N, num_classes)``."""
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(
    state_dict: Mapping[str, Any], model: nn.Module, report: dict[str, list[str]] | None = None
) -> dict[str, torch.Tensor]:
    """Convert a checkpoint for this classifier: :func:`models_convert.convert_state_dict`."""
    from models_convert import convert_state_dict  # the converter builds on this module's tables

    return convert_state_dict(state_dict, model, report=report)


# --------------------------------------------------------------------------------------------
# Factories
# --------------------------------------------------------------------------------------------
_SIZES = {
    "tiny": dict(embed_dim=192, depth=4, num_heads=3),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16),
}


def _vit(
    size: str, img_size: int, patch_size: int = 8, num_frames: int = 12, t_patch_size: int = 3
):
    def factory(**kwargs: Any) -> VisionTransformer:
        cfg: dict[str, Any] = dict(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=1,
            num_frames=num_frames,
            t_patch_size=t_patch_size,
            mlp_ratio=4.0,
            norm_layer=LayerNorm6,
            **_SIZES[size],
        )
        cfg.update(kwargs)
        return VisionTransformer(**cfg)

    factory.geometry = dict(img_size=img_size, num_frames=num_frames)  # for timm's pretrained_cfg
    return factory


MODELS: dict[str, Callable[..., VisionTransformer]] = {
    # paper names (spec §4.3), geometry as in the paper
    "vit_base_patch16": _vit("base", 96, patch_size=16),
    "vit_base_patch8": _vit("base", 96),
    "vit_base_patch8_128": _vit("base", 128),
    "vit_base_patch8_channel10": _vit("base", 128, num_frames=10, t_patch_size=2),
    "vit_base_patch16_128": _vit("base", 128, patch_size=16),
    "vit_large_patch8_128": _vit("large", 128),
    "vit_huge_patch8_128": _vit("huge", 128, t_patch_size=12),  # paper geometry: one spectral group
    "vit_base_patch8_120": _vit("base", 120, t_patch_size=12),
    # geometry of the pretraining models (load SpectralGPT(+) and our MAE checkpoints)
    **{f"vit_{s}_patch8_{px}": _vit(s, px) for s in ("tiny", "base", "large") for px in (96, 128)},
    "vit_huge_patch8_96": _vit("huge", 96),
}
# ``mae_vit_*`` names resolve to the classifier of the same geometry as that pretraining model
# (the paper's README passes ``mae_vit_base_patch8_128`` to main_finetune).
MODELS.update(
    {f"mae_{k}": _vit(s, px) for s in _SIZES for px in (96, 128) for k in [f"vit_{s}_patch8_{px}"]}
)
MODELS["mae_vit_base_patch8_2tensor_128"] = _vit("base", 128, t_patch_size=2)


def create_model(name: str, **kwargs: Any) -> VisionTransformer:
    """Build a classifier by factory name; keyword arguments override the factory's config."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)


# timm names (``spectralgpt_vit_base_patch8_128`` ...), see models_timm.register_timm; classifier
# names only: the ``mae_*`` aliases of MODELS are registered by models_mae_spectral: the ``mae_*`` aliases of MODELS are registered by models_mae_spectral
TIMM_MODELS = register_timm(
    __name__,
    {k: v for k, v in MODELS.items() if not k.startswith("mae_")},
    create_model,
    checkpoint_filter_fn,
    num_classes=10,
)
