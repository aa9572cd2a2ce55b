"""Synthetic scenes written as Sentinel-2, Landsat C2 L2, HLS and RGBN products (issue 18 part 2)."""

import re

import numpy as np
import pytest
import rasterio

from util.data.sensors import LANDSAT_QA_BITS, SENSORS
from util.data.synthetic_sensors import (
    observe,
    render_sensor_scene,
    write_sensor_scenes,
)

SIZE = 48  # 10 m px: 16 x 16 px at 30 m


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    scene = render_sensor_scene(SIZE, seed=3, cloud_bias=0.0, fill_cols=6)
    root = tmp_path_factory.mktemp("sensors")
    sensors = ("sentinel2", "landsat8", "landsat5_tm", "hls_s30", "hls_l30", "rgbn")
    return scene, write_sensor_scenes(root, scene, sensors)


def _read(path):
    with rasterio.open(path) as src:
        return src.read(), src.profile, src.bounds, src.descriptions, src.tags()


def test_render_checks_its_arguments():
    with pytest.raises(ValueError, match="multiple of 6"):
        render_sensor_scene(50)
    with pytest.raises(ValueError, match="unknown covers"):
        render_sensor_scene(48, covers=("lava",))


def test_landsat_folder_layout_and_scaling(written):
    scene, out = written
    folder = out["landsat8"]
    name = folder.name
    assert re.fullmatch(r"LC08_L2SP_\d{6}_\d{8}_\d{8}_02_T1", name)
    files = sorted(p.name for p in folder.iterdir())
    want = [f"{name}_SR_B{i}.TIF" for i in range(1, 8)] + [
        f"{name}_MTL.txt",
        f"{name}_QA_PIXEL.TIF",
    ]
    assert files == sorted(want)
    mtl = (folder / f"{name}_MTL.txt").read_text()
    assert "GROUP = LEVEL2_SURFACE_REFLECTANCE_PARAMETERS" in mtl
    assert (
        "REFLECTANCE_MULT_BAND_5 = 2.7500E-05" in mtl
        and "REFLECTANCE_ADD_BAND_5 = -0.200000" in mtl
    )
    dn, prof, bounds, _, _ = _read(folder / f"{name}_SR_B5.TIF")
    assert prof["dtype"] == "uint16" and prof["nodata"] == 0 and prof["crs"].to_epsg() == 32632
    assert prof["transform"].a == 30 and dn.shape == (1, SIZE // 3, SIZE // 3)
    _, _, s2_bounds, _, _ = _read(next(out["sentinel2"].glob("*_B02_10m.tif")))
    assert bounds == s2_bounds  # one ground extent
    refl = dn[0] * 2.75e-5 - 0.2
    want = observe(scene, "landsat8", 30)[4]
    ok = dn[0] > 0
    assert np.abs(refl[ok] - want[ok]).max() < 2e-5
    assert (dn[0][:, :2] == 0).all() and ok[:, 2:].all()  # fill columns


def test_landsat_qa_pixel_bits(written):
    scene, out = written
    folder = out["landsat8"]
    qa = _read(folder / f"{folder.name}_QA_PIXEL.TIF")[0][0]
    bit = {k: (qa >> v) & 1 for k, v in LANDSAT_QA_BITS.items()}
    frac = scene.cloud.reshape(SIZE // 3, 3, SIZE // 3, 3).mean((1, 3))
    assert (bit["fill"][:, :2] == 1).all() and (bit["fill"][:, 2:] == 0).all()
    cloud = bit["cloud"] == 1
    assert cloud.any() and (~cloud[:, 2:]).any()
    assert np.array_equal(cloud[:, 2:], frac[:, 2:] > 0.5)
    assert (bit["clear"][cloud] == 0).all() and (
        bit["clear"][(frac == 0)[:, :] & (bit["fill"] == 0)] == 1
    ).all()


def test_tm_and_hls_files(written):
    _, out = written
    tm = sorted(p.name[-10:] for p in out["landsat5_tm"].glob("*_SR_B*.TIF"))
    assert out["landsat5_tm"].name.startswith("LT05_L2SP_")
    assert tm == [f"_SR_B{i}.TIF" for i in (1, 2, 3, 4, 5, 7)]
    for product, n in (("S30", 13), ("L30", 8)):
        folder = out[f"hls_{product.lower()}"]
        assert re.fullmatch(
            rf"HLS\.{product}\.T\d\d[A-Z]{{3}}\.\d{{7}}T\d{{6}}\.v2\.0", folder.name
        )
        bands = sorted(p.name.split(".")[-2] for p in folder.glob("*.B*.tif"))
        assert len(bands) == n and (folder / f"{folder.name}.Fmask.tif").exists()
        dn, prof, _, _, tags = _read(folder / f"{folder.name}.B04.tif")
        assert (
            prof["dtype"] == "int16"
            and prof["nodata"] == -9999
            and tags["scale_factor"] == "0.0001"
        )
        assert (dn[0][:, :2] == -9999).all() and (dn[0][:, 2:] > 0).all()


def test_same_surface_in_every_product(written):
    _, out = written
    s2_dn = _read(next(out["sentinel2"].glob("*_B04_10m.tif")))[0][0]
    s2_b04 = s2_dn / 1e4
    s2_at30 = s2_b04.reshape(SIZE // 3, 3, SIZE // 3, 3).mean((1, 3))
    s30 = out["hls_s30"]
    hls_b04 = _read(s30 / f"{s30.name}.B04.tif")[0][0] * 1e-4
    assert np.abs(hls_b04 - s2_at30)[:, 2:].max() < 2e-4  # same band, same surface, 30 m
    rgbn, prof, _, desc, _ = _read(out["rgbn"])
    assert desc == ("blue", "green", "red", "nir") and prof["transform"].a == 10
    assert np.array_equal(rgbn[2], s2_dn)  # red at B04's centre: the same numbers
    assert SENSORS["rgbn"].band("red").name == "B04"
