"""Which admin dirs may hold a ``config.worktree`` or ``modules/``: looked in again if changed.

The surface read looks in every admin dir (``worktrees/*``) for its ``config.worktree``, which
git makes only for ``git config --worktree``, and its ``modules/`` (the git dirs of the
submodules checked out in that worktree): both nearly always absent (but in a repository whose
sparse checkout makes ``config.worktree``, which `git worktree add` copies into every admin
dir). One `lstat` each per admin dir a read, and a read after every attempt, so a run's reads
grew with the square of its tasks. Here an admin dir found without one of them gets an inotify
watch for names made in it (on before it is looked in), and is not looked in for the names it
lacked again while it holds:

- each admin dir is known by its inode, as the listing of ``worktrees/`` gives it (no call of
  its own): a directory made anew at its name, or swapped in by a rename, is looked in again;
- an event naming either there (made, linked or renamed in), the watch lost (the
  admin dir moved or removed), events lost, or no inotify at all (another OS, the per-user
  limits): looked in again, every time while it is not watched;
- one that is there, or that could not be looked for (its admin dir made unsearchable), is
  read every time, as before (without a look of its own here: the read finds whether it is).

Events are read before the listing, so a ``config.worktree`` made before a read is in it (one
made during it, in the next); likewise ``modules/``. A ``config.worktree`` that is there is
read again only when its stat could have changed (file_stats.py): its entry is kept meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from worktree_swarm.guard.file_stats import FileStats, Pace
from worktree_swarm.infra import inotify

if TYPE_CHECKING:
    from worktree_swarm.guard.surface_entry import Entry

CONFIG = "config.worktree"
MODULES = "modules"
_NAMES = (CONFIG, MODULES)
# A watch that no longer tells about the names of the directory it was made for.
_LOST = inotify.IGNORED | inotify.DELETE_SELF | inotify.MOVE_SELF


class WorktreeConfigs:
    """The admin dirs known to lack ``config.worktree`` or ``modules``, watched.

    Thread-safe.
    """

    def __init__(self, *, watch: bool = True, stats: FileStats | None = None) -> None:
        """*watch* False: every admin dir is looked in on every call; *stats*: the guard's."""
        self._lock = threading.Lock()
        # admin dir -> its inode, its watch, the names to read there (the others are absent)
        self._absent: dict[str, tuple[int, int, tuple[str, ...]]] = {}
        self._by_wd: dict[int, str] = {}
        self._ino: inotify.Inotify | None = None
        if watch:
            with contextlib.suppress(OSError):  # no inotify here: every admin dir looked in
                self._ino = inotify.Inotify()
        # Each config.worktree read, kept while unchanged: its entry, by the turn it was kept.
        self._own_stats = stats is None or not watch
        self._stats = FileStats(watch=watch) if self._own_stats or stats is None else stats
        self._entries: dict[str, tuple[int, Entry]] = {}
        self._pace, self._fresh = Pace(), True  # this read looks at each config.worktree anew
        # The next read (the guard's last) reads each one's bytes too (:meth:`look_afresh`).
        self._afresh = self._whole = False

    def to_read(self, worktrees: str) -> list[str]:
        """Each admin dir's ``config.worktree`` and ``modules`` in *worktrees*, there or not known.

        OSError (not for a missing *worktrees*) when it cannot be listed.
        """
        try:
            entries = list(os.scandir(worktrees))
        except (FileNotFoundError, NotADirectoryError):
            entries = []
        with self._lock:
            inotify.drain(self._ino, self._note, self._forget_all)
            self._stats.refresh()  # before any entry kept is used
            self._whole, self._afresh = self._afresh, False
            self._fresh = self._pace.due(now=self._whole)
            found = []
            for entry in entries:
                known = self._absent.get(entry.path)
                if known is not None and known[0] == entry.inode():
                    # The same directory, none of the absent names made in it since.
                    found += [f"{entry.path}/{name}" for name in known[2]]
                    continue
                if known is not None:
                    self._forget(entry.path)
                found += [f"{entry.path}/{name}" for name in self._looked_in(entry)]
            return found

    def entry(self, path: str, read: Callable[[], Entry | None]) -> Entry | None:
        """The entry of the ``config.worktree`` *path* from :meth:`to_read`: *read*, or kept.

        Kept, the file has not changed since it was read (its watch on before); read, its
        entry is kept when it is a file.
        """
        with self._lock:
            self._stats.stat(path, fresh=self._fresh)  # kept, so watched, before it is read
            if self._stats.absent(path):
                self._entries.pop(path, None)
                return None  # removed, and no name made there since
            turn = self._stats.kept_at(path)
            known = self._entries.get(path)
            if not self._whole and turn is not None and known is not None and known[0] == turn:
                return known[1]
            found = read()
            if turn is None or found is None or found.kind != "file":
                self._entries.pop(path, None)
            else:
                self._entries[path] = (turn, found)
            return found

    def look_afresh(self) -> None:
        """Have the next read look at each admin dir and read each file anew (the last scan).

        A write through a shared map still open raises no event, nor, into a page already
        written, a new mtime.
        """
        with self._lock:
            self._afresh = True

    def close(self) -> None:
        """Release inotify: every admin dir is looked in on every call from now on."""
        with self._lock:
            if self._own_stats:  # else the guard's to close
                self._stats.close()
            self._entries.clear()
            self._fresh = True
            self._forget_all()
            if self._ino is not None:
                self._ino.close()
            self._ino = None

    def _looked_in(self, entry: os.DirEntry[str]) -> list[str]:
        """Which of *entry*'s names are to be read: there or not known (watched first)."""
        wd = None
        if self._ino is not None:
            with contextlib.suppress(OSError):  # the watch limit, a file, gone: looked in
                wd = self._ino.add_names(Path(entry.path))
        read = []
        for name in _NAMES:
            try:
                os.lstat(f"{entry.path}/{name}")
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError:  # its admin dir made unsearchable: not known now
                pass
            read.append(name)
        if len(read) < len(_NAMES) and wd is not None and wd not in self._by_wd:
            # Another directory swapped in since the listing has another inode: looked in
            # again at the next listing.
            self._absent[entry.path] = (entry.inode(), wd, tuple(read))
            self._by_wd[wd] = entry.path
        elif wd is not None and wd not in self._by_wd and self._ino is not None:
            self._ino.remove(wd)  # both read every time: no watch needed
        return read

    def _note(self, event: inotify.Event) -> None:
        """Have the admin dir *event* may tell a name made in looked in again."""
        where = self._by_wd.get(event.wd)
        if where is not None and (event.mask & _LOST or event.name in _NAMES):
            self._forget(where)

    def _forget_all(self) -> None:
        """Every admin dir looked in again (events lost, or closing)."""
        for path in list(self._absent):
            self._forget(path)

    def _forget(self, path: str) -> None:
        _, wd, _ = self._absent.pop(path)
        self._by_wd.pop(wd, None)
        if self._ino is not None:
            self._ino.remove(wd)
