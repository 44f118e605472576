"""The run loop: scheduler + task workers + store, one thread per task in flight.

The main thread owns scheduling and every final state; each started task gets a worker
thread (task_worker.py) and hands back an outcome. The work is a pipeline: up to ``jobs``
tasks are provisioned ahead while agents run, an agent holds one of the gate's slots only while
its process lives, and checks run under their own bound, so git and check overhead overlaps
agent time instead of adding to it. Stop requests (Ctrl-C, SIGTERM, ``swarm stop``) reach
workers as events.

The run's fields and record are in run_state.py, a task's end (its outcome, the guard's
verdicts, stop requests) in task_ends.py, and starting tasks (threads, port blocks) in
task_launch.py; :class:`Runner` adds creating or resuming a run and the loop itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import secrets
import threading
import time
from collections.abc import Iterable
from typing import NoReturn

from worktree_swarm.core.errors import BadInputError, RunInterruptedError
from worktree_swarm.core.models import RunStatus, TaskState
from worktree_swarm.core.paths import SCRUB_SKIP, run_dir
from worktree_swarm.core.run_settings import Executor, RunSettings, RunSpec
from worktree_swarm.git import half_made
from worktree_swarm.git import repo as git
from worktree_swarm.guard import sandbox
from worktree_swarm.guard.watcher import UNWATCHED_EVENT
from worktree_swarm.infra import faults, interrupts, proc, proctree, scrub
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import task_from_json, task_to_json
from worktree_swarm.run.ray_cluster import unreachable
from worktree_swarm.run.ray_preflight import check_sandbox
from worktree_swarm.run.retry import settle_guard, since_last_retry
from worktree_swarm.run.run_state import Observer
from worktree_swarm.run.run_worker import Live, worktree_path
from worktree_swarm.run.task_launch import STARVED_WAIT, TaskLaunch, port_slot
from worktree_swarm.run.unwatched import may_have_run, outlived, ran_on

__all__ = [
    "STOPPING_EVENT",
    "Runner",
    "new_run_id",
    "spec_from_json",
    "spec_to_json",
    "worktree_path",
]

# A stop signal was taken: the run stops its tasks in flight (``tasks``) and ends interrupted.
STOPPING_EVENT = "run_stopping"


def new_run_id() -> str:
    """A sortable, unique run id: UTC timestamp plus a random suffix."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


class Runner(TaskLaunch):
    """Execute one run: :meth:`create` a new one or :meth:`resume` a recorded one."""

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
            raise BadInputError(f"unknown run {run_id!r}; `swarm runs` lists the recorded runs")
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
        # A swarm killed as it registered a worktree (a task's, a merge's): git lists none.
        half_made.drop(repo, store)
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
        runner._resumed = True
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
            if ran_on(row, attempts):
                # Its agent may run on: the block it was given stays its own.
                slot = port_slot(attempts[-1], spec)
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
            with interrupts.deferred():  # raised at the loop's looks, never inside a step
                return self._execute()
        finally:
            self._worker.close()
            self._ports.close()
            threading.excepthook = previous_hook
            self.store.on_full = None

    def _execute(self) -> dict[str, TaskState]:
        started = {"run_id": self.run_id, "base": self.base_commit}
        self._emit("run_started", None, {**started, "resumed": True} if self._resumed else started)
        try:
            self._start_guard()
        except KeyboardInterrupt:
            self._interrupted_before_start()
            raise
        scanned = False  # the run's last scan made (once: it lets go of the baselines)
        try:
            self._loop()
            self._final_scan()
            scanned = True
            interrupts.check()  # one that came during the last scan: the run was interrupted
        except KeyboardInterrupt:
            self.request_stop()
            if not scanned:  # what the stop waits for: the tasks in flight, the last scan
                self._emit(STOPPING_EVENT, None, {"tasks": len(self._live)})
            self._drain()
            if not scanned:
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

    def _start_guard(self) -> None:
        """Take the guard's baselines and start its scans; a stop signal between the steps."""
        if self.spec.sandbox and self.spec.executor is not Executor.RAY:
            sandbox.prepare(self.repo.common_dir)  # before the guard's baseline
        interrupts.check()
        self.guard.watch_user_config(self.run_id, time.time())  # what your git config runs
        self.guard.start()  # on a resume after a `git gc`, it may walk the whole history
        interrupts.check()
        if (unwatched := self.guard.unwatched()) is not None:  # a resumed run
            self._emit(UNWATCHED_EVENT, None, unwatched.as_dict())
        suspects = {t: worktree_path(self.spec, live.task) for t, live in self._adopt.items()}
        for row in self.store.tasks(self.run_id) if self._resumed else ():
            # And one a killed manager launched but did not record (no attempt to adopt).
            if may_have_run(row, self.store.attempts(self.run_id, row.task_id)):
                suspects.setdefault(row.task_id, worktree_path(self.spec, self._tasks[row.task_id]))
        self.guard.judge_unwatched_surface(suspects)  # what they did unwatched
        if self._resumed:  # before the adopted tasks' checkpoints
            self.guard.judge_user_config_resumed(self._outlived(suspects))
        self.guard.keep_base_for_resume()
        self.guard.watch_in_background()

    def _outlived(self, suspects: Iterable[str]) -> list[str]:
        """Those of *suspects* whose agents were seen alive after their manager died.

        On a cluster's nodes no local process tells: all of them.
        """
        if self.spec.executor is Executor.RAY:
            return list(suspects)
        rows = {row.task_id: row for row in self.store.tasks(self.run_id)}
        return [
            t for t in suspects
            if t in rows and outlived(self.repo, rows[t], self.store.attempts(self.run_id, t))
        ]  # fmt: skip

    def _interrupted_before_start(self) -> None:
        """End the run as interrupted, its tasks as they were: none started, none stopped.

        The guard's files stay as a killed manager's guard leaves them (the objects it holds,
        the baseline of your checkout the next one compares with): `swarm resume` goes on.
        The logs of agents a killed manager left running are not redacted (a rewrite in place
        under a writer loses what it appends meanwhile): the manager that ends them does it.
        """
        self.guard.stand_down()
        # Task ids are plain names (no pattern characters): each skips its own directory.
        scrub.scrub_tree(run_dir(self.repo, self.run_id), skip=(*SCRUB_SKIP, *self._adopt))
        self.store.finish_run(self.run_id, status=RunStatus.INTERRUPTED)
        why = "stopped before its tasks started"
        self._emit("run_finished", None, {"status": RunStatus.INTERRUPTED.value, "why": why})

    def _loop(self) -> None:
        """Launch tasks and take their ends until none is left; a stop signal at each turn."""
        self._start_adopted()
        while True:
            interrupts.check()
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
                interrupts.wait(self._stopping, STARVED_WAIT)  # threads end elsewhere
                continue
            if not self._live:
                return
            self._wait_for_one()

    def _halt(self, why: str) -> NoReturn:
        """End the run as interrupted, its unfinished tasks pending: it cannot go on (*why*).

        The live tasks are told to stop (a wait for a rate limit ends; what asks the lost
        cluster fails at once); each that ends without an outcome of its own waits, pending,
        for `swarm resume`, as do the tasks not started.
        """
        for live in self._live.values():
            live.stop.set()
        while self._live:
            task_id, outcome = self._next_done()
            if outcome.state is TaskState.STOPPED:  # cut short by the stop above
                outcome = dataclasses.replace(outcome, state=TaskState.PENDING, reason="")
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
        scrub.scrub_tree(run_dir(self.repo, self.run_id), skip=SCRUB_SKIP)

    def request_stop(self) -> None:
        """Stop every live agent and start nothing new."""
        self._stopping.set()
        for live in list(self._live.values()):
            live.stop.set()

    def _wait_for_one(self) -> None:
        """Block until a worker finishes, polling the store for `swarm stop` requests.

        Or until another task waits out a rate limit: the place it leaves is to be filled.
        """
        resting = self._resting()
        while True:
            interrupts.check()
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


def spec_to_json(spec: RunSpec) -> str:
    """The whole validated spec (settings and tasks) as JSON; :func:`spec_from_json` reads it."""
    tasks = [json.loads(task_to_json(task)) for task in spec.tasks]
    return json.dumps({"settings": json.loads(spec.settings.to_json()), "tasks": tasks})


def spec_from_json(text: str) -> RunSpec:
    """Restore a spec written by :func:`spec_to_json` (a detached manager's task list)."""
    raw = json.loads(text)
    tasks = tuple(task_from_json(json.dumps(task)) for task in raw["tasks"])
    return RunSpec.of(RunSettings.from_json(json.dumps(raw["settings"])), tasks)
