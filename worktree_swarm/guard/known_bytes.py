"""The bytes of the surface's files, read again only when their stat data changed.

Every scan reads git's own files again; most of them are unchanged since the last read. A
write through a shared map into a page already written stamps no time: the reads after each
attempt and the last one forget what is kept first (:func:`forget`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from worktree_swarm.infra import fs

# The bytes of files read before, by path: (stat data, bytes). Every scan reads the surface
# again (the hooks git's samples fill alone are ~15 files), most of it unchanged.
_KNOWN: dict[str, tuple[tuple[int, ...], bytes]] = {}
_KNOWN_MAX = 4096
# A file changed this close before it was read may change again within the same tick of the
# coarse clock that stamps it: not kept (git's "racily clean" files).
RACY_NS = 2_000_000_000


def read(path: Path, info: os.stat_result) -> bytes:
    """The bytes of the regular file *path* (*info*: its lstat), unread if unchanged.

    Unchanged means the same inode, size, mtime and ctime as when last read: a write, a
    rename onto it or a chmod stamps the ctime, which no one but root can set back.
    """
    signature = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    key = os.fspath(path)
    known = _KNOWN.get(key)
    if known is not None and known[0] == signature:
        return known[1]
    began = time.time_ns()
    data = fs.read_file(path)
    if info.st_ctime_ns < began - RACY_NS:
        if len(_KNOWN) >= _KNOWN_MAX:
            _KNOWN.clear()
        _KNOWN[key] = (signature, data)
    return data


def forget() -> None:
    """Read every file again from now on (until kept anew): what is kept may be stale.

    A write through a shared memory map stamps the mtime and ctime at the first write into a
    page only: one into a page already written (a byte written back as it was, then the
    planted line) changes the bytes and none of the stat data.
    """
    _KNOWN.clear()
