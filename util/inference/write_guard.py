"""Raster writes that fail, fail: GDAL errors raise, partial outputs are removed, inputs are safe.

rasterio raises when a ``write()`` call fails, but errors of GDAL's *deferred* writes (block
cache flushes at ``close()``, overview building on an ``r+`` dataset, directory rewrites) are only
logged (``GDAL signalled an error``), so a full disk left a corrupt file and exit status 0.
:func:`guard_writes` records every GDAL error signalled while its block runs and raises
:class:`RasterWriteError` (a user error: one ``error:`` line naming the file, exit 2) after
removing the partial outputs; :func:`check_output_paths` refuses an output that is one of the
inputs (``--output`` = ``--input``) or another output.

Usage (``util.inference.predict._run``)::

    with guard_writes([output, probabilities_path, qml]):
        ... GeoTiffWriter(...).write_rows(...) ... writer.close()   # overviews included
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from util.training.cli import UserError

__all__ = ["RasterWriteError", "check_output_paths", "guard_writes"]

#: loggers rasterio's CPL error handlers report GDAL's errors to
_GDAL_LOGGERS = ("rasterio._err", "rasterio._env")
_MARK = "GDAL signalled an error"


class RasterWriteError(UserError):
    """A raster output could not be written completely (its partial file was removed)."""


class _Recorder(logging.Handler):
    """Keeps the GDAL errors rasterio logs (any level) while a guard is active."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if _MARK in msg:
            self.errors.append(msg.split("msg=", 1)[-1].strip("'\" "))


def _free_mb(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(path.parent).free / 2**20:.0f} MB free there"
    except OSError:
        return "its folder is not reachable"


@contextmanager
def guard_writes(paths: Iterable[str | os.PathLike | None]) -> Iterator[None]:
    """Fail the block when GDAL signals an error, and remove the partial ``paths``.

    Any exception in the block (a rasterio write error included) also removes ``paths``; GDAL
    and OS write errors become :class:`RasterWriteError` naming the first path, GDAL's message
    and the free space. While the guard is active, GDAL error records do not reach the other log
    handlers (the raised error carries the message).
    """
    files = [Path(p) for p in paths if p is not None]
    recorder = _Recorder()
    saved = []
    for name in _GDAL_LOGGERS:
        lg = logging.getLogger(name)
        saved.append((lg, lg.level, lg.propagate))
        lg.addHandler(recorder)
        lg.setLevel(logging.DEBUG)
        lg.propagate = False
    try:
        try:
            yield
        finally:
            for lg, level, propagate in saved:
                lg.removeHandler(recorder)
                lg.setLevel(level)
                lg.propagate = propagate
        if recorder.errors:
            raise RasterWriteError(_message(files, recorder.errors))
    except BaseException as err:
        for f in files:
            f.unlink(missing_ok=True)
        if isinstance(err, UserError) or not isinstance(err, OSError):
            raise
        raise RasterWriteError(_message(files, recorder.errors, err)) from err


def _message(files: list[Path], errors: list[str], err: BaseException | None = None) -> str:
    where = files[0] if files else "the output"
    # the most telling GDAL message: a write/space error if any (libtiff reports a few follow-ups)
    telling = [e for e in errors if any(w in e.lower() for w in ("write", "space", "disk"))]
    why = (telling or errors)[0] if errors else str(err)
    if err is not None and getattr(err, "strerror", None):
        why = f"{err.strerror}; GDAL: {why}" if errors else err.strerror
    elif errors:
        why = f"GDAL: {why}"
    room = _free_mb(files[0]) if files else ""
    return (
        f"cannot write {where}: {why} ({room}); the partial output was removed. Free disk "
        "space or write elsewhere (--output)"
    )


def check_output_paths(
    outputs: Mapping[str, str | os.PathLike | None], inputs: Iterable[str | os.PathLike]
) -> None:
    """Refuse an output that is an input file or another output: ``outputs`` maps flag -> path
    (``None``: not written), ``inputs`` are the files read (e.g. every band file of the scene,
    ``Scene.sources``).

    Raises:
        ValueError: naming the flag and the file.
    """
    read = [Path(p) for p in inputs]
    seen: dict[Path, str] = {}
    for flag, out in outputs.items():
        if out is None:
            continue
        target = Path(out)
        for src in read:
            if _same(target, src):
                raise ValueError(
                    f"{flag} {target} is the input file {src}: it would be overwritten while it "
                    f"is read; write to another file"
                )
        key = target.resolve()
        if key in seen:
            raise ValueError(f"{flag} {target} is also {seen[key]}; give each output its own file")
        seen[key] = flag


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()
