"""What every executor's task worker shares: the run, a task in flight and its outcome.

`RunWorker` holds one run's context and the bookkeeping both executors do the same way (a
task's states, its course of attempts, repairs, the diff of its branch, its start commit);
`task_worker.TaskWorker` runs tasks here, `ray_exec.RayTaskWorker` on a Ray cluster.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Unpack

from worktree_swarm.core import paths, units
from worktree_swarm.core.identity import parse_author
from worktree_swarm.core.models import Emit, TaskState
from worktree_swarm.core.run_settings import RunSpec
from worktree_swarm.core.task import Task
from worktree_swarm.core.text import paths_text
from worktree_swarm.git import committed_secrets, diffs, gitconfig, merge_tree
from worktree_swarm.git import repo as git
from worktree_swarm.guard.watcher import Guard
from worktree_swarm.infra.disk import DiskUsage
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import AttemptRow, TaskFields
from worktree_swarm.merge.diff import work_tip
from worktree_swarm.report import notes
from worktree_swarm.run.checks import CheckFailure
from worktree_swarm.run.course import Course, repair_prompt
from worktree_swarm.run.gate_model import Rank
from worktree_swarm.run.governor import Gates


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskOutcome:
    """What a worker reports back for one task."""

    state: TaskState
    reason: str = ""
    # Its worktree's disk use as its pipeline ended: recorded with its final state.
    disk: DiskUsage | None = None


@dataclass(slots=True, kw_only=True)
class Live:
    """A task in flight: its stop event and the port block it owns."""

    task: Task
    port_slot: int | None  # None: the next free block, given when it is launched
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    resume_from: AttemptRow | None = None
    rank: Rank | None = None  # its place in the scheduler's order, for the gate's queue
    # Set once an adopted agent holds its slot (or the task went another way): no new agent
    # is launched before, so a resumed run never runs more than `jobs` agents.
    adopted: threading.Event = field(default_factory=threading.Event)
    # While it waits out a rate limit of its provider: it takes no place of a task in flight,
    # so other providers' tasks start meanwhile.
    waiting: bool = False
    # What its worker came to, set before it is handed over (the run loop's queue).
    outcome: TaskOutcome | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunContext:
    """What every task of one run shares, whichever executor runs it."""

    repo: git.Repo
    spec: RunSpec
    store: Store
    run_id: str
    base_commit: str
    gate: Gates
    guard: Guard
    emit: Emit  # records an event and hands it to the observer
    announce: Emit  # hands one already on record (a state's) to the observer
    logs_root: Path


class RunWorker:
    """The part of a task worker every executor shares: its run, by attribute."""

    def __init__(self, run: RunContext) -> None:
        self.repo = run.repo
        self.spec = run.spec
        self.store = run.store
        self.run_id = run.run_id
        self.base_commit = run.base_commit
        self.gate = run.gate
        self.guard = run.guard
        self._emit = run.emit
        self._announce = run.announce
        self._logs_root = run.logs_root
        self._findings = run.logs_root / notes.FILE_NAME
        notes.prepare(self._findings)  # its header, before any agent writes
        self._tasks = {t.id: t for t in run.spec.tasks}
        self._git_identity = _git_identity(run.repo.root, author=run.spec.commit_author)

    def close(self) -> None:
        """Let go of what the worker holds for the run (agents carry on)."""

    def halted(self) -> str | None:
        """Why no task of the run can go on now (its Ray cluster is lost); else None."""
        return None

    def _state(self, task_id: str, state: TaskState, **fields: Unpack[TaskFields]) -> None:
        # Intermediate states are informational; the main thread records final ones.
        data = self.store.record_state(self.run_id, task_id, state, **fields)
        self._announce("state", task_id, data)

    def _running(self, task_id: str, number: int, **fields: Unpack[TaskFields]) -> None:
        """Attempt *number* starts: the task runs, timed from its first attempt (of this go).

        Not from each attempt: a task that waited hours for a usage window took that long.
        *fields* are recorded with the state, in its transaction.
        """
        row = self.store.task(self.run_id, task_id)
        first = row is None or row.started_at is None or number <= row.retry_base + 1
        if first:
            fields["started_at"] = time.time()
        fields["reason"] = ""
        self._state(task_id, TaskState.RUNNING, **fields)

    def _resting(self, task_id: str, number: int, course: Course) -> None:
        """Record the wait after rate-limited attempt *number* and show until when."""
        self.store.set_retry_at(
            self.run_id,
            task_id,
            number,
            course.not_before,
            window=course.window,
            progressed=course.got_work_done,
        )
        when = units.clock_time(course.not_before)
        self._state(task_id, TaskState.RATE_LIMITED, reason=f"resuming after {when}")

    def _course(self, task: Task, previous: list[AttemptRow]) -> Course:
        """Where *task*'s attempts (*previous*, as recorded) stand (none: at the start)."""
        row = self.store.task(self.run_id, task.id)
        # `swarm retry` starts the count of rate-limit retries again (and, fresh, the session).
        since = [a for a in previous if row is None or a.number > row.retry_base]
        return Course.resumed(
            task,
            previous,
            since=since,
            fresh=row is not None and row.retry_fresh,
            instruction=row.instruction if row is not None else None,
            repairs=row.repairs if row is not None else 0,
        )

    def _repair(self, task: Task, course: Course, failure: CheckFailure) -> TaskOutcome | None:
        """Hand failing checks back to the agent if a `repair` round is left; else the end."""
        if failure.stopped or course.repairs_left <= 0:
            return check_failed(failure)
        course.repairs_left -= 1
        course.repair_due = True  # counted in the store once its attempt starts
        self._instruct(task.id, course, repair_prompt(failure))
        return None

    def _charge_repair(self, task: Task, course: Course) -> None:
        """Count a repair round as its attempt starts.

        Counted when handed back, a manager killed before the attempt began lost the round:
        the resumed one ran the checks again and found no round left.
        """
        self.store.update_task(self.run_id, task.id, **self._repair_charged(task, course))

    def _repair_charged(self, task: Task, course: Course) -> TaskFields:
        """What counts a due repair round as its attempt starts (nothing when none is due)."""
        if not course.repair_due:
            return {}
        course.repair_due = False
        return {"repairs": task.repair - course.repairs_left}

    def _instruct(self, task_id: str, course: Course, prompt: str | None) -> None:
        """Ask *task_id*'s agent to do *prompt* next; kept in the store for a resumed manager."""
        course.instruct(prompt)
        self.store.update_task(self.run_id, task_id, instruction=prompt)

    def _completed(self, task_id: str, course: Course) -> None:
        """An attempt ran to its end: what it was asked is done with (see Course.completed)."""
        if course.pending is not None:
            self.store.update_task(self.run_id, task_id, instruction=None)
        course.completed()

    def _record_own_commits(self, task: Task, base: str, tip: str | None) -> None:
        """Record the agent's own commits since the branch's last recorded tip holding a secret.

        A secret of the run's environment (this manager's, the task's ``env``): each such
        commit not recorded yet is, for `swarm pr` and `swarm merge` (which refuse the branch
        while it holds one, where the value may not be known) and `swarm status`. The task's
        state is its attempt's. No git runs unless *tip* moved from that recorded tip.
        """
        row = self.store.task(self.run_id, task.id)
        since = (row.tip_commit if row is not None else None) or base
        if tip is None or tip == since:
            return  # the usual case: the checkpoint is the attempt's only commit
        found = committed_secrets.new_leaks(
            self.repo,
            self.store,
            self.run_id,
            since=since,
            base=base,
            tip=tip,
            env={**os.environ, **dict(task.env)},
        )
        for leak in found:
            self._emit(committed_secrets.EVENT, task.id, committed_secrets.event_data(leak))

    def _record_diff(self, task_id: str, base: str, tip: str) -> diffs.DiffStat:
        """Store what the task's branch changed from *base* to *tip*; return it."""
        stat = diffs.diff_stat(self.repo, base, tip)
        self.store.update_task(
            self.run_id,
            task_id,
            diff_files=stat.files,
            diff_insertions=stat.insertions,
            diff_deletions=stat.deletions,
            tip_commit=tip,
        )
        return stat

    def _start_commit(self, task: Task) -> str | TaskOutcome:
        """The commit *task* starts from: the run's base, or its dependencies' branches merged."""
        if not task.depends_on:
            return self.base_commit
        tips = []
        taken = self.store.taken_over(self.run_id)
        for dep in task.depends_on:
            row = self.store.task(self.run_id, dep)
            tip = None if row is None else work_tip(self.repo, row, taken=taken)
            if tip is None:
                owner = f" (run {taken[dep]} owns it now)" if dep in taken else ""
                return TaskOutcome(
                    state=TaskState.BLOCKED, reason=f"branch of {dep} is missing{owner}"
                )
            tips.append(tip)
        if len(tips) == 1:
            return tips[0]
        try:
            return merge_tree.merge_commits(
                self.repo,
                tips,
                message=f"swarm: merge dependencies of {task.id}",
                author=self.spec.commit_author,
            )
        except merge_tree.MergeConflictError as exc:
            files = paths_text(exc.files) or "unknown files"
            deps = ", ".join(task.depends_on)
            return TaskOutcome(
                state=TaskState.BLOCKED, reason=f"dependencies {deps} conflict in {files}"
            )


def worktree_path(spec: RunSpec, task: Task) -> Path:
    """Where *task*'s worktree lives."""
    if spec.worktree_root is None:
        msg = "RunSpec.worktree_root must be set"
        raise ValueError(msg)
    return paths.worktree_path(spec.worktree_root, task.id)


def check_failed(failure: CheckFailure) -> TaskOutcome:
    """The outcome of a setup or check step that did not pass."""
    if failure.stopped:
        return TaskOutcome(state=TaskState.STOPPED, reason=failure.summary)
    return TaskOutcome(state=TaskState.FAILED, reason=str(failure))


def _git_identity(root: Path, *, author: str) -> dict[str, str]:
    """The user's effective identity and global ignore file, as git resolves them in *root*.

    Without a configured identity, the run's commit *author* stands in: an agent CLI that
    finds none would otherwise write one into the repository's shared config (aider does).
    """
    found = {}
    values = gitconfig.config_values(root, {"user.name", "user.email", "core.excludesfile"})
    for key in ("user.name", "user.email", "core.excludesFile"):
        value = values.get(key.lower(), "").strip()
        if value and key == "core.excludesFile":
            value = gitconfig.config_path(root, key, value)
        if value:
            found[key] = value
    ident = parse_author(author)
    if ident is not None and not ("user.name" in found and "user.email" in found):
        found.setdefault("user.name", ident.name)
        found.setdefault("user.email", ident.email)
    return found
