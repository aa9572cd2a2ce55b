"""Crash-safe file writing: temp file in the target's folder, fsync, rename over the target.

A crash (even SIGKILL) at any moment leaves either the previous file or the new one, never a
truncated one; temp files a killed writer left behind are removed on the next write. New files
honour the process umask like ``open()`` does. Used for checkpoints
(:func:`util.training.checkpoint.save_checkpoint`).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["atomic_alias", "atomic_write"]


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask (read by setting and restoring it; there is no getter before 3.13)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}."


def _remove_stale_tmp(path: Path, what: str) -> None:
    """Delete temp files left next to ``path`` by a writer that was killed mid-write."""
    for stale in path.parent.glob(_tmp_prefix(path) + "*.tmp"):
        try:
            stale.unlink()
            logger.info("removed an incomplete %s write: %s", what, stale)
        except OSError:
            pass


def atomic_write(path: Path, write: Callable[[str], None], what: str = "file") -> Path:
    """Run ``write(tmp)`` on a temp file next to ``path``, then rename it onto ``path``.

    ``what`` names the file in the log and error messages (e.g. ``"checkpoint"``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(path, what)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; honour the umask like open()
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EFBIG):
            raise OSError(
                e.errno, f"cannot write {what} {path}: {e.strerror} (nothing was replaced)"
            ) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_alias(src: Path, dst: Path, what: str = "file") -> None:
    """Make ``dst`` a copy of ``src`` atomically (hard link when possible, no extra I/O)."""

    def write(tmp: str) -> None:
        os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:  # no hard links on this file system: copy
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())

    atomic_write(dst, write, what)
