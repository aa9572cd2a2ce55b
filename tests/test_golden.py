"""Equivalence with the paper's own model on fixed weights (tests/golden, copied unchanged)."""

import json
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import models_mae_spectral
import models_vit_tensor

GOLDEN = Path(__file__).parent / "golden"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def mae_golden():
    g = torch.load(GOLDEN / "mae_tiny.pt", weights_only=True)
    model = models_mae_spectral.MaskedAutoencoderViT(
        norm_layer=partial(nn.LayerNorm, eps=g["norm_eps"]), **g["config"]
    )
    report = {}
    sd = models_mae_spectral.checkpoint_filter_fn(g["state_dict"], model, report)
    model.load_state_dict(sd, strict=True)
    assert report["missing"] == [] and report["dropped"] == []
    return model.eval(), g


@pytest.mark.parametrize("case", ["masked", "unmasked_in_order"])
def test_mae_matches_reference(mae_golden, case):
    model, g = mae_golden
    c = g["cases"][case]
    with torch.no_grad():
        latent, mask, ids_restore = model.forward_encoder(g["imgs"], c["mask_ratio"], c["noise"])
        pred = model.forward_decoder(latent, ids_restore)
        loss = model.forward_loss(g["imgs"], pred, mask)
    assert latent.shape == c["latent"].shape
    assert rel_err(latent, c["latent"]) <= 1e-5
    assert torch.equal(mask, c["mask"])
    assert torch.equal(ids_restore, c["ids_restore"])
    assert rel_err(pred, c["pred"]) <= 1e-5
    if case == "masked":
        assert abs(loss.item() - c["loss"].item()) <= 1e-5 * abs(c["loss"].item())
    else:  # the reference divides by zero masked tokens (NaN); ours stays finite
        assert torch.isnan(c["loss"]) and torch.isfinite(loss)


def test_mae_forward_contract(mae_golden):
    model, g = mae_golden
    c = g["cases"]["masked"]
    with torch.no_grad():
        loss, pred, mask = model(g["imgs"], mask_ratio=c["mask_ratio"], noise=c["noise"])
    assert rel_err(pred, c["pred"]) <= 1e-5
    terms = model.last_loss_terms
    assert torch.allclose(terms["loss_masked"] + terms["loss_spectral"], loss)


def test_classifier_tokens_match_reference():
    g = torch.load(GOLDEN / "vit_tiny.pt", weights_only=True)
    model = models_vit_tensor.VisionTransformer(
        norm_layer=partial(nn.LayerNorm, eps=g["norm_eps"]), sep_pos_embed=False, **g["config"]
    )
    model.load_state_dict(
        models_vit_tensor.checkpoint_filter_fn(g["state_dict"], model), strict=True
    )
    model.eval()
    with torch.no_grad():
        tokens = model.forward_features(g["x"])
        logits = model(g["x"])
    assert rel_err(tokens, g["tokens"]) <= 1e-5
    # the reference pools tokens 1..P-1 (drops a real token); we pool all of them
    ref_pool = model.head(model.norm(tokens[:, 1:].mean(1)))
    assert rel_err(ref_pool, g["logits_reference"]) <= 1e-5
    assert not torch.allclose(logits, g["logits_reference"])


MANIFESTS = json.loads((GOLDEN / "state_dict_manifests.json").read_text())


def _random_state(manifest: dict) -> dict:
    """Tensors of exactly the manifest's names and shapes: random where values are checked
    (position tables, block 0, norms), zeros elsewhere to keep the huge model cheap."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    for k, shape in manifest.items():
        small = "pos_embed" in k or k.startswith("blocks.0.") or "norm" in k or "mask_token" in k
        out[k] = torch.randn(*shape, generator=gen) if small else torch.zeros(*shape)
    return out


@pytest.mark.parametrize("entry", sorted(MANIFESTS))
def test_manifest_loads_strictly(entry):
    module_name, factory = entry.split(".")
    module = {"models_mae_spectral": models_mae_spectral, "models_vit_tensor": models_vit_tensor}[
        module_name
    ]
    manifest = MANIFESTS[entry]
    sd = _random_state(manifest)
    with torch.device("meta"):
        model = module.create_model(factory)
    # meta tensors are enough to check names and shapes; materialise only what is compared
    report = {}
    out = module.checkpoint_filter_fn({"model": sd}, model, report)
    assert set(out) == set(model.state_dict())
    for k, v in out.items():
        assert v.shape == model.state_dict()[k].shape, k
    model.load_state_dict(out, strict=True, assign=True)
    assert (
        report["missing"] == []
        or report["missing"] == sorted(k for k in model.state_dict() if k.startswith("pos_embed_"))
        or all(k.startswith("head.") for k in report["missing"])
    )
    # every block's q/k/v landed, in order, in the fused qkv
    assert torch.equal(
        out["blocks.0.attn.qkv.weight"][: manifest["blocks.0.attn.q.weight"][0]],
        sd["blocks.0.attn.q.weight"],
    )
    assert torch.equal(
        out["blocks.0.attn.qkv.bias"][-manifest["blocks.0.attn.v.bias"][0] :],
        sd["blocks.0.attn.v.bias"],
    )


def test_base96_tables_resample_into_base128():
    sd = _random_state(MANIFESTS["models_mae_spectral.mae_vit_base_patch8_96"])
    with torch.device("meta"):
        model = models_mae_spectral.create_model("mae_vit_base_patch8_128")
    report = {}
    out = models_mae_spectral.checkpoint_filter_fn(sd, model, report)
    assert sorted(report["resampled"]) == ["decoder_pos_embed_spatial", "pos_embed_spatial"]
    assert report["missing"] == []
    assert out["pos_embed_spatial"].shape == (1, 256, 768)
    assert out["decoder_pos_embed_spatial"].shape == (1, 256, 512)
    # resampling a 12x12 grid to 16x16 keeps a smooth field's values (corner stays the corner)
    grid = out["pos_embed_spatial"].reshape(16, 16, 768)
    assert torch.isfinite(grid).all()
    for k in sd:
        if "spatial" not in k and "attn" not in k:
            assert torch.equal(out[k], sd[k]), k
    model.load_state_dict(out, strict=True, assign=True)
