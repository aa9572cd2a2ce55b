"""Writes that fail, fail (issue 19 item 3): a checkpoint save on a full disk is one ``error:``
line naming the file, exit status 2, the previous checkpoint intact and no temp file left."""

from __future__ import annotations

import errno
import io
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from util.training import atomic_files
from util.training.checkpoint import CheckpointError, save_checkpoint
from util.training.cli import run

_real_save = torch.save


class _FullDisk(io.RawIOBase):
    """A writable stream that takes ``room`` bytes, then fails like a full disk."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(b)
        return self.f.write(b)


def _save_until_full(room: int):
    """``torch.save`` that really serialises, onto a disk with ``room`` bytes left."""

    def save(obj, f, *args, **kwargs):
        return _real_save(obj, _FullDisk(f, room), *args, **kwargs)

    return save


@pytest.mark.parametrize("room", [0, 300, 5000])
def test_disk_full_mid_save_keeps_previous_checkpoint(tmp_path, monkeypatch, room):
    target = tmp_path / "checkpoint-last.pth"
    save_checkpoint(target, {"version": 1, "w": torch.arange(4.0)})
    before = target.read_bytes()
    monkeypatch.setattr(torch, "save", _save_until_full(room))
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(target, {"version": 2, "w": torch.randn(50_000)})
    msg = str(e.value)
    assert "\n" not in msg and str(target) in msg and "No space left on device" in msg
    assert "previous file is intact" in msg and "--output_dir" in msg
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC
    assert target.read_bytes() == before  # the previous checkpoint, byte for byte
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-last.pth"]  # no temp file
    assert torch.load(target, weights_only=True)["version"] == 1


def test_torch_reports_full_disk_as_runtime_error(tmp_path):
    """What the fix handles: torch's writer turns the OSError into a chained RuntimeError."""
    with open(tmp_path / "x", "wb") as f, pytest.raises(RuntimeError) as e:
        _real_save({"w": torch.randn(50_000)}, _FullDisk(f, 300))
    assert atomic_files._os_error_in_chain(e.value).errno == errno.ENOSPC


def test_disk_full_is_one_error_line_and_exit_2(tmp_path, monkeypatch, capsys):
    target = tmp_path / "run" / "checkpoint-3.pth"
    monkeypatch.setattr(torch, "save", _save_until_full(100))
    with pytest.raises(SystemExit) as e:
        run(save_checkpoint, target, {"w": torch.randn(50_000)}, debug=False)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot write checkpoint ")
    assert str(target) in err[0] and "nothing was written" in err[0]
    assert not list(target.parent.iterdir())


def test_unwritable_folder_is_a_user_error(tmp_path, monkeypatch):
    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(atomic_files.tempfile, "mkstemp", denied)
    with pytest.raises(
        CheckpointError, match=r"cannot write checkpoint .*c\.pth: Permission denied"
    ):
        save_checkpoint(tmp_path / "c.pth", {})


def test_bugs_are_not_disguised_as_write_errors(tmp_path, monkeypatch):
    def bug(*a, **k):
        raise TypeError("not a disk problem")

    monkeypatch.setattr(torch, "save", bug)
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "c.pth", {})
    assert not list(tmp_path.iterdir())


def test_real_write_past_a_file_size_limit(tmp_path):
    """No patching: a child process whose files may not exceed 1 MB (RLIMIT_FSIZE, SIGXFSZ
    ignored: writes fail with EFBIG as on a full disk) saves a 4 MB checkpoint over a small one
    through the real torch.save and the exit-2 error path."""
    repo = Path(__file__).resolve().parents[1]
    target = tmp_path / "checkpoint-last.pth"
    code = textwrap.dedent(
        f"""
        import resource, signal, sys
        sys.path.insert(0, {str(repo)!r})
        import torch
        from util.training.checkpoint import save_checkpoint
        from util.training.cli import run
        save_checkpoint({str(target)!r}, {{"version": 1}})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
        run(save_checkpoint, {str(target)!r}, {{"version": 2, "w": torch.zeros(1 << 20)}})
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot write checkpoint {target}: ")
    assert "File too large (the previous file is intact)" in lines[0]
    assert torch.load(target, weights_only=True) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-last.pth"]
