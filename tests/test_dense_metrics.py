"""Dense metrics (evaluation.metrics): one global confusion matrix [target, prediction] == sklearn."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, jaccard_score, precision_recall_fscore_support

from evaluation.metrics import (
    build_confusion_matrix,
    class_key,
    dense_metrics,
    format_dense_metrics,
)


def _case(seed, k, n=3, h=17, w=23, absent=()):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, (n, h, w), generator=g)
    pred = torch.where(
        torch.rand(n, h, w, generator=g) < 0.6, target, torch.randint(0, k, (n, h, w), generator=g)
    )
    for c in absent:  # a class in neither target nor prediction
        target[target == c] = (c + 1) % k
        pred[pred == c] = (c + 1) % k
    target[torch.rand(n, h, w, generator=g) < 0.15] = 255  # ignored pixels
    return pred, target


def _nan_equal(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape
    assert np.array_equal(np.isnan(a), np.isnan(b)), (a, b)
    np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed,k,absent", [(0, 2, ()), (1, 5, ()), (2, 13, (3, 7)), (3, 4, (0,))])
def test_dense_metrics_equal_sklearn(seed, k, absent):
    pred, target = _case(seed, k, absent=absent)
    cm = build_confusion_matrix(k)
    cm.update(pred, target)
    matrix = cm.compute()
    keep = target != 255
    y_true, y_pred = target[keep].numpy(), pred[keep].numpy()
    labels = list(range(k))
    ref = confusion_matrix(y_true, y_pred, labels=labels)  # rows = target, columns = prediction
    assert np.array_equal(matrix.numpy(), ref)

    names = [f"class {i}" for i in range(k)]
    task = "change" if k == 2 else "segment"
    res = dense_metrics(matrix, names, task)
    keys = ["no_change", "change"] if task == "change" else [class_key(n) for n in names]
    p, r, f, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=np.nan
    )
    present = (np.bincount(y_true, minlength=k) + np.bincount(y_pred, minlength=k)) > 0
    iou = jaccard_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    iou = np.where(present, iou, np.nan)  # undefined (0/0) for a class in neither
    f = np.where(
        present, np.nan_to_num(f, nan=0.0), np.nan
    )  # F1 = 0 when P or R is 0/0 but the class exists
    _nan_equal([res[f"precision_{c}"] / 100 for c in keys], p)
    _nan_equal([res[f"recall_{c}"] / 100 for c in keys], r)
    _nan_equal([res[f"f1_{c}"] / 100 for c in keys], f)
    _nan_equal([res[f"iou_{c}"] / 100 for c in keys], iou)
    assert math.isclose(res["oa"] / 100, (y_true == y_pred).mean(), rel_tol=1e-12)
    assert math.isclose(res["miou"] / 100, np.nanmean(iou[present]), rel_tol=1e-12)
    assert res["absent_classes"] == [names[c] for c in sorted(absent)]
    assert res["pixels"] == keep.sum()
    if task == "segment" and k > 2:
        fg = present.copy()
        fg[0] = False
        assert math.isclose(res["miou_nobg"] / 100, iou[fg].mean(), rel_tol=1e-12)
    assert "mIoU" in format_dense_metrics(res, task) or "miou" in format_dense_metrics(res, task)


def test_change_metrics_named_and_paper_formulas():
    # tp 3, fp 1, fn 2, tn 4 (change = class 1)
    cm = torch.tensor([[4, 1], [2, 3]])
    res = dense_metrics(cm, ("no change", "change"), "change")
    assert math.isclose(res["precision_change"], 75.0)
    assert math.isclose(res["recall_change"], 60.0)
    assert math.isclose(res["f1_change"], 100 * 2 * 0.75 * 0.6 / 1.35)
    assert math.isclose(res["iou_change"], 50.0)
    assert math.isclose(res["oa"], 70.0)
    assert math.isclose(res["precision_no_change"], 100 * 4 / 6)  # the paper's precision_nc


def test_batchwise_accumulation_equals_one_batch():
    pred, target = _case(5, 6, n=8)
    whole = build_confusion_matrix(6)
    whole.update(pred, target)
    parts = build_confusion_matrix(6)
    for p, t in zip(pred.split(3), target.split(3)):
        parts.update(p, t)
    assert torch.equal(whole.compute(), parts.compute())
    assert dense_metrics(whole.compute()) == dense_metrics(parts.compute())
