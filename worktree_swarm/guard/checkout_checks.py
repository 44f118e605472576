"""The guard's comparisons of checkouts with their baselines: your checkouts and idle tasks'.

A checkout is compared with git when its change test (changes.py) flags it, or for a slow
sweep; task worktrees within a time budget per scan. A change is a violation whose suspects
are the agents alive since the checkout was last seen as its baseline (attribution.py); its
patch is kept and, unless the run allows outside writes, it is undone (restore.py). A `.git`
or a named pipe made in your checkout, an index or files made unreadable to you, are handled
here too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time
from pathlib import Path

from worktree_swarm.core.errors import SwarmError
from worktree_swarm.core.text import path_text
from worktree_swarm.git import runner
from worktree_swarm.guard.baselines import drop_copies, repositories_in, seed
from worktree_swarm.guard.model import WORKTREE_PREFIX, Snapshot, Violation
from worktree_swarm.guard.restore import (
    move_aside,
    new_repository_dirs,
    open_up,
    put_index,
    remove,
    restore_checkout,
)
from worktree_swarm.guard.snapshot import (
    capture,
    changed_paths,
    describe_head,
    files_patch,
    index_path,
    status,
)
from worktree_swarm.guard.special_files import special_files
from worktree_swarm.guard.state import Place
from worktree_swarm.guard.worktree_checks import WorktreeChecks
from worktree_swarm.infra import fs

# Per periodic scan, task worktrees flagged as changed are compared for at most this long;
# the rest wait for the next scan (oldest first), so the user's checkout and the refs are
# compared every scan however many tasks have finished.
_TASK_BUDGET = 0.25
# The sweep: one place a scan, least recently compared first, is compared with git even
# unflagged (what inotify cannot see: writes through a shared memory map, network file
# systems), at most this share of the time, and only once it was last compared this long ago.
_SWEEP_SHARE = 0.005
_SWEEP_AGE = 30.0
_SET_ASIDE = "set-aside"  # new directories holding a repository, taken out of your checkout


class CheckoutChecks(WorktreeChecks):
    """Checkouts compared with their baselines, and what changed put back."""

    def _scan_tasks(
        self, places: list[Place], changed: set[str], sweep: Place | None, *, final: bool
    ) -> list[Violation]:
        """Compare the task worktrees flagged as changed (and the sweep's), oldest first."""
        found: list[Violation] = []
        places.sort(key=lambda p: p.compared)
        budget = None if final else time.monotonic() + _TASK_BUDGET
        for place in places:  # one at a time, so workers are not held up by a long scan
            flagged = place.where in changed
            if not flagged and place is not sweep:
                continue
            if budget is not None and time.monotonic() > budget:
                if flagged:
                    self._changes.mark(place.where)  # compared in a later scan
                continue
            with self._lock.first():
                if self._places.get(place.where) is not place:
                    continue
                if not place.path.is_dir():
                    del self._places[place.where]  # removed; its work is on its branch
                    self._changes.forget(place.where)
                    drop_copies(place)
                    continue
                found += self._compare(place, time.time(), quick=True, sweep=not flagged)
        return found

    def _sweep_pick(self) -> Place | None:
        """The place to compare unflagged this scan, if the sweep's share of time allows."""
        now = time.monotonic()
        if now < self._sweep_at or not self._places:
            return None
        place = min(self._places.values(), key=lambda p: p.compared)
        return place if now - place.compared >= _SWEEP_AGE else None

    def _compare(self, place: Place, began: float, *, quick: bool, sweep: bool) -> list[Violation]:
        """Compare *place* with git (a failure is recorded and flags it for the next scan).

        A *sweep* step compares a place nothing flagged; flagged, even an unchanged `git
        status` of a task worktree is not trusted where its baseline had uncommitted files.
        """
        started = time.monotonic()
        found: list[Violation] = []
        ok = False
        # A change the test flagged was made after it last found the place untouched; one only
        # git sees, since git last compared it.
        since = place.checked if sweep else max(place.checked, place.seen)
        with self._job(place.where):
            found = self._scan_place(
                place, began, quick=quick, thorough=not sweep, since=since, unflagged=sweep
            )
            ok = True
        lost = None if ok else self._store_lost(began, self._failing.get(place.where, ""))
        if lost is not None:  # the guard's own store emptied: the place has a new baseline
            found, ok = lost, True
        if not ok and self.restore and _unreadable_index(place.path):
            # An index written unreadable (yours, or a finished task's: every git command
            # there fails on it, `swarm clean` too): the one saved at the baseline goes back,
            # and the place is compared as usual.
            window = (since, began)
            exclude = () if place.users else (place.where,)
            with self._job(place.where):
                if put_index(place.path, place.saved_index):
                    suspects = self._agents.suspects(window, exclude=exclude)
                    broken = Violation(
                        number=0, where=place.where, index_changed=True, suspects=suspects,
                        restored=True,
                    )  # fmt: skip
                    found = [self._record(broken, patch_text=None)]
                    found += self._scan_place(place, began, quick=False, since=since)
                    ok = True
        removing = not ok and place.where.startswith(WORKTREE_PREFIX) and self._removing(place.path)
        if not (ok or removing) and self.restore and place.where in self._denied:
            # Files or directories made unreadable to you (`chmod 000`): your git fails there
            # as the comparison did. The owner's bits go back, and the place is compared.
            window = (since, began)
            with self._job(place.where):
                found, ok = self._opened_up(place, window), True
        if not ok and place.users and self._closing.is_set() and not removing:
            # The run's last look at a checkout of yours failed: what the agents did there
            # since it was last compared is unknown. (A failure before it changes nothing:
            # every comparison is with the baseline, so a later one sees what it missed.)
            found = [self._unchecked(place, began)]
        if not ok:
            self._changes.mark(place.where)
        place.compared = done = time.monotonic()
        if sweep:  # the next sweep step waits for the sweep's share of time
            self._sweep_at = done + (done - started) / _SWEEP_SHARE
        return found

    def _opened_up(self, place: Place, window: tuple[float, float]) -> list[Violation]:
        """The paths of *place* an agent made unreadable to you, given back to you.

        None, or no agent to blame: the comparison's failure stands (raised again).
        """
        exclude = () if place.users else (place.where,)
        suspects = self._agents.suspects(window, exclude=exclude)
        reading = self._snapshots.reading()
        opened = open_up(place.path, self._base(place).tree, reading) if suspects else []
        if not opened:
            raise SwarmError(self._failing.get(place.where, "the comparison failed"))
        patch = "".join(
            f"# {path_text(p)}: unreadable to you; the owner's permission bits given back\n"
            for p in opened
        )
        broken = Violation(
            number=0, where=place.where, paths=tuple(opened), suspects=suspects, restored=True
        )
        found = [self._record(broken, patch_text=patch)]
        return found + self._scan_place(place, window[1], quick=False, since=window[0])

    def _unchecked(self, place: Place, began: float) -> Violation:
        """Every agent that ran since *place* was last compared, not vouched for."""
        why = self._failing.get(place.where, "the comparison failed")
        suspects = self._agents.suspects((place.checked, began), exclude=())
        violation = Violation(number=0, where=place.where, suspects=suspects, unchecked=why)
        return self._record(violation, patch_text=None)

    def _suspects(
        self, place: Place, window: tuple[float, float], paths: list[str], *, unflagged: bool
    ) -> tuple[str, ...]:
        """The agents that may have changed *paths* in *place* within *window*."""
        exclude = () if place.users else (place.where,)
        suspects = self._agents.suspects(window, exclude=exclude)
        narrowed = self._agents.narrow(suspects, place.path, paths)
        if narrowed:
            return narrowed
        if unflagged and self._agents.none_alive_then(suspects, place.path, paths):
            # Found by no event (a sweep, the last scan): its window is all since git last
            # looked, and the files' times show no agent alive when they changed: yours.
            return ()
        return suspects

    def _scan_place(
        self,
        place: Place,
        began: float,
        *,
        quick: bool,
        thorough: bool = False,
        since: float | None = None,
        unflagged: bool = False,
    ) -> list[Violation]:
        """Check *place*; *quick* trusts an unchanged `git status` (blind to re-edited files).

        *thorough* (a change was seen there): an unchanged status is trusted only if the
        baseline was clean, where it is exact. Suspects are the agents alive from *since*
        (by default, when it was last seen as its baseline); *unflagged* (no event told of the
        change), none when the changed files' times show none of them alive.
        """
        window = (place.checked if since is None else since, began)
        made = self._made_repositories(place, window) + self._made_specials(place, window)
        if (
            quick
            and not (thorough and place.base is not None)
            and status(place.path) == place.status
        ):
            place.checked = began
            return []
        seed(place.scratch, place.saved_index)
        now = capture(place.path, place.scratch, self._snapshots, self._excludes(place))
        base = self._base(place)
        if now == base:
            place.checked = began
            return made
        reading = self._snapshots.reading()
        paths = changed_paths(place.path, base.tree, now.tree, reading)
        if place.users and any((place.path / p / ".git").is_file() for p in paths):
            # A linked worktree there (a task's, moved in since this scan looked for them):
            # moved back, or left out, before anything here is taken for new files to remove.
            with self._repo_lock:
                made += self._scan_worktrees(began, set(), again=True)
                midway = bool(self._trees.doubted)
            if midway:  # a worktree being moved, maybe here: compared once it is judged
                self._changes.mark(place.where)
                return made
            now = capture(place.path, place.scratch, self._snapshots, self._excludes(place))
            if now == base:
                place.checked = began
                return made
            paths = changed_paths(place.path, base.tree, now.tree, reading)
        if place.where.startswith(WORKTREE_PREFIX) and self._removing(place.path):
            self._changes.mark(place.where)  # your `git worktree remove` at work: looked at again
            return made
        head = _head_move(base, now)
        suspects = self._suspects(place, window, paths, unflagged=unflagged)
        if not suspects:
            # Nobody of ours was running: the user worked here. Take it as the new baseline.
            self._watch(place.where, place.path)
            return made
        patch = files_patch(place.path, base.tree, now.tree, paths, reading)
        aside = self._aside(place, base.tree, now.tree, paths) if self.restore else {}
        patch = (
            "".join(
                f"# {path_text(rel + '/')}: a repository made in your checkout, moved whole to"
                f" {path_text(str(to))}\n"
                for rel, to in aside.items()
            )
            + patch
        )
        found = Violation(
            number=0,
            where=place.where,
            paths=tuple(paths),
            head=head,
            index_changed=now.index != base.index,
            suspects=suspects,
            set_aside=tuple(str(to) for to in aside.values()),
        )
        restored = False
        if self.restore:
            found = self._intend(found, patch)
            # What a repository made here holds (its history, files git does not list) is
            # in no patch: moved aside whole, or, where it cannot be, left as found.
            kept = [str(to) for rel, to in aside.items() if move_aside(place.path / rel, to)]
            found = dataclasses.replace(found, set_aside=tuple(kept))
            restored = len(kept) == len(aside) and restore_checkout(
                place.path,
                base=base,
                now=now,
                saved_index=place.saved_index,
                scratch=place.scratch,
                objects=self._snapshots,
                exclude=self._excludes(place),
            )
        if restored:
            place.checked = time.time()
        else:
            self._watch(place.where, place.path)
        violation = self._record(dataclasses.replace(found, restored=restored), patch_text=patch)
        return [*made, violation]

    def _aside(self, place: Place, base: str, now: str, paths: list[str]) -> dict[str, Path]:
        """Each new directory of a user's *place* holding a repository, and where it goes."""
        reading = self._snapshots.reading()
        made = new_repository_dirs(place.path, base, now, paths, reading) if place.users else []
        if not made:
            return {}
        top = self._dir / _SET_ASIDE
        top.mkdir(exist_ok=True)
        into = Path(tempfile.mkdtemp(prefix=f"{int(time.time())}-", dir=top))
        return {rel: into / rel for rel in made}

    def _made_repositories(self, place: Place, window: tuple[float, float]) -> list[Violation]:
        """A `.git` made in a directory of a user's checkout: removed, unless the user made it."""
        made = [d for d in repositories_in(place.path, place.dirs) if d not in place.repos]
        if not made:
            return []
        exclude = () if place.users else (place.where,)
        suspects = self._agents.suspects(window, exclude=exclude)
        if not suspects:
            place.repos |= set(made)
            return []
        if self.restore:
            for rel in made:
                remove(place.path / rel / ".git")
        paths = tuple(f"{rel}/.git" for rel in made)
        restored = self.restore and not repositories_in(place.path, made)
        patch = "".join(
            f"# {path_text(p)}: a repository made in your checkout, removed\n" for p in paths
        )
        violation = Violation(
            number=0, where=place.where, paths=paths, suspects=suspects, restored=restored
        )
        return [self._record(violation, patch_text=patch)]

    def _made_specials(self, place: Place, window: tuple[float, float]) -> list[Violation]:
        """Named pipes and devices made in a user's checkout: removed, unless the user made them.

        git lists neither, but waits for ever on a pipe where it reads a file (`.gitignore`):
        this comparison would, and your `git status` after the run.
        """
        if not place.users:
            return []
        now = special_files(place.path, self._changes.skipped(place.where))
        made = sorted(p for p, inode in now.items() if place.specials.get(p) != inode)
        suspects = self._agents.suspects(window, exclude=()) if made else ()
        if not suspects:  # none, or made while no agent of ours ran: yours
            place.specials = now
            return []
        if self.restore:
            for rel in made:
                with contextlib.suppress(OSError):  # gone, or swapped: what is left says
                    fs.remove_special(place.path, rel, now[rel])
        left = {p: i for p, i in now.items() if os.path.lexists(place.path / p)}
        place.specials = left  # what stays (allowed outside writes) is reported once
        fate = "removed" if self.restore else "left as found"
        patch = "".join(
            f"# {path_text(p)}: a named pipe or device made in your checkout, {fate}\n"
            for p in made
        )
        violation = Violation(
            number=0,
            where=place.where,
            paths=tuple(made),
            suspects=suspects,
            restored=not any(p in left for p in made),
        )
        return [self._record(violation, patch_text=patch)]


def _head_move(base: Snapshot, now: Snapshot) -> str:
    """How HEAD moved from *base* to *now* ("": it did not)."""
    if (now.head_ref, now.head) == (base.head_ref, base.head):
        return ""
    return f"HEAD moved from {describe_head(base)} to {describe_head(now)}"


def _unreadable_index(root: Path) -> bool:
    """Whether git cannot read the index of the checkout *root* (a file that is not one)."""
    try:
        if not index_path(root).exists():
            return False
    except SwarmError:  # no `.git` there to name its index (a worktree being removed)
        return False
    # A pathspec that matches nothing: git reads (and checks) the whole index, prints nothing.
    probe = runner.run(root, "ls-files", "--", ":(literal,top).git/x", check=False)
    return probe.returncode != 0
