"""Dataset loaders read generator output in the official layouts: shapes, band order, labels, errors."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from torch.utils.data import DataLoader

from util.data import (
    BEN19_CLASSES,
    BEN43_CLASSES,
    DATASETS,
    BandCountError,
    CorruptFileError,
    IndexFileError,
    LabelError,
    MissingFileError,
    NonFiniteError,
    SampleError,
    build_dataset,
    collate,
    resolve_name,
)
from util.data.sentinel2 import BANDS, MODEL_BANDS
from util.data.synthetic import generate

# Band orders as the published files store them, written out literally (independent of the code).
L1C_ORDER = "B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12".split()
EUROSAT_ORDER = "B01 B02 B03 B04 B05 B06 B07 B08 B09 B10 B11 B12 B8A".split()
SEGMUNICH_ORDER = "B02 B03 B04 B05 B06 B07 B08 B8A B11 B12".split()
MODEL_ORDER = "B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12".split()
WAVELENGTH = {b: float(BANDS[b].wavelength_nm) for b in L1C_ORDER}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("synthetic")
    roots = {
        "fmow_sentinel": generate("fmow_sentinel", base / "fmow", num=8, size=40, seed=1),
        "bigearthnet": generate("bigearthnet", base / "ben", num=6, size=24, seed=2, stacked=True),
        "eurosat": generate(
            "eurosat", base / "eurosat", num=12, size=64, seed=3, complete_splits=False
        ),
        "oscd": generate("oscd", base / "oscd", num=3, size=40, seed=4),
        "segmunich": generate("segmunich", base / "segmunich", num=6, size=24, seed=5),
    }
    return roots


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite(path: Path, values: np.ndarray) -> None:
    """Overwrite a GeoTIFF's pixels keeping its profile (size, georeference)."""
    with rasterio.open(path) as src:
        profile = src.profile
    profile.update(count=values.shape[0], dtype=values.dtype.name)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values)


def _planted(path: Path, order: list[str]) -> None:
    """Each band of ``path`` becomes a constant: the wavelength of the band named by ``order``."""
    with rasterio.open(path) as src:
        h, w = src.height, src.width
    vals = np.stack([np.full((h, w), WAVELENGTH[b], np.uint16) for b in order])
    _rewrite(path, vals)


def _expected_model_values() -> torch.Tensor:
    return torch.tensor([WAVELENGTH[b] for b in MODEL_ORDER])


# ------------------------------------------------------------------------------------- basics


def test_registry_and_aliases():
    assert set(DATASETS) == {"fmow_sentinel", "bigearthnet", "eurosat", "oscd", "segmunich"}
    assert resolve_name("sentinel") == "fmow_sentinel"
    assert resolve_name("bigearthnet_finetune") == "bigearthnet"
    assert resolve_name("euro_sat") == "eurosat"
    assert resolve_name("EuroSAT") == "eurosat"
    with pytest.raises(KeyError, match="unknown dataset"):
        resolve_name("imagenet")
    assert tuple(MODEL_BANDS) == tuple(MODEL_ORDER)


def test_dataset_options_are_checked(data):
    """Each dataset takes the shared arguments plus its own options, and names them on a typo."""
    with pytest.raises(TypeError, match=r"EuroSAT got unknown options \['fill'\]; .* none"):
        build_dataset("eurosat", data["eurosat"], fill="band_mean")
    with pytest.raises(TypeError, match=r"'num_classes', 'resampling', 'stacked', 'target'\]"):
        build_dataset("bigearthnet", data["bigearthnet"], num_class=43)
    with pytest.raises(ValueError, match="segmunich needs split= or index="):
        DATASETS["segmunich"](data["segmunich"], split=None, fill="band_mean")
    for cls in DATASETS.values():  # the shared arguments stay visible in every signature
        assert {"split", "index", "transforms", "native_size"} <= set(
            inspect.signature(cls).parameters
        )


@pytest.mark.parametrize(
    "name,keys,img_ndim",
    [
        ("fmow_sentinel", {"image", "label"}, 3),
        ("bigearthnet", {"image", "label"}, 3),
        ("eurosat", {"image", "label"}, 3),
        ("oscd", {"image", "mask"}, 4),
        ("segmunich", {"image", "mask"}, 3),
    ],
)
def test_raw_samples(data, name, keys, img_ndim):
    ds = build_dataset(name, data[name])
    assert len(ds) > 0
    s = ds[0]
    assert set(s) == keys
    img = s["image"]
    assert img.dtype == torch.float32 and img.ndim == img_ndim and img.shape[-3] == 12
    assert img.min() >= 1  # raw DN, not normalised
    if "mask" in s:
        assert s["mask"].dtype == torch.int64 and s["mask"].shape == img.shape[-2:]
    if name == "bigearthnet":
        assert s["label"].dtype == torch.float32 and s["label"].shape == (19,)
    elif "label" in s:
        assert s["label"].dtype == torch.int64 and s["label"].ndim == 0
        assert 0 <= s["label"] < ds.num_classes
    for attr in ("num_classes", "multilabel", "default_normalization", "classes"):
        assert hasattr(ds, attr)


def test_eurosat_splits_and_paper_index(data):
    root = data["eurosat"]
    sizes = {sp: len(build_dataset("euro_sat", root, split=sp)) for sp in ("train", "val", "test")}
    assert sum(sizes.values()) == 12
    every = build_dataset("eurosat", root, split="all")
    assert len(every) == 12 and every.classes[every.labels[0]] == every.paths[0].parent.name
    paper = build_dataset("eurosat", root, index=root / "train_euro_result.txt")
    official = build_dataset("eurosat", root, split="train")
    assert sorted(p.name for p in paper.paths) == sorted(p.name for p in official.paths)
    a = paper[0]
    i = [p.name for p in official.paths].index(paper.paths[0].name)
    b = official[i]
    assert torch.equal(a["image"], b["image"]) and a["label"] == b["label"]
    # labels follow the class folder
    for path, label in zip(official.paths, official.labels):
        assert path.parent.name == official.classes[label]


def test_fmow_index_root_and_year_filter(data, tmp_path):
    root = data["fmow_sentinel"]
    ds = build_dataset("sentinel", root, split="train")
    assert all(p.is_file() for p in ds.paths)
    sizes = {tuple(ds[i]["image"].shape[1:]) for i in range(len(ds))}
    assert len(sizes) > 1  # varying image sizes
    import pandas as pd

    df = pd.read_csv(root / "fmow-sentinel" / "train.csv", index_col=0)
    df.loc[0, "timestamp"] = "1999-05-01T10:00:00Z"
    df.loc[1, "timestamp"] = "2021-01-01T10:00:00Z"
    df.to_csv(tmp_path / "idx.csv")
    kept = build_dataset("fmow_sentinel", root, index=tmp_path / "idx.csv")
    assert len(kept) == len(df) - 2
    allrows = build_dataset("fmow_sentinel", root, index=tmp_path / "idx.csv", years=None)
    assert len(allrows) == len(df)


def test_bigearthnet_native_bands_resampled(data):
    root = data["bigearthnet"]
    ds = build_dataset("bigearthnet", root, split="train", stacked=False)
    patch = ds.patches[0]
    folder = ds.patch_dir(patch)
    sizes = {}
    for b in ("B02", "B05", "B01"):
        with rasterio.open(folder / f"{patch}_{b}.tif") as src:
            sizes[b] = src.width
    assert sizes == {"B02": 24, "B05": 12, "B01": 4}  # 10 / 20 / 60 m native sizes
    img = ds[0]["image"]
    assert img.shape == (12, 24, 24)
    # the stacked (paper) file gives the same bands on the same grid, to within resampling error
    st = build_dataset("bigearthnet", root, split="train", stacked=True)[0]["image"]
    for i in (1, 2, 3, 7):  # 10 m bands are identical
        assert torch.equal(img[i], st[i])
    rel = (img - st).abs().mean() / st.mean()
    assert rel < 0.1


def test_bigearthnet_train_crop_from_native_grids(data):
    """The training crop on per-band folders resamples each band from its own grid: the 10 m
    bands equal the stacked file's path (same random window), the others stay close to it, and
    raw / eval samples still come on the 10 m grid."""
    from util.data.transforms import build_transforms

    root = data["bigearthnet"]
    tf = build_transforms("bigearthnet", True, 32, task="pretrain")
    folders = build_dataset("bigearthnet", root, split="train", stacked=False, transforms=tf)
    stacked = build_dataset("bigearthnet", root, split="train", stacked=True, transforms=tf)
    for seed in range(4):
        torch.manual_seed(seed)
        a = folders[0]["image"]
        torch.manual_seed(seed)
        b = stacked[0]["image"]
        assert a.shape == (12, 32, 32) and torch.isfinite(a).all()
        ten_m = [MODEL_ORDER.index(band) for band in ("B02", "B03", "B04", "B08")]
        assert torch.allclose(a[ten_m], b[ten_m], atol=1e-5)
        assert (a - b).abs().mean() < 0.1  # 20/60 m: one bicubic pass vs upsample + bicubic
    ev = build_transforms("bigearthnet", False, 32, task="pretrain")
    folders.transforms = ev
    assert folders[0]["image"].shape == (12, 32, 32)


def test_bigearthnet_index_formats(data):
    root = data["bigearthnet"]
    csv_ds = build_dataset("bigearthnet", root, split="val")
    txt_ds = build_dataset("bigearthnet_finetune", root, index=root / "bigearthnet_val.txt")
    assert csv_ds.patches == txt_ds.patches
    pre = build_dataset("bigearthnet", root, index=root / "bigearthnet_pretrain.csv")
    assert len(pre) == 6 and set(pre[0]) == {"image"}  # pretraining CSV: no labels by default
    pre_l = build_dataset(
        "bigearthnet", root, index=root / "bigearthnet_pretrain.csv", load_labels=True
    )
    assert set(pre_l[0]) == {"image", "label"}
    assert set(build_dataset("bigearthnet", root, split="val", load_labels=False)[0]) == {"image"}


def test_bigearthnet_19_vs_43(data, tmp_path):
    root = _copy(data["bigearthnet"], tmp_path / "ben")
    ds = build_dataset("bigearthnet", root, split="train")
    patch = ds.patches[0]
    meta = ds.patch_dir(patch) / f"{patch}_labels_metadata.json"
    names = [
        "Coniferous forest",
        "Water bodies",
        "Road and rail networks and associated land",
        "Rice fields",
    ]
    meta.write_text(json.dumps({"labels": names}))
    y19 = build_dataset("bigearthnet", root, split="train")[0]["label"]
    y43 = build_dataset("bigearthnet", root, split="train", num_classes=43)[0]["label"]
    assert y43.shape == (43,) and y19.shape == (19,)
    assert torch.nonzero(y43).flatten().tolist() == sorted(BEN43_CLASSES.index(n) for n in names)
    want19 = sorted(
        BEN19_CLASSES.index(n) for n in ("Coniferous forest", "Inland waters", "Arable land")
    )
    assert torch.nonzero(y19).flatten().tolist() == want19  # roads have no 19-class label


def test_oscd_pairs_masks_and_tiles(data, tmp_path):
    root = data["oscd"]
    ds = build_dataset("oscd", root, split="train")
    s = ds[0]
    from PIL import Image

    cm = np.asarray(Image.open(ds.label_files[0]).convert("L"))
    assert torch.equal(s["mask"], torch.from_numpy((cm != 0).astype(np.int64)))
    assert 0 < s["mask"].float().mean() < 0.5
    changed = s["mask"].bool()
    diff = (s["image"][0] - s["image"][1]).abs().mean(0)
    assert diff[changed].mean() > 2 * diff[~changed].mean()  # changes are visible in the spectra
    test = build_dataset("oscd", root, split="test")
    assert set(test.cities).isdisjoint(ds.cities)
    tiles = build_dataset("oscd", root, split="train", patch_size=16)
    h, w = s["mask"].shape
    covered = torch.zeros(h, w, dtype=torch.bool)
    for ci, r, c in tiles.tiles:
        if ci == 0:
            covered[r : r + 16, c : c + 16] = True
    assert covered.all()
    t = tiles[0]
    assert t["image"].shape == (2, 12, 16, 16) and t["mask"].shape == (16, 16)
    # the paper's merged copy (everything under <root>/<city>) reads the same
    merged = generate("oscd", tmp_path / "merged", num=3, size=40, seed=4, layout="merged")
    m = build_dataset("oscd", merged, split="train")
    assert m.cities == ds.cities and torch.equal(m[0]["image"], s["image"])


def test_oscd_without_split_files(data, tmp_path):
    """Cities from the label folders when train.txt / test.txt are missing (TorchGeo's fixture)."""
    root = _copy(data["oscd"], tmp_path / "oscd")
    with_files = {sp: build_dataset("oscd", root, split=sp) for sp in ("train", "test")}
    for f in root.rglob("*.txt"):
        if f.name in ("train.txt", "test.txt"):
            f.unlink()
    for split, ref in with_files.items():
        ds = build_dataset("oscd", root, split=split)
        assert ds.cities == sorted(ref.cities) and ds.label_files == [
            ref.label_files[ref.cities.index(c)] for c in ds.cities
        ]
        for i, city in enumerate(ds.cities):
            a, b = ds[i], ref[ref.cities.index(city)]
            assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["image"], b["image"])
    with pytest.raises(IndexFileError, match="OSCD's splits"):
        build_dataset("oscd", root, split="val")
    shutil.rmtree(root / "Onera Satellite Change Detection dataset - Test Labels")
    with pytest.raises(IndexFileError, match="no 'Onera .* - Test Labels' folder"):
        build_dataset("oscd", root, split="test")


def test_eurosat_every_split_holds_every_class(tmp_path):
    """TorchGeo's EuroSAT refuses a split lacking a class: the default count gives all 10 in each."""
    root = generate("eurosat", tmp_path / "e", size=8)  # the default --num
    for split in ("train", "val", "test"):
        lines = (root / f"eurosat-{split}.txt").read_text().split()
        assert {ln.rsplit("_", 1)[0] for ln in lines} == set(DATASETS["eurosat"].classes), split
    with pytest.raises(ValueError, match="use --num 30 or more"):
        generate("eurosat", tmp_path / "small", num=29, size=8)


def test_segmunich_code_remap(data, tmp_path):
    root = _copy(data["segmunich"], tmp_path / "seg")
    ds = build_dataset("segmunich", root, split="train")
    lab = root / "train" / "label" / f"{ds.stems[0]}.tif"
    with rasterio.open(lab) as src:
        h, w = src.height, src.width
    codes = np.array([0, 5, 11, 12, 13, 14, 21, 22, 23, 31, 32, 33, 41, 255], np.uint8)
    want = np.array([0, 5, 11, 12, 9, 10, 1, 2, 3, 4, 6, 7, 8, 255])
    grid = np.resize(codes, h * w).reshape(1, h, w)
    _rewrite(lab, grid)
    mask = build_dataset("segmunich", root, split="train")[0]["mask"]
    assert torch.equal(mask, torch.from_numpy(np.resize(want, h * w).reshape(h, w)))
    grid[0, 0, 0] = 7  # not a SegMunich code
    _rewrite(lab, grid)
    with pytest.raises(LabelError, match=r"unknown label codes \[7\]") as err:
        build_dataset("segmunich", root, split="train")[0]
    assert str(lab) in str(err.value)


# ---------------------------------------------------------------------------------- band order


def test_band_order_fmow(data, tmp_path):
    root = _copy(data["fmow_sentinel"], tmp_path / "f")
    ds = build_dataset("fmow_sentinel", root, split="train")
    _planted(ds.paths[0], L1C_ORDER)
    assert torch.equal(ds[0]["image"][:, 0, 0], _expected_model_values())


def test_band_order_eurosat_b8a_last(data, tmp_path):
    root = _copy(data["eurosat"], tmp_path / "e")
    ds = build_dataset("eurosat", root, split="train")
    _planted(ds.paths[0], EUROSAT_ORDER)
    got = ds[0]["image"][:, 0, 0]
    assert torch.equal(got, _expected_model_values())
    assert got[8] == 865 and got[10] == 1610  # B8A in slot 8, B11 (not cirrus) in slot 10
    # copies re-ordered to the L1C order are read with file_bands=
    _planted(ds.paths[0], L1C_ORDER)
    ds2 = build_dataset("eurosat", root, split="train", file_bands=L1C_ORDER)
    assert torch.equal(ds2[0]["image"][:, 0, 0], _expected_model_values())


def test_band_order_bigearthnet_per_band_and_stacked(data, tmp_path):
    root = _copy(data["bigearthnet"], tmp_path / "b")
    ds = build_dataset("bigearthnet", root, split="train", stacked=False)
    patch = ds.patches[0]
    folder = ds.patch_dir(patch)
    for b in MODEL_ORDER:
        _planted(folder / f"{patch}_{b}.tif", [b])
    assert torch.equal(ds[0]["image"][:, 5, 5], _expected_model_values())
    _planted(folder / f"{patch}.tif", MODEL_ORDER)
    st = build_dataset("bigearthnet", root, split="train", stacked=True)
    assert torch.equal(st[0]["image"][:, 0, 0], _expected_model_values())


def test_band_order_oscd(data, tmp_path):
    root = _copy(data["oscd"], tmp_path / "o")
    ds = build_dataset("oscd", root, split="train")
    for date in ("imgs_1_rect", "imgs_2_rect"):
        for b in L1C_ORDER:
            _planted(ds.image_dirs[0] / date / f"{b}.tif", [b])
    img = ds[0]["image"]
    assert torch.equal(img[0, :, 0, 0], _expected_model_values())
    assert torch.equal(img[1, :, 3, 3], _expected_model_values())


def test_band_order_segmunich_fill(data, tmp_path):
    root = _copy(data["segmunich"], tmp_path / "s")
    ds = build_dataset("segmunich", root, split="train")
    _planted(root / "train" / "img" / f"{ds.stems[0]}.tif", SEGMUNICH_ORDER)
    got = ds[0]["image"][:, 0, 0]
    want = _expected_model_values()
    want[0], want[9] = WAVELENGTH["B02"], WAVELENGTH["B8A"]  # neighbour fill
    assert torch.equal(got, want)
    mean = np.mean([WAVELENGTH[b] for b in SEGMUNICH_ORDER], dtype=np.float32)
    got = build_dataset("segmunich", root, split="train", fill="band_mean")[0]["image"][:, 0, 0]
    want[0] = want[9] = float(mean)
    assert torch.allclose(got, want)
    with pytest.raises(ValueError, match="fill"):
        build_dataset("segmunich", root, split="train", fill="zeros")


# -------------------------------------------------------------------------------------- errors


def _eurosat_copy(data, tmp_path):
    root = _copy(data["eurosat"], tmp_path / "e")
    return root, build_dataset("eurosat", root, split="train")


def test_missing_file(data, tmp_path):
    root, ds = _eurosat_copy(data, tmp_path)
    ds.paths[0].unlink()
    with pytest.raises(MissingFileError, match="file not found") as err:
        ds[0]
    assert err.value.path == str(ds.paths[0]) and isinstance(err.value, FileNotFoundError)


def test_truncated_and_non_tiff(data, tmp_path):
    root, ds = _eurosat_copy(data, tmp_path)
    p = ds.paths[0]
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptFileError, match=str(p.name)):
        ds[0]
    p.write_text("this is not a tiff")
    with pytest.raises(CorruptFileError, match="cannot read raster"):
        ds[0]


def test_wrong_band_count(data, tmp_path):
    root, ds = _eurosat_copy(data, tmp_path)
    _rewrite(ds.paths[0], np.ones((12, 16, 16), np.uint16))
    with pytest.raises(BandCountError, match="expected 13 bands, the file has 12") as err:
        ds[0]
    assert str(ds.paths[0]) in str(err.value)


def test_non_finite_pixels(data, tmp_path):
    root, _ = _eurosat_copy(data, tmp_path)
    # a float32 copy is accepted only when declared (EuroSAT is published as uint16)
    ds = build_dataset("eurosat", root, split="train", dtypes=("uint16", "float32"))
    vals = np.ones((13, 64, 64), np.float32)
    vals[3, 2, 2] = np.nan
    _rewrite(ds.paths[0], vals)
    with pytest.raises(NonFiniteError, match="NaN or Inf"):
        ds[0]
    vals[3, 2, 2] = np.inf
    _rewrite(ds.paths[0], vals)
    with pytest.raises(NonFiniteError):
        ds[0]


def test_unknown_label_name(data, tmp_path):
    root = _copy(data["bigearthnet"], tmp_path / "ben")
    ds = build_dataset("bigearthnet", root, split="train")
    patch = ds.patches[0]
    meta = ds.patch_dir(patch) / f"{patch}_labels_metadata.json"
    meta.write_text(json.dumps({"labels": ["Martian craters"]}))
    with pytest.raises(LabelError, match="unknown label name 'Martian craters'") as err:
        ds[0]
    assert err.value.path == str(meta)
    meta.write_text("{not json")
    with pytest.raises(LabelError, match="malformed"):
        ds[0]


def test_bad_index_files(data, tmp_path):
    root = data["eurosat"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(IndexFileError, match="empty") as err:
        build_dataset("eurosat", root, index=empty)
    assert err.value.path == str(empty)
    bad = tmp_path / "bad.txt"
    bad.write_text("tif/Forest/Forest_1.tif    1\ntif/Forest/Forest_2.tif\n")
    with pytest.raises(IndexFileError, match="line 2"):
        build_dataset("eurosat", root, index=bad)
    with pytest.raises(IndexFileError, match="not found"):
        build_dataset("eurosat", root, split="nosuchsplit")
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("a,b\n1,2\n")
    with pytest.raises(IndexFileError, match="missing columns"):
        build_dataset("fmow_sentinel", data["fmow_sentinel"], index=bad_csv)
    ben_bad = tmp_path / "ben.txt"
    ben_bad.write_text("hello world\n")
    with pytest.raises(IndexFileError, match="not a BigEarthNet patch id"):
        build_dataset("bigearthnet", data["bigearthnet"], index=ben_bad)


def test_skip_bad_samples_counts(data, tmp_path):
    root, ds = _eurosat_copy(data, tmp_path)
    ds.paths[1].write_text("garbage")
    ds.paths[2].unlink()
    skip = build_dataset("eurosat", root, split="train", skip_bad_samples=True)
    good3 = skip[3]
    s = skip[1]  # 1 and 2 are bad -> sample 3 substitutes
    assert torch.equal(s["image"], good3["image"])
    assert skip.num_skipped == 2 and skip.skipped == [str(ds.paths[1]), str(ds.paths[2])]
    with pytest.raises(SampleError):
        ds[1]  # without the option it raises


def test_collate_dataloader(data):
    from util.data.transforms import build_transforms

    ds = build_dataset("eurosat", data["eurosat"], transforms=build_transforms("eurosat", True, 32))
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate)))
    assert batch["image"].shape == (4, 12, 32, 32) and batch["label"].shape == (4,)


def test_single_band_files_errors(data, tmp_path):
    """Per-band layouts (fast Pillow path with rasterio fallback) raise the same named errors."""
    root = _copy(data["bigearthnet"], tmp_path / "ben")
    ds = build_dataset(
        "bigearthnet", root, split="train", stacked=False, dtypes=("uint16", "float32")
    )
    patch = ds.patches[0]
    band = ds.patch_dir(patch) / f"{patch}_B05.tif"
    vals = np.full((1, 12, 12), 500.0, np.float32)
    vals[0, 1, 1] = np.nan
    _rewrite(band, vals)
    with pytest.raises(NonFiniteError, match="B05"):
        ds[0]
    raw = (ds.patch_dir(patch) / f"{patch}_B06.tif").read_bytes()
    band.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptFileError, match="B05"):
        ds[0]
    from PIL import ImageFile

    monkey = pytest.MonkeyPatch()
    monkey.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # set by some other library
    try:
        with pytest.raises(CorruptFileError, match="B05"):  # still no zero-filled band
            ds[0]
    finally:
        monkey.undo()
    band.unlink()
    with pytest.raises(MissingFileError, match="B05"):
        ds[0]


def test_oscd_band_size_mismatch(data, tmp_path):
    from util.data import ShapeMismatchError

    root = _copy(data["oscd"], tmp_path / "o")
    ds = build_dataset("oscd", root, split="train")
    b05 = ds.image_dirs[0] / "imgs_1_rect" / "B05.tif"
    with rasterio.open(b05) as src:
        profile = src.profile
    profile.update(width=profile["width"] // 2, height=profile["height"] // 2)
    with rasterio.open(b05, "w", **profile) as dst:
        dst.write(np.ones((1, profile["height"], profile["width"]), np.uint16))
    with pytest.raises(ShapeMismatchError, match="B05"):
        ds[0]


def test_scan_cli_lists_bad_files(data, tmp_path, capsys):
    from util.data.check import main

    root, ds = _eurosat_copy(data, tmp_path)
    assert main(["eurosat", str(root), "--split", "train"]) == 0
    ds.paths[0].write_text("garbage")
    assert main(["euro_sat", str(root), "--split", "train"]) == 1
    out = capsys.readouterr().out
    assert f"bad sample 0: {ds.paths[0]}" in out and "1 bad" in out


def test_ben_43_to_19_table():
    from util.data import BEN43_TO_19

    dropped = {
        "Road and rail networks and associated land", "Port areas", "Airports",
        "Mineral extraction sites", "Dump sites", "Construction sites", "Green urban areas",
        "Sport and leisure facilities", "Bare rock", "Burnt areas", "Intertidal flats",
    }  # fmt: skip
    assert set(BEN43_CLASSES) - set(BEN43_TO_19) == dropped
    assert BEN43_TO_19["Sea and ocean"] == BEN19_CLASSES.index("Marine waters")
    assert BEN43_TO_19["Pastures"] == 4 and BEN43_TO_19["Rice fields"] == 2
    assert len(BEN19_CLASSES) == 19 and len(BEN43_CLASSES) == 43


def test_band_registry():
    from util.data.sentinel2 import band_indices, canonical_band, to_model_order

    assert canonical_band("b2") == "B02" and canonical_band("B08A") == "B8A"
    with pytest.raises(KeyError, match="unknown Sentinel-2 band"):
        canonical_band("B13")
    assert band_indices(EUROSAT_ORDER) == [0, 1, 2, 3, 4, 5, 6, 7, 12, 8, 10, 11]
    with pytest.raises(KeyError, match="B01"):
        band_indices(SEGMUNICH_ORDER)
    arr = np.arange(13)[:, None] * np.ones((13, 2))
    out = to_model_order(arr, EUROSAT_ORDER)
    assert out[:, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 12, 8, 10, 11]
    with pytest.raises(ValueError, match="13 band names"):
        to_model_order(arr[:12], EUROSAT_ORDER)


def test_bigearthnet_csv_with_header(data, tmp_path):
    root = data["bigearthnet"]
    rows = (root / "bigearthnet-val.csv").read_text()
    idx = tmp_path / "val.csv"
    idx.write_text("s2_name,s1_name\n" + rows)
    ds = build_dataset("bigearthnet", root, index=idx)
    assert ds.patches == build_dataset("bigearthnet", root, split="val").patches


def test_oscd_prefixed_band_names(data, tmp_path):
    root = _copy(data["oscd"], tmp_path / "o")
    ds = build_dataset("oscd", root, split="train")
    ref = ds[0]["image"]
    folder = ds.image_dirs[0] / "imgs_1_rect"
    for f in folder.glob("B*.tif"):
        f.rename(folder / f"S2A_OPER_MSI_L1C_{f.name}")
    assert torch.equal(ds[0]["image"], ref)
    (folder / "S2A_OPER_MSI_L1C_B8A.tif").unlink()
    with pytest.raises(MissingFileError, match="B8A.tif"):
        ds[0]


@pytest.mark.parametrize("dtype", ["int16", "uint16", "int32", "float32", "uint8", "float64"])
@pytest.mark.parametrize("compress", [None, "lzw", "deflate"])
def test_band_file_fast_path_matches_rasterio(tmp_path, dtype, compress):
    from rasterio.transform import Affine

    from util.data.raster import read_band_files, read_raster

    a = (np.arange(30 * 20).reshape(1, 30, 20) % 200 - 50 * dtype.startswith("int")).astype(dtype)
    p = tmp_path / "b.tif"
    kw = {"compress": compress} if compress else {}
    profile = dict(driver="GTiff", height=30, width=20, count=1, dtype=dtype, crs="EPSG:32632")
    with rasterio.open(p, "w", transform=Affine(10, 0, 0, 0, -10, 0), **profile, **kw) as dst:
        dst.write(a)
    got = read_band_files([p, p])
    assert got.dtype == torch.float32 and got.shape == (2, 30, 20)
    assert np.array_equal(got[0].numpy(), read_raster(p)[0]) and np.array_equal(
        got[1].numpy(), a[0]
    )


@pytest.mark.parametrize("interleave", ["pixel", "band"])
@pytest.mark.parametrize("endian", ["little", "big"])
@pytest.mark.parametrize("layout", ["strips", "tiled", "deflate"])
def test_plain_tiff_reader_matches_rasterio(tmp_path, interleave, endian, layout):
    """Uncompressed striped TIFFs are read directly; tiled / compressed ones go to rasterio."""
    from rasterio.transform import Affine

    from util.data.raster import _read_plain_tiff, read_raster

    a = np.random.default_rng(0).integers(0, 60000, (3, 37, 29)).astype(np.uint16)
    p = tmp_path / "m.tif"
    kw = {"interleave": interleave, "endianness": endian.upper(), "blockysize": 5}
    if layout == "tiled":
        kw.update(tiled=True, blockxsize=16, blockysize=16)
    elif layout == "deflate":
        kw["compress"] = "deflate"
    profile = dict(driver="GTiff", height=37, width=29, count=3, dtype="uint16", crs="EPSG:32632")
    with rasterio.open(p, "w", transform=Affine(10, 0, 0, 0, -10, 0), **profile, **kw) as dst:
        dst.write(a)
    direct = _read_plain_tiff(str(p))
    if layout == "strips":
        assert direct is not None and np.array_equal(direct, a)
    else:
        assert direct is None
    got = read_raster(p, expected_bands=3, indexes=[2, 0])
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.flags.writeable
    assert np.array_equal(got, a[[2, 0]].astype(np.float32))
    with pytest.raises(BandCountError, match="expected 12 bands, the file has 3"):
        read_raster(p, expected_bands=12)
    for bad in (b"II*\x00" + b"\xff" * 12, b"II*\x00\x08\x00\x00\x00\x01\x00" + b"\x00" * 12):
        p.write_bytes(bad)  # a TIFF header with a directory out of range / without image tags
        assert _read_plain_tiff(str(p)) is None
        with pytest.raises(CorruptFileError, match="m.tif"):
            read_raster(p)
