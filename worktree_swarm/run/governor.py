"""The agent gates: how many agents of each provider may start now, given limits and the budget.

One gate per provider (anthropic, openai, google, other): a limit one provider reports never
slows another. Two kinds of limit are told apart:

- A *throttle* (HTTP 429, 529 overloaded, a short stated retry-after): the provider's
  concurrency adapts by AIMD. Every reported success adds ``1/limit`` (one agent per window of
  successes); a throttle halves the limit when throttles are at least :data:`CUT_SHARE` of the
  recent outcomes (decayed with the cooldown as half-life, plus ``jobs`` assumed successes so
  that a few throttles among few outcomes are not taken for overload; a whole attempt of an
  agent that does not report requests weighs ``jobs``), at most once per cooldown (the
  throttles of requests already in flight belong to the same congestion event). A scattering
  of 429s that the agents retry through is not overload: cutting would only slow the run.
  After a throttle and while below ``jobs``, launches are paced (one per ``pace`` seconds),
  never frozen; only at the floor of one agent do further cuts space launches with
  exponential backoff. Whatever the gate decides, a throttled task also waits a backoff of
  its own before its next attempt (:meth:`Gates.task_backoff`).
- A *usage window* (a reset stated further than :data:`gate_model.WINDOW_MIN_SECONDS` away: "usage
  limit reached|<epoch>", "resets 4pm"): the provider starts nothing until that reset once a second
  task confirms it. A window one task alone states is that task's own wait (its course applies it in
  full) and only an ordinary throttle for the provider: any agent can print such a line. A real
  window refuses every task's next request, so the next limit another task reports confirms it: a
  window of its own, or a throttle while no success of the provider came since (after one, a plain
  429 is no evidence). A task never confirms itself.

Running agents are never killed. Once the run's cost reaches the budget no new attempt starts;
past ``budget_share`` of it, :attr:`Gates.economy` tells callers to use the cheaper agent.
"""

from __future__ import annotations

import itertools
import math
import random
import threading
import time
from collections.abc import Callable

from worktree_swarm.agents import backoff_delay
from worktree_swarm.run.gate_model import Gate, GateView, Limit, Rank, Signal, Waiter

__all__ = ["Gates"]

BACKOFF_BASE = 30.0
DECREASE = 0.5  # multiplicative decrease on a throttle
CUT_SHARE = 0.4  # the share of recent outcomes that must be throttles for a cut
TASK_BACKOFF_CAP = 900.0  # the longest one task waits after its own throttles


class Gates:
    """Per-provider semaphores of at most ``jobs`` agents, all of them bounded by ``jobs`` too."""

    def __init__(
        self,
        jobs: int,
        *,
        max_cost_usd: float | None = None,
        budget_share: float = 0.8,
        clock: Callable[[], float] = time.time,
        backoff_base: float = BACKOFF_BASE,
        rng: random.Random | None = None,
        on_change: Callable[[GateView], None] | None = None,
    ) -> None:
        self.jobs = jobs
        self.running = 0
        self.spent_usd = 0.0
        self.max_cost_usd = max_cost_usd
        self.budget_share = budget_share
        self.backoff_base = backoff_base
        # Launch spacing while recovering; the cooldown between two cuts lets the requests in
        # flight at the first throttle report back before the limit is cut again.
        self.pace = backoff_base / jobs
        self.cooldown = backoff_base
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self._on_change = on_change
        self._gates: dict[str, Gate] = {}
        self._shown: dict[str, tuple[int, str, bool]] = {}
        self._cond = threading.Condition()
        self._waiters: dict[int, Waiter] = {}
        self._tickets = itertools.count()
        # Tasks launched that will ask for a slot as soon as their worktree is made: rank ->
        # provider (:meth:`expect`).
        self._coming: dict[Rank, str] = {}

    # -- budget ------------------------------------------------------------------------------

    @property
    def over_budget(self) -> bool:
        """Whether the run has spent its budget."""
        return self.max_cost_usd is not None and self.spent_usd >= self.max_cost_usd

    @property
    def economy(self) -> bool:
        """Whether spending passed ``budget_share`` of the budget (new attempts go cheap)."""
        return (
            self.max_cost_usd is not None
            and self.spent_usd >= self.budget_share * self.max_cost_usd
        )

    # -- slots -------------------------------------------------------------------------------

    def acquire(
        self,
        provider: str,
        stop: threading.Event,
        *,
        not_before: float = 0.0,
        leave_on_window: bool = False,
        max_wait: float = math.inf,
        rank: Rank | None = None,
    ) -> str:
        """Wait for a slot of *provider* and not before *not_before*.

        Returns '' when granted, else why not: 'stopped', 'budget', 'window' when
        *leave_on_window* and the provider is in a usage window (another agent can go on), or
        'max_wait' when its usage window resets more than *max_wait* seconds after the call.
        Of the waiters a freed slot could go to, the one of lowest *rank* gets it (the
        scheduler's order: a task provisioned sooner does not jump the queue), also when the
        better one is only expected (:meth:`expect`); a waiter without a rank comes last.
        """
        with self._cond:
            latest = self._clock() + max_wait
            ticket = next(self._tickets)
            self._waiters[ticket] = Waiter(provider=provider, not_before=not_before, rank=rank)
            self._arrived(rank)  # in the same breath: no one worse slips in between
            try:
                while True:
                    refused = self._refused(
                        provider, stop, leave_on_window=leave_on_window, latest=latest
                    )
                    if refused:
                        return refused
                    wait = self._wait(provider, not_before)
                    if wait <= 0:
                        if not self._outranked(provider, rank, skip=ticket):
                            self._grant(provider)
                            return ""
                        wait = math.inf  # until the better one goes or leaves: it notifies
                    self._cond.wait(timeout=min(max(wait, 0.01), 0.2))
            finally:
                del self._waiters[ticket]
                self._cond.notify_all()  # the next in rank may go now

    def try_acquire(
        self,
        provider: str,
        stop: threading.Event,
        *,
        not_before: float = 0.0,
        leave_on_window: bool = False,
        max_wait: float = math.inf,
        rank: Rank | None = None,
    ) -> str | None:
        """Like :meth:`acquire` without waiting: None when it would have to wait."""
        with self._cond:
            latest = self._clock() + max_wait
            refused = self._refused(provider, stop, leave_on_window=leave_on_window, latest=latest)
            if refused:
                self._arrived(rank)
                return refused
            if self._wait(provider, not_before) <= 0 and not self._outranked(provider, rank):
                self._arrived(rank)
                self._grant(provider)
                return ""
            return None  # still expected, until it waits in :meth:`acquire`

    def expect(self, rank: Rank, provider: str) -> None:
        """Hold slots for a task launched just now that will soon ask for one of *provider*.

        Until it asks, no slot goes to a task ranked after it: whichever worktree is made
        first, tasks start in the scheduler's order. :meth:`forget` ends the hold early when
        its wait would be long (its `setup` runs, it waits for disk) or it will not ask.
        """
        with self._cond:
            self._coming[rank] = provider

    def forget(self, rank: Rank | None) -> None:
        """Hold no slot for the task of *rank* any more (:meth:`expect`)."""
        with self._cond:
            self._arrived(rank)

    @property
    def waiters(self) -> int:
        """How many tasks wait in :meth:`acquire` now."""
        with self._cond:
            return len(self._waiters)

    def waiting_until(self, provider: str, *, not_before: float = 0.0) -> float | None:
        """When *provider* may start again, if a limit holds it (None: only slots are short)."""
        with self._cond:
            gate = self._gate(provider)
            until = max(not_before, gate.window_until, gate.next_launch)
            return until if until > self._clock() else None

    def window_until(self, provider: str) -> float | None:
        """The reset of *provider*'s usage window, if it is in one."""
        with self._cond:
            until = self._gate(provider).window_until
            return until if until > self._clock() else None

    def task_backoff(self, streak: int) -> float:
        """Seconds a task throttled *streak* times in a row (1, 2, ...) waits before it retries.

        Uniform in ``[c/2, c]``, ``c = min(TASK_BACKOFF_CAP, backoff_base * 2 ** (streak - 1))``:
        never a prompt retry that spends the task's retries in seconds, and tasks throttled
        together do not all come back together.
        """
        ceiling = min(TASK_BACKOFF_CAP, self.backoff_base * 2.0 ** min(max(streak, 1) - 1, 60))
        with self._cond:
            return self._rng.uniform(ceiling / 2, ceiling)

    def count_spent(self, cost_usd: float) -> None:
        """Count what was spent before this manager (a resumed run's earlier attempts)."""
        with self._cond:
            self.spent_usd += cost_usd

    def adopt(self, provider: str) -> None:
        """Count an agent a previous manager started (it already runs: no waiting)."""
        with self._cond:
            self._gate(provider).running += 1
            self.running += 1
        self._changed(provider)

    def release(self, provider: str, *, cost_usd: float | None = None) -> None:
        """Give a slot back, adding what the attempt cost."""
        with self._cond:
            self._gate(provider).running -= 1
            self.running -= 1
            self.spent_usd += cost_usd or 0.0
            self._cond.notify_all()
        self._changed(provider)

    # -- reports -----------------------------------------------------------------------------

    def report(
        self,
        provider: str,
        limit: Limit,
        *,
        task: str,
        whole_attempt: bool = False,
        recalled: bool = False,
    ) -> float:
        """Apply one report of *provider* by *task*'s agent; returns when its launches may start.

        *recalled*: a usage window an earlier manager was told (a resumed run's): claimed
        again, held if confirmed, but no new throttle of the provider (that one was applied).

        A *whole_attempt* (an agent that does not report its requests) weighs as much as a
        window of ``jobs`` requests: its success is one full step, its throttle counts ``jobs``.
        A usage window holds the provider once two tasks reported limits (the module's
        docstring); one only reported live (not by a whole attempt that ended on it) ends with
        the provider's next success.
        """
        with self._cond:
            now = self._clock()
            gate = self._gate(provider)
            claims = {t: r for t, r in gate.claims.items() if r > now}
            doubted = {t: r for t, r in gate.doubted.items() if r > now and t not in claims}
            if limit.signal is Signal.OK:
                doubted, claims = doubted | claims, {}  # served after them: doubted
                if gate.window_live:  # the provider serves again: the live report was not all
                    gate.window_until, gate.window_live = 0.0, False
                self._tally(gate, now, throttled=False, weight=self._weight(whole_attempt))
                gate.floor_streak = 0
                step = 1.0 if whole_attempt else 1.0 / gate.limit
                gate.limit = min(float(self.jobs), gate.limit + step)
                if gate.limit >= self.jobs and gate.window_until <= now:
                    gate.why = ""
            elif limit.signal is Signal.WINDOW and limit.retry_at is not None:
                told = task in claims or task in doubted  # again (live, then at its end)
                claims[task] = max(claims.get(task, 0.0), limit.retry_at)
                doubted.pop(task, None)
                # Another task's window, doubted or not, confirms it: both saw the same.
                if gate.window_until > now or set(claims) | set(doubted) != {task}:
                    claims, doubted = self._window(gate, claims, limit, now, whole=whole_attempt)
                elif not (told or recalled):  # for the others, an ordinary throttle until confirmed
                    plain = Limit(signal=Signal.THROTTLE, detail=limit.detail)  # no reset
                    self._throttle(gate, plain, now, weight=self._weight(whole_attempt))
                    gate.why = f"{limit.detail or 'usage limit'}, one task only: unconfirmed"
            else:
                self._throttle(gate, limit, now, weight=self._weight(whole_attempt))
                # Another task's window no success doubted: this limit confirms it.
                if set(claims) - {task}:
                    claims, doubted = self._window(gate, claims, limit, now, whole=whole_attempt)
            gate.claims, gate.doubted = claims, doubted
            self._cond.notify_all()
            until = max(gate.window_until, gate.next_launch, now)
        self._changed(provider)
        return until

    def views(self) -> list[GateView]:
        """Every provider seen so far."""
        with self._cond:
            return [self._view(p) for p in sorted(self._gates)]

    # -- internals ---------------------------------------------------------------------------

    def _weight(self, whole_attempt: bool) -> float:
        return float(self.jobs) if whole_attempt else 1.0

    def _tally(self, gate: Gate, now: float, *, throttled: bool, weight: float) -> None:
        decay = 0.5 ** (max(0.0, now - gate.seen_at) / self.cooldown)
        gate.ok_recent *= decay
        gate.throttled_recent *= decay
        gate.seen_at = now
        if throttled:
            gate.throttled_recent += weight
        else:
            gate.ok_recent += weight

    @staticmethod
    def _window(
        gate: Gate, claims: dict[str, float], limit: Limit, now: float, *, whole: bool
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Hold *gate* until the latest undoubted claim: confirmed, none is left pending.

        *whole*: the report that confirms it is a whole attempt's.
        """
        # An attempt that ended on the window confirms it; a live event alone may be followed
        # by the request being served after all.
        confirmed = gate.window_until > now and not gate.window_live
        gate.window_until = max(gate.window_until, *claims.values())
        gate.window_live = not (whole or confirmed)
        gate.why = (limit.detail if limit.signal is Signal.WINDOW else "") or "usage limit"
        return {}, {}

    def _throttle(self, gate: Gate, limit: Limit, now: float, *, weight: float) -> None:
        self._tally(gate, now, throttled=True, weight=weight)
        # ``jobs`` successes are assumed on top of those seen: a few throttles among few
        # outcomes are noise, not evidence of overload.
        thrown = gate.throttled_recent
        share = thrown / (thrown + gate.ok_recent + self.jobs)
        if share >= CUT_SHARE and now - gate.last_cut >= self.cooldown:
            gate.last_cut = now
            if gate.limit <= 1.0:
                gate.floor_streak += 1
            gate.limit = max(1.0, gate.limit * DECREASE)
            gate.why = f"throttled: {limit.detail}" if limit.detail else "throttled"
        if gate.floor_streak:
            pause = backoff_delay(gate.floor_streak, base=self.backoff_base, rng=self._rng)
        elif gate.limit < self.jobs:  # recovering from a cut: pace; noise alone holds nothing
            pause = self.pace
        else:
            pause = 0.0
        gate.next_launch = max(gate.next_launch, now + pause)
        if limit.retry_at is not None and limit.retry_at > now:  # what the server asked for
            gate.next_launch = max(gate.next_launch, limit.retry_at)

    def _refused(
        self, provider: str, stop: threading.Event, *, leave_on_window: bool, latest: float
    ) -> str:
        if stop.is_set():
            return "stopped"
        if self.over_budget:
            return "budget"
        window_until = self._gate(provider).window_until
        if leave_on_window and window_until > self._clock():
            return "window"
        if window_until > latest:
            return "max_wait"
        return ""

    def _wait(self, provider: str, not_before: float) -> float:
        gate = self._gate(provider)
        held = max(not_before, gate.window_until, gate.next_launch) - self._clock()
        if held > 0:
            return held
        if gate.running >= int(gate.limit) or self.running >= self.jobs:
            return math.inf  # until a release
        return 0.0

    def _outranked(self, provider: str, rank: Rank | None, *, skip: int = -1) -> bool:
        """Whether the slots free for *provider* now all go to tasks ranked before *rank*.

        Those are the waiters, and the tasks expected, that could take a slot now.
        """
        ahead = [
            w.provider
            for ticket, w in self._waiters.items()
            if ticket != skip
            and w.rank is not None
            and (rank is None or w.rank < rank)
            and self._wait(w.provider, w.not_before) <= 0
        ]
        ahead += [
            p
            for r, p in self._coming.items()
            if (rank is None or r < rank) and self._wait(p, 0.0) <= 0
        ]
        gate = self._gate(provider)
        return (
            len(ahead) >= self.jobs - self.running
            or ahead.count(provider) >= int(gate.limit) - gate.running
        )

    def _arrived(self, rank: Rank | None) -> None:
        """The task of *rank* is no longer expected: those it held back may go."""
        if rank is not None and self._coming.pop(rank, None) is not None:
            self._cond.notify_all()

    def _grant(self, provider: str) -> None:
        gate = self._gate(provider)
        gate.running += 1
        self.running += 1
        if gate.limit < self.jobs:  # recovering from a throttle: pace the launches
            gate.next_launch = max(gate.next_launch, self._clock() + self.pace)
        # Reported outside the lock by the caller's next release or report; a grant alone
        # changes only the running count.

    def _gate(self, provider: str) -> Gate:
        gate = self._gates.get(provider)
        if gate is None:
            gate = self._gates[provider] = Gate(limit=float(self.jobs))
        return gate

    def _view(self, provider: str) -> GateView:
        gate = self._gates[provider]
        until = max(gate.window_until, gate.next_launch)
        if until <= self._clock() + self.pace:  # ordinary pacing is not a wait worth showing
            until = 0.0
        return GateView(
            provider=provider,
            limit=int(gate.limit),
            jobs=self.jobs,
            waiting_until=until if until > self._clock() else None,
            why=gate.why,
        )

    def _changed(self, provider: str) -> None:
        """Tell the observer when what a user would see changed (not the running count)."""
        if self._on_change is None:
            return
        with self._cond:
            view = self._view(provider)
            # Pacing moves the next launch with every grant; only a usage window is news.
            window = self._gates[provider].window_until > self._clock()
            key = (view.limit, view.why, window)
            if self._shown.get(provider) == key:
                return
            self._shown[provider] = key
        self._on_change(view)
