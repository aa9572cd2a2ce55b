"""Label-efficiency evaluation: kNN vs brute force, cached features vs the encoder, subsets, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from evaluation.label_efficiency import (
    build_classifier,
    dataset_options,
    extract_features,
    label_subsets,
    summarise,
)
from evaluation.label_efficiency_report import format_table
from evaluation.probes import fit_linear_probe, knn_scores, linear_probe_scores

SIZE = 16  # px: 2 x 2 spatial tokens x 4 spectral groups with patch 8


def _brute_force_knn(train, votes, test, k, t):
    """Reference: per test sample, cosine similarity to every training sample, sort, vote.

    ``votes`` ``(N, C)``: the classes each training sample votes for (one-hot or multi-hot).
    """
    out = np.zeros((len(test), votes.shape[1]))
    for i, q in enumerate(test):
        sims = [float(np.dot(q, x) / (np.linalg.norm(q) * np.linalg.norm(x))) for x in train]
        for j in sorted(range(len(train)), key=lambda j: -sims[j])[:k]:
            out[i] += math.exp(sims[j] / t) * votes[j]
    return out


@pytest.mark.parametrize("k", [5, 20, 100])  # 100 > number of training samples: all of them
def test_knn_equals_brute_force(k):
    g = torch.Generator().manual_seed(k)
    train = torch.randn(60, 16, generator=g, dtype=torch.float64)
    test = torch.randn(25, 16, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (60,), generator=g)
    got = knn_scores(train, labels, test, 4, k=k, temperature=0.07, chunk=7)
    onehot = np.eye(4)[labels.numpy()]
    ref = _brute_force_knn(train.numpy(), onehot, test.numpy(), min(k, 60), 0.07)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5)  # float32 similarities, exp(s / 0.07)
    assert torch.equal(got.argmax(1), torch.from_numpy(ref.argmax(1)))
    # multi-hot labels (BigEarthNet): a neighbour votes for each of its classes
    multi = onehot.copy()
    multi[::3, 0] = 1
    got = knn_scores(train, torch.from_numpy(multi), test, 4, k=k, temperature=0.07)
    ref = _brute_force_knn(train.numpy(), multi, test.numpy(), min(k, 60), 0.07)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5)  # float32 similarities, exp(s / 0.07)


def test_linear_probe_separates_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=g) * 3
    y = torch.arange(90) % 3
    x = centres[y] + torch.randn(90, 8, generator=g)
    a = linear_probe_scores(x[:60], y[:60], x[60:], 3)
    b = linear_probe_scores(x[:60], y[:60], x[60:], 3)
    assert torch.equal(a, b)
    assert (a.argmax(1) == y[60:]).float().mean() > 0.9


@pytest.fixture(scope="module")
def eurosat_root(tmp_path_factory):
    from util.data.synthetic import generate

    return generate("eurosat", tmp_path_factory.mktemp("eurosat"), num=40, size=SIZE, seed=0)


@pytest.fixture(scope="module")
def mae_checkpoint(tmp_path_factory):
    """A tiny MAE checkpoint as main_pretrain writes it (weights + args + data record)."""
    import models_mae_spectral
    from util.training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    mae = models_mae_spectral.create_model("mae_vit_tiny_patch8_96", img_size=SIZE)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint-last.pth"
    save_checkpoint(
        path,
        {
            "format": "spectralgpt-v1",
            "model": mae.state_dict(),
            "args": {"model": "mae_vit_tiny_patch8_96", "input_size": SIZE},
            "data": {"normalization": "minmax", "input_size": SIZE, "dataset": "fmow_sentinel"},
        },
    )
    return path, mae.eval()


def test_cached_features_equal_the_encoder_output(eurosat_root, mae_checkpoint):
    from util.data.datasets import build_dataset
    from util.data.transforms import build_transforms

    path, mae = mae_checkpoint
    ds = build_dataset(
        "eurosat", eurosat_root, split="train",
        transforms=build_transforms("eurosat", False, SIZE, "minmax"),
        **dataset_options("eurosat", SIZE),  # a 16 px copy (EuroSAT is published at 64 px)
    )  # fmt: skip
    net = build_classifier("mae_vit_tiny_patch8_96", SIZE, 10, checkpoint=path)
    feats, labels = extract_features(net, ds, batch_size=7)  # batches straddle samples
    assert feats.shape == (len(ds), 192) and labels.tolist() == list(ds.labels)
    with torch.no_grad():
        for i in (0, 5, len(ds) - 1):
            x = ds[i]["image"][None]
            tokens = mae.forward_blocks(mae.embed(x))  # the pretrained encoder itself
            np.testing.assert_allclose(
                feats[i].numpy(), mae.norm(tokens.mean(1))[0].numpy(), rtol=1e-4, atol=1e-5
            )
    # the finetune protocol's head starts from the probe (LP-FT): same logits as the probe
    w, b = fit_linear_probe(feats, labels, 10)
    ft_net = build_classifier("mae_vit_tiny_patch8_96", SIZE, 10, checkpoint=path, drop_path=0.1)
    with torch.no_grad():
        ft_net.head.weight.copy_(w)
        ft_net.head.bias.copy_(b)
        x = torch.stack([ds[i]["image"] for i in range(4)])
        np.testing.assert_allclose(
            ft_net.eval()(x).numpy(),
            linear_probe_scores(feats, labels, feats[:4], 10).numpy(),
            rtol=1e-4, atol=1e-4,
        )  # fmt: skip
    # random init is seeded: same seed, same features; another seed, others
    r0 = extract_features(build_classifier("mae_vit_tiny_patch8_96", SIZE, 10, seed=0), ds)[0]
    r0b = extract_features(build_classifier("mae_vit_tiny_patch8_96", SIZE, 10, seed=0), ds)[0]
    r1 = extract_features(build_classifier("mae_vit_tiny_patch8_96", SIZE, 10, seed=1), ds)[0]
    assert torch.equal(r0, r0b) and not torch.allclose(r0, r1)


def test_label_subsets_are_stratified_and_seeded():
    labels = np.repeat(np.arange(10), [50, 50, 50, 50, 50, 100, 100, 100, 200, 250])
    subsets = label_subsets(labels, (0.01, 0.1, 1.0), (0, 1))
    for (fraction, seed), idx in subsets.items():
        counts = np.bincount(labels[idx], minlength=10)
        want = fraction * np.bincount(labels)
        assert np.all(np.abs(counts - want) <= 1), (fraction, seed, counts, want)
        assert len(np.unique(idx)) == len(idx)
    assert len(subsets[(1.0, 0)]) == len(labels)
    again = label_subsets(labels, (0.1,), (0, 1))
    assert np.array_equal(again[(0.1, 0)], subsets[(0.1, 0)])
    assert not np.array_equal(subsets[(0.1, 0)], subsets[(0.1, 1)])


def test_summary_and_table():
    results = [
        {"init": i, "protocol": "knn", "fraction": 0.1, "seed": s, "value": v}
        for i, vals in (("pretrained", (60.0, 62.0, 64.0)), ("random", (40.0, 40.0, 40.0)))
        for s, v in enumerate(vals)
    ]
    rows = {r["init"]: r for r in summarise(results)}
    assert rows["pretrained"]["mean"] == 62.0 and rows["pretrained"]["std"] == 2.0
    assert rows["random"]["std"] == 0.0 and rows["random"]["n"] == 3
    table = format_table(list(rows.values()))
    assert "| knn | 10 % | 62.0 ± 2.0 | 40.0 ± 0.0 |" in table


def test_cli_writes_table_json_and_plot(eurosat_root, mae_checkpoint, tmp_path, capsys):
    from benchmarks.label_efficiency import cli

    path, _ = mae_checkpoint
    out = tmp_path / "res" / "label_eff.json"
    result = cli(
        [
            "--checkpoint", str(path), "--data_root", str(eurosat_root), "--native_size", str(SIZE),
            "--fractions", "50", "100", "--seeds", "2", "--seed", "3",
            "--ft_epochs", "1", "--ft_min_updates", "1", "--ft_max_updates", "2",
            "--ft_batch_size", "8", "--batch_size", "16", "--out", str(out),
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "note: features use minmax" in printed and "zscore_eurosat" in printed
    assert "| finetune | 50 % |" in printed and "±" in printed
    rows = json.loads(out.read_text())
    assert len(rows) == 2 * 3 * 2  # inits x protocols x fractions
    assert {r["init"] for r in rows} == {"pretrained", "random"}
    assert {r["protocol"] for r in rows} == {"knn", "linear", "finetune"}
    assert {r["fraction"] for r in rows} == {0.5, 1.0}
    for r in rows:
        assert set(r) >= {"init", "protocol", "fraction", "mean", "std"}
        assert 0.0 <= r["mean"] <= 100.0 and r["std"] >= 0.0 and r["n"] == 2
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    details = json.loads(out.with_name("label_eff.details.json").read_text())
    assert {r["seed"] for r in details["results"]} == {3, 4}
    assert result["setup"]["normalization"] == "minmax"


def test_cli_errors_name_the_flag(tmp_path, capsys):
    from benchmarks.label_efficiency import cli

    with pytest.raises(SystemExit) as err:
        cli(["--checkpoint", str(tmp_path / "nope.pth"), "--data_root", str(tmp_path)])
    assert err.value.code == 2 and "--checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["--data_root", str(tmp_path)])  # random init only: --model / --input_size needed
    assert "--model" in capsys.readouterr().err
