"""The guard of a `swarm merge` that runs programs: its resolvers and checks, watched like agents.

A resolver is the task's agent and a check runs code from the task branches: while either
runs, the user's checkouts, git's files that run code and every branch (but what the merge
moves itself, which it announces) are watched as during `swarm run`. One guard serves the
whole command; after each program it scans, puts back what the program wrote and tells the
merge, which undoes that task's merge. Each write is recorded as an ``outside_write`` event
of the run, where `swarm report` shows them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from worktree_swarm.core.models import ProcessIdentity
from worktree_swarm.core.paths import merge_guard_dir
from worktree_swarm.git import repo as git
from worktree_swarm.guard import remotes
from worktree_swarm.guard.snapshot import drop_baselines
from worktree_swarm.guard.watcher import Guard
from worktree_swarm.infra import proc
from worktree_swarm.infra.store import Store
from worktree_swarm.run.retry import OUTSIDE_WRITE

# The suspect named for the checks run on the target before any merge (no task's).
BASELINE_CHECKS = "merge checks"


class MergeGuard:
    """Watches outside the merge worktree while the merge's programs run."""

    def __init__(
        self,
        repo: git.Repo,
        store: Store,
        run_id: str,
        *,
        exclude: Sequence[Path],
        worktree: Path | None = None,
        restore: bool = True,
    ) -> None:
        """Without *restore* (``--allow-outside-writes``) writes are recorded, not put back.

        *worktree*: the merge worktree, its programs' (the git dirs of submodules they check
        out there included).
        """
        self._store = store
        self._restore = restore
        self._run_id = run_id
        self._dir = merge_guard_dir(repo, run_id)
        self._guard = Guard(
            repo,
            work_dir=self._dir,
            restore=restore,
            exclude=[*exclude, *proc.output_files()],
            others=self._in_a_run,
            answers=False,
        )
        if worktree is not None:
            self._guard.own_worktree(worktree)
        self._notes: list[str] = []
        # When the scan about to run last looked (the start of the window it judges).
        self._since = time.time()

    @contextlib.contextmanager
    def watching(self) -> Iterator[MergeGuard]:
        """Take the baselines; on leaving, a last scan puts back what is still out of place."""
        self._since = time.time()
        # A killed merge's baselines (its store: what its captures hashed) go.
        drop_baselines(self._dir)
        # Listening first: a move told and done before the baselines are read is in them.
        with self._guard.listening():
            self._guard.start()
            try:
                yield self
            finally:
                self._guard.close()
                self._guard.scan(deep=True)
                self._record()
                self._guard.looked_last()

    @contextlib.contextmanager
    def program(self, who: str) -> Iterator[Callable[[ProcessIdentity], None]]:
        """While inside, the program handed to the callback yielded runs for *who* (a suspect)."""

        def started(identity: ProcessIdentity) -> None:
            self._guard.agent_started(who, identity)

        try:
            yield started
        finally:
            self._guard.agent_ended(who)

    def outside(self) -> str:
        """Scan now: what the program that just ended wrote outside, put back ('' if nothing)."""
        began = time.time()
        self._guard.scan(deep=True)
        self._since = began
        return "; ".join(self._record())

    def notes(self) -> list[str]:
        """Scans that failed since the last call, one line each (that part was not checked)."""
        notes, self._notes = self._notes, []
        return notes

    def _in_a_run(self, task_id: str) -> bool:
        """Whether a run beside the merge moved *task_id*'s branch since the last scan, maybe.

        So while the task is active there, and when it ended since (its last checkpoint, or
        its branch made and finished between two scans): the run's guard judges those moves.
        """
        for run in self._store.runs():
            if run.ended_at is not None and run.ended_at < self._since:
                continue
            row = self._store.task(run.run_id, task_id)
            if row is None:
                continue
            if row.state.is_active or (row.ended_at or 0.0) >= self._since:
                return True
        return False

    def _record(self) -> list[str]:
        for failure in self._guard.drain_failures():
            self._store.add_event(self._run_id, "guard_error", task_id=None, data=failure.as_dict())
            self._notes.append(f"guard: {failure.job} scan failed: {failure.reason}")
        for note in self._guard.drain_notes():
            self._store.add_event(self._run_id, remotes.EVENT, task_id=None, data=note.as_dict())
            self._notes.append(remotes.note_line(note.refs))
        found = []
        for violation in self._guard.drain():
            self._store.add_event(
                self._run_id, OUTSIDE_WRITE, task_id=violation.task, data=violation.as_dict()
            )
            if violation.restored:
                fate = "put back"
            else:
                fate = "not put back, see `swarm report`" if self._restore else "kept"
            found.append(f"{violation.summary()} ({fate})")
        return found
