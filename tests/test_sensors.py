"""Sensor table, wavelength band adapter and the models' ``groups`` argument (issue 18 part 2)."""

import numpy as np
import pytest
import torch

import models_mae_spectral
import models_vit_tensor
from downstream_tasks import models_dense
from downstream_tasks.necks import tokens_to_maps
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


# --------------------------------------------------------------------------------------------------
# Models: absent spectral groups are left out of the token sequence
# --------------------------------------------------------------------------------------------------
PX = 32  # 4 x 4 tokens per group


@pytest.fixture(scope="module")
def classifier():
    return models_vit_tensor.create_model("vit_tiny_patch8_96", img_size=PX, num_classes=5).eval()


def _rgbn_input(n=2):
    a = BandAdapter("rgbn")
    x = torch.from_numpy(a(_image(4, shape=(n, PX, PX)))) / 10000
    return a, x


def test_rgbn_token_count(classifier):
    a, x = _rgbn_input()
    t, h, w = classifier.grid
    assert classifier.embed(x).shape[1] == t * h * w == 64
    with torch.no_grad():
        feats = classifier.forward_features(x, groups=a.present_groups)
    assert feats.shape == (2, 3 * h * w, classifier.embed_dim)


def test_groups_select_tokens_with_their_own_positions(classifier):
    x = torch.rand(2, 12, PX, PX)
    full = classifier.embed(x)
    part = classifier.embed(x, groups=[1, 3])
    torch.testing.assert_close(part, torch.cat([full[:, 16:32], full[:, 48:64]], 1))
    # explicit "all groups" is the unchanged full path, bit for bit
    with torch.no_grad():
        assert torch.equal(classifier(x, groups=[0, 1, 2, 3]), classifier(x))
    for bad in ([], [1, 1], [2, 1], [4], [-1]):
        with pytest.raises(ValueError, match="groups must be"):
            classifier.embed(x, groups=bad)


def test_absent_groups_do_not_reach_the_output(classifier):
    a, x = _rgbn_input()
    y = x.clone()
    y[:, 9:] = torch.rand_like(y[:, 9:]) * 1e3  # the dropped group's slots
    with torch.no_grad():
        out = classifier(x, groups=a.present_groups)
        assert out.shape == (2, 5)
        assert torch.equal(out, classifier(y, groups=a.present_groups))
        assert not torch.equal(classifier(x), classifier(y))


def test_mae_with_dropped_groups():
    mae = models_mae_spectral.create_model("mae_vit_tiny_patch8_96", img_size=PX).eval()
    a, x = _rgbn_input()
    with torch.no_grad():
        latent, mask, _ = mae.forward_encoder(x, 0.75, groups=a.present_groups)
        loss, pred, mask2 = mae(x, mask_ratio=0.75, groups=a.present_groups)
        full_loss, full_pred, _ = mae(x, mask_ratio=0.75)
    assert latent.shape == (2, int(48 * 0.25), mae.embed_dim)  # a quarter of the present tokens
    assert (mask[:, 48:] == 1).all()  # the absent group's tokens are never visible
    assert mask[:, :48].sum(1).tolist() == [36, 36]
    assert pred.shape == full_pred.shape and mask2.shape == (2, 64)
    assert torch.isfinite(loss)
    # the loss ignores the absent group: its slots' values do not change it
    y = x.clone()
    y[:, 9:] = 5.0
    noise = torch.rand(2, 64)
    with torch.no_grad():
        l1 = mae(x, 0.75, noise, groups=a.present_groups)[0]
        l2 = mae(y, 0.75, noise, groups=a.present_groups)[0]
    assert torch.equal(l1, l2)


@pytest.mark.parametrize("reduction", ["concat", "linear", "mean"])
def test_neck_reduction_over_present_groups(reduction):
    n, t, h, w, d = 2, 4, 3, 3, 5
    tokens = torch.rand(n, 2 * h * w, d)
    lin = torch.nn.Linear(t, 1)
    out = tokens_to_maps(tokens, (t, h, w), reduction, lin, groups=(0, 2))
    full = torch.zeros(n, t * h * w, d)
    full[:, : h * w], full[:, 2 * h * w : 3 * h * w] = tokens[:, : h * w], tokens[:, h * w :]
    if reduction == "mean":
        want = tokens.unflatten(1, (2, h, w)).mean(1).permute(0, 3, 1, 2)
    else:
        want = tokens_to_maps(full, (t, h, w), reduction, lin)
    torch.testing.assert_close(out, want)


@pytest.mark.parametrize(
    "name", ["segmenter_vit_tiny_patch8_128", "change_detector_vit_tiny_patch8_128"]
)
@pytest.mark.parametrize("reduction", ["concat", "linear", "mean"])
def test_dense_output_shape_unchanged(name, reduction):
    model = models_dense.create_model(name, img_size=PX, reduction=reduction).eval()
    a, x = _rgbn_input(1)
    inp = torch.stack([x, x.flip(-1)], 1) if model.task == "change" else x
    with torch.no_grad():
        full = model(inp)
        part = model(inp, groups=a.present_groups)
        assert torch.equal(model(inp, groups=(0, 1, 2, 3)), full)
    assert part.shape == full.shape and torch.isfinite(part).all()


@pytest.mark.parametrize(
    "name", ["paper_oscd_vit_base_patch8_128", "paper_segmunich_vit_base_patch8_128"]
)
def test_paper_dense_output_shape_unchanged(name):
    model = models_dense.create_model(name, img_size=16, depth=1).eval()
    x = torch.rand(1, 12, 16, 16)
    inp = torch.stack([x, x.flip(-1)], 1) if model.task == "change" else x
    with torch.no_grad():
        assert model(inp, groups=(0, 2)).shape == model(inp).shape
