"""Faults in the manager itself: a full disk pauses it, a bug in a thread leaves a traceback.

When the state database cannot be written (no space, an I/O error), every write waits and
retries instead of killing the manager with agents left unrecorded: launching pauses because
the run loop is waiting too. Since the database is what cannot take the reason, it goes to a
file of the run's directory that was given its blocks when the run started (``paused.json``,
rewritten in place), where `swarm status` reads it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from worktree_swarm.core.errors import CommandError, SwarmError
from worktree_swarm.core.text import one_line, without_escapes
from worktree_swarm.infra import fs, interrupts, proc

_T = TypeVar("_T")
_NO_SPACE = "No space left on device"
# Git's ways of saying so (the second from its index and pack writer).
_FULL_TEXTS = (_NO_SPACE, "Out of diskspace", "Disk quota exceeded")

MANAGER_LOG = "manager.log"
PAUSE_FILE = "paused.json"
_PAUSE_SIZE = 4096
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})
_RETRY_MIN, _RETRY_MAX = 0.5, 5.0


class DiskFullError(SwarmError):
    """The state (or a log) cannot be written: the disk is full or failing."""


def is_full(exc: BaseException) -> bool:
    """Whether *exc* says the disk is full or failing (not a bug or a busy database)."""
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return "disk is full" in text or "disk i/o error" in text
    if isinstance(exc, CommandError):  # git: "fatal: ...: No space left on device"
        return exc.full or any(text in exc.output for text in _FULL_TEXTS)
    return isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS


def is_locked(exc: BaseException) -> bool:
    """Whether *exc* is SQLite's: another connection held the write lock past the timeout."""
    return isinstance(exc, sqlite3.OperationalError) and "database is locked" in str(exc).lower()


def why(exc: BaseException, at: Path | None = None) -> str:
    """What a full disk said: ``No space left on device``, ``database or disk is full``.

    SQLite says only ``disk I/O error`` when it cannot grow its shared-memory file: that is
    told as the full disk it is where the file system of *at* has (nearly) no room left.
    """
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    if isinstance(exc, CommandError):
        return f"`{' '.join(_command(exc.argv))}`: {_NO_SPACE}"
    text = str(exc)
    if at is not None and "disk i/o error" in text.lower() and fs.nearly_full(at):
        return f"{_NO_SPACE} (SQLite: {text})"
    return text


def _command(argv: list[str]) -> list[str]:
    """The program and its subcommand (``git reset``), past any ``-c key=value``."""
    at = 1
    while at < len(argv) and argv[at] == "-c":
        at += 2
    return argv[:1] + argv[at : at + 1]


_RESUME = "then run `swarm resume`"


def full_message(what: object, exc: BaseException, at: Path | None = None) -> str:
    """One line for a full disk, naming what could not be written (at *at*) and what to do."""
    return f"cannot write {what}: {why(exc, at)}; free some space, {_RESUME}"


def retry_with(message: str, command: str | None) -> str:
    """A full disk's *message* for `swarm COMMAND`: run it again, not `swarm resume`.

    `swarm resume` carries on a run; after a `swarm merge` (or clean) it finds nothing to do,
    and after a `swarm run` that failed so (before its manager took over, which pauses) no
    run of that command, or the one before.
    """
    if command is None or command == "resume":
        return message
    if command == "run":  # a started run's manager pauses instead: this one never started
        return message.replace(_RESUME, "then run the same command again")
    return message.replace(_RESUME, f"then run `swarm {command}` again")


def retry_while_full(
    action: Callable[[], _T], on_full: Callable[[Exception | None], None] | None
) -> _T:
    """Run *action*; while it fails for a full disk, let *on_full* wait, then run it again."""
    failed = False
    while True:
        try:
            result = action()
        except (CommandError, OSError, sqlite3.OperationalError) as exc:
            if on_full is None or not is_full(exc):
                raise
            failed = True
            on_full(exc)
            continue
        if failed and on_full is not None:
            on_full(None)
        return result


class Pause:
    """Wait out a full disk: records why in the run's pause file, retries with backoff."""

    def __init__(self, run_dir: Path, *, stopping: threading.Event | None = None) -> None:
        self.path = run_dir / PAUSE_FILE
        self._stopping = stopping or threading.Event()
        self._lock = threading.Lock()
        self._since: float | None = None
        self._delay = _RETRY_MIN
        with contextlib.suppress(OSError):  # no room even now: status just cannot say why
            run_dir.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(b" " * _PAUSE_SIZE)

    def wait(self, exc: Exception | None) -> None:
        """Called by the store: *exc* after a failed write (then sleep), None once one works."""
        with self._lock:
            if exc is None:
                self._since, self._delay = None, _RETRY_MIN
                self._write({})
                return
            if self._since is None:
                self._since = time.time()
            delay = self._delay
            self._delay = min(_RETRY_MAX, self._delay * 2)
            reason = (
                "paused: another program holds the state database's write lock; retrying"
                if is_locked(exc)
                else f"paused: the disk is full ({why(exc)}); retrying"
            )
            self._write({"reason": reason, "since": self._since})
        interrupts.wait(self._stopping, delay)  # a run's stop signal ends its main thread's

    def _write(self, data: dict[str, object]) -> None:
        payload = json.dumps(data).encode() if data else b""
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_WRONLY)
            try:
                os.pwrite(fd, payload.ljust(_PAUSE_SIZE)[:_PAUSE_SIZE], 0)
            finally:
                os.close(fd)


def paused_reason(run_dir: Path) -> str | None:
    """Why the run's manager is paused right now (a full disk), or None."""
    try:
        text = fs.read_text(run_dir / PAUSE_FILE).strip()
        data = json.loads(text) if text else {}
    except (OSError, ValueError):
        return None
    reason = data.get("reason") if isinstance(data, dict) else None
    # An error's text (a path in it, maybe an agent's file name), shown by `swarm status` and
    # `swarm watch`: one printable line, no escape of it reaches a terminal.
    return one_line(without_escapes(reason), controls=True) if isinstance(reason, str) else None


def record_exception(log: Path, where: str) -> bool:
    """Append the exception being handled, with its traceback, to *log*: whether it could."""
    return _append(log, where, traceback.format_exc())


def thread_hook(log: Path) -> Callable[[threading.ExceptHookArgs], None]:
    """A ``threading.excepthook`` writing any thread's uncaught exception to *log*."""

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        text = "".join(
            traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)
        )
        name = args.thread.name if args.thread is not None else "a thread"
        _append(log, name, text)

    return hook


def note(log: Path, text: str) -> None:
    """Append a stamped line that is no error (what the manager waits for) to *log*."""
    _write_entry(log, f"{_stamp()} {text}\n", text)


def _stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())


def _append(log: Path, where: str, text: str) -> bool:
    last = text.rstrip().rpartition("\n")[2]  # the exception itself: `OSError: [Errno 24] ...`
    return _write_entry(
        log, f"{_stamp()} internal error in {where}\n{text}\n", f"internal error in {where}: {last}"
    )


def _write_entry(log: Path, entry: str, line: str) -> bool:
    """Append *entry* to *log*; where that fails, *line* (what it says, in one line) to stderr.

    Then the disk or the open-file limit refuses the log: stderr gets one line saying so, as
    every error of swarm's, never the traceback the entry may hold.
    """
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_append(log) as fh:
            fh.write(entry)
    except OSError as exc:
        refused = exc.strerror or str(exc)
        limit = proc.system_limit(exc.errno)
        if limit is not None:
            refused = f"{refused}, a system limit ({limit})"
        said = one_line(without_escapes(line), controls=True)
        sys.stderr.write(f"swarm: {said}; cannot write it to {log}: {refused}\n")
        return False
    return True
