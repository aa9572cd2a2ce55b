"""Reading Landsat C2 L2 folders, HLS granules and other sensors' files as the model's 12 slots."""

import shutil

import numpy as np
import pytest
import rasterio

from util.data.band_adapter import BandAdapter
from util.data.sensors import LANDSAT_QA_BITS
from util.data.synthetic_sensors import observe, render_sensor_scene, write_sensor_scenes
from util.inference.discovery import MissingBandError, SceneError
from util.inference.products import find_product, parse_mtl, quality_invalid
from util.inference.scene import Scene
from util.inference.sensor_scene import SensorScene, open_scene

SIZE = 48


@pytest.fixture(scope="module")
def scene():
    return render_sensor_scene(SIZE, seed=5, cloud_bias=0.0, fill_cols=6)


@pytest.fixture(scope="module")
def products(scene, tmp_path_factory):
    root = tmp_path_factory.mktemp("products")
    return write_sensor_scenes(root, scene, ("sentinel2", "landsat8", "hls_s30", "hls_l30", "rgbn"))


def _read_all(s):
    return s.read(0, 0, s.height, s.width)


def test_landsat_folder_is_detected_and_read_as_model_slots(products, scene):
    folder = products["landsat8"]
    s = open_scene(folder)
    assert isinstance(s, SensorScene) and s.sensor.id == "landsat8" and s.groups is None
    assert s.product.name == folder.name and s.resolution == 30 and s.crs.to_epsg() == 32632
    assert s.shape == (SIZE // 3, SIZE // 3) and len(s.bands) == 12
    image, valid = _read_all(s)
    assert image.shape == (12, SIZE // 3, SIZE // 3) and image.dtype == np.float32
    # values: MTL scaling to reflectance x 10000, then interpolation by wavelength
    want = BandAdapter("landsat8")(observe(scene, "landsat8", 30) * 10000)
    assert np.abs(image - want)[:, valid].max() < 0.3  # one DN of 2.75e-5 is 0.275 here
    assert (image[:, ~valid] == 0).all()
    assert "landsat8" in s.describe() and "QA_PIXEL" in s.describe()
    s.close()


def test_landsat_cloud_and_fill_bits_become_nodata(products, scene):
    folder = products["landsat8"]
    with rasterio.open(folder / f"{folder.name}_QA_PIXEL.TIF") as src:
        qa = src.read(1)
    with SensorScene(folder) as s:
        _, valid = _read_all(s)
    cloud = (qa >> LANDSAT_QA_BITS["cloud"]) & 1 == 1
    dilated = (qa >> LANDSAT_QA_BITS["dilated_cloud"]) & 1 == 1
    fill = (qa & 1) == 1
    assert cloud.any() and dilated.any() and fill[:, :2].all()
    assert np.array_equal(valid, ~(cloud | dilated | fill))
    # masking only the fill keeps the clouds
    with SensorScene(folder, mask_bits=()) as s:
        assert np.array_equal(_read_all(s)[1], ~fill)


def test_quality_invalid_bits():
    qa = np.array(
        [1, 21824, 21762, 22280, 1 << 4, 1 << 5], np.uint16
    )  # fill clear dil cloud shadow snow
    assert quality_invalid(qa, "landsat_qa_pixel").tolist() == [
        True,
        False,
        True,
        True,
        True,
        False,
    ]
    fmask = np.array([0, 2, 4, 8, 16, 255], np.uint8)
    assert quality_invalid(fmask, "hls_fmask").tolist() == [False, True, True, True, False, True]
    with pytest.raises(ValueError, match="unknown landsat_qa_pixel bits"):
        quality_invalid(qa, "landsat_qa_pixel", ["clouds"])


def test_mtl_scaling_is_read_from_the_level2_group(products, tmp_path):
    src = products["landsat8"]
    folder = tmp_path / src.name
    shutil.copytree(src, folder)
    mtl = folder / f"{src.name}_MTL.txt"
    text = mtl.read_text()
    # a Level-1 group with the same key names must not be taken; the Level-2 gain is doubled
    level1 = "  GROUP = LEVEL1_RADIOMETRIC_RESCALING\n    REFLECTANCE_MULT_BAND_5 = 2.0000E-05\n"
    level1 += "    REFLECTANCE_ADD_BAND_5 = -0.100000\n  END_GROUP = LEVEL1_RADIOMETRIC_RESCALING\n"
    text = text.replace("  GROUP = LEVEL2_SURFACE", level1 + "  GROUP = LEVEL2_SURFACE")
    mtl.write_text(
        text.replace("REFLECTANCE_MULT_BAND_5 = 2.7500E-05", "REFLECTANCE_MULT_BAND_5 = 5.5000E-05")
    )
    groups = parse_mtl(mtl.read_text())
    assert groups["LEVEL1_RADIOMETRIC_RESCALING"]["REFLECTANCE_MULT_BAND_5"] == "2.0000E-05"
    product = find_product(folder)
    assert product.scales["B5"].gain == 5.5e-5 and product.scales["B4"].gain == 2.75e-5
    assert product.scales["B5"].offset == -0.2
    with rasterio.open(folder / f"{src.name}_SR_B5.TIF") as f:
        dn = f.read(1).astype(np.float64)
    with SensorScene(folder, sensor_bands="B4,B5") as s:
        raw = s.read_raw(0, 0, s.height, s.width)
        assert s._gain[1, 0, 0] == pytest.approx(0.55)
        np.testing.assert_allclose(raw[1], dn)
        image, valid = _read_all(s)
    # B8A (864.7 nm) ~ B5 (865 nm): 0.999 of the doubled-gain band
    want = (dn * 5.5e-5 - 0.2) * 1e4
    assert np.abs(image[8] - want)[valid].max() < 0.02 * np.abs(want[valid]).max()


def test_hls_granules(products, scene):
    with open_scene(products["hls_s30"]) as s30:
        assert s30.sensor.id == "hls_s30" and s30.adapter.index is not None  # a band selection
        img, valid = _read_all(s30)
    s2_at30 = observe(scene, "sentinel2_l2a", 30) * 10000
    assert np.abs(img - s2_at30)[:, valid].max() <= 0.5 + 1e-3  # rounding to int16 DN
    assert not valid[:, :2].any() and valid.any()
    with open_scene(products["hls_l30"]) as l30:
        assert l30.sensor.id == "hls_l30" and l30.groups is None
        img2, valid2 = _read_all(l30)
    assert np.array_equal(valid, valid2)  # one cloud mask (Fmask bits 1, 2)


def test_rgbn_needs_the_sensor_and_drops_a_group(products):
    path = products["rgbn"]
    with pytest.raises(SceneError, match="name no Sentinel-2 band.*--sensor"):
        open_scene(path)
    with open_scene(path, sensor="rgbn") as s:
        assert s.groups == (0, 1, 2) and s.resolution == 10
        img, valid = _read_all(s)
    assert (img[9:] == 0).all() and valid[:, 6:].all() and not valid[:, :6].any()
    with rasterio.open(path) as f:
        red = f.read(3).astype(np.float32)
    assert np.array_equal(img[3][valid], red[valid])  # B04 slot = the red band, unchanged
    # custom bands, matched by description
    with open_scene(path, sensor="blue:492,green:560,red:665,nir:833") as s:
        assert s.groups == (0, 1, 2)


def test_sentinel2_still_reads_through_open_scene(products):
    with open_scene(products["sentinel2"]) as s:
        assert isinstance(s, Scene) and s.groups is None and s.resolution == 10
    with pytest.raises(SceneError, match="landsat8 product"):
        open_scene(products["landsat8"], sensor="sentinel2")


def test_sensor_override_and_errors(products, tmp_path):
    with open_scene(products["landsat8"], sensor="landsat9") as s:
        assert s.sensor.id == "landsat9"
    with pytest.raises(SceneError, match="--sensor"):
        SensorScene(products["rgbn"])
    # a product folder without one of its band files
    folder = tmp_path / products["landsat8"].name
    shutil.copytree(products["landsat8"], folder)
    (folder / f"{folder.name}_SR_B6.TIF").unlink()
    with pytest.raises(MissingBandError, match="B6"):
        SensorScene(folder, sensor_bands="B4,B6")
    with SensorScene(folder) as s:  # the bands it holds
        assert s.sensor.band_names == ("B1", "B2", "B3", "B4", "B5", "B7")
    # two products in one folder
    other = tmp_path / "two"
    shutil.copytree(products["hls_s30"], other / products["hls_s30"].name)
    shutil.copytree(products["hls_l30"], other / products["hls_l30"].name)
    with pytest.raises(SceneError, match="several products"):
        find_product(other)
