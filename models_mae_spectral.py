"""SpectralGPT pretraining model: 3D-token masked autoencoder with multi-target reconstruction.

Adds masking, the decoder and the loss to the one encoder of ``models_vit_tensor``. Same
constructor keywords and methods as the paper's class (spec §1); computes the same function
(checked against reference outputs in ``tests/test_golden.py``).

Loss (spec §1.8), with ``target = patchify(imgs)`` of shape ``(N, P, u*p*p)``:

* ``loss_masked``: mean squared error per token, averaged over masked tokens only;
* ``loss_spectral``: the token predictions and targets summed over the spectral groups (per
  spatial position and in-patch pixel), then mean squared error over ALL positions.

References:
    He et al., "Masked Autoencoders Are Scalable Vision Learners" (facebookresearch/mae).
    Feichtenhofer et al., "Masked Autoencoders As Spatiotemporal Learners" (facebookresearch/mae_st).
    Hong et al., "SpectralGPT: Spectral Remote Sensing Foundation Model", IEEE TPAMI 2024.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from models_convert import convert_state_dict
from models_timm import register_timm
from models_vit_tensor import LayerNorm6, PatchEmbed3d, SpectralViT, spectral_pos_embed

__all__ = ["MaskedAutoencoderViT", "checkpoint_filter_fn", "create_model", "MODELS", "TIMM_MODELS"]


class MaskedAutoencoderViT(SpectralViT):
    """SpectralGPT masked autoencoder (keywords as the paper's class, spec §1.1).

    Besides the encoder arguments of :class:`~models_vit_tensor.SpectralViT`:

    Args:
        decoder_embed_dim: decoder width (512).
        decoder_depth: decoder blocks (4).
        decoder_num_heads: decoder heads (16).
        norm_pix_loss: normalise each target token by its mean/std (the spectral-sum target is
            then built from the normalised tokens, see README "Differences").
        pred_t_dim: number of bands reconstructed (evenly spaced; 12 = all).
        mask_ratio: accepted for compatibility with the paper's factories and ignored with a
            warning; the ratio is the ``mask_ratio`` argument of :meth:`forward`.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 1,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 4,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        norm_pix_loss: bool = False,
        num_frames: int = 16,
        t_patch_size: int = 4,
        patch_embed: type[nn.Module] = PatchEmbed3d,
        no_qkv_bias: bool = False,
        sep_pos_embed: bool = True,
        trunc_init: bool = False,
        cls_embed: bool = False,
        pred_t_dim: int = 9,
        drop_path_rate: float = 0.0,
        mask_ratio: float | None = None,
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
            drop_path_rate=drop_path_rate,
            norm_layer=norm_layer,
            sep_pos_embed=sep_pos_embed,
            cls_embed=cls_embed,
            trunc_init=trunc_init,
            patch_embed=patch_embed,
        )
        if mask_ratio is not None:
            warnings.warn(
                "MaskedAutoencoderViT(mask_ratio=...) has no effect (as in the paper); pass "
                "mask_ratio to forward() / --mask_ratio instead",
                stacklevel=2,
            )
        if (t_patch_size * pred_t_dim) % num_frames:
            raise ValueError(
                f"pred_t_dim {pred_t_dim} x t_patch_size {t_patch_size} must be a multiple of "
                f"num_frames {num_frames}"
            )
        self.norm_pix_loss = norm_pix_loss
        self.pred_t_dim = pred_t_dim
        self.t_pred_patch_size = t_patch_size * pred_t_dim // num_frames
        p = self.patch_embed.patch_size[0]
        t, h, w = self.grid
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        if sep_pos_embed:
            self.decoder_pos_embed_spatial = nn.Parameter(torch.zeros(1, h * w, decoder_embed_dim))
            self.decoder_pos_embed_temporal = nn.Parameter(torch.zeros(1, t, decoder_embed_dim))
        else:
            self.decoder_pos_embed = nn.Parameter(torch.zeros(1, t * h * w, decoder_embed_dim))
        self.decoder_blocks = nn.ModuleList(
            Block(
                decoder_embed_dim,
                decoder_num_heads,
                mlp_ratio,
                qkv_bias=not no_qkv_bias,
                norm_layer=norm_layer,
            )
            for _ in range(decoder_depth)
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, self.t_pred_patch_size * p * p * in_chans)
        # band indices reconstructed by the loss (spec §1.8 step 2: floor of an even linspace)
        band_idx = torch.linspace(0, num_frames - 1, pred_t_dim, device="cpu").long()
        self.register_buffer("pred_band_index", band_idx, persistent=False)
        self.last_loss_terms: dict[str, torch.Tensor] = {}
        self._init_weights()

    def _init_weights(self) -> None:
        self._init_encoder_weights()
        for name, prm in self.named_parameters(recurse=False):
            if name.startswith("decoder_pos_embed"):
                nn.init.trunc_normal_(prm, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def decoder_pos_embed_full(self) -> torch.Tensor:
        if self.sep_pos_embed:
            return spectral_pos_embed(
                self.decoder_pos_embed_spatial, self.decoder_pos_embed_temporal
            )
        return self.decoder_pos_embed

    # ---- masking ------------------------------------------------------------------------------
    @staticmethod
    def random_masking(
        x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample random masking by argsort of uniform noise (spec §1.5).

        Args:
            x: ``(N, P, K)`` tokens (any width).
            mask_ratio: fraction hidden; ``int(P * (1 - mask_ratio))`` tokens are kept.
            noise: optional ``(N, P)`` noise; lower values are kept.

        Returns:
            visible ``(N, keep, K)``, mask ``(N, P)`` (1 = hidden), ids_restore ``(N, P)``,
            ids_keep ``(N, keep)``.
        """
        n, length, dim = x.shape
        len_keep = int(length * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(n, length, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        visible = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        mask = torch.ones(n, length, device=x.device, dtype=x.dtype)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return visible, mask, ids_restore, ids_keep

    # ---- encoder / decoder ----------------------------------------------------------------------
    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embed, mask and encode the visible tokens.

        Only visible patches are projected (the patch embedding is per-token), which gives the same
        result as embedding everything and then masking.

        Args:
            imgs: ``(N, T, H, W)``.
            mask_ratio: fraction of tokens hidden.
            noise: optional ``(N, P)`` masking noise.

        Returns:
            latent ``(N, keep, D)`` after the final norm (kept tokens in shuffled order),
            mask ``(N, P)`` (1 = hidden), ids_restore ``(N, P)``.
        """
        patches = self.patchify(self.to_5d(imgs))  # (N, P, u*p*p*C)
        patches, mask, ids_restore, ids_keep = self.random_masking(patches, mask_ratio, noise)
        x = self.patch_embed.forward_patches(patches)  # (N, keep, D)
        pos = self.pos_embed_full().expand(x.shape[0], -1, -1)
        x = x + torch.gather(pos, 1, ids_keep.unsqueeze(-1).expand(-1, -1, pos.shape[-1]))
        x = self.norm(self.forward_blocks(x))
        return x, mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Visible latents ``(N, keep, D)`` -> per-token predictions ``(N, P, u'*p*p*C)``."""
        x = self.decoder_embed(latent)
        n, keep, dim = x.shape
        length = ids_restore.shape[1]
        x = torch.cat([x, self.mask_token.expand(n, length - keep, -1)], dim=1)
        x = torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))  # unshuffle
        x = x + self.decoder_pos_embed_full()
        for blk in self.decoder_blocks:
            x = self.run_block(blk, x)
        return self.decoder_pred(self.decoder_norm(x))

    # ---- loss -----------------------------------------------------------------------------------
    def loss_terms(
        self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The two loss terms and their sum (spec §1.8), shapes derived from the model.

        Args:
            imgs: ``(N, T, H, W)`` input (the same tensor given to the encoder).
            pred: ``(N, P, K)`` decoder output.
            mask: ``(N, P)``, 1 = hidden.

        Returns:
            ``loss`` = ``loss_masked`` + ``loss_spectral``. ``loss_masked`` is 0 when no token is
            hidden (the paper divides by zero there).
        """
        imgs = self.to_5d(imgs).index_select(2, self.pred_band_index)
        target = self.patchify(imgs, self.t_pred_patch_size).to(pred.dtype)  # (N, P, K)
        n, _, k = target.shape
        t = self.grid[0]
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        per_token = (pred - target).pow(2).mean(dim=-1)  # (N, P)
        loss_masked = (per_token * mask).sum() / mask.sum().clamp_min(1)
        target_sum = target.reshape(n, t, -1, k).sum(dim=1)  # (N, L, K)
        pred_sum = pred.reshape(n, t, -1, k).sum(dim=1)
        loss_spectral = (pred_sum - target_sum).pow(2).mean()
        return {
            "loss": loss_masked + loss_spectral,
            "loss_masked": loss_masked,
            "loss_spectral": loss_spectral,
        }

    def forward_loss(
        self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Total loss (see :meth:`loss_terms`)."""
        return self.loss_terms(imgs, pred, mask)["loss"]

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(N, T, H, W)`` -> ``(loss, pred (N, P, K), mask (N, P))``.

        The two detached loss terms are left in ``self.last_loss_terms`` for logging.
        """
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        terms = self.loss_terms(imgs, pred, mask)
        self.last_loss_terms = {k: v.detach() for k, v in terms.items() if k != "loss"}
        return terms["loss"], pred, mask

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {
            "mask_token",
            "decoder_pos_embed",
            "decoder_pos_embed_spatial",
            "decoder_pos_embed_temporal",
        }


def checkpoint_filter_fn(
    state_dict: Mapping[str, Any], model: nn.Module, report: dict[str, list[str]] | None = None
) -> dict[str, torch.Tensor]:
    """Map a paper-format or own checkpoint onto a :class:`MaskedAutoencoderViT`.

    Separate ``q/k/v`` are fused, ``module.``/``_orig_mod.`` prefixes stripped, spatial tables of
    encoder and decoder resampled (96 -> 128 px), a missing decoder filled from the model's init;
    anything that cannot be mapped raises ``ValueError`` naming the key. See
    :func:`models_convert.convert_state_dict`.
    """
    return convert_state_dict(state_dict, model, report=report, drop_mismatched=())


# --------------------------------------------------------------------------------------------
# Factories (spec §1.2): in_chans 1, patch 8, 12 bands, 3 bands per token, all 12 reconstructed,
# LayerNorm eps 1e-6, decoder 512-d x 4 blocks x 16 heads.
# --------------------------------------------------------------------------------------------
_SIZES = {
    "tiny": dict(
        embed_dim=192,
        depth=4,
        num_heads=3,
        decoder_embed_dim=128,
        decoder_depth=2,
        decoder_num_heads=4,
    ),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16),
}


def _mae(size: str, img_size: int, t_patch_size: int = 3) -> Callable[..., MaskedAutoencoderViT]:
    def factory(**kwargs: Any) -> MaskedAutoencoderViT:
        cfg: dict[str, Any] = dict(
            img_size=img_size,
            patch_size=8,
            in_chans=1,
            num_frames=12,
            t_patch_size=t_patch_size,
            pred_t_dim=12,
            mlp_ratio=4.0,
            norm_layer=LayerNorm6,
            decoder_embed_dim=512,
            decoder_depth=4,
            decoder_num_heads=16,
        )
        cfg.update(_SIZES[size])
        cfg.update(kwargs)
        return MaskedAutoencoderViT(**cfg)

    factory.geometry = dict(img_size=img_size, num_frames=12)  # for timm's pretrained_cfg
    return factory


MODELS: dict[str, Callable[..., MaskedAutoencoderViT]] = {
    f"mae_vit_{size}_patch8_{px}": _mae(size, px) for size in _SIZES for px in (96, 128)
}
MODELS["mae_vit_base_patch8_2tensor_128"] = _mae("base", 128, t_patch_size=2)


def create_model(name: str, **kwargs: Any) -> MaskedAutoencoderViT:
    """Build a pretraining model by factory name; keyword arguments override its config."""
    if name not in MODELS:
        raise ValueError(
            f"unknown pretraining model {name!r}; choose one of: {', '.join(sorted(MODELS))}"
        )
    return MODELS[name](**kwargs)


#: timm names (``spectralgpt_mae_vit_base_patch8_128`` ...) and module-level factories
TIMM_MODELS = register_timm(__name__, MODELS, create_model, checkpoint_filter_fn)
