"""Metrics: dataset-level AP equals sklearn's, per-batch averaging differs, DDP counts once."""

import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from sklearn.metrics import average_precision_score, f1_score

from evaluation.metrics import (
    build_metrics,
    eval_shard,
    format_metrics,
    main_metric_name,
    to_python,
)
from tests._ddp_worker import ddp_eval_worker


def _multilabel_example(n=103, k=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(n, k, generator=g) < 0.3).long()
    target[0] = 1  # every class has at least one positive
    logits = 2.0 * target.float() - 1.0 + 1.5 * torch.randn(n, k, generator=g)
    return logits, target


def test_map_matches_sklearn_over_batches():
    logits, target = _multilabel_example()
    metrics = build_metrics(7, multilabel=True)
    for lo, tg in zip(logits.split(16), target.split(16)):  # 7 batches, last one short
        metrics.update(lo, tg)
    res = to_python(metrics.compute())
    probs = torch.sigmoid(logits).numpy()
    y = target.numpy()
    micro = 100 * average_precision_score(y, probs, average="micro")
    macro = 100 * average_precision_score(y, probs, average="macro")
    assert res["mAP_micro"] == pytest.approx(micro, abs=1e-4)
    assert res["mAP_macro"] == pytest.approx(macro, abs=1e-4)
    assert res["ap_per_class"] == pytest.approx(
        list(100 * average_precision_score(y, probs, average=None)), abs=1e-4
    )
    f1 = 100 * f1_score(y, (probs > 0.5).astype(int), average="micro")
    assert res["f1_micro"] == pytest.approx(f1, abs=1e-4)
    # The paper's batch-averaged micro AP is a different number: make sure we are not it.
    batch_avg = np.average(
        [
            average_precision_score(t.numpy(), torch.sigmoid(lo).numpy(), average="micro")
            for lo, t in zip(logits.split(16), target.split(16))
        ],
        weights=[len(t) for t in target.split(16)],
    )
    assert abs(100 * batch_avg - res["mAP_micro"]) > 1e-3


def test_single_label_accuracy_and_format():
    logits = torch.tensor([[3.0, 1, 0, 0, 0, 0], [0, 3.0, 2, 1, 0, 0], [0, 0, 0, 0, 1, 3.0]])
    target = torch.tensor([0, 2, 5])
    metrics = build_metrics(6, multilabel=False)
    metrics.update(logits[:2], target[:2])
    metrics.update(logits[2:], target[2:])
    res = to_python(metrics.compute())
    assert res["acc1"] == pytest.approx(200 / 3)
    assert res["acc5"] == pytest.approx(100.0)
    assert res["acc_per_class"][0] == pytest.approx(100.0)
    assert res["acc_per_class"][2] == pytest.approx(0.0)
    text = format_metrics(res, class_names=list("abcdef"))
    assert "acc1 66.67" in text and "acc_per_class:" in text
    assert main_metric_name(False) == "acc1" and main_metric_name(True) == "mAP_micro"
    with pytest.raises(ValueError, match="best_metric"):
        main_metric_name(True, "acc1")


def test_eval_shard_covers_each_index_once():
    for n, world in [(10, 3), (7, 2), (1, 4), (0, 2)]:
        seen = sorted(i for r in range(world) for i in eval_shard(n, r, world))
        assert seen == list(range(n))
    # what torch's DistributedSampler would do: pad with repeats (the bug we avoid)
    sampler_total = sum(
        len(list(torch.utils.data.DistributedSampler(range(7), 2, r, shuffle=False)))
        for r in range(2)
    )
    assert sampler_total == 8


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_eval_counts_each_sample_once():
    logits, target = _multilabel_example(n=21, k=5, seed=1)  # 21 = odd: ranks get 11 and 10
    # spawn (fork can deadlock after torch has started its thread pools); the worker lives in a
    # small module so the children import only torch, torchmetrics and evaluation.metrics
    out = mp.get_context("spawn").SimpleQueue()
    mp.spawn(ddp_eval_worker, args=(2, _free_port(), logits, target, out), nprocs=2, join=True)
    res = out.get()
    probs = torch.sigmoid(logits).numpy()
    assert res["mAP_micro"] == pytest.approx(
        100 * average_precision_score(target.numpy(), probs, average="micro"), abs=1e-4
    )
    assert res["mAP_macro"] == pytest.approx(
        100 * average_precision_score(target.numpy(), probs, average="macro"), abs=1e-4
    )
