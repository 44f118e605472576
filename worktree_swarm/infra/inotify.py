"""Linux inotify through ctypes: which watched directories saw an entry change.

One non-blocking instance; :meth:`Inotify.read` returns what is pending and never waits.
Not available (another OS, no libc symbol, the per-user instance limit): the constructor
raises OSError and callers poll instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
import weakref
from dataclasses import dataclass
from pathlib import Path

# <sys/inotify.h>
MODIFY = 0x2
ATTRIB = 0x4
CLOSE_WRITE = 0x8
MOVED_FROM = 0x40
MOVED_TO = 0x80
CREATE = 0x100
DELETE = 0x200
DELETE_SELF = 0x400
MOVE_SELF = 0x800
UNMOUNT = 0x2000
Q_OVERFLOW = 0x4000
IGNORED = 0x8000
ONLYDIR = 0x01000000
DONT_FOLLOW = 0x02000000
EXCL_UNLINK = 0x04000000
ISDIR = 0x40000000
_NONBLOCK = os.O_NONBLOCK
_CLOEXEC = 0o2000000

# Everything that changes an entry's bytes, metadata or existence (a write, an mtime reset,
# a chmod, a create, delete or rename); never reads or opens.
CHANGES = (
    MODIFY | ATTRIB | CLOSE_WRITE | MOVED_FROM | MOVED_TO | CREATE | DELETE | DELETE_SELF
) | MOVE_SELF
_HEADER = struct.Struct("iIII")
_READ_SIZE = 1 << 16


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One inotify event: the watch it came from, its mask, the entry's name ('' for itself)."""

    wd: int
    mask: int
    name: str


def _libc() -> ctypes.CDLL:
    name = ctypes.util.find_library("c")
    if name is None:
        raise OSError(errno.ENOSYS, "no C library")
    return ctypes.CDLL(name, use_errno=True)


class Inotify:
    """One inotify instance (Linux only); raises OSError when there is none to have."""

    def __init__(self) -> None:
        self._libc = _libc()
        if not hasattr(self._libc, "inotify_init1"):
            raise OSError(errno.ENOSYS, "no inotify")
        fd = self._libc.inotify_init1(_NONBLOCK | _CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        self.fd: int | None = fd
        self._release = weakref.finalize(self, os.close, fd)  # an instance never closed

    def add(self, path: Path) -> int:
        """Watch the directory *path* (not followed if a symlink); its watch descriptor."""
        if self.fd is None:
            raise OSError(errno.EBADF, "inotify closed")
        wd = self._libc.inotify_add_watch(
            self.fd, os.fsencode(path), CHANGES | ONLYDIR | DONT_FOLLOW | EXCL_UNLINK
        )
        if wd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(path))
        return int(wd)

    def remove(self, wd: int) -> None:
        """Stop watching *wd* (gone already: nothing to do)."""
        if self.fd is not None:
            self._libc.inotify_rm_watch(self.fd, wd)

    def read(self) -> list[Event]:
        """Every pending event, without waiting."""
        found: list[Event] = []
        while self.fd is not None:
            try:
                data = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                break
            offset = 0
            while offset + _HEADER.size <= len(data):
                wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
                offset += _HEADER.size
                raw = data[offset : offset + length].split(b"\0", 1)[0]
                offset += length
                found.append(Event(wd=wd, mask=mask, name=os.fsdecode(raw)))
        return found

    def close(self) -> None:
        """Release the instance and all its watches."""
        self.fd = None
        self._release()
