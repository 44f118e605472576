"""Named pipes a process is stuck on, read from ``/proc`` (Linux).

Opening a named pipe (a FIFO) waits until something opens its other end, and reading one
waits while its writer stays silent: a FIFO planted where git reads a file (``.gitignore``, a
loose ref, ``info/exclude``) stops git for ever, and with it whatever waits for git. Git never
makes or opens one itself, so a git process found in either state is stuck on a planted one.
"""

from __future__ import annotations

import contextlib
import os
import platform
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

# What a process blocked opening a FIFO sleeps in (``fifo_open`` on kernels before 4.x).
_OPENING = frozenset({"wait_for_partner", "fifo_open"})
# Per machine: syscall number -> which argument is the path, for open(2) and its kin.
_PATH_ARGUMENT = {
    "x86_64": {2: 0, 257: 1, 437: 1},  # open, openat, openat2
    "aarch64": {56: 1, 437: 1},  # openat, openat2
}
_AT_FDCWD = -100
_PATH_BYTES = 4096


def stuck_on(pid: int) -> str | None:
    """The named pipe process *pid* or one of its descendants is opening or holds, or None.

    Named by its path where ``/proc`` tells it (the path being opened is read from the
    process's own memory, which a parent may read), else ``a named pipe``. None where there is
    no ``/proc`` or the process is gone.
    """
    try:
        family = [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    except psutil.Error:
        return None
    for member in family:
        found = _opening(member) or _holding(member)
        if found is not None:
            return found
    return None


def _opening(pid: int) -> str | None:
    """The FIFO *pid* waits to open (its path, or ``a named pipe``), or None."""
    try:
        with open(f"/proc/{pid}/wchan", encoding="ascii", errors="replace") as fh:  # noqa: PTH123
            waiting = fh.read().strip()
    except OSError:
        return None
    if waiting not in _OPENING:
        return None
    return _path_being_opened(pid) or "a named pipe"


def _path_being_opened(pid: int) -> str | None:
    """The path argument of the open call *pid* is in, made absolute, or None."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open(f"/proc/{pid}/syscall", encoding="ascii") as fh:  # noqa: PTH123
            fields = fh.read().split()
        which = _PATH_ARGUMENT.get(platform.machine(), {}).get(int(fields[0]))
        if which is None:
            return None
        address = int(fields[1 + which], 16)
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        try:
            raw = os.pread(fd, _PATH_BYTES, address).split(b"\0", 1)[0]
        finally:
            os.close(fd)
        name = os.fsdecode(raw)
        if name.startswith("/"):
            return name
        dirfd = int(fields[1], 16) if which == 1 else _AT_FDCWD
        if dirfd >= 2**31:  # AT_FDCWD as the kernel shows it: unsigned
            dirfd -= 2**32
        base = "cwd" if dirfd == _AT_FDCWD else f"fd/{dirfd}"
        return os.path.join(os.readlink(f"/proc/{pid}/{base}"), name)  # noqa: PTH115, PTH118
    return None


def _holding(pid: int) -> str | None:
    """A FIFO *pid* opened by its name (an anonymous pipe has none), or None."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        entries = os.listdir(fds)  # noqa: PTH208
    except OSError:
        return None
    for entry in entries:
        with contextlib.suppress(OSError):
            target = os.readlink(fds / entry)  # noqa: PTH115
            if target.startswith("/") and stat.S_ISFIFO(os.stat(fds / entry).st_mode):  # noqa: PTH116
                return target
    return None


@dataclass(slots=True)
class Watched:
    """A process under watch; *pipe* says what it was stopped for (None: not stopped)."""

    proc: subprocess.Popen[bytes]
    started: float
    pipe: str | None = None


# How long a process runs before it is looked at, and then between looks: a look reads a few
# /proc files, and most git commands end well before the first.
LOOK_SECONDS = 1.0


class _Watch:
    """One thread that stops every watched process found stuck on a named pipe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[int, Watched] = {}
        self._busy = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, proc: subprocess.Popen[bytes]) -> Watched:
        watched = Watched(proc=proc, started=time.monotonic())
        with self._lock:
            self._watched[id(watched)] = watched
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="swarm-pipes", daemon=True)
                self._thread.start()
        self._busy.set()
        return watched

    def remove(self, watched: Watched) -> None:
        with self._lock:
            self._watched.pop(id(watched), None)

    def _loop(self) -> None:
        while True:
            self._busy.wait()
            time.sleep(LOOK_SECONDS)
            with self._lock:
                watched = list(self._watched.values())
                if not watched:
                    self._busy.clear()
            due = time.monotonic() - LOOK_SECONDS
            for one in watched:
                if one.started <= due and one.pipe is None and one.proc.poll() is None:
                    pipe = stuck_on(one.proc.pid)
                    if pipe is not None:
                        one.pipe = pipe
                        _stop(one.proc)


_WATCH = _Watch()


@contextlib.contextmanager
def watching(proc: subprocess.Popen[bytes]) -> Iterator[Watched]:
    """Watch *proc* while the block runs: stopped (and its ``pipe`` set) if a FIFO holds it."""
    watched = _WATCH.add(proc)
    try:
        yield watched
    finally:
        _WATCH.remove(watched)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill *proc* and what it started (git's own children: a pack, a transport)."""
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
    proc.kill()
