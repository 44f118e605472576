"""The guard's judgement of git's own files changed while no manager watched.

A resumed run's guard (:meth:`UnwatchedChecks.judge_unwatched_surface`), and `swarm stop`
or `swarm run --force` ending a run whose manager died
(:meth:`UnwatchedChecks.judge_ended_unwatched`), compare git's files with the baseline the
killed manager kept (``surface.json``): what the
agents that ran on unwatched changed is put back, as a live guard would; what git itself wrote
meanwhile (a worktree moved or removed, a task's own submodule checked out) is taken.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from pathlib import Path

from worktree_swarm.core.errors import SwarmError
from worktree_swarm.git import repo as git
from worktree_swarm.git import tampering
from worktree_swarm.guard import surface, surface_diff, surface_entry, surface_kept, surface_ties
from worktree_swarm.guard.model import Violation
from worktree_swarm.guard.surface_checks import NOT_KNOWN, SurfaceChecks


class UnwatchedChecks(SurfaceChecks):
    """Git's files judged against a killed manager's baseline."""

    def judge_ended_unwatched(self, suspects: Mapping[str, Path]) -> list[Violation]:
        """A run whose manager died, ended without one (`swarm stop`, `swarm run --force`).

        Git's files are judged against the killed manager's baseline as a resumed run's guard
        judges them (:meth:`judge_unwatched_surface`), *suspects* the tasks whose agents ran
        on unwatched: a change is put back and returned, noted for the caller to record and
        apply (``settle_guard``); the baseline kept for a later manager is the one judged by.
        Nothing is looked at without suspects or a kept baseline.
        """
        if not suspects:
            return []
        with self._lock:
            for path in self._users_worktrees():  # their ties, as a run's guard reads them
                with contextlib.suppress(SwarmError, OSError):
                    self._linked[path] = git.git_dir(path)
            self._take_surface()
        if self._last_surface is None:
            return []
        self.judge_unwatched_surface(suspects)
        with self._repo_lock:
            surface_kept.save(self._dir, self._surface)
        return self.drain()

    def judge_unwatched_surface(self, suspects: Mapping[str, Path]) -> None:
        """A resumed run: git's files changed since the killed manager's baseline.

        *suspects* are the tasks whose agents ran on while no manager watched (the adopted
        ones), with their worktrees: a change is theirs, put back and reported as any outside
        write, so that a `core.fsmonitor` or a hook one planted does not become the new
        baseline. With none, or no baseline kept, what was found at the start is the baseline.
        Your linked worktrees git removed or moved meanwhile are followed first
        (:func:`surface_ties.as_git_left`): their hooks directories are not the agents' writes.
        """
        last, self._last_surface = self._last_surface, None
        if last is None or not suspects:
            return
        with self._lock, self._repo_lock:
            common = self.repo.common_dir
            last, followed = surface_ties.as_git_left(common, last)
            for checkout, moved in followed.items():
                self._log(
                    f"your worktree {checkout} was removed: no longer watched"
                    if moved is None
                    else f"your worktree {checkout} was moved to {moved}: watched there"
                )
            now, self._surface = self._surface, dict(last)
            labels = [  # directories' bits: git's own directories made meanwhile, by the
                label  # killed manager too (a task's ref directory); a live scan judges those
                for label in surface_diff.changed(last, now)
                if (now.get(label) or last[label]).kind not in {surface_entry.MODE, *NOT_KNOWN}
            ]
            if labels:
                labels = self._not_worktrees_made(common, now, labels)
            if surface.RERERE in labels and surface_diff.rerere_made(self.repo.root, last, now):
                labels.remove(surface.RERERE)  # git's own (any commit makes it), empty
            labels = self._not_theirs_unwatched(labels, suspects, last, now)
            if not labels:
                self._surface = now
                return
            self._log(f"git's files changed while no manager watched: {', '.join(labels)}")
            self._changes.mark_all()
            # The rest as found: the baseline, before the put-back is checked against it (a
            # worktree of yours moved meanwhile is not the plant left in place).
            for label, entry in now.items():
                if label not in labels and label not in self._unrestored:
                    self._surface[label] = entry
            for label in set(last) - set(now) - set(labels):
                self._surface.pop(label, None)
            self._undo_surface(labels, now, tuple(sorted(suspects)), time.time())

    def _not_theirs_unwatched(
        self,
        labels: list[str],
        suspects: Mapping[str, Path],
        last: surface_entry.Surface,
        now: surface_entry.Surface,
    ) -> list[str]:
        """*labels* less what git and the adopted tasks' own work changed while unwatched.

        The ties of a worktree as `git worktree move` or `repair` writes them, which a live
        guard follows (put back, they would name the old place): its ``.git`` file and its
        admin dir's ``gitdir`` naming each other, its ``commondir`` naming this repository
        (its ``.git`` gone: its admin dir removed, or naming it no more; *last*, the baseline).
        A worktree of yours whose folder is gone whole goes with all of it, nobody blamed: what
        a live guard does with one removed whole (:func:`surface_ties.gone_whole`). Any other
        change of a tie is judged (pointed at a copy of the repository, your git there would
        read the copy's config). And the git dirs of an adopted task's own
        submodules (`git submodule update --init` in its worktree): as found, as a live guard
        takes them, but for what makes git run a program (:meth:`_take_submodule_file`).
        """
        owners = {}
        for task, path in suspects.items():  # as swarm made it, its admin dir
            admin = tampering.own_admin(self.repo, path)
            if admin is not None:
                owners[admin.name] = task
        common = self.repo.common_dir
        with_gone = set()
        for checkout, went in surface_ties.gone_whole(common, last, labels).items():
            if went:
                self._log(f"your worktree {checkout} was deleted: no longer watched")
                with_gone |= went
        left = []
        for label in labels:
            if label in with_gone:
                continue
            parts = label.split("/", 3)
            in_admin = len(parts) >= 3 and parts[0] == "worktrees"  # noqa: PLR2004
            if surface_ties.followed(label):
                if not surface_ties.moved_by_git(common, label, now.get(label), last.get(label)):
                    left.append(label)
            elif not (
                in_admin
                and parts[2] == "modules"
                and owners.get(parts[1]) in suspects
                and self._take_submodule_file(label, now.get(label))
            ):
                left.append(label)
        return left
