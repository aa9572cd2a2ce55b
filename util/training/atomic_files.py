"""Crash-safe file writing: temp file in the target's folder, fsync, rename over the target.

A crash (even SIGKILL) at any moment leaves either the previous file or the new one, never a
truncated one; temp files a killed writer left behind are removed on the next write. New files
honour the process umask like ``open()`` does. A write that fails (full disk, quota, permissions;
also when the writer wraps the ``OSError`` in another exception, as ``torch.save`` does) removes
its temp file and raises :class:`AtomicWriteError`: one line naming the file, exit status 2.
Used for checkpoints (:func:`util.training.checkpoint.save_checkpoint`).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from util.training.cli import UserError

logger = logging.getLogger(__name__)

__all__ = ["AtomicWriteError", "atomic_alias", "atomic_write"]


class AtomicWriteError(UserError, OSError):
    """A file could not be written (full disk, quota, permissions, I/O error); the previous file
    at that path is intact and no temp file is left. One line naming the file (exit 2 through
    ``util.training.cli.run``); ``errno`` is the failed call's."""

    @classmethod
    def from_os_error(cls, path: Path, err: OSError, what: str = "file") -> AtomicWriteError:
        reason = err.strerror or str(err) or type(err).__name__
        kept = "the previous file is intact" if path.exists() else "nothing was written"
        hint = {
            errno.ENOSPC: "free disk space or pass another --output_dir",
            errno.EDQUOT: "free space within your quota or pass another --output_dir",
            errno.EACCES: "make the folder writable or pass another --output_dir",
            errno.EROFS: "pass an --output_dir on a writable file system",
        }.get(err.errno, "check the file system or pass another --output_dir")
        new = cls(f"cannot write {what} {path}: {reason} ({kept}); {hint}")
        new.errno = err.errno
        return new

    def __str__(self) -> str:  # the message alone (OSError would prefix "[Errno N]")
        return str(self.args[0]) if self.args else ""


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


def atomic_write(
    path: Path,
    write: Callable[[str], None],
    what: str = "file",
    error: type[AtomicWriteError] = AtomicWriteError,
) -> Path:
    """Run ``write(tmp)`` on a temp file next to ``path``, then rename it onto ``path``.

    ``what`` names the file in the log and error messages (e.g. ``"checkpoint"``). Any failure
    removes the temp file and leaves ``path`` as it was; a failed write (full disk, quota, a
    read-only or vanished folder - also when a writer such as ``torch.save`` reports it as a
    ``RuntimeError`` chained to the ``OSError``) raises ``error`` (:class:`AtomicWriteError`).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(path, what)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise error.from_os_error(path, e, what) from e
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; honour the umask like open()
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        cause = _os_error_in_chain(e)
        if cause is None or isinstance(e, AtomicWriteError):
            raise
        raise error.from_os_error(path, cause, what) from e
    _fsync_dir(path.parent)
    return path


def _os_error_in_chain(err: BaseException) -> OSError | None:
    """The ``OSError`` that ``err`` is or was raised from/during (``__cause__`` / ``__context__``)."""
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OSError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def atomic_alias(
    src: Path, dst: Path, what: str = "file", error: type[AtomicWriteError] = AtomicWriteError
) -> None:
    """Make ``dst`` a copy of ``src`` atomically (hard link when possible, no extra I/O)."""

    def write(tmp: str) -> None:
        os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:  # no hard links on this file system: copy
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())

    atomic_write(dst, write, what, error)
