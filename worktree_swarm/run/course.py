"""Where a task's attempts stand, and what follows a rate-limited one; shared by both executors.

A task's course is the agent on it, its session, the rate-limit retries it has left, when its
next attempt may start and what that attempt is asked to do. After a rate limit with no other
agent to take over, :meth:`Course.throttled` decides: wait for a stated reset (a usage window,
bounded by ``max_wait``, also when another task reported it), back off on its own when the
attempt got nothing done, or fail with the work kept once its retries are spent.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from worktree_swarm.agents import AgentOutcome, AgentResult, adapter_for
from worktree_swarm.core import units
from worktree_swarm.core.models import AttemptOutcome
from worktree_swarm.core.task import Task
from worktree_swarm.git import diffs
from worktree_swarm.infra import redact
from worktree_swarm.infra.store_rows import AttemptRow
from worktree_swarm.run import fallback
from worktree_swarm.run.checks import CheckFailure
from worktree_swarm.run.gate_model import Signal, limit_kind
from worktree_swarm.run.governor import Gates

RESUME_PROMPT = (
    "You were interrupted (rate limit or restart). Continue the task where you left off; "
    "your earlier edits are already in this worktree."
)
# After an attempt cut short otherwise (a `swarm retry` of the task): what happened to it.
_CUT_SHORT = {
    AttemptOutcome.TIMED_OUT.value: (
        "Your previous attempt was stopped: it ran past its time limit. Continue the task "
        "where you left off, in smaller steps; your earlier edits are already in this worktree."
    ),
    AttemptOutcome.STOPPED.value: (
        "Your previous attempt was stopped by the user. Continue the task where you left off; "
        "your earlier edits are already in this worktree."
    ),
    AttemptOutcome.DISK_FULL.value: (
        "Your previous attempt ended while the disk was full (No space left on device); there "
        "is room again. Continue the task where you left off; your earlier edits are already "
        "in this worktree."
    ),
}
# Attempts of a task that may fail while the disk is full and be tried again once there is
# room (an agent that fills the disk itself again and again fails in the end).
DISK_RETRIES = 3


def resume_prompt(previous: Sequence[AttemptRow]) -> str:
    """What an agent is told when it goes on after *previous* attempts (the last one's end)."""
    last = previous[-1].outcome if previous else None
    return _CUT_SHORT.get(last or "", RESUME_PROMPT)


@dataclass(slots=True, kw_only=True)
class Course:
    """Where a task's attempts stand: the agent on it, its session, retries and next prompt."""

    agent: str
    session: str | None
    retries_left: int
    prompt: str | None
    not_before: float = 0.0  # the next attempt waits for this (a stated reset, a backoff)
    throttles: int = 0  # the agent's attempts throttled in a row: its backoff grows with them
    work: tuple[int, int, int, str] | None = None  # the branch's diff after the last attempt
    pending: str | None = None  # what the agent was asked to do now (repair, hand-over)
    window: bool = False  # the wait after the last limit is a usage window's (no retry used)
    # The last limited attempt changed the work first (no retry used); None: a replayed one,
    # whose record says.
    got_work_done: bool | None = False
    free_throttles_left: int = 0  # limited attempts that got work done and may use no retry
    repairs_left: int = 0  # failing checks it may still hand back to the agent
    repair_due: bool = False  # a round handed back whose attempt has not started: not counted
    disk_retries_left: int = DISK_RETRIES  # attempts that may still end on a full disk
    ran: frozenset[str] = frozenset()  # the task's agents so far: its own, each that took over

    @classmethod
    def resumed(
        cls,
        task: Task,
        previous: list[AttemptRow],
        *,
        since: list[AttemptRow] | None = None,
        fresh: bool = False,
        instruction: str | None = None,
        repairs: int = 0,
    ) -> Course:
        """The course of a task with *previous* attempts (none: a fresh start).

        *since* are the attempts after the last `swarm retry` (all by default): only they use
        up retries, and with *fresh* only they can give a session to resume. *instruction*:
        what the agent was asked to do when its manager stopped, asked again; *repairs*: the
        rounds of ``repair`` used so far.
        """
        since = previous if since is None else since
        agent = fallback.current_agent(task, previous)
        mine = [a for a in previous if a.agent in {"", agent}]
        counted = [a for a in since if a.agent in {"", agent}]
        session = next(
            (a.session_id for a in reversed(counted if fresh else mine) if a.session_id), None
        )
        # A usage window's wait used no retry and is no throttle of the task's own; nor did
        # an attempt that got work done before its limit. One whose wait was never decided
        # (its manager killed first) is decided again when it is replayed.
        throttled = [a for a in counted if a.outcome == AttemptOutcome.RATE_LIMITED]
        spent = [a for a in throttled if decided(a) and not (a.usage_window or a.progressed)]
        free = [a for a in throttled if decided(a) and a.progressed and not a.usage_window]
        streak = 0
        for a in reversed(counted):  # since the last that ran on, or got work done, as live
            if a.outcome != AttemptOutcome.RATE_LIMITED or (decided(a) and a.progressed):
                break
            streak += 0 if a.usage_window or not decided(a) else 1
        course = cls(
            agent=agent,
            session=session,
            retries_left=task.retries - len(spent),
            prompt=resume_prompt(previous) if since or (previous and session) else None,
            throttles=streak,
            pending=instruction,
            repairs_left=max(0, task.repair - repairs),
            free_throttles_left=free_throttles(task) - len(free),
            disk_retries_left=DISK_RETRIES
            - sum(a.outcome == AttemptOutcome.DISK_FULL for a in since),
            ran=frozenset({task.agent, agent, *(a.agent for a in previous if a.agent)}),
        )
        if instruction is not None:
            course.interrupted()
        return course

    def progressed(self, stat: diffs.DiffStat) -> bool:
        """Whether the attempt that ended with the branch at *stat* changed the work."""
        now = (stat.files, stat.insertions, stat.deletions, stat.content)
        before, self.work = self.work, now
        return now != (before or (0, 0, 0, ""))

    def instruct(self, prompt: str | None) -> None:
        """Ask the agent to do *prompt* next, until an attempt is not cut short by a limit."""
        self.prompt = self.pending = prompt

    def interrupted(self) -> None:
        """After a rate limit or a lost attempt: go on, still with what the agent was asked."""
        self.prompt = (
            RESUME_PROMPT if self.pending is None else f"{RESUME_PROMPT}\n\n{self.pending}"
        )

    def out_of_room(self) -> None:
        """After an attempt that failed on a full disk: go on, told so, once there is room."""
        told = _CUT_SHORT[AttemptOutcome.DISK_FULL.value]
        self.prompt = told if self.pending is None else f"{told}\n\n{self.pending}"

    def completed(self) -> None:
        """An attempt ran to its end: no wait, backoff or instruction carries over."""
        self.not_before, self.throttles, self.pending = 0.0, 0, None

    def take_over(self, agent: str, task: Task) -> None:
        """Another agent goes on: no session of its own yet, a full set of retries."""
        self.agent, self.session, self.ran = agent, None, self.ran | {agent}
        self.retries_left, self.not_before, self.throttles = task.retries, 0.0, 0
        self.free_throttles_left = free_throttles(task)

    def uses_no_retry(self, *, progressed: bool, replayed: bool) -> bool:
        """Whether a limited attempt that *progressed* goes on without using a retry."""
        return progressed and not replayed and self.free_throttles_left > 0

    def throttled(
        self,
        task: Task,
        result: AgentResult,
        gate: Gates,
        *,
        provider: str,
        replayed: bool,
        progressed: bool,
        window: bool | None = None,
        kept: bool = True,
    ) -> str | None:
        """After a rate-limited attempt that no other agent takes over: why the task fails.

        None: it goes on, not before :attr:`not_before`, asked to continue what it was doing.
        *replayed*: the attempt was a previous manager's, already counted. *progressed*: it
        changed the work before its limit (an agent that ends on every 429 of a storm): it goes
        on after the gate's pacing, without a backoff of its own. *window*: whether its limit is
        a usage window, as recorded (None: from how far away its reset is). *kept*: the
        task's branch holds work (a reason says it is kept).
        """
        now = time.time()
        own = stated_window(result, now) if window is None else window
        # A window another task reported holds this one as much as its own does.
        shared = gate.window_until(provider)
        reset = max((result.retry_at or 0.0) if own else 0.0, shared or 0.0)
        self.window = own or shared is not None
        # Work done before a limit uses no retry, up to a bound: an agent that changes some
        # file each time while the limits go on would otherwise never stop.
        progressed = self.uses_no_retry(progressed=progressed, replayed=replayed)
        self.got_work_done = None if replayed else progressed and not self.window
        if self.window:  # a usage window: waited for, no retry spent
            if reset - now > task.max_wait:
                return past_max_wait(task, provider, reset, kept=kept)
            self.not_before = reset
        elif self.retries_left <= 0 and not replayed and not progressed:
            return f"rate limited and out of retries ({result.reason})" + kept_on(task, kept=kept)
        else:
            # An attempt that got work done is no retry: a storm's 429s end an agent a few
            # turns further each time, and its retries went in a minute.
            self.retries_left -= 0 if replayed or progressed else 1
            self.free_throttles_left -= 1 if progressed else 0
            self.throttles = 0 if progressed else self.throttles + (0 if replayed else 1)
            # No stated retry-after and nothing done: a backoff of the task's own, whatever the
            # shared gate decides (one agent's throttles alone never cut a provider's
            # concurrency), so that its retries do not go in seconds.
            backoff = gate.task_backoff(self.throttles) if self.throttles else 0.0
            # A stated reset already past (a clock ahead of the API's) says nothing: backoff.
            # A replayed attempt's is its own recorded wait: past, it is over (resume now).
            stated = (
                result.retry_at if result.retry_at and (result.retry_at > now or replayed) else None
            )
            self.not_before = stated or (now + backoff if backoff else 0.0)
        self.not_before = max(self.not_before, gate.waiting_until(provider) or now)
        self.interrupted()
        return None


def free_throttles(task: Task) -> int:
    """How many limited attempts of *task* that got work done use no retry (then they do)."""
    return 2 * task.retries + 2


def decided(attempt: AttemptRow) -> bool:
    """Whether what follows *attempt* was decided (and counted) by the manager that saw it end.

    A rate-limited attempt is, once its wait is on record; one whose manager was killed
    before that is decided by the manager that replays it.
    """
    return attempt.outcome != AttemptOutcome.RATE_LIMITED or attempt.retry_at is not None


def stated_limit(attempt: AttemptRow, profile: str, log_text: str) -> tuple[float | None, bool]:
    """The reset a rate-limited *attempt*'s agent stated, and whether it was a usage window.

    Read from its log (*log_text*) with its agent's parser (*profile*'s if none is on record),
    as of its end (a reset stated as "in N s" or as a time of day is then's), as the manager
    that saw it end read it.
    """
    ended = attempt.ended_at or time.time()
    result = adapter_for(attempt.agent or profile).interpret(
        exit_code=attempt.exit_code, log_text=log_text, now=ended
    )
    if result.outcome is not AgentOutcome.RATE_LIMITED:
        return None, False
    return result.retry_at, stated_window(result, ended)


def stated_window(result: AgentResult, now: float) -> bool:
    """Whether the limit an attempt ended on is a usage window (a reset stated far away)."""
    return limit_kind(retry_at=result.retry_at, now=now) is Signal.WINDOW


def past_max_wait(task: Task, provider: str, reset: float, *, kept: bool = True) -> str:
    """Why *task* does not wait for *provider*'s usage window until *reset*."""
    when = units.local_time(reset, "%Y-%m-%d %H:%M")
    return (
        f"usage limit of {provider} resets at {when}, past max_wait ({task.max_wait:g}s)"
        + kept_on(task, kept=kept)
    )


def kept_on(task: Task, *, kept: bool) -> str:
    """The end of a failed task's reason: where its work is, when its branch holds any."""
    return f"; work kept on {task.branch}" if kept else ""


def repair_prompt(failure: CheckFailure) -> str:
    """The prompt that hands failing checks back to the agent.

    Their output redacted: it reaches the agent's command line (``{prompt}``, which every user
    reads in ``ps``), its prompt file and the store, as their log does once they end.
    """
    return (
        "The checks on your work failed. Fix the problem (do not weaken or skip the checks), "
        f"then stop.\n\n{redact.redact(str(failure))}"
    )
