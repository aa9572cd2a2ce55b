"""A user's own data through the entry points (issue 19 items 1-4 and 8, wired): the input
contract in predict.py and the dataset loaders, checkpoints that cannot choose code, writes that
fail, one run per output folder, consistent help / throughput / progress / errors.

The library parts have their own tests (test_contract, test_models_registry, test_write_guard,
test_failed_writes, test_runlock); these go through ``predict.py``, the trainers and the loaders
as a user does. Tiny models, tiny synthetic data.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine

import predict
from models_vit_tensor import create_model as create_classifier
from util.data.sentinel2 import L1C_BANDS, MODEL_BANDS, to_model_order
from util.data.synthetic_scenes import render_land_use
from util.inference.scene import write_stack
from util.training.checkpoint import save_checkpoint
from util.training.checkpoint_meta import checkpoint_meta

REPO = Path(__file__).resolve().parents[1]
TILE = 32
SIZE = 128
GRID = ("EPSG:32632", Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 5200000.0))


def _run_cli(capsys, fn, argv) -> tuple[int, str]:
    """Exit status and stderr of a CLI that must fail."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        fn([str(a) for a in argv])
    return e.value.code, capsys.readouterr().err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# --------------------------------------------------------------------------------------------------
# predict.py: one scene as uint16 DN and as float reflectance
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scene_files(tmp_path_factory):
    """A synthetic mosaic as an L1C stack of uint16 DN, its float32 reflectance copy (DN / 10000,
    as Earth Engine / Sentinel Hub export it) and an 8-bit rendering."""
    d = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(19)
    refl = render_land_use(
        rng, SIZE, SIZE, ["forest", "lake", "herbaceous"], extra_covers=["cloud"]
    )
    dn = np.clip(np.rint(refl * 10000.0), 1, 65535).astype(np.uint16)  # (13, H, W) L1C order
    return {
        "dn": write_stack(d / "scene_uint16.tif", dn, L1C_BANDS, *GRID),
        "refl": write_stack(d / "scene_reflectance.tif", dn / np.float32(10000), L1C_BANDS, *GRID),
        "u8": write_stack(d / "scene_uint8.tif", (dn // 64).astype(np.uint8), L1C_BANDS, *GRID),
        "dn_model": to_model_order(dn, L1C_BANDS),
    }


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A EuroSAT-style classifier checkpoint (DN input, z-score) whose head spreads the classes."""
    torch.manual_seed(0)
    model = create_classifier("vit_tiny_patch8_96", img_size=TILE, num_classes=10).eval()
    torch.nn.init.normal_(model.head.weight, std=1.0)
    meta = checkpoint_meta(
        "vit_tiny_patch8_96", "models_vit_tensor", "classify", TILE, MODEL_BANDS,
        "zscore_eurosat", [f"c{i}" for i in range(10)], "eurosat",
        {"img_size": TILE, "num_classes": 10}, native_size=64,
    )  # fmt: skip
    assert meta["input_scale"] == "dn" and meta["native_size"] == 64
    path = tmp_path_factory.mktemp("ckpt") / "classifier.pth"
    save_checkpoint(path, {"format": "spectralgpt-v2", "model": model.state_dict(), "meta": meta})
    return path


def _classes(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_reflectance_and_uint16_copies_give_the_same_class_map(
    scene_files, classifier, tmp_path, caplog
):
    common = ["--checkpoint", classifier, "--no_progress", "--device", "cpu"]
    from util.data import contract

    predict.cli(
        [str(a) for a in [*common, "--input", scene_files["dn"], "--output", tmp_path / "dn.tif"]]
    )
    contract._announced.clear()  # INFO once per process and kind (a fresh predict.py process)
    with caplog.at_level(logging.INFO, logger="util.data.contract"):
        predict.cli(
            [
                str(a)
                for a in [*common, "--input", scene_files["refl"], "--output", tmp_path / "r.tif"]
            ]
        )
    said = [r.getMessage() for r in caplog.records if r.name == "util.data.contract"]
    assert len(said) == 1 and "reflectance 0-1" in said[0] and str(scene_files["refl"]) in said[0]
    a, b = _classes(tmp_path / "dn.tif"), _classes(tmp_path / "r.tif")
    assert a.shape == (SIZE, SIZE) and len(np.unique(a)) > 1  # a map, not one class everywhere
    assert (a == b).mean() >= 0.999


def test_predict_refuses_uint8_and_strict_reflectance(scene_files, classifier, tmp_path, capsys):
    common = ["--checkpoint", classifier, "--no_progress", "--device", "cpu"]
    out = tmp_path / "u8.tif"
    code, err = _run_cli(
        capsys, predict.cli, [*common, "--input", scene_files["u8"], "--output", out]
    )
    line = _one_error_line(err)
    assert code == 2 and str(scene_files["u8"]) in line and "pixels are uint8" in line
    assert "digital numbers" in line and not out.exists()  # the fix, and nothing written
    out = tmp_path / "strict.tif"
    argv = [*common, "--input", scene_files["refl"], "--output", out, "--strict_input"]
    code, err = _run_cli(capsys, predict.cli, argv)
    line = _one_error_line(err)
    assert code == 2 and "reflectance 0-1" in line and "--strict_input" in line
    assert not out.exists()


def test_output_equal_to_input_is_refused(scene_files, classifier, tmp_path, capsys):
    scene = shutil.copy(scene_files["dn"], tmp_path / "scene.tif")
    before = Path(scene).read_bytes()
    argv = ["--checkpoint", classifier, "--input", scene, "--output", scene, "--no_progress"]
    code, err = _run_cli(capsys, predict.cli, argv)
    line = _one_error_line(err)
    assert code == 2 and "--output" in line and "is the input file" in line
    assert Path(scene).read_bytes() == before


_FULL_DISK = textwrap.dedent(
    """
    import json, resource, signal, sys
    sys.path.insert(0, {repo!r})
    import predict
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
    try:
        predict.cli(sys.argv[2:])
        code = 0
    except SystemExit as e:
        code = e.code
    print(json.dumps({{"code": code}}))
    """
).format(repo=str(REPO))


def test_full_disk_while_writing_fails_with_exit_2_and_no_partial_files(
    scene_files, classifier, tmp_path
):
    out, probs = tmp_path / "classes.tif", tmp_path / "probs.tif"
    argv = ["--checkpoint", classifier, "--input", scene_files["dn"], "--output", out,
            "--probabilities", probs, "--no_progress", "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, "3000", *map(str, argv)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert json.loads(proc.stdout.strip().splitlines()[-1])["code"] == 2, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert (
        len(errors) == 1
        and "cannot write" in errors[0]
        and "partial output was removed" in errors[0]
    )
    assert not out.exists() and not probs.exists() and not out.with_suffix(".qml").exists()


_CRAFTED = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {repo!r})
    import predict
    import util.training.checkpoint, util.training.checkpoint_meta  # read any checkpoint with
    before = set(sys.modules)
    try:
        predict.cli(sys.argv[1:])
        code = 0
    except SystemExit as e:
        code = e.code
    new = sorted(set(sys.modules) - before)
    print(json.dumps({{"code": code, "new": new}}))
    """
).format(repo=str(REPO))


@pytest.mark.parametrize("case", ["module", "download"])
def test_crafted_checkpoint_refused_by_predict_importing_nothing(scene_files, tmp_path, case):
    meta = {"model": "x", "model_module": "this", "model_kwargs": {}, "task": "classify"}
    if case == "download":
        meta = {"model": "vit_tiny_patch8_96", "model_module": "models_vit_tensor", "task": "classify",
                "model_kwargs": {"pretrained": True, "pretrained_cfg_overlay": {"url": "https://x/w.pth"}}}  # fmt: skip
    ckpt = tmp_path / "crafted.pth"
    torch.save({"format": "spectralgpt-v2", "model": {}, "meta": meta}, ckpt)
    argv = ["--checkpoint", ckpt, "--input", scene_files["dn"], "--output", tmp_path / "o.tif"]
    proc = subprocess.run(
        [sys.executable, "-c", _CRAFTED, *map(str, argv)], capture_output=True, text=True,
        timeout=300, cwd=tmp_path,
    )  # fmt: skip
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 2, proc.stderr[-3000:]
    line = _one_error_line(proc.stderr)
    assert str(ckpt) in line and ("model_module 'this'" in line or "'pretrained'" in line)
    assert "Beautiful is better than ugly" not in proc.stdout  # `import this` did not run
    new = [m for m in result["new"] if not m.startswith("torch.")]  # torch.load's own lazy imports
    assert new == [], new  # the file made nothing import (no `this`, no model module, no hub)
    assert not (tmp_path / "o.tif").exists()


# --------------------------------------------------------------------------------------------------
# dataset loaders: the same contract, per sample and cheap
# --------------------------------------------------------------------------------------------------
def _rewrite_as(path: Path, convert) -> None:
    with rasterio.open(path) as src:
        data, profile = src.read(), src.profile
    out = convert(data)
    profile.update(dtype=out.dtype.name)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(out)


@pytest.fixture(scope="module")
def euro(tmp_path_factory):
    from util.data.synthetic import generate

    return generate("eurosat", tmp_path_factory.mktemp("euro"), num=30, size=16, seed=0)


def test_loader_converts_a_reflectance_copy_and_refuses_under_strict(euro, tmp_path, caplog):
    from util.data import InputScaleError, build_dataset, contract

    root = Path(shutil.copytree(euro, tmp_path / "e"))
    ds = build_dataset("eurosat", root, split="train", native_size=16)
    want = [ds[i]["image"] for i in range(3)]
    for p in ds.paths[:3]:  # a float reflectance export of the same files
        _rewrite_as(p, lambda x: (x / np.float32(10000)).astype(np.float32))
    contract._announced.clear()
    with caplog.at_level(logging.INFO, logger="util.data.contract"):
        got = [ds[i]["image"] for i in range(3)]
    for a, b in zip(want, got):
        torch.testing.assert_close(b, a, atol=0.05, rtol=0)
    said = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(said) == 1 and "converted to digital numbers" in said[0].getMessage()
    strict = build_dataset("eurosat", root, split="train", native_size=16, strict_input=True)
    with pytest.raises(InputScaleError) as e:
        strict[0]
    assert str(e.value).startswith(f"{ds.paths[0]}: ") and "\n" not in str(e.value)
    assert "--strict_input" in str(e.value)
    _rewrite_as(ds.paths[1], lambda x: (x * 100.0).astype(np.float32))  # percent reflectance
    with pytest.raises(InputScaleError, match=f"{ds.paths[1].name}: cannot tell the pixel scale"):
        ds[1]
    skip = build_dataset("eurosat", root, split="train", native_size=16, skip_bad_samples=True)
    skip[1]
    assert skip.num_skipped == 1  # a refused file is a bad sample: --skip_bad_samples counts it


def test_per_band_reflectance_copy_is_checked_as_a_whole(tmp_path):
    from util.data import build_dataset
    from util.data.synthetic import generate

    root = generate("bigearthnet", tmp_path / "ben", num=4, size=24, seed=0)
    ds = build_dataset("bigearthnet", root, split="train", stacked=False)
    want = ds[0]["image"]
    folder = ds.patch_dir(ds.patches[0])
    for band in MODEL_BANDS:
        _rewrite_as(
            folder / f"{ds.patches[0]}_{band}.tif",
            lambda x: (x / np.float32(1e4)).astype(np.float32),
        )
    torch.testing.assert_close(ds[0]["image"], want, atol=0.05, rtol=0)


def test_plan_sample_is_cheap_on_integer_files():
    """The per-sample check of the loaders: the quick integer test, not a full percentile pass."""
    import time

    from util.data.contract import InputContract, plan_sample

    x = np.random.default_rng(0).integers(200, 4000, (12, 120, 120)).astype(np.float32)
    plan_sample(x, InputContract(), "a.tif", dtype="uint16")
    t0 = time.perf_counter()
    for _ in range(200):
        plan = plan_sample(x, InputContract(), "a.tif", dtype="uint16")
    per_call = (time.perf_counter() - t0) / 200
    assert plan.detected == "dn" and not plan.converts
    assert per_call < 2e-3  # ~0.05 ms here; a full percentile over 172,800 values takes ~5 ms


# --------------------------------------------------------------------------------------------------
# trainers: one run per output folder, one-line save errors
# --------------------------------------------------------------------------------------------------
_HOLDER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    from util.training.runlock import RunLock
    with RunLock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(120)
    """
).format(repo=str(REPO))


def _eval_checkpoint(path: Path) -> Path:
    model = create_classifier("vit_tiny_patch8_96", img_size=16, num_classes=10)
    meta = checkpoint_meta("vit_tiny_patch8_96", "models_vit_tensor", "classify", 16,
                           normalization="zscore_eurosat", classes=[str(i) for i in range(10)],
                           dataset="eurosat", model_kwargs={"img_size": 16, "num_classes": 10})  # fmt: skip
    save_checkpoint(path, {"format": "spectralgpt-v2", "model": model.state_dict(), "meta": meta})
    return path


@pytest.mark.parametrize("trainer", ["pretrain", "finetune_eval", "dense"])
def test_second_run_on_one_output_dir_is_refused(tmp_path, capsys, trainer):
    import main_finetune
    import main_pretrain
    from downstream_tasks import train as dense_train

    out, data = tmp_path / "run", tmp_path / "data"
    data.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        common = ["--output_dir", out, "--device", "cpu", "--num_workers", "0"]
        fn, argv = {
            "pretrain": (main_pretrain.cli, ["--train_path", data]),
            "finetune_eval": (
                main_finetune.cli,
                ["--eval", "--resume", _eval_checkpoint(tmp_path / "c.pth"), "--test_path", data],
            ),
            "dense": (dense_train.cli, ["--task", "oscd", "--data_root", data]),
        }[trainer]
        code, err = _run_cli(capsys, fn, [*argv, *common])
        line = _one_error_line(err)
        assert code == 2 and f"--output_dir {out}: another run is using this folder" in line
        assert f"pid {holder.pid}" in line
        assert sorted(p.name for p in out.iterdir()) == ["run.lock"]  # nothing else written
    finally:
        holder.kill()
        holder.wait()


class _FullDisk(io.RawIOBase):
    def __init__(self, f):
        self.f = f

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_checkpoint_save_on_a_full_disk_is_one_line_through_a_trainer(
    tmp_path, capsys, monkeypatch
):
    import main_pretrain
    from util.data.synthetic import generate

    root = generate("fmow_sentinel", tmp_path / "fmow", num=8, size=24, seed=0)
    real = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: real(obj, _FullDisk(f), *a, **k))
    out = tmp_path / "run"
    argv = ["--model", "mae_vit_tiny_patch8_96", "--input_size", "16", "--train_path", root,
            "--dataset_type", "sentinel", "--dropped_bands", "10", "--output_dir", out,
            "--batch_size", "4", "--epochs", "1", "--num_workers", "0", "--device", "cpu",
            "--vis_every", "0"]  # fmt: skip
    code, err = _run_cli(capsys, main_pretrain.cli, argv)
    line = _one_error_line(err)
    assert code == 2 and "cannot write checkpoint" in line and str(out) in line
    assert "No space left on device" in line
    assert not list(out.glob("*.pth")) and not list(out.glob("*.tmp*"))
    assert not (out / "run.lock").exists()  # the lock went with the run


# --------------------------------------------------------------------------------------------------
# consistency (item 8)
# --------------------------------------------------------------------------------------------------
def _parsers():
    import importlib

    import main_finetune
    import main_pretrain
    from downstream_tasks import train as dense_train

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        label_eff = importlib.import_module("label_efficiency")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))

    def dense():
        import argparse

        from util.training.args import HelpFormatter

        return argparse.ArgumentParser(
            parents=[dense_train.get_args_parser()], formatter_class=HelpFormatter
        )

    return {
        "main_pretrain": main_pretrain.get_args_parser(),
        "main_finetune": main_finetune.get_args_parser(),
        "predict": predict.get_args_parser(),
        "label_efficiency": label_eff.get_args_parser(),
        "dense": dense(),
    }


def test_every_parser_states_each_default_once():
    from test_consistency import _doubled

    from util.training.args import HelpFormatter

    for name, parser in _parsers().items():
        assert parser.formatter_class is HelpFormatter, name
        assert _doubled(parser) == [], name
        assert "(default: None)" not in parser.format_help(), name


def test_dense_num_workers_default_is_capped_by_the_cpus(tmp_path):
    from downstream_tasks import train as dense_train
    from util.training.args import default_num_workers

    args = dense_train.get_args_parser().parse_args(
        ["--task", "oscd", "--data_root", str(tmp_path)]
    )
    assert args.num_workers == default_num_workers()


def test_step_lines_count_optimiser_steps(tmp_path):
    from util.training.logger import TrainLogger

    log = TrainLogger(tmp_path, log_dir="", enabled=True, progress=False)
    log.accum_iter = 4  # set by TrainLoop from --accum_iter
    line = log.step_line(0, {"loss": 1.0}, it=7, total=40)  # micro-batch 8 of 40
    assert "step 2/10 (20%)" in line  # optimiser steps, the unit of the header's "steps/epoch"


def test_fmow_index_given_to_bigearthnet_is_named_at_build_time(tmp_path):
    from util.data import IndexFileError, build_dataset
    from util.data.synthetic import generate

    fmow = generate("fmow_sentinel", tmp_path / "fmow", num=4, size=24, seed=0)
    index = Path(fmow) / "fmow-sentinel" / "train.csv"
    with pytest.raises(IndexFileError) as e:
        build_dataset("bigearthnet", tmp_path, index=index)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{index}: ") and "fMoW-Sentinel index" in msg
    assert "--dataset_type fmow_sentinel" in msg


def test_finetune_batch_too_large_gives_the_numbers(euro, tmp_path, capsys):
    import main_finetune

    argv = ["--model", "vit_tiny_patch8_96", "--input_size", "16", "--native_size", "16",
            "--train_path", euro, "--test_path", euro, "--batch_size", "512", "--device", "cpu",
            "--num_workers", "0", "--output_dir", tmp_path / "ft"]  # fmt: skip
    code, err = _run_cli(capsys, main_finetune.cli, argv)
    line = _one_error_line(err)
    assert (
        code == 2 and "fewer than one optimiser step needs (batch_size 512 x accum_iter 1" in line
    )


if os.name != "posix":  # RLIMIT_FSIZE, flock
    pytestmark = pytest.mark.skip("POSIX only")
