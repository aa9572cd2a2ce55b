"""A checkpoint never chooses code (issue 19 item 2): models are built from metadata only through
the project's allow-list; crafted metadata is refused in one line before anything is imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import models_registry
from models_registry import ModelSpecError, build_from_meta, build_model, check_kwargs, find_module

REPO = Path(__file__).resolve().parents[1]


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "meta",
    [
        {"model": "x", "model_module": "this", "model_kwargs": {}},
        {"model": "create_model", "model_module": "timm", "model_kwargs": {}},
        {"model": "system", "model_module": "os", "model_kwargs": {}},
        {"model": "vit_tiny_patch8_96", "model_module": "models_vit_tensor.os"},
        {"model": "vit_tiny_patch8_96", "model_module": ["models_vit_tensor"]},
        {
            "model": "vit_tiny_patch8_96",
            "model_module": "models_vit_tensor",
            "model_kwargs": {"pretrained_cfg": {"url": "https://example.com/w.pth"}},
        },
        {
            "model": "vit_tiny_patch8_96",
            "model_module": "models_vit_tensor",
            "model_kwargs": {"pretrained": True},
        },
        {
            "model": "vit_tiny_patch8_96",
            "model_module": "models_vit_tensor",
            "model_kwargs": {"drop_rate": "https://example.com/w.pth"},
        },
        {
            "model": "vit_tiny_patch8_96",
            "model_module": "models_vit_tensor",
            "model_kwargs": {"img_size": "/etc/passwd"},
        },
        {
            "model": "vit_tiny_patch8_96",
            "model_module": "models_vit_tensor",
            "model_kwargs": {"img_size": {"a": 1}},
        },
        {"model": "../../evil", "model_module": "models_vit_tensor"},
    ],
)
def test_crafted_meta_refused_before_any_import(meta):
    before = set(sys.modules)
    with pytest.raises(ModelSpecError) as e:
        build_from_meta(meta, source="crafted.pth")
    assert set(sys.modules) == before
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("crafted.pth: ")


def test_crafted_checkpoint_imports_nothing_in_a_fresh_process(tmp_path):
    """End to end from a file, in a fresh interpreter: neither ``this`` nor the model modules (nor
    anything else) is imported by a refused checkpoint, and the Zen of Python is not printed."""
    zen = tmp_path / "zen.pth"
    url = tmp_path / "url.pth"
    torch.save(
        {
            "format": "spectralgpt-v2",
            "model": {},
            "meta": {"model": "x", "model_module": "this", "model_kwargs": {}, "task": "classify"},
        },
        zen,
    )
    torch.save(
        {
            "format": "spectralgpt-v2",
            "model": {},
            "meta": {
                "model": "vit_base_patch8_128",
                "model_module": "models_vit_tensor",
                "task": "classify",
                "model_kwargs": {
                    "pretrained": True,
                    "pretrained_cfg_overlay": {"url": "https://example.com/w.pth"},
                },
            },
        },
        url,
    )
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        import torch
        import models_registry
        for path in ({str(zen)!r}, {str(url)!r}):
            meta = torch.load(path, weights_only=True)["meta"]
            before = set(sys.modules)
            try:
                models_registry.build_from_meta(meta, source=path)
            except models_registry.ModelSpecError as e:
                print("refused:", e)
            else:
                print("BUILT")
            print("new modules:", sorted(set(sys.modules) - before))
        print("this" in sys.modules, "models_vit_tensor" in sys.modules, "timm" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert "Beautiful is better than ugly" not in out and "BUILT" not in out
    assert out.count("refused:") == 2 and out.count("new modules: []") == 2, out
    assert out.strip().splitlines()[-1] == "False False False", out
    assert "zen.pth: model_module 'this' is not one of this project's model modules" in out
    assert "url.pth: model_kwargs sets 'pretrained'" in out


@pytest.mark.parametrize(
    "module,name,kwargs",
    [
        ("models_vit_tensor", "vit_tiny_patch8_96", {"img_size": 32, "num_classes": 10}),
        ("models_mae_spectral", "mae_vit_tiny_patch8_96", {"img_size": 32, "norm_pix_loss": True}),
        (
            "downstream_tasks.models_dense",
            "segmenter_vit_tiny_patch8_128",
            {"img_size": 32, "num_classes": 3, "indices": [0, 1, 2, 3]},
        ),
        (
            "downstream_tasks.models_dense",
            "change_detector_vit_tiny_patch8_128",
            {"img_size": [32, 32], "fusion": "absdiff", "depth": 2},
        ),
    ],
)
def test_good_metas_build_the_same_model_as_the_factory(module, name, kwargs):
    torch.manual_seed(0)
    model = build_from_meta({"model": name, "model_module": module, "model_kwargs": kwargs})
    torch.manual_seed(0)
    direct = models_registry.get_module(module).create_model(name, **kwargs)
    assert type(model) is type(direct) and _n_params(model) == _n_params(direct)
    for (k, a), b in zip(model.state_dict().items(), direct.state_dict().values()):
        assert torch.equal(a, b), k


def test_overrides_and_module_lookup():
    model = build_from_meta(
        {"model": "vit_tiny_patch8_96", "model_kwargs": {"img_size": 96, "num_classes": 4}},
        img_size=32,
    )
    assert model.patch_embed.img_size[0] == 32 and model.num_classes == 4
    assert find_module("vit_tiny_patch8_96") == "models_vit_tensor"
    assert find_module("mae_vit_tiny_patch8_96") == "models_mae_spectral"
    assert find_module("segmenter_vit_tiny_patch8_128") == "downstream_tasks.models_dense"
    with pytest.raises(ModelSpecError, match="unknown model 'resnet50'"):
        find_module("resnet50")


def test_kwargs_validated_against_the_factory_signature():
    with pytest.raises(ModelSpecError, match=r"takes no option bogus \(settable: .*img_size"):
        build_model(
            "models_vit_tensor", "vit_tiny_patch8_96", {"img_size": 32, "bogus": 1}, "c.pth"
        )
    # class-valued parameters cannot be set from a file
    with pytest.raises(ModelSpecError, match="takes no option norm_layer"):
        build_model("models_vit_tensor", "vit_tiny_patch8_96", {"norm_layer": "LayerNorm"})
    with pytest.raises(ModelSpecError, match="unknown model 'vit_gigantic'.*vit_tiny_patch8_96"):
        build_model("models_vit_tensor", "vit_gigantic", {})
    # the dense factories' own options and the encoder options their **kwargs reach
    allowed = models_registry.factory_parameters(
        "downstream_tasks.models_dense", "segmenter_vit_tiny_patch8_128"
    )
    assert {"reduction", "indices", "num_classes", "depth", "drop_path_rate"} <= set(allowed)
    assert not {"norm_layer", "patch_embed", "encoder_kwargs"} & set(allowed)


def test_check_kwargs_plain_values_only():
    assert check_kwargs({"img_size": (32, 32), "fusion": "diff", "x": None}) == {
        "img_size": (32, 32),
        "fusion": "diff",
        "x": None,
    }
    for bad in (float("nan"), object(), b"bytes", [[[1]]], list(range(100))):
        with pytest.raises(ModelSpecError, match="not a plain value"):
            check_kwargs({"k": bad})
    for s in ("s3://bucket/w", "C:\\w", "~/w", "weights.safetensors", "x/y"):
        with pytest.raises(ModelSpecError, match="looks like a URL or a file path"):
            check_kwargs({"k": s})
    with pytest.raises(ModelSpecError, match="must be a dict"):
        check_kwargs(["img_size", 32])
