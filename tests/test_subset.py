"""Low-label subsets: seeded, stratified per class (multi-label aware), right size."""

import numpy as np
import pytest

from util.data.subset import as_multihot, stratified_subset


def _multilabel(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    p = np.array([0.4, 0.2, 0.05, 0.01, 0.005, 0.3, 0.1])
    return rng.random((n, len(p))) < p


def test_multilabel_subset_is_stratified_and_seeded():
    y = _multilabel()
    idx = stratified_subset(y, 0.1, seed=3)
    assert abs(len(idx) - 400) <= 2
    assert np.all(np.diff(idx) > 0)
    full, sub = y.sum(0), y[idx].sum(0)
    # every class, the rarest (about 20 positives) included, keeps 10 % of positives to +-1
    assert np.all(np.abs(sub - 0.1 * full) <= 1.0), (sub, full)
    assert np.array_equal(idx, stratified_subset(y, 0.1, seed=3))
    assert not np.array_equal(idx, stratified_subset(y, 0.1, seed=4))


def test_plain_random_sampling_would_not_be_this_even():
    # sanity check that the stratification test above has teeth
    y = _multilabel()
    rng = np.random.default_rng(0)
    worst = max(
        np.abs(y[rng.choice(len(y), 400, replace=False)].sum(0) - 0.1 * y.sum(0)).max()
        for _ in range(5)
    )
    assert worst > 1.0


def test_single_label_stratified():
    labels = np.repeat(np.arange(10), [100, 50, 30, 20, 200, 10, 40, 60, 70, 90])
    idx = stratified_subset(labels, 0.2, seed=0)
    counts = np.bincount(labels[idx], minlength=10)
    np.testing.assert_array_equal(counts, [20, 10, 6, 4, 40, 2, 8, 12, 14, 18])


def test_unlabelled_rows_fraction_one_and_errors():
    y = np.zeros((50, 3), dtype=bool)
    y[:10, 0] = True
    idx = stratified_subset(y, 0.5, seed=1)
    assert len(idx) == 25 and y[idx, 0].sum() == 5
    np.testing.assert_array_equal(stratified_subset(y, 1.0), np.arange(50))
    with pytest.raises(ValueError, match="fraction"):
        stratified_subset(y, 0.0)
    with pytest.raises(ValueError, match="shape"):
        as_multihot(np.zeros((2, 2, 2)))


def test_cli_writes_valid_index_files(tmp_path, capsys):
    """`python -m util.data.subset` on generator data writes lists that load as index files."""
    from util.data import build_dataset
    from util.data.subset import main
    from util.data.synthetic import generate

    ben = generate("bigearthnet", tmp_path / "ben", num=30, size=12, seed=0)
    main(["bigearthnet", str(ben), "--split", "train", "--fraction", "0.5", "--seed", "0",
          "--output", str(tmp_path / "ben.txt")])  # fmt: skip
    assert "kept" in capsys.readouterr().out
    sub = build_dataset("bigearthnet", ben, index=tmp_path / "ben.txt")
    full = build_dataset("bigearthnet", ben, split="train")
    assert set(sub.patches) <= set(full.patches) and 0 < len(sub) < len(full)

    euro = generate("eurosat", tmp_path / "euro", num=40, size=8, seed=0)
    main(["euro_sat", str(euro), "--index", str(euro / "train_euro_result.txt"),
          "--fraction", "0.5", "--output", str(tmp_path / "euro.txt")])  # fmt: skip
    sub = build_dataset("eurosat", euro, index=tmp_path / "euro.txt")
    full = build_dataset("eurosat", euro, index=euro / "train_euro_result.txt")
    pairs = set(zip(map(str, full.paths), full.labels))
    assert set(zip(map(str, sub.paths), sub.labels)) <= pairs
    assert abs(len(sub) - len(full) / 2) <= 1
