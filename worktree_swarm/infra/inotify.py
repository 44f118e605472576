"""Linux inotify (through inotify_simple): which watched directories saw an entry change.

One non-blocking instance; :meth:`Inotify.read` returns what is pending and never waits, and
:func:`drain` hands it to a caller's handler, events lost (an overflow) to a handler of their own.
Not available (another OS, the per-user instance limit): the constructor raises OSError and
callers poll instead.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import inotify_simple
from inotify_simple import flags

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

MODIFY = int(flags.MODIFY)
ATTRIB = int(flags.ATTRIB)
CLOSE_WRITE = int(flags.CLOSE_WRITE)
MOVED_FROM = int(flags.MOVED_FROM)
MOVED_TO = int(flags.MOVED_TO)
CREATE = int(flags.CREATE)
DELETE = int(flags.DELETE)
DELETE_SELF = int(flags.DELETE_SELF)
MOVE_SELF = int(flags.MOVE_SELF)
Q_OVERFLOW = int(flags.Q_OVERFLOW)
IGNORED = int(flags.IGNORED)
ISDIR = int(flags.ISDIR)

# Everything that changes an entry's bytes, metadata or existence (a write, an mtime reset,
# a chmod, a create, delete or rename); never reads or opens.
CHANGES = (
    MODIFY | ATTRIB | CLOSE_WRITE | MOVED_FROM | MOVED_TO | CREATE | DELETE | DELETE_SELF
) | MOVE_SELF
# Directories only, symlinks not followed, no events for entries already unlinked.
_WATCH = CHANGES | flags.ONLYDIR | flags.DONT_FOLLOW | flags.EXCL_UNLINK
# Names made in a directory (a create, a link, a rename in) and the directory itself gone.
_NAMES = CREATE | MOVED_TO | DELETE_SELF | MOVE_SELF | flags.ONLYDIR | flags.DONT_FOLLOW
# A file written to, or opened for writing (a write through a shared map raises no event of
# its own, but the file's last close does, which comes when the map goes: after its writes).
_WRITES = MODIFY | CLOSE_WRITE | flags.DONT_FOLLOW
# A file changed in any way that shows in its stat (a write, a chmod, a time reset, a link made
# or removed, through any of its names), or gone.
_FILE = MODIFY | ATTRIB | CLOSE_WRITE | DELETE_SELF | MOVE_SELF | flags.DONT_FOLLOW
# A directory itself moved or removed; *entries*: also a name made, renamed or removed in it.
_SELF = DELETE_SELF | MOVE_SELF | flags.ONLYDIR | flags.DONT_FOLLOW
_ENTRIES = _SELF | CREATE | MOVED_TO | MOVED_FROM | DELETE


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One inotify event: the watch it came from, its mask, the entry's name ('' for itself)."""

    wd: int
    mask: int
    name: str


class Inotify:
    """One inotify instance (Linux only); raises OSError when there is none to have."""

    def __init__(self) -> None:
        try:
            self._ino: inotify_simple.INotify | None = inotify_simple.INotify(nonblocking=True)
        except (AttributeError, TypeError) as exc:  # no inotify_init1 in this C library
            raise OSError(f"no inotify: {exc}") from exc
        self._release = weakref.finalize(self, self._ino.close)  # an instance never closed

    def add(self, path: Path) -> int:
        """Watch the directory *path* (not followed if a symlink); its watch descriptor."""
        return self._add(path, _WATCH)

    def add_names(self, path: Path) -> int:
        """Watch the directory *path* for names made in it only; its watch descriptor."""
        return self._add(path, _NAMES)

    def add_writes(self, path: Path) -> int:
        """Watch the file *path* for writes through any of its names; its watch descriptor."""
        return self._add(path, _WRITES)

    def add_file(self, path: Path) -> int:
        """Watch the file *path* for any change its stat shows, or its going; its descriptor."""
        return self._add(path, _FILE)

    def add_dir(self, path: Path, *, entries: bool) -> int:
        """Watch the directory *path* moved or removed (*entries*: its names too).

        Added to what it is watched for already (a directory reached again by another path
        keeps the events it was watched for).
        """
        return self._add(path, (_ENTRIES if entries else _SELF) | flags.MASK_ADD)

    def _add(self, path: Path, mask: int) -> int:
        if self._ino is None:
            raise OSError("inotify closed")
        return int(self._ino.add_watch(os.fsencode(path), mask))

    def remove(self, wd: int) -> None:
        """Stop watching *wd* (gone already: nothing to do)."""
        if self._ino is not None:
            with contextlib.suppress(OSError):
                self._ino.rm_watch(wd)

    def read(self) -> list[Event]:
        """Every pending event, without waiting."""
        if self._ino is None:
            return []
        return [Event(wd=e.wd, mask=e.mask, name=e.name) for e in self._ino.read(timeout=0)]

    def read_or_lost(self) -> list[Event]:
        """:meth:`read`, or one overflow event when reading fails: the events are lost."""
        try:
            return self.read()
        except OSError:
            return [Event(wd=-1, mask=Q_OVERFLOW, name="")]

    def close(self) -> None:
        """Release the instance and all its watches."""
        self._ino = None
        self._release()


def drain(ino: Inotify | None, note: Callable[[Event], None], lost: Callable[[], None]) -> None:
    """Hand each pending event of *ino* to *note*, in order; call *lost* for an overflow.

    An overflow (the kernel's queue full, or a read that failed) means events were lost:
    *lost* has everything its caller keeps looked at afresh. No *ino*: nothing to read.
    """
    if ino is None:
        return
    for event in ino.read_or_lost():
        if event.mask & Q_OVERFLOW:
            lost()
        else:
            note(event)
