"""Unit tests of the model modules: shapes, masking, loss, attention paths, factories, loading."""

import pytest
import torch

import models_mae_spectral as mae
import models_vit_tensor as vit


def tiny_mae(**kw):
    return mae.create_model("mae_vit_tiny_patch8_96", img_size=16, **kw)


def test_patchify_unpatchify_round_trip():
    model = tiny_mae()
    x = torch.randn(2, 12, 16, 16)
    patches = model.patchify(x)
    assert patches.shape == (2, 4 * 2 * 2, 3 * 8 * 8)
    assert torch.equal(model.unpatchify(patches)[:, 0], x)
    # token k = g*h*w + row*w + col holds bands 3g..3g+2 of that patch, inner (band, row, col)
    g, row, col = 2, 1, 0
    k = g * 4 + row * 2 + col
    expect = x[0, 3 * g : 3 * g + 3, 8 * row : 8 * row + 8, 8 * col : 8 * col + 8].reshape(-1)
    assert torch.equal(patches[0, k], expect)


def test_patch_embed_equals_conv3d():
    model = tiny_mae()
    x = torch.randn(2, 1, 12, 16, 16)
    ref = model.patch_embed.proj(x).flatten(3).permute(0, 2, 3, 1).flatten(1, 2)
    assert torch.allclose(model.patch_embed(x), ref, atol=1e-5)


@pytest.mark.parametrize(
    "num_tokens,ratio,keep", [(1024, 0.9, 102), (1024, 0.75, 256), (576, 0.9, 57), (576, 0.75, 144)]
)
def test_kept_token_count(num_tokens, ratio, keep):
    x = torch.randn(3, num_tokens, 5)
    visible, mask, ids_restore, ids_keep = mae.MaskedAutoencoderViT.random_masking(x, ratio)
    assert visible.shape == (3, keep, 5)
    assert mask.sum(1).tolist() == [num_tokens - keep] * 3
    # kept tokens are exactly those with mask 0
    for n in range(3):
        assert set(ids_keep[n].tolist()) == set(torch.nonzero(mask[n] == 0).flatten().tolist())
    assert torch.equal(torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, 5)), visible)


def test_encoder_keeps_expected_tokens_at_full_size():
    with torch.device("meta"):
        model = mae.create_model("mae_vit_base_patch8_128")
    assert model.num_patches == 1024
    assert model.grid == (4, 16, 16)


def test_loss_ignores_visible_tokens_in_first_term():
    model = tiny_mae()
    imgs = torch.rand(2, 12, 16, 16)
    with torch.no_grad():
        latent, mask, ids = model.forward_encoder(imgs, 0.5)
        pred = model.forward_decoder(latent, ids)
    target = model.patchify(imgs)
    base = model.loss_terms(imgs, pred, mask)
    # perturb the predictions of visible tokens only, keeping their spectral sums unchanged:
    # move +d in group 0 and -d in group 1 at a visible position pair -> term 1 unchanged
    pred2 = pred.clone()
    visible = mask == 0
    pred2[visible] = target[visible]  # perfect visible predictions change term 2 only
    changed = model.loss_terms(imgs, pred2, mask)
    assert torch.allclose(changed["loss_masked"], base["loss_masked"])
    assert not torch.allclose(changed["loss_spectral"], base["loss_spectral"])
    # perturbing a masked token changes term 1
    pred3 = pred.clone()
    pred3[mask == 1] += 1.0
    assert not torch.allclose(
        model.loss_terms(imgs, pred3, mask)["loss_masked"], base["loss_masked"]
    )


def test_loss_matches_explicit_formula():
    model = tiny_mae()
    imgs = torch.rand(2, 12, 16, 16)
    loss, pred, mask = model(imgs, mask_ratio=0.75)
    target = model.patchify(imgs)
    l1 = ((pred - target) ** 2).mean(-1)
    term1 = (l1 * mask).sum() / mask.sum()
    n, p, k = pred.shape
    term2 = ((pred.view(n, 4, -1, k).sum(1) - target.view(n, 4, -1, k).sum(1)) ** 2).mean()
    assert torch.allclose(loss, term1 + term2, rtol=1e-6)


def test_loss_finite_without_masking_and_terms_exposed():
    model = tiny_mae()
    loss, _, mask = model(torch.rand(2, 12, 16, 16), mask_ratio=0.0)
    assert mask.sum() == 0 and torch.isfinite(loss)
    assert model.last_loss_terms["loss_masked"] == 0
    assert torch.allclose(model.last_loss_terms["loss_spectral"], loss)


def test_norm_pix_loss_normalises_targets():
    model = tiny_mae(norm_pix_loss=True)
    imgs = torch.rand(2, 12, 16, 16) * 1000.0  # raw-DN scale: normalised targets keep loss O(1)
    loss, _, _ = model(imgs, mask_ratio=0.75)
    assert torch.isfinite(loss) and loss < 100


def test_two_band_tokens_work():
    """The paper's 2tensor factory crashes on its literal 192; shapes are derived here."""
    model = tiny_mae(t_patch_size=2)
    loss, pred, mask = model(torch.rand(2, 12, 16, 16), mask_ratio=0.9)
    assert pred.shape == (2, 6 * 4, 2 * 64) and torch.isfinite(loss)


def test_sdpa_and_math_attention_agree():
    model = tiny_mae().eval()
    imgs = torch.rand(2, 12, 16, 16)
    noise = torch.rand(2, 16)
    with torch.no_grad():
        fused = model(imgs, 0.5, noise)[1]
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = False
        math = model(imgs, 0.5, noise)[1]
    assert torch.allclose(fused, math, atol=1e-5, rtol=1e-5)


def test_forward_gradients_reach_every_parameter():
    model = tiny_mae()
    loss, _, _ = model(torch.rand(2, 12, 16, 16), mask_ratio=0.75)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []


def test_wrong_input_shape_is_a_clear_error():
    model = tiny_mae()
    with pytest.raises(ValueError, match=r"expected input \(N, 12, 16, 16\)"):
        model(torch.rand(1, 13, 16, 16))


@pytest.mark.parametrize(
    "name,params",
    [
        ("mae_vit_base_patch8_96", 98_496_960),
        ("mae_vit_base_patch8_128", 98_640_320),
        ("mae_vit_large_patch8_128", 316_142_784),
        ("mae_vit_huge_patch8_128", 643_759_040),
    ],
)
def test_parameter_counts_match_paper(name, params):
    with torch.device("meta"):
        model = mae.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == params


def test_encoder_parameter_count_matches_paper():
    with torch.device("meta"):
        model = vit.create_model("vit_base_patch8_128", num_classes=0)
    assert sum(p.numel() for p in model.parameters()) == 85_403_904


def test_every_factory_builds():
    for module in (mae, vit):
        for name in module.MODELS:
            with torch.device("meta"):
                module.create_model(name)


def test_unknown_factory_lists_choices():
    with pytest.raises(ValueError, match="vit_base_patch8_128"):
        vit.create_model("vit_nope")


def test_classifier_from_mae_checkpoint_keeps_pos_tables():
    src = tiny_mae()
    clf = vit.create_model("vit_tiny_patch8_96", img_size=16, num_classes=7)
    report = {}
    clf.load_state_dict(vit.checkpoint_filter_fn(src.state_dict(), clf, report), strict=True)
    assert report["missing"] == ["head.bias", "head.weight"]
    assert (
        any(k.startswith("decoder") for k in report["dropped"])
        and "mask_token" in report["dropped"]
    )
    assert torch.equal(clf.pos_embed_spatial, src.pos_embed_spatial)
    assert torch.equal(clf.blocks[1].attn.qkv.weight, src.blocks[1].attn.qkv.weight)
    assert clf(torch.rand(2, 12, 16, 16)).shape == (2, 7)


def test_classifier_pools_all_tokens():
    clf = vit.create_model("vit_tiny_patch8_96", img_size=16, num_classes=3).eval()
    x = torch.rand(2, 12, 16, 16)
    with torch.no_grad():
        tokens = clf.forward_features(x)
        assert torch.allclose(clf(x), clf.head(clf.norm(tokens.mean(1))))


def test_mae_checkpoint_into_joint_pos_classifier_sums_tables():
    src = tiny_mae()
    clf = vit.create_model("vit_tiny_patch8_96", img_size=16, sep_pos_embed=False)
    clf.load_state_dict(vit.checkpoint_filter_fn(src.state_dict(), clf), strict=True)
    assert torch.allclose(clf.pos_embed, src.pos_embed_full())


def test_paper_format_and_prefixes_round_trip():
    src = tiny_mae()
    paper = {}
    for k, v in src.state_dict().items():
        if ".attn.qkv." in k:
            for name, part in zip("qkv", v.chunk(3, dim=0)):
                paper["module." + k.replace(".qkv.", f".{name}.")] = part
        else:
            paper["module." + k] = v
    dst = tiny_mae()
    dst.load_state_dict(mae.checkpoint_filter_fn({"model": paper}, dst), strict=True)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_missing_decoder_is_fine():
    src = vit.create_model("vit_tiny_patch8_96", img_size=16)
    dst = tiny_mae()
    report = {}
    dst.load_state_dict(mae.checkpoint_filter_fn(src.state_dict(), dst, report), strict=True)
    assert "decoder_pred.weight" in report["missing"] and "head.weight" in report["dropped"]


def test_unmappable_checkpoints_are_refused():
    src = tiny_mae(t_patch_size=2)  # 6 spectral groups of 2 bands
    with pytest.raises(ValueError, match="spectral groups"):
        mae.checkpoint_filter_fn(src.state_dict(), tiny_mae())
    wide = mae.create_model("mae_vit_tiny_patch8_96", img_size=16, embed_dim=96, num_heads=3)
    with pytest.raises(ValueError, match="cannot map checkpoint tensor"):
        mae.checkpoint_filter_fn(wide.state_dict(), tiny_mae())
    p16 = mae.create_model("mae_vit_tiny_patch8_96", img_size=32, patch_size=16)
    with pytest.raises(ValueError, match="patch_embed.proj.weight"):
        mae.checkpoint_filter_fn(
            p16.state_dict(), mae.create_model("mae_vit_tiny_patch8_96", img_size=16)
        )
