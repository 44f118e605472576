"""The Ray executor, coordinator side: tasks run as detached Ray actors on a cluster's nodes.

The scheduler, the gates, the budget and the store stay in this process, as with the local
executor; Ray only places and runs agents. Each attempt is one named, detached actor
(:class:`worktree_swarm.run.ray_node.NodeAgent`) in the run's namespace, asking for one
``agent_slot`` and ``ray_memory`` bytes, with every Ray retry and restart off: a second agent
on the same branch is never started behind swarm's back. The task's branch lives on the
remote the nodes share; this process creates it there, mirrors the attempt's log into the
run directory (``swarm logs -f`` reads it as usual) and fetches the branch back after every
attempt, so merge, diff, report and PR work on the local repository. An actor or node that is
gone is a lost attempt: the task goes on in a fresh attempt elsewhere, from its last pushed
checkpoint. Ray itself is imported only when this executor is used.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from worktree_swarm.agents import AgentOutcome, AgentResult, adapter_for, provider_of
from worktree_swarm.core.errors import SwarmError
from worktree_swarm.core.models import AttemptOutcome, ProcessIdentity, Task, TaskState
from worktree_swarm.core.units import format_duration
from worktree_swarm.git import repo as git
from worktree_swarm.guard.model import Violation
from worktree_swarm.infra import faults, fs, redact
from worktree_swarm.infra.logtail import read_log_end
from worktree_swarm.infra.store import AttemptRow, AttemptUsage
from worktree_swarm.report import notes
from worktree_swarm.run import ray_session
from worktree_swarm.run.checks import CheckFailure
from worktree_swarm.run.course import Course, past_max_wait, stated_window
from worktree_swarm.run.disk_budget import REMEASURE_SECONDS
from worktree_swarm.run.governor import Limit, Signal
from worktree_swarm.run.live_limits import LogTail
from worktree_swarm.run.ray_actors import (
    PROBE_GROUP,
    SLOT,
    NodeLostError,
    _actor_class,
    _end_attempt_if_named,
    _first_line,
    _node_side,
    _UnansweredError,
    actor_name,
    namespace,
    on_every_node,
)
from worktree_swarm.run.ray_cluster import ClusterLostError, HeadWatch, _ray, connect
from worktree_swarm.run.ray_disk import NodeDisk
from worktree_swarm.run.ray_node import Assignment, Progress
from worktree_swarm.run.ray_preflight import remote_url
from worktree_swarm.run.task_worker import (
    Live,
    RunContext,
    RunWorker,
    TaskOutcome,
    add_usage,
    attempt_outcome,
    attempt_usage,
    attempts_own,
    check_failed,
    idle_reason,
    past_max_log,
    worktree_path,
)

POLL_SECONDS = 0.5
# What one look copies of a running agent's log at most (the rest at the next looks).
MIRROR_BYTES = 16 << 20
STATUS_MEASURE_SECONDS = 30.0
# Lost attempts a task may have before it fails: a task that kills its nodes is not retried
# for ever.
MAX_LOSSES = 3
_NO_IDENTITY = ProcessIdentity(pid=0, create_time=0.0, pgid=0)
# How long a node may take to kill what a silent attempt started there.
END_ATTEMPT_SECONDS = 120.0
# Ray kills a worker's children with SIGKILL as the worker exits (its raylet lost, a
# `ray.kill`): the agent's shim among them, which then cannot end the agent's tree, and the
# agent works on with no one to stop it. Off in the actors' workers: the shim sees its actor
# gone (its ``--parent``) and ends the tree itself, grace then SIGKILL.
_ACTOR_ENV = {"RAY_kill_child_processes_on_worker_exit": "false"}


class _SetupFailedError(SwarmError):
    """A `setup` step failed on the node: the task ends with it."""

    def __init__(self, failure: CheckFailure) -> None:
        super().__init__(failure.summary)
        self.failure = failure


def _kill_named(actor: Any, name: str, space: str) -> None:  # noqa: ANN401 - a Ray handle
    """Kill *actor* and wait (up to 30 s) until its *name* is free in *space*."""
    ray = _ray()
    with contextlib.suppress(Exception):
        ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, namespace=space)
        except Exception:  # noqa: BLE001 - freed (ValueError), or the cluster is going
            return
        time.sleep(POLL_SECONDS)


@dataclass(slots=True, kw_only=True)
class _Handle:
    """One attempt's actor as the coordinator holds it."""

    actor: Any
    task_id: str
    number: int
    attempt_id: int
    started_at: float
    log_path: Path
    node: str
    offset: int = 0
    measured_at: float = 0.0  # monotonic time of its clone's last measurement
    session_at: float = 0.0  # monotonic time its session files were last asked for
    session_fp: str | None = None  # the fingerprint of the session files kept last
    session_id: str | None = None
    # What the agent said it used, once its attempt ended: recorded even when what follows
    # (its checkpoint, the push) fails the attempt; *counted*: added to its task's totals.
    used: AgentResult | None = None
    counted: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class _Throttled:
    """An attempt that ended on a rate limit, and whether it changed the work first."""

    result: AgentResult
    progressed: bool
    replayed: bool = False  # a previous coordinator's attempt, already counted
    window: bool | None = None  # replayed: whether its limit was a usage window, as recorded
    told: bool = False  # its stream told the gate of a throttle while it ran


@dataclass(slots=True, kw_only=True)
class _Count:
    """A task's attempts in this coordinator: the last one's number, those lost to nodes."""

    number: int
    losses: int = 0


# How an attempt ended: the task's outcome, checks that failed, or a rate limit.
_Ended = TaskOutcome | CheckFailure | _Throttled


class RayTaskWorker(RunWorker):
    """Runs tasks of one run on a Ray cluster; shared by all worker threads, like TaskWorker."""

    def __init__(self, run: RunContext) -> None:
        super().__init__(run)
        self.url = remote_url(run.repo, run.spec.remote)
        connect(run.spec.ray_address, lost_after=run.spec.lost_after)
        self._git_lock = threading.Lock()
        self.disk = NodeDisk(repo=run.repo, spec=run.spec, store=run.store, run_id=run.run_id)
        gcs = str(_ray().get_runtime_context().gcs_address)
        self.head = HeadWatch(gcs, run.spec.ray_address or gcs, lost_after=run.spec.lost_after)

    def close(self) -> None:
        """Stop watching the cluster's head (actors carry on)."""
        self.head.close()

    def halted(self) -> str | None:
        """Why no task can go on now: the cluster is lost; else None."""
        return self.head.lost

    def run(self, live: Live) -> TaskOutcome:
        """Take *live*'s task to a final outcome on the cluster.

        With the cluster lost, the task goes back to ``pending`` (its attempt ended as lost,
        its branch fetched as last pushed): `swarm resume` carries it on.
        """
        task = live.task
        # The task's branch is its own (the fetches move it) until it ends.
        with self.guard.busy(task.id, worktree_path(self.spec, task)):
            try:
                outcome = self._run(live)
            except ClusterLostError as exc:
                return self._interrupted(task, str(exc))
            if outcome.state is TaskState.STOPPED and self.head.lost is not None:
                return self._interrupted(task, self.head.lost)  # stopped for the loss
            return outcome

    def _interrupted(self, task: Task, why: str) -> TaskOutcome:
        """The task, cut off by the loss of the cluster (*why*), waits for `swarm resume`."""
        self._keep_pushed(task)
        self.store.update_task(self.run_id, task.id, launching=None)
        return TaskOutcome(
            state=TaskState.PENDING,
            reason=f"interrupted: {why}; its work is kept on {task.branch} as last pushed",
        )

    def _keep_pushed(self, task: Task) -> None:
        """Fetch the task's branch as its nodes last pushed it, and record what it holds.

        After an attempt cut off (its node or the cluster lost, a node-side failure): a task
        stopped or failed then, its branch here still at its base, lost that work to `swarm
        clean` (and its remote branch to a retry's push).
        """
        row = self.store.task(self.run_id, task.id)
        with contextlib.suppress(SwarmError):  # the remote may be gone as well
            self._fetch(task)
            if row is not None and row.base_commit:
                tip = git.rev_parse(self.repo, task.branch) or row.base_commit
                self._record_diff(task.id, row.base_commit, tip)

    def _run(self, live: Live) -> TaskOutcome:
        task = live.task
        base = self._base(task)
        if isinstance(base, TaskOutcome):
            return base
        previous = self.store.attempts(self.run_id, task.id)
        course = self._course(task, previous)
        resumed, live.resume_from = live.resume_from, None
        ended: _Ended | None = None
        handle: _Handle | None = None
        if resumed is not None and resumed.ended_at is not None:
            ended = self._replay(live, course, base, resumed)
            count = _Count(number=resumed.number)
        else:
            handle = self._adopt_any(live, resumed)
            last = max((a.number for a in previous), default=0)
            count = _Count(number=handle.number if handle is not None else last)
        while True:
            if ended is None:
                ended, handle = self._next(live, course, base, handle, count), None
                if ended is None:
                    continue
            now, ended = ended, None
            if isinstance(now, TaskOutcome):
                return now
            if isinstance(now, _Throttled):  # rate limited: wait, then resume
                failed = self._rate_limited(task, count.number, now, course)
                if failed is not None:
                    return TaskOutcome(state=TaskState.FAILED, reason=failed)
                continue
            self._completed(task.id, course)
            out = self._repair(task, course, now)
            if out is not None:
                return out

    def _next(
        self, live: Live, course: Course, base: str, handle: _Handle | None, count: _Count
    ) -> _Ended | None:
        """The next attempt (*handle*: one adopted) run to its end; None: lost, go on."""
        task = live.task
        provider = provider_of(task.agent)
        if handle is None:
            got = self._new_attempt(live, course, count.number + 1)
            if isinstance(got, TaskOutcome):
                return got
            if got is None:  # its node went before the agent started
                count.number, count.losses = count.number + 1, count.losses + 1
                if count.losses > MAX_LOSSES:
                    self._keep_pushed(task)
                    return TaskOutcome(state=TaskState.FAILED, reason="no node kept it")
                return None
            handle = got
            count.number = handle.number
        else:
            self.gate.adopt(provider)
            live.adopted.set()
        cost: list[float | None] = [None]
        try:
            return self._attempt(live, handle, base, course, cost)
        except ClusterLostError as exc:  # nothing of it can be reached: it ends here only
            self.store.end_attempt(
                handle.attempt_id,
                exit_code=None,
                outcome=AttemptOutcome.FAILED.value,
                usage=AttemptUsage(reason=str(exc)),
            )
            self.disk.released(handle.node, task.id)
            raise
        except NodeLostError as exc:
            count.losses += 1
            self._lost(task, handle, exc)
            if count.losses > MAX_LOSSES:
                return TaskOutcome(
                    state=TaskState.FAILED,
                    reason=f"lost {count.losses} attempts to failed nodes ({exc}); work kept "
                    f"on {task.branch}",
                )
            if live.stop.is_set():
                return TaskOutcome(state=TaskState.STOPPED, reason="stopped")
            course.interrupted()
            return None
        except SwarmError as exc:  # a node-side failure (git): the attempt fails
            self._keep_pushed(task)  # what it pushed (its last checkpoint)
            self._end(handle, str(exc))
            raise
        finally:
            self.gate.release(provider, cost_usd=cost[0])

    def _base(self, task: Task) -> str | TaskOutcome:
        """The commit the task's branch started from, made here and on the remote first."""
        row = self.store.task(self.run_id, task.id)
        if row is not None and row.base_commit:
            return row.base_commit
        start = (row.start_commit if row is not None else None) or self._start_commit(task)
        if isinstance(start, TaskOutcome):
            return start
        self.store.update_task(self.run_id, task.id, start_commit=start)
        self._publish(task, start)
        self.store.update_task(self.run_id, task.id, base_commit=start)
        return start

    # -- one attempt --------------------------------------------------------------------------

    def _new_attempt(self, live: Live, course: Course, number: int) -> _Handle | TaskOutcome | None:
        """A gate slot and a launched attempt; an outcome ends the task, None: node lost."""
        task = live.task
        provider = provider_of(task.agent)
        refused = self.gate.acquire(
            provider,
            live.stop,
            not_before=course.not_before,
            max_wait=task.max_wait,
            rank=live.rank,
        )
        if refused == "max_wait":  # a usage window reported meanwhile, by any task
            reset = self.gate.window_until(provider) or time.time()
            return TaskOutcome(state=TaskState.FAILED, reason=past_max_wait(task, provider, reset))
        if refused:
            why = "budget reached" if refused == "budget" else "stopped"
            return TaskOutcome(state=TaskState.STOPPED, reason=f"{why} before it started")
        try:
            self._charge_repair(task, course)
            return self._launch(live, number, prompt=course.prompt)
        except _SetupFailedError as exc:
            self.gate.release(provider)
            return check_failed(exc.failure)
        except NodeLostError:
            self.gate.release(provider)
            if live.stop.is_set():
                return TaskOutcome(state=TaskState.STOPPED, reason="stopped")
            return None
        except SwarmError:
            self.gate.release(provider)
            raise

    def _launch(self, live: Live, number: int, *, prompt: str | None) -> _Handle:
        task = live.task
        ray = _ray()
        assignment = self._assignment(task, number)
        # The intent first: a coordinator killed from here on finds the actor by its name.
        if not self.head.answers(live.stop):
            raise NodeLostError("stopped before it started")
        self.store.update_task(self.run_id, task.id, launching=number, node=None)
        self._running(task.id, number)
        actor = self._actor(assignment)
        node: object = None  # unknown until the actor answers (it may never)
        try:
            node = self._call(actor, "node", live=live, placing=True)
            if live.stop.is_set():
                raise NodeLostError("stopped before it started")
            self.store.update_task(self.run_id, task.id, node=str(node))
            self._admit(live, actor, str(node))
            self._call(actor, "prepare", live=live)
            if task.setup:
                failure, text = self._call(actor, "setup", live=live, on_stop=actor.stop.remote)
                self._append_log(task, "setup.log", text)
                if failure is not None:
                    raise _SetupFailedError(failure)
            # The session an earlier attempt (maybe on another node) handed back goes on;
            # without one a fresh agent is told the task again, then what to do now.
            session = self._restore_session(live, actor) if prompt is not None else None
            text = task.prompt if prompt is None else f"{task.prompt}\n\n{prompt}"
            if session is not None:
                text = cast("str", prompt)
            self._call(
                actor,
                "start",
                prompt=text,
                session=session,
                resume_prompt=prompt,
                live=live,
                once=True,  # never twice: a second agent on the same branch
            )
        except SwarmError as exc:  # lost, or a node-side failure (git, setup): no actor is left
            if isinstance(exc, ClusterLostError):  # gone with the cluster
                raise
            if isinstance(exc, _UnansweredError):  # it may have started the agent meanwhile
                self._silence(actor, task.id, number, "" if node is None else str(node))
                raise
            with contextlib.suppress(Exception):
                ray.get(actor.discard.remote(), timeout=30)
            with contextlib.suppress(Exception):  # one that comes back must not run an agent
                ray.kill(actor)
            if node is not None:
                self.disk.released(str(node), task.id)
            raise
        log_path = self._logs_root / task.id / f"attempt-{number}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.touch()
        started = time.time()
        attempt_id = self.store.start_attempt(
            self.run_id,
            task.id,
            number=number,
            identity=_NO_IDENTITY,  # the agent's pid is on another machine
            log_path=str(log_path),
            started_at=started,
            agent=task.agent,
        )
        self.store.update_task(self.run_id, task.id, attempts=number, launching=None)
        self._emit("agent_started", task.id, {"attempt": number, "agent": task.agent, "node": node})
        return _Handle(
            actor=actor,
            task_id=task.id,
            number=number,
            attempt_id=attempt_id,
            started_at=started,
            log_path=log_path,
            node=str(node),
        )

    def _assignment(self, task: Task, number: int) -> Assignment:
        return Assignment(
            run_id=self.run_id,
            task=task,
            attempt=number,
            remote_url=self.url,
            author=self.spec.commit_author,
            # The user's excludes file is a path on this machine, not on the node.
            identity=tuple(
                (k, v) for k, v in self._git_identity.items() if k != "core.excludesFile"
            ),
            kill_grace=self.spec.kill_grace,
            checkpoint_interval=self.spec.checkpoint_interval,
            max_file=self.spec.max_file,
            max_log=self.spec.max_log,
            sandbox=self.spec.sandbox,
            sandbox_writable=self.spec.sandbox_writable,
            findings=self._shared_findings(),
        )

    def _shared_findings(self) -> str:
        """The run's findings as they are, for an agent on a node ("" if unreadable)."""
        try:
            return notes.read_notes(self._findings)
        except SwarmError:
            return ""

    def _actor(self, assignment: Assignment) -> Any:  # noqa: ANN401 - a Ray actor handle
        """The actor of one attempt, placed on a node with a free agent slot."""
        return (
            _actor_class()
            .options(
                name=actor_name(assignment.task.id, assignment.attempt),
                namespace=namespace(self.run_id),
                lifetime="detached",
                max_restarts=0,
                max_task_retries=0,
                max_concurrency=2,  # a stop reaches it while its checks run
                num_cpus=0,
                memory=self.spec.ray_memory,
                resources={SLOT: 1},
                scheduling_strategy="SPREAD",
                runtime_env={"env_vars": _ACTOR_ENV},
            )
            .remote(assignment)
        )

    def _admit(self, live: Live, actor: Any, node: str) -> None:  # noqa: ANN401
        """Wait until the task's clone fits under ``max_disk`` on *node* (ray_disk.py)."""
        task = live.task
        row = self.store.task(self.run_id, task.id)
        start = row.base_commit if row is not None and row.base_commit else self.base_commit

        def waiting(reason: str) -> None:
            self._state(task.id, TaskState.PENDING if reason else TaskState.RUNNING, reason=reason)

        admitted = self.disk.admit(
            node,
            task,
            start=start,
            held=lambda skip: int(self._call(actor, "held", skip, live=live)),
            stop=live.stop,
            waiting=waiting,
        )
        if not admitted:
            raise NodeLostError("stopped while waiting for disk")

    def _periodic(self, handle: _Handle, live: Live) -> None:
        """While the agent runs: measure its clone, keep its session files, when due."""
        # Often when max_disk waits on it, else only for `swarm status`: a walk of a big clone
        # (node_modules) is not free.
        every = REMEASURE_SECONDS if self.spec.max_disk is not None else STATUS_MEASURE_SECONDS
        if time.monotonic() - handle.measured_at > every:
            self._measure(handle, live)
        if time.monotonic() - handle.session_at > max(self.spec.checkpoint_interval, 1.0):
            self._keep_session(handle, live)  # what a lost node would otherwise take along

    def _restore_session(self, live: Live, actor: Any) -> str | None:  # noqa: ANN401
        """Give the new attempt's node the session kept last; its id, or None (a fresh one)."""
        if adapter_for(live.task.agent).name not in ray_session.CARRIED:
            return None
        kept = ray_session.load(self._logs_root / live.task.id / "session")
        if kept is None or kept[1] is None:
            return None
        state, session_id = kept
        restored = self._call(actor, "restore_session", state, live=live)
        return session_id if restored else None

    def _keep_session(self, handle: _Handle, live: Live) -> None:
        """Keep the attempt's session files in the run's directory, if they changed."""
        adapter = adapter_for(live.task.agent)
        if adapter.name not in ray_session.CARRIED:
            return
        handle.session_at = time.monotonic()
        since = handle.session_fp
        state = self._call(handle.actor, "session_state", since, live=live)
        if state is None:
            return
        if handle.session_id is None:  # the stream's first lines name it
            text = read_log_end(handle.log_path, 8 * 2**20)
            handle.session_id = adapter.interpret(
                exit_code=None, log_text=text, now=time.time()
            ).session_id
        if handle.session_id is None:
            return
        directory = self._logs_root / live.task.id / "session"
        ray_session.save(directory, state, session_id=handle.session_id)
        handle.session_fp = state.fingerprint

    def _kept_from_node(self, handle: _Handle, live: Live) -> None:
        """What an ended attempt leaves on its node that the run keeps.

        Its clone's size, its session, and what its agent noted (appended to the run's
        findings file, where the agents of later attempts and `swarm notes` find it).
        """
        self._measure(handle, live)
        self._keep_session(handle, live)
        added = self._call(handle.actor, "notes_added", live=live)
        if added:
            faults.retry_while_full(
                lambda: notes.merge_in(self._findings, added), self.store.on_full
            )

    def _measure(self, handle: _Handle, live: Live) -> None:
        """Have the actor measure its clone; recorded, and counted on its node."""
        handle.measured_at = time.monotonic()
        self.disk.measured(
            handle.node, handle.task_id, self._call(handle.actor, "disk_use", live=live)
        )

    def _watch(
        self, live: Live, handle: _Handle, stream: LogTail
    ) -> tuple[Progress, tuple[TaskState, str] | None]:
        """Follow one attempt until its agent ends or is cut short: how it ended, and the cut.

        Its log is mirrored here, what its stream says of rate limits told to the gate.
        """
        task = live.task
        # On the monotonic clock, as a local task's (a wall-clock step ended all or none); the
        # idle time too, on this machine's: a node's clock may step on its own.
        remaining = handle.started_at + task.timeout - time.time() if task.timeout else None
        deadline = None if remaining is None else time.monotonic() + max(0.0, remaining)
        cut: tuple[TaskState, str] | None = None
        size: int | None = None  # the log's size when last polled
        quiet_from = 0.0  # since when it has been that size
        while True:
            self._follow(live, handle, stream)
            progress: Progress = self._call(handle.actor, "poll", live=live)
            if progress.ended:  # past max_log between two looks: as if it had been seen
                cut = past_max_log(progress.log_size, self.spec.max_log)
                break
            self._periodic(handle, live)
            now = time.monotonic()
            if progress.log_size != size:  # at first, quiet for as long as the node says
                quiet_from = now - progress.idle_seconds if size is None else now
                size = progress.log_size
            if live.stop.is_set():
                cut = (TaskState.STOPPED, "stopped")
            elif deadline is not None and now >= deadline:
                cut = (TaskState.TIMED_OUT, f"timed out after {task.timeout:g}s")
            elif task.idle_timeout and now - quiet_from >= task.idle_timeout + stream.waiting:
                cut = (TaskState.TIMED_OUT, idle_reason(task.idle_timeout, stream.waiting))
            else:  # its log is copied here too: it would fill this disk as well as the node's
                cut = past_max_log(progress.log_size, self.spec.max_log)
            if cut is not None:
                self._call(handle.actor, "stop", live=live)
                progress = self._call(handle.actor, "poll", live=live)
                break
            live.stop.wait(POLL_SECONDS)
        self._follow(live, handle, stream, whole=True)  # it ended: all it wrote
        return progress, cut

    def _follow(self, live: Live, handle: _Handle, stream: LogTail, *, whole: bool = False) -> None:
        """Mirror the attempt's log; tell the gate what its new lines say of rate limits."""
        self._mirror(handle, live, whole=whole)
        # All of it: the stream reads at most 1 MiB a poll, the mirror may have added more.
        while True:
            read_from = stream.offset
            for limit in stream.poll(now=time.time()):
                self.gate.report(provider_of(live.task.agent), limit, task=live.task.id)
            if stream.offset == read_from:
                return

    def _attempt(
        self, live: Live, handle: _Handle, base: str, course: Course, cost: list[float | None]
    ) -> _Ended:
        """Watch one attempt to its end, checkpoint, fetch and check it; cost to *cost*.

        A check that fails comes back as such (a repair may follow), a rate-limited attempt as
        :class:`_Throttled` (a resumed attempt follows); else the task's outcome.
        """
        task = live.task
        adapter = adapter_for(task.agent)
        # What the agent's stream says of its rate limits reaches the gate as the log comes
        # in (as a local task's), not when the attempt ends.
        provider = provider_of(task.agent)
        stream = LogTail(path=handle.log_path, profile=task.agent, offset=_size(handle.log_path))
        progress, cut = self._watch(live, handle, stream)
        self._recopy(handle, live)
        code = None if cut is not None else progress.exit_code
        text = read_log_end(handle.log_path, 8 * 2**20)
        # What it says it used, as the budget and the store count it (a resumed session its own).
        result = attempts_own(
            self.store, self.run_id, task.id, handle.attempt_id,
            adapter.interpret(exit_code=code, log_text=text, now=time.time()),
        )  # fmt: skip
        handle.used, cost[0] = result, result.cost_usd
        if cut is None and result.outcome is not AgentOutcome.SUCCESS and self._stop_asked(live):
            cut = (TaskState.STOPPED, "stopped")  # it ended as `swarm stop` came (killed by it)
        state = cut[0] if cut else result.outcome
        message = f"swarm: checkpoint {task.id} attempt {handle.number} ({state})" + git.trailers(
            task.id, handle.number, task.agent
        )
        tip = self._call(handle.actor, "finish", message=message, live=live)
        self._report_planted(task.id, handle, self._call(handle.actor, "planted", live=live))
        left: list[str] = self._call(handle.actor, "submodule_work", live=live)
        # As it ended: what `swarm status` and `report` keep, and the session to go on with.
        # The attempt is over and pushed: a node lost now only loses these.
        with contextlib.suppress(NodeLostError):
            self._kept_from_node(handle, live)
        self._fetch(task)
        self._record(task.id, handle, code, result, cut)
        redact.scrub_file(handle.log_path)
        stat = self._record_diff(task.id, base, str(tip))
        big = git.over_size(self.repo, stat, self.spec.max_file) if cut is None else []
        if big:  # committed by the agent itself: a push of the branch would be refused
            self._retire(handle)
            reason = git.over_size_reason(big, self.spec.max_file)
            return TaskOutcome(state=TaskState.FAILED, reason=reason)
        progressed = course.progressed(stat)
        if cut is None and result.outcome is AgentOutcome.RATE_LIMITED:
            self._retire(handle)
            return _Throttled(result=result, progressed=progressed, told=stream.limited)
        if cut is None and result.outcome is AgentOutcome.SUCCESS and not stream.succeeded:
            ok = Limit(signal=Signal.OK)
            self.gate.report(provider, ok, task=task.id, whole_attempt=True)
        outcome = _outcome(cut, result, files=stat.files)
        if left and cut is None and result.outcome is AgentOutcome.SUCCESS:
            outcome = TaskOutcome(
                state=TaskState.FAILED,
                reason=f"left work in submodule {', '.join(left)}, which no commit of "
                f"{task.branch} can hold; it was not kept (it was in the clone on node "
                f"{handle.node})",
            )
        failure = self._checked(live, handle, base) if outcome.state is TaskState.DONE else None
        self._retire(handle)
        return outcome if failure is None else failure

    def _stop_asked(self, live: Live) -> bool:
        """Whether the task is being stopped: by this coordinator, or asked in the store."""
        if live.stop.is_set():
            return True
        row = self.store.task(self.run_id, live.task.id)
        return row is not None and row.stop_requested

    def _checked(self, live: Live, handle: _Handle, base: str) -> CheckFailure | None:
        """The attempt's checks; its node lost meanwhile, on a fresh clone of its pushed branch.

        The agent's work is done and pushed: only the checks run again, as after a lost
        coordinator, not the agent (its attempt stays as it ended).
        """
        try:
            return self._check(live, handle, base)
        except NodeLostError as exc:
            self._emit("node_lost", live.task.id, {"attempt": handle.number, "node": handle.node})
            self._retire(handle, silent=isinstance(exc, _UnansweredError))
            attempt = next(
                a for a in self.store.attempts(self.run_id, live.task.id)
                if a.id == handle.attempt_id
            )  # fmt: skip
            self._state(
                live.task.id,
                TaskState.CHECKING,
                reason=f"node {handle.node} lost in its checks ({exc}); checking again elsewhere",
            )
            return self._recheck(live, base, attempt)

    def _report_planted(self, task_id: str, handle: _Handle, labels: list[str]) -> None:
        """Git's own files of its clone the agent changed: an outside write, blamed on it.

        The node put them back before its checkpoint; the run fails the task as it would for
        a write to the repository's own files here.
        """
        if labels:
            where = f"(its clone on node {handle.node})"
            self.guard.report(
                Violation(
                    number=0,
                    where=task_id,
                    git_files=tuple(f"{label} {where}" for label in labels),
                    suspects=(task_id,),
                    restored=True,
                )
            )

    def _check(self, live: Live, handle: _Handle, base: str) -> CheckFailure | None:
        """Run the task's checks on the attempt's node, if it has any."""
        task = live.task
        if not (task.checks or task.expect_files or task.no_placeholders):
            return None
        self._state(task.id, TaskState.CHECKING)
        failure, text = self._call(
            handle.actor, "check", base=base, live=live, on_stop=handle.actor.stop.remote
        )
        self._append_log(task, "checks.log", text)
        return cast("CheckFailure | None", failure)

    def _record(
        self,
        task_id: str,
        handle: _Handle,
        code: int | None,
        result: AgentResult,
        cut: tuple[TaskState, str] | None,
    ) -> None:
        outcome = cut[0].value if cut else attempt_outcome(result).value
        usage = attempt_usage(result, cut[1] if cut else result.reason)
        self.store.end_attempt(handle.attempt_id, exit_code=code, outcome=outcome, usage=usage)
        add_usage(self.store, self.run_id, task_id, result)
        handle.counted = True

    def _end(self, handle: _Handle, reason: str, *, silent: bool = False) -> None:
        """Record the attempt as failed and take its actor down (:meth:`_retire`)."""
        used = handle.used
        self.store.end_attempt(
            handle.attempt_id,
            exit_code=None,
            outcome=AttemptOutcome.FAILED.value,
            usage=AttemptUsage(reason=reason) if used is None else attempt_usage(used, reason),
        )
        if used is not None and not handle.counted:
            add_usage(self.store, self.run_id, handle.task_id, used)
            handle.counted = True
        self._retire(handle, silent=silent)

    def _rate_limited(
        self, task: Task, number: int, throttled: _Throttled, course: Course
    ) -> str | None:
        """Tell the gate; why the task fails, or None: it resumes at ``course.not_before``."""
        result = throttled.result
        window = throttled.window
        window = stated_window(result, time.time()) if window is None else window
        provider = provider_of(task.agent)
        # A replayed throttle was told when it happened, as one its stream told; a replayed
        # one's recorded wait is its own backoff. A window is told again: its end confirms it.
        if window or not (throttled.replayed or throttled.told):
            kind = Signal.WINDOW if window else Signal.THROTTLE
            detail = "usage limit" if window else "rate limited"
            limit = Limit(signal=kind, retry_at=result.retry_at, detail=detail)
            # A replayed window was applied by the manager that was told it: claimed again,
            # no second throttle of the provider (as a local run's resume recalls it).
            recalled = bool(window) and throttled.replayed
            self.gate.report(provider, limit, task=task.id, whole_attempt=True, recalled=recalled)
        failed = course.throttled(
            task,
            result,
            self.gate,
            provider=provider,
            replayed=throttled.replayed,
            progressed=throttled.progressed,
            window=window,
        )
        if failed is not None:
            return failed
        self._resting(task.id, number, course)
        return None

    def _append_log(self, task: Task, name: str, text: str) -> None:
        """Add what a step wrote on the node to the run directory's log *name* (redacted)."""
        log = self._logs_root / task.id / name
        log.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_append(log) as fh:
            fh.write(text)
        redact.scrub_file(log)

    def _lost(self, task: Task, handle: _Handle, exc: NodeLostError) -> None:
        """Record a lost attempt; the task goes on elsewhere from its last pushed checkpoint."""
        silent = isinstance(exc, _UnansweredError)
        self._end(handle, f"node {handle.node} lost: {exc}", silent=silent)
        self._keep_pushed(task)  # here at once: a task stopped now ends with it
        self._emit("node_lost", task.id, {"attempt": handle.number, "node": handle.node})
        self._state(
            task.id,
            TaskState.PENDING,
            reason=f"node {handle.node} lost; resuming elsewhere from the last pushed checkpoint",
        )

    def _retire(self, handle: _Handle, *, silent: bool = False) -> None:
        """Have the attempt's actor remove its clone, and take it down.

        One known to be *silent*, or that does not answer now, is taken down without it
        (:meth:`_silence`).
        """
        ray = _ray()
        if self.head.lost is not None:  # gone with its node, with the cluster
            self.disk.released(handle.node, handle.task_id)
            return
        if not silent:
            try:
                ray.get(handle.actor.discard.remote(), timeout=30)
            except ray.exceptions.GetTimeoutError:
                silent = True
            except Exception:  # noqa: BLE001, S110 - gone: nothing left to discard
                pass
        if silent:
            self._silence(handle.actor, handle.task_id, handle.number, handle.node)
            return
        with contextlib.suppress(Exception):  # a gone actor has nothing left to kill
            ray.kill(handle.actor)
        self.disk.released(handle.node, handle.task_id)  # its clone is gone from there

    def _mirror(self, handle: _Handle, live: Live, *, whole: bool = False) -> None:
        """Append what the agent logged since the last call to the local copy of its log.

        Redacted on the node (its own secrets) and here (the run's), a line at a time: the
        copy never holds a secret of one line, whatever ends the attempt (one over several
        lines, a PEM key, once it ends: :meth:`_recopy`). How far the node's log has been read,
        and the copy's size then, are kept beside the copy (the two differ by the
        redactions), for a coordinator that adopts the attempt after a crash. While the agent
        runs (*whole* false) at most MIRROR_BYTES a call: one printing faster than the copy
        is made would hold the watch here, its timeouts, `max_log` and stops unlooked at.
        """
        copied = 0
        while whole or copied < MIRROR_BYTES:
            read_to, chunk = self._call(handle.actor, "tail", handle.offset, live=live)
            if read_to == handle.offset:
                return
            copied += read_to - handle.offset
            with fs.open_append_bytes(handle.log_path) as fh:
                fh.write(redact.redact_bytes(chunk))
                size = fh.tell()
            handle.offset = read_to
            _note_read(handle.log_path, read_to, size)

    def _recopy(self, handle: _Handle, live: Live) -> None:
        """Copy the ended attempt's log again, once the node has redacted it whole.

        Noted as read from the start first: a coordinator killed meanwhile copies it anew.
        """
        self._call(handle.actor, "scrub_log", live=live)
        handle.log_path.write_bytes(b"")
        _note_read(handle.log_path, 0, 0)
        handle.offset = 0
        self._mirror(handle, live, whole=True)

    def _call(
        self,
        actor: Any,  # noqa: ANN401 - a Ray actor handle
        method: str,
        *args: object,
        live: Live,
        placing: bool = False,
        once: bool = False,
        on_stop: Callable[[], object] | None = None,
        **kwargs: object,
    ) -> Any:  # noqa: ANN401
        """The result of *actor*'s *method* (*args*, *kwargs*); NodeLostError when it is lost.

        An actor that cannot be reached is asked again (the methods are idempotent, except
        *once*: then it is lost at once) until it answers, Ray declares it dead, or
        ``lost_after`` passes. One that Ray still counts alive but that does not answer (its
        process or its node hangs) is lost the same way (:class:`_UnansweredError`): a call
        may work for long (a clone, checks), so while it runs the actor is probed in a
        concurrency group of its own, and only ``lost_after`` without an answer to the call
        or a probe is silence. While *placing* (the actor waits for a free slot, which may take
        any time) a stop of the task ends the wait (None); otherwise a stop calls *on_stop*
        once.
        """
        ray = _ray()
        exceptions = ray.exceptions
        self.head.check()
        since = heard = time.monotonic()
        ref = getattr(actor, method).remote(*args, **kwargs)
        probe: Any = None
        while True:
            self.head.check()
            try:
                return ray.get(ref, timeout=POLL_SECONDS * 4)
            except exceptions.GetTimeoutError:
                if placing:
                    if live.stop.is_set():
                        return None
                    continue
                if on_stop is not None and live.stop.is_set():
                    on_stop()  # e.g. checks that run on: stopped on their node
                    on_stop = None
                probe, heard = self._pulse(actor, probe, heard)
            except exceptions.ActorUnavailableError:
                if once or time.monotonic() - since > self.spec.lost_after:
                    raise NodeLostError("actor unreachable") from None
                time.sleep(POLL_SECONDS)
                ref, probe = getattr(actor, method).remote(*args, **kwargs), None
            except (exceptions.RayActorError, exceptions.NodeDiedError) as exc:
                raise NodeLostError(_first_line(exc, "actor died")) from None
            except (exceptions.RayTaskError, exceptions.UnserializableException) as exc:
                raise _node_side(exc) from None

    def _pulse(self, actor: Any, probe: Any, heard: float) -> tuple[Any, float]:  # noqa: ANN401
        """Probe *actor* while a call waits: (the probe now out, when the actor last answered).

        *probe* is the one sent before (or None), *heard* when the actor last answered. A probe
        runs in the actor's concurrency group of its own: busy methods do not hold it up, a
        hung process does. Raises :class:`_UnansweredError` after ``lost_after`` of silence.
        """
        ray = _ray()
        if probe is not None and ray.wait([probe], timeout=0)[0]:
            try:
                ray.get(probe)
                heard = time.monotonic()
            except ray.exceptions.ActorUnavailableError:  # unreachable for now: asked again
                pass
            except (ray.exceptions.RayActorError, ray.exceptions.NodeDiedError) as exc:
                raise NodeLostError(_first_line(exc, "actor died")) from None
            probe = None
        if time.monotonic() - heard > self.spec.lost_after:
            silent = format_duration(self.spec.lost_after)
            raise _UnansweredError(f"its actor did not answer for {silent}")
        if probe is None:
            probe = actor.node.options(concurrency_group=PROBE_GROUP).remote()
        return probe, heard

    def _silence(self, actor: Any, task_id: str, number: int, node: str) -> None:  # noqa: ANN401
        """Take down the actor of attempt *number* that stopped answering, and its processes.

        Ray kills the actor (so it never wakes up to push over a later attempt's work) and
        frees its name; then its node kills, tree and all, what the attempt started there
        (the agent, a setup step, checks: they run under shims of their own and outlive
        their actor) and removes its clone, before the task goes on.
        """
        _kill_named(actor, actor_name(task_id, number), namespace(self.run_id))
        if node:
            with contextlib.suppress(Exception):  # a node that hangs too: doctor finds it
                on_every_node(
                    _end_attempt_if_named,
                    node,
                    self.run_id,
                    task_id,
                    number,
                    self.spec.kill_grace,
                    timeout=END_ATTEMPT_SECONDS + self.spec.kill_grace,
                )
        self.disk.released(node, task_id)

    # -- resuming after the coordinator died -------------------------------------------------

    def _adopt_any(self, live: Live, attempt: AttemptRow | None) -> _Handle | None:
        """The open attempt's actor, or one launched unrecorded; else a new attempt is due."""
        handle = self._adopt(live.task, attempt) or self._adopt_unrecorded(live.task)
        if handle is None:  # nothing to adopt: a new attempt waits for its slot
            live.adopted.set()
        return handle

    def _adopt(self, task: Task, attempt: AttemptRow | None) -> _Handle | None:
        """The live actor of an open attempt a previous coordinator started, if still there."""
        if attempt is None:
            return None
        handle = self._find(task, attempt.number, attempt.id, Path(attempt.log_path))
        if handle is None:
            # Its actor is gone with its node (or was never made): a lost attempt.
            self.store.end_attempt(
                attempt.id,
                exit_code=None,
                outcome=AttemptOutcome.FAILED.value,
                usage=AttemptUsage(reason="its actor was gone when the run was resumed"),
            )
            return None
        handle.started_at = attempt.started_at
        self._emit("agent_adopted", task.id, {"attempt": attempt.number, "alive": True})
        return handle

    def _adopt_unrecorded(self, task: Task) -> _Handle | None:
        """The actor a killed coordinator launched but did not record, if it is there."""
        row = self.store.task(self.run_id, task.id)
        number = row.launching if row is not None else None
        if number is None:
            return None
        log_path = self._logs_root / task.id / f"attempt-{number}.log"
        handle = self._find(task, number, 0, log_path)
        if handle is None:
            self.store.update_task(self.run_id, task.id, launching=None)
            return None
        try:
            _ray().get(handle.actor.poll.remote(), timeout=30)  # started, or it never ran
        except Exception:  # noqa: BLE001 - not started: retire it, start afresh
            self._retire(handle)
            self.store.update_task(self.run_id, task.id, launching=None)
            return None
        handle.attempt_id = self.store.start_attempt(
            self.run_id,
            task.id,
            number=number,
            identity=_NO_IDENTITY,
            log_path=str(log_path),
            started_at=time.time(),
            agent=task.agent,
        )
        self.store.update_task(self.run_id, task.id, attempts=number, launching=None)
        return handle

    def _find(self, task: Task, number: int, attempt_id: int, log_path: Path) -> _Handle | None:
        ray = _ray()
        name, space = actor_name(task.id, number), namespace(self.run_id)
        try:
            actor = ray.get_actor(name, namespace=space)
        except Exception:  # noqa: BLE001 - not found, or dead: gone
            return None
        try:
            node = ray.get(actor.node.remote(), timeout=self.spec.lost_after)
        except Exception:  # noqa: BLE001 - unreachable, or still waiting for a slot
            # Gone for this run: it must not start an agent later, nor keep its slot and its
            # name (the next attempt of that number is made under it); what it started on
            # its node (the recorded one of the task's newest attempt) is ended there.
            row = self.store.task(self.run_id, task.id)
            where = row.node if row is not None and row.attempts == number and row.node else ""
            self._silence(actor, task.id, number, where)
            self._emit("actor_gone", task.id, {"attempt": number, "why": "did not answer"})
            return None
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.touch()
        self.disk.adopted(str(node), task.id)
        return _Handle(
            actor=actor,
            task_id=task.id,
            number=number,
            attempt_id=attempt_id,
            started_at=time.time(),
            log_path=log_path,
            node=str(node),
            offset=_mirrored(log_path),
        )

    def _replay(self, live: Live, course: Course, base: str, attempt: AttemptRow) -> _Ended | None:
        """The last attempt of a previous coordinator, which ended: what follows from it.

        A rate-limited one waits out what it was waiting for, then resumes; a successful one
        is checked (its checks may not have run); None: a new attempt goes on with the task.
        """
        task = live.task
        self._fetch(task)
        tip = git.rev_parse(self.repo, task.branch) or base
        stat = git.diff_stat(self.repo, base, tip)
        progressed = course.progressed(stat)
        outcome = AttemptOutcome.parse(attempt.outcome)
        if outcome is AttemptOutcome.RATE_LIMITED:
            result = AgentResult(
                outcome=AgentOutcome.RATE_LIMITED,
                reason=attempt.reason,
                session_id=attempt.session_id,
                retry_at=attempt.retry_at,  # the wait it was in: resuming does not restart it
            )
            return _Throttled(
                result=result, progressed=progressed, replayed=True, window=attempt.usage_window
            )
        if outcome is not AttemptOutcome.SUCCEEDED:
            state = {
                AttemptOutcome.STOPPED: TaskState.STOPPED,
                AttemptOutcome.TIMED_OUT: TaskState.TIMED_OUT,
            }.get(outcome, TaskState.FAILED)
            return TaskOutcome(state=state, reason=attempt.reason)
        if stat.files == 0:
            return TaskOutcome(state=TaskState.NO_CHANGES, reason="the agent changed nothing")
        if not (task.checks or task.expect_files or task.no_placeholders):
            return TaskOutcome(state=TaskState.DONE)
        try:
            failure = self._recheck(live, base, attempt)
        except NodeLostError:  # the agent goes on and its next attempt is checked
            if live.stop.is_set():
                return TaskOutcome(state=TaskState.STOPPED, reason="stopped")
            course.interrupted()
            return None
        return TaskOutcome(state=TaskState.DONE) if failure is None else failure

    def _recheck(self, live: Live, base: str, attempt: AttemptRow) -> CheckFailure | None:
        """Check *attempt*'s branch on a fresh clone: its coordinator died before its checks.

        The actor that ran them, if still there, is retired first.
        """
        task = live.task
        old = self._find(task, attempt.number, attempt.id, Path(attempt.log_path))
        if old is not None:
            self._retire(old)
        if not self.head.answers(live.stop):
            raise NodeLostError("stopped before its checks")
        handle = _Handle(
            actor=self._actor(self._assignment(task, attempt.number)),
            task_id=task.id,
            number=attempt.number,
            attempt_id=attempt.id,
            started_at=time.time(),
            log_path=Path(attempt.log_path),
            node="",
        )
        try:
            node = self._call(handle.actor, "node", live=live, placing=True)
            if live.stop.is_set():
                raise NodeLostError("stopped before its checks")
            handle.node = str(node)
            self._admit(live, handle.actor, handle.node)
            self._call(handle.actor, "prepare", live=live)
            if task.setup:
                failure, text = self._call(
                    handle.actor, "setup", live=live, on_stop=handle.actor.stop.remote
                )
                self._append_log(task, "setup.log", text)
                if failure is not None:
                    return cast("CheckFailure", failure)
            return self._check(live, handle, base)
        finally:
            self._retire(handle)

    # -- git ----------------------------------------------------------------------------------

    def _publish(self, task: Task, start: str) -> None:
        """Make the task's branch at *start*, here and on the remote."""
        with self._git_lock:
            if not git.branch_exists(self.repo, task.branch):
                git.git(self.repo.root, "branch", "--no-track", task.branch, start)
            # No agent has run on it yet (its base is recorded only after this): a branch the
            # remote has from a crash here, or from before a fresh retry, is replaced.
            git.git(
                self.repo.root,
                "push", "--quiet", "--no-verify", "--", self.url,
                f"+{start}:refs/heads/{task.branch}",
            )  # fmt: skip

    def _fetch(self, task: Task) -> None:
        """Bring the task's branch from the remote into this repository."""
        with self._git_lock:
            git.git(
                self.repo.root,
                "fetch", "--quiet", "--no-tags", "--", self.url,
                f"+refs/heads/{task.branch}:refs/heads/{task.branch}",
            )  # fmt: skip


def _outcome(cut: tuple[TaskState, str] | None, result: AgentResult, *, files: int) -> TaskOutcome:
    if cut is not None:
        return TaskOutcome(state=cut[0], reason=cut[1])
    if result.outcome is not AgentOutcome.SUCCESS:
        return TaskOutcome(state=TaskState.FAILED, reason=result.reason)
    if files == 0:
        return TaskOutcome(state=TaskState.NO_CHANGES, reason="the agent changed nothing")
    return TaskOutcome(state=TaskState.DONE)


def _read_to(log_path: Path) -> Path:
    """The file beside an attempt's local log that says how far its node's log was read."""
    return log_path.with_name(log_path.name + ".read")


def _note_read(log_path: Path, read_to: int, size: int) -> None:
    """Record that the node's log was read to *read_to* when the copy held *size* bytes."""
    part = log_path.with_name(log_path.name + ".read.part")
    part.write_text(f"{read_to} {size}\n")
    part.replace(_read_to(log_path))


def _size(path: Path) -> int:
    """The size of *path*, 0 when it is not there."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _mirrored(log_path: Path) -> int:
    """How far the node's log of the copy *log_path* was read; the copy cut back to match.

    A coordinator killed after appending a chunk and before noting it leaves the copy longer
    than noted: cut, the chunk is copied again, not twice. Nothing noted: copied from the start.
    """
    try:
        read_to, size = map(int, _read_to(log_path).read_text().split())
    except (OSError, ValueError):
        read_to = size = 0
    with contextlib.suppress(OSError), log_path.open("r+b") as fh:
        fh.truncate(min(size, os.fstat(fh.fileno()).st_size))
    return read_to
