"""Sensor table, wavelength band adapter and the models' ``groups`` argument (issue 18 part 2)."""

import numpy as np
import pytest
import torch

from util.data.band_adapter import MAX_EXTRAPOLATION_NM, BandAdapter, model_band_centres
from util.data.sensors import (
    S2_BOA_ADD_OFFSET_DN,
    SENSORS,
    SensorError,
    get_sensor,
    parse_custom,
    sentinel2_scale,
)
from util.data.sentinel2 import L1C_BANDS, MODEL_BANDS


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sid", list(SENSORS))
def test_table_is_sane(sid):
    s = SENSORS[sid]
    c = s.centres
    assert len(c) == len(s.bands) >= 4
    assert ((c > 400) & (c < 2400)).all()
    for b in s.bands:
        assert b.width_nm is None or 0 < b.width_nm < 300
        assert s.band(b.name) is b  # every band is found by its own name
    # 0 reflectance and 1 reflectance land on the model's scale (x 10000)
    lo, hi = s.scale.to_dn(np.array([0.0, 1.0]))
    assert np.allclose(s.to_model_scale(np.array([lo, hi])), [0.0, 10000.0], atol=1.0)


def test_table_facts():
    assert SENSORS["sentinel2_l1c"].band_names == L1C_BANDS
    assert SENSORS["sentinel2_l2a"].band_names == MODEL_BANDS
    assert SENSORS["landsat8"].band("SR_B5").centre_nm == 865
    assert SENSORS["landsat9"].bands == SENSORS["landsat8"].bands
    assert SENSORS["hls_l30"].band("B05").centre_nm == 865  # OLI numbering, not Sentinel-2's
    assert SENSORS["hls_s30"].band("B05").centre_nm == pytest.approx(704.1)
    assert [b.common_name for b in SENSORS["hls_prithvi6"].bands] == [
        "blue", "green", "red", "nir08", "swir16", "swir22"
    ]  # fmt: skip
    assert len(SENSORS["planetscope_superdove"].bands) == 8
    # Landsat C2 L2: DN 7273 -> ~0, 43636 -> ~1 reflectance
    ls = SENSORS["landsat8"].scale
    assert ls.to_reflectance(np.array([7273, 43636])) == pytest.approx([0.0, 1.0], abs=1e-4)
    assert SENSORS["hls_s30"].scale.nodata == -9999
    # Sentinel-2 baseline 04.00 offset: DN 1000 is reflectance 0
    new = sentinel2_scale(S2_BOA_ADD_OFFSET_DN)
    assert new.to_reflectance(np.array([1000.0]))[0] == pytest.approx(0, abs=1e-7)


def test_sentinel2_scale_is_exact_on_the_models_scale():
    dn = np.random.default_rng(0).integers(1, 20000, (12, 5, 5)).astype(np.float32)
    assert np.array_equal(SENSORS["sentinel2_l2a"].to_model_scale(dn), dn)


def test_names_and_aliases():
    s = get_sensor("LC08", bands="blue,nir08,B7")
    assert s.band_names == ("B2", "B5", "B7")
    assert get_sensor("landsat8").index("B01") == get_sensor("landsat8").index("sr_b1") == 0
    with pytest.raises(SensorError, match="unknown sensor 'landsat3'.*landsat8"):
        get_sensor("landsat3")
    with pytest.raises(SensorError, match="has no band 'B8'.*B1, B2"):
        get_sensor("landsat8", ["B8"])


def test_parse_custom():
    s = parse_custom(" red:665, nir:842:40 ,")
    assert s.band_names == ("red", "nir")
    assert s.centres.tolist() == [665.0, 842.0]
    assert s.bands[1].width_nm == 40
    assert get_sensor("red:665,nir:842").band_names == ("red", "nir")
    assert parse_custom({"a": 500, "b": 600}).centres.tolist() == [500.0, 600.0]
    for bad in ("red", "red:x", "red:665,nir", ":665", "red:-1", "", "a:500,b:500", "a:500,A:600"):
        with pytest.raises(SensorError):
            parse_custom(bad)


# --------------------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------------------
def _image(c, seed=0, shape=(2, 6, 7)):
    return (
        np.random.default_rng(seed).uniform(100, 9000, (shape[0], c, *shape[1:])).astype(np.float32)
    )


@pytest.mark.parametrize("sid", ["sentinel2_l2a", "sentinel2_l1c", "hls_s30"])
def test_sentinel2_input_is_the_identity_bit_exact(sid):
    a = BandAdapter(sid)
    assert a.index is not None and a.all_groups and a.groups is None
    x = _image(len(a.sensor.bands))
    want = x[:, [list(a.sensor.band_names).index(b) for b in MODEL_BANDS]]
    assert np.array_equal(a(x), want)
    assert torch.equal(a(torch.from_numpy(x)), torch.from_numpy(want))
    if sid == "sentinel2_l2a":
        assert np.array_equal(a(x), x)
        assert np.array_equal(a.from_dn(x), x)


@pytest.mark.parametrize(
    "sid", ["landsat8", "landsat5_tm", "landsat7_etm", "hls_prithvi6", "hls_l30"]
)
def test_full_coverage_equals_numpy_interp(sid):
    a = BandAdapter(sid)
    assert a.all_groups
    x = _image(len(a.sensor.bands), seed=1)
    usable = [i for i, b in enumerate(a.sensor.bands) if b.common_name != "cirrus"]
    centres = a.sensor.centres[usable]
    order = np.argsort(centres)
    slots = model_band_centres()
    want = np.apply_along_axis(
        lambda v: np.interp(slots, centres[order], v[usable][order]), 1, x.astype(np.float64)
    )
    np.testing.assert_allclose(a(x), want, rtol=1e-6)
    np.testing.assert_allclose(a(torch.from_numpy(x)).numpy(), want, rtol=1e-6)
    np.testing.assert_allclose(a.weights.sum(1), 1.0)


def test_rgbn_drops_the_swir_group_and_extrapolates_within_the_margin():
    a = BandAdapter("rgbn")
    assert a.present_groups == (0, 1, 2) and a.groups == (0, 1, 2)
    assert a.slot_present.tolist() == [True] * 9 + [False] * 3
    x = _image(4)
    y = a(x)
    assert (y[:, 9:] == 0).all()
    # B01 (442.7 nm) is 49.7 nm below B02: within the margin, takes B02's value
    assert np.array_equal(y[:, 0], x[:, 0])
    assert 442.7 < 492.4 - 40 and 492.4 - 442.7 < MAX_EXTRAPOLATION_NM
    # a tighter margin drops the first group too (B01 not covered)
    assert BandAdapter("rgbn", max_extrapolation_nm=40).present_groups == (1, 2)


def test_group_needs_a_band_in_its_range():
    # only blue and SWIR 2: everything between is interpolable, but groups 1 and 2 hold no band
    a = BandAdapter("blue:490,green:560,swir2:2200")
    assert a.present_groups == (0, 3)
    with pytest.raises(SensorError, match="cover none"):
        BandAdapter("a:1200,b:1300")


def test_cirrus_gets_no_weight():
    a = BandAdapter("hls_l30")
    assert (a.weights[:, a.sensor.index("B09")] == 0).all()


def test_wrong_channel_count_is_a_clear_error():
    with pytest.raises(ValueError, match=r"expected \(\.\.\., 7, H, W\)"):
        BandAdapter("landsat8")(np.zeros((6, 4, 4), np.float32))


def test_metadata_and_describe():
    a = BandAdapter("landsat8", bands="B2,B3,B4,B5")
    meta = a.metadata()
    assert meta["sensor"].startswith("landsat8") and meta["bands"] == ["B2", "B3", "B4", "B5"]
    assert meta["present_groups"] == [0, 1, 2]
    assert "dropped" in a.describe() and "B05 (704.1 nm) = " in a.describe()
