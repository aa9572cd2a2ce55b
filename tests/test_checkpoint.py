"""Tests for util/training/checkpoint.py (atomic writes, weights-only files, exact state restore) and util/misc."""

import argparse
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from util.training.checkpoint import (
    load_training_state,
    load_weights_file,
    save_checkpoint,
    save_training_state,
)
from util.training.optim import OptimStep, create_adamw
from util.training.runtime import init_distributed, unwrap_model

REPO = Path(__file__).resolve().parents[1]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 1))


def _trained(steps=3):
    m = _model()
    opt = create_adamw(m.parameters(), lr=1e-2)
    step = OptimStep(m, opt)
    x = torch.randn(6, 4)
    for it in range(steps):
        step(it, lambda: m(x).pow(2).mean())
    return m, opt, step


def test_training_state_roundtrip_is_weights_only_and_restores_rng(tmp_path):
    m, opt, step = _trained()
    compiled = torch.compile(m)  # wrapper adds "_orig_mod." keys; must be stripped
    args = argparse.Namespace(
        lr=1e-2, device=torch.device("cpu"), out=tmp_path, bands=("B01", "B02")
    )
    data = {"normalization": "minmax", "bands": ["B01", "B02"], "input_size": 32}
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(7)
    path = save_training_state(tmp_path, 4, compiled, opt, step, args, extra={"data": data})
    after = (torch.rand(3), np.random.rand(3), random.random())

    assert path.name == "checkpoint-4.pth"
    last = tmp_path / "checkpoint-last.pth"
    assert last.is_file() and last.read_bytes() == path.read_bytes()
    ckpt = torch.load(path, weights_only=True)  # plain types only
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in ckpt["model"])
    assert ckpt["epoch"] == 4 and ckpt["global_step"] == 3 and ckpt["data"] == data
    assert ckpt["args"]["device"] == "cpu" and ckpt["args"]["bands"] == ["B01", "B02"]

    m2 = _model()
    opt2 = create_adamw(m2.parameters(), lr=1e-2)
    step2 = OptimStep(m2, opt2)
    torch.manual_seed(999)
    start, gstep = load_training_state(last, m2, opt2, step2)
    assert (start, gstep, step2.num_updates) == (5, 3, 3)
    torch.testing.assert_close(torch.rand(3), after[0])
    np.testing.assert_array_equal(np.random.rand(3), after[1])
    assert random.random() == after[2]
    for a, b in zip(m.state_dict().values(), m2.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    for k in s1:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(s1[k][name], s2[k][name], rtol=0, atol=0)


def test_numbered_false_writes_only_last(tmp_path):
    m, opt, step = _trained(1)
    path = save_training_state(tmp_path, 0, m, opt, step, {"a": 1}, numbered=False)
    assert path.name == "checkpoint-last.pth"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-last.pth"]


def test_load_weights_file_formats_and_errors(tmp_path):
    m = _model()
    sd = m.state_dict()
    # the paper's format: {"model", "optimizer", "epoch", "args": Namespace}, DDP prefixes
    paper = {
        "model": {f"module.{k}": v for k, v in sd.items()},
        "epoch": 199,
        "args": argparse.Namespace(lr=1),
    }
    torch.save(paper, tmp_path / "paper.pth")
    got = load_weights_file(tmp_path / "paper.pth")
    assert set(got) == set(sd)
    torch.save(sd, tmp_path / "bare.pth")
    assert set(load_weights_file(tmp_path / "bare.pth")) == set(sd)

    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_weights_file(tmp_path / "nope.pth")
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(RuntimeError, match="corrupt.pth"):
        load_weights_file(bad)
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(RuntimeError, match="no model weights"):
        load_weights_file(tmp_path / "empty.pth")


def test_load_training_state_mismatch_names_the_file(tmp_path):
    m, opt, step = _trained(1)
    path = save_training_state(tmp_path, 0, m, opt, step, {})
    other = nn.Sequential(nn.Linear(4, 16), nn.LayerNorm(16), nn.Linear(16, 1))
    with pytest.raises(RuntimeError, match="(?s)checkpoint-0.pth.*resume_different_size"):
        load_training_state(path, other)


def test_sigkill_during_checkpoint_write_keeps_previous_checkpoint(tmp_path):
    target = tmp_path / "checkpoint-last.pth"
    save_checkpoint(target, {"version": 0, "w": torch.zeros(4)})
    writer = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {str(REPO)!r})
        from util.training.checkpoint import save_checkpoint
        big = torch.randn(64 * 1024 * 1024 // 4)  # 64 MB: the write takes a while
        print("writing", flush=True)
        for i in range(1, 1000):
            save_checkpoint({str(target)!r}, {{"version": i, "w": big}})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(0.4)  # well inside a write of the first large checkpoint(s)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    obj = torch.load(target, weights_only=True)
    assert obj["version"] >= 0 and obj["w"].numel() in (4, 64 * 1024 * 1024 // 4)
    # the next save cleans up the killed writer's temp file
    save_checkpoint(target, {"version": -1})
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-last.pth"]


def test_init_distributed_single_process_and_unwrap(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    a = init_distributed(argparse.Namespace(device="cpu"))
    assert (a.distributed, a.rank, a.world_size, a.device.type, a.dist_backend) == (
        False,
        0,
        1,
        "cpu",
        "gloo",
    )
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="--device cuda"):
            init_distributed(argparse.Namespace(device="cuda"))
    m = _model()
    assert unwrap_model(torch.compile(m)) is m
