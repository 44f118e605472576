"""The run loop: scheduler + task workers + store, one thread per task in flight.

The main thread owns scheduling and every final state; each started task gets a worker
thread (task_worker.py) and hands back an outcome. The work is a pipeline: up to ``jobs``
tasks are provisioned ahead while agents run, an agent holds one of the gate's slots only while
its process lives, and checks run under their own bound, so git and check overhead overlaps
agent time instead of adding to it. Stop requests (Ctrl-C, SIGTERM, ``swarm stop``) reach
workers as events.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Mapping
from typing import NoReturn, Unpack

import psutil

from worktree_swarm.agents import provider_of
from worktree_swarm.core.errors import BadInputError, RunInterruptedError, SwarmError
from worktree_swarm.core.models import Emit, ProcessIdentity, RunStatus, TaskState
from worktree_swarm.core.paths import SCRUB_SKIP, guard_dir, run_dir
from worktree_swarm.core.run_settings import Executor, RunSettings, RunSpec
from worktree_swarm.core.scheduler import Scheduler
from worktree_swarm.core.task import Task
from worktree_swarm.git import repo as git
from worktree_swarm.guard import remotes, sandbox
from worktree_swarm.guard.model import Violation, blamed
from worktree_swarm.guard.watcher import UNWATCHED_EVENT, Guard
from worktree_swarm.infra import faults, proc, proctree, redact
from worktree_swarm.infra.ports import PortClaims
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import AttemptRow, TaskFields, task_from_json, task_to_json
from worktree_swarm.report.status import know_secrets_of
from worktree_swarm.run.disk_budget import DiskBudget
from worktree_swarm.run.governor import Gates, GateView
from worktree_swarm.run.ray_cluster import unreachable
from worktree_swarm.run.ray_exec import RayTaskWorker
from worktree_swarm.run.ray_preflight import check_sandbox
from worktree_swarm.run.retry import OUTSIDE_WRITE, settle_guard, since_last_retry
from worktree_swarm.run.run_worker import Live, RunContext, TaskOutcome, worktree_path
from worktree_swarm.run.task_worker import TaskWorker

Observer = Emit  # what the CLI hands the run: the same event sink

_STARVED_WAIT = 1.0  # seconds between tries to start a task's thread when none could start

__all__ = ["Observer", "Runner", "new_run_id", "spec_from_json", "spec_to_json", "worktree_path"]


def new_run_id() -> str:
    """A sortable, unique run id: UTC timestamp plus a random suffix."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


# What the catch-all of a task's worker says is the system's limit, not an internal error.
_FILE_LIMITS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})


class Runner:
    """Execute one run: :meth:`create` a new one or :meth:`resume` a recorded one."""

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
        self._ports = PortClaims()  # blocks of SWARM_PORT, apart from other managers' too
        self._done: queue.Queue[tuple[str, TaskOutcome]] = queue.Queue()
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
            logs_root=run_dir(repo, run_id),
        )
        self._worker: TaskWorker | RayTaskWorker
        if spec.executor is Executor.RAY:  # agents on a Ray cluster's nodes (docs/cluster.md)
            self._worker = RayTaskWorker(run)
        else:
            self._worker = TaskWorker(run, disk=self.disk)

    @classmethod
    def create(
        cls,
        *,
        repo: git.Repo,
        spec: RunSpec,
        store: Store,
        observer: Observer | None = None,
        base: str | None = None,
    ) -> Runner:
        """Record a new run in the store and return its runner.

        *base* (default: the main checkout's HEAD) is the commit every task starts from.
        """
        run_id = new_run_id()
        base = base or git.head_commit(repo)
        store.create_run(
            run_id=run_id,
            base_commit=base,
            repo_root=str(repo.root),
            jobs=spec.jobs,
            manager=proctree.identity_of(os.getpid()),
            spec_json=spec.settings.to_json(),
            tasks=[(t, t.branch, str(worktree_path(spec, t))) for t in spec.tasks],
        )
        return cls(
            repo=repo, spec=spec, store=store, run_id=run_id, base_commit=base, observer=observer
        )

    @classmethod
    def resume(
        cls, *, repo: git.Repo, store: Store, run_id: str, observer: Observer | None = None
    ) -> Runner:
        """Reconcile a run whose manager died and return a runner that carries it on.

        Final tasks stay as they are. A task whose last attempt is still open has that
        attempt adopted (a live agent is supervised again; a dead one is read from its log),
        any other started task continues in its worktree, and pending tasks start as usual
        (one put back to pending for a retry: a new attempt in its kept worktree).
        """
        run = store.get_run(run_id)
        if run is None:
            raise BadInputError(f"unknown run {run_id!r}; `swarm status` shows the latest run")
        rows = store.tasks(run_id)
        tasks = tuple(task_from_json(row.spec_json) for row in rows)
        spec = RunSpec.of(RunSettings.from_json(run.spec_json), tasks)
        if spec.executor is Executor.RAY and (problem := unreachable(spec.settings, run_id)):
            raise BadInputError(problem)  # before anything changes
        if spec.sandbox and spec.executor is Executor.RAY:
            # On the nodes, where the agents run (joining the cluster with its lost_after).
            check_sandbox(spec.ray_address, lost_after=spec.lost_after)
        elif spec.sandbox:
            sandbox.check_available()
        # What the dead manager's guard was at: its put-backs, its verdicts not yet applied.
        settle_guard(repo, store, run_id)
        rows = store.tasks(run_id)  # a suspect's row failed by a verdict
        if run.status != RunStatus.RUNNING:  # interrupted with tasks left (a lost cluster)
            store.reopen_run(run_id)
        states = {}
        for row in rows:
            states[row.task_id] = row.state if row.state.is_final else TaskState.PENDING
        store.set_manager(run_id, proctree.identity_of(os.getpid()))
        runner = cls(
            repo=repo,
            spec=spec,
            store=store,
            run_id=run_id,
            base_commit=run.base_commit,
            observer=observer,
            states=states,
        )
        verdicts, spent = since_last_retry(
            store, run_id, {r.task_id for r in rows if r.state.is_final}
        )
        if not spec.allow_outside_writes:
            runner._guard_reasons.update(verdicts)
        runner.gate.count_spent(spent)
        for row in rows:
            attempts = store.attempts(run_id, row.task_id)
            # A task put back to pending (watch's retry) starts a new attempt in its kept
            # worktree; a retried task's attempts before the retry are history, not adopted.
            if (
                not row.state.is_final
                and row.state is not TaskState.PENDING
                and attempts
                and attempts[-1].number > row.retry_base
            ):
                # Its agent may run on: the block it was given stays its own.
                slot = _port_slot(attempts[-1], spec)
                live = Live(task=runner._tasks[row.task_id], port_slot=slot)
                live.resume_from = attempts[-1]
                runner._adopt[row.task_id] = live
        return runner

    # -- main loop -----------------------------------------------------------------------

    def execute(self) -> dict[str, TaskState]:
        """Run every task to a final state; returns the final states.

        KeyboardInterrupt stops every agent (whole trees), records them as stopped and
        re-raises once the state is consistent.
        """
        self.store.on_full = faults.Pause(run_dir(self.repo, self.run_id)).wait
        proc.raise_open_file_limit()
        previous_hook = threading.excepthook
        threading.excepthook = faults.thread_hook(self.manager_log)
        try:
            return self._execute()
        finally:
            self._worker.close()
            self._ports.close()
            threading.excepthook = previous_hook
            self.store.on_full = None

    def _execute(self) -> dict[str, TaskState]:
        self._emit("run_started", None, {"run_id": self.run_id, "base": self.base_commit})
        if self.spec.sandbox and self.spec.executor is not Executor.RAY:
            sandbox.prepare(self.repo.common_dir)  # before the guard's baseline
        self.guard.start()
        if (unwatched := self.guard.unwatched()) is not None:  # a resumed run
            self._emit(UNWATCHED_EVENT, None, unwatched.as_dict())
        self.guard.keep_base_for_resume()
        self.guard.watch_in_background()
        try:
            self._start_adopted()
            while True:
                self._starved = False  # this pass's launches say whether a thread was refused
                self._apply_blocking()
                if (halted := self._worker.halted()) is not None:
                    self._halt(halted)
                if self._stopping.is_set():
                    self._stop_pending("run stopped before it started")
                elif self.gate.over_budget:
                    self._stop_pending("budget reached before it started")
                else:
                    self._launch_ready()
                if not self._live and self._starved:
                    self._poll_stop_requests()
                    self._stopping.wait(_STARVED_WAIT)  # threads ended elsewhere free up
                    continue
                if not self._live:
                    break
                self._wait_for_one()
            self._final_scan()
        except KeyboardInterrupt:
            self.request_stop()
            self._drain()
            self._final_scan()
            self._scrub_logs()
            self.store.finish_run(self.run_id, status=RunStatus.INTERRUPTED)
            self._emit("run_finished", None, {"status": RunStatus.INTERRUPTED.value})
            raise
        # As for a run whose manager is gone (control.end_if_final): `swarm stop` ended it.
        stopped = TaskState.STOPPED in self._states.values()
        status = RunStatus.STOPPED if self._stopping.is_set() or stopped else RunStatus.FINISHED
        self._poll_stop_requests()
        self._scrub_logs()
        self.store.finish_run(self.run_id, status=status)
        self._emit("run_finished", None, {"status": status.value})
        return dict(self._states)

    def _halt(self, why: str) -> NoReturn:
        """End the run as interrupted, its unfinished tasks pending: it cannot go on (*why*).

        The live tasks are told to stop (a wait for a rate limit ends; what asks the lost
        cluster fails at once); each that ends without an outcome of its own waits, pending,
        for `swarm resume`, as do the tasks not started.
        """
        for live in self._live.values():
            live.stop.set()
        while self._live:
            task_id, outcome = self._done.get()
            if outcome.state is TaskState.STOPPED:  # cut short by the stop above
                outcome = TaskOutcome(state=TaskState.PENDING, reason="")
            self._finish(task_id, outcome)
        for task_id, state in self._states.items():
            row = self.store.task(self.run_id, task_id)
            if state is TaskState.PENDING and (row is None or not row.reason):
                self._set_state(task_id, TaskState.PENDING, reason=f"interrupted: {why}")
        self._final_scan()
        self._scrub_logs()
        self.store.finish_run(self.run_id, status=RunStatus.INTERRUPTED)
        self._emit("run_finished", None, {"status": RunStatus.INTERRUPTED.value, "why": why})
        raise RunInterruptedError(
            f"{why}; the run is interrupted, its tasks' work kept on their branches as last "
            "pushed: run `swarm resume` once a cluster answers there"
        )

    def _scrub_logs(self) -> None:
        """Redact what agents, setup and checks wrote under the run's directory (notes too).

        Not the agents' own config dirs (sessions a resume needs) nor the guard's snapshots.
        """
        redact.scrub_tree(run_dir(self.repo, self.run_id), skip=SCRUB_SKIP)

    def request_stop(self) -> None:
        """Stop every live agent and start nothing new."""
        self._stopping.set()
        for live in list(self._live.values()):
            live.stop.set()

    def _start_adopted(self) -> None:
        # Adopted tasks start first and regardless of `jobs`: their agents may already run.
        # Each takes its slot before any new agent may: a task launched meanwhile would run
        # beside it over `jobs`, and past a budget whose last attempt it has not counted yet.
        open_ones = [
            live for live in self._adopt.values()
            if live.resume_from is not None and live.resume_from.ended_at is None
        ]  # fmt: skip
        for live in self._adopt.values():
            while not self._launch(live):
                self._stopping.wait(_STARVED_WAIT)
            self._states[live.task.id] = TaskState.RUNNING
        self._adopt.clear()
        for live in open_ones:
            while not live.adopted.wait(timeout=0.25):
                self._poll_stop_requests()
                self._apply_guard()

    def _launch_ready(self) -> None:
        # Twice `jobs` in flight: `jobs` running agents, up to `jobs` provisioning or checking.
        # A task waiting out its provider's rate limit is not among them (the gate bounds the
        # agents): it kept other providers' tasks from starting for as long as it waited. No
        # task starts while its own provider is held: it would only wait too.
        resting = self._resting()
        slots = 2 * self.spec.jobs - (len(self._live) - resting)
        holds: list[float] = []  # when the holds that kept a task back end

        def waits(task: Task) -> bool:
            if resting == 0:
                return False
            until = self.gate.waiting_until(provider_of(task.agent))
            if until is not None:
                holds.append(until)
            return until is not None

        picked = self._scheduler.pick(
            states=self._states, running=self._live.keys(), slots=slots, waits=waits
        )
        # Looked at again once the first hold ends, whatever else happens meanwhile: a task
        # held by its provider's pacing waited for the next event, maybe another task's reset
        # minutes away.
        self._wake_at = min(holds, default=None)
        for task_id in picked:
            if not self._launch(Live(task=self._tasks[task_id], port_slot=None)):
                break  # no thread for it now: pending, picked again later
            # In flight for the scheduler; the store says `running` once the agent starts.
            self._states[task_id] = TaskState.RUNNING

    def _resting(self) -> int:
        """How many tasks in flight wait out a rate limit of their provider."""
        return sum(1 for live in self._live.values() if live.waiting)

    def _launch(self, live: Live) -> bool:
        """Start *live*'s worker thread; False when no thread can start now (it is not live).

        Under a limit of processes (``ulimit -u``: threads count) the manager died of
        `can't start new thread`, its agents left running unwatched.
        """
        live.rank = self._scheduler.rank(live.task.id)
        if live.port_slot is None:
            held = [*self._live.values(), *self._adopt.values()]  # adopted ones start first
            used = {other.port_slot for other in held if other.port_slot is not None}
            live.port_slot = self._free_slot(used)
        else:  # an adopted agent's own block, held again (another run may have taken it)
            self._ports.take(*self._ports_of(live.port_slot))
        self._live[live.task.id] = live
        if live.resume_from is None and self.spec.executor is not Executor.RAY:
            # Launched in the scheduler's order, it keeps its place while its worktree is made
            # (here, before its thread can ask): a task whose checkout was quicker waits.
            self.gate.expect(live.rank, provider_of(live.task.agent))
        live.thread = threading.Thread(
            target=self._work, args=(live,), name=f"swarm-{live.task.id}", daemon=True
        )
        try:
            live.thread.start()
        except RuntimeError:
            self.gate.forget(live.rank)
            del self._live[live.task.id]
            self._ports.give_back(*self._ports_of(live.port_slot))
            live.thread = None
            faults.note(self.manager_log, f"no thread can start for {live.task.id} now; it waits")
            self._starved = True
            return False
        return True

    def _work(self, live: Live) -> None:
        try:
            outcome = self._worker.run(live)
        except SwarmError as exc:
            outcome = TaskOutcome(state=TaskState.FAILED, reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - a worker must always report back
            kept = faults.record_exception(self.manager_log, threading.current_thread().name)
            where = f"traceback in {self.manager_log}" if kept else "its traceback not written"
            reason = f"internal error: {exc!r} ({where})"
            # Not EAGAIN: a lock taken without waiting says so too (a fork's is caught where
            # it starts a process).
            if isinstance(exc, OSError) and exc.errno in _FILE_LIMITS:
                limit = proc.system_limit(exc.errno)
                # Out of file descriptors (or memory): the system's, not a bug of swarm's.
                reason = (
                    f"the manager met a system limit ({exc.strerror}: {limit}); its work is"
                    " kept, `swarm retry` runs it again"
                )
            outcome = TaskOutcome(state=TaskState.FAILED, reason=reason)
        self.gate.forget(live.rank)  # ended before it asked for a slot, maybe
        if outcome.state.is_final:
            # The guard's verdict on the task's last moments first (its next scan may be a
            # second away): a write of its own fails it before any final state is announced,
            # and before its dependents start on its branch.
            self.guard.look_now()
        live.adopted.set()  # whichever way it went
        self._done.put((live.task.id, outcome))

    def _wait_for_one(self) -> None:
        """Block until a worker finishes, polling the store for `swarm stop` requests.

        Or until another task waits out a rate limit: the place it leaves is to be filled.
        """
        resting = self._resting()
        while True:
            try:
                task_id, outcome = self._done.get(timeout=0.25)
            except queue.Empty:
                if self._worker.halted() is not None or self._resting() > resting:
                    return
                if self._wake_at is not None and time.time() >= self._wake_at:
                    return  # a hold on a pending task's provider ended: launch it now
                self._poll_stop_requests()
                self._apply_guard()
                continue
            try:
                self._apply_guard()  # may wait out a full disk, and be interrupted there
            except BaseException:
                self._done.put((task_id, outcome))  # finished by _drain, not waited for ever
                raise
            self._finish(task_id, outcome)
            return

    def _free_slot(self, used: set[int]) -> int:
        """The lowest slot free in this run whose ports no other manager of yours holds.

        When every block up to the last port is held elsewhere: the lowest free in this run.
        """
        base, block = self.spec.port_base, self.spec.port_block
        for slot in range((_LAST_PORT + 1 - base) // block):
            if slot not in used and self._ports.take(*self._ports_of(slot)):
                return slot
        return next(i for i in range(len(used) + 1) if i not in used)

    def _ports_of(self, slot: int | None) -> tuple[int, int]:
        """The first port of *slot*'s block and how many (none for no slot)."""
        if slot is None:
            return 0, 0
        return self.spec.port_base + slot * self.spec.port_block, self.spec.port_block

    def _finish(self, task_id: str, outcome: TaskOutcome) -> None:
        live = self._live.pop(task_id)
        self._ports.give_back(*self._ports_of(live.port_slot))
        if live.thread is not None:
            live.thread.join()
        if task_id in self._guard_reasons and outcome.state is not TaskState.FAILED:
            outcome = TaskOutcome(state=TaskState.FAILED, reason=self._guard_reasons[task_id])
        if outcome.state is TaskState.PENDING:  # interrupted (its cluster lost): not ended
            self._set_state(task_id, outcome.state, reason=outcome.reason)
        else:
            self._set_state(task_id, outcome.state, reason=outcome.reason, ended_at=time.time())
        self.disk.finished(task_id)

    def _drain(self) -> None:
        while self._live:
            task_id, outcome = self._done.get()
            self._finish(task_id, outcome)
        self._stop_pending("run stopped before it started")

    def _final_scan(self) -> None:
        self.guard.close()
        self.guard.scan(deep=True)
        self._apply_guard()
        self.guard.looked_last()

    def _apply_guard(self) -> None:
        """Record each new outside write and fail its suspects (unless outside writes are allowed).

        A sole suspect still running is stopped at once; with several, each is failed when it
        ends, since any of them may be the one.
        """
        for failure in self.guard.drain_failures():
            # A scan that failed is told, never swallowed: it is retried, but until it
            # succeeds that part is not watched.
            self._emit("guard_error", None, failure.as_dict())
        for note in self.guard.drain_notes():  # an agent's fetch, maybe: no one's fault
            self._emit(remotes.EVENT, None, note.as_dict())
        found = self.guard.drain()  # each recorded as it was found, or refused (below)
        with self._unrecorded_lock:
            late, self._unrecorded = self._unrecorded, []
        for violation in late:
            self._emit(OUTSIDE_WRITE, violation.task, violation.as_dict())
        for violation in found:
            if self.spec.allow_outside_writes:
                continue
            for task_id in violation.suspects:
                self._blame(task_id, violation)
        # On record and applied: a manager killed before this has the next command apply them.
        self.guard.settled(found)

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

    def _blame(self, task_id: str, violation: Violation) -> None:
        reason = violation.reason(task_id)
        if task_id in self._live:
            self._guard_reasons.setdefault(task_id, reason)
            if len(violation.suspects) == 1:
                self._live[task_id].stop.set()
        elif (announced := self._states.get(task_id, TaskState.PENDING)).is_final:
            # Found only later (a write no scan could see at its end): said as what it replaces.
            row = self.store.task(self.run_id, task_id)
            if row is None or not blamed(row.reason):
                withdrawn = announced if announced is not TaskState.FAILED else None
                self._set_state(task_id, TaskState.FAILED, replaces=withdrawn, reason=reason)

    def _poll_stop_requests(self) -> None:
        self._put_back_store()
        # Only the requested ids: reading every task on each poll made a run quadratic.
        for task_id in self.store.stop_requests(self.run_id):
            if task_id in self._live:
                self._live[task_id].stop.set()
            elif self._states[task_id] is TaskState.PENDING:
                self._set_state(task_id, TaskState.STOPPED, reason="stopped before it started")

    def _put_back_store(self) -> None:
        """Write the state database back if it was deleted under the run, waiting for room.

        The run cannot end before: its record would go with the open file. While the disk is
        full the store cannot record it either, so that is told on the output alone, once.
        """
        told = False
        pause = self.store.on_full

        def waiting(exc: Exception | None) -> None:
            nonlocal told
            if exc is not None and not told and self._observer is not None:
                told = True
                data = {"path": str(self.store.path), "reason": faults.why(exc)}
                self._observer("store_put_back_waiting", None, data)
            if pause is not None:
                pause(exc)

        if faults.retry_while_full(self.store.put_back, waiting if pause else None):
            self._emit("store_put_back", None, {"path": str(self.store.path)})

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
        self.store.update_task(self.run_id, task_id, state=state, **fields)
        data: dict[str, object] = {"state": state.value}
        if fields.get("reason"):
            data["reason"] = fields["reason"]
        if replaces is not None:
            data["replaces"] = replaces.value
        self._emit("state", task_id, data)

    def _gate_changed(self, view: GateView) -> None:
        # A provider's concurrency, wait or reason changed: `status` and the report read these.
        self._emit("gate", None, view.to_json())

    def _emit(self, kind: str, task_id: str | None, data: Mapping[str, object]) -> None:
        self.store.add_event(self.run_id, kind, task_id=task_id, data=data)
        if self._observer is not None:
            self._observer(kind, task_id, data)


def spec_to_json(spec: RunSpec) -> str:
    """The whole validated spec (settings and tasks) as JSON; :func:`spec_from_json` reads it."""
    tasks = [json.loads(task_to_json(task)) for task in spec.tasks]
    return json.dumps({"settings": json.loads(spec.settings.to_json()), "tasks": tasks})


def spec_from_json(text: str) -> RunSpec:
    """Restore a spec written by :func:`spec_to_json` (a detached manager's task list)."""
    raw = json.loads(text)
    tasks = tuple(task_from_json(json.dumps(task)) for task in raw["tasks"])
    return RunSpec.of(RunSettings.from_json(json.dumps(raw["settings"])), tasks)


_LAST_PORT = 65535


def _port_slot(attempt: AttemptRow, spec: RunSpec) -> int | None:
    """The port block an adopted attempt's agent was started with (None: unknown, or gone).

    Read from the environment of its process, which the kernel keeps: a new task must never be
    given the block an agent still running holds.
    """
    identity = ProcessIdentity(pid=attempt.pid, create_time=attempt.create_time, pgid=attempt.pgid)
    if attempt.ended_at is not None or not proctree.is_alive(identity):
        return None
    try:
        top = psutil.Process(attempt.pid)  # its shim: the agent below it has the variable
        found = (p.environ().get("SWARM_PORT") for p in [top, *top.children(recursive=True)])
        port = int(next((value for value in found if value), ""))
    except (psutil.Error, ValueError):
        return None
    slot, offset = divmod(port - spec.port_base, spec.port_block)
    return slot if slot >= 0 and offset == 0 else None
