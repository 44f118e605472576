"""Blocks of ports held against every other swarm manager of this user on this machine.

Each task in flight gets a block of ports (``SWARM_PORT``); slots alone keep them apart within
one run, but two runs on two repositories would hand out the same blocks. A block is held as a
byte range of one file (its first port the offset, as many bytes as ports): POSIX record locks,
which the kernel drops when the process ends, however it ends, so a dead manager holds none.
A manager holds its locks on one descriptor it never closes (closing any descriptor of the
file would drop them all); its own blocks are told apart by its slots, not by the locks.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading

from worktree_swarm.infra import fs

_FILE = "ports.lock"


class PortClaims:
    """The blocks this process holds; without the shared file, every block is free."""

    def __init__(self) -> None:
        """Open this user's lock file (none: blocks are kept apart within the run only)."""
        self._fd: int | None = None
        self._lock = threading.Lock()
        folder = fs.user_folder()
        if folder is None:
            return
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        with contextlib.suppress(OSError):
            self._fd = os.open(folder / _FILE, flags, 0o600)

    def take(self, first: int, count: int) -> bool:
        """Hold ports *first* .. *first* + *count* - 1; False when another manager holds one."""
        if self._fd is None or count == 0:
            return True
        with self._lock:
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, count, first)
            except OSError:
                return False
        return True

    def give_back(self, first: int, count: int) -> None:
        """Let other managers have that block again."""
        if self._fd is None or count == 0:
            return
        with self._lock, contextlib.suppress(OSError):
            fcntl.lockf(self._fd, fcntl.LOCK_UN, count, first)

    def close(self) -> None:
        """Let go of every block (the manager's run is over)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
