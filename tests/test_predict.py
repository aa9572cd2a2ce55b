"""predict.py: scenes on disk -> georeferenced GeoTIFFs (band mapping, seams, nodata, memory)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn as nn
from rasterio.crs import CRS
from rasterio.transform import Affine

import predict
from downstream_tasks import models_dense
from models_mae_spectral import create_model as create_mae
from models_vit_tensor import create_model as create_classifier
from util.data.sentinel2 import BANDS, L1C_BANDS, MODEL_BANDS
from util.data.synthetic import COVERS, render_scene
from util.data.transforms import get_normalization
from util.inference.model_loading import LoadedModel, load_model
from util.inference.predict import predict_scene
from util.inference.scene import MissingBandError, Scene, SceneError, write_stack
from util.inference.tiling import blend_weights, sliding_window_inference
from util.training.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
CRS_UTM = CRS.from_epsg(32632)
ORIGIN = Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 5100000.0)
#: float16 outputs: relative rounding 2^-11; probabilities in [0, 1]
F16_ATOL = 1e-3


# --------------------------------------------------------------------------------------------------
# scenes in the layouts users have
# --------------------------------------------------------------------------------------------------
def scene_dn(h: int, w: int, seed: int = 0, block_constant: bool = False) -> np.ndarray:
    """(13, h, w) uint16 DN in L1C order; with ``block_constant`` the 20 m bands are constant on
    2 x 2 blocks and the 60 m bands on 6 x 6 blocks (so their native-resolution files hold exactly
    the same information and nearest resampling restores the 10 m stack)."""
    rng = np.random.default_rng(seed)
    _, refl, _ = render_scene(rng, h, w, list(COVERS)[:5])
    dn = np.clip(np.rint(refl * 10000), 1, 65535).astype(np.uint16)
    if block_constant:
        for i, b in enumerate(L1C_BANDS):
            f = BANDS[b].resolution_m // 10
            if f > 1:
                low = dn[i].reshape(h // f, f, w // f, f)[:, 0, :, 0]
                dn[i] = np.repeat(np.repeat(low, f, 0), f, 1)
    return dn


def write_band(path: Path, band: np.ndarray, res: float = 10.0, driver: str = "GTiff") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    opts = dict(REVERSIBLE="YES", QUALITY="100") if driver == "JP2OpenJPEG" else {}
    with rasterio.open(
        path, "w", driver=driver, height=band.shape[0], width=band.shape[1], count=1,
        dtype=band.dtype, crs=CRS_UTM, transform=Affine(res, 0, ORIGIN.c, 0, -res, ORIGIN.f),
        **opts,
    ) as dst:  # fmt: skip
        dst.write(band[None])
    return path


def write_safe(root: Path, dn: np.ndarray, tile_id: str = "T32TQM", offset: int = 0) -> Path:
    """An L2A granule's IMG_DATA: R10m/R20m/R60m jp2/tif at native resolution + distractors (a
    coarser copy of a band, TCI, SCL, QI_DATA masks named after bands); with ``offset`` the DNs
    carry it and ``MTD_MSIL2A.xml`` declares ``BOA_ADD_OFFSET = -offset`` (baseline >= 04.00)."""
    granule = root / "GRANULE" / f"L2A_{tile_id}_A041234_20230601T101559"
    img = granule / "IMG_DATA"
    stem = f"{tile_id}_20230601T101559"
    if offset:
        dn = dn + np.uint16(offset)
        ids = "".join(
            f'<BOA_ADD_OFFSET band_id="{i}">{-offset}</BOA_ADD_OFFSET>' for i in range(13)
        )
        root.mkdir(parents=True, exist_ok=True)
        (root / "MTD_MSIL2A.xml").write_text(f"<root><BOA_ADD_OFFSET_VALUES_LIST>{ids}"
                                             "</BOA_ADD_OFFSET_VALUES_LIST></root>")  # fmt: skip
    for mask in ("MSK_QUALIT_B04", "MSK_DETFOO_B04"):  # same grid as B04: must not be taken
        write_band(granule / "QI_DATA" / f"{mask}.tif", (dn[3] > 0).astype(np.uint8))
    for i, b in enumerate(L1C_BANDS):
        f = BANDS[b].resolution_m // 10
        band = dn[i][::f, ::f]
        folder = {1: "R10m", 2: "R20m", 6: "R60m"}[f]
        driver, ext = ("JP2OpenJPEG", "jp2") if b == "B02" else ("GTiff", "tif")
        write_band(img / folder / f"{stem}_{b}_{10 * f}m.{ext}", band, 10.0 * f, driver)
    # coarser copies of a 10 m band (the finest must win) and files that are not bands
    write_band(img / "R20m" / f"{stem}_B04_20m.tif", dn[3][::2, ::2] // 2, 20.0)
    write_band(img / "R10m" / f"{stem}_TCI_10m.tif", dn[1].astype(np.uint8), 10.0)
    write_band(img / "R20m" / f"{stem}_SCL_20m.tif", dn[1][::2, ::2].astype(np.uint8), 20.0)
    return root


class PixelModel(nn.Module):
    """A per-pixel linear classifier: its prediction does not depend on the window, so a scene's
    output must equal it at every pixel, seams included."""

    def __init__(self, k: int = 4, change: bool = False, cheap: bool = False):
        super().__init__()
        self.cheap = cheap
        g = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(k, 12, generator=g) * 3)
        self.change = change

    def forward(self, x):
        if self.cheap:  # two bands as the logits (I/O-bound runs)
            return x[:, 1:3]
        if self.change:
            x = x[:, 1] - x[:, 0]
        return torch.einsum("kc,nchw->nkhw", self.weight, x)


def pixel_lm(k: int = 4, tile: int = 32, change: bool = False, cheap: bool = False) -> LoadedModel:
    return LoadedModel(
        model=PixelModel(k, change, cheap), task="change" if change else "segment", input_size=tile,
        patch_size=8, bands=MODEL_BANDS, normalization="reflectance_10000",
        classes=[f"c{i}" for i in range(k)],
    )  # fmt: skip


def read(path):
    with rasterio.open(path) as src:
        return src.read(), src.profile, src.tags()


def pixel_truth(lm: LoadedModel, dn_l1c: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(dn_l1c[[L1C_BANDS.index(b) for b in MODEL_BANDS]].astype(np.float32))
    return lm.model(get_normalization(lm.normalization)(x)[None])[0].argmax(0).numpy()


# --------------------------------------------------------------------------------------------------
# band mapping
# --------------------------------------------------------------------------------------------------
def test_band_mapping_stacked_shuffled_and_safe_give_the_same_output(tmp_path):
    h, w = 60, 78
    dn = scene_dn(h, w, block_constant=True)
    lm = pixel_lm()
    truth = pixel_truth(lm, dn)
    stacked = write_stack(tmp_path / "stack.tif", dn, L1C_BANDS, CRS_UTM, ORIGIN)
    # per-band files in shuffled order, two naming styles
    order = np.random.default_rng(1).permutation(len(L1C_BANDS))
    files = [
        write_band(tmp_path / "bands" / (f"B{b[1:]}.tif" if k % 2 else f"S2_x_{b}.tif"), dn[i])
        for k, i in enumerate(order)
        for b in [L1C_BANDS[i]]
    ]
    safe = write_safe(tmp_path / "S2B_MSIL2A_20230601T101559.SAFE", dn)
    outs = {}
    for name, inputs, resampling in [
        ("stacked", stacked, "bilinear"),
        ("shuffled", files, "bilinear"),
        ("safe", safe, "nearest"),
    ]:
        out = tmp_path / f"{name}.tif"
        predict_scene(lm, inputs, out, resampling=resampling, progress=False)
        arr, prof, tags = read(out)
        assert prof["crs"] == CRS_UTM and prof["transform"] == ORIGIN
        assert (prof["height"], prof["width"]) == (h, w)
        assert json.loads(tags["classes"]) == lm.classes
        outs[name] = arr[0]
    np.testing.assert_array_equal(outs["stacked"], truth)
    np.testing.assert_array_equal(outs["shuffled"], truth)
    np.testing.assert_array_equal(outs["safe"], truth)
    with Scene(safe, resampling="nearest") as s:  # finest file per band; TCI/SCL ignored
        assert Path(s.sources["B04"].path).name.endswith("_B04_10m.tif")
        assert s.sources["B02"].path.endswith(".jp2")
        assert set(s.resampled_bands) == {"B01", "B05", "B06", "B07", "B8A", "B09", "B11", "B12"}
        image, valid = s.read(7, 5, 11, 13)
        ref = dn[[L1C_BANDS.index(b) for b in MODEL_BANDS], 7:18, 5:18]
        np.testing.assert_array_equal(image, ref.astype(np.float32))
        assert valid.all()


def test_per_tile_normalisation_statistics(tmp_path):
    t = 16
    dn = scene_dn(32, 48, seed=7)
    dn[:, 3:5, 3:9] = 0  # nodata is left out of the tile's statistics
    scene = write_stack(tmp_path / "s.tif", dn, L1C_BANDS, CRS_UTM, ORIGIN)
    lm = pixel_lm(tile=t)
    lm.normalization = "minmax"
    predict_scene(lm, scene, tmp_path / "o.tif", overlap=0, norm_stats="tile", progress=False)
    out = read(tmp_path / "o.tif")[0][0]
    x = torch.from_numpy(dn[[L1C_BANDS.index(b) for b in MODEL_BANDS]].astype(np.float32))
    valid = (x != 0).all(0)
    for y in range(0, 32, t):
        for x0 in range(0, 48, t):
            win, ok = x[:, y : y + t, x0 : x0 + t], valid[y : y + t, x0 : x0 + t]
            lo = torch.stack([b[ok].min() for b in win])[:, None, None]
            hi = torch.stack([b[ok].max() for b in win])[:, None, None]
            want = lm.model(((win - lo) / (hi - lo + 1e-10))[None])[0].argmax(0)
            want = want.masked_fill(~ok, 255).numpy()
            np.testing.assert_array_equal(out[y : y + t, x0 : x0 + t], want)


def test_safe_dn_offset_is_applied(tmp_path):
    dn = scene_dn(24, 36, block_constant=True)
    safe = write_safe(tmp_path / "new.SAFE", dn, offset=1000)  # processing baseline >= 04.00
    ref = dn[[L1C_BANDS.index(b) for b in MODEL_BANDS]].astype(np.float32)
    with Scene(safe, resampling="nearest") as s:
        np.testing.assert_array_equal(s.read(0, 0, 24, 36)[0], ref)
        assert "DN offset [-1000.0]" in s.describe()
    with Scene(safe, resampling="nearest", dn_offset=0) as s:
        np.testing.assert_array_equal(s.read(0, 0, 24, 36)[0], ref + 1000)


def test_bilinear_20m_60m_bands_land_on_the_10m_grid(tmp_path):
    h, w = 48, 48
    dn = scene_dn(h, w, seed=3)
    safe = write_safe(tmp_path / "g.SAFE", dn)
    with Scene(safe) as s:  # bilinear (default), as the BigEarthNet loader does with torch
        image, _ = s.read(0, 0, h, w)
    for band in ("B05", "B8A", "B01", "B09"):
        f = BANDS[band].resolution_m // 10
        low = torch.from_numpy(dn[L1C_BANDS.index(band)][::f, ::f].astype(np.float32))
        up = torch.nn.functional.interpolate(
            low[None, None], scale_factor=f, mode="bilinear", align_corners=False
        )[0, 0]
        # GDAL rounds to the files' integer type: 0.5 DN; a one-pixel shift would be far larger
        np.testing.assert_allclose(image[MODEL_BANDS.index(band)], up.numpy(), atol=0.5 + 1e-3)


def test_missing_band_and_unnamed_stack_errors(tmp_path):
    dn = scene_dn(24, 24)
    folder = tmp_path / "bands"
    for i, b in enumerate(L1C_BANDS):
        if b != "B8A":
            write_band(folder / f"{b}.tif", dn[i])
    with pytest.raises(MissingBandError, match="B8A"):
        Scene(folder)
    bare = tmp_path / "bare.tif"
    with rasterio.open(
        bare, "w", driver="GTiff", height=24, width=24, count=13, dtype="uint16", crs=CRS_UTM,
        transform=ORIGIN,
    ) as dst:  # fmt: skip
        dst.write(dn)
    with pytest.raises(SceneError, match="--input_bands"):
        Scene(bare)
    with Scene(bare, file_bands=L1C_BANDS) as s:  # the order given by name
        image, _ = s.read(0, 0, 24, 24)
    np.testing.assert_array_equal(image[MODEL_BANDS.index("B8A")], dn[L1C_BANDS.index("B8A")])


# --------------------------------------------------------------------------------------------------
# real models: seams, the dense evaluation path, change, classification, embeddings
# --------------------------------------------------------------------------------------------------
def save_ckpt(path: Path, model: nn.Module, name: str, module: str, task: str, size: int,
              normalization: str, classes=(), **kwargs) -> Path:  # fmt: skip
    meta = dict(
        model=name, model_module=module, model_kwargs=dict(img_size=size, **kwargs), task=task,
        input_size=size, bands=list(MODEL_BANDS), normalization=normalization,
        classes=list(classes), dataset="synthetic",
    )  # fmt: skip
    save_checkpoint(path, {"format": "spectralgpt-v2", "model": model.state_dict(), "meta": meta})
    return path


def window_logits(model, x: torch.Tensor, y: int, x0: int, t: int) -> torch.Tensor:
    with torch.no_grad():
        return model(x[None, ..., y : y + t, x0 : x0 + t])[0]


def test_segmentation_georeferencing_and_seams(tmp_path):
    torch.manual_seed(0)
    t, overlap = 32, 8
    model = models_dense.create_model(
        "segmenter_vit_tiny_patch8_128", img_size=t, num_classes=3, drop_path_rate=0.0
    ).eval()
    ckpt = save_ckpt(tmp_path / "seg.pth", model, "segmenter_vit_tiny_patch8_128",
                     "downstream_tasks.models_dense", "segment", t, "minmax", ["a", "b", "c"],
                     num_classes=3)  # fmt: skip
    h, w = 56, 72  # tiles at rows 0, 24; columns 0, 24, 40
    dn = scene_dn(h, w, seed=5)
    scene = write_stack(tmp_path / "scene.tif", dn, L1C_BANDS, CRS_UTM, ORIGIN)
    out, probs = tmp_path / "seg.tif", tmp_path / "seg_p.tif"
    summary = predict.cli(
        ["--checkpoint", str(ckpt), "--input", str(scene), "--output", str(out),
         "--probabilities", str(probs), "--overlap", str(overlap), "--no_progress"]
    )  # fmt: skip
    assert summary["task"] == "segment" and summary["tiles"] == 6
    cls, prof, tags = read(out)
    p, pprof, _ = read(probs)
    assert prof["crs"] == pprof["crs"] == CRS_UTM and prof["transform"] == ORIGIN
    assert (prof["height"], prof["width"], prof["dtype"]) == (h, w, "uint8")
    assert json.loads(tags["classes"]) == ["a", "b", "c"] and tags["normalization"] == "minmax"
    with rasterio.open(out) as src:
        assert src.colormap(1)[1][:3] == (255, 127, 14) and src.overviews(1) == []
        assert src.profile["tiled"] and src.compression.value == "DEFLATE"
    import xml.etree.ElementTree as ET

    style = ET.parse(out.with_suffix(".qml")).getroot()  # QGIS legend: colours and class names
    entries = style.findall(".//paletteEntry")
    assert [(e.get("value"), e.get("label")) for e in entries] == [
        ("0", "a"),
        ("1", "b"),
        ("2", "c"),
    ]
    assert entries[1].get("color") == "#ff7f0e"
    x = torch.from_numpy(dn[[L1C_BANDS.index(b) for b in MODEL_BANDS]].astype(np.float32))
    x = get_normalization("minmax")(x)  # the whole scene's min-max, as a dataset sample's
    # a pixel covered by one tile only is that window's prediction
    a = window_logits(model, x, 0, 0, t)  # pixels [0, 24) x [0, 24) are in this tile only
    np.testing.assert_allclose(p[:, :24, :24], a.softmax(0)[:, :24, :24], atol=F16_ATOL, rtol=0)
    # seams: the blend-weighted mean of the covering windows' logits (cosine weights)
    b = window_logits(model, x, 0, 24, t)  # columns [24, 32) are also in the tile at column 24
    wt = blend_weights(t, t, "cosine")
    wa, wb = wt[:24, 24:32], wt[:24, 0:8]
    z = (wa * a[:, :24, 24:32] + wb * b[:, :24, 0:8]) / (wa + wb)
    np.testing.assert_allclose(p[:, :24, 24:32], z.softmax(0), atol=F16_ATOL, rtol=0)
    single = (a.softmax(0)[:, :24, 24:32] - b.softmax(0)[:, :24, 0:8]).abs().max()
    assert single > 10 * F16_ATOL  # the windows disagree there: blending is what is tested
    # every pixel: the in-memory sliding window over the same normalised pixels
    with torch.no_grad():
        ref = sliding_window_inference(model, x[None], t, t - overlap, 4, 3, blend="cosine")[0]
    np.testing.assert_allclose(p, ref.softmax(0).numpy(), atol=F16_ATOL, rtol=0)
    top2 = ref.topk(2, 0).values
    decided = ((top2[0] - top2[1]) > 1e-4).numpy()
    np.testing.assert_array_equal(cls[0][decided], ref.argmax(0).numpy()[decided])


def test_equals_the_dense_evaluation_path_on_an_oscd_city(tmp_path):
    """A city in the OSCD layout: ``predict.py`` on its band files vs the dataset + whole-scene
    evaluation of ``downstream_tasks.engine_dense`` (which writes its own GeoTIFF)."""
    from downstream_tasks.engine_dense import evaluate
    from downstream_tasks.engine_dense import predict_scene as dense_predict
    from util.data import build_dataset
    from util.data.synthetic import generate
    from util.data.transforms import build_transforms

    t, stride = 32, 24
    generate("oscd", tmp_path / "oscd", num=1, size=40, seed=0)
    ds = build_dataset(
        "oscd", tmp_path / "oscd", split="train",
        transforms=build_transforms("oscd", is_train=False, input_size=None),
    )  # fmt: skip
    model = models_dense.create_model(
        "change_detector_vit_tiny_patch8_128", img_size=t, drop_path_rate=0.0
    ).eval()
    names = ["no change", "change"]
    evaluate(model, ds, torch.device("cpu"), 2, t, stride, [0], names, "change", blend="cosine",
             save_predictions=tmp_path / "eval")  # fmt: skip
    ckpt = save_ckpt(tmp_path / "cd.pth", model, "change_detector_vit_tiny_patch8_128",
                     "downstream_tasks.models_dense", "change", t, "minmax", names)  # fmt: skip
    city = ds.image_dirs[0]
    out = tmp_path / "change.tif"
    predict.cli(["--checkpoint", str(ckpt), "--input", str(city / "imgs_1_rect"), "--input2",
                 str(city / "imgs_2_rect"), "--output", str(out), "--overlap", str(t - stride),
                 "--blend", "cosine", "--no_progress"])  # fmt: skip
    ours, prof, _ = read(out)
    theirs, ref_prof, _ = read(tmp_path / "eval" / f"{ds.cities[0]}.tif")
    assert (prof["crs"], prof["transform"]) == (ref_prof["crs"], ref_prof["transform"])
    assert ours.shape == theirs.shape
    logits = dense_predict(model, ds[0]["image"][None], 2, t, stride, 4, "cosine")[0]
    decided = ((logits[1] - logits[0]).abs() > 1e-4).numpy()
    assert decided.mean() > 0.99
    np.testing.assert_array_equal(ours[0][decided], theirs[0][decided])


def test_change_detection_nodata_and_grid_check(tmp_path, capsys):
    t = 32
    model = models_dense.create_model(
        "change_detector_vit_tiny_patch8_128", img_size=t, drop_path_rate=0.0
    ).eval()
    ckpt = save_ckpt(tmp_path / "cd.pth", model, "change_detector_vit_tiny_patch8_128",
                     "downstream_tasks.models_dense", "change", t, "minmax",
                     ["no change", "change"])  # fmt: skip
    h, w = 40, 64
    d1, d2 = scene_dn(h, w, seed=1), scene_dn(h, w, seed=2)
    d2[:, :12, :20] = 0  # nodata in date 2 only
    d2[:, 30:, 10:50] = 0  # a nodata strip wider than a tile row's valid part
    one = write_stack(tmp_path / "d1.tif", d1, L1C_BANDS, CRS_UTM, ORIGIN)
    two = write_stack(tmp_path / "d2.tif", d2, L1C_BANDS, CRS_UTM, ORIGIN)
    out = tmp_path / "change.tif"
    s = predict.cli(["--checkpoint", str(ckpt), "--input", str(one), "--input2", str(two),
                     "--output", str(out), "--probabilities", "--no_progress"])  # fmt: skip
    cls, prof, _ = read(out)
    assert set(np.unique(cls)) <= {0, 1, 255}
    nodata = (d2 == 0).any(0)
    np.testing.assert_array_equal(cls[0] == 255, nodata)
    p, pprof, _ = read(tmp_path / "change_probabilities.tif")
    assert pprof["count"] == 1 and np.isnan(p[0][nodata]).all()
    clear = ~nodata & (np.abs(p[0] - 0.5) > F16_ATOL)  # float16 rounding at the decision
    np.testing.assert_array_equal(cls[0][clear], (p[0][clear] > 0.5).astype(np.uint8))
    assert s["tiles"] > 0
    # a second date on another grid is refused, naming both flags; exit code 2
    shifted = tmp_path / "d2_shifted.tif"
    write_stack(shifted, d2, L1C_BANDS, CRS_UTM, ORIGIN * Affine.translation(1, 0))
    with pytest.raises(SystemExit) as e:
        predict.cli(["--checkpoint", str(ckpt), "--input", str(one), "--input2", str(shifted),
                     "--output", str(tmp_path / "x.tif"), "--no_progress"])  # fmt: skip
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--input2" in err and "transform" in err and "error:" in err


def test_classifier_gives_a_per_tile_class_map(tmp_path):
    t = 32
    model = create_classifier("vit_tiny_patch8_128", num_classes=5, img_size=t).eval()
    torch.nn.init.normal_(model.head.weight, std=0.5)  # a head that separates the tiles
    ckpt = save_ckpt(tmp_path / "clf.pth", model, "vit_tiny_patch8_128", "models_vit_tensor",
                     "classify", t, "zscore_eurosat", list("abcde"), num_classes=5)  # fmt: skip
    h, w = 64, 96
    dn = scene_dn(h, w, seed=4)
    scene = write_stack(tmp_path / "s.tif", dn, L1C_BANDS, CRS_UTM, ORIGIN)
    lm = load_model(ckpt)
    assert lm.task == "classify" and lm.normalization == "zscore_eurosat"
    predict_scene(lm, scene, tmp_path / "c.tif", progress=False)
    cls = read(tmp_path / "c.tif")[0][0]
    x = get_normalization("zscore_eurosat")(
        torch.from_numpy(dn[[L1C_BANDS.index(b) for b in MODEL_BANDS]].astype(np.float32))
    )
    for y in range(0, h, t):
        for x0 in range(0, w, t):
            with torch.no_grad():
                want = int(model(x[None, :, y : y + t, x0 : x0 + t]).argmax())
            assert (cls[y : y + t, x0 : x0 + t] == want).all()


def test_embeddings_at_token_resolution(tmp_path):
    t = 32
    mae = create_mae("mae_vit_tiny_patch8_128", img_size=t).eval()
    ckpt = save_ckpt(tmp_path / "mae.pth", mae, "mae_vit_tiny_patch8_128", "models_mae_spectral",
                     "pretrain", t, "minmax")  # fmt: skip
    h, w = 68, 70  # not multiples of 8: the last 4 rows / 6 columns make no token
    dn = scene_dn(h, w, seed=6)
    dn[:, :8, :8] = 0  # one nodata token
    scene = write_stack(tmp_path / "s.tif", dn, L1C_BANDS, CRS_UTM, ORIGIN)
    lm = load_model(ckpt)  # task auto: a pretraining checkpoint embeds
    assert lm.task == "embed"
    out = tmp_path / "emb.tif"
    predict_scene(lm, scene, out, overlap=0, progress=False)
    emb, prof, tags = read(out)
    assert emb.shape == (192, h // 8, w // 8) and prof["transform"] == ORIGIN * Affine.scale(8)
    assert np.isnan(emb[:, 0, 0]).all() and not np.isnan(emb[:, 1:, 1:]).any()
    # tile (0, 32) px covers tokens rows 0..3, columns 4..7, and no other tile does (overlap 0)
    with rasterio.open(scene) as src:
        raw = torch.from_numpy(src.read().astype(np.float32))
    x = raw[[L1C_BANDS.index(b) for b in MODEL_BANDS]]
    valid = (x != 0).all(0)
    lo = torch.stack([b[valid].min() for b in x])[:, None, None]
    hi = torch.stack([b[valid].max() for b in x])[:, None, None]
    xn = ((x - lo) / (hi - lo + 1e-10)).masked_fill(~valid, 0)
    with torch.no_grad():
        f = mae.norm(mae.forward_features(xn[None, :, 0:32, 32:64]))  # (1, 4*4*4, 192)
    ref = f.unflatten(1, (4, 4, 4)).mean(1)[0].permute(2, 0, 1).numpy()
    np.testing.assert_allclose(emb[:, 0:4, 4:8], ref, atol=2e-3 * np.abs(ref).max(), rtol=2e-3)
    predict_scene(lm, scene, tmp_path / "all.tif", embed_groups="all", progress=False)
    assert read(tmp_path / "all.tif")[0].shape == (4 * 192, h // 8, w // 8)


def test_cli_help_and_wrong_task(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        predict.cli(["--help"])
    assert e.value.code == 0 and "--probabilities" in capsys.readouterr().out
    mae = create_mae("mae_vit_tiny_patch8_128", img_size=16)
    ckpt = save_ckpt(tmp_path / "m.pth", mae, "mae_vit_tiny_patch8_128", "models_mae_spectral",
                     "pretrain", 16, "minmax")  # fmt: skip
    with pytest.raises(ValueError, match="--task embed"):
        load_model(ckpt, task="segment")


# --------------------------------------------------------------------------------------------------
# memory: a 4096 x 4096 scene, measured in a subprocess
# --------------------------------------------------------------------------------------------------
#: bound on the peak RSS growth while predicting a 4096 x 4096 x 12 scene (float32 size 805 MB)
#: with a per-pixel model (I/O, tiling, blending and writing only; README states the model's share)
MEMORY_BOUND_MB = 200

_MEMORY_SCRIPT = """
import resource, sys, time
import numpy as np, rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
from test_predict import pixel_lm
from util.inference.predict import predict_scene
from util.data.sentinel2 import L1C_BANDS
n = 4096
path = {path!r}
with rasterio.open(path, "w", driver="GTiff", height=n, width=n, count=13, dtype="uint16",
                   crs=CRS.from_epsg(32632), transform=Affine(10, 0, 6e5, 0, -10, 5.1e6),
                   tiled=True, interleave="band") as dst:
    rows = (1000 + 37 * np.arange(n) % 997).astype("uint16")[None, None, :]
    for r in range(0, n, 512):
        block = np.broadcast_to(rows + np.arange(13, dtype="uint16")[:, None, None] * 50,
                                (13, 512, n))
        dst.write(np.ascontiguousarray(block), window=rasterio.windows.Window(0, r, n, 512))
    for i, b in enumerate(L1C_BANDS, 1):
        dst.set_band_description(i, b)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
s = predict_scene(pixel_lm(k=2, tile=128, cheap=True), path, {out!r}, overlap=32, batch_size=32,
                  progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("MEMORY", base, peak, s["tiles"], s["seconds"])
"""


@pytest.mark.slow
def test_memory_of_a_4096_scene_is_bounded(tmp_path):
    script = _MEMORY_SCRIPT.format(
        repo=str(REPO), tests=str(REPO / "tests"), path=str(tmp_path / "big.tif"),
        out=str(tmp_path / "big_out.tif"),
    )  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, env=env,
        cwd=REPO, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    base, peak, tiles, seconds = map(float, res.stdout.split("MEMORY")[1].split())
    assert tiles == 43 * 43
    assert peak - base < MEMORY_BOUND_MB, f"peak RSS grew by {peak - base:.0f} MB ({seconds:.1f} s)"
    with rasterio.open(tmp_path / "big_out.tif") as src:
        assert src.shape == (4096, 4096) and src.overviews(1) == [2, 4, 8, 16]
