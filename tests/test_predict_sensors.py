"""predict.py on other sensors' scenes: Landsat 8 C2 L2 (7 bands, 30 m, UTM), HLS, RGBN."""

import json

import numpy as np
import pytest
import rasterio
import torch

import predict
from downstream_tasks import models_dense
from models_mae_spectral import create_model as create_mae
from util.data.sentinel2 import MODEL_BANDS
from util.data.synthetic_sensors import render_sensor_scene, write_sensor_scenes
from util.data.transforms import get_normalization
from util.inference.predict import load_model, predict_scene
from util.inference.sensor_scene import open_scene
from util.training.checkpoint import save_checkpoint

T = 32  # model tile (px)


@pytest.fixture(scope="module")
def products(tmp_path_factory):
    root = tmp_path_factory.mktemp("sensor_products")
    scene = render_sensor_scene(192, seed=11, cloud_bias=-0.5, fill_cols=6)  # 64 x 64 px at 30 m
    return write_sensor_scenes(root, scene, ("landsat8", "hls_s30", "hls_l30", "rgbn"))


def _ckpt(path, model, name, module, task, classes=(), **kwargs):
    meta = dict(
        model=name, model_module=module, model_kwargs=dict(img_size=T, **kwargs), task=task,
        input_size=T, bands=list(MODEL_BANDS), normalization="minmax", classes=list(classes),
    )  # fmt: skip
    save_checkpoint(path, {"format": "spectralgpt-v2", "model": model.state_dict(), "meta": meta})
    return path


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    torch.manual_seed(0)
    name = "segmenter_vit_tiny_patch8_128"
    model = models_dense.create_model(name, img_size=T, num_classes=3, drop_path_rate=0.0).eval()
    path = tmp_path_factory.mktemp("ckpt") / "seg.pth"
    return model, _ckpt(path, model, name, "downstream_tasks.models_dense", "segment", "abc",
                        num_classes=3)  # fmt: skip


def _read(path):
    with rasterio.open(path) as src:
        return src.read(), src.profile, src.tags()


def _reference(model, scene_path, sensor=None):
    """Whole-scene min-max over valid pixels, then the model on the first tile."""
    with open_scene(scene_path, sensor=sensor) as s:
        image, valid = s.read(0, 0, s.height, s.width)
        groups = s.groups
    x = torch.from_numpy(image)
    lo = torch.stack([b[torch.from_numpy(valid)].min() for b in x])[:, None, None]
    hi = torch.stack([b[torch.from_numpy(valid)].max() for b in x])[:, None, None]
    xn = ((x - lo) / (hi - lo + 1e-10)).masked_fill(~torch.from_numpy(valid), 0)
    with torch.no_grad():
        logits = model(xn[None, :, :T, :T], groups=groups)[0]
    return logits.softmax(0).numpy(), valid, groups


@pytest.mark.parametrize("product", ["landsat8", "hls_s30", "hls_l30"])
def test_landsat_and_hls_scene_to_a_map_on_its_grid(products, segmenter, tmp_path, product):
    model, ckpt = segmenter
    folder = products[product]
    out, probs = tmp_path / "classes.tif", tmp_path / "p.tif"
    summary = predict.cli(
        ["--checkpoint", str(ckpt), "--input", str(folder), "--output", str(out),
         "--probabilities", str(probs), "--overlap", "0", "--no_progress"]
    )  # fmt: skip
    band = next(p for p in sorted(folder.iterdir()) if "B04" in p.name or "SR_B4" in p.name)
    with rasterio.open(band) as src:
        grid = (src.crs, src.transform, src.height, src.width)
    cls, prof, tags = _read(out)
    assert (prof["crs"], prof["transform"], prof["height"], prof["width"]) == grid
    assert prof["transform"].a == 30 and prof["crs"].to_epsg() == 32632
    meta = json.loads(tags["input"])
    assert meta["sensor"] == product and meta["product"] == folder.name
    assert meta["present_groups"] == [0, 1, 2, 3]
    p, valid, groups = _reference(model, folder)
    assert groups is None
    assert (cls[0][~valid] == 255).all() and (cls[0][valid] < 3).all()
    assert (~valid[:, 2:]).any()  # clouds as well as the fill columns are nodata
    got = _read(probs)[0][:, :T, :T]
    ok = valid[:T, :T]
    np.testing.assert_allclose(got[:, ok], p[:, ok], atol=1e-3)
    assert summary["shape"] == (grid[2], grid[3])


def test_rgbn_runs_on_three_spectral_groups(products, segmenter, tmp_path):
    model, ckpt = segmenter
    path = products["rgbn"]
    probs = tmp_path / "p.tif"
    predict.cli(
        ["--checkpoint", str(ckpt), "--input", str(path), "--output", str(tmp_path / "c.tif"),
         "--probabilities", str(probs), "--overlap", "0", "--sensor", "rgbn", "--no_progress"]
    )  # fmt: skip
    p, valid, groups = _reference(model, path, sensor="rgbn")
    assert groups == (0, 1, 2)
    got, prof, tags = _read(probs)
    assert prof["transform"].a == 10 and json.loads(tags["input"])["present_groups"] == [0, 1, 2]
    ok = valid[:T, :T]
    np.testing.assert_allclose(got[:, :T, :T][:, ok], p[:, ok], atol=1e-3)
    # the model really saw three groups: with all four (zeros in the fourth) it differs
    with torch.no_grad():
        x = torch.rand(1, 12, T, T)
        x[:, 9:] = 0
        assert not torch.allclose(model(x, groups=groups), model(x))


def test_rgbn_embeddings_leave_the_absent_group_empty(products, tmp_path):
    mae = create_mae("mae_vit_tiny_patch8_128", img_size=T).eval()
    ckpt = _ckpt(tmp_path / "mae.pth", mae, "mae_vit_tiny_patch8_128", "models_mae_spectral",
                 "pretrain")  # fmt: skip
    lm = load_model(ckpt)
    out = tmp_path / "emb.tif"
    predict_scene(lm, products["rgbn"], out, embed_groups="all", progress=False, sensor="rgbn")
    emb = _read(out)[0]
    d = mae.embed_dim
    assert emb.shape[0] == 4 * d
    ok = ~np.isnan(emb[0])
    assert ok.any() and (emb[3 * d :, ok] == 0).all() and (emb[: 3 * d, ok] != 0).any()
    predict_scene(lm, products["rgbn"], tmp_path / "m.tif", progress=False, sensor="rgbn")
    assert _read(tmp_path / "m.tif")[0].shape[0] == d


def test_normalisation_is_independent_of_the_dropped_slots():
    # min-max of an all-zero slot stays 0 (no NaN reaches the model)
    x = torch.zeros(12, 4, 4)
    x[:9] = torch.rand(9, 4, 4)
    assert torch.isfinite(get_normalization("minmax")(x)).all()
