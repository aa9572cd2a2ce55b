"""One run per output folder (issue 19 item 4): a second live run gets one line naming the folder,
the other run and the fix; a lock left by a killed run is taken over; every rank stops."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from util.training import runlock
from util.training.cli import format_error
from util.training.runlock import LOCK_NAME, RunLock, RunLockError, read_lock_info

REPO = Path(__file__).resolve().parents[1]


def _holder(folder: Path) -> tuple[subprocess.Popen, int]:
    """Another process that takes the lock on ``folder``, forks a child that sleeps (as a
    DataLoader worker, which outlives a ``kill -9`` of its parent for a few seconds) and waits;
    returns the process and its child's pid."""
    code = textwrap.dedent(
        f"""
        import os, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from util.training.runlock import RunLock
        with RunLock({str(folder)!r}, distributed=False):
            started, ready = os.pipe()
            child = os.fork()
            if child == 0:  # runs after the fork hooks
                os.write(ready, b"1")
                time.sleep(120)
                os._exit(0)
            os.read(started, 1)
            print("locked", child, flush=True)
            time.sleep(120)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--output_dir", str(folder)], stdout=subprocess.PIPE, text=True
    )
    word, child = proc.stdout.readline().split()
    assert word == "locked"
    return proc, int(child)


def test_second_run_refused_then_stale_lock_taken_over(tmp_path, caplog):
    folder = tmp_path / "out"
    proc, child = _holder(folder)
    try:
        with pytest.raises(RunLockError) as e:
            RunLock(folder, distributed=False).acquire()
        line = format_error(e.value)
        assert "\n" not in line and line.startswith(f"error: --output_dir {folder}: another run")
        assert f"pid {proc.pid} on host {socket.gethostname()}" in line
        assert f"-c --output_dir {folder})" in line  # its command line
        assert line.endswith("wait for it to end or pass another --output_dir")
        # kill -9: the kernel drops the flock, the file (and its details) stays behind; the
        # forked child still runs, and holds no lock
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert read_lock_info(folder / LOCK_NAME)["pid"] == proc.pid
        with caplog.at_level(logging.INFO, logger="util.training.runlock"):
            with RunLock(folder, distributed=False) as lock:
                assert lock.held and read_lock_info(lock.path)["pid"] == os.getpid()
                os.kill(child, 0)  # still alive
    finally:
        if proc.poll() is None:
            proc.kill()
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert f"taking over the lock left by a run that is no longer running (pid {proc.pid}" in (
        caplog.text
    )
    assert not (folder / LOCK_NAME).exists()  # released: removed


def test_lock_released_on_error_and_reusable(tmp_path):
    with pytest.raises(ZeroDivisionError), RunLock(tmp_path, distributed=False):
        raise ZeroDivisionError
    assert not (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path, distributed=False):
        with pytest.raises(RunLockError, match=f"pid {os.getpid()}"):
            RunLock(tmp_path, distributed=False).acquire()  # same process, second open file


def test_without_file_locks_the_contents_decide(tmp_path, monkeypatch):
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    path = tmp_path / LOCK_NAME
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)  # fmt: skip
    info = {"pid": int(dead.stdout), "host": socket.gethostname(), "start": "then"}
    path.write_text(json.dumps(info))
    with RunLock(tmp_path, distributed=False):  # dead pid on this host: taken over
        assert read_lock_info(path)["pid"] == os.getpid()
    alive = dict(info, pid=os.getppid())
    path.write_text(json.dumps(alive))
    with pytest.raises(RunLockError, match=f"pid {os.getppid()} on host"):
        RunLock(tmp_path, distributed=False).acquire()
    path.write_text(json.dumps(dict(info, host="another-node")))
    with pytest.raises(RunLockError, match=f"if it has ended delete {path}"):
        RunLock(tmp_path, distributed=False).acquire()


def _rank_worker(rank: int, world: int, port: int, folders: list[str], out) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for folder in folders:
            try:
                with RunLock(folder):
                    out.put((rank, folder, "ran"))
            except RunLockError as e:
                out.put((rank, folder, str(e)))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refusal_reaches_every_rank(tmp_path):
    """Two ranks (gloo): on a folder another run holds both raise the same error (only rank 0
    looked); on a free folder both go ahead."""
    held, free = str(tmp_path / "held"), str(tmp_path / "free")
    out = mp.get_context("fork").SimpleQueue()
    with RunLock(held, distributed=False):  # "the other run"
        mp.start_processes(
            _rank_worker, args=(2, _free_port(), [held, free], out), nprocs=2, start_method="fork"
        )
    results = {}
    while not out.empty():
        rank, folder, outcome = out.get()
        results[rank, folder] = outcome
    assert len(results) == 4
    assert results[0, held] == results[1, held] and f"pid {os.getpid()}" in results[0, held]
    assert results[0, free] == results[1, free] == "ran"


def test_rank_world_without_process_group(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    assert runlock._rank_world() == (3, 1)
