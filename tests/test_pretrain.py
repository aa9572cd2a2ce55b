"""Tests for util/logger.py and the pretraining pipeline (main_pretrain.py, engine_pretrain.py)."""

import json
import sys

import pytest
import torch
from torch import nn

from util.logger import TrainLogger, measure_flops, mfu, peak_flops


def test_logger_writes_jsonl_and_tensorboard(tmp_path):
    log = TrainLogger(tmp_path, enabled=True)
    log.log_step(0, 5, {"loss": 1.5, "lr": 1e-3, "mfu": None})
    log.log_epoch(0, {"loss": 1.25})
    log.close()
    lines = [json.loads(s) for s in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert lines[0]["type"] == "step" and lines[0]["loss"] == 1.5 and lines[0]["step"] == 5
    assert lines[1]["type"] == "epoch" and lines[1]["loss"] == 1.25
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())
    # other ranks write nothing
    quiet = TrainLogger(tmp_path / "rank1", enabled=False)
    quiet.log_epoch(0, {"loss": 1.0})
    assert not (tmp_path / "rank1").exists()
    assert list(quiet.progress([1, 2])) == [1, 2]


def test_wandb_missing_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ImportError, match="--wandb myproj needs the wandb package"):
        TrainLogger(tmp_path, wandb_project="myproj", enabled=True)


def test_flop_count_and_mfu():
    lin = nn.Linear(16, 32, bias=False)
    x = torch.randn(4, 16)
    assert measure_flops(lambda: lin(x)) == 2 * 4 * 16 * 32
    assert (
        measure_flops(lambda: lin(x).sum().backward()) == 2 * 2 * 4 * 16 * 32
    )  # forward + weight gradient (x needs no grad)
    assert peak_flops("cpu") is None
    assert mfu(1e12, 2.0, None) is None
    assert mfu(1e12, 2.0, 4e12) == pytest.approx(0.5)
