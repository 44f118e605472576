"""How an ended attempt is recorded: its outcome and its own usage."""

from __future__ import annotations

import dataclasses

from worktree_swarm.agents import AgentOutcome, AgentResult
from worktree_swarm.agents.base import accountable
from worktree_swarm.core.models import AttemptOutcome
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import AttemptUsage


def attempts_own(
    store: Store, run_id: str, task_id: str, attempt_id: int, result: AgentResult
) -> AgentResult:
    """*result* with the usage its attempt alone had, as the store and the budget count it.

    What no attempt could have is dropped (``accountable``); a cost that is the session's
    running total (Claude Code after ``--resume``) loses what its earlier attempts cost.
    """
    r = accountable(result)
    if r.cost_is_session_total and r.cost_usd is not None and r.session_id:
        earlier = sum(
            a.cost_usd or 0.0
            for a in store.attempts(run_id, task_id)
            if a.session_id == r.session_id and a.id != attempt_id
        )
        r = dataclasses.replace(r, cost_usd=max(0.0, r.cost_usd - earlier))
    return r


def attempt_usage(result: AgentResult, reason: str) -> AttemptUsage:
    """What an attempt that ended with *result* used, as the store keeps it, with *reason*."""
    return AttemptUsage(
        reason=reason,
        session_id=result.session_id,
        cost_usd=result.cost_usd,
        tokens_in=result.tokens_in,
        tokens_out=result.tokens_out,
        cache_read_tokens=result.cache_read_tokens,
    )


def attempt_outcome(result: AgentResult) -> AttemptOutcome:
    """How an attempt whose agent the adapter read as *result* is recorded."""
    if result.outcome is AgentOutcome.RATE_LIMITED:
        return AttemptOutcome.RATE_LIMITED
    if result.outcome is AgentOutcome.SUCCESS:
        return AttemptOutcome.SUCCEEDED
    return AttemptOutcome.FAILED
