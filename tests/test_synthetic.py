"""Synthetic generator: official layouts, real GeoTIFFs, determinism, learnable labels, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from util.data import BEN43_CLASSES, EUROSAT_CLASSES, build_dataset
from util.data.synthetic import COVERS, generate, main


def _read(path):
    with rasterio.open(path) as src:
        return src.read(), src.crs, src.transform, src.dtypes[0]


def test_bigearthnet_layout_native_resolutions_and_labels(tmp_path):
    root = generate("bigearthnet", tmp_path, num=4, size=12, seed=0)
    patches = sorted(p for p in (root / "BigEarthNet-v1.0").iterdir())
    assert len(patches) == 4
    folder = patches[0]
    names = {p.name for p in folder.iterdir()}
    bands = "B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12".split()
    assert names == {f"{folder.name}_{b}.tif" for b in bands} | {
        f"{folder.name}_labels_metadata.json"
    }
    for band, side, res in (("B02", 12, 10), ("B8A", 6, 20), ("B09", 2, 60)):
        arr, crs, transform, dtype = _read(folder / f"{folder.name}_{band}.tif")
        assert arr.shape == (1, side, side) and dtype == "uint16"
        assert crs.to_epsg() == 32632 and transform.a == res and transform.e == -res
    labels = json.loads((folder / f"{folder.name}_labels_metadata.json").read_text())["labels"]
    assert labels and all(n in BEN43_CLASSES for n in labels)
    rows = (root / "bigearthnet-train.csv").read_text().splitlines()
    assert all(len(r.split(",")) == 2 and r.split(",")[1].startswith("S1") for r in rows)
    assert not (root / "bigearthnet_val.txt").read_text().endswith("\n")  # like the paper's lists
    with pytest.raises(ValueError, match="multiple of 6"):
        generate("bigearthnet", tmp_path / "x", num=1, size=10)


def test_layout_files(tmp_path):
    e = generate("eurosat", tmp_path / "e", num=10, size=8, complete_splits=False)
    tifs = list((e / "ds/images/remote_sensing/otherDatasets/sentinel_2/tif").rglob("*.tif"))
    assert len(tifs) == 10 and all(t.parent.name in EUROSAT_CLASSES for t in tifs)
    assert _read(tifs[0])[0].shape == (13, 8, 8)
    assert all(ln.endswith(".jpg") for ln in (e / "eurosat-train.txt").read_text().split())
    f = generate("fmow_sentinel", tmp_path / "f", num=6, size=(20, 30))
    header = (f / "fmow-sentinel" / "train.csv").read_text().splitlines()[0]
    assert header == ",category,location_id,image_id,timestamp,polygon,image_path"
    shapes = {_read(p)[0].shape for p in (f / "fmow-sentinel").rglob("*.tif")}
    assert all(s[0] == 13 and 20 <= s[1] <= 30 and 20 <= s[2] <= 30 for s in shapes)
    o = generate("oscd", tmp_path / "o", num=2, size=16)
    images = o / "Onera Satellite Change Detection dataset - Images"
    (line,) = (images / "train.txt").read_text().splitlines()
    city = line.split(",")[0]
    assert len(list((images / city / "imgs_1_rect").glob("B*.tif"))) == 13
    assert list(o.glob("*Labels/*/cm/cm.png"))
    s = generate("segmunich", tmp_path / "s", num=5, size=8)
    stems = (s / "dataset" / "train.txt").read_text().split()
    img, *_ = _read(s / "train" / "img" / f"{stems[0]}.tif")
    lab, _, _, dtype = _read(s / "train" / "label" / f"{stems[0]}.tif")
    assert img.shape == (10, 8, 8) and lab.shape == (1, 8, 8) and dtype == "uint8"
    assert set(np.unique(lab)) <= {0, 5, 11, 12, 13, 14, 21, 22, 23, 31, 32, 33, 41}


def test_deterministic_by_seed(tmp_path):
    tiny = {"num": 4, "size": 8, "complete_splits": False}
    a = generate("eurosat", tmp_path / "a", seed=3, **tiny)
    b = generate("eurosat", tmp_path / "b", seed=3, **tiny)
    c = generate("eurosat", tmp_path / "c", seed=4, **tiny)
    files = sorted(p.relative_to(a) for p in a.rglob("*.tif"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.tif"))
    for rel in files:
        assert np.array_equal(_read(a / rel)[0], _read(b / rel)[0])
    other = sorted(c.rglob("*.tif"))
    assert not all(
        p.name == q.name and np.array_equal(_read(p)[0], _read(q)[0])
        for p, q in zip(sorted(a.rglob("*.tif")), other)
    )


def test_spectra_are_plausible():
    veg, water, soil, snow = (
        np.array(COVERS[k]) for k in ("grassland", "water", "bare_soil", "snow")
    )
    b = {n: i for i, n in enumerate("B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12".split())}
    assert veg[b["B08"]] > 3 * veg[b["B04"]]  # red edge / NIR plateau
    assert water[b["B08"]] < water[b["B03"]] and water[b["B11"]] < 0.01  # NIR/SWIR absorption
    assert soil[b["B11"]] > soil[b["B04"]] > soil[b["B02"]]  # rising into SWIR
    assert snow[b["B03"]] > 0.8 and snow[b["B11"]] < 0.2
    assert all(COVERS[k][b["B10"]] < 0.01 for k in ("grassland", "water", "bare_soil"))


def test_eurosat_is_learnable(tmp_path):
    """Dominant-cover labels are learnable: a linear model on mean spectra beats chance clearly."""
    from sklearn.linear_model import LogisticRegression

    root = generate("eurosat", tmp_path, num=200, size=12, seed=0)
    train = build_dataset("eurosat", root, split="train", native_size=12)
    test = build_dataset("eurosat", root, split="test", native_size=12)

    def xy(ds):
        x = np.stack([ds[i]["image"].mean((1, 2)).numpy() / 1000 for i in range(len(ds))])
        return x, np.array(ds.labels)

    clf = LogisticRegression(max_iter=3000).fit(*xy(train))
    assert clf.score(*xy(test)) > 0.5  # chance = 0.1


def test_cli(tmp_path, capsys):
    main(["euro_sat", str(tmp_path / "e"), "--num", "30", "--size", "8", "--seed", "1"])
    assert "wrote synthetic" in capsys.readouterr().out
    assert len(list((tmp_path / "e").rglob("*.tif"))) == 30
    with pytest.raises(SystemExit):  # too few for every split to hold every class
        main(["euro_sat", str(tmp_path / "e3"), "--num", "3", "--size", "8"])
    assert "use --num 30 or more" in capsys.readouterr().err
    main(["bigearthnet", str(tmp_path / "b"), "--num", "3", "--size", "6", "--ben_version", "2"])
    assert (tmp_path / "b" / "metadata.parquet").is_file()
    assert len(list((tmp_path / "b" / "BigEarthNet-S2").glob("*/*/*_B02.tif"))) == 5  # 2 removed
    with pytest.raises(SystemExit):
        main(["imagenet", str(tmp_path / "x")])


def test_segmentation_classes_follow_the_spectra(tmp_path):
    root = generate("segmunich", tmp_path, num=10, size=24, seed=0)
    ds = build_dataset("segmunich", root, split="train")
    nir, red, classes = [], [], []
    for i in range(len(ds)):
        s = ds[i]
        nir.append(s["image"][7].flatten())  # B08
        red.append(s["image"][3].flatten())  # B04
        classes.append(s["mask"].flatten())
    nir, red, classes = (np.concatenate([t.numpy() for t in x]) for x in (nir, red, classes))
    water, forest = classes == 5, classes == 4  # codes 5 (water) and 31 (forests)
    assert water.sum() > 20 and forest.sum() > 20
    ndvi = (nir - red) / (nir + red)
    assert np.median(ndvi[forest]) > 0.5 > 0.0 > np.median(ndvi[water])
