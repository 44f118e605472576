"""What `swarm report` shows about a run: its tasks, their attempts and spans, and the totals.

Frozen records, built by :func:`~worktree_swarm.report.report.build_report`; their fields are
the ``--json`` output (documented in docs/report.md), floats rounded to three decimals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from worktree_swarm.run.gate_model import GateView
from worktree_swarm.run.runs import RunState


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptReport:
    """One launch of a task's agent."""

    number: int
    started_at: float
    ended_at: float | None
    duration_s: float
    outcome: str
    exit_code: int | None
    reason: str
    cost_usd: float | None
    tokens_in: int | None
    tokens_out: int | None
    cache_read_tokens: int | None
    agent: str = ""  # the profile that ran it (fallback and budget agents differ)


@dataclass(frozen=True, slots=True, kw_only=True)
class Span:
    """A stretch of a task's time that is not agent work: ``checks`` or ``rate_limit``."""

    kind: str
    start: float
    end: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskReport:
    """One task: outcome, time, money, diff and the texts the HTML report shows."""

    task_id: str
    title: str
    state: str
    reason: str
    depends_on: tuple[str, ...]
    branch: str
    attempts: tuple[AttemptReport, ...]
    spans: tuple[Span, ...]
    started_at: float | None
    ended_at: float | None
    wall_s: float | None
    agent_s: float
    checks_s: float
    rate_limit_wait_s: float
    retries: int
    cost_usd: float | None
    tokens_in: int | None
    tokens_out: int | None
    cache_read_tokens: int | None
    files_changed: int | None
    insertions: int | None
    deletions: int | None
    pr_number: int | None
    pr_url: str
    prompt: str
    checks_tail: str
    setup_tail: str
    disk_apparent: int | None = None
    disk_actual: int | None = None
    worktree_present: bool = False
    merge_result: str | None = None
    merge_target: str | None = None
    pr_state: str | None = None
    # A commit its agent made itself holding a secret of the run's environment, still on
    # its branch (`swarm pr` and `swarm merge` refuse it): its file and the variable.
    secret_commit: str = ""

    @property
    def told(self) -> str:
        """Its reason, and a secret its agent committed that its branch holds."""
        secret = (
            f"{self.secret_commit}, committed by its agent itself" if self.secret_commit else ""
        )
        return "; ".join(part for part in (self.reason, secret) if part)


@dataclass(frozen=True, slots=True, kw_only=True)
class Totals:
    """Run-wide numbers; None means "not reported" (shown as ``-`` or ``n/a``)."""

    tasks: int
    done: int
    states: dict[str, int]
    makespan_s: float
    agent_time_s: float
    achieved_speedup: float | None
    ideal_makespan_s: float
    ideal_speedup: float | None
    rate_limit_wait_s: float
    retries: int
    resumes: int
    total_cost_usd: float | None
    cost_per_done_usd: float | None
    tokens_in: int | None
    tokens_out: int | None
    cache_read_tokens: int | None
    token_overhead_tokens: int | None
    token_overhead_pct: float | None
    disk_apparent: int | None = None
    disk_actual: int | None = None
    worktrees_removed: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class RunReport:
    """Everything `swarm report` shows about one run."""

    run_id: str
    status: RunState
    live: bool
    base_commit: str
    jobs: int
    created_at: float
    ended_at: float | None
    generated_at: float
    end: float
    tasks: tuple[TaskReport, ...]
    totals: Totals
    outside_writes: tuple[dict[str, object], ...] = ()  # guard events, oldest first
    guard_errors: tuple[dict[str, object], ...] = ()  # failed scans, each reason once, oldest first
    remote_refs_put_back: tuple[str, ...] = ()  # remote-tracking refs agents moved (origin/main)
    max_disk: int | None = None
    providers: tuple[GateView, ...] = ()  # each provider's gate as last reported

    def to_json(self) -> dict[str, object]:
        """Plain dict for ``--json`` (field names documented in docs/report.md)."""
        return _rounded(asdict(self))  # type: ignore[return-value]


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value
