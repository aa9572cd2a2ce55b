"""timm registration: every project name builds through ``timm.create_model`` and our weights load."""

from pathlib import Path

import pytest
import timm
import torch

import models_mae_spectral
import models_vit_tensor
from downstream_tasks import models_dense
from util.data.sentinel2 import MODEL_BANDS
from util.training.checkpoint import save_checkpoint

REGISTERED = (
    models_vit_tensor.TIMM_MODELS + models_mae_spectral.TIMM_MODELS + models_dense.TIMM_MODELS
)


def test_every_factory_is_registered():
    names = set(timm.list_models("spectralgpt_*"))
    assert set(REGISTERED) <= names
    expected = {f"spectralgpt_{n}" for n in models_mae_spectral.MODELS}
    expected |= {f"spectralgpt_{n}" for n in models_vit_tensor.MODELS if not n.startswith("mae_")}
    expected |= {f"spectralgpt_{n}" for n in models_dense.MODELS}
    assert expected == set(REGISTERED)
    count = (
        f"{len(REGISTERED)} with all three modules imported"  # the figure docs/inference.md gives
    )
    assert count in (Path(__file__).resolve().parents[1] / "docs" / "inference.md").read_text()


@pytest.mark.parametrize("timm_name", REGISTERED)
def test_create_each_name(timm_name):
    with torch.device("meta"):  # geometry and config only: no memory, no init cost
        model = timm.create_model(timm_name, pretrained=False)
    name = timm_name.removeprefix("spectralgpt_")
    module = next(
        m
        for m in (models_mae_spectral, models_dense, models_vit_tensor)
        if name in m.MODELS and not (m is models_vit_tensor and name.startswith("mae_"))
    )
    with torch.device("meta"):
        ref = module.create_model(name)
    assert type(model) is type(ref)
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items()
    }
    cfg = model.pretrained_cfg
    enc = getattr(ref, "encoder", ref)
    assert cfg["input_size"] == (enc.num_frames, *enc.patch_embed.img_size)
    assert cfg["normalization"] == "minmax"
    assert len(cfg["mean"]) == len(cfg["std"]) == enc.num_frames
    if enc.num_frames == 12:
        assert cfg["bands"] == MODEL_BANDS
    assert getattr(module, name) is module.MODELS[name]  # the paper's module-level factory


def test_timm_kwargs_reach_the_factory():
    model = timm.create_model(
        "spectralgpt_vit_tiny_patch8_128", pretrained=False, num_classes=7, img_size=32
    )
    assert model.num_classes == 7 and model.head.out_features == 7
    assert model.patch_embed.in_chans == 1  # timm's in_chans default (3 RGB channels) is dropped
    assert model.pretrained_cfg["input_size"] == (12, 32, 32)
    assert timm.models.get_pretrained_cfg("spectralgpt_vit_base_patch8_128").bands == MODEL_BANDS
    x = torch.randn(2, 12, 32, 32)
    assert model(x).shape == (2, 7)


def test_our_weights_load_through_checkpoint_filter_fn(tmp_path):
    # a finetuned classifier written as main_finetune writes checkpoint-best.pth
    clf = models_vit_tensor.create_model("vit_tiny_patch8_128", num_classes=5, img_size=32)
    path = tmp_path / "checkpoint-best.pth"
    save_checkpoint(
        path, {"format": "spectralgpt-v1", "model": clf.state_dict(), "args": {}, "data": {}}
    )
    loaded = timm.create_model(
        "spectralgpt_vit_tiny_patch8_128",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path)),
        num_classes=5,
        img_size=32,
    )
    for k, v in clf.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0, msg=k)

    # a pretraining checkpoint (as main_pretrain writes it, DDP prefix included) into the MAE and,
    # decoder dropped, into the classifier; the spatial table is resampled 32 -> 48 px
    mae = models_mae_spectral.create_model("mae_vit_tiny_patch8_128", img_size=32)
    sd = {f"module.{k}": v for k, v in mae.state_dict().items()}
    path = tmp_path / "checkpoint-last.pth"
    save_checkpoint(path, {"format": "spectralgpt-v1", "model": sd, "epoch": 0, "args": {}})
    mae2 = timm.create_model(
        "spectralgpt_mae_vit_tiny_patch8_128",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path)),
        img_size=32,
    )
    torch.testing.assert_close(mae2.blocks[1].attn.qkv.weight, mae.blocks[1].attn.qkv.weight)
    clf2 = timm.create_model(
        "spectralgpt_vit_tiny_patch8_128",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path)),
        img_size=48,
    )
    torch.testing.assert_close(clf2.blocks[3].mlp.fc2.weight, mae.blocks[3].mlp.fc2.weight)
    assert clf2.pos_embed_spatial.shape[1] == 36  # 6 x 6 tokens, resampled from 4 x 4

    # the same pretraining checkpoint as a segmenter's encoder (neck and head from init)
    seg = timm.create_model(
        "spectralgpt_segmenter_vit_tiny_patch8_128",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path)),
        img_size=32,
        num_classes=3,
    )
    assert seg.num_classes == 3 and seg.pretrained_cfg["input_size"] == (12, 32, 32)
    torch.testing.assert_close(
        seg.encoder.blocks[2].attn.proj.weight, mae.blocks[2].attn.proj.weight
    )
