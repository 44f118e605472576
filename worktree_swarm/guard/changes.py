"""Which watched checkouts may have changed since they were last compared: the cheap test.

Each place gets an inotify watch on every directory of its working tree (not ``.git``, not a
nested repository or worktree, not a root it excludes; in a big tree not the directories git
ignores as a whole), which reports any write, create, delete, rename, chmod or mtime reset of
an entry there, and a stat signature (inode, size, mtime, ctime) of its index and HEAD files;
ctime cannot be set back by an unprivileged process. A place with no event and the same
signature is as it was when last compared, and needs no git command at all. Those files' stat
is taken again only where a watch of theirs told of a change, and in a full pass (see
file_stats.py).

A place that cannot be watched (no inotify on this system, the per-user watch limit reached)
counts as changed every time: its caller compares it with git, as before. Events are read
(and a place's flag cleared) *before* the caller compares it, so a write made during the
comparison is reported the next time.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from worktree_swarm.core.errors import SwarmError
from worktree_swarm.git import runner
from worktree_swarm.guard.file_stats import FileStats, Pace, Stat
from worktree_swarm.infra import inotify

# Above this many directories, git is asked which ones it ignores as a whole (node_modules,
# build outputs): they are left unwatched. Smaller trees are watched whole, without asking.
_BIG_TREE = 1000
_GONE = (errno.ENOENT, errno.ENOTDIR)  # a directory removed while being watched: skipped
_LEAF_LINKS = 2  # a directory's link count without subdirectories, where they are counted

Signature = tuple[Stat, ...]


def signature(
    files: Iterable[str], stats: FileStats, seen: dict[str, Stat], *, fresh: bool = False
) -> Signature:
    """Inode, size, mtime and ctime of each of *files* (None when missing), from *stats*.

    *seen*: those of files already looked at in the same pass, by name (``packed-refs``, which
    every place's signature holds), added to as more are looked at; *fresh*: looked at anew.
    """
    out: list[Stat] = []
    for path in files:
        if path not in seen:
            seen[path] = stats.stat(path, fresh=fresh)
        out.append(seen[path])
    return tuple(out)


@dataclass(slots=True, kw_only=True)
class _Place:
    root: Path
    git_files: tuple[str, ...]  # names, not Paths: one place per task worktree, kept all run
    skip: set[Path]  # real paths not to descend into
    signature: Signature
    wds: set[int] = field(default_factory=set)
    watched: bool = False  # every directory has a watch; False: compared every time
    dirty: bool = False
    rewalk: bool = False  # a directory moved: watches and their paths are renewed


class Changes:
    """The change test of every watched place, by key. Thread-safe."""

    def __init__(self, stats: FileStats | None = None) -> None:
        """*stats*: the guard's kept stats of files (one of its own by default)."""
        self._lock = threading.Lock()
        self._ino: inotify.Inotify | None
        try:
            self._ino = inotify.Inotify()
        except OSError:
            self._ino = None
        self._places: dict[str, _Place] = {}
        self._wds: dict[int, tuple[set[str], Path]] = {}  # wd -> keys and the directory
        self._own_stats = stats is None
        self._stats = FileStats(watch=self._ino is not None) if stats is None else stats
        self._pace = Pace()  # full passes of the places' git files
        self._uses: dict[str, int] = {}  # a git file -> how many places name it

    @property
    def live(self) -> bool:
        """Whether inotify is available (else every place is compared every time)."""
        return self._ino is not None

    def watch(
        self,
        key: str,
        root: Path,
        git_files: Sequence[Path],
        skip: Sequence[Path] = (),
        *,
        unignored: bool = False,
    ) -> bool:
        """Start (or renew) watching *key*'s tree *root*; False when it can only be polled.

        *unignored*: leave what git ignores as a whole unwatched however small the tree (a
        checkout someone works in: builds and caches there would flag it all the time).
        """
        with self._lock:
            self._forget(key)
            real = Path(os.path.realpath(root))
            names = tuple(map(os.fspath, git_files))
            self._stats.refresh()  # what changed since the last pass: looked at afresh
            place = _Place(
                root=real,
                git_files=names,
                skip={Path(os.path.realpath(p)) for p in skip},
                signature=signature(names, self._stats, {}),
            )
            self._places[key] = place
            for name in set(names):
                self._uses[name] = self._uses.get(name, 0) + 1
            if unignored:  # polled too: skipped() tells what a walk of it leaves out
                self._ignore_ignored(real, place)
            if self._ino is None:
                return False
            seen = self._walk(key, place, real, limit=None if unignored else _BIG_TREE)
            if seen is None and not unignored:
                self._ignore_ignored(real, place)
                seen = self._walk(key, place, real, limit=None)
            place.watched = seen is not None
            self._drop_watches(key, place, place.wds - (seen or set()))
            return place.watched

    def forget(self, key: str) -> None:
        """Stop watching *key*."""
        with self._lock:
            self._forget(key)

    def skipped(self, key: str) -> frozenset[Path]:
        """The real paths *key*'s watch leaves out (ignored as a whole, roots it excludes)."""
        with self._lock:
            place = self._places.get(key)
            return frozenset(() if place is None else place.skip)

    def mark(self, key: str) -> None:
        """Report *key* as changed the next time (its comparison failed, say)."""
        with self._lock:
            place = self._places.get(key)
            if place is not None:
                place.dirty = True

    def mark_all(self) -> None:
        """Report every place as changed the next time (what git ignores may have changed)."""
        with self._lock:
            for place in self._places.values():
                place.dirty = True

    def watched(self, key: str) -> bool:
        """Whether *key* is watched (not polled)."""
        with self._lock:
            place = self._places.get(key)
            return place is not None and place.watched

    def changed(self, *, full: bool = False) -> set[str]:
        """The places that may have changed since the last call, or cannot be watched.

        *full*: every place's git files looked at afresh (as in the last scan).
        """
        with self._lock:
            inotify.drain(self._ino, self._note, self._all_changed)
            self._stats.refresh()
            fresh = self._pace.due(now=full)
            found = set()
            stats: dict[str, Stat] = {}  # each file looked at once
            for key, place in self._places.items():
                if place.rewalk and place.watched:
                    place.rewalk = False
                    seen = self._walk(key, place, place.root, limit=None)
                    if seen is None:
                        place.watched = False
                        self._drop_watches(key, place)
                    else:
                        self._drop_watches(key, place, place.wds - seen)
                now = signature(place.git_files, self._stats, stats, fresh=fresh)
                if now != place.signature:
                    place.signature = now
                    place.dirty = True
                if place.dirty or not place.watched:
                    found.add(key)
                place.dirty = False
            return found

    def close(self) -> None:
        """Release inotify; every place counts as changed from now on."""
        with self._lock:
            if self._ino is not None:
                self._ino.close()
                self._ino = None
            if self._own_stats:  # else its owner's to close
                self._stats.close()
            for place in self._places.values():
                place.watched = False
            self._wds.clear()

    # -- internals ---------------------------------------------------------------------------

    def _forget(self, key: str) -> None:
        place = self._places.pop(key, None)
        if place is not None:
            self._drop_watches(key, place)
            unused = set()
            for name in set(place.git_files):
                self._uses[name] -= 1
                if not self._uses[name]:
                    del self._uses[name]
                    unused.add(name)
            self._stats.drop(unused)

    def _drop_watches(self, key: str, place: _Place, wds: set[int] | None = None) -> None:
        """Stop *place*'s watches *wds* (all of them by default) where no other place shares one."""
        for wd in list(place.wds if wds is None else wds):
            place.wds.discard(wd)
            keys, _ = self._wds.get(wd, (set(), Path()))
            keys.discard(key)
            if not keys:
                self._wds.pop(wd, None)
                if self._ino is not None:
                    self._ino.remove(wd)

    def _walk(self, key: str, place: _Place, top: Path, *, limit: int | None) -> set[int] | None:
        """Watch *top* and every directory under it; the watches, None when that failed.

        Each directory is watched before it is looked at: an entry made after is reported by
        its watch, one made before is found by the listing. A directory whose link count says
        it has no subdirectory is not listed (its files need no watch of their own), once a
        listing showed that this file system counts them (btrfs, for one, does not).
        """
        assert self._ino is not None  # noqa: S101 - callers check
        seen: set[int] = set()
        counts: bool | None = None  # whether link counts tell subdirectories here
        stack = [top]
        while stack:
            directory = stack.pop()
            try:
                wd = self._ino.add(directory)
                links = directory.lstat().st_nlink
            except OSError as exc:
                if exc.errno in _GONE:
                    continue  # gone meanwhile: its parent's watch reported that
                return None  # the watch limit, most likely: this place is polled instead
            seen.add(wd)
            place.wds.add(wd)
            keys, _ = self._wds.get(wd, (set(), directory))
            keys.add(key)
            self._wds[wd] = (keys, directory)
            if limit is not None and len(seen) > limit:
                return None
            if counts and links == _LEAF_LINKS:
                continue  # `.` and its entry in the parent: no subdirectory
            try:
                subdirs = [e for e in os.scandir(directory) if e.is_dir(follow_symlinks=False)]
            except OSError:
                continue
            if counts is None and subdirs:
                counts = links == _LEAF_LINKS + len(subdirs)
            for entry in subdirs:
                path = Path(entry.path)
                if entry.name == ".git" or path in place.skip or os.path.lexists(path / ".git"):
                    continue  # excluded, ignored as a whole, or a repository of its own
                stack.append(path)
        return seen

    def _ignore_ignored(self, root: Path, place: _Place) -> None:
        """Add the directories git ignores as a whole under *root* to what is skipped."""
        try:
            out = runner.run_names(
                root,
                "ls-files",
                "-z",
                "--others",
                "--ignored",
                "--exclude-standard",
                "--directory",
            ).stdout
        except (OSError, SwarmError):
            return  # watched whole: more events, never fewer
        place.skip |= {root / p.rstrip("/") for p in out.split("\0") if p.endswith("/")}

    def _all_changed(self) -> None:
        """Events lost: any place may have changed (its watches renewed too)."""
        for place in self._places.values():
            place.dirty = place.rewalk = True

    def _note(self, event: inotify.Event) -> None:
        """Flag the places *event* concerns; watch a directory made there."""
        keys, directory = self._wds.get(event.wd, (set(), Path()))
        places = [(k, self._places[k]) for k in keys if k in self._places]
        # A file a place skips (the run's own log) changes nothing there.
        touched = directory / event.name
        for _key, place in places:
            place.dirty = place.dirty or touched not in place.skip
        if event.mask & inotify.IGNORED:  # its directory is gone
            self._wds.pop(event.wd, None)
            for _key, place in places:
                place.wds.discard(event.wd)
        elif event.mask & inotify.MOVE_SELF or (
            event.mask & inotify.ISDIR and event.mask & (inotify.MOVED_FROM | inotify.MOVED_TO)
        ):
            for _key, place in places:
                place.rewalk = True  # a subtree moved: paths and watches renewed
        elif event.mask & inotify.ISDIR and event.mask & inotify.CREATE and event.name != ".git":
            for key, place in places:
                self._watch_new(key, place, directory / event.name)

    def _watch_new(self, key: str, place: _Place, new: Path) -> None:
        """Watch the directory *new* just made in *place*, and what is already in it."""
        if new in place.skip or not place.watched:
            return
        if self._walk(key, place, new, limit=None) is None:
            place.watched = False
            self._drop_watches(key, place)
