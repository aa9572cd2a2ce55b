"""A new user's first hour (issue 11): help and errors of every entry point, checkpoint metadata,
defaults that work on short runs, hardening found by fault injection. Tiny models, tiny data."""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "vit_tiny_patch8_96", "--input_size", "16", "--device", "cpu"]
FAST = ["--num_workers", "0", "--batch_size", "8", "--print_freq", "2", "--save_every", "100"]


def entry_points() -> list[str]:
    """Every script / module with a ``__main__`` block: the mains, util.*, downstream_tasks.*."""
    found = []
    for path in [
        *REPO.glob("*.py"),
        *REPO.glob("util/**/*.py"),
        *REPO.glob("downstream_tasks/*.py"),
    ]:
        if 'if __name__ == "__main__"' in path.read_text():
            rel = path.relative_to(REPO).with_suffix("")
            found.append(".".join(rel.parts))
    return sorted(found)


def test_every_entry_point_has_help(capsys, monkeypatch):
    """``--help`` of every entry point prints usage and exits 0 (run in-process as ``__main__``)."""
    import runpy
    import warnings

    mods = entry_points()
    assert {
        "main_pretrain",
        "main_finetune",
        "util.training.checkpoint_meta",
        "util.data.check",
    } <= set(mods)
    bad = []
    for mod, argv in [(m, ["--help"]) for m in mods] + [
        ("util.training.checkpoint_meta", ["info", "-h"])
    ]:
        monkeypatch.setattr(sys, "argv", [mod, *argv])
        with pytest.raises(SystemExit) as e, warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "found in sys.modules"
            runpy.run_module(mod, run_name="__main__", alter_sys=False)
        out = capsys.readouterr()
        if e.value.code not in (0, None) or "usage" not in out.out:
            bad.append(f"{mod} {argv}: exit {e.value.code}: {(out.out + out.err)[-300:]}")
    assert not bad, "\n".join(bad)


# ----------------------------------------------------------------------------------------------
# user errors: one line, exit 2, rank 0 only
# ----------------------------------------------------------------------------------------------
def _exit_and_err(capsys, fn, *args):
    with pytest.raises(SystemExit) as e:
        fn(*args)
    err = capsys.readouterr().err
    return e.value.code, err


def test_user_errors_are_one_line_exit_2(tmp_path, capsys, monkeypatch):
    import main_finetune
    import main_pretrain
    from util.data import check
    from util.training import checkpoint, checkpoint_meta

    missing = tmp_path / "nope"
    code, err = _exit_and_err(
        capsys, main_finetune.cli, [*TINY, "--test_path", str(missing), "--eval", "--resume",
                                    str(missing)]
    )  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and str(missing) in err
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    code, err = _exit_and_err(capsys, checkpoint_meta.cli, ["info", str(corrupt)])
    assert code == 2 and err.count("\n") == 1 and str(corrupt) in err
    code, err = _exit_and_err(
        capsys, main_pretrain.cli, ["--mask_ratio", "1.5", "--train_path", str(tmp_path)]
    )
    assert code == 2 and "--mask_ratio" in err and err.count("\n") == 1
    code, err = _exit_and_err(capsys, check.main, ["eurosat", str(missing)])
    assert code == 2 and "eurosat-train.txt" in err
    # under torchrun only rank 0 speaks (every rank exits 2)
    monkeypatch.setenv("RANK", "1")
    code, err = _exit_and_err(capsys, checkpoint_meta.cli, ["info", str(corrupt)])
    assert code == 2 and err == ""
    monkeypatch.delenv("RANK")
    # --debug: the traceback (the exception itself) comes through
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint_meta.cli(["info", str(corrupt), "--debug"])


def test_worker_errors_keep_their_type_and_message():
    from util.data import ShapeMismatchError
    from util.training.cli import format_error

    worker = ShapeMismatchError(
        "Caught ShapeMismatchError in DataLoader worker process 0.\nOriginal Traceback (most "
        "recent call last):\n  File x\nutil.datasets.ShapeMismatchError: /d/a.tif: image is 63 x 64"
    )
    assert format_error(worker) == "error: /d/a.tif: image is 63 x 64"


# ----------------------------------------------------------------------------------------------
# checkpoint metadata, --eval from the checkpoint, warm-up clamp, finetune log lines
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def euro(tmp_path_factory):
    from util.data.synthetic import generate

    return generate("eurosat", tmp_path_factory.mktemp("euro"), num=60, size=16, seed=0)


@pytest.fixture(scope="module")
def finetuned(euro, tmp_path_factory):
    """One short finetune with the defaults' 20 warm-up epochs (clamped for a 2-epoch run)."""
    import main_finetune

    out = tmp_path_factory.mktemp("ft")
    args = main_finetune.get_args_parser().parse_args(
        [*map(str, [*TINY, *FAST, "--native_size", "16", "--train_path", euro,
                    "--test_path", euro, "--epochs", "2", "--output_dir", out,
                    "--max_steps_per_epoch", "3"])]
    )  # fmt: skip
    assert args.warmup_epochs == 20  # the finetune default
    res = main_finetune.main(args)
    assert args.warmup_epochs == pytest.approx(0.2)
    return out, res


def test_checkpoints_carry_metadata(finetuned):
    from util.training.checkpoint import FORMAT
    from util.training.checkpoint_meta import read_metadata

    out, _ = finetuned
    for name in ("checkpoint-best.pth", "checkpoint-last.pth"):
        ckpt = torch.load(out / name, weights_only=True)
        assert ckpt["format"] == FORMAT == "spectralgpt-v2"
        meta = read_metadata(ckpt)
        assert meta["model"] == "vit_tiny_patch8_96" and meta["input_size"] == 16
        assert meta["task"] == "classify" and meta["dataset"] == "eurosat"
        assert meta["model_module"] == "models_vit_tensor" and len(meta["classes"]) == 10
        assert meta["normalization"] == "zscore_eurosat" and len(meta["bands"]) == 12
        assert meta["model_kwargs"] == {"img_size": 16, "num_classes": 10}
        # the input contract: digital numbers, and the size of the files trained on
        assert meta["input_scale"] == "dn" and meta["input_dn_offset"] == 0.0
        assert meta["native_size"] == 16
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    steps = [x for x in lines if x["type"] == "step"]
    assert steps and all("img_per_s" in x for x in steps)  # the one throughput key
    epochs = [x for x in lines if x["type"] == "epoch"]
    assert epochs and all("train_img_per_s" in x for x in epochs)


def test_eval_takes_model_size_classes_from_checkpoint(finetuned, euro, tmp_path, capsys):
    import main_finetune

    out, res = finetuned
    # no --native_size: the 16 px of the files it was trained on come from the checkpoint
    argv = ["--eval", "--resume", out / "checkpoint-best.pth", "--test_path", euro,
            "--device", "cpu", "--num_workers", "0", "--output_dir", tmp_path]  # fmt: skip
    ev = main_finetune.cli([str(a) for a in argv])
    assert ev["last"]["acc1"] == pytest.approx(res["best"]["acc1"])
    capsys.readouterr()
    code, err = _exit_and_err(
        capsys, main_finetune.cli, [str(a) for a in [*argv, "--input_size", "32"]]
    )
    assert code == 2 and err.count("\n") == 1 and "--input_size 32 differs from the 16" in err


def test_read_metadata_of_v1_and_paper_files(tmp_path, capsys):
    import models_mae_spectral
    from util.training import checkpoint_meta

    mae = models_mae_spectral.create_model("mae_vit_tiny_patch8_96", img_size=16)
    sd = mae.state_dict()
    paper = tmp_path / "paper.pth"
    torch.save({"model": sd, "epoch": 3}, paper)
    meta = checkpoint_meta.read_metadata(paper)
    assert meta["model"] is None and meta["task"] == "pretrain" and meta["input_size"] == 16
    v1 = {"format": "spectralgpt-v1", "model": sd, "args": {"model": "mae_vit_tiny_patch8_96",
          "mask_ratio": 0.75}, "data": {"normalization": "minmax", "input_size": 16,
          "dataset": "fmow_sentinel", "bands": ["B02"]}}  # fmt: skip
    meta = checkpoint_meta.read_metadata(v1)
    assert meta["model"] == "mae_vit_tiny_patch8_96" and meta["normalization"] == "minmax"
    assert meta["dataset"] == "fmow_sentinel" and meta["model_module"] == "models_mae_spectral"
    info = checkpoint_meta.cli(["info", str(paper), "--sha256"])
    assert info["parameters"] == sum(v.numel() for v in sd.values()) and len(info["sha256"]) == 64
    assert "input_size:" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# pretraining flags: mask ratio, resume needs a full state
# ----------------------------------------------------------------------------------------------
def test_mask_ratio_range(tmp_path):
    import engine_pretrain
    import main_pretrain

    for bad in ("1.5", "90", "-0.5", "1.0"):
        args = main_pretrain.get_args_parser().parse_args(
            ["--mask_ratio", bad, "--output_dir", str(tmp_path)]
        )
        with pytest.raises(ValueError, match=r"--mask_ratio must be in \[0, 1\)"):
            main_pretrain.resolve_args(args)
    args = main_pretrain.get_args_parser().parse_args(
        ["--epochs", "3", "--warmup_epochs", "20", "--output_dir", str(tmp_path)]
    )
    main_pretrain.resolve_args(args)  # warm-up clamped before any heavy work
    assert args.warmup_epochs == pytest.approx(0.3) and args.model == "mae_vit_base_patch8_96"
    assert engine_pretrain.check_visible_tokens(64, 0.9) == 6
    with pytest.raises(ValueError, match="no visible token"):
        engine_pretrain.check_visible_tokens(16, 0.99)


def test_resume_needs_full_training_state(tmp_path):
    import main_pretrain
    from util.training.checkpoint import CheckpointError, load_training_state

    partial = tmp_path / "partial.pth"
    torch.save({"model": {}}, partial)
    with pytest.raises(CheckpointError, match="not a full training state.*--finetune"):
        load_training_state(partial, nn.Linear(2, 2))
    args = main_pretrain.get_args_parser().parse_args(
        ["--resume", str(partial), "--output_dir", str(tmp_path)]
    )
    with pytest.raises(CheckpointError, match="--init_from"):
        main_pretrain.resolve_args(args)
    assert main_pretrain.get_args_parser().parse_args(["--init_from", "x.pth"]).finetune == "x.pth"


# ----------------------------------------------------------------------------------------------
# checkpoint writing: non-finite weights, permissions, disk full, unpickling hint
# ----------------------------------------------------------------------------------------------
class _Step:
    def state_dict(self):
        return {"scaler": None, "num_updates": 1}


def test_nonfinite_weights_are_never_saved(tmp_path):
    from util.training.checkpoint import NonFiniteWeightsError, save_training_state

    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_training_state(tmp_path, 0, model, opt, _Step(), {"a": 1})
    good = (tmp_path / "checkpoint-last.pth").read_bytes()
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="checkpoint-last.pth") as e:
        save_training_state(tmp_path, 1, model, opt, _Step(), {"a": 1})
    assert "weight" in str(e.value)
    assert (tmp_path / "checkpoint-last.pth").read_bytes() == good
    assert not (tmp_path / "checkpoint-1.pth").exists()


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_checkpoint_permissions_follow_umask(tmp_path, mask):
    from util.training.checkpoint import save_checkpoint

    old = os.umask(mask)
    try:
        path = save_checkpoint(tmp_path / "c.pth", {"x": torch.ones(1)})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_disk_full_names_the_checkpoint(tmp_path, monkeypatch):
    from util.training.checkpoint import save_checkpoint

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match=r"cannot write checkpoint .*c\.pth: No space left"):
        save_checkpoint(tmp_path / "c.pth", {})
    assert not list(tmp_path.iterdir())


def test_unsafe_pickle_error_has_no_dangling_hint(tmp_path):
    from util.training.checkpoint import CheckpointError, load_checkpoint_file

    path = tmp_path / "evil.pth"
    torch.save({"obj": logging.getLogger("x")}, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint_file(path)
    assert "weights_only=False" not in str(e.value) and str(path) in str(e.value)


# ----------------------------------------------------------------------------------------------
# logs: resume marking, progress bars off without a terminal, ETA lines
# ----------------------------------------------------------------------------------------------
def test_log_resume_drops_the_killed_runs_tail_and_eta_lines(tmp_path, caplog):
    from util.training.logger import TrainLogger

    log = TrainLogger(tmp_path, log_dir="", enabled=True)
    assert not log.show_progress  # pytest captures stdout: not a terminal
    items = [1, 2]
    assert log.progress(items, total=2) is items
    for ep in range(3):
        log.log_step(ep, ep * 10, {"loss": 1.0})
        log.log_epoch(ep, {"loss": 1.0})
    assert log.mark_resume(2, 20, "ckpt") == 2
    recs = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert max(r["epoch"] for r in recs if r["type"] != "resume") == 1
    assert recs[-1]["type"] == "resume"
    log.start_run(2, 4)
    with caplog.at_level(logging.INFO, logger="util.training.logger"):
        log.log_step(2, 25, {"loss": 0.5, "lr": 1e-3, "img_per_s": 12.5}, it=4, total=10)
    line = caplog.records[-1].getMessage()
    assert "epoch 2 step 5/10" in line and "12.5 img/s" in line and "ETA" in line
    log.close()


def test_log_resume_mid_epoch_keeps_the_steps_before_the_checkpoint(tmp_path):
    """Killed in epoch 1 after micro-batch 5 was logged, resumed from a checkpoint after 4
    micro-batches (an update every 2): epoch 1's lines 0-3 stay, 4-5 and the cut line go, and the
    resumed run's lines make each step appear once."""
    from util.training.logger import TrainLogger

    log = TrainLogger(tmp_path, log_dir="", enabled=True)
    for ep, batches in ((0, 8), (1, 6)):
        for it in range(batches):
            log.log_step(ep, 8 * ep + it, {"loss": 1.0}, it=it, total=8)
        if ep == 0:
            log.log_epoch(ep, {"loss": 1.0})
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"type": "step", "epo')  # cut by the kill
    assert log.mark_resume(1, 6, "ckpt", batches=4) == 3
    for it in range(4, 8):
        log.log_step(1, 8 + it, {"loss": 1.0}, it=it, total=8)
    log.log_epoch(1, {"loss": 1.0})
    recs = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [(r["epoch"], r["batch"], r["step"]) for r in recs if r["type"] == "step"]
    assert steps == [(ep, it, 8 * ep + it) for ep in (0, 1) for it in range(8)]
    assert [r["epoch"] for r in recs if r["type"] == "epoch"] == [0, 1]
    resume = next(r for r in recs if r["type"] == "resume")
    assert (resume["epoch"], resume["batch"], resume["dropped_lines"]) == (1, 4, 3)
    log.close()


# ----------------------------------------------------------------------------------------------
# data hardening
# ----------------------------------------------------------------------------------------------
def _write(path, array):
    import rasterio

    with rasterio.open(
        path, "w", driver="GTiff", count=array.shape[0], height=array.shape[1],
        width=array.shape[2], dtype=array.dtype,
    ) as dst:  # fmt: skip
        dst.write(array)


def test_eurosat_dtype_and_native_size(euro, tmp_path):
    import shutil

    from util.data import DTypeError, ShapeMismatchError, build_dataset

    root = Path(shutil.copytree(euro, tmp_path / "e"))
    ds = build_dataset("eurosat", root, split="train", native_size=16)
    path = ds.paths[0]
    _write(path, np.full((13, 16, 16), 90, np.uint8))
    with pytest.raises(DTypeError, match=f"{path.name}: pixels are uint8.*digital numbers"):
        ds[0]
    with pytest.raises(DTypeError, match="pixels are uint8"):  # 8-bit never reads as measurements
        build_dataset("eurosat", root, split="train", native_size=16, dtypes=["uint8"])[0]
    with pytest.raises(DTypeError, match="only uint16 are accepted here"):
        build_dataset("eurosat", root, split="train", native_size=16, dtypes=["uint16"])[0]
    _write(path, np.full((13, 15, 16), 1000, np.uint16))
    with pytest.raises(ShapeMismatchError, match=f"{path.name}: image is 15 x 16 px"):
        ds[0]
    with pytest.raises(ShapeMismatchError, match="are 64 x 64"):
        build_dataset("eurosat", root, split="train")[1]  # the published size by default
    assert build_dataset("eurosat", root, split="train", native_size=0)[0]["image"].shape[1:] == (
        15,
        16,
    )


def test_oscd_missing_change_map_names_the_official_path(tmp_path):
    from util.data import OSCD_LABELS, MissingFileError, build_dataset
    from util.data.synthetic import generate

    root = generate("oscd", tmp_path / "o", num=2, size=16, seed=0)
    ds = build_dataset("oscd", root, split="train")
    ds.label_files[0].unlink()
    with pytest.raises(MissingFileError) as e:
        ds[0]
    assert e.value.path == str(root / OSCD_LABELS[0] / ds.cities[0] / "cm" / "cm.png")


def test_fmow_official_csv_without_data_root(tmp_path, caplog):
    import engine_pretrain
    import main_pretrain
    from util.data.synthetic import generate

    root = generate("fmow_sentinel", tmp_path / "data", num=4, size=16, seed=0)
    csv = root / "fmow-sentinel" / "train.csv"
    assert (root / "fmow-sentinel" / "train").is_dir()  # image_path values start there
    args = main_pretrain.get_args_parser().parse_args(
        ["--dataset_type", "sentinel", "--train_path", str(csv), "--input_size", "16"]
    )
    with caplog.at_level(logging.INFO, logger="util.data"):
        ds, _ = engine_pretrain.build_pretrain_dataset(args)
    assert ds[0]["image"].shape == (12, 16, 16)
    assert any("resolved against" in r.getMessage() for r in caplog.records)


def test_skipped_samples_are_counted_over_workers(euro, tmp_path, caplog):
    import shutil

    from util.data import build_dataset, collate, report_skipped

    root = Path(shutil.copytree(euro, tmp_path / "e"))
    ds = build_dataset("eurosat", root, split="train", native_size=16, skip_bad_samples=True)
    for p in ds.paths[:3]:
        p.write_bytes(b"broken")
    loader = torch.utils.data.DataLoader(ds, batch_size=6, num_workers=2, collate_fn=collate)
    for _ in loader:
        pass
    with caplog.at_level(logging.WARNING, logger="util.data"):
        assert report_skipped(ds) == 3
    assert "replaced 3 bad samples" in caplog.records[-1].getMessage()


def test_synthetic_splits_hold_every_class(tmp_path):
    from util.data import build_dataset
    from util.data.synthetic import generate

    root = generate("eurosat", tmp_path / "e", num=100, size=8, seed=0)
    for split in ("train", "val", "test"):
        assert set(build_dataset("eurosat", root, split=split, native_size=8).labels) == set(
            range(10)
        ), split
    # multi-label (BigEarthNet, SegMunich): every label with an image to spare lands in every split
    from util.data.synthetic_scenes import covering_split as _covering_split

    rng = np.random.default_rng(0)
    labels = [
        set(rng.choice(12, size=rng.integers(1, 4), replace=False).tolist()) for _ in range(40)
    ]
    labels[5] = {99}  # a label of one image stays in one split
    labels[6], labels[7] = {98, 1}, {98}
    parts = _covering_split(labels, {"test": 8, "val": 8, "train": 0}, rng)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(40))
    assert [len(parts[k]) for k in ("test", "val", "train")] == [8, 8, 24]
    for k, idx in parts.items():
        have = set().union(*(labels[i] for i in idx))
        assert set(range(12)) <= have, k
    assert sum(98 in set().union(*(labels[i] for i in idx)) for idx in parts.values()) == 2


def test_wandb_is_a_requirement():
    import importlib.util

    reqs = (REPO / "requirements.txt").read_text()
    assert any(line.startswith("wandb") for line in reqs.splitlines())
    assert importlib.util.find_spec("wandb") is not None


def test_default_linear_probe_learns_on_small_batches(tmp_path):
    """The probe's defaults (AdamW, blr 0.1) learn at batch 16; LARS's (the MAE recipe at batch
    16384) stayed at chance here: 15 / 10 / 0 % vs 55 / 35 / 50 % for seeds 0 / 1 / 2
    (100 synthetic EuroSAT images at 16 px, 8 epochs, random-init tiny encoder; chance 10 %)."""
    import main_finetune
    from util.data.synthetic import generate

    root = generate("eurosat", tmp_path / "e", num=100, size=16, seed=0)
    args = main_finetune.get_args_parser().parse_args(
        [*TINY, "--native_size", "16", "--num_workers", "0", "--train_path", str(root),
         "--test_path", str(root), "--linear_probe", "--epochs", "8", "--batch_size", "16",
         "--save_every", "100", "--output_dir", str(tmp_path / "lp")]
    )  # fmt: skip
    res = main_finetune.main(args)
    assert args.probe_optimizer == "adamw" and args.lr == pytest.approx(0.1 * 16 / 256)
    assert res["best"]["acc1"] >= 30.0, res["best"]
