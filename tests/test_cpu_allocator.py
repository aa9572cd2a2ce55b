"""util.training.runtime.keep_freed_memory: freed activations are reused, not faulted in again every step."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from util.training.runtime import keep_freed_memory

ROOT = Path(__file__).resolve().parents[1]


def _glibc() -> bool:
    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
    except (OSError, AttributeError):
        return False
    return True


def _faults_of_later_steps(keep: bool) -> int:
    """Minor page faults of steps 11-13 of a process that allocates, fills and frees 324 MB per step
    (the first steps lay out the heap; it settles within about 6 steps)."""
    code = textwrap.dedent(
        f"""
        import resource, torch
        from util.training.runtime import keep_freed_memory
        print(keep_freed_memory() if {keep} else None)
        def step():  # activations of a few sizes, all above glibc's 32 MB mmap threshold
            xs = [torch.ones(n, 1024, 1024) for n in (16, 24, 9, 32)]  # 324 MB
            del xs
        for _ in range(10):
            step()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            step()
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux") or not _glibc(), reason="glibc only")
def test_freed_memory_is_reused_without_page_faults():
    # 324 MB = 82944 pages of 4 KiB: glibc's default maps them afresh on every step
    assert _faults_of_later_steps(keep=False) > 3 * 30_000
    assert _faults_of_later_steps(keep=True) < 1_000


def test_user_allocator_choice_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "65536")
    assert keep_freed_memory() is False
    monkeypatch.delenv("MALLOC_MMAP_MAX_")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert keep_freed_memory() is False
