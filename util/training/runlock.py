"""One run per output folder: a lock file in ``--output_dir`` that a second run cannot take.

Two runs writing one folder interleave their checkpoints, ``args.json`` and ``log.jsonl`` (or die
on each other's temp files), and both report success. :class:`RunLock` stops the second one with
one line naming the folder, the other run (pid, host, start time, command) and the fix.

How the lock is held: ``OUTPUT_DIR/run.lock`` is opened (created if needed) and locked with
``fcntl.flock(LOCK_EX | LOCK_NB)``. The kernel drops a flock when its holder exits in any way
(``kill -9``, OOM killer, a preempted job), so a lock can never go stale; a lock file left by a
dead run is simply taken over, with a log line naming the run that left it. A flock belongs to
the open file, which forked children share: children forked while the lock is held (DataLoader
workers, which outlive a ``kill -9`` of the trainer by seconds) close their copy at once, so
the lock dies with the process that took it. ``O_CREAT | O_EXCL``
alone would leave a file behind after every ``kill -9`` and need guessing (pid alive? same host?)
to recover. The file holds the holder's pid, host, start time and command line (JSON) for the
error message only; it is removed when the run ends (after re-checking that the path still is the
locked file, so a run that opened the old file retries on the new one).

File systems: flock is coherent across hosts on local disks and NFSv4 / NFSv3 with lockd (Linux
emulates it with a whole-file POSIX lock). On a file system without lock support (flock fails
with ENOLCK / EOPNOTSUPP, e.g. NFS mounted ``nolock``, some FUSE mounts) the file's contents
decide: a lock of a live process on this host, or of any process on another host (whose liveness
cannot be checked), is refused, naming the file to delete if that run is over; a dead process's
lock on this host is taken over.

Under ``torchrun`` only rank 0 takes the lock; the outcome is broadcast (when the process group
is up) so that a refused lock raises the same :class:`RunLockError` on every rank, which
``util.training.cli.run`` turns into exit status 2 everywhere and one printed line.

Usage::

    with RunLock(args.output_dir):        # after init_distributed, before writing anything
        train(...)
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import shlex
import socket
import sys
from pathlib import Path
from typing import Any

from util.training.cli import UserError

logger = logging.getLogger(__name__)

__all__ = ["LOCK_NAME", "RunLock", "RunLockError", "read_lock_info"]

LOCK_NAME = "run.lock"
#: flock errors meaning "this file system cannot lock", not "someone holds the lock"
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
#: descriptors of the locks this process holds (closed in forked children, see the module doc)
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    """``os.fork`` hook (child side): drop this process's copies of the held lock files."""
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


class RunLockError(UserError):
    """Another run holds the output folder (one line: folder, the other run, the fix)."""


def _my_info() -> dict[str, Any]:
    command = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command[:500],
    }


def read_lock_info(path: str | os.PathLike) -> dict[str, Any]:
    """The holder recorded in a lock file (``{}`` when empty, missing or unreadable)."""
    try:
        info = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _describe(info: dict[str, Any]) -> str:
    if not info:
        return "a run that recorded no details"
    text = f"pid {info.get('pid', '?')} on host {info.get('host', '?')}"
    if info.get("start"):
        text += f", started {info['start']}"
    if info.get("command"):
        cmd = str(info["command"])
        text += f": {cmd if len(cmd) <= 160 else cmd[:157] + '...'}"
    return text


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """Exclusive use of ``output_dir`` by this run (a context manager; see the module docstring).

    Args:
        output_dir: the run's output folder (created if missing).
        distributed: ``None`` (default): only rank 0 (``RANK`` unset or 0) locks, and the result
            is broadcast when ``torch.distributed`` is initialised with several ranks, so every
            rank raises on a refusal. ``False``: lock in this process whatever its rank.
        flag: the flag named in the error's fix (``--output_dir``).

    Raises:
        RunLockError: on entry, when another live run holds the folder.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        distributed: bool | None = None,
        flag: str = "--output_dir",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_NAME
        self.distributed = distributed
        self.flag = flag
        self._fd: int | None = None
        self._flocked = False
        self._pid = os.getpid()  # the process that holds it (a forked child has only a copy)

    # -- public --------------------------------------------------------------------------------
    @property
    def held(self) -> bool:
        """True while this process holds the lock."""
        return self._fd is not None and self._pid == os.getpid()

    def acquire(self) -> RunLock:
        """Take the lock (rank 0) and share the outcome with every rank; see the class doc."""
        rank, world = _rank_world() if self.distributed is not False else (0, 1)
        error: str | None = None
        if rank == 0:
            try:
                self._acquire_local()
            except RunLockError as e:
                error = str(e)
        if world > 1:
            error = _broadcast_from_rank0(error)
        if error is not None:
            raise RunLockError(error)
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (no-op when not held, e.g. in a forked child)."""
        if not self.held:
            return
        try:
            if _same_file(self._fd, self.path):
                self.path.unlink(missing_ok=True)  # while still locked: see _acquire_local
        except OSError as e:
            logger.warning("could not remove %s: %s", self.path, e)
        finally:
            _HELD.discard(self._fd)
            os.close(self._fd)  # drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- local locking -------------------------------------------------------------------------
    def _refuse(self, info: dict[str, Any], why: str = "") -> RunLockError:
        return RunLockError(
            f"{self.flag} {self.output_dir}: another run is using this folder ({_describe(info)})"
            f"{why}; wait for it to end or pass another {self.flag}"
        )

    def _acquire_local(self) -> None:
        import fcntl

        self.output_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(100):  # a retry only when a releasing run removed the file under us
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._flocked = True
            except BlockingIOError:
                os.close(fd)
                raise self._refuse(read_lock_info(self.path)) from None
            except OSError as e:
                if e.errno not in _NO_LOCKING:
                    os.close(fd)
                    raise
                self._flocked = False
                logger.warning(
                    "%s: this file system does not support file locks (%s); relying on the "
                    "lock file's contents",
                    self.path,
                    e.strerror,
                )
            if self._flocked and not _same_file(fd, self.path):
                os.close(fd)  # the previous holder removed it after we opened it: try again
                continue
            try:
                self._take(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd, self._pid = fd, os.getpid()
            _HELD.add(fd)
            return
        raise RunLockError(f"{self.path}: could not take the run lock (it keeps being replaced)")

    def _take(self, fd: int) -> None:
        """We may own the file: check a previous holder, then write our details."""
        previous = read_lock_info(self.path)
        if previous and not self._flocked:
            same_host = previous.get("host") == socket.gethostname()
            if not same_host:
                raise self._refuse(
                    previous,
                    f" - this file system has no file locks, so whether it still runs cannot be "
                    f"checked; if it has ended delete {self.path}",
                )
            if _pid_alive(previous.get("pid")) and previous.get("pid") != os.getpid():
                raise self._refuse(previous)
        if previous:
            logger.info(
                "%s: taking over the lock left by a run that is no longer running (%s)",
                self.path,
                _describe(previous),
            )
        data = json.dumps(_my_info()).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _rank_world() -> tuple[int, int]:
    """(rank, world size) of the process group if initialised, else from torchrun's environment
    (world 1: without a process group there is nothing to broadcast over)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    return int(os.environ.get("RANK", "0") or 0), 1


def _broadcast_from_rank0(error: str | None) -> str | None:
    import torch.distributed as dist

    box = [error]
    dist.broadcast_object_list(box, src=0)
    return box[0]
