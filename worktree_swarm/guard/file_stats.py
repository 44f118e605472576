"""The stat of a few files, and whether a name is there, looked at again only after a change.

The guard's checks look at the same files again and again: each checkout's index, HEAD and
branch on every pass of the change test (changes.py), each task worktree's ``.git`` on every
scan, each admin dir's ``config.worktree`` on every surface read: calls per place a pass, so a
run's passes grew with the square of its tasks. Here a file whose stat is kept has an inotify
watch of its own (a write, a truncate, a chmod or time reset, a link made or removed, through
any of its names), its directory one for names (a file made, renamed or removed there) and each
directory above it one for itself (moved or removed: the path may name another file now).
Whether a name is there needs the last two only. What is kept is used until one of them tells
of a change:

- the watches are on before the file is looked at, and callers take in the events
  (:meth:`FileStats.refresh`) before they use what is kept, so a change made before a pass is
  seen in it;
- events lost (the queue overflowed), a watch that could not be made (the per-user limit),
  a symlink or another kind of file, a directory that is not there, or no inotify at all:
  looked at every time, as before;
- a write through a shared memory map raises no event until the map goes, but stamps the
  mtime: callers look at every file afresh at least every :data:`FULL_EVERY` seconds
  (:class:`Pace`) and in the last scan.

One instance serves the whole guard (one watch per directory and file, whoever asks).
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from pathlib import Path

from worktree_swarm.infra import inotify

FULL_EVERY = 5.0  # seconds between passes that look at every file again

Stat = tuple[int, int, int, int] | None  # inode, size, mtime, ctime; None: not there

# A watched directory's own watch gone: every path below it may name another file now.
_DIR_LOST = inotify.DELETE_SELF | inotify.MOVE_SELF | inotify.IGNORED


def look(path: str) -> Stat:
    """*path*'s inode, size, mtime and ctime (followed), None when it cannot be looked at."""
    try:
        st = os.stat(path)  # noqa: PTH116 - a name: kept all run per place
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Pace:
    """When a caller's next full pass is due: at least every :data:`FULL_EVERY` seconds."""

    def __init__(self) -> None:
        self._at = time.monotonic() + FULL_EVERY

    def due(self, *, now: bool = False) -> bool:
        """Whether this pass looks at everything afresh (*now*: it does, the last scan)."""
        at = time.monotonic()
        if not now and at < self._at:
            return False
        self._at = at + FULL_EVERY
        return True


class FileStats:
    """Kept stats by path, and names known there, each valid while its watches are quiet.

    Thread-safe.
    """

    def __init__(self, *, watch: bool = True) -> None:
        """*watch* False: every file is looked at every time."""
        self._lock = threading.Lock()
        self._ino: inotify.Inotify | None = None
        if watch:
            with contextlib.suppress(OSError):  # no inotify here: every file looked at
                self._ino = inotify.Inotify()
        # path -> its stat, its own watch, the turn it was kept at (see kept_at)
        self._kept: dict[str, tuple[Stat, int | None, int]] = {}
        self._turns = 0
        self._there: set[str] = set()  # names known there (see there)
        self._files: dict[int, set[str]] = {}  # a file's watch -> its paths kept
        self._dirs: dict[str, tuple[int, bool]] = {}  # a directory -> its watch, of names too
        self._dir_of: dict[int, str] = {}

    def refresh(self) -> None:
        """Take in what changed since: before a pass uses what is kept."""
        with self._lock:
            inotify.drain(self._ino, self._note, self._unkeep_all)

    def stat(self, path: str, *, fresh: bool = False) -> Stat:
        """*path*'s stat: kept unless a watch told of a change; *fresh*: looked at anyway."""
        with self._lock:
            kept = self._kept.get(path)
            if kept is not None and not fresh:
                return kept[0]
            if kept is not None:  # looked at again, its watches kept if the same
                now = look(path)
                if now == kept[0]:
                    return now
                self._unkeep(path)
            return self._keep(path)

    def kept_at(self, path: str) -> int | None:
        """When the stat of *path*, a file there, was kept; None: not kept (looked at each time).

        The same number later: the file has not changed since (but for a write through a
        shared map, until the next full pass), whatever was read of it after it was kept.
        """
        with self._lock:
            kept = self._kept.get(path)
            return None if kept is None or kept[0] is None else kept[2]

    def absent(self, path: str) -> bool:
        """Whether *path* is known not to be there (no name made there since it was looked at)."""
        with self._lock:
            kept = self._kept.get(path)
            return kept is not None and kept[0] is None

    def there(self, path: str, *, fresh: bool = False) -> bool | None:
        """Whether a file of any kind is at *path*; None: not known (the caller looks).

        Kept by the watches of its directory and those above (its own is not needed): no
        name can go from there without an event of theirs.
        """
        with self._lock:
            if path in self._there and not fresh:
                return True
            self._there.discard(path)
            if self._ino is None or not self._watch_dirs(path):
                return None
            try:
                os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                return False
            except OSError:
                return None
            self._there.add(path)
            return True

    def drop(self, paths: set[str]) -> None:
        """Keep the stat of *paths* no more (their watches let go)."""
        with self._lock:
            for path in paths:
                self._unkeep(path)

    def close(self) -> None:
        """Release inotify: every file is looked at every time from now on."""
        with self._lock:
            if self._ino is not None:
                self._ino.close()
            self._ino = None
            self._kept.clear()
            self._there.clear()
            self._files.clear()
            self._dirs.clear()
            self._dir_of.clear()

    # -- internals ---------------------------------------------------------------------------

    def _keep(self, path: str) -> Stat:
        """Watch *path* (its directories first), then look at it; kept when all that held."""
        if self._ino is None or not self._watch_dirs(path):
            return look(path)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            self._kept[path] = (None, None, self._turn())  # its directory's watch tells of one
            return None
        except OSError:
            return None  # not known: looked at again next time
        if not stat.S_ISREG(info.st_mode):
            return look(path)  # a symlink (followed by the stat) or another kind: every time
        try:
            wd = self._ino.add_file(Path(path))
        except OSError:
            return look(path)  # the watch limit, gone meanwhile
        now = look(path)  # after the watch: a change from now on raises an event
        if now is None or now[0] != info.st_ino:  # replaced meanwhile: its name's event
            return now  # looked at again next time
        self._kept[path] = (now, wd, self._turn())
        self._files.setdefault(wd, set()).add(path)
        return now

    def _watch_dirs(self, path: str) -> bool:
        """Whether *path*'s directory (its names) and each one above it are watched."""
        parent = os.path.dirname(path)  # noqa: PTH120 - strings: one call per file per pass
        if not self._watch_dir(parent, entries=True):
            return False
        while (up := os.path.dirname(parent)) != parent:  # noqa: PTH120
            if not self._watch_dir(up):
                return False
            parent = up
        return True

    def _watch_dir(self, directory: str, *, entries: bool = False) -> bool:
        """Whether *directory* is watched (for its *entries* too), made so if need be."""
        known = self._dirs.get(directory)
        if known is not None and (known[1] or not entries):
            return True
        assert self._ino is not None  # noqa: S101 - callers check
        try:  # the same directory: its watch's mask widened (never narrowed)
            wd = self._ino.add_dir(Path(directory), entries=entries or bool(known and known[1]))
        except OSError:
            return False  # not there, a symlink, the watch limit: its files looked at every time
        if known is not None and known[0] != wd:  # another directory there since: afresh
            self._forget_dir(directory)
        if wd in self._dir_of and self._dir_of[wd] != directory:
            return False  # the same directory by another path: its files looked at every time
        self._dirs[directory] = (wd, entries or bool(known and known[1]))
        self._dir_of[wd] = directory
        return True

    def _turn(self) -> int:
        self._turns += 1
        return self._turns

    def _unkeep(self, path: str) -> None:
        kept = self._kept.pop(path, None)
        if kept is None or kept[1] is None:
            return
        paths = self._files.get(kept[1], set())
        paths.discard(path)
        if not paths:
            self._files.pop(kept[1], None)
            if self._ino is not None:
                self._ino.remove(kept[1])

    def _forget_dir(self, directory: str) -> None:
        """Let go of *directory*'s watch and of what is kept below it, directories too.

        Moved or removed, its path (and each below) may name another directory now.
        """
        below = f"{directory}/"
        for name in [directory, *(d for d in self._dirs if d.startswith(below))]:
            known = self._dirs.pop(name, None)
            if known is None:  # let go of already, with a directory above it
                continue
            wd, _ = known
            self._dir_of.pop(wd, None)
            if self._ino is not None:
                self._ino.remove(wd)
        for path in [p for p in self._kept if p.startswith(below)]:
            self._unkeep(path)
        self._there -= {p for p in self._there if p.startswith(below)}

    def _unkeep_all(self) -> None:
        """Events lost: let go of everything kept (every file looked at again)."""
        for path in list(self._kept):
            self._unkeep(path)
        self._there.clear()
        for name in list(self._dirs):
            self._forget_dir(name)

    def _note(self, event: inotify.Event) -> None:
        """Let go of what is kept of each path *event* may tell a change of."""
        for path in list(self._files.get(event.wd, ())):
            self._unkeep(path)  # the file changed, or a name of it made or removed
        directory = self._dir_of.get(event.wd)
        if directory is not None and event.mask & _DIR_LOST:
            self._forget_dir(directory)
        elif directory is not None and event.name:
            self._unkeep(f"{directory}/{event.name}")
            self._there.discard(f"{directory}/{event.name}")
