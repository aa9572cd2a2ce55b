"""BigEarthNet v2 (reBEN): the official layout (nested folders, metadata.parquet, reference maps),
v1/v2 detection, errors and skip rules, and one epoch of pretraining and finetuning on it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import rasterio
import torch
from rasterio.transform import Affine

from util.data import IndexFileError, LabelError, MissingFileError, build_dataset
from util.data.bigearthnet import BigEarthNet
from util.data.bigearthnet_v2 import BigEarthNetV2, clc_to_19
from util.data.sentinel2 import BANDS
from util.data.subset import dataset_labels
from util.data.synthetic import generate

# The v2 19-class names, in this project's 19-class order, written out (independent of the code).
V2_NAMES = [
    "Urban fabric", "Industrial or commercial units", "Arable land", "Permanent crops", "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation", "Transitional woodland, shrub",
    "Beaches, dunes, sands", "Inland wetlands", "Coastal wetlands", "Inland waters",
    "Marine waters",
]  # fmt: skip
MODEL_ORDER = "B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12".split()
NATIVE_M = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B05": 20, "B06": 20, "B07": 20,
            "B8A": 20, "B11": 20, "B12": 20, "B01": 60, "B09": 60}  # fmt: skip
SPLIT_COLUMN = {"train": "train", "val": "validation", "test": "test"}
SIZE = 24


@pytest.fixture(scope="module")
def v2_root(tmp_path_factory) -> Path:
    return generate(
        "bigearthnet", tmp_path_factory.mktemp("ben2"), num=10, size=SIZE, ben_version=2
    )


def _metadata(root: Path, name: str = "metadata.parquet") -> pd.DataFrame:
    return pq.read_table(root / name).to_pandas()


def _tile(patch: str) -> str:
    return "_".join(patch.split("_")[:-2])


def _multi_hot(names) -> torch.Tensor:
    t = torch.zeros(19)
    t[[V2_NAMES.index(n) for n in names]] = 1.0
    return t


def test_v2_layout_labels_splits_bands(v2_root, tmp_path):
    meta = _metadata(v2_root)
    assert {"patch_id", "labels", "split", "country", "s1_name", "s2v1_name"} <= set(meta.columns)
    assert set(meta["split"]) == {"train", "validation", "test"}
    removed = _metadata(v2_root, "metadata_for_patches_with_snow_cloud_or_shadow.parquet")
    assert len(removed) == 2
    assert (removed.contains_seasonal_snow | removed.contains_cloud_or_shadow).all()
    seen = []
    for split, column in SPLIT_COLUMN.items():
        ds = build_dataset("bigearthnet", v2_root, split=split)
        assert isinstance(ds, BigEarthNetV2) and isinstance(ds, BigEarthNet)
        rows = meta[meta["split"] == column]
        assert ds.patches == list(rows["patch_id"])
        for i, labels in enumerate(rows["labels"]):
            s = ds[i]
            assert set(s) == {"image", "label"} and s["image"].shape == (12, SIZE, SIZE)
            assert torch.equal(s["label"], _multi_hot(labels))
        seen += ds.patches
    every = build_dataset("bigearthnet", v2_root, split="all")
    assert sorted(seen) == sorted(every.patches)
    hot = dataset_labels(every)  # what util.data.subset stratifies on
    names = meta.set_index("patch_id").loc[every.patches, "labels"]
    assert np.array_equal(hot, np.stack([_multi_hot(ls).numpy() > 0 for ls in names]))
    for patch in removed["patch_id"]:  # on disk, in no split
        assert (v2_root / "BigEarthNet-S2" / _tile(patch) / patch).is_dir() and patch not in seen
    # each band file at its native resolution; the image holds them in model order
    patch = meta["patch_id"][0]
    folder = v2_root / "BigEarthNet-S2" / _tile(patch) / patch
    for band in MODEL_ORDER:
        path = folder / f"{patch}_{band}.tif"
        with rasterio.open(path) as src:
            assert src.res == (NATIVE_M[band], NATIVE_M[band])
            assert src.shape == (SIZE * 10 // NATIVE_M[band],) * 2 and src.dtypes[0] == "uint16"
            profile, h, w = src.profile, src.height, src.width
        with rasterio.open(path, "w", **profile) as dst:  # plant the band's wavelength
            dst.write(np.full((1, h, w), BANDS[band].wavelength_nm, np.uint16))
    ds = build_dataset("bigearthnet", v2_root, split="all")
    image = ds[ds.patches.index(patch)]["image"]
    expected = torch.tensor([float(BANDS[b].wavelength_nm) for b in MODEL_ORDER])
    torch.testing.assert_close(image.mean((1, 2)), expected)


def test_v2_reference_maps(v2_root):
    ds = build_dataset("bigearthnet", v2_root, split="all", target="both")
    for i in range(len(ds)):
        s = ds[i]
        assert s["mask"].shape == s["image"].shape[-2:] and s["mask"].dtype == torch.int64
        present = set(s["mask"].unique().tolist()) - {255}
        assert present == set(s["label"].nonzero().ravel().tolist())  # labels = classes in map
    only = build_dataset("bigearthnet", v2_root, split="test", target="reference_map")
    assert set(only[0]) == {"image", "mask"} and not only.multilabel
    # CORINE level-3 codes -> 19 classes as the v2 description groups them; others ignored
    codes = np.array([111, 112, 121, 212, 241, 243, 321, 333, 323, 324, 412, 422, 512, 521, 523])
    assert clc_to_19(codes).tolist() == [0, 0, 1, 2, 3, 6, 11, 11, 12, 13, 15, 16, 17, 18, 18]
    assert clc_to_19(np.array([122, 142, 332, 334, 335, 423, 0, 999])).tolist() == [255] * 8
    with pytest.raises(ValueError, match="target"):
        build_dataset("bigearthnet", v2_root, target="segmentation")


def _write_band(path: Path, size: int, value: int, dtype: str = "int16") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", height=size, width=size, count=1, dtype=dtype,
                       crs="EPSG:32632", transform=Affine(10, 0, 0, 0, -10, 0)) as dst:  # fmt: skip
        dst.write(np.full((1, size, size), value, dtype))


def test_v2_tree_written_like_the_release(tmp_path):
    """A tree built here with pandas (as the release's metadata is), int16 bands, 'validation'."""
    patches = [
        ("S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57", "train",
         ["Urban fabric", "Transitional woodland, shrub"]),
        ("S2B_MSIL2A_20170615T102019_N9999_R122_T32TNS_45_23", "validation",
         ["Arable land", "Inland waters"]),
        ("S2A_MSIL2A_20170618T101021_N9999_R022_T32TQR_89_34", "test", ["Coniferous forest"]),
    ]  # fmt: skip
    for patch, _, _ in patches:
        for band in MODEL_ORDER:
            path = tmp_path / "BigEarthNet-S2" / _tile(patch) / patch / f"{patch}_{band}.tif"
            _write_band(path, 12 * 10 // NATIVE_M[band], 100 + MODEL_ORDER.index(band))
        ref = tmp_path / "Reference_Maps" / _tile(patch) / patch / f"{patch}_reference_map.tif"
        _write_band(ref, 12, 312, "uint16")
    frame = pd.DataFrame(
        {"patch_id": [p for p, _, _ in patches], "labels": [np.array(ls) for _, _, ls in patches],
         "split": [s for _, s, _ in patches], "country": ["Austria"] * 3,
         "s1_name": ["S1A_IW_GRDH_1SDV_20170613T165043_33UUP_61_39"] * 3,
         "s2v1_name": ["S2A_MSIL2A_20170613T101031_61_39", "S2B_MSIL2A_20170615T102019_1_2",
                       "S2A_MSIL2A_20170618T101021_3_4"],
         "contains_seasonal_snow": [False] * 3, "contains_cloud_or_shadow": [False] * 3}
    )  # fmt: skip
    frame.to_parquet(tmp_path / "metadata.parquet")
    for split, (patch, _, labels) in zip(("train", "val", "test"), patches):
        ds = build_dataset("bigearthnet_finetune", tmp_path, split=split, target="both")
        assert ds.patches == [patch]
        s = ds[0]
        assert torch.equal(s["label"], _multi_hot(labels))
        assert torch.equal(s["image"].mean((1, 2)), torch.arange(100.0, 112.0))
        assert (s["mask"] == 9).all()  # 312 Coniferous forest
    # a patch-id list (e.g. from util.data.subset) in v2 or v1 names, and a removed patch
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{patches[2][0]}\nS2A_MSIL2A_20170613T101031_61_39\n")
    assert build_dataset("bigearthnet", tmp_path, index=ids).patches == [
        patches[2][0],
        patches[0][0],
    ]
    excluded = frame.iloc[[0]].assign(contains_seasonal_snow=True)
    excluded.to_parquet(tmp_path / "metadata_for_patches_with_snow_cloud_or_shadow.parquet")
    with pytest.raises(IndexFileError, match="no BigEarthNet v2 patches"):
        build_dataset("bigearthnet", tmp_path, split="train", ben_version=2)
    with pytest.raises(IndexFileError, match="removed from v2"):
        build_dataset("bigearthnet", tmp_path, index=ids)


def test_layout_detection_and_errors(v2_root, tmp_path, capsys):
    v1 = generate("bigearthnet", tmp_path / "v1", num=6, size=SIZE, seed=1)
    ds1 = build_dataset("bigearthnet", v1, split="train")
    assert type(ds1) is BigEarthNet and ds1[0]["label"].shape == (19,)
    assert isinstance(BigEarthNet(v2_root, split="val"), BigEarthNetV2)
    with pytest.raises(IndexFileError, match="bigearthnet-train.csv"):  # forced v1 on a v2 tree
        build_dataset("bigearthnet", v2_root, ben_version=1)
    with pytest.raises(IndexFileError, match="metadata.parquet"):  # forced v2 on a v1 tree
        build_dataset("bigearthnet", v1, ben_version=2)
    with pytest.raises(ValueError, match="19-class labels only"):
        build_dataset("bigearthnet", v2_root, num_classes=43)
    with pytest.raises(ValueError, match="needs BigEarthNet v2"):
        build_dataset("bigearthnet", v1, target="reference_map")
    # neither layout: one line naming what both need
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(IndexFileError) as err:
        build_dataset("bigearthnet", empty)
    msg = str(err.value)
    assert "\n" not in msg and "v1: bigearthnet-{train,val,test}.csv" in msg
    assert "v2: metadata.parquet + BigEarthNet-S2/<tile>/<patch>/" in msg
    shutil.copy(v2_root / "metadata.parquet", empty)
    with pytest.raises(IndexFileError, match="found only metadata.parquet"):
        build_dataset("bigearthnet", empty)
    import main_finetune

    with pytest.raises(SystemExit) as exit_:
        main_finetune.cli(["--dataset_type", "bigearthnet", "--train_path", str(empty),
                           "--test_path", str(empty), "--device", "cpu", "--num_workers", "0",
                           "--output_dir", str(tmp_path / "out")])  # fmt: skip
    assert exit_.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln.lower()]
    assert len(lines) == 1 and "v1:" in lines[0] and "v2:" in lines[0], lines


def test_v2_errors_and_skip_rules(v2_root, tmp_path):
    root = Path(shutil.copytree(v2_root, tmp_path / "copy"))
    ds = build_dataset("bigearthnet", root, split="train")
    patch = ds.patches[1]
    (ds.patch_dir(patch) / f"{patch}_B8A.tif").unlink()
    with pytest.raises(MissingFileError, match=f"{patch}_B8A.tif"):
        ds[1]
    skip = build_dataset("bigearthnet", root, split="train", skip_bad_samples=True)
    assert torch.equal(skip[1]["image"], skip[2]["image"]) and skip.num_skipped == 1
    meta = _metadata(root)
    meta["labels"] = [["Sea and ocean"]] + list(meta["labels"][1:])  # 43-class name: not v2
    meta.to_parquet(root / "metadata.parquet")
    ds = build_dataset("bigearthnet", root, split="all")
    with pytest.raises(LabelError, match="unknown label name 'Sea and ocean'"):
        ds[ds.patches.index(meta.at[0, "patch_id"])]


@pytest.mark.filterwarnings("ignore:No positive samples found in target")  # 19 classes, 2 images
def test_pretrain_and_finetune_one_epoch_on_v2(v2_root, tmp_path):
    import main_finetune
    import main_pretrain

    common = ["--device", "cpu", "--num_workers", "0", "--input_size", "16", "--epochs", "1",
              "--batch_size", "4", "--print_freq", "1"]  # fmt: skip
    res = main_pretrain.cli(
        ["--model", "mae_vit_tiny_patch8_96", "--dataset_type", "bigearthnet", "--train_path",
         str(v2_root), "--output_dir", str(tmp_path / "pre"), "--vis_every", "0", *common]
    )  # fmt: skip
    ckpt = torch.load(res["checkpoint"], weights_only=True)
    assert ckpt["data"]["dataset"] == "bigearthnet" and ckpt["epoch"] == 0
    res = main_finetune.cli(
        ["--model", "vit_tiny_patch8_96", "--dataset_type", "bigearthnet_finetune",
         "--train_path", str(v2_root), "--test_path", str(v2_root), "--warmup_epochs", "0",
         "--output_dir", str(tmp_path / "ft"), *common]
    )  # fmt: skip
    assert len(res["last"]["ap_per_class"]) == 19 and 0.0 <= res["last"]["mAP_micro"] <= 100.0
