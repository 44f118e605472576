"""The run's fields and its record: every task's state and the events, as they happen.

:class:`RunState` sets up what the run loop and its parts share (the tasks and their states,
the live ones and their port blocks, the gate, the guard, the disk budget, the worker that runs
a task) and records what happens: each task's state recorded and announced
(:meth:`RunState._set_state`), every event written to the store and handed to the observer,
the guard's verdicts put on record as it reaches them.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from collections.abc import Mapping
from typing import Unpack

from worktree_swarm.core.errors import SwarmError
from worktree_swarm.core.models import Emit, TaskState
from worktree_swarm.core.paths import guard_dir, run_dir
from worktree_swarm.core.run_settings import Executor, RunSpec
from worktree_swarm.core.scheduler import Scheduler
from worktree_swarm.git import half_made
from worktree_swarm.git import repo as git
from worktree_swarm.guard.model import Violation
from worktree_swarm.guard.watcher import Guard
from worktree_swarm.infra import faults, proc
from worktree_swarm.infra.ports import PortClaims
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import TaskFields
from worktree_swarm.report.run_info import know_secrets_of
from worktree_swarm.run.disk_budget import DiskBudget
from worktree_swarm.run.gate_model import GateView
from worktree_swarm.run.governor import Gates
from worktree_swarm.run.ray_exec import RayTaskWorker
from worktree_swarm.run.retry import OUTSIDE_WRITE
from worktree_swarm.run.run_worker import Live, RunContext, TaskOutcome
from worktree_swarm.run.task_worker import TaskWorker

Observer = Emit  # what the CLI hands the run: the same event sink


class RunState:
    """The fields of a run shared by its loop, and what records its tasks' states and events."""

    def __init__(
        self,
        *,
        repo: git.Repo,
        spec: RunSpec,
        store: Store,
        run_id: str,
        base_commit: str,
        observer: Observer | None = None,
        states: Mapping[str, TaskState] | None = None,
    ) -> None:
        self.repo = repo
        self.spec = spec
        self.store = store
        self.run_id = run_id
        self.base_commit = base_commit
        self._observer = observer
        know_secrets_of(repo.root, spec.tasks)
        self._tasks = {t.id: t for t in spec.tasks}
        self._scheduler = Scheduler(spec.tasks)
        self._states = dict(states or {t.id: TaskState.PENDING for t in spec.tasks})
        self._live: dict[str, Live] = {}
        self._adopt: dict[str, Live] = {}
        self._resumed = False  # a run its earlier manager started (`swarm resume`, `retry`)
        self._ports = PortClaims()  # blocks of SWARM_PORT, apart from other managers' too
        # Taken off in C, no Python run in between: a stop signal's KeyboardInterrupt lands
        # before a task's outcome is taken or after it is the caller's (a Queue's `get` runs
        # Python once the item is off it: interrupted there, the outcome was lost and the
        # stop waited for it for ever).
        self._done: queue.SimpleQueue[tuple[str, TaskOutcome]] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._starved = False  # a launch of this pass of the run loop found no thread
        self._wake_at: float | None = None  # when a hold that keeps a pending task back ends
        self.gate = Gates(
            spec.jobs,
            max_cost_usd=spec.max_cost_usd,
            budget_share=spec.budget_share,
            backoff_base=spec.rate_limit_backoff,
            on_change=self._gate_changed,
        )
        self.guard = Guard(
            repo,
            work_dir=guard_dir(repo, run_id),
            restore=not spec.allow_outside_writes,
            # Not the user's: where worktrees go, and where this run's own output goes.
            exclude=[*([spec.worktree_root] if spec.worktree_root else []), *proc.output_files()],
            on_record=self._record_verdict,
            merges=lambda path: half_made.merge_worktree(repo, store, path),
        )
        self._guard_reasons: dict[str, str] = {}
        self._unrecorded: list[Violation] = []  # verdicts the store refused (busy, full)
        self._unrecorded_lock = threading.Lock()
        self.manager_log = run_dir(repo, run_id) / faults.MANAGER_LOG
        self.disk = DiskBudget(
            repo=repo, spec=spec, store=store, run_id=run_id, emit=self._emit, guard=self.guard
        )
        run = RunContext(
            repo=repo,
            spec=spec,
            store=store,
            run_id=run_id,
            base_commit=base_commit,
            gate=self.gate,
            guard=self.guard,
            emit=self._emit,
            announce=self._announce,
            logs_root=run_dir(repo, run_id),
        )
        self._worker: TaskWorker | RayTaskWorker
        if spec.executor is Executor.RAY:  # agents on a Ray cluster's nodes (docs/cluster.md)
            self._worker = RayTaskWorker(run)
        else:
            self._worker = TaskWorker(run, disk=self.disk)

    def _record_verdict(self, violation: Violation) -> None:
        """Put a verdict on record as the guard reaches it (in the guard's thread).

        It must not end the guard's thread: one the store refuses is recorded by the run
        loop's next turn.
        """
        try:
            self._emit(OUTSIDE_WRITE, violation.task, violation.as_dict())
        except (sqlite3.Error, OSError, SwarmError):
            with self._unrecorded_lock:
                self._unrecorded.append(violation)

    def _ports_of(self, slot: int | None) -> tuple[int, int]:
        """The first port of *slot*'s block and how many (none for no slot)."""
        if slot is None:
            return 0, 0
        return self.spec.port_base + slot * self.spec.port_block, self.spec.port_block

    def _apply_blocking(self) -> None:
        for task_id, reason in self._scheduler.newly_blocked(self._states).items():
            self._set_state(task_id, TaskState.BLOCKED, reason=reason, ended_at=time.time())

    def _stop_pending(self, reason: str) -> None:
        for task_id, state in self._states.items():
            if state is TaskState.PENDING:
                self._set_state(task_id, TaskState.STOPPED, reason=reason)

    def _set_state(
        self,
        task_id: str,
        state: TaskState,
        *,
        replaces: TaskState | None = None,
        **fields: Unpack[TaskFields],
    ) -> None:
        """Record and announce *task_id*'s *state*; *replaces*: the final state it withdraws."""
        self._states[task_id] = state
        data = self.store.record_state(self.run_id, task_id, state, replaces=replaces, **fields)
        self._announce("state", task_id, data)

    def _gate_changed(self, view: GateView) -> None:
        # A provider's concurrency, wait or reason changed: `status` and the report read these.
        self._emit("gate", None, view.to_json())

    def _emit(self, kind: str, task_id: str | None, data: Mapping[str, object]) -> None:
        self.store.add_event(self.run_id, kind, task_id=task_id, data=data)
        self._announce(kind, task_id, data)

    def _announce(self, kind: str, task_id: str | None, data: Mapping[str, object]) -> None:
        """Hand an event already on record to the observer."""
        if self._observer is not None:
            self._observer(kind, task_id, data)
