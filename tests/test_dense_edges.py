"""downstream_tasks/train.py edges (issue 19 item 5): --skip_bad_samples skips and counts damaged
scenes (training crops and whole-scene evaluation), --eval writes next to the checkpoint and reads
the validation split the training run saved, scene figures are titled panels with a legend."""

import argparse
import json
import logging
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from downstream_tasks import train as dense_train
from downstream_tasks.dense_figures import save_scene_png, scene_figure
from util.data import SampleError
from util.data.synthetic import generate

TINY = (
    "--model change_detector_vit_tiny_patch8_128 --model_kwargs reduction=mean channels=64 "
    "--input_size 32 --device cpu --num_workers 0 --warmup_epochs 0 --print_freq 1000 "
    "--batch_size 4 --epochs 1 --max_steps_per_epoch 1 --class_weights none"
)
IMAGES = "Onera Satellite Change Detection dataset - Images"


def _args(argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(parents=[dense_train.get_args_parser()])
    return parser.parse_args(shlex.split(argv))


def _cities(root: Path, split: str) -> list[str]:
    return (root / IMAGES / f"{split}.txt").read_text().strip().split(",")


@pytest.fixture(scope="module")
def oscd_root(tmp_path_factory):
    # 6 cities of 32..50 px: 4 train, 2 test
    return generate("oscd", tmp_path_factory.mktemp("oscd"), num=6, size=40, seed=0)


@pytest.fixture(scope="module")
def trained(oscd_root, tmp_path_factory):
    """A one-step training run holding out one validation city (split seed 0)."""
    out = tmp_path_factory.mktemp("run")
    dense_train.main(_args(f"--task oscd --data_root {oscd_root} --output_dir {out} {TINY} "
                           "--val_cities 1 --vis_every 0 --vis_scenes 1"))  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------
# --skip_bad_samples
# --------------------------------------------------------------------------------------------
def test_skip_bad_samples_skips_and_counts_damaged_scenes(oscd_root, tmp_path, caplog):
    root = tmp_path / "oscd"
    shutil.copytree(oscd_root, root)
    bad_train, bad_test = _cities(root, "train")[1], _cities(root, "test")[0]
    # a training city whose header cannot be read, a test city whose date 2 cannot be
    (root / IMAGES / bad_train / "imgs_1_rect" / "B04.tif").write_bytes(b"not a tiff")
    (root / IMAGES / bad_test / "imgs_2_rect" / "B03.tif").write_bytes(b"II*\0garbage")
    argv = f"--task oscd --data_root {root} {TINY} --val_cities 0 --vis_scenes 0"
    with pytest.raises(SampleError, match="B04.tif"):  # without the flag: the file is named
        dense_train.main(_args(f"{argv} --output_dir {tmp_path / 'strict'}"))
    with caplog.at_level(logging.WARNING):
        res = dense_train.main(_args(f"{argv} --output_dir {tmp_path / 'out'} --skip_bad_samples"))
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"{bad_train}" in m and "skipping bad scene" in m for m in messages)
    assert any("replaced 1 bad samples" in m for m in messages), messages  # report_skipped
    # the test city is left out, not replaced by another (which would count twice)
    assert res["test"]["scenes"] == len(_cities(root, "test")) - 1
    assert any("left 1 bad scene(s) out of this evaluation" in m for m in messages)
    test = [json.loads(s) for s in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [r["scenes"] for r in test if r["type"] == "test"] == [res["test"]["scenes"]]


# --------------------------------------------------------------------------------------------
# --eval: where it writes, which split it reads
# --------------------------------------------------------------------------------------------
def test_eval_writes_next_to_the_checkpoint_and_reuses_the_saved_split(oscd_root, trained):
    log_before = (trained / "log.jsonl").read_text()
    args_before = (trained / "args.json").read_text()
    saved_val = (trained / "splits" / "val.txt").read_text()
    ckpt = trained / "checkpoint-best.pth"
    # other split flags than the training run's: the saved list wins
    argv = (f"--task oscd --data_root {oscd_root} --device cpu --num_workers 0 --eval "
            f"--eval_split val --resume {ckpt} --val_cities 2 --split_seed 7 --vis_scenes 1")  # fmt: skip
    res = dense_train.main(_args(argv))
    out = trained / "eval-val"
    assert Path(res["output_dir"]) == out and res["test"]["scenes"] == 1
    assert (out / "splits" / "val.txt").read_text() == saved_val
    assert len(list((out / "vis").glob("eval_val_*.png"))) == 1
    # --output_dir naming the training run's folder: a subfolder, the run's log untouched
    res = dense_train.main(_args(f"{argv} --output_dir {trained}"))
    assert Path(res["output_dir"]) == out
    assert (trained / "log.jsonl").read_text() == log_before
    assert (trained / "args.json").read_text() == args_before
    records = [json.loads(s) for s in (out / "log.jsonl").read_text().splitlines()]
    assert [r["type"] for r in records] == ["eval"]  # replaced, not appended to
    # a checkpoint moved away from its split lists: the split flags it recorded
    moved = trained.parent / "moved"
    moved.mkdir(exist_ok=True)
    shutil.copy(ckpt, moved / "best.pth")
    res = dense_train.main(_args(argv.replace(str(ckpt), str(moved / "best.pth"))))
    assert Path(res["output_dir"]) == moved / "eval-val"
    assert (moved / "eval-val" / "splits" / "val.txt").read_text() == saved_val


def test_eval_test_split_figures_one_per_scene_up_to_vis_scenes(oscd_root, trained, tmp_path):
    ckpt = trained / "checkpoint-best.pth"
    argv = (f"--task oscd --data_root {oscd_root} --device cpu --num_workers 0 --eval "
            f"--resume {ckpt} --output_dir {tmp_path / 'e'}")  # fmt: skip
    n_test = len(_cities(oscd_root, "test"))
    for vis, want in ((1, 1), (5, n_test)):
        shutil.rmtree(tmp_path / "e", ignore_errors=True)
        res = dense_train.main(_args(f"{argv} --vis_scenes {vis}"))
        assert Path(res["output_dir"]) == tmp_path / "e" and res["test"]["scenes"] == n_test
        assert len(list((tmp_path / "e" / "vis").glob("eval_test_*.png"))) == want


# --------------------------------------------------------------------------------------------
# scene figures
# --------------------------------------------------------------------------------------------
def _scene(h: int = 32, w: int = 40, k: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.randint(0, k, (h, w), generator=g)
    mask[:2] = 255  # unlabelled rows
    return mask, torch.randint(0, k, (h, w), generator=g)


def test_scene_figure_panels_titles_and_legend(tmp_path):
    import matplotlib.pyplot as plt

    mask, pred = _scene()
    fig = scene_figure(torch.rand(2, 12, 32, 40), mask, pred, "change", name="hongkong")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["date 1 (RGB)", "date 2 (RGB)", "truth", "prediction", "errors"]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"change", "no change", "errors: false alarm", "errors: missed change"} <= set(labels)
    assert "no label (ignored)" in labels
    assert fig._suptitle.get_text().startswith("hongkong: f1_change ")
    plt.close(fig)

    mask, pred = _scene(k=4, seed=1)
    names = ["background", "arable land", "pastures", "forests"]
    fig = scene_figure(torch.rand(12, 32, 40), mask, pred, "segment", names, name="00042")
    assert [ax.get_title() for ax in fig.axes] == ["image (RGB)", "truth", "prediction", "errors"]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert set(names) <= set(labels) and "errors: wrong" in labels
    plt.close(fig)

    # a tiny scene still gives a readable figure (panels at a fixed size, not scene pixels)
    path = save_scene_png(tmp_path / "s.png", torch.rand(2, 12, 16, 16), *_scene(16, 16), "change")
    width, height = Image.open(path).size
    assert width >= 5 * 300 and height >= 300
    assert np.asarray(Image.open(path).convert("L")).std() > 10  # not blank
