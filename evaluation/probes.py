"""Classifiers on frozen features: weighted k-nearest neighbours and a linear probe.

Both take cached features ``(N, D)`` and labels (class ids ``(N,)`` or multi-hot ``(N, C)``) and
return class scores for test features; they know nothing of models or datasets.

* :func:`knn_scores` - cosine similarity, top-``k`` neighbours weighted by ``exp(similarity / T)``
  (Wu et al. 2018, as in DINO's evaluation).
* :func:`fit_linear_probe` / :func:`linear_probe_scores` - standardised features (MAE's BatchNorm
  without affine, in inference form), cross-entropy (multi-label: BCE) plus scikit-learn's
  ``LogisticRegression`` L2 penalty, full-batch L-BFGS.

References:
    Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance Discrimination", 2018.
    Caron et al., DINO (facebookresearch/dino, eval_knn.py) - the weighted kNN protocol.
    He et al., MAE - linear probing with a BatchNorm (no affine) + linear head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["fit_linear_probe", "knn_scores", "linear_probe_scores"]


def knn_scores(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 4096,
) -> torch.Tensor:
    """Weighted kNN class scores ``(N_test, C)``: cosine similarity, top-``k``, ``exp(sim / T)``.

    ``train_labels`` are class ids ``(N,)`` or multi-hot ``(N, C)``; a neighbour adds its weight to
    each of its classes. ``k`` is capped at the number of training samples.
    """
    train = F.normalize(train_feats.float(), dim=1)
    test = F.normalize(test_feats.float(), dim=1)
    if train_labels.ndim == 1:
        onehot = F.one_hot(train_labels.long(), num_classes).float()
    else:
        onehot = train_labels.float()
    k = min(k, train.shape[0])
    out = []
    for start in range(0, test.shape[0], chunk):
        sim = test[start : start + chunk] @ train.T
        top, idx = sim.topk(k, dim=1)
        weights = (top / temperature).exp()
        out.append(torch.einsum("nk,nkc->nc", weights, onehot[idx]))
    return torch.cat(out) if out else torch.zeros(0, num_classes)


def fit_linear_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
    c: float = 1.0,
    max_iter: int = 200,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit a linear classifier on cached features; returns ``(weight (C, D), bias (C,))`` float32.

    Features are standardised with the training subset's statistics (MAE's BatchNorm without
    affine, in inference form), then ``W, b`` minimise the mean cross-entropy (multi-label: BCE)
    plus ``||W||^2 / (2 C N)`` - scikit-learn's ``LogisticRegression`` objective - with full-batch
    L-BFGS (strong Wolfe line search). The standardisation is folded into the returned weights,
    so they apply to raw features (and can initialise a classifier's ``head``). Deterministic.
    """
    x = train_feats.double()
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    x = (x - mean) / std
    multilabel = train_labels.ndim == 2
    y = train_labels.double() if multilabel else train_labels.long()
    lin = nn.Linear(x.shape[1], num_classes, dtype=torch.float64)
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(
        lin.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
        tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe",
    )  # fmt: skip
    penalty = 1.0 / (2.0 * c * x.shape[0])

    def closure():
        opt.zero_grad()
        logits = lin(x)
        if multilabel:
            loss = F.binary_cross_entropy_with_logits(logits, y)
        else:
            loss = F.cross_entropy(logits, y)
        loss = loss + penalty * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        weight = lin.weight / std
        bias = lin.bias - weight @ mean
    return weight.float(), bias.float()


def linear_probe_scores(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    num_classes: int,
    c: float = 1.0,
    max_iter: int = 200,
) -> torch.Tensor:
    """Logits ``(N_test, C)`` of :func:`fit_linear_probe` fitted on the training features."""
    weight, bias = fit_linear_probe(train_feats, train_labels, num_classes, c, max_iter)
    return (test_feats.double() @ weight.double().T + bias.double()).float()
