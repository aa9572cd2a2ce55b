"""Consistency edges (issue 19 item 8): absent classes read "n/a", --num_workers follows the CPUs
available, --help states each default once, one TensorBoard tag for throughput."""

from __future__ import annotations

import argparse
import math
import os
import re

import pytest
import torch

from evaluation.metrics import (
    build_metrics,
    dense_metrics,
    format_dense_metrics,
    format_metrics,
    to_python,
)
from util.training import args as uargs
from util.training.logger import THROUGHPUT, TrainLogger, canonical_scalars


# ---------------------------------------------------------------------------------------------
# per-class scores of absent classes
# ---------------------------------------------------------------------------------------------
def _eval(multilabel: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    metrics = build_metrics(4, multilabel)
    if multilabel:  # labels 2 and 3 never positive: torchmetrics gives AP -0.0
        target = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0]])
    else:  # classes 2 and 3 never in the target: torchmetrics gives accuracy 0.0
        target = torch.tensor([0, 1, 1, 0, 1, 0])
    with pytest.warns(UserWarning) if multilabel else _nothing():
        metrics.update(torch.randn(len(target), 4, generator=g), target)
        return to_python(metrics.compute())


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@pytest.mark.parametrize("multilabel,key", [(False, "acc_per_class"), (True, "ap_per_class")])
def test_absent_classes_read_na_not_minus_zero(multilabel, key):
    res = _eval(multilabel)
    assert res["support"][2:] == [0, 0] and min(res["support"][:2]) > 0
    assert all(math.isnan(v) for v in res[key][2:]) and not any(map(math.isnan, res[key][:2]))
    text = format_metrics(res, class_names=["a", "b", "c", "d"])
    rows = {ln.split()[0]: ln.split()[1] for ln in text.splitlines()[2:6]}
    assert rows["c"] == rows["d"] == "n/a" and rows["a"] != "n/a"
    assert "-0.00" not in text and "nan" not in text
    assert re.search(r"support:\n\s+a\s+\d+\n", text)


def test_present_class_with_zero_score_still_reads_zero():
    metrics = build_metrics(3, False)
    metrics.update(torch.tensor([[3.0, 0, 0], [3.0, 0, 0]]), torch.tensor([0, 1]))
    res = to_python(metrics.compute())
    assert res["acc_per_class"][1] == 0.0 and res["support"] == [1, 1, 0]
    assert "0.00" in format_metrics(res).splitlines()[3]


def test_dense_table_reads_na():
    res = dense_metrics(torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]]), ["bg", "x", "y"])
    text = format_dense_metrics(res, "segment")
    assert re.search(r"\by +n/a +n/a +n/a +n/a$", text, re.M) and "nan" not in text


# ---------------------------------------------------------------------------------------------
# --num_workers default
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cpus,per_node,expected", [(1, 1, 0), (2, 1, 1), (16, 1, 8), (64, 1, 8), (16, 8, 1), (32, 4, 7)]
)
def test_default_num_workers_follows_available_cpus(monkeypatch, cpus, per_node, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(per_node))
    assert uargs.default_num_workers() == expected


def test_num_workers_flag_default_is_capped_here():
    parser = argparse.ArgumentParser()
    uargs.add_data_args(parser)
    n = parser.parse_args([]).num_workers
    assert n == uargs.default_num_workers() <= max(uargs.available_cpus() - 1, 0)
    assert uargs.available_cpus() == len(os.sched_getaffinity(0))


# ---------------------------------------------------------------------------------------------
# --help: each default stated once
# ---------------------------------------------------------------------------------------------
def _shared_parser(formatter) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="x", formatter_class=formatter)
    uargs.add_common_args(parser)
    return parser


def _doubled(parser: argparse.ArgumentParser) -> list[str]:
    """Options whose help mentions its default more than once (the help's own "(default ...)"
    plus the formatter's "(default: %(default)s)")."""
    fmt = parser._get_formatter()
    out = []
    for a in parser._actions:
        text = (fmt._get_help_string(a) or "").lower() if a.help else ""
        added = "(default: %(default)s)"
        if text.replace(added, "").count("(default") + (added in text) > 1:
            out.append(a.option_strings[0])
    return out


def test_help_states_each_default_once():
    # the stock formatter doubles them (what --help showed): the test can fail
    assert {"--lr", "--dtype", "--log_dir", "--pin_mem"} <= set(
        _doubled(_shared_parser(argparse.ArgumentDefaultsHelpFormatter))
    )
    parser = _shared_parser(uargs.HelpFormatter)
    assert _doubled(parser) == []
    text = " ".join(parser.format_help().split())
    assert "per 256 samples of effective batch (default: 0.001)" in text  # --blr: still shown
    assert "(default: None)" not in text and "(default: False)" not in text


# ---------------------------------------------------------------------------------------------
# throughput: one TensorBoard tag
# ---------------------------------------------------------------------------------------------
class _Board:
    def __init__(self):
        self.tags: list[str] = []

    def add_scalar(self, tag, value, step):
        self.tags.append(tag)


def test_one_throughput_tag_for_every_trainer(tmp_path):
    log = TrainLogger(tmp_path, log_dir="", enabled=True)
    log._tb = board = _Board()
    log.log_step(0, 1, {"loss": 1.0, "img_per_s": 10.0})  # pretraining's key
    log.log_step(0, 2, {"loss": 1.0, "images_per_s": 10.0})  # finetuning's key
    log.log_epoch(0, {"train_images_per_s": 9.0, "val_acc1": 50.0})
    log.log_epoch(1, {"train_img_per_s": 9.0})
    assert board.tags.count(f"train/{THROUGHPUT}") == 2
    assert board.tags.count(f"epoch/train_{THROUGHPUT}") == 2
    assert not [t for t in board.tags if "images_per_s" in t]
    line = log.step_line(0, {"loss": 1.0, "images_per_s": 12.5}, 0, 10)
    assert "12.5 img/s" in line
    assert canonical_scalars({"val_acc1": 1, "samples_per_s": 2}) == {"val_acc1": 1, THROUGHPUT: 2}
