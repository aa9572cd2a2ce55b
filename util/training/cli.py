"""Command-line plumbing shared by every entry point: user errors become one line and exit code 2.

A *user error* is a problem with what the user gave us (a missing or unreadable file, a bad flag
value, a corrupt checkpoint, a permission or disk-full error, a diverged run): it is printed as one
``error: ...`` line that names the file or flag, and the process exits with status 2. Anything else
is a bug and keeps its traceback. ``--debug`` (or ``SPECTRALGPT_DEBUG=1``) shows the traceback of
user errors too. Under ``torchrun`` only rank 0 prints (every rank exits with 2), so a config error
seen by all 8 processes is reported once; every rank also writes the line to torchrun's error file
(``TORCHELASTIC_ERROR_FILE``), so the launcher's failure summary ends with the same ``error:`` line
(its root-cause entry) instead of "To enable traceback see ...".

Usage in an entry point::

    def get_args_parser():
        parser = argparse.ArgumentParser("...")
        ...
        add_debug_arg(parser)
        return parser

    def cli(argv=None):
        return parse_and_run(get_args_parser(), main, argv)

This module imports nothing heavy (no torch), so library modules may derive their error classes
from :class:`UserError`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: longest message printed on the one error line (state-dict mismatches can run to pages)
MAX_MESSAGE = 600


class UserError(RuntimeError):
    """Base of errors caused by the user's input (files, flags, data); reported in one line.

    Subclasses: ``util.data.errors.SampleError`` (and its named errors), ``util.training.checkpoint.CheckpointError``.
    It derives from ``RuntimeError`` so existing ``except RuntimeError`` handlers still catch it.
    """


#: exception types reported as one line. ``ValueError`` covers bad flag values (and
#: ``IndexFileError``), ``OSError`` missing files, permissions and a full disk,
#: ``FloatingPointError`` a diverged run (``util.training.optim.NonFiniteLossError``).
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, OSError, FloatingPointError)


def add_debug_arg(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--debug`` (full tracebacks, debug logging) to ``parser``; returns the parser."""
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of errors (and debug log messages)",
    )
    return parser


def is_main_rank() -> bool:
    """Rank 0 of a ``torchrun`` launch (read from the environment), or a plain process."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def format_error(err: BaseException) -> str:
    """``error: <message>`` on one line (long messages shortened).

    An error re-raised from a DataLoader worker carries the worker's traceback; its last line
    (``package.Type: message``) is the message.
    """
    text = str(err)
    if "Original Traceback" in text:
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        head, sep, tail = last.partition(": ")
        text = tail if sep and " " not in head else last
    msg = " ".join(text.split()) or type(err).__name__
    if isinstance(err, OSError) and err.filename and str(err.filename) not in msg:
        msg = f"{err.filename}: {msg}"
    if len(msg) > MAX_MESSAGE:
        msg = msg[: MAX_MESSAGE - 3] + "... (rerun with --debug for the whole message)"
    return f"error: {msg}"


def is_user_error(err: BaseException) -> bool:
    """True for the exception types of :data:`USER_ERRORS`."""
    return isinstance(err, USER_ERRORS)


def record_for_torchrun(line: str) -> None:
    """Write ``line`` to torchrun's per-worker error file, if this process runs under torchrun.

    torchrun reads ``TORCHELASTIC_ERROR_FILE`` (the JSON its own ``@record`` writes) when a worker
    exits non-zero and prints the earliest failure's ``py_callstack`` as the root cause of its summary:
    here the ``error:`` line itself.
    """
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    try:
        with open(path, "w") as fp:
            info = {"py_callstack": line, "timestamp": str(int(time.time()))}
            json.dump({"message": {"message": line, "extraInfo": info}}, fp)
    except OSError:  # the launcher's temp folder is gone: the exit status still says it
        pass


def run(fn: Callable[..., T], *fn_args: Any, debug: bool | None = None, **fn_kwargs: Any) -> T:
    """Call ``fn(*fn_args, **fn_kwargs)``; a user error becomes one line on stderr and exit 2.

    ``debug`` defaults to ``fn_args[0].debug`` when the first argument is a parsed namespace, else
    to the ``SPECTRALGPT_DEBUG`` environment variable. With debug on, errors propagate unchanged.
    """
    if debug is None:
        first = fn_args[0] if fn_args else None
        debug = (
            bool(getattr(first, "debug", False)) if isinstance(first, argparse.Namespace) else False
        )
    debug = debug or os.environ.get("SPECTRALGPT_DEBUG", "") not in ("", "0")
    try:
        return fn(*fn_args, **fn_kwargs)
    except KeyboardInterrupt:
        if debug:
            raise
        if is_main_rank():
            print("interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except Exception as err:
        if debug or not is_user_error(err):
            raise
        line = format_error(err)
        record_for_torchrun(line)
        if is_main_rank():
            print(line, file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def parse_and_run(
    parser: argparse.ArgumentParser, fn: Callable[[argparse.Namespace], T], argv: list[str] | None
) -> T:
    """An entry point's ``cli``: parse ``argv`` (None: ``sys.argv``) with ``parser`` (which has
    ``--debug``, :func:`add_debug_arg`), set up logging and :func:`run` ``fn(args)``."""
    args = parser.parse_args(argv)
    setup_logging(args.debug)
    return run(fn, args)


def setup_logging(debug: bool = False) -> None:
    """INFO-level (DEBUG with ``--debug``) timestamped log lines to stderr; quiet on ranks > 0."""
    level = logging.DEBUG if debug else logging.INFO
    if not is_main_rank():
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s")
