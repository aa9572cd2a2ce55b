"""predict.py edges (issue 19 item 6): the embedding default overlap for any tile size, band hints
that say what is missing, and a warning for a tile size the model never saw."""

import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine

from models_mae_spectral import create_model as create_mae
from util.data.sentinel2 import L1C_BANDS, MODEL_BANDS
from util.inference.model_loading import load_model
from util.inference.predict import predict_scene
from util.inference.scene import MissingBandError, Scene, SceneError, write_stack
from util.training.checkpoint import save_checkpoint

CRS_UTM = CRS.from_epsg(32632)
ORIGIN = Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 5100000.0)


def _dn(bands: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(200, 4000, size=(bands, h, w)).astype(np.uint16)


def _mae_checkpoint(path: Path, size: int) -> Path:
    """A tiny pretraining checkpoint trained (so its metadata says) at ``size`` px."""
    mae = create_mae("mae_vit_tiny_patch8_128", img_size=size)
    meta = dict(
        model="mae_vit_tiny_patch8_128", model_module="models_mae_spectral",
        model_kwargs={"img_size": size}, task="pretrain", input_size=size,
        bands=list(MODEL_BANDS), normalization="minmax", classes=[], dataset="synthetic",
    )  # fmt: skip
    save_checkpoint(path, {"format": "spectralgpt-v2", "model": mae.state_dict(), "meta": meta})
    return path


def _bare_stack(path: Path, count: int, size: int = 16) -> Path:
    """A stacked GeoTIFF of ``count`` bands without band descriptions."""
    with rasterio.open(
        path, "w", driver="GTiff", height=size, width=size, count=count, dtype="uint16",
        crs=CRS_UTM, transform=ORIGIN,
    ) as dst:  # fmt: skip
        dst.write(_dn(count, size, size))
    return path


@pytest.mark.parametrize("size", [48, 96, 120])
def test_embed_default_overlap_is_whole_patches(size, tmp_path):
    """A quarter tile (12 px at 48 px) is not a whole 8 px token: the default rounds down to
    whole patches, so --task embed runs with its own defaults at every model size."""
    lm = load_model(_mae_checkpoint(tmp_path / "mae.pth", size))
    assert lm.task == "embed" and lm.patch_size == 8
    scene = write_stack(
        tmp_path / "s.tif", _dn(13, size + 24, size + 8), L1C_BANDS, CRS_UTM, ORIGIN
    )
    s = predict_scene(lm, scene, tmp_path / "emb.tif", progress=False)
    overlap = size - s["stride"]
    assert overlap == size // 4 // 8 * 8 and overlap % 8 == 0 and overlap > 0
    with rasterio.open(tmp_path / "emb.tif") as src:
        assert (src.height, src.width) == ((size + 24) // 8, (size + 8) // 8)
        assert not np.isnan(src.read()).any()


def test_tile_size_the_model_never_saw_is_warned(tmp_path, caplog):
    ckpt = _mae_checkpoint(tmp_path / "mae.pth", 32)
    scene = write_stack(tmp_path / "s.tif", _dn(13, 72, 72), L1C_BANDS, CRS_UTM, ORIGIN)
    with caplog.at_level(logging.WARNING, logger="util.inference.predict"):
        predict_scene(load_model(ckpt), scene, tmp_path / "a.tif", progress=False)
    assert not [r for r in caplog.records if "trained on" in r.getMessage()]
    with caplog.at_level(logging.WARNING, logger="util.inference.predict"):
        predict_scene(load_model(ckpt, input_size=64), scene, tmp_path / "b.tif", progress=False)
    lines = [r.getMessage() for r in caplog.records if "trained on" in r.getMessage()]
    assert len(lines) == 1 and "64 px tiles" in lines[0] and "trained on 32 px" in lines[0]
    assert "--input_size" in lines[0]


def test_input_bands_hint_fits_the_band_count(tmp_path):
    # 13 unnamed bands: the L1C order; 12: the L2A order (no B10) - 12 names, not 13
    with pytest.raises(SceneError) as err:
        Scene(_bare_stack(tmp_path / "b13.tif", 13))
    assert "--input_bands " + ",".join(L1C_BANDS) in str(err.value)
    with pytest.raises(SceneError) as err:
        Scene(_bare_stack(tmp_path / "b12.tif", 12))
    l2a = [b for b in L1C_BANDS if b != "B10"]
    hint = str(err.value).split("e.g. --input_bands ")[1].split(" ")[0]
    assert hint == ",".join(l2a) and len(hint.split(",")) == 12
    # 3 unnamed bands: no band order can help; the message says how many the model needs
    with pytest.raises(SceneError) as err:
        Scene(_bare_stack(tmp_path / "b3.tif", 3))
    msg = str(err.value)
    assert "needs 12 bands" in msg and "holds 3" in msg and "at least 9 are missing" in msg
    assert "e.g. --input_bands" not in msg and "--sensor" in msg
    # the 3 bands named: the missing 9 are listed by name
    with pytest.raises(MissingBandError) as err:
        Scene(tmp_path / "b3.tif", file_bands=["B02", "B03", "B04"])
    msg = str(err.value)
    assert "needs 12 bands" in msg and "9 missing from" in msg and "found: B02, B03, B04" in msg
    missing = msg.split("b3.tif: ")[1].split(" (found")[0].split(", ")
    assert missing == [b for b in MODEL_BANDS if b not in ("B02", "B03", "B04")]
