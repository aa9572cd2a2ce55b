"""downstream_tasks/train.py: splits and leakage guard, training samples, class weights, DDP
evaluation, learnability on synthetic OSCD / SegMunich, torchrun end to end from a paper-format
checkpoint, exact resume, --eval reproducing the logged test metrics."""

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from downstream_tasks import train as dense_train
from downstream_tasks.dense_data import (
    LeakageError,
    SceneCrops,
    build_split_dataset,
    check_disjoint,
    class_weights,
    make_splits,
)
from util.data.synthetic import generate
from util.data.transforms import build_transforms

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = Path(__file__).parent / "golden" / "state_dict_manifests.json"
TINY = "--model_kwargs reduction=mean channels=64 --input_size 32"


@pytest.fixture(scope="module")
def oscd_root(tmp_path_factory):
    # 8 cities of ~51..80 px: 5 train (-> 4 + 1 val), 3 test
    return generate("oscd", tmp_path_factory.mktemp("oscd"), num=8, size=64, seed=0)


@pytest.fixture(scope="module")
def seg_root(tmp_path_factory):
    # 40 images of 32 px: 32 train (-> 29 + 3 val), 8 test. Four co-occurring covers: with all 13
    # drawn 3-5 per image, per-image min-max leaves too little to learn in ~70 steps
    covers = ("water", "forest", "built_up", "annual_crop")
    return generate("segmunich", tmp_path_factory.mktemp("seg"), num=40, size=32, covers=covers)


def _args(out, root, task, extra=""):
    parser = argparse.ArgumentParser(parents=[dense_train.get_args_parser()])
    argv = (
        f"--task {task} --data_root {root} --output_dir {out} --device cpu --num_workers 0 "
        f"--warmup_epochs 0 --vis_every 0 --print_freq 1000 {TINY} {extra}"
    )
    return parser.parse_args(shlex.split(argv))


def _nan_close(a, b, rel=1e-9):
    for k, v in a.items():
        if isinstance(v, float) and math.isnan(v):
            assert math.isnan(b[k]), k
        elif isinstance(v, float):
            assert b[k] == pytest.approx(v, rel=rel, abs=1e-9), k
        else:
            assert b[k] == v, k


def _tiny_paper_checkpoint(path: Path) -> Path:
    """SpectralGPT+.pth key names and layout (paper's separate q/k/v, decoder, 'model' entry),
    tiny-fied: width 768 -> 192, MLP 3072 -> 768, decoder 512 -> 128, 4 + 2 blocks."""
    manifest = json.loads(MANIFESTS.read_text())["models_mae_spectral.mae_vit_base_patch8_128"]
    dims = {768: 192, 3072: 768, 512: 128, 2048: 512}
    g = torch.Generator().manual_seed(0)
    sd = {}
    for key, shape in manifest.items():
        m = re.match(r"(decoder_)?blocks\.(\d+)\.", key)
        if m and int(m.group(2)) >= (2 if m.group(1) else 4):
            continue
        sd[key] = 0.02 * torch.randn([dims.get(s, s) for s in shape], generator=g)
    assert (
        "blocks.0.attn.q.weight" in sd and "pos_embed_spatial" in sd and "decoder_pred.weight" in sd
    )
    torch.save({"model": sd, "epoch": 99, "args": argparse.Namespace(model="mae")}, path)
    return path


# --------------------------------------------------------------------------------------------
# splits, leakage, samples, weights
# --------------------------------------------------------------------------------------------
def test_splits_carved_from_train_and_leakage_guard(oscd_root, seg_root, tmp_path):
    s = make_splits("oscd", oscd_root, val_count=2, seed=1)
    assert len(s["val"]) == 2 and len(s["train"]) == 3 and len(s["test"]) == 3
    assert not set(s["val"]) & set(s["train"]) and not set(s["val"]) & set(s["test"])
    assert make_splits("oscd", oscd_root, val_count=2, seed=1) == s  # seeded
    bad = tmp_path / "val.txt"
    bad.write_text(s["test"][0] + "\n")
    with pytest.raises(ValueError, match="never from test"):
        make_splits("oscd", oscd_root, val_split=bad)
    good = tmp_path / "val2.txt"
    good.write_text(",".join(s["train"][:2]) + "\n")
    assert make_splits("oscd", oscd_root, val_split=good)["val"] == s["train"][:2]

    g = make_splits("segmunich", seg_root, val_fraction=0.1, seed=0)
    assert len(g["val"]) == 3 and len(g["train"]) == 29 and len(g["test"]) == 8

    files = {}
    for split in ("train", "val"):
        files[split] = tmp_path / f"{split}.lst"
        files[split].write_text("\n".join(s[split]) + "\n")
    train = build_split_dataset("oscd", oscd_root, "train", files["train"])
    val = build_split_dataset("oscd", oscd_root, "val", files["val"])
    test = build_split_dataset("oscd", oscd_root, "test", None)
    check_disjoint(train=train, val=val, test=test)
    with pytest.raises(LeakageError, match="val and test"):
        check_disjoint(train=train, val=test, test=test)


def test_training_crops_share_one_geometric_transform(oscd_root, tmp_path):
    """Both dates and the mask get the same crop / flip / rot90 draw."""
    names = tmp_path / "one.txt"
    names.write_text(make_splits("oscd", oscd_root, val_count=0)["train"][0] + "\n")
    ds = build_split_dataset("oscd", oscd_root, "train", names)
    raw = ds[0]
    a = raw["image"][0]
    mask = (a[3] > a[3].median()).long()  # a mask that is a function of date 1's B04

    class Same(torch.utils.data.Dataset):  # date 2 = date 1, mask from the image
        transforms = None

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return {"image": torch.stack([a, a]), "mask": mask}

        def scene_info(self, i):
            return {"height": a.shape[-2], "width": a.shape[-1]}

    crops = SceneCrops(Same(), build_transforms("oscd", True, 32), 32, repeats=3)
    assert len(crops) == max(1, round(3 * a.shape[-2] * a.shape[-1] / 32**2))
    seen = set()
    for i in range(12):
        s = crops[i % len(crops)]
        assert s["image"].shape == (2, 12, 32, 32) and s["mask"].shape == (32, 32)
        assert torch.equal(s["image"][0], s["image"][1])
        # B04 after per-scene min-max is monotone in the raw B04: the mask follows the image
        thr = (a[3].median() - a[3].min()) / (a[3].max() - a[3].min() + 1e-10)
        assert torch.equal(s["mask"], (s["image"][0, 3] > thr + 1e-6).long())
        seen.add(s["image"][0, 3, 0, 0].item())
    assert len(seen) > 3  # different crops / orientations


def test_class_weights():
    counts = torch.tensor([90.0, 10.0])
    w = class_weights("paper", counts, "change")
    torch.testing.assert_close(w, torch.tensor([20 * 0.1, 2 * 0.9]))  # spec §7.1
    torch.testing.assert_close(
        class_weights("inverse_freq", counts, "change"), torch.tensor([100 / 180, 100 / 20])
    )
    assert class_weights("paper", torch.tensor([5.0, 3.0, 2.0]), "segment") is None
    assert class_weights("none", counts, "change") is None
    w3 = class_weights("inverse_freq", torch.tensor([5.0, 0.0, 5.0]), "segment")
    assert w3[1] == 0 and w3[0] == w3[2]


# --------------------------------------------------------------------------------------------
# learnability (thresholds from seen runs, with margin)
# --------------------------------------------------------------------------------------------
def _constant_change_f1(ds):
    changed = sum(int(ds[i]["mask"].sum()) for i in range(len(ds)))
    total = sum(ds[i]["mask"].numel() for i in range(len(ds)))
    p = changed / total
    return 100 * 2 * p / (1 + p)  # predicting "change" everywhere (the best constant for F1)


@pytest.mark.slow
def test_learnability_oscd(oscd_root, tmp_path):
    res = dense_train.main(
        _args(
            tmp_path,
            oscd_root,
            "oscd",
            "--model change_detector_vit_tiny_patch8_128 --batch_size 8 --epochs 6 "
            "--crop_repeats 4 --lr 2e-3 --drop_path 0 --layer_decay 1 --weight_decay 0.01 "
            "--val_cities 1 --class_weights inverse_freq",
        )  # fmt: skip
    )
    test = build_split_dataset("oscd", oscd_root, "test", None)
    constant = _constant_change_f1(test)
    assert constant < 25
    print(f"oscd test f1_change {res['test']['f1_change']:.1f} (constant predictor {constant:.1f})")
    # seen: 57.7 vs 17.7 (48 steps); 48.0 with milder settings
    assert res["test"]["f1_change"] > constant + 15, (res["test"], constant)
    records = [json.loads(s) for s in (tmp_path / "log.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["type"] in ("eval", "test")]
    # the test split is evaluated once, at the end, with the checkpoint chosen on val
    assert [r["split"] for r in evals] == ["val"] * 6 + ["test"]
    assert evals[-1]["epoch"] == res["best"]["epoch"]
    assert {"f1_change", "iou_change", "precision_change", "recall_change", "oa", "miou"} <= set(
        evals[-1]
    )


@pytest.mark.slow
def test_learnability_segmunich(seg_root, tmp_path):
    res = dense_train.main(
        _args(
            tmp_path,
            seg_root,
            "segmunich",
            "--model segmenter_vit_tiny_patch8_128 --batch_size 8 --epochs 5 --crop_repeats 4 "
            "--lr 3e-3 --drop_path 0 --layer_decay 1 --weight_decay 0.01 --vis_scenes 0",
        )  # fmt: skip
    )
    test = build_split_dataset("segmunich", seg_root, "test", None)
    masks = torch.cat([test[i]["mask"].flatten() for i in range(len(test))])
    counts = torch.bincount(masks[masks != 255], minlength=13)
    majority_oa = 100 * float(counts.max() / counts.sum())
    majority_miou = majority_oa / int((counts > 0).sum())  # IoU = frequency, 0 elsewhere
    print(f"segmunich test miou {res['test']['miou']:.1f} (majority {majority_miou:.1f})")
    # seen: mIoU 23.1 vs 9.4 (and 23.1 vs 7.6 on another draw), OA 49.2 (4 classes present; 9 absent, left out of mIoU)
    assert res["test"]["miou"] > majority_miou + 8, (res["test"], majority_miou)
    assert res["test"]["oa"] > majority_oa + 8, (res["test"], majority_oa)
    assert len(res["test"]["absent_classes"]) == 9


# --------------------------------------------------------------------------------------------
# end to end under torchrun, --eval, resume
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("task", ["oscd", "segmunich"])
def test_torchrun_from_paper_checkpoint_then_eval(task, oscd_root, seg_root, tmp_path):
    root = oscd_root if task == "oscd" else seg_root
    model = "change_detector" if task == "oscd" else "segmenter"
    # OSCD under FSDP2: 3 test cities of different sizes on 2 ranks, so the ranks make different
    # numbers of (collective) forwards and evaluation must pad them; SegMunich under DDP
    strategy = "fsdp" if task == "oscd" else "ddp"
    ckpt = _tiny_paper_checkpoint(tmp_path / "SpectralGPT+.pth")
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO / "downstream_tasks" / "train.py"),
    ]  # fmt: skip
    argv = shlex.split(
        f"--task {task} --data_root {root} --output_dir {out} --device cpu --num_workers 0 "
        f"--model {model}_vit_tiny_patch8_128 {TINY} --finetune {ckpt} --batch_size 4 "
        f"--epochs 2 --max_steps_per_epoch 2 --warmup_epochs 0 --eval_protocol both "
        f"--vis_scenes 1 --print_freq 1 --strategy {strategy}"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # the script must find the repo on its own
    proc = subprocess.run(
        cmd + argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test (checkpoint of epoch" in proc.stdout
    records = [json.loads(s) for s in (out / "log.jsonl").read_text().splitlines()]
    test = [r for r in records if r["type"] == "test"]
    assert len(test) == 1 and [r["split"] for r in records if r["type"] == "eval"] == ["val"] * 2
    assert "paper_miou" in test[0] and test[0]["scenes"] == (3 if task == "oscd" else 8)
    assert (out / "splits" / "val.txt").is_file() and list((out / "vis").glob("*.png"))
    best = torch.load(out / "checkpoint-best.pth", weights_only=True)
    assert best["meta"]["task"] == ("change" if task == "oscd" else "segment")
    assert best["meta"]["model_module"] == "downstream_tasks.models_dense"
    assert best["meta"]["model_kwargs"]["img_size"] == 32 and best["test_metrics"]
    last = torch.load(out / "checkpoint-last.pth", weights_only=True)
    assert len(last["rng"]) == 2 and last["args"]["world_size"] == 2

    # --eval of the best checkpoint in one process reproduces the test metrics logged by the
    # 2-process run (scenes sharded without padding, one confusion matrix synced by torchmetrics)
    pred = tmp_path / "pred"
    parser = argparse.ArgumentParser(parents=[dense_train.get_args_parser()])
    eval_args = parser.parse_args(
        shlex.split(
            f"--task {task} --data_root {root} --output_dir {tmp_path / 'eval'} --device cpu "
            f"--num_workers 0 --eval --resume {out / 'checkpoint-best.pth'} "
            f"--eval_protocol both --save_predictions {pred}"
        )
    )  # model, its options and input size come from the checkpoint's meta
    res = dense_train.main(eval_args)["test"]
    logged = {
        k: v
        for k, v in test[0].items()
        if k not in ("type", "split", "epoch", "protocol", "checkpoint")
    }
    assert logged.pop("loss") == pytest.approx(res.pop("loss"), rel=1e-5)
    logged = {k: float("nan") if v == "nan" else v for k, v in logged.items()}
    _nan_close(logged, res, rel=1e-6)
    import rasterio

    tifs = sorted(pred.glob("*.tif"))
    assert len(tifs) == test[0]["scenes"]
    ds = build_split_dataset(task, root, "test", None)
    info = ds.scene_info(0)
    with rasterio.open(pred / f"{info['name']}.tif") as src:
        assert (src.height, src.width) == (info["height"], info["width"])
        assert src.crs.to_wkt() == info["crs"] and list(src.transform)[:6] == info["transform"]
        assert set(np.unique(src.read(1))) <= set(range(ds.num_classes))


def test_resume_is_exact(oscd_root, tmp_path):
    common = (
        "--model change_detector_vit_tiny_patch8_128 --batch_size 4 --max_steps_per_epoch 2 "
        "--val_cities 1 --no_test --vis_scenes 0 --drop_path 0.1 --epochs 2 --save_every 1"
    )
    full = dense_train.main(_args(tmp_path / "full", oscd_root, "oscd", common))
    resumed = dense_train.main(
        _args(
            tmp_path / "resumed",
            oscd_root,
            "oscd",
            f"{common} --resume {tmp_path / 'full' / 'checkpoint-0.pth'}",
        )  # fmt: skip
    )
    a = torch.load(tmp_path / "full" / "checkpoint-1.pth", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoint-1.pth", weights_only=True)
    assert a["global_step"] == b["global_step"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert resumed["last"]["f1_change"] == full["last"]["f1_change"]


@pytest.mark.slow
def test_help_as_a_script_and_errors_named(tmp_path, capsys):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # run as `python downstream_tasks/train.py` from elsewhere
    script = str(REPO / "downstream_tasks" / "train.py")
    proc = subprocess.run(
        [sys.executable, script, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert (
        proc.returncode == 0 and "--eval_protocol" in proc.stdout and "--val_cities" in proc.stdout
    )
    with pytest.raises(SystemExit) as err:
        dense_train.cli(["--task", "oscd", "--data_root", str(tmp_path / "nope")])
    assert err.value.code == 2 and "--data_root" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        dense_train.cli(["--data_root", str(tmp_path)])
    assert "--task" in capsys.readouterr().err
