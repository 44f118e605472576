"""The agent gate: how many agents may run now, given jobs, rate limits and the budget.

When an agent is rate limited no new agent starts until the reset (or a backoff) has passed,
and the live limit halves; every success raises it one step, back up to ``jobs``. Running
agents are never killed. Once the run's cost reaches the budget, no new attempt starts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from worktree_swarm.agents import backoff_delay

BACKOFF_BASE = 30.0


class AgentGate:
    """A semaphore of ``jobs`` slots whose size shrinks on rate limits and grows on success."""

    def __init__(
        self,
        jobs: int,
        *,
        max_cost_usd: float | None = None,
        clock: Callable[[], float] = time.time,
        backoff_base: float = BACKOFF_BASE,
    ) -> None:
        self.jobs = jobs
        self.limit = jobs
        self.running = 0
        self.paused_until = 0.0
        self.spent_usd = 0.0
        self.max_cost_usd = max_cost_usd
        self.backoff_base = backoff_base
        self._clock = clock
        self._cond = threading.Condition()

    @property
    def over_budget(self) -> bool:
        """Whether the run has spent its budget."""
        return self.max_cost_usd is not None and self.spent_usd >= self.max_cost_usd

    def acquire(self, stop: threading.Event) -> str:
        """Wait for a slot; '' when granted, else why not ('stopped' or 'budget')."""
        with self._cond:
            while True:
                if stop.is_set():
                    return "stopped"
                if self.over_budget:
                    return "budget"
                wait = self.paused_until - self._clock()
                if wait <= 0 and self.running < self.limit:
                    self.running += 1
                    return ""
                self._cond.wait(timeout=min(max(wait, 0.05), 0.2))

    @property
    def paused(self) -> bool:
        """Whether new agents are held back (after a rate limit)."""
        return self.paused_until > self._clock()

    def try_acquire(self, stop: threading.Event) -> str | None:
        """Like :meth:`acquire` without waiting: None when it would have to wait."""
        with self._cond:
            if stop.is_set():
                return "stopped"
            if self.over_budget:
                return "budget"
            if self.paused_until <= self._clock() and self.running < self.limit:
                self.running += 1
                return ""
            return None

    def adopt(self) -> None:
        """Count an agent a previous manager started (it already runs: no waiting)."""
        with self._cond:
            self.running += 1

    def release(self, *, cost_usd: float | None = None) -> None:
        """Give a slot back, adding what the attempt cost."""
        with self._cond:
            self.running -= 1
            self.spent_usd += cost_usd or 0.0
            self._cond.notify_all()

    def rate_limited(self, *, retry_at: float | None, streak: int) -> float:
        """Pause new agents and halve the limit; returns when agents may start again."""
        with self._cond:
            now = self._clock()
            until = (
                retry_at
                if retry_at and retry_at > now
                else now + backoff_delay(streak, base=self.backoff_base)
            )
            self.paused_until = max(self.paused_until, until)
            self.limit = max(1, self.limit // 2)
            self._cond.notify_all()
            return self.paused_until

    def succeeded(self) -> None:
        """Raise the live limit one step (after a rate limit lowered it)."""
        with self._cond:
            self.limit = min(self.jobs, self.limit + 1)
            self._cond.notify_all()
