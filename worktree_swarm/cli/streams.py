"""The process's own output streams: never a crash on what it writes, nor on who reads it.

A closed stdout or stderr gets /dev/null, a pipe whose reader went away takes the rest
quietly (:func:`reader_gone` tells a command that follows a log to stop), and any text is
written, escaped where the encoding cannot spell it.
"""

from __future__ import annotations

import io
import os
import select
import stat
import sys
import threading

_gone = threading.Event()  # a stdout or stderr pipe's reader went away
_pipes: list[int] = []  # the descriptors of those pipes
_hung_up = threading.Event()  # the terminal closed (SIGHUP)


def note_hang_up() -> None:
    """Note that the terminal closed (a SIGHUP handler's, which sets an event and no more)."""
    _hung_up.set()


def hung_up() -> bool:
    """Whether the terminal closed: what swarm would tell the user there is left unsaid."""
    return _hung_up.is_set()


def reader_gone() -> bool:
    """Whether the reader of swarm's stdout or stderr pipe went away (``| head -1``).

    Known at once, not only at the next write: a follower of a quiet log stops as well.
    """
    if not _gone.is_set() and _pipes:
        poll = select.poll()
        for fd in _pipes:
            poll.register(fd, 0)  # POLLERR comes unasked: the pipe's read end is closed
        if any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0)):
            _gone.set()
    return _gone.is_set()


def closed_output_to_null() -> None:
    """Give a closed stdout or stderr (``swarm status >&-``) /dev/null: what it says goes nowhere.

    Python leaves such a stream None, which every command that printed crashed on. Nor is
    the descriptor left closed: the next file swarm opened would take its number, and what a
    child writes to its stdout would land in that file.
    """
    for fd, name in ((1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is not None:
            continue
        null = os.open(os.devnull, os.O_WRONLY)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        stream = open(fd, "w", encoding="utf-8", closefd=False)  # noqa: SIM115 - for the process
        setattr(sys, name, stream)


class _ToNullWhenGone(io.RawIOBase):
    """Writes to a pipe's descriptor; once its reader is gone, to /dev/null (in its place)."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def write(self, data: object) -> int:
        view = memoryview(data)  # type: ignore[arg-type]  # a bytes-like object, as io passes
        try:
            return os.write(self._fd, view)
        except BrokenPipeError:  # `swarm logs x | head -1`: the rest goes nowhere
            _gone.set()
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._fd)  # a child writing there too: nowhere as well
            os.close(null)
            return len(view)


def gone_reader_to_null() -> None:
    """Make a stdout or stderr pipe whose reader goes away take the rest quietly.

    A command whose output no one reads any more (``| head -1``) goes on as if it were read:
    without this, the next write's broken pipe stopped it midway (click exits 1 on it),
    which for ``swarm logs`` read as the log's failure.
    """
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not getattr(sys, f"__{name}__") or not isinstance(stream, io.TextIOWrapper):
            continue  # a test's capture, or already replaced
        try:
            mode = os.fstat(stream.fileno()).st_mode
        except (OSError, ValueError):
            continue
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            continue
        stream.flush()
        raw = _ToNullWhenGone(stream.fileno())
        wrapped = io.TextIOWrapper(
            io.BufferedWriter(raw),
            encoding=stream.encoding,
            errors=stream.errors,
            line_buffering=stream.line_buffering,
        )
        _pipes.append(stream.fileno())
        setattr(sys, name, wrapped)  # sys.__stdout__ keeps the old one: it would close the fd


def output_takes_any_text() -> None:
    """Make stdout and stderr write what their encoding cannot spell escaped, never crash on it.

    A file name kept as surrogates, or an agent's `é` where the locale is C (whose streams
    take surrogates only) or Latin-1 (no `文`): the run's manager died on such a line.
    """
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors != "backslashreplace":
            stream.reconfigure(errors="backslashreplace")
