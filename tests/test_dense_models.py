"""Dense models (downstream_tasks.models_dense): paper parity, token order, siamese invariants,
checkpoint loading, shapes, freezing and layer-decay groups."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from timm.layers import resample_abs_pos_embed
from timm.optim import param_groups_layer_decay

import models_vit_tensor
from downstream_tasks import models_dense
from downstream_tasks.models_dense import checkpoint_filter_fn, create_model
from downstream_tasks.necks import GroupReduction, default_indices, fuse

GOLDEN = Path(__file__).parent / "golden"
_spec = importlib.util.spec_from_file_location("paper_weights", GOLDEN / "paper_weights.py")
paper_weights = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paper_weights)

TINY_SEG = "segmenter_vit_tiny_patch8_128"
TINY_CD = "change_detector_vit_tiny_patch8_128"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# ---- paper parity ----------------------------------------------------------------------------
def _paper_weights(g: dict) -> dict:
    sd = paper_weights.make_state_dict(g["manifest"], g["seed"])
    for k, v in sd.items():  # the rebuild is the one that produced the outputs
        assert v.double().sum().item() == pytest.approx(g["sums"][k], rel=1e-6, abs=1e-6), k
    return sd


def test_paper_oscd_matches_reference():
    g = torch.load(GOLDEN / "oscd_cd_paper.pt", weights_only=True)
    sd = _paper_weights(g)
    with torch.device("meta"):  # every value comes from the checkpoint: skip the init
        model = create_model("paper_oscd_vit_base_patch8_128", depth=g["config"]["depth"])
    # the paper trains under DataParallel: keys carry ``module.``
    ckpt = {"model": {f"module.{k}": v for k, v in sd.items()}}
    report = {}
    model.load_state_dict(checkpoint_filter_fn(ckpt, model, report), strict=True, assign=True)
    assert report == {"missing": [], "dropped": [], "resampled": []}
    with torch.no_grad():
        logits = model.eval()(torch.stack([g["x1"], g["x2"]], dim=1))  # the dataset's layout
    assert logits.shape == (2, 2, 128, 128) and logits.dtype == torch.float32
    assert rel_err(torch.log_softmax(logits, 1), g["log_probs"]) <= 1e-5
    assert model.task == "change" and model.num_classes == 2


def test_paper_segmunich_matches_reference():
    g = torch.load(GOLDEN / "segmunich_paper.pt", weights_only=True)
    sd = _paper_weights(g)
    with torch.device("meta"):
        model = create_model("paper_segmunich_vit_base_patch8_128", depth=g["config"]["depth"])
    model.load_state_dict(checkpoint_filter_fn(sd, model), strict=True, assign=True)
    with torch.no_grad():
        logits = model.eval()(g["x"])
    assert logits.shape == (1, 13, 128, 128)
    assert rel_err(logits, g["logits"]) <= 1e-5
    assert model.task == "segment" and model.num_classes == 13
    # the paper never applies the final norm: it must not train (DDP would wait for its grads)
    assert not any(p.requires_grad for p in model.encoder.norm.parameters())


# ---- token order -----------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["concat", "linear", "mean"])
def test_planted_tokens_land_at_their_channel_block_and_pixel(reduction):
    t, h, w, d = 4, 3, 5, 6
    red = GroupReduction(t, d, reduction)
    if reduction == "linear":
        with torch.no_grad():
            red.fc.weight.copy_(torch.tensor([[1.0, 10.0, 100.0, 1000.0]]))
            red.fc.bias.zero_()
    for g, r, c, ch in [(0, 0, 0, 0), (2, 1, 4, 3), (3, 2, 1, 5), (1, 2, 3, 1)]:
        tokens = torch.zeros(2, t * h * w, d)
        tokens[1, g * h * w + r * w + c, ch] = 1.0  # token (g, r, c) of sample 1
        out = red(tokens, (t, h, w))
        assert out.shape == (2, red.out_channels, h, w)
        expect = torch.zeros_like(out)
        if reduction == "concat":
            assert red.out_channels == t * d
            expect[1, g * d + ch, r, c] = 1.0
        elif reduction == "mean":
            expect[1, ch, r, c] = 1.0 / t
        else:
            expect[1, ch, r, c] = 10.0**g
        torch.testing.assert_close(out, expect)


def test_default_indices_follow_depth_fractions():
    assert default_indices(12) == [3, 5, 7, 11]
    assert default_indices(24) == [7, 11, 15, 23]
    assert default_indices(4) == [0, 1, 2, 3]


# ---- siamese invariants ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_cd():
    torch.manual_seed(0)
    models = {f: create_model(TINY_CD, img_size=32, fusion=f).eval() for f in ("diff", "absdiff")}
    x1, x2 = torch.rand(2, 2, 12, 32, 32).unbind(0)
    return models, x1, x2


@pytest.mark.parametrize("fusion", ["diff", "absdiff"])
def test_identical_dates_give_zero_fused_features(tiny_cd, fusion):
    models, x1, _ = tiny_cd
    with torch.no_grad():
        fused = models[fusion].forward_fused(x1, x1.clone())
    assert len(fused) == 4
    for f in fused:
        assert f.abs().max() <= 1e-6


def test_absdiff_is_symmetric_and_diff_antisymmetric(tiny_cd):
    models, x1, x2 = tiny_cd
    with torch.no_grad():
        a = models["absdiff"](x1, x2)
        b = models["absdiff"](x2, x1)
        d12 = models["diff"].forward_fused(x1, x2)
        d21 = models["diff"].forward_fused(x2, x1)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for p, q in zip(d12, d21):
        torch.testing.assert_close(p, -q, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(d12[0], torch.zeros_like(d12[0]))


@pytest.mark.parametrize("name", [TINY_CD, "paper_oscd_vit_base_patch8_128"])
def test_change_detector_runs_the_encoder_once_on_both_dates(name):
    kw = dict(depth=1, embed_dim=96, num_heads=2) if name.startswith("paper") else {}
    model = create_model(name, img_size=32, **kw).eval()
    calls = []
    model.encoder.patch_embed.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    x = torch.rand(3, 2, 12, 32, 32)
    with torch.no_grad():
        out = model(x)
    assert calls == [6]  # one pass over 2N images
    assert out.shape == (3, 2, 32, 32)
    model.freeze_encoder(True)
    model.freeze_encoder(False)
    assert model.encoder.blocks[0].attn.qkv.weight.requires_grad
    if name.startswith("paper"):  # its never-applied final norm stays frozen
        assert not model.encoder.norm.weight.requires_grad


def test_concat_fusion_doubles_channels():
    model = create_model(TINY_CD, img_size=32, fusion="concat").eval()
    x = torch.rand(1, 2, 12, 32, 32)
    with torch.no_grad():
        fused = model.forward_fused(x)
        ref = model.neck.to_maps(model.forward_taps(x[:, 0]), model.encoder.grid)
    assert fused[0].shape[1] == 2 * ref[0].shape[1]
    torch.testing.assert_close(fused[0][:, : ref[0].shape[1]], ref[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(fuse(ref[0], ref[0], "absdiff"), torch.zeros_like(ref[0]))


# ---- loading SpectralGPT(+)-shaped weights -------------------------------------------------------
MANIFESTS = json.loads((GOLDEN / "state_dict_manifests.json").read_text())


@pytest.fixture(scope="module", params=[96, 128])
def spectralgpt_weights(request):
    """SpectralGPT.pth (96 px) / SpectralGPT+.pth (128 px)-shaped weights: random where checked."""
    px = request.param
    gen = torch.Generator().manual_seed(px)
    manifest = MANIFESTS[f"models_mae_spectral.mae_vit_base_patch8_{px}"]
    checked = ("pos_embed", "blocks.3.attn.")
    return px, {
        k: torch.randn(*s, generator=gen) if k.startswith(checked) else torch.zeros(*s)
        for k, s in manifest.items()
    }


@pytest.mark.parametrize(
    "name", ["segmenter_vit_base_patch8_128", "change_detector_vit_base_patch8_128"]
)
def test_spectralgpt_weights_load_with_only_neck_and_head_initialised(name, spectralgpt_weights):
    px, sd = spectralgpt_weights
    with torch.device("meta"):  # names and shapes only; values come from the checkpoint
        model = create_model(name)
    report = {}
    out = checkpoint_filter_fn({"model": sd}, model, report)
    assert set(out) == set(model.state_dict())
    assert report["missing"] and all(not k.startswith("encoder.") for k in report["missing"])
    assert set(report["missing"]) == {k for k in out if not k.startswith("encoder.")}
    assert all(k.startswith(("decoder", "mask_token")) for k in report["dropped"])
    assert report["resampled"] == (["encoder.pos_embed_spatial"] if px == 96 else [])
    want = sd["pos_embed_spatial"]
    if px == 96:
        want = resample_abs_pos_embed(want, [16, 16], [12, 12], num_prefix_tokens=0)
    assert out["encoder.pos_embed_spatial"].shape == (1, 256, 768)
    torch.testing.assert_close(out["encoder.pos_embed_spatial"], want)
    qkv = torch.cat([sd[f"blocks.3.attn.{p}.weight"] for p in "qkv"])
    torch.testing.assert_close(out["encoder.blocks.3.attn.qkv.weight"], qkv)
    model.load_state_dict(out, strict=True, assign=True)


def test_classifier_and_dense_checkpoints_load():
    clf = models_vit_tensor.create_model("vit_tiny_patch8_128", num_classes=5, img_size=32)
    seg = create_model(TINY_SEG, img_size=32)
    report = {}
    out = checkpoint_filter_fn({"model": clf.state_dict()}, seg, report)
    seg.load_state_dict(out, strict=True)
    assert report["dropped"] == ["head.bias", "head.weight"]
    assert all(not k.startswith("encoder.") for k in report["missing"])
    torch.testing.assert_close(seg.encoder.blocks[0].attn.qkv.weight, clf.blocks[0].attn.qkv.weight)
    # a dense checkpoint of this module round-trips with nothing initialised
    other = create_model(TINY_SEG, img_size=32)
    report = {}
    other.load_state_dict(checkpoint_filter_fn(seg.state_dict(), other, report), strict=True)
    assert report["missing"] == [] and report["dropped"] == []
    for k, v in seg.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k


def test_paper_checkpoint_into_default_model_takes_the_encoder_only():
    g = torch.load(GOLDEN / "oscd_cd_paper.pt", weights_only=True)
    sd = paper_weights.make_state_dict(g["manifest"], g["seed"])
    with torch.device("meta"):
        model = create_model("change_detector_vit_base_patch8_128", depth=2)
    report = {}
    out = checkpoint_filter_fn(sd, model, report)
    assert set(out) == set(model.state_dict())
    assert all(not k.startswith("encoder.") for k in report["missing"])
    assert {k.split(".")[0] for k in report["dropped"]} == {
        "conv0",
        "conv1",
        "conv2",
        "conv3",
        "fc",
        "decoder",
        "cls_seg",
    }
    torch.testing.assert_close(
        out["encoder.patch_embed.proj.weight"], sd["patch_embed.proj.weight"]
    )


# ---- shapes, freezing, layer decay ---------------------------------------------------------------
@pytest.mark.parametrize("hw", [32, 64, 128, (96, 128)])
def test_output_shapes(hw):
    h, w = (hw, hw) if isinstance(hw, int) else hw
    seg = create_model(TINY_SEG, img_size=hw, num_classes=7).eval()
    cd = create_model(TINY_CD, img_size=hw).eval()
    x = torch.rand(1, 12, h, w)
    with torch.no_grad():
        assert seg(x).shape == (1, 7, h, w)
        assert cd(torch.stack([x, x], 1)).shape == (1, 2, h, w)
    for m in (seg, cd):
        assert m.img_size == hw and m.patch_size == 8 and len(m.bands) == 12
        assert isinstance(m.encoder, models_vit_tensor.SpectralViT)


def test_wrong_input_shape_is_a_clear_error():
    cd = create_model(TINY_CD, img_size=32)
    with pytest.raises(ValueError, match=r"\(N, 2, bands, H, W\)"):
        cd(torch.rand(2, 12, 32, 32))
    seg = create_model(TINY_SEG, img_size=32)
    with pytest.raises(ValueError, match="img_size"):
        seg(torch.rand(2, 12, 64, 64))
    with pytest.raises(ValueError, match="unknown dense model"):
        create_model("segmenter_vit_small")
    with pytest.raises(ValueError, match="fusion"):
        create_model(TINY_SEG, fusion="diff")


def test_freeze_encoder_and_layer_decay_groups():
    model = create_model(TINY_SEG, img_size=32, freeze_encoder=True, drop_path_rate=0.3)
    model.train()
    assert not model.encoder.training and model.neck.training
    assert not any(p.requires_grad for p in model.encoder.parameters())
    model(torch.rand(2, 12, 32, 32)).sum().backward()
    assert model.decode_head.conv_seg.weight.grad is not None
    assert all(p.grad is None for p in model.encoder.parameters())

    model = create_model(TINY_SEG, img_size=32)
    groups = param_groups_layer_decay(
        model, 0.05, no_weight_decay_list=tuple(model.no_weight_decay()), layer_decay=0.5
    )
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    depth = len(model.encoder.blocks)
    named = dict(model.named_parameters())
    assert scale[id(named["encoder.patch_embed.proj.weight"])] == 0.5 ** (depth + 1)
    assert scale[id(named["encoder.blocks.0.attn.qkv.weight"])] == 0.5**depth
    for k in ("encoder.norm.weight", "decode_head.conv_seg.weight", "neck.pyramid.ops.0.0.weight"):
        assert scale[id(named[k])] == 1.0, k
    assert "encoder.pos_embed_spatial" in model.no_weight_decay()
    assert set(models_dense.MODELS) >= {
        f"{kind}_vit_{s}_patch8_128"
        for kind in ("segmenter", "change_detector")
        for s in ("tiny", "base", "large")
    }


def test_set_grad_checkpointing_reaches_the_encoder():
    model = create_model(TINY_SEG, img_size=32)
    if not hasattr(model.encoder, "set_grad_checkpointing"):
        with pytest.raises(NotImplementedError):
            model.set_grad_checkpointing()
        pytest.skip("this encoder has no gradient checkpointing yet")
    model.set_grad_checkpointing(True)
    assert model.encoder.grad_checkpointing
    model.set_grad_checkpointing(False)
    assert not model.encoder.grad_checkpointing


def test_bench_loads_the_papers_code_beside_ours(tmp_path):
    """bench_dense's paper_code variant imports the paper's OSCD model from a checkout whose
    top-level ``util``/``model`` packages clash with ours (its util/ has no __init__.py)."""
    import sys

    import benchmarks.bench_dense as bench

    oscd = tmp_path / "downstream_tasks" / "OSCD"
    for d in ("model", "util", "sync_batchnorm"):
        (oscd / d).mkdir(parents=True)
    (oscd / "sync_batchnorm" / "__init__.py").write_text("")
    (oscd / "util" / "video_vit.py").write_text("MARK = 'paper util'\n")
    (oscd / "model" / "models_vit_tensor_CD.py").write_text(
        "import torch.nn as nn\nfrom util.video_vit import MARK\n\n"
        "def vit_base_patch16():\n    m = nn.Linear(2, 2)\n    m.mark = MARK\n    return m\n"
    )
    (oscd / "sync_batchnorm" / "batchnorm.py").write_text(
        "def convert_model(m):\n    m.converted = True\n    return m\n"
    )
    ours = sys.modules["util.training.runtime"]
    net = bench.load_paper_oscd(tmp_path)
    assert isinstance(net, torch.nn.DataParallel)
    assert net.module.mark == "paper util" and net.module.converted
    assert sys.modules["util.training.runtime"] is ours and "util.video_vit" not in sys.modules
    assert "model.models_vit_tensor_CD" not in sys.modules
    with pytest.raises(SystemExit, match="--paper_repo"):
        bench.load_paper_oscd(tmp_path / "elsewhere")
