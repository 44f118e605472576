"""Setuid and setgid files in the git dir: found by a walk of all of it, and disarmed.

git makes none. The walk covers objects too, so it is made after each attempt and at the
end, not on every scan of the surface.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from worktree_swarm.guard.surface_entry import SHARED_WRITE, label_of, path_of
from worktree_swarm.infra import fs

SETUID_BITS = fs.SETUID_BITS
_OWN_DIR = "swarm"  # swarm's own state (the guard's held objects): not git's, not walked


def setuid_files(common: Path) -> dict[str, int]:
    """Every file in *common* with a setuid or setgid bit (label -> its bits); git makes none.

    A walk of the whole git dir, objects included (but swarm's own ``swarm/``): made after
    each attempt and at the end, not on every scan.
    """
    found: dict[str, int] = {}
    stack = [os.fspath(common)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:  # gone, or unreadable: its bits are watched
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if entry.path != f"{common}/{_OWN_DIR}":
                    stack.append(entry.path)
                continue
            with contextlib.suppress(OSError):
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISREG(mode) and mode & SETUID_BITS:
                    found[label_of(common, Path(entry.path))] = stat.S_IMODE(mode)
    return found


def disarm(common: Path, labels: Iterable[str]) -> None:
    """Take the setuid and setgid bits (and group and other write) off each of *labels*.

    The file is kept: it may be one of git's (an object, a reflog) made setuid, and deleted
    it would take your history with it; without those bits it runs as whoever runs it.
    """
    for label in labels:
        fs.set_mode(path_of(common, label), lambda bits: bits & ~(SETUID_BITS | SHARED_WRITE))
