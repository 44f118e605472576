"""Whether anything in the object store may have lost or damaged an object: the cheap test.

Checking that every ref resolves to complete objects costs git processes that walk every task
branch; a run of hundreds of tasks made that walk after every attempt. Git only ever *adds*
objects while agents work: a new loose object is a hard link made from a temporary file (an
inotify ``CREATE`` of its name, then the temporary file's removal), a new pack likewise. What
can lose or damage an object is anything else: a removed or renamed object or pack, a write or
chmod to an existing one, a change in ``objects/info`` (``alternates``, the commit graph), a
fan-out directory removed. inotify watches ``objects/``, ``objects/pack``, ``objects/info``
and each fan-out directory for those.

:meth:`ObjectWatch.generation` grows with every such event, and with every call when the
store cannot be watched (no inotify, the watch limit, an ``alternates`` file naming other
stores, lost events): a check that saw the same generation as the last complete one needs to
look only at refs that moved since. Events are read before the caller checks, so damage done
during a check shows in the next generation.

:meth:`ObjectWatch.loose_named` names the loose objects whose file was made, renamed onto or
written since it was last asked: what the check for forged objects reads, instead of listing
every loose object after every attempt.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from pathlib import Path

from worktree_swarm.infra import inotify

_FANOUT = re.compile(r"[0-9a-f]{2}")
_OBJECT = re.compile(r"[0-9a-f]{38}|[0-9a-f]{62}")  # SHA-1 or SHA-256, less the fan-out
_TEMPORARY = ("tmp_obj_", "tmp_pack_", "tmp_idx_", "tmp_rev_", "tmp_mtimes_", "tmp_bitmap_")
_MARKERS = (".keep", ".promisor")  # a pack's markers: no object is in them
_PACK_FILE = re.compile(r"pack-[0-9a-f]+\.(?:pack|idx|rev)")  # what git reads objects by
# What puts other bytes under an object's name: a file made (a link, an open), renamed onto it,
# or written to. Not a time or mode change (git freshens objects it would write again).
_NAMING = inotify.CREATE | inotify.MOVED_TO | inotify.MODIFY | inotify.CLOSE_WRITE


class ObjectWatch:
    """The change test of one object directory. Thread-safe."""

    def __init__(self, objects: Path) -> None:
        self._objects = objects
        self._lock = threading.Lock()
        self._generation = 0
        self._kinds: dict[int, str] = {}  # wd -> "top", "pack", "info", "fanout" or "packfile"
        self._paths: dict[int, str] = {}  # wd -> its directory (a pack's file: its name)
        self._written: set[str] = set()  # the names of pack files written to since asked
        self._loose: set[str] = set()  # loose objects made, renamed onto or written since asked
        # Loose objects whose attributes changed in the events being read: each looked at once
        # when they all are (every checkpoint's `git add` freshens the time of every blob it
        # hashes again, the same blobs in every task's checkpoint).
        self._touched: set[str] = set()
        self._ino: inotify.Inotify | None = None
        try:
            self._ino = inotify.Inotify()
            self._watch_all()
        except OSError:
            self._close()

    @property
    def watched(self) -> bool:
        """Whether events are seen (else every generation is new)."""
        return self._ino is not None

    def generation(self) -> int:
        """A number that changes when an object may have been lost or damaged since."""
        with self._lock:
            if self._ino is None:
                self._generation += 1
                return self._generation
            self._read()
            return self._generation

    def loose_named(self) -> tuple[set[str], bool]:
        """The loose objects (fan-out and name) made, renamed onto or written since last asked.

        And whether they are all: not when the store is not watched (any may have been; the
        ones seen before the watch was lost are still named). A fan-out directory made
        meanwhile is listed once its watch is on (git links an object in right after making it).
        """
        with self._lock:
            if self._ino is not None:
                self._read()
            named, self._loose = self._loose, set()
            return named, self._ino is not None

    def _read(self) -> None:
        assert self._ino is not None  # noqa: S101 - callers check
        try:
            events = self._ino.read()
        except OSError:
            events = [inotify.Event(wd=-1, mask=inotify.Q_OVERFLOW, name="")]
        for event in events:
            if self._damaging(event):
                self._generation += 1
        touched, self._touched = self._touched, set()
        if not all(map(_readable, touched)):
            self._generation += 1

    def watch_pack(self, idx: Path) -> None:
        """Watch the pack of index *idx* (its ``.pack``, ``.idx``, ``.rev``) for writes in place.

        git never writes to a pack it has made: it refreshes its time (an attribute change)
        and makes new ones. A pack rewritten in place is the guard's hold on it too, so only
        this tells it (through whatever name it was written).
        """
        with self._lock:
            self._watch_pack(idx)

    def written_packs(self) -> set[str]:
        """The pack files (names) written to since last asked (events read by generation)."""
        with self._lock:
            written, self._written = self._written, set()
            return written

    def written_again(self, names: set[str]) -> None:
        """Tell *names* as written again at the next :meth:`written_packs` (checked anew)."""
        with self._lock:
            self._written |= names

    def close(self) -> None:
        """Release inotify; every generation is new from now on."""
        with self._lock:
            self._close()

    # -- internals ---------------------------------------------------------------------------

    def _close(self) -> None:
        if self._ino is not None:
            self._ino.close()
        self._ino = None
        self._kinds.clear()
        self._paths.clear()

    def _watch_all(self) -> None:
        if (self._objects / "info" / "alternates").exists():
            # Objects that live in other stores: their removal is not seen here.
            raise OSError("alternates")
        self._add(self._objects, "top")
        for name in ("pack", "info"):
            if (self._objects / name).is_dir():
                self._add(self._objects / name, name)
        for entry in os.scandir(self._objects):
            if _FANOUT.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                self._add(Path(entry.path), "fanout")
        pack = self._objects / "pack"
        for idx in sorted(pack.glob("pack-*.idx")) if pack.is_dir() else ():
            self._watch_pack(idx)

    def _watch_pack(self, idx: Path) -> None:
        if self._ino is None:
            return
        for path in (idx.with_suffix(".pack"), idx, idx.with_suffix(".rev")):
            try:
                wd = self._ino.add_writes(path)
            except FileNotFoundError:
                continue  # removed meanwhile: nothing left to write to
            except OSError:
                self._close()  # the watch limit: no longer trusted
                return
            self._kinds[wd] = "packfile"
            self._paths[wd] = path.name

    def _add(self, directory: Path, kind: str) -> None:
        assert self._ino is not None  # noqa: S101 - callers check
        wd = self._ino.add(directory)
        self._kinds[wd] = kind
        self._paths[wd] = os.fspath(directory)

    def _damaging(self, event: inotify.Event) -> bool:
        """Whether *event* may have lost or damaged an object (and keep watching new dirs)."""
        kind = self._kinds.get(event.wd)
        if kind == "packfile":
            return self._pack_written(event)
        if kind is None or event.mask & (
            inotify.Q_OVERFLOW | inotify.IGNORED | inotify.DELETE_SELF | inotify.MOVE_SELF
        ):
            if event.mask & inotify.Q_OVERFLOW or kind is not None:
                self._close()  # lost events or a watched directory gone: no longer trusted
                return True
            return False  # a watch already dropped
        name, mask = event.name, event.mask
        if kind == "top":
            return self._top(name, mask)
        if kind == "info":
            return True  # alternates, the commit graph, packs: what git reads objects through
        if name.startswith(_TEMPORARY) or (kind == "pack" and name.startswith(".tmp-")):
            return False  # git's own temporary files, made and removed around every write
        created = bool(mask & inotify.CREATE) and not mask & inotify.ISDIR
        if kind == "fanout":
            return self._fanout(event, created=created)
        if _PACK_FILE.fullmatch(name) and mask != inotify.ATTRIB:
            # Another file under a pack's name (or one git makes: the guard verifies a new pack
            # anyway): the watch on the file it replaced does not see it.
            self._written.add(name)
        # pack: a new pack or index is linked in (renamed in by a repack, which also removes
        # what it packed: counted); its markers come and go with fetches.
        return not (created or name.endswith(_MARKERS))

    def _fanout(self, event: inotify.Event, *, created: bool) -> bool:
        """An event in a fan-out directory (see :meth:`_damaging`)."""
        name, mask = event.name, event.mask
        if not _OBJECT.fullmatch(name):
            return True  # no object of git's: anything may have been done under its name
        directory = self._paths[event.wd]
        if mask & _NAMING:
            self._loose.add(os.path.basename(directory) + name)  # noqa: PTH119 - per event
        if mask == inotify.ATTRIB:
            # Git freshens the time of an object it would have written again; a chmod that
            # makes it unreadable is what loses it (looked at once the events are all read).
            self._touched.add(os.path.join(directory, name))  # noqa: PTH118 - per event
            return False
        return not created

    def _pack_written(self, event: inotify.Event) -> bool:
        """An event of a pack's own file: written to, or gone (the directory's watch saw it)."""
        if event.mask & inotify.IGNORED:
            self._kinds.pop(event.wd)
            self._paths.pop(event.wd)
            return False
        self._written.add(self._paths[event.wd])
        return True

    def _top(self, name: str, mask: int) -> bool:
        """An event in ``objects/`` itself (see :meth:`_damaging`)."""
        kind = "fanout" if _FANOUT.fullmatch(name) else name
        if mask & inotify.ISDIR and kind not in {"fanout", "pack", "info"}:
            return False  # a directory git does not read objects from
        if mask & inotify.MOVED_TO:  # a whole directory of objects moved in: unwatched
            self._close()
            return True
        if mask & inotify.CREATE and mask & inotify.ISDIR:
            try:
                self._add(self._objects / name, kind)
                if kind == "fanout":  # what was linked in before the watch was on
                    self._loose.update(
                        name + entry
                        for entry in os.listdir(self._objects / name)  # noqa: PTH208
                        if _OBJECT.fullmatch(entry)
                    )
            except OSError:
                self._close()
                return True
            # New: it held nothing a ref that did not move could name.
            return False
        # Locks (automatic maintenance) and quarantine directories hold no objects of ours.
        return not (name.endswith(".lock") or name.startswith("tmp_objdir"))


def _readable(path: str) -> bool:
    """Whether *path* is still a file its owner may read."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and bool(info.st_mode & stat.S_IRUSR)
