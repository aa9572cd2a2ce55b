"""Checkpoint conversion: the paper's and this project's checkpoints onto the SpectralGPT models.

One converter for every model module (classifier, masked autoencoder, dense models; their
``checkpoint_filter_fn`` call :func:`convert_state_dict`): the state dict is taken out of a
checkpoint (``model`` / ``state_dict`` entry, ``module.`` / ``_orig_mod.`` prefixes stripped),
the paper's separate ``attn.q/k/v`` are fused into timm's ``attn.qkv``, and the position tables are
mapped onto the target's layout (factorised spatial + spectral tables or one joint table; spatial
tables resampled bicubically to the model's grid with timm's ``resample_abs_pos_embed``).

References:
    Wightman, timm (``resample_abs_pos_embed``, ``checkpoint_filter_fn`` convention).
    Hong et al., "SpectralGPT: Spectral Remote Sensing Foundation Model", IEEE TPAMI 2024.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed

from models_vit_tensor import spectral_pos_embed

_logger = logging.getLogger(__name__)

__all__ = ["convert_state_dict", "unwrap_state_dict"]

_QKV_RE = re.compile(r"^(.*\.attn)\.(q|k|v)\.(weight|bias)$")
_PREFIXES = ("module.", "_orig_mod.")


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Take the model state dict out of a checkpoint (``model`` / ``state_dict`` key, or bare)."""
    sd: Any = checkpoint
    for key in ("model", "state_dict", "model_state"):
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
            break
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if k.startswith(prefix):
                    k = k[len(prefix) :]
                    changed = True
        out[k] = v
    return out


def _fuse_qkv(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Paper format ``attn.q/k/v`` -> timm ``attn.qkv`` (concatenated in q, k, v order)."""
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    out = {}
    for k, v in sd.items():
        m = _QKV_RE.match(k)
        if m:
            parts.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = v
        else:
            out[k] = v
    for (prefix, kind), qkv in parts.items():
        if set(qkv) != {"q", "k", "v"}:
            raise ValueError(
                f"checkpoint has an incomplete q/k/v set under {prefix}: {sorted(qkv)}"
            )
        out[f"{prefix}.qkv.{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
    return out


def _square(n: int, what: str) -> tuple[int, int]:
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{what}: {n} spatial positions is not a square grid")
    return side, side


def _resample_spatial(table: torch.Tensor, new_hw: tuple[int, int], key: str) -> torch.Tensor:
    """Bicubic resample of a spatial table ``(1, L, D)`` to ``new_hw`` with timm."""
    old_hw = _square(table.shape[1], key)
    if old_hw == tuple(new_hw):
        return table
    _logger.info("resampling %s from %s to %s", key, old_hw, tuple(new_hw))
    return resample_abs_pos_embed(table, list(new_hw), list(old_hw), num_prefix_tokens=0)


def _split_joint_pos_embed(joint: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares additive split of a joint ``(1, t*L, D)`` table into spatial + spectral.

    Exact when the joint table is itself a sum of the two (as in our models); otherwise the best
    additive approximation, with the relative residual logged.
    """
    grid = joint.reshape(t, -1, joint.shape[-1])  # (t, L, D)
    spatial = grid.mean(0, keepdim=True)  # (1, L, D)
    spectral = grid.mean(1, keepdim=True).transpose(0, 1) - grid.mean((0, 1))  # (1, t, D)
    recon = spectral_pos_embed(spatial, spectral)
    resid = (recon - joint).norm() / joint.norm().clamp_min(1e-12)
    if resid > 1e-4:
        _logger.warning(
            "joint pos_embed split into spatial + spectral tables with relative residual %.3g",
            resid,
        )
    return spatial, spectral


def _convert_pos_tables(
    sd: dict[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    prefix: str,
    t: int,
    hw: tuple[int, int],
) -> list[str]:
    """Map ``{prefix}pos_embed[_spatial|_temporal]`` of the source onto the target's layout.

    Handles: separate -> separate (spatial table resampled), separate -> joint (summed),
    joint -> separate (additive split), joint -> joint (resampled per spectral group).
    Returns the keys that were resampled or converted.
    """
    sp, te, jo = f"{prefix}pos_embed_spatial", f"{prefix}pos_embed_temporal", f"{prefix}pos_embed"
    touched = []
    src_sep = sp in sd and te in sd
    src_joint = jo in sd
    tgt_sep = sp in target
    tgt_joint = jo in target
    if src_sep:
        if sd[te].shape[1] != t:
            raise ValueError(
                f"{te}: checkpoint has {sd[te].shape[1]} spectral groups, model has {t} "
                "(different bands per token or band count cannot be mapped)"
            )
        spatial = _resample_spatial(sd[sp], hw, sp)
        if spatial is not sd[sp]:
            touched.append(sp)
        if tgt_sep:
            sd[sp] = spatial
        elif tgt_joint:
            sd[jo] = spectral_pos_embed(spatial, sd.pop(te))
            del sd[sp]
            touched.append(jo)
    elif src_joint:
        joint = sd[jo]
        if joint.shape[1] % t:
            raise ValueError(
                f"{jo}: {joint.shape[1]} positions do not split into {t} spectral groups"
            )
        grid = joint.reshape(t, joint.shape[1] // t, joint.shape[-1])
        old_hw = _square(grid.shape[1], jo)
        if old_hw != tuple(hw):
            grid = torch.cat(
                [_resample_spatial(g[None], hw, jo) for g in grid], dim=0
            )  # per spectral group
            touched.append(jo)
        joint = grid.reshape(1, -1, joint.shape[-1])
        if tgt_joint:
            sd[jo] = joint
        elif tgt_sep:
            sd[sp], sd[te] = _split_joint_pos_embed(joint, t)
            del sd[jo]
            touched += [sp, te]
    return touched


def convert_state_dict(
    checkpoint: Mapping[str, Any],
    model: nn.Module,
    report: dict[str, list[str]] | None = None,
    drop_mismatched: tuple[str, ...] = ("head.",),
) -> dict[str, torch.Tensor]:
    """Map a paper-format or own-format checkpoint onto ``model``'s state dict.

    Returns a dict that ``model.load_state_dict(..., strict=True)`` accepts: keys the model lacks
    are dropped (e.g. the decoder for a classifier), keys the checkpoint lacks are taken from the
    model's current (freshly initialised) values, position tables are resampled/converted, and
    everything else must match in shape or a ``ValueError`` names the key.

    Args:
        checkpoint: a state dict, or a checkpoint dict holding one under ``model``.
        model: the target model (``SpectralViT`` subclass).
        report: if given, filled with ``missing`` (taken from the model), ``dropped`` (not in the
            model) and ``resampled`` key lists.
        drop_mismatched: key prefixes whose shape mismatch means "re-initialise" (head) rather than
            an error.
    """
    sd = _fuse_qkv(unwrap_state_dict(checkpoint))
    target = model.state_dict()
    t, h, w = model.grid
    resampled = _convert_pos_tables(sd, target, "", t, (h, w))
    if any(k.startswith("decoder_pos_embed") for k in target):
        resampled += _convert_pos_tables(sd, target, "decoder_", t, (h, w))
    dropped = sorted(k for k in sd if k not in target)
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k not in target:
            continue
        want = target[k].shape
        if v.shape != want:
            if k.startswith(drop_mismatched):
                dropped.append(k)
                continue
            hint = ""
            if k == "patch_embed.proj.weight":
                hint = " (different bands per token, patch size or band count)"
            raise ValueError(
                f"cannot map checkpoint tensor {k} of shape {tuple(v.shape)} onto the model's "
                f"{tuple(want)}{hint}"
            )
        out[k] = v.to(target[k].dtype)
    missing = sorted(k for k in target if k not in out)
    for k in missing:
        out[k] = target[k]
    if missing:
        _logger.info("keys not in the checkpoint, kept from the model's init: %s", missing)
    if dropped:
        _logger.info(
            "checkpoint keys not used by this model: %d (%s...)", len(dropped), dropped[:4]
        )
    if report is not None:
        report.update(missing=missing, dropped=sorted(dropped), resampled=resampled)
    return out
