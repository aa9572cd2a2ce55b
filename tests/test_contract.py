"""The input contract (issue 19 item 1): one scene as uint16 digital numbers and as float32
reflectance gives the same model input and the same class map; 8-bit, out-of-range and (strict)
other-scale inputs are refused in one line naming the file and the fix."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine

import models_vit_tensor
from util.data.contract import (
    InputContract,
    InputContractError,
    check_input,
    plan_input,
    sample_windows,
)
from util.data.sentinel2 import L1C_BANDS, MODEL_BANDS, to_model_order
from util.data.synthetic_scenes import render_land_use
from util.data.transforms import get_normalization

SIZE = 256  # scene side (px)
TILE = 32  # classifier input (px)


def _write(path, array, bands=MODEL_BANDS, nodata=None):
    """A GeoTIFF like an export: UTM grid, band descriptions = band names."""
    profile = dict(
        driver="GTiff",
        width=array.shape[-1],
        height=array.shape[-2],
        count=array.shape[0],
        dtype=array.dtype.name,
        crs="EPSG:32632",
        transform=Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 5200000.0),
        nodata=nodata,
    )
    with rasterio.open(path, "w", **profile) as f:
        f.write(array)
        for i, name in enumerate(bands, start=1):
            if name:
                f.set_band_description(i, name)
    return path


@pytest.fixture(scope="module")
def scene():
    """(12, SIZE, SIZE) uint16 DN of a synthetic mosaic (forest, lake, meadow, clouds)."""
    rng = np.random.default_rng(19)
    refl = render_land_use(
        rng, SIZE, SIZE, ["forest", "lake", "herbaceous"], extra_covers=["cloud"]
    )
    dn = np.clip(np.rint(refl * 10000.0), 1, 65535).astype(np.uint16)
    return to_model_order(dn, L1C_BANDS)


@pytest.fixture(scope="module")
def files(scene, tmp_path_factory):
    d = tmp_path_factory.mktemp("contract")
    return {
        "dn": _write(d / "scene_uint16.tif", scene),
        "refl": _write(d / "scene_reflectance.tif", (scene / np.float32(10000)).astype(np.float32)),
    }


def _tile_classes(model, image: torch.Tensor, contract: InputContract) -> torch.Tensor:
    """Class of each TILE x TILE tile, painted over its pixels: a (SIZE, SIZE) class map."""
    norm = get_normalization(contract.normalization)
    tiles = image.unfold(1, TILE, TILE).unfold(2, TILE, TILE)  # (C, nh, nw, t, t)
    nh, nw = tiles.shape[1:3]
    batch = tiles.permute(1, 2, 0, 3, 4).reshape(nh * nw, -1, TILE, TILE)
    with torch.no_grad():
        logits = model(torch.stack([norm(t) for t in batch]))
    cls = logits.argmax(1).reshape(nh, nw)
    return cls.repeat_interleave(TILE, 0).repeat_interleave(TILE, 1), logits


def test_uint16_and_reflectance_copies_give_the_same_input_and_class_map(files, caplog):
    contract = InputContract(normalization="zscore_eurosat", native_size=64)
    with caplog.at_level(logging.DEBUG, logger="util.data.contract"):
        dn = check_input(files["dn"], contract)
        assert not caplog.records  # DN for a DN model: nothing to say
        refl = check_input(files["refl"], contract)
    assert len(caplog.records) == 1  # the one line saying what was converted
    line = caplog.records[0].getMessage()
    assert str(files["refl"]) in line and "reflectance 0-1" in line and "x 10000" in line
    assert dn.dtype == np.uint16 and refl.dtype == np.float32
    assert np.abs(refl - dn.astype(np.float32)).max() < 0.01  # DN / 10000 * 10000 in float32

    torch.manual_seed(0)
    model = models_vit_tensor.create_model("vit_tiny_patch8_96", img_size=TILE, num_classes=10)
    torch.nn.init.normal_(model.head.weight, std=1.0)  # an untrained head's logits are ~0: give
    model.eval()  # the classes a spread, so the map depends on the input
    map_dn, logits_dn = _tile_classes(model, torch.from_numpy(dn.astype(np.float32)), contract)
    map_refl, _ = _tile_classes(model, torch.from_numpy(refl), contract)
    assert (map_dn == map_refl).float().mean() >= 0.999
    assert len(map_dn.unique()) > 1  # a map, not one class everywhere
    # without the check the reflectance copy is a different input (the silent wrong map)
    raw = rasterio.open(files["refl"]).read()
    _, logits_raw = _tile_classes(model, torch.from_numpy(raw), contract)
    assert (logits_raw - logits_dn).abs().max() > 0.5


def test_torch_batches_and_reflectance_contracts(scene):
    x = torch.from_numpy(scene[None].astype(np.float32)).repeat(2, 1, 1, 1)  # (N, C, H, W)
    to_refl = check_input(x, InputContract(scale="reflectance"), source="batch")
    assert torch.allclose(to_refl, x / 10000)
    back = check_input(to_refl, InputContract(), source="batch")
    assert torch.allclose(back, x, atol=0.01)


def test_offset_contract_and_nodata_kept(scene):
    refl = (scene / np.float32(10000)).astype(np.float32)
    refl[:, :8] = 0.0  # nodata rows
    out = check_input(refl, InputContract(dn_offset=-1000), source="r.tif")
    assert np.all(out[:, :8] == 0)  # nodata stays 0 (not 1000)
    assert np.allclose(out[:, 8:], scene[:, 8:].astype(np.float32) + 1000, atol=0.02)


def test_bands_matched_by_name(scene, tmp_path):
    l1c = np.concatenate([scene[:10], np.full_like(scene[:1], 5), scene[10:]])  # B10 inserted
    path = _write(tmp_path / "l1c.tif", l1c, bands=L1C_BANDS)
    assert np.array_equal(check_input(path, InputContract()), scene)


def _errors(scene, tmp_path):
    refl = (scene / np.float32(10000)).astype(np.float32)
    dn = scene.astype(np.float32)
    holes = dn.copy()
    holes[:, :40] = -9999.0  # an undeclared nodata value
    mixed = dn.copy()
    mixed[3] = refl[3]
    return {
        "uint8": (_write(tmp_path / "u8.tif", (scene // 64).astype(np.uint8)), "uint8"),
        "too_bright": (_write(tmp_path / "x100.tif", dn * 100), "out of range"),
        "undeclared_nodata": (_write(tmp_path / "holes.tif", holes), "nodata"),
        "percent": (_write(tmp_path / "pct.tif", refl * 100), "cannot tell the pixel scale"),
        "mixed": (_write(tmp_path / "mixed.tif", mixed), "B04 look like reflectance 0-1"),
        "mask": (_write(tmp_path / "m.tif", (scene > 900).astype(np.uint16)), "a mask?"),
        "rgb": (
            _write(tmp_path / "rgb.tif", scene[1:4], ["B02", "B03", "B04"]),
            "missing B01, B05",
        ),
        "unnamed": (_write(tmp_path / "u.tif", scene[:11], [None] * 11), "11 bands without names"),
    }


@pytest.mark.parametrize(
    "case",
    ["uint8", "too_bright", "undeclared_nodata", "percent", "mixed", "mask", "rgb", "unnamed"],
)
def test_refusals_are_one_line_naming_the_file(scene, tmp_path, case):
    path, expected = _errors(scene, tmp_path)[case]
    with pytest.raises(InputContractError) as e:
        check_input(path, InputContract())
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ") and expected in msg
    assert e.value.path == str(path)
    if case in ("uint8", "too_bright", "percent", "mask"):
        assert "give Sentinel-2 digital numbers (reflectance x 10000" in msg  # the fix
    if case == "rgb":
        assert "the model needs 12 bands (B01, B02" in msg and "the input has 3" in msg


def test_strict_input_refuses_reflectance(files):
    with pytest.raises(InputContractError) as e:
        check_input(files["refl"], InputContract(), strict=True)
    msg = str(e.value)
    assert "\n" not in msg and str(files["refl"]) in msg and "leave out --strict_input" in msg
    assert check_input(files["dn"], InputContract(), strict=True).dtype == np.uint16


def test_dtype_of_the_file_decides_even_when_read_as_float(scene):
    with pytest.raises(InputContractError, match="pixels are uint8"):
        check_input(scene.astype(np.float32), InputContract(), source="s.tif", dtype="uint8")
    with pytest.raises(InputContractError, match="pixels are uint8"):
        check_input(torch.zeros(12, 4, 4, dtype=torch.uint8), InputContract(), source="t")


def test_plan_on_a_sample_and_error_type(scene):
    def read(r, c, h, w):
        px = scene[:, r : r + h, c : c + w] / np.float32(10000)
        return px, np.ones((h, w), bool)

    sample = sample_windows(read, SIZE, SIZE, size=64)
    assert sample.shape == (12, 9 * 64 * 64)
    plan = plan_input(sample, InputContract(), source="scene/")
    assert plan.detected == "reflectance" and plan.gain == 10000 and plan.converts
    assert 0.1 < plan.p99 < 1.5

    class SampleError(Exception):
        def __init__(self, path, message):
            super().__init__(f"{path}: {message}")

    with pytest.raises(SampleError, match="^a.tif: pixels are uint8"):
        plan_input(scene.astype(np.uint8), InputContract(), "a.tif", error=SampleError)
    empty = plan_input(np.zeros((12, 8, 8), np.float32), InputContract(), "nodata.tif")
    assert empty.detected is None and not empty.converts


def test_contract_metadata_roundtrip_and_old_checkpoints():
    c = InputContract(scale="reflectance", native_size=64, normalization="zscore_eurosat")
    meta = {"model": "vit_base_patch8_128", "task": "classify", **c.to_dict()}
    assert InputContract.from_dict(meta) == c
    assert set(c.to_dict()) == {
        "bands",
        "input_scale",
        "input_dn_offset",
        "native_size",
        "normalization",
    }
    old = {"bands": list(MODEL_BANDS), "normalization": "minmax", "input_scale": None}
    assert InputContract.from_dict(old) == InputContract(normalization="minmax")
    assert InputContract.from_dict({}) == InputContract()
    with pytest.raises(ValueError, match="input scale"):
        InputContract(scale="toa")
