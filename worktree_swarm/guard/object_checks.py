"""The guard's checks of the object store, and the kept pack of the tasks' work.

Loose objects that lie about what they hold; symbolic links or another directory where git
keeps its objects; object files of the baseline written over; refs whose objects were deleted
(recovered from the kept pack, set back to their last complete tip, or kept by name). Each
scan runs the checks of git's indexes of objects too (pack_checks.py). The checks themselves
are in integrity.py, store_dir.py, held_files.py and loose_objects.py.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from worktree_swarm.core.errors import CommandError, SwarmError
from worktree_swarm.git import repo as git
from worktree_swarm.guard import held_files, integrity, loose_objects, store_dir
from worktree_swarm.guard.model import MAIN, REPOSITORY, Violation, short_ref
from worktree_swarm.guard.objects import ObjectWatch
from worktree_swarm.guard.pack_checks import PackChecks
from worktree_swarm.guard.restore import restore_ref
from worktree_swarm.guard.snapshot import SYMBOLIC, read_refs, ref_owner
from worktree_swarm.infra import interrupts

UNREAD = -3  # the generation the held files were compared at when one could not be read


class ObjectChecks(PackChecks):
    """The object store's scans and put-backs."""

    def _scan_objects(
        self, began: float, *, deep: bool, refs: dict[str, str] | None = None, pack: bool = True
    ) -> list[Violation]:
        """Refs whose objects were deleted: restored from the kept pack, or kept by name.

        *refs*: every watched ref, as just read (by default, read now). Only refs that moved
        since they were last seen complete are checked while the object store's change test
        (objects.py) saw nothing that could lose an object; every ref otherwise. *pack*: copy
        the task branches that moved into the kept pack.
        """
        window = (self._objects_checked, began)
        root, common = self.repo.root, self.repo.common_dir
        refs = read_refs(root) if refs is None else refs
        refs = {r: tip for r, tip in refs.items() if not tip.startswith(SYMBOLIC)}  # no object
        generation = -2 if self._objects is None else self._objects.generation()
        seen = self._walked if deep else self._good
        only = None
        if generation == self._complete_at[deep]:
            only = {ref for ref, tip in refs.items() if seen.get(ref) != tip}
        self._hold_again()
        found = self._planted_links(window)
        found += self._new_packs(window)
        found += self._packs_rewritten(window)
        found += self._lying_revs(window)
        found += self._scan_midx(window)
        if deep or self._closing.is_set():
            found += self._forged_loose(window)
        # The last scan compares them whatever the events said (a change through another name).
        if generation != self._held_seen[0] or self._objects is None or self._closing.is_set():
            found += self._written_over(window, generation)
        broken = integrity.broken_refs(root, refs, deep=deep, only=only)
        pack_dir = self._dir / "keep"
        again: set[str] = set()
        if broken:
            try:
                integrity.recover(common, pack_dir, self._held)
            except OSError as error:  # what is still broken is reported as such, and why
                self._part_failed("objects", str(error))
            again = set(integrity.broken_refs(root, {r: refs[r] for r in broken}, deep=deep))
        found += self._broken(broken, again, refs, window)
        good_now = {r: s for r, s in refs.items() if r not in again}
        self._good.update(good_now)
        if deep:
            self._walked.update(good_now)
        # The next window starts here: a ref still broken was told (once, above), and keeping
        # the window open for it would keep every agent since suspected of every later write.
        self._objects_checked = began
        if not again:  # every ref complete as of this generation
            self._complete_at[deep] = generation
            if deep:
                self._complete_at[False] = generation
        if pack:
            self._keep_task_work(good_now, pack_dir)
        return found

    def _hold_afresh(self) -> None:
        """Hold every object file of the store as it is now (:func:`.held_files.hold`).

        A resumed run's dead manager held the store as it was then: kept, an object you
        pruned since would be linked back at this run's end (a pack your `git gc` replaced
        stays on disk till then). It is let go where nothing is lost with it; else kept, and
        this run's scans put back from it what is missing or written over, as they would
        have before the kill.
        """
        unneeded = self._held.is_dir() and self._old_hold_unneeded()
        interrupts.check()  # a stop signal cut its walk short: no answer, and the run ends
        if unneeded:
            held_files.let_go(self._held)
        self._unheld = set()
        for reason in held_files.hold(self.repo.common_dir, self._held, unheld=self._unheld):
            self._part_failed("objects", reason)
        self._unheld.discard("pack")  # held at the start only (:func:`.held_files.hold`)

    def _hold_again(self) -> None:
        """Hold what the start's hold could not (a directory made unreadable then).

        Tried by every scan of the objects until it is held, each loose object only if it
        hashes to its name; told as the start's was while it fails.
        """
        if not self._unheld:
            return
        left: set[str] = set()
        for reason in held_files.hold(
            self.repo.common_dir, self._held, only=self._unheld, unheld=left
        ):
            self._part_failed("objects", reason)
        self._unheld = left

    def _old_hold_unneeded(self) -> bool:
        """Whether the dead manager's hold keeps nothing the refs need.

        None of its files written over, and where one is gone, every object the refs reach
        still there (a walk of their whole history, only then: deleted while no manager
        watched, by an agent outliving it, a tip or a file deep in a branch's history is in
        that hold only, cut short by a stop signal). Not known (a failing read): needed.
        """
        common, root = self.repo.common_dir, self.repo.root
        try:
            unread: list[tuple[Path, Path]] = []
            if held_files.written_over(common, self._held, unread=unread) or unread:
                return False
            if not held_files.missing_held(common, self._held, objects_only=True):
                return True
            tips = [tip for tip in read_refs(root).values() if not tip.startswith(SYMBOLIC)]
            return integrity.whole(root, tips, stop=interrupts.noted())
        except (OSError, SwarmError):
            return False

    def _forged_loose(self, window: tuple[float, float]) -> list[Violation]:
        """Loose objects made since the baseline that are not what they are named: removed."""
        common = self.repo.common_dir
        named: set[str] = set()
        whole = False
        if self._objects is not None:
            named, whole = self._objects.loose_named()
        first = self._loose_seen is None or self._unlisted
        if self._loose_seen is None:
            self._loose_seen = set()
            self._loose_held = frozenset(held_files.held_loose(self._held))
        unlisted: list[str] = []
        forged, unread = loose_objects.forged_loose(
            common,
            self._loose_seen,
            held=self._loose_held,
            named=named | self._loose_unread,
            # Every one not known good: the first time (some were made before the change test
            # watched), without the change test, and at the last scan (whatever it missed).
            listing=first or not whole or self._closing.is_set(),
            unlisted=unlisted,
        )
        self._loose_unread = frozenset(unread)
        self._unlisted = bool(unlisted)
        if unlisted:  # the others were read
            self._part_failed("objects", f"cannot list {', '.join(unlisted)}")
        if not forged:
            return []
        if self.restore:
            for path in forged:
                with contextlib.suppress(OSError):  # not removed is recorded as such
                    path.unlink()
        # Told once while it stays; removed, one planted again is told again.
        self._loose_seen.update(p.parent.name + p.name for p in forged if p.exists())
        suspects = self._agents.suspects(window, exclude=())
        if not suspects:
            return []  # no agent of ours was running: damage of another kind, not an attack
        labels = tuple(path.relative_to(common).as_posix() for path in forged)
        violation = Violation(
            number=0,
            where=REPOSITORY,
            git_files=labels,
            suspects=suspects,
            restored=not any(path.exists() for path in forged),
        )
        listed = "".join(f"{label}: its bytes are another object's\n" for label in labels)
        return [self._record(violation, patch_text=listed)]

    def _swapped_store(self, began: float) -> list[Violation]:
        """Another directory (or nothing) where the object store was: the store put back.

        An agent that moves ``objects`` aside and makes another in its place gets around the
        sandbox's read-only ``objects/info`` (the new one's ``alternates`` is its own). The
        store is put back from where it went in the git dir, found by its inode:
        a directory of the agent's cannot pass for it. What was in its place goes to the
        guard's directory, its objects linked into the store first (nothing is deleted). A
        symlink there is :meth:`_planted_links`'s.
        """
        common = self.repo.common_dir
        now = store_dir.store_id(common)
        if self._store is None or now == self._store or (common / "objects").is_symlink():
            return []
        window = (self._objects_checked, began)
        suspects = self._agents.suspects(window, exclude=())
        if not suspects:  # nobody of ours was running: the user's doing, the new baseline
            self._store = now
            return []
        found = store_dir.find_store(common, self._store)
        text = "objects: another directory in place of the object store"
        restored = False
        if found is None:
            text += ", which is no longer in the git dir; left as it is"
            self._store = now  # told once
        elif self.restore:
            aside = self._dir / f"replaced-objects-{time.time_ns()}"
            try:
                store_dir.put_store_back(common, found, aside)
                restored = True
                text += f", which was moved to {found.relative_to(common)}; put back (what was"
                text += " in its place"
                text += f" is kept at {aside}, its objects linked into the store)"
            except OSError as exc:
                text += f", which was moved to {found.relative_to(common)}; cannot put it back:"
                text += f" {exc}"
                self._store = now
        else:
            text += f", which was moved to {found.relative_to(common)}"
            self._store = now
        if restored and self._objects is not None:  # its watches followed the store away
            self._objects.close()
            self._objects = ObjectWatch(common / "objects")
        violation = Violation(
            number=0,
            where=REPOSITORY,
            git_files=("objects",),
            suspects=suspects,
            restored=restored,
        )
        return [self._record(violation, patch_text=text + "\n")]

    def _planted_links(self, window: tuple[float, float]) -> list[Violation]:
        """Symbolic links where git keeps objects: made real again, before anything is read."""
        common = self.repo.common_dir
        links = store_dir.planted_links(common)
        if not links:
            return []
        restored = True
        listed = []
        for link in links:
            target = link.readlink() if link.is_symlink() else "?"
            listed.append(f"{link.relative_to(common).as_posix()}: a link to {target}\n")
            if self.restore:
                try:
                    store_dir.unplant(link)
                except OSError:
                    restored = False
        violation = Violation(
            number=0,
            where=REPOSITORY,
            git_files=tuple(link.relative_to(common).as_posix() for link in links),
            suspects=self._agents.suspects(window, exclude=()),
            restored=self.restore and restored,
        )
        return [self._record(violation, patch_text="".join(listed))]

    def _written_over(self, window: tuple[float, float], generation: int) -> list[Violation]:
        """Object files of the baseline whose names the store now gives to other content.

        The held files are put back in their place; a loose object rewritten in place, which
        the held link is too, can only be reported. Another file under a held name that cannot
        be read now tells nothing: the held file (the object itself) is put back over it
        unreported, and the next scan compares again.
        """
        common = self.repo.common_dir
        since = self._held_seen[1]
        unread: list[tuple[Path, Path]] = []
        over = held_files.written_over(common, self._held, unread=unread)
        # A write stamps the coarse clock, which may lag this one a little: a second's margin.
        self._held_seen = (UNREAD if unread else generation, max(since, time.time_ns() - 10**9))
        if self.restore and (over or unread):
            try:
                held_files.put_back([*over, *unread])
            except OSError as error:  # written over and not put back is recorded as such
                if unread:
                    self._part_failed("objects", str(error))
        elif unread:
            self._part_failed("objects", f"cannot read {unread[0][1].relative_to(common)}")
        rewritten = held_files.rewritten(common, self._held, since)
        if not over and not rewritten:
            return []
        suspects = self._agents.suspects(window, exclude=())
        if not suspects:
            return []  # no agent of ours was running: damage of another kind, not an attack
        left = {dest for _, dest in held_files.written_over(common, self._held)}
        left |= set(rewritten)
        listed = [
            *(f"{d.relative_to(common).as_posix()}: another object written under its name\n"
              for _, d in over),
            *(f"{d.relative_to(common).as_posix()}: rewritten in place, its content no longer"
              " hashes to its name (the guard's hold on it is the same file: no copy to put"
              " back)\n" for d in rewritten),
        ]  # fmt: skip
        violation = Violation(
            number=0,
            where=REPOSITORY,
            git_files=tuple(
                d.relative_to(common).as_posix()
                for d in sorted({d for _, d in over} | set(rewritten))
            ),
            suspects=suspects,
            restored=not left,
        )
        return [self._record(violation, patch_text="".join(listed))]

    def _broken(
        self, broken: list[str], again: set[str], refs: dict[str, str], window: tuple[float, float]
    ) -> list[Violation]:
        """Record the refs found *broken* (*again*: still, after recovery from the pack)."""
        names = [ref for ref in broken if (ref, refs[ref]) not in self._reported]
        # Told once while it stays broken; made whole, breaking it again is told again.
        self._reported |= {(ref, refs[ref]) for ref in again}
        if not names:
            return []
        kept, set_back = [], []
        root, common = self.repo.root, self.repo.common_dir
        for ref in (r for r in names if r in again):
            good = self._good.get(ref) or integrity.last_complete(root, common, ref)
            if good is None or good == refs[ref]:
                continue
            # A ref that names a missing object makes git gc, git log --all and for-each-ref
            # fail: it goes back to its last complete tip (what it named is gone for good).
            if self.restore and restore_ref(root, ref, good, refs[ref]):
                self._refs[ref] = self._good[ref] = good
                with contextlib.suppress(CommandError):  # its reflog entries naming it too
                    git.git(root, "reflog", "expire", "--stale-fix", "--expire=never",
                            "--expire-unreachable=never", ref)  # fmt: skip
                set_back.append(f"{short_ref(ref)} at {good[:12]}")
                continue
            keep = integrity.keep_ref(ref)
            with contextlib.suppress(CommandError):
                git.git(root, "update-ref", keep, good)
                self._refs[keep] = good
                kept.append(short_ref(keep))
        owners = {ref_owner(ref) for ref in names}
        # Not even a branch's own agent is above suspicion: a task that starts from another's
        # tip shares its objects.
        violation = Violation(
            number=0,
            where=next(iter(owners)) or MAIN if len(owners) == 1 else MAIN,
            broken=tuple(names),
            kept=tuple(kept),
            set_back=tuple(set_back),
            suspects=self._agents.suspects(window, exclude=()),
            restored=not (set(names) & again),
        )
        return [self._record(violation, patch_text=None)]

    def _keep_task_work(self, refs: dict[str, str], pack_dir: Path, *, only: str = "") -> None:
        """Copy the objects of task branches that moved since last time into the kept pack.

        *refs*: every watched ref (what the user's reach stays out of the pack); *only*: the
        one task branch whose tip there is new (the others may be older than the guard knows).
        Tasks that finish together share one pack: a caller queues its tips, and whichever
        caller takes the pack's lock first packs every queued one. Each caller still packs its
        own under the lock when they are not packed yet (the pack that took them failed, or
        packed another tip of the same branch), and a shared pack that fails is made again
        with the caller's own tips only.
        """
        mine = {
            ref: tip
            for ref, tip in refs.items()
            if (ref == only if only else ref_owner(ref)) and self._packed.get(ref) != tip
        }
        with self._queue_lock:
            self._queued.update(mine)
        with self._keep_lock:  # not the guard's lock: a finishing task packs without it
            with self._queue_lock:
                queued, self._queued = self._queued, {}
            try:
                self._keep_moved(refs, {**queued, **mine}, pack_dir)
            except CommandError:
                if queued.keys() <= mine.keys():
                    raise
                # Another's tip failed the shared pack (its objects gone): pack ours alone;
                # each of the others packs its own once it holds the lock.
                self._keep_moved(refs, mine, pack_dir)

    def _keep_moved(self, refs: dict[str, str], tips: dict[str, str], pack_dir: Path) -> None:
        user = {s for r, s in refs.items() if ref_owner(r) is None}
        moved = {ref: tip for ref, tip in tips.items() if self._packed.get(ref) != tip}
        if not moved:
            return
        # One pack for every branch that moved: what they added since last kept.
        previous = {self._packed[ref] for ref in moved if ref in self._packed}
        new = sorted(set(moved.values()))
        integrity.keep(self.repo.root, self.repo.common_dir, pack_dir, new, sorted(user | previous))
        self._packed.update(moved)
