"""How much disk a worktree uses: apparent size and blocks actually allocated, like ``du``.

The walk never follows symlinks (a ``link``-ed ``node_modules`` is a symlink, so it counts as
the link itself, not as the shared directory) and counts a file with several hard links once
per measurement. What the operating system does not tell is not counted as shared: extents a
file shares with another through a reflink (``FICLONE``, APFS clones) count in full for each
file, and blocks a file shares with the main checkout through a hard link count in full in the
worktree.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

# st_blocks is in 512-byte units on Linux and macOS whatever the file system's block size.
_BLOCK = 512


@dataclass(frozen=True, slots=True)
class DiskUsage:
    """Bytes of a tree: ``apparent`` (sum of sizes) and ``actual`` (allocated blocks)."""

    apparent: int = 0
    actual: int = 0

    def __add__(self, other: DiskUsage) -> DiskUsage:
        return DiskUsage(self.apparent + other.apparent, self.actual + other.actual)


ZERO = DiskUsage()

_Inode = tuple[int, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class Scan:
    """One tree measured: its singly-linked entries summed, hard-linked files by inode.

    Keeping the hard-linked files apart lets :func:`combine` count a file linked into several
    trees once, without walking them again.
    """

    single: DiskUsage = ZERO
    shared: dict[_Inode, DiskUsage] = field(default_factory=dict)

    @property
    def usage(self) -> DiskUsage:
        """The tree's total, each inode once."""
        return combine([self])


def scan(path: Path) -> Scan:
    """Measure *path* (a directory, file or symlink); a missing path measures zero."""
    single = [0, 0]
    shared: dict[_Inode, DiskUsage] = {}

    def add(st: os.stat_result) -> None:
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            shared[(st.st_dev, st.st_ino)] = DiskUsage(st.st_size, st.st_blocks * _BLOCK)
        else:
            single[0] += st.st_size
            single[1] += st.st_blocks * _BLOCK

    try:
        top = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return Scan()
    add(top)
    pending = [path] if stat.S_ISDIR(top.st_mode) else []
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:  # removed while we walked
                        continue
                    add(st)
                    if stat.S_ISDIR(st.st_mode):
                        pending.append(Path(entry.path))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            # Gone meanwhile, or unreadable (an agent's chmod 000): what is left is still counted.
            continue
    return Scan(single=DiskUsage(single[0], single[1]), shared=shared)


def combine(scans: Iterable[Scan]) -> DiskUsage:
    """The total of several scans, counting a file hard-linked into more than one once."""
    total = ZERO
    shared: dict[_Inode, DiskUsage] = {}
    for one in scans:
        total += one.single
        shared.update(one.shared)
    for usage in shared.values():
        total += usage
    return total


def usage(path: Path) -> DiskUsage:
    """Apparent and actual bytes under *path*; symlinks are not followed, zero when missing."""
    return scan(path).usage
