"""The guard's baselines of the checkouts it watches, and of your checkout across managers.

A baseline is a checkout's HEAD, staged entries and files (captured as a tree through a
private scratch index; a clean task worktree's only by its `git status`, rebuilt when first
needed). The tree of your checkout's baseline is kept for the manager that resumes the run,
which tells what changed while none watched (:class:`~worktree_swarm.guard.state.Unwatched`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from worktree_swarm.core.text import path_text
from worktree_swarm.git import repo as git
from worktree_swarm.git import runner
from worktree_swarm.git.process import StoppedError
from worktree_swarm.guard import surface_kept
from worktree_swarm.guard.model import MAIN, REPOSITORY, WORKTREE_PREFIX, Snapshot, Violation
from worktree_swarm.guard.snapshot import (
    MAIN_TREE,
    OWN_OBJECTS,
    Objects,
    capture,
    drop_baselines,
    files_patch,
    index_path,
    is_clean,
    staged_digest,
    status,
    status_field,
)
from worktree_swarm.guard.special_files import special_files
from worktree_swarm.guard.state import Place, Unwatched
from worktree_swarm.guard.verdicts import Verdicts
from worktree_swarm.infra import fs, interrupts
from worktree_swarm.infra.redact import redact

# What git says of an object a captured tree or a scratch index names that is not there.
_MISSING = ("invalid object", "bad object")


class Baselines(Verdicts):
    """Baselines taken, kept and rebuilt."""

    # The guard's own store (device, inode) once a baseline wrote there, and when it was last
    # found so: deleted (or another in its place), the baselines name objects that are gone.
    _own_store: tuple[int, int] | None = None
    _store_seen = 0.0
    # The state directory, `.git/swarm` (device, inode), when that store was found: gone or
    # another in its place, it was deleted whole, which the manager writes back and says. Not
    # the guard's own directory, which an agent can delete alone, its store with it.
    _state_dir: tuple[int, int] | None = None

    @property
    def _snapshots(self) -> Objects:
        """Where the captures' objects go (out of your store), and are read from."""
        return Objects(self._dir / OWN_OBJECTS, self.repo.common_dir / "objects")

    def _watch(self, where: str, path: Path, *, stop: threading.Event | None = None) -> None:
        self._places[where] = self._baseline(where, path, stop=stop)
        if where == MAIN and self._resumable:
            self._keep_base()

    def _keep_base(self) -> None:
        """Record the tree of your checkout's baseline for the manager that resumes the run."""
        place = self._places.get(MAIN)
        if place is not None and place.base is not None:
            with contextlib.suppress(OSError):  # a torn one reads as none
                (self._dir / MAIN_TREE).write_text(place.base.tree, encoding="ascii")

    def keep_base_for_resume(self) -> None:
        """A run's guard (not a merge's): its baseline of your checkout is kept from now on.

        Called once what :meth:`unwatched` found is on record: a manager killed before that
        leaves the previous baseline, and the next one finds the same changes again.
        """
        self._resumable = True
        self._keep_base()
        with self._repo_lock:
            surface_kept.save(self._dir, self._surface)

    def _last_base(self) -> str | None:
        """The tree of your checkout as the run's last manager last took it as its baseline."""
        try:
            text = fs.read_text(self._dir / MAIN_TREE).strip()
        except (OSError, UnicodeDecodeError):
            return None
        return text if re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?", text) else None

    def _changed_since(self, last: str | None) -> Unwatched | None:
        """What changed in your checkout from *last* to the baseline just taken.

        A resumed run: what changed while no manager watched (yours, or an agent's write its
        manager was killed before it looked at), kept as it is, told, its patch kept.
        """
        place = self._places[MAIN]
        if last is None or place.base is None or last == place.base.tree:
            return None
        compared = runner.run_bytes(
            self.repo.root, "diff-tree", "-r", "--name-only", "-z", "--no-renames", last,
            place.base.tree, check=False, env=self._snapshots.reading(),
        )  # fmt: skip
        if compared.returncode != 0:  # its tree pruned since: nothing to compare with
            return None
        paths = [os.fsdecode(p) for p in compared.stdout.split(b"\0") if p]
        if not paths:
            return None
        number = 1 + len(list(self._dir.glob("unwatched-*-main.patch")))
        patch = self._dir / f"unwatched-{number}-main.patch"  # an earlier one's stays as told
        text = files_patch(place.path, last, place.base.tree, paths, self._snapshots.reading())
        # As an outside write's patch: your credentials stay out, names keep their bytes.
        patch.write_text(redact(text), encoding="utf-8", errors="surrogateescape")
        self._log(f"changed while no manager watched: {', '.join(paths)} (patch {patch})")
        return Unwatched(paths=tuple(paths), patch=str(patch))

    def looked_last(self) -> None:
        """After the run's last scan: what changes in your checkout from now on is yours."""
        with contextlib.suppress(OSError):
            (self._dir / MAIN_TREE).unlink(missing_ok=True)
        drop_baselines(self._dir)

    def unwatched(self) -> Unwatched | None:
        """What :meth:`start` found changed in your checkout while no manager watched it."""
        return self._unwatched

    def _baseline(self, where: str, path: Path, *, stop: threading.Event | None = None) -> Place:
        """Watch *path* from now on and record its baseline (no lock needed: *where* is its own).

        *stop*: a run's noted stop signal (:func:`.interrupts.noted`), which ends its `git
        add` (minutes in a huge checkout) part-way and is raised (KeyboardInterrupt).
        """
        if where == MAIN:
            name = "main"
        elif where.startswith(WORKTREE_PREFIX):
            name = "worktree-" + hashlib.sha256(where.encode()).hexdigest()[:12]
        else:
            name = f"task-{where}"
        scratch = self._dir / f"{name}.scratch-index"
        saved = self._dir / f"{name}.index"
        real = index_path(path)
        # Watched before git looks: a change made while it does is flagged for the next scan.
        users = where == MAIN or where.startswith(WORKTREE_PREFIX)
        self._changes.watch(
            where,
            path,
            self._git_files(real.parent),
            skip=self._roots if where == MAIN else (),
            unignored=users,
        )
        scratch.unlink(missing_ok=True)
        # A manager killed while git wrote it leaves git's lock; the file is this manager's own.
        scratch.with_name(scratch.name + ".lock").unlink(missing_ok=True)
        if real.is_file():
            shutil.copyfile(real, saved)
        else:
            saved.unlink(missing_ok=True)
        began = time.time()
        # The user's checkouts are always compared in full; a task worktree first by status.
        place_status = "" if users else status(path)
        base = None
        dirs: list[str] = []
        specials = special_files(path, self._changes.skipped(where)) if users else {}
        if users or not is_clean(place_status):
            seed(scratch, saved)
            exclude = self._exclude if where == MAIN else ()
            try:
                base = capture(path, scratch, self._snapshots, exclude, stop=stop)
            except StoppedError:
                interrupts.check()  # the stop signal that cut it short
                raise
            if self._own_store is None:
                self._own_store, self._store_seen = fs.identity(self._snapshots.own), began
                self._state_dir = fs.identity(self.repo.state_dir)
        if users and base is not None:
            args = ("ls-tree", "-r", "-d", "-z", "--name-only", base.tree)
            out = runner.run_names(path, *args, env=self._snapshots.reading()).stdout
            dirs = [d for d in out.split("\0") if d]
        return Place(
            where=where,
            path=path,
            scratch=scratch,
            saved_index=saved,
            base=base,
            checked=began,
            status=place_status,
            compared=time.monotonic(),
            dirs=tuple(dirs),
            repos=frozenset(repositories_in(path, dirs)),
            specials=specials,
        )

    def _git_files(self, admin: Path) -> list[Path]:
        """The files whose stat tells that a checkout's index, HEAD or HEAD's branch moved."""
        common = self.repo.common_dir
        files = [admin / "index", admin / "HEAD", common / "packed-refs"]
        with contextlib.suppress(OSError, UnicodeDecodeError):
            head = fs.read_text(admin / "HEAD")
            ref = head.removeprefix("ref: ").strip()
            if head.startswith("ref: refs/") and ".." not in ref:
                files.append(common / ref)  # a loose ref; packed, it is packed-refs
        return files

    def _base(self, place: Place) -> Snapshot:
        """*place*'s baseline; one that was clean is rebuilt from its commit and saved index."""
        if place.base is None:
            oid = status_field(place.status, "oid")
            head = None if oid in {"", "(initial)"} else oid
            branch = status_field(place.status, "head")
            saved = {"GIT_INDEX_FILE": str(place.saved_index)}
            place.base = Snapshot(
                head_ref=None if branch in {"", "(detached)"} else f"refs/heads/{branch}",
                head=head,
                index=staged_digest(place.path, saved),
                tree=git.git(place.path, "rev-parse", f"{oid}^{{tree}}").strip(),
            )
        return place.base

    def _store_lost(self, began: float, failure: str = "") -> list[Violation] | None:
        """The guard's own store deleted under its baselines: told, every baseline taken anew.

        Found gone (or another directory in its place), or by git's *failure* to find an
        object there. What it held (your uncommitted edits, as the baselines took them) cannot
        be put back; without new baselines every later comparison would fail, and a later
        write go unput back. The suspects: every agent that ran since it was last found whole
        (or none: yours, only logged). Gone with the whole state directory (which the manager
        writes back, saying so), it is only logged too. Under the guard's lock. None: nothing
        lost.
        """
        if self._own_store is None:
            return None
        own = self._snapshots.own
        whole = fs.identity(own) == self._own_store
        if whole and not any(said in failure for said in _MISSING):
            self._store_seen = began
            return None
        window = (self._store_seen, began)
        with_dir = fs.identity(self.repo.state_dir) != self._state_dir  # all of `.git/swarm`
        self._own_store = None
        for place in self._places.values():  # their entries name objects that are gone
            for scratch in (place.scratch, place.scratch.with_name(place.scratch.name + ".lock")):
                with contextlib.suppress(OSError):
                    scratch.unlink()
        for where, place in list(self._places.items()):
            with self._job(where):  # failing: told, and compared again as ever
                self._watch(where, place.path)
        lost = (
            f"the guard's store of your checkout's baseline {path_text(str(own))} was deleted:"
            " what it held (your uncommitted edits, as the baselines took them) cannot be put back"
        )
        if with_dir:
            self._log(f"{lost} (the state directory was deleted with it); new baselines taken")
            return []
        suspects = self._agents.suspects(window, exclude=())
        if not suspects:
            self._log(f"{lost} (no agent ran since it was last found); new baselines taken")
            return []
        found = Violation(number=0, where=REPOSITORY, lost=lost, suspects=suspects)
        return [self._record(found, patch_text=f"# {lost}; new baselines taken\n")]

    def _excludes(self, place: Place) -> tuple[str, ...]:
        return self._exclude if place.where == MAIN else ()


def repositories_in(root: Path, dirs: Sequence[str]) -> list[str]:
    """Those of *dirs* (under *root*) that hold a ``.git`` of their own."""
    return [d for d in dirs if os.path.lexists(root / d / ".git")]


def drop_copies(place: Place) -> None:
    """Delete the index copies of a place no longer compared (its worktree gone)."""
    for copy in (place.saved_index, place.scratch):
        with contextlib.suppress(OSError):
            copy.unlink()


def seed(scratch: Path, saved: Path) -> None:
    """Start the scratch index as a copy of the saved one, if it has none yet.

    It seeds git's stat cache, so that a capture hashes only the files changed since. A clean
    task worktree's baseline needs no capture: its scratch index is made only once one does,
    with the saved one's modification time. git trusts an entry's stat data only for a file
    older than the index: a copy dated later would hide a file rewritten at the same size
    within the second of its checkout.
    """
    if not scratch.exists() and saved.is_file():
        shutil.copy2(saved, scratch)
