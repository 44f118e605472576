"""Watching an attempt's agent to its end, and recording how it ended.

While it runs: its timeouts, stop requests, ``max_log``, and the rate limits its stream
reports to the gate. Once it ends: the adapter's reading of its log, whether it ended on a
full disk or was being stopped, what its dead shim left running, and its attempt's record.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.agents import AgentOutcome, AgentResult, adapter_for, provider_of
from worktree_swarm.core import units
from worktree_swarm.core.models import AttemptOutcome, TaskState
from worktree_swarm.core.task import Task
from worktree_swarm.infra import fs, proc_scan, shim_record, supervisor
from worktree_swarm.infra.logtail import read_end, read_log_end
from worktree_swarm.infra.store_rows import AttemptUsage
from worktree_swarm.run.attempt_record import attempt_outcome, attempt_usage, attempts_own
from worktree_swarm.run.course import stated_window
from worktree_swarm.run.gate_model import Limit, Signal, limit_kind
from worktree_swarm.run.live_limits import LogTail
from worktree_swarm.run.run_worker import Live, RunContext, RunWorker, worktree_path

# Popen.wait polls with its own backoff capped at 50 ms, so exits are seen within 50 ms
# whatever this is; a longer slice only means fewer wake-ups for stop and timeout checks.
POLL_SECONDS = 0.25
LOG_READ_LIMIT = 8 * 2**20
RETRY_TAIL_BYTES = 16 * 2**10
# An attempt that failed on a full disk goes on once this much is free (half of a smaller
# disk); one with more than this (a quarter of a smaller disk) in its own log filled the disk
# itself and fails, as past max_log: waiting for room its own log holds would wait for ever.
ROOM_TO_GO_ON = 64 << 20
RUNAWAY_TAIL = 1 << 20  # what is kept of the log of an agent whose output filled the disk


@dataclass(frozen=True, slots=True, kw_only=True)
class Ended:
    """How one attempt ended: the adapter's reading, or the state that cut it short."""

    result: AgentResult
    cut_short: TaskState | None = None
    reason: str = ""
    usage_window: bool | None = None  # a previous manager's attempt: its limit, as recorded
    disk_full: bool = False  # failed while the disk was full: tried again once there is room


class AgentWatch(RunWorker):
    """Watches an attempt's agent until it ends and records the attempt (a task worker's part)."""

    def __init__(self, run: RunContext) -> None:
        super().__init__(run)
        # When a disk of a task was last found full, by any task's watch: an attempt that
        # fails after it ran then ended on it, though the room may be back by the time it is
        # looked at (a sibling's runaway log cut, a file its agent deleted).
        self._full_at = -math.inf

    def _watched(
        self,
        task: Task,
        live: Live,
        agent: supervisor.Supervised,
        started_at: float,
        attempt_id: int,
        *,
        gone_since: float | None = None,
    ) -> Ended:
        """:meth:`_watch`; after an internal error in it, the agent is stopped first.

        No agent runs unwatched: its attempt ends failed, the task fails with the error and
        its work is kept.
        """
        try:
            return self._watch(task, live, agent, started_at, gone_since=gone_since)
        except Exception as exc:
            with contextlib.suppress(Exception):  # the error that got here is the one to tell
                code = agent.stop(grace=self.spec.kill_grace)
                usage = AttemptUsage(reason=f"internal error: {exc!r}")
                self.store.end_attempt(
                    attempt_id, exit_code=code, outcome=AttemptOutcome.FAILED.value, usage=usage
                )
            raise

    def _record(
        self,
        attempt_id: int,
        task_id: str,
        ended: Ended,
        code: int | None,
        *,
        ended_at: float | None = None,
    ) -> float | None:
        r = attempts_own(self.store, self.run_id, task_id, attempt_id, ended.result)
        outcome = ended.cut_short.value if ended.cut_short else attempt_outcome(r)
        if ended.disk_full:
            outcome = AttemptOutcome.DISK_FULL.value
        usage = attempt_usage(r, ended.reason or r.reason)
        # Its end and its task's totals at once: a resumed manager counts it once.
        self.store.record_end(
            attempt_id, exit_code=code, outcome=outcome, ended_at=ended_at, usage=usage
        )
        return r.cost_usd

    def _watch(
        self,
        task: Task,
        live: Live,
        agent: supervisor.Supervised,
        started_at: float,
        *,
        gone_since: float | None = None,
    ) -> Ended:
        """Wait for the agent to end, enforcing timeouts and stop requests.

        *gone_since*: an adopted agent found ended, its last sign of life (its end, when its
        shim recorded none).
        """
        timeouts = _Timeouts.start(task, agent, started_at)
        path = worktree_path(self.spec, live.task)
        adapter = adapter_for(task.agent)
        # A CLI that retries rate limits on its own with no knob to stop it (aider) says so in
        # its log: it is stopped there, so that the gate decides when to go on.
        retrying = getattr(adapter, "retrying_rate_limit", None)
        seen = -1
        provider = provider_of(task.agent)
        tail = LogTail(path=agent.log_path, profile=task.agent)
        while True:
            ended, code = exit_status(agent, timeout=POLL_SECONDS)
            self._full_now(task, path)
            # What the agent reported meanwhile reaches the gate now, and at the end before
            # its slot is released: a freed slot is never refilled ahead of its rate limit.
            for limit in tail.poll(now=time.time()):
                self.gate.report(provider, limit, task=task.id)
            if ended:
                self._kill_leftovers(agent.log_path, path)
                text = read_log(agent.log_path)
                # Read as of its end: one that ended while no manager watched (adopted) said
                # "resets in N s" then, and a reset 302 s away then is a usage window still.
                at = _ended_at(agent.log_path, gone_since)
                result = adapter.interpret(exit_code=code, log_text=text, now=at)
                self._report_end(task.id, provider, result, live=tail, now=at)
                stoppable = result.outcome is not AgentOutcome.SUCCESS
                if stoppable and self._stop_asked(task.id, live, agent.log_path):  # `swarm stop`
                    return Ended(result=result, cut_short=TaskState.STOPPED, reason="stopped")
                full = self._ended_on_full_disk(task, path, agent, result, started_at)
                if full is not None:
                    return full
                # Printed past it between two looks: as if it had been seen.
                if (
                    over := past_max_log(fs.size_of(agent.log_path), self.spec.max_log)
                ) is not None:
                    return Ended(result=result, cut_short=over[0], reason=over[1])
                return Ended(result=result, usage_window=stated_window(result, at))
            if (
                retrying is not None
                and seen != (seen := fs.size_of(agent.log_path))
                and retrying(read_end(agent.log_path, RETRY_TAIL_BYTES))
            ):
                agent.stop(grace=self.spec.kill_grace)
                text = read_log(agent.log_path)
                result = adapter.interpret(exit_code=None, log_text=text, now=time.time())
                self._report_end(task.id, provider, result, live=tail)
                return Ended(result=result)
            waiting = tail.waiting  # announced by its last line: it waits, it is not hung
            cut = (TaskState.STOPPED, "stopped") if live.stop.is_set() else timeouts.passed(waiting)
            if cut is None:
                cut = past_max_log(fs.size_of(agent.log_path), self.spec.max_log)
            if cut is not None:
                agent.stop(grace=self.spec.kill_grace)
                text = read_log(agent.log_path)
                partial = adapter.interpret(exit_code=None, log_text=text, now=time.time())
                return Ended(result=partial, cut_short=cut[0], reason=cut[1])

    def _ended_on_full_disk(
        self,
        task: Task,
        path: Path,
        agent: supervisor.Supervised,
        result: AgentResult,
        started_at: float,
    ) -> Ended | None:
        """How a failed attempt ended when the disk of its worktree or logs is full, or None.

        Full now, or found full (by any task) since the attempt started at *started_at*: its
        output goes to a log on that disk, and most agents end so. One whose own log filled
        the disk fails, its log cut to its end (nothing else, the run's state, could be
        written); any other goes on once there is room.
        """
        if result.outcome is not AgentOutcome.FAILED:
            return None
        if not self._full_now(task, path) and self._full_at < started_at:
            return None
        printed = fs.size_of(agent.log_path)
        if printed > _runaway(agent.log_path):
            fs.keep_end(agent.log_path, RUNAWAY_TAIL)
            why = (
                f"its output filled the disk ({units.format_size(printed)}; its "
                f"log is cut to its last {units.format_size(RUNAWAY_TAIL)})"
            )
            return Ended(result=result, cut_short=TaskState.FAILED, reason=why)
        why = f"the disk was full ({result.reason})" if result.reason else "the disk was full"
        return Ended(result=result, disk_full=True, reason=why)

    def _stop_asked(self, task_id: str, live: Live, log_path: Path) -> bool:
        """Whether the agent that just ended was being stopped.

        By this manager, or by `swarm stop` through a manager that died meanwhile (its shim
        recorded the stop, or the request is in the store).
        """
        if live.stop.is_set():
            return True
        shim = shim_record.read_record(shim_record.record_path(log_path))
        if shim is not None and shim.stopped:
            return True
        row = self.store.task(self.run_id, task_id)
        return row is not None and row.stop_requested

    def _kill_leftovers(self, log_path: Path, worktree: Path) -> None:
        """Kill what the agent left running when its shim died before ending it (SIGKILL, OOM).

        A shim that ends normally kills its command's leftovers itself and records that it
        did; without that record (no record, or its end recorded and the shim killed in its
        grace), every process still marked as started under this shim (found by the variable
        each inherits, wherever it moved) is killed, tree and all, and so is the shim's process
        group where a member is marked or works in the task's *worktree* in the shim's session
        (one started with its environment wiped, ``env -i``).
        """
        proc_scan.kill_left_by(
            shim_record.record_path(log_path), grace=self.spec.kill_grace, within=(worktree,)
        )

    def _report_end(
        self,
        task_id: str,
        provider: str,
        result: AgentResult,
        *,
        live: LogTail | None,
        now: float | None = None,
    ) -> None:
        """Tell the gate how a whole attempt went, unless its stream already did.

        A usage window is told again: an attempt that ended on it confirms what its stream said.
        *now*: when the attempt ended (its limit's kind is judged as of then).
        """
        kind = limit_kind(retry_at=result.retry_at, now=time.time() if now is None else now)
        window = kind is Signal.WINDOW
        if result.outcome is AgentOutcome.RATE_LIMITED and (window or not (live and live.limited)):
            detail = "usage limit" if window else "rate limited"
            limit = Limit(signal=kind, retry_at=result.retry_at, detail=detail)
            self.gate.report(provider, limit, task=task_id, whole_attempt=True)
        elif result.outcome is AgentOutcome.SUCCESS and not (live and live.succeeded):
            self.gate.report(provider, Limit(signal=Signal.OK), task=task_id, whole_attempt=True)

    def _full_now(self, task: Task, path: Path) -> bool:
        """:meth:`_out_of_room`, noted for the run's other attempts when it is."""
        if not self._out_of_room(task, path):
            return False
        self._full_at = time.time()
        return True

    def _out_of_room(self, task: Task, path: Path, *, to_go_on: bool = False) -> bool:
        """Whether the disk of *task*'s worktree (at *path*) or of its logs is nearly full.

        *to_go_on*: whether either has less free than an attempt waits for after a full disk.
        Each disk's need is its own: the logs' disk may be much smaller than the worktree's.
        """
        need = room_to_go_on if to_go_on else fs.full_margin
        return any(_short(where, need) for where in (path, self._logs(task)))

    def _logs(self, task: Task) -> Path:
        return self._logs_root / task.id


def room_to_go_on(size: int) -> int:
    """The free bytes an attempt that failed on a full disk of *size* bytes waits for.

    64 MiB, or half of a smaller disk: more than :func:`fs.full_margin` (a quarter at most),
    else it would fail again at once.
    """
    return min(ROOM_TO_GO_ON, size // 2)


def _short(path: Path, need: Callable[[int], int]) -> bool:
    """Whether the disk of *path* has less free than *need* of its size (unknown: no)."""
    found = fs.space(path)
    return found is not None and found[0] < need(found[1])


def _runaway(path: Path) -> int:
    """An agent's log past this filled the disk of *path* itself: 64 MiB, or a quarter."""
    found = fs.space(path)
    return ROOM_TO_GO_ON if found is None else min(ROOM_TO_GO_ON, found[1] // 4)


def exit_status(agent: supervisor.Supervised, *, timeout: float) -> tuple[bool, int | None]:
    """Wait up to *timeout*: (whether the agent has ended, its exit code when known)."""
    code = agent.wait(timeout=timeout)
    if code is not None:
        return True, code
    if agent.alive():
        return False, None
    # It exited between the wait and the liveness check (which reaped it): collect the
    # status now, or a successful agent would be reported as ending without one.
    return True, agent.wait(timeout=0)


def past_max_log(size: int, cap: int) -> tuple[TaskState, str] | None:
    """How an attempt whose log holds *size* bytes ends, past the run's ``max_log`` (*cap*)."""
    if size <= cap:
        return None
    why = (
        f"printed more than max_log ({units.format_size(cap)}): stopped, as it would fill the disk"
    )
    return TaskState.FAILED, why


@dataclass(slots=True)
class _Timeouts:
    """A running agent's ``timeout`` and ``idle_timeout``, counted on the monotonic clock.

    A step of the wall clock (NTP, a VM or laptop resumed) would time out every agent at
    once, or none; the time asleep does not count either.
    """

    task: Task
    log: Path
    deadline: float | None
    size: int  # of the log when last looked at
    quiet_from: float  # when it last grew

    @classmethod
    def start(cls, task: Task, agent: supervisor.Supervised, started_at: float) -> _Timeouts:
        """From now, for *agent* started at *started_at* (wall clock: an adopted one's too)."""
        now = time.monotonic()
        left = started_at + task.timeout - time.time() if task.timeout else None
        return cls(
            task=task,
            log=agent.log_path,
            deadline=None if left is None else now + max(0.0, left),
            size=fs.size_of(agent.log_path),
            quiet_from=now - agent.idle_seconds(),
        )

    def passed(self, waiting: float = 0.0) -> tuple[TaskState, str] | None:
        """The timeout that has passed, as the state and reason it ends the attempt with.

        *waiting*: the retry delay the agent's last line announced, added to ``idle_timeout``.
        """
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline:
            return TaskState.TIMED_OUT, f"timed out after {self.task.timeout:g}s"
        idle = self.task.idle_timeout
        if idle:
            size = fs.size_of(self.log)
            if size != self.size:
                self.size, self.quiet_from = size, now
            if now - self.quiet_from >= idle + waiting:
                return TaskState.TIMED_OUT, idle_reason(idle, waiting)
        return None


def idle_reason(idle: float, waiting: float) -> str:
    """Why an agent silent past its ``idle_timeout`` (and the retry delay it announced) ends."""
    if waiting:
        return f"no output for {idle:g}s after the {round(waiting, 1):g}s retry delay it announced"
    return f"no output for {idle:g}s"


def _ended_at(log: Path, gone_since: float | None = None) -> float:
    """When the agent of *log* ended: now, for one watched to its end.

    For an adopted one found gone (*gone_since*, its last sign of life): as its shim recorded
    it, if it did.
    """
    if gone_since is None:
        return time.time()
    record = shim_record.read_record(shim_record.record_path(log))
    return record.ended_at if record is not None and record.ended_at else gone_since


def read_log(path: Path) -> str:
    """What an adapter reads of an attempt's log: its end, its last line whole."""
    return read_log_end(path, LOG_READ_LIMIT)
