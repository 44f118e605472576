"""The modes of the entries of a few directories, looked at again only where inotify saw a change.

The surface read after every attempt takes the permission bits of every worktree admin dir
(``worktrees/*``) and of every task worktree's top: one `lstat` each, a read, so the reads of
a run grew with the square of its tasks. Here each such parent directory has an inotify watch,
which reports a chmod (``ATTRIB``), a creation, a removal or a rename of any entry in it; an
entry is looked at again only when an event names it. The modes are what `lstat` gives now:

- the watch is on before the entries are first looked at, and its events are read before
  the cached modes are used, so a change made before a read is in it (one made during it,
  in the next);
- the parent itself moved, removed, replaced by another directory (another inode at its
  path), events lost (the queue overflowed) or no inotify at all (another OS, the per-user
  limits): its entries are looked at again, every time until a watch holds again;
- an entry that cannot be looked at (its parent made unsearchable, which no event of the
  entry tells the end of) is looked at again every time until it can be.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from worktree_swarm.guard.file_stats import FileStats
from worktree_swarm.guard.worktree_configs import WorktreeConfigs
from worktree_swarm.infra import inotify

# A watch that no longer tells about the entries of the directory it was made for.
_LOST = inotify.IGNORED | inotify.DELETE_SELF | inotify.MOVE_SELF


_UNKNOWN = -1  # a mode to look at (an event named the entry, or it is new)


@dataclass(slots=True)
class _Dir:
    wd: int
    ident: tuple[int, int]  # the watched directory's device and inode
    modes: dict[str, int] = field(default_factory=dict)  # entry name -> its mode, or _UNKNOWN
    listed: bool = False  # every entry is in modes (listed once the watch was on)


class DirModes:
    """The `lstat` modes of entries of watched directories. Thread-safe."""

    def __init__(self, *, watch: bool = True, stats: FileStats | None = None) -> None:
        """*watch* False: every entry is looked at on every call; *stats*: the guard's."""
        self._lock = threading.Lock()
        self._dirs: dict[str, _Dir] = {}
        self._by_wd: dict[int, str] = {}
        self._ino: inotify.Inotify | None = None
        if watch:
            with contextlib.suppress(OSError):  # no inotify here: every entry looked at
                self._ino = inotify.Inotify()
        # Which admin dirs may hold a config.worktree, watched alike.
        self.configs = WorktreeConfigs(watch=watch, stats=stats)

    def modes(self, parent: str, names: list[str] | None = None) -> dict[str, int]:
        """The mode of each of *names* in *parent* that is there (None: of every entry).

        OSError when *parent* cannot be looked at, or (*names* None) listed.
        """
        info = os.lstat(parent)
        with self._lock:
            inotify.drain(self._ino, self._note, self._forget_all)
            known = self._watched(parent, (info.st_dev, info.st_ino))
            if known is None:  # unwatched: every entry looked at
                listed = os.listdir(parent) if names is None else names  # noqa: PTH208
                return {n: m for n in listed if (m := lstat_mode(f"{parent}/{n}")) is not None}
            if names is None:
                if not known.listed:
                    for name in os.listdir(parent):  # noqa: PTH208 - names only
                        known.modes.setdefault(name, _UNKNOWN)
                    known.listed = True
                names = list(known.modes)
            found: dict[str, int] = {}
            for name in names:
                mode = known.modes.get(name, _UNKNOWN)
                if mode == _UNKNOWN:
                    try:
                        mode = os.lstat(f"{parent}/{name}").st_mode
                    except (FileNotFoundError, NotADirectoryError):
                        known.modes.pop(name, None)  # gone: an event tells of it coming back
                        continue
                    except OSError:  # *parent* made unsearchable: no event when it is again
                        continue  # still to look at
                    known.modes[name] = mode
                found[name] = mode
            return found

    def close(self) -> None:
        """Release inotify: every entry is looked at on every call from now on."""
        self.configs.close()
        with self._lock:
            self._forget_all()
            if self._ino is not None:
                self._ino.close()
            self._ino = None

    def _watched(self, parent: str, ident: tuple[int, int]) -> _Dir | None:
        """*parent*'s record, watched (afresh when it is another directory now); None: unwatched."""
        known = self._dirs.get(parent)
        if known is not None and known.ident == ident:
            return known
        if known is not None:
            self._forget(parent)
        if self._ino is None:
            return None
        try:
            wd = self._ino.add(Path(parent))
            now = os.lstat(parent)
        except OSError:
            return None  # the watch limit, a symlink, gone meanwhile: looked at in full
        if wd in self._by_wd:  # the same directory by another path: one record per watch
            return None
        if (now.st_dev, now.st_ino) != ident:  # swapped while the watch was made
            self._ino.remove(wd)
            return None
        self._dirs[parent] = known = _Dir(wd=wd, ident=ident)
        self._by_wd[wd] = parent
        return known

    def _note(self, event: inotify.Event) -> None:
        """Have the entry *event* names looked at again; its directory's, if its watch went."""
        parent = self._by_wd.get(event.wd)
        if parent is None:
            return  # a watch already dropped
        if event.mask & _LOST:
            self._forget(parent)
        elif event.name:  # looked at again when next asked for (a new one, listed)
            self._dirs[parent].modes[event.name] = _UNKNOWN

    def _forget(self, parent: str) -> None:
        known = self._dirs.pop(parent)
        self._by_wd.pop(known.wd, None)
        if self._ino is not None:
            self._ino.remove(known.wd)

    def _forget_all(self) -> None:
        """Every record made afresh (events lost, or closing)."""
        for parent in list(self._dirs):
            self._forget(parent)


def lstat_mode(path: str) -> int | None:
    """The mode of *path* (not followed); None when it cannot be looked at."""
    try:
        return os.lstat(path).st_mode
    except OSError:
        return None
