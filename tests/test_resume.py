"""Exact resume of the three trainers (issue 17).

A run stopped after N optimiser steps (``--stop_after_steps``) and continued with
``--auto_resume`` -- in a FRESH process, or in this one -- or killed with SIGKILL mid-epoch
(``--save_every_steps 1``) and continued, ends with the same weights and optimiser state (max abs
difference 0.0) and the same ``log.jsonl`` lines (each step once) as an uninterrupted run. The
uninterrupted reference uses ``--num_workers 0``, the interrupted runs 2 and 0 in turn, so results
do not depend on the worker count either; finetuning has mixup, cutmix and drop path on; one
finetuning check runs on 2 gloo processes under torchrun.
Tiny models, synthetic data in the official layouts.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # fresh processes and torchrun: the suite starts these first

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {
    "pretrain": "main_pretrain.py",
    "finetune": "main_finetune.py",
    "dense": "downstream_tasks/train.py",
}
FLAGS = {
    # 10 images, batch 2, accum 2: 2 updates per epoch
    "pretrain": "--model mae_vit_tiny_patch8_96 --input_size 16 --dataset_type sentinel "
    "--train_path {root} --batch_size 2 --accum_iter 2 --epochs 2 --warmup_epochs 1 --blr 1e-3 "
    "--mask_ratio 0.75 --vis_every 0",
    # 24 images, batch 4, 5 updates per epoch; mixup + cutmix + drop path + label smoothing
    "finetune": "--model vit_tiny_patch8_96 --input_size 16 --native_size 16 --dataset_type eurosat "
    "--train_path {root} --test_path {root} --batch_size 4 --epochs 2 --warmup_epochs 1 "
    "--lr 1e-3 --mixup 0.8 --cutmix 1.0 --drop_path 0.1 --max_steps_per_epoch 5 --save_every 100",
    # 3 training cities -> 27 random crops, 4 updates per epoch; drop path; validation at the end
    "dense": "--task oscd --data_root {root} --model change_detector_vit_tiny_patch8_128 "
    "--model_kwargs reduction=mean channels=64 --input_size 32 --batch_size 4 --epochs 2 "
    "--max_steps_per_epoch 4 --warmup_epochs 0 --val_cities 1 --eval_every 2 --no_test "
    "--vis_scenes 0 --vis_every 0 --drop_path 0.1",
}
#: where the stopped runs stop: mid-epoch, in the second epoch (pretrain, finetune) or the first
STOP = {"pretrain": 3, "finetune": 7, "dense": 2}
TOTAL = {"pretrain": 4, "finetune": 10, "dense": 8}  # optimiser steps of a whole run
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    from util.data.synthetic import generate

    base = tmp_path_factory.mktemp("resume-data")
    return {
        "pretrain": generate("fmow_sentinel", base / "fmow", num=16, size=24, seed=0),
        "finetune": generate("eurosat", base / "eurosat", num=40, size=16, seed=0),
        "dense": generate("oscd", base / "oscd", num=6, size=48, seed=0),
    }


def _argv(trainer: str, roots, out: Path, workers: int, extra: str = "") -> list[str]:
    flags = FLAGS[trainer].format(root=roots[trainer])
    common = f"--device cpu --print_freq 1 --num_workers {workers} --output_dir {out}"
    return shlex.split(f"{flags} {common} {extra}")


def _in_process(trainer: str, argv: list[str]) -> dict:
    if trainer == "dense":
        from downstream_tasks import train as module

        parser = argparse.ArgumentParser(parents=[module.get_args_parser()])
    else:
        module = __import__(SCRIPTS[trainer].removesuffix(".py"))
        parser = module.get_args_parser()
    return module.main(parser.parse_args(argv))


def _fresh_process(trainer: str, argv: list[str]) -> None:
    cmd = [sys.executable, str(REPO / SCRIPTS[trainer]), *argv]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _max_diffs(a_dir: Path, b_dir: Path) -> tuple[float, float]:
    """Max abs differences of weights and optimiser state between two runs' last checkpoints."""
    a = torch.load(a_dir / "checkpoint-last.pth", weights_only=True)
    b = torch.load(b_dir / "checkpoint-last.pth", weights_only=True)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    assert "loop" not in a and "loop" not in b  # both finished
    assert a["model"].keys() == b["model"].keys()
    weights = max(float((a["model"][k] - b["model"][k]).abs().max()) for k in a["model"])
    states = [
        (s, b["optimizer"]["state"][i][key])
        for i, per in a["optimizer"]["state"].items()
        for key, s in per.items()
    ]
    optim = max(float((x.double() - y.double()).abs().max()) for x, y in states)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]  # lr schedule too
    print(f"{b_dir}: step {b['global_step']}, max abs diff weights {weights}, optimiser {optim}")
    return weights, optim


def _log_lines(out: Path) -> list[tuple]:
    """``log.jsonl`` of a run as (type, epoch, batch, step) per line, resume records left out."""
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    keys = ("type", "epoch", "batch", "step")
    return [tuple(r.get(k) for k in keys) for r in records if r["type"] != "resume"]


def _assert_same_run(trainer: str, straight: Path, out: Path) -> None:
    """Weights and optimiser state equal to the uninterrupted run's (0.0), and ``log.jsonl``
    holding each step line once, as the uninterrupted run wrote them (``--print_freq 1``)."""
    weights, optim = _max_diffs(straight, out)
    assert (weights, optim) == (0.0, 0.0)
    lines = _log_lines(out)
    assert sum(t == "step" for t, *_ in lines) >= TOTAL[trainer]
    assert lines == _log_lines(straight)


@pytest.fixture(scope="module")
def straight(roots, tmp_path_factory):
    """The uninterrupted reference run of each trainer (``--num_workers 0``), made once."""
    done: dict[str, Path] = {}

    def get(trainer: str) -> Path:
        if trainer not in done:
            out = tmp_path_factory.mktemp(f"straight-{trainer}")
            _in_process(trainer, _argv(trainer, roots, out, 0))
            done[trainer] = out
        return done[trainer]

    return get


@pytest.mark.parametrize(
    "stop_workers, resume_workers, fresh",
    [(2, 0, True), (0, 2, False)],
    ids=["workers2-then-fresh-process-workers0", "workers0-then-workers2"],
)
@pytest.mark.parametrize("trainer", ["pretrain", "finetune", "dense"])
def test_stop_then_resume_is_exact(
    trainer, stop_workers, resume_workers, fresh, roots, straight, tmp_path
):
    """Stopped mid-epoch by --stop_after_steps, continued by --auto_resume (in a fresh process,
    or in this one): the uninterrupted run's weights and optimiser state, whatever the
    --num_workers of either part (the reference uses 0)."""
    out = tmp_path / "run"
    stop = f"--stop_after_steps {STOP[trainer]}"
    assert _in_process(trainer, _argv(trainer, roots, out, stop_workers, stop))["stopped"]
    ckpt = torch.load(out / "checkpoint-last.pth", weights_only=True)
    assert ckpt["global_step"] == STOP[trainer] and ckpt["loop"]["batches"] > 0  # mid-epoch
    resume = _argv(trainer, roots, out, resume_workers, "--auto_resume")
    _fresh_process(trainer, resume) if fresh else _in_process(trainer, resume)
    _assert_same_run(trainer, straight(trainer), out)


@pytest.mark.parametrize("trainer", ["finetune", "dense"])
def test_kill_9_mid_epoch_then_auto_resume_is_exact(trainer, roots, straight, tmp_path):
    out = tmp_path / "killed"
    argv = _argv(trainer, roots, out, 2, "--save_every_steps 1")
    cmd = [sys.executable, str(REPO / SCRIPTS[trainer]), *argv]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    last, deadline = out / "checkpoint-last.pth", time.monotonic() + 240
    try:
        while not last.exists():  # the first mid-epoch checkpoint (after one optimiser step)
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed, not finished
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] < TOTAL[trainer]  # (almost always mid-epoch: see ckpt["loop"])
    _in_process(trainer, _argv(trainer, roots, out, 0, "--auto_resume"))
    _assert_same_run(trainer, straight(trainer), out)


def test_torchrun_two_processes_stop_then_resume_is_exact(roots, tmp_path):
    """Finetuning (mixup, cutmix, drop path) on 2 gloo processes: stopped mid-epoch, resumed by a
    fresh launch, equal to the uninterrupted 2-process run."""
    flags = (
        FLAGS["finetune"].format(root=roots["finetune"]).replace("--batch_size 4", "--batch_size 2")
    )
    flags += " --device cpu --print_freq 100 --num_workers 0 --output_dir {out} {extra}"
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
    ]
    for cmd in (
        [*torchrun, str(REPO / "tests" / "_resume_worker.py"), str(tmp_path), "7", flags],
        [*torchrun, str(REPO / "main_finetune.py"),
         *shlex.split(flags.format(out=tmp_path / "stopped", extra="--auto_resume"))],
    ):  # fmt: skip
        proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "stopped" / "checkpoint-last.pth", weights_only=True)
    assert len(ckpt["rng"]) == 2 and ckpt["args"]["world_size"] == 2
    weights, optim = _max_diffs(tmp_path / "straight", tmp_path / "stopped")
    assert (weights, optim) == (0.0, 0.0)
