"""What the provider gates work on: an agent's report and the view a user sees of a gate.

A report is a :class:`Signal` in a :class:`Limit` (:func:`limit_kind` tells a usage window from
a throttle by its stated reset); a :class:`GateView` is what `swarm status`, the report and the
live view show, read back from a run's events by :func:`views_from_events`. Also one provider's
state and a waiting task, the records :class:`~worktree_swarm.run.governor.Gates` keeps.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

from worktree_swarm.core import units

__all__ = [
    "Gate",
    "GateView",
    "Limit",
    "Rank",
    "Signal",
    "Waiter",
    "limit_kind",
    "views_from_events",
]

# A stated reset further away than this is a usage window (hours), not a short throttle.
WINDOW_MIN_SECONDS = 300.0


class Signal(enum.StrEnum):
    """What an agent reported about its provider."""

    OK = "ok"  # a request (or a whole attempt) went through
    THROTTLE = "throttle"  # 429 / 529: slow down
    WINDOW = "window"  # usage limit: nothing until the stated reset


@dataclass(frozen=True, slots=True, kw_only=True)
class Limit:
    """One report: a success, a throttle (maybe with retry-after) or a usage window."""

    signal: Signal
    retry_at: float | None = None
    detail: str = ""


def limit_kind(*, retry_at: float | None, now: float) -> Signal:
    """A rate limit's kind from its stated reset: far away is a usage window."""
    if retry_at is not None and retry_at - now >= WINDOW_MIN_SECONDS:
        return Signal.WINDOW
    return Signal.THROTTLE


@dataclass(frozen=True, slots=True, kw_only=True)
class GateView:
    """A provider's gate as `swarm status`, the report and the live view show it.

    No running count: it changes with every launch, too often for an event; `swarm status`
    shows each task's agent and whether it is alive instead.
    """

    provider: str
    limit: int  # agents this provider may run at once now
    jobs: int
    waiting_until: float | None
    why: str

    def to_json(self) -> dict[str, object]:
        """Plain dict for events and JSON output."""
        return asdict(self)

    def describe(self, *, now: float) -> str:
        """One line: concurrency, the wait and why."""
        text = f"{self.provider}: {self.limit}/{self.jobs} agents"
        if self.waiting_until is not None and self.waiting_until > now:
            when = units.clock_time(self.waiting_until, now=now)
            text += f", launches wait until {when}"
        return text + (f" ({self.why})" if self.why else "")


def views_from_events(events: Iterable[tuple[str, Mapping[str, object]]]) -> list[GateView]:
    """The last view of each provider among a run's ``(kind, data)`` events, by provider."""
    last: dict[str, GateView] = {}
    for kind, data in events:
        if kind != "gate" or not isinstance(data.get("provider"), str):
            continue
        until = data.get("waiting_until")
        last[str(data["provider"])] = GateView(
            provider=str(data["provider"]),
            limit=_int(data.get("limit")),
            jobs=_int(data.get("jobs")),
            waiting_until=float(until) if isinstance(until, int | float) else None,
            why=str(data.get("why") or ""),
        )
    return [last[p] for p in sorted(last)]


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float) else 0


@dataclass(slots=True)
class Gate:
    """One provider's gate: its concurrency limit, what runs, and the throttles it has seen."""

    limit: float
    running: int = 0
    window_until: float = 0.0
    window_live: bool = False  # known only from a running agent's stream: a success ends it
    next_launch: float = 0.0
    last_cut: float = -math.inf
    floor_streak: int = 0
    why: str = ""
    ok_recent: float = 0.0  # successes and throttles, decayed: half-life one cooldown
    throttled_recent: float = 0.0
    seen_at: float = 0.0
    # Usage windows one task alone stated, not yet confirmed by another: task -> its reset;
    # those stated before the provider's last success are doubted.
    claims: dict[str, float] = field(default_factory=dict)
    doubted: dict[str, float] = field(default_factory=dict)


# A task's place in the scheduler's order (lower goes first).
Rank = tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Waiter:
    """A task waiting in :meth:`Gates.acquire`."""

    provider: str
    not_before: float
    rank: Rank | None
