"""Multi-node rendezvous, tested on one machine: 2 "nodes" x 1 process train exactly like 1 node x 2.

Two ``torchrun`` launchers (one per "node") meet through the c10d rendezvous in exactly the form
the SLURM template of ``docs/gpu.md`` runs on each node::

    torchrun --nnodes 2 --nproc_per_node 1 --rdzv_id ID --rdzv_backend c10d \
        --rdzv_endpoint localhost:PORT main_pretrain.py ...

(on a cluster the endpoint is the first node's host name). Each launcher starts one
``main_pretrain`` process on CPU (gloo); the two form one world of 2 and train a few steps on
synthetic fMoW-Sentinel data. The reference is one launcher with 2 processes (``--standalone``).
Both worlds hold the same ranks and data shards and gloo sums the two gradients (``a + b`` is
``b + a`` in floating point), whichever launcher's process becomes rank 0, so the checkpoints
must be bit-identical.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300  # per launch; a healthy run takes well under a minute


def _free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pretrain_argv(data: Path, out: Path) -> list[str]:
    """A few pretraining steps: 2 images per process and micro-step, 2 micro-steps per update."""
    return shlex.split(
        f"main_pretrain.py --model mae_vit_tiny_patch8_96 --input_size 16 --dataset_type sentinel "
        f"--train_path {data} --output_dir {out} --batch_size 2 --accum_iter 2 --epochs 1 "
        "--num_workers 0 --device cpu --blr 1e-3 --mask_ratio 0.75 --print_freq 2 --no_augment "
        "--vis_every 0 --seed 3 --warmup_epochs 0.5"
    )


def _launch(torchrun_args: list[str], argv: list[str], log: Path) -> subprocess.Popen:
    """Start ``torchrun ARGS main_pretrain.py ...`` in its own process group, output to ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args, *argv]
    with open(log, "w") as f:
        return subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait_all(procs: list[subprocess.Popen], logs: list[Path]) -> None:
    """Wait for every launcher; on timeout or failure end them (and their workers) and report."""
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline:
                raise AssertionError(f"torchrun launchers still running after {TIMEOUT_S} s")
            if any(p.returncode not in (None, 0) for p in procs):
                break  # one failed: the other would wait for its peer until timeout
            time.sleep(0.5)
    finally:
        for p in procs:  # each launcher leads its own process group: its workers go with it
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    tails = "\n".join(f"--- {log.name} ---\n{log.read_text()[-3000:]}" for log in logs)
    assert all(p.returncode == 0 for p in procs), tails


@pytest.fixture(scope="module")
def fmow(tmp_path_factory):
    from util.data.synthetic import generate

    return generate("fmow_sentinel", tmp_path_factory.mktemp("fmow"), num=24, size=24, seed=0)


@pytest.mark.slow
def test_two_nodes_by_c10d_rendezvous_equal_one_node_two_processes(fmow, tmp_path):
    one = tmp_path / "one_node"
    _wait_all(
        [
            _launch(
                ["--standalone", "--nproc_per_node", "2"],
                _pretrain_argv(fmow, one),
                tmp_path / "one.log",
            )
        ],  # fmt: skip
        [tmp_path / "one.log"],
    )

    two = tmp_path / "two_nodes"
    rdzv = [
        "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_id", f"test-{os.getpid()}",
        "--rdzv_backend", "c10d", "--rdzv_endpoint", f"localhost:{_free_port()}",
    ]  # fmt: skip
    logs = [tmp_path / f"node{i}.log" for i in range(2)]
    _wait_all([_launch(rdzv, _pretrain_argv(fmow, two), log) for log in logs], logs)

    a = torch.load(one / "checkpoint-0.pth", weights_only=True)
    b = torch.load(two / "checkpoint-0.pth", weights_only=True)
    assert a["args"]["world_size"] == b["args"]["world_size"] == 2
    assert a["global_step"] == b["global_step"] >= 2
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for s, t in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(s[k], t[k]) for k in s)
