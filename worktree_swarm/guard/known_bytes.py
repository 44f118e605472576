"""The bytes of the surface's files, read again only when their stat data changed.

Every scan reads git's own files again; most of them are unchanged since the last read. But
a write through a shared memory map into a page already written stamps no new time: within
:func:`afresh` (the check after each attempt, the guard's last scan) every file is read.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from worktree_swarm.infra import fs

# The bytes of files read before, by path: (stat data, bytes). Every scan reads the surface
# again (the hooks git's samples fill alone are ~15 files), most of it unchanged.
_KNOWN: dict[str, tuple[tuple[int, ...], bytes]] = {}
_KNOWN_MAX = 4096
# A file changed this close before it was read may change again within the same tick of the
# coarse clock that stamps it: not kept (git's "racily clean" files).
RACY_NS = 2_000_000_000
_LOCAL = threading.local()  # .afresh: True within afresh() in this thread


@contextlib.contextmanager
def afresh(stale: set[str] | None = None) -> Iterator[None]:
    """Within, :func:`read` in this thread reads every file, whatever it kept.

    *stale*: filled with the paths of those read with other bytes than kept under the same
    stat (written through a shared map): the writes no stat told of.
    """
    before = getattr(_LOCAL, "afresh", False), getattr(_LOCAL, "stale", None)
    _LOCAL.afresh, _LOCAL.stale = True, stale
    try:
        yield
    finally:
        _LOCAL.afresh, _LOCAL.stale = before


def read(path: Path, info: os.stat_result) -> bytes:
    """The bytes of the regular file *path* (*info*: its lstat), unread if unchanged.

    Unchanged means the same inode, size, mtime and ctime as when last read: a write, a
    rename onto it or a chmod stamps the ctime, which no one but root can set back.
    """
    signature = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    key = os.fspath(path)
    known = _KNOWN.get(key)
    if known is not None and known[0] == signature and not getattr(_LOCAL, "afresh", False):
        return known[1]
    began = time.time_ns()
    data = fs.read_file(path)
    stale = getattr(_LOCAL, "stale", None)
    if stale is not None and known is not None and known[0] == signature and known[1] != data:
        stale.add(key)
    if info.st_ctime_ns < began - RACY_NS:
        if len(_KNOWN) >= _KNOWN_MAX:
            _KNOWN.clear()
        _KNOWN[key] = (signature, data)
    return data
