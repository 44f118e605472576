"""Claude Code (``claude -p``): JSON / stream-json results, ``--resume``, per-task config dir.

The result object (``--output-format json``, or the last line of ``stream-json``) carries
``type: "result"``, ``subtype``, ``is_error``, ``result``, ``session_id``, ``total_cost_usd``,
``usage`` (``input_tokens``, ``output_tokens``, ``cache_read_input_tokens``,
``cache_creation_input_tokens``), ``num_turns``, ``api_error_status`` and ``terminal_reason``;
stream-json adds ``rate_limit_event`` lines whose ``rate_limit_info.status`` is ``allowed``,
``allowed_warning`` or ``rejected`` (with ``resetsAt`` in epoch seconds). See docs/agents.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worktree_swarm.agents import claude_auth
from worktree_swarm.agents.base import (
    SERVER_ERROR_STATUSES,
    AgentOutcome,
    AgentResult,
    argv_resumed_by_flag,
    as_float,
    as_int,
    classify_rate_limit,
    epoch_seconds,
    interpret_by_exit,
    is_session_id,
    json_objects,
    quote,
    unavailable,
)

RATE_LIMIT_STATUSES = frozenset({429, 529})  # 529: Anthropic "overloaded_error"

# Claude Code makes worktrees of its own (its EnterWorktree tool, a subagent started with
# `isolation: "worktree"`) under the *main* checkout's `.claude/worktrees/`, on a new branch: in
# your checkout and your refs, not the task's. A `WorktreeCreate` hook replaces that git work;
# this one refuses, and the model is told to work in the worktree it is in.
REFUSE_WORKTREES = (
    "echo 'worktree-swarm: this task already runs in a git worktree of its own; work in it "
    "(no other worktree or branch)' >&2; exit 2"
)
SETTINGS = {
    "hooks": {"WorktreeCreate": [{"hooks": [{"type": "command", "command": REFUSE_WORKTREES}]}]}
}


class ClaudeAdapter:
    """Claude Code in print mode."""

    name = "claude"
    supports_resume = True
    # Per-project permission grants Claude Code records as you approve tools.
    droppings: tuple[str, ...] = (".claude/settings.local.json",)

    def argv(
        self,
        template: Sequence[str],
        *,
        values: Mapping[str, str],
        session_id: str | None,
        resume_prompt: str | None,
    ) -> list[str]:
        """The template for a first attempt; for a resume, ``--resume <session_id>`` added.

        On resume the resume prompt is the ``-p`` prompt; run it in the same worktree and with
        the same ``CLAUDE_CONFIG_DIR``, where the session is stored.
        """
        return argv_resumed_by_flag(template, values, session_id, resume_prompt)

    def env(
        self,
        *,
        base: Mapping[str, str],
        task_id: str,  # noqa: ARG002 - config_dir is already per task
        config_dir: Path,
    ) -> dict[str, str]:
        """*base* plus ``CLAUDE_CONFIG_DIR=config_dir``.

        Parallel instances corrupt a shared ``~/.claude.json`` (non-atomic writes, see
        docs/agents.md), so each task gets its own. Sessions live there too, so a resume must
        use the same directory. A user signed in with ``claude`` gets that sign-in copied in
        and kept in step across tasks (claude_auth.py); an API key or
        ``CLAUDE_CODE_OAUTH_TOKEN`` in the environment is used as it is. Its settings refuse
        the CLI's own worktrees (:data:`SETTINGS`).
        """
        config_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        claude_auth.write_json(config_dir / "settings.json", SETTINGS)
        claude_auth.prepare(config_dir, base)
        return {**base, "CLAUDE_CONFIG_DIR": str(config_dir)}

    def interpret(self, *, exit_code: int | None, log_text: str, now: float) -> AgentResult:
        """The last result object decides; without one, stream events and messages do."""
        objects = json_objects(log_text)
        session_id = _session_id(objects)
        rejected_at, rejected = _rejected_reset(objects)
        results = [o for o in objects if o.get("type") == "result"]
        if not results:
            # Cut short (a timeout, `swarm stop`, a crash): the tokens its messages reported
            # so far are still what it used; its cost only a result tells.
            used = _streamed_usage(objects)
            if rejected:
                limited = AgentResult(
                    outcome=AgentOutcome.RATE_LIMITED,
                    reason="claude rate limited: usage limit rejected the request",
                    retry_at=rejected_at,
                )
                return _with(limited, session_id=session_id, used=used)
            fallback = interpret_by_exit(
                exit_code=exit_code, log_text=log_text, now=now, label="claude", skip_json=True
            )
            return _with(fallback, session_id=session_id, used=used)
        return _from_result(
            results[-1], exit_code=exit_code, now=now, session_id=session_id, reset=rejected_at
        )


def _from_result(
    result: dict[str, Any],
    *,
    exit_code: int | None,
    now: float,
    session_id: str | None,
    reset: float | None,
) -> AgentResult:
    usage = result.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    if is_session_id(result.get("session_id")):
        session_id = result["session_id"]
    accounting: dict[str, Any] = {
        "session_id": session_id,
        "cost_usd": as_float(result.get("total_cost_usd")),
        "tokens_in": as_int(usage.get("input_tokens")),
        "tokens_out": as_int(usage.get("output_tokens")),
        "cache_read_tokens": as_int(usage.get("cache_read_input_tokens")),
        "cache_write_tokens": as_int(usage.get("cache_creation_input_tokens")),
        "num_turns": as_int(result.get("num_turns")),
        "cost_is_session_total": _cost_is_session_total(result, usage),
    }
    subtype = str(result.get("subtype") or "")
    # `is_error: true` with subtype "success" is how an API error ends a turn: a failure.
    failed = result.get("is_error") is True or subtype != "success"
    if not failed:
        if exit_code in (0, None):
            return AgentResult(outcome=AgentOutcome.SUCCESS, **accounting)
        return AgentResult(
            outcome=AgentOutcome.FAILED,
            reason=f"claude exited {exit_code} after reporting success",
            **accounting,
        )
    detail = _detail(result)
    status = as_int(result.get("api_error_status"))
    limited, retry_at = classify_rate_limit(detail, now=now)
    if status in RATE_LIMIT_STATUSES or limited:
        what = f"HTTP {status}" if status in RATE_LIMIT_STATUSES else "usage limit"
        return AgentResult(
            outcome=AgentOutcome.RATE_LIMITED,
            reason=quote(f"claude rate limited ({what}): {detail}"),
            retry_at=reset or retry_at,
            **accounting,
        )
    if status in SERVER_ERROR_STATUSES or (status is None and _unreachable(result, detail)):
        # The API's servers failing after the CLI's own retries, or out of reach (no
        # connection, a reply cut off): waited out and resumed.
        what = f" (HTTP {status})" if status else ""
        return AgentResult(
            outcome=AgentOutcome.RATE_LIMITED,
            reason=quote(f"claude API unavailable{what}: {detail}"),
            **accounting,
        )
    # An API error ends a turn with subtype "success": named by its status, not by that.
    what = f"API error (HTTP {status})" if status else subtype
    if what in {"", "success"}:
        what = "error"
    return AgentResult(
        outcome=AgentOutcome.FAILED,
        reason=quote(f"claude {what}: {detail}"),
        **accounting,
    )


# `api_error` of a result whose request got no answer: no connection, or none for too long.
_UNREACHABLE = frozenset({"connection_failed", "stream_idle_timeout"})


# How Claude Code's own words for a failed request begin ("API Error: Connection dropped
# (ECONNRESET)", "Request timed out."): a model's reply that names ECONNREFUSED is none.
_OWN_ERROR = ("API Error", "Request timed out")


def _unreachable(result: dict[str, Any], detail: str) -> bool:
    """Whether an API error without a status says the API failed or could not be reached."""
    if result.get("api_error") in _UNREACHABLE:
        return True
    return detail.startswith(_OWN_ERROR) and unavailable(detail)


def _cost_is_session_total(result: dict[str, Any], usage: dict[str, Any]) -> bool:
    """Whether total_cost_usd covers the whole resumed session, not just this run.

    Newer CLIs report `modelUsage` (and the cost) for the session so far while `usage` stays
    per run; when the session's tokens exceed this run's, the cost is a running total.
    """
    model_usage = result.get("modelUsage")
    if not isinstance(model_usage, dict):
        return False
    session = sum(
        (as_int(m.get("inputTokens")) or 0) + (as_int(m.get("outputTokens")) or 0)
        for m in model_usage.values()
        if isinstance(m, dict)
    )
    run = (as_int(usage.get("input_tokens")) or 0) + (as_int(usage.get("output_tokens")) or 0)
    return session > run


def _detail(result: dict[str, Any]) -> str:
    text = result.get("result")
    if isinstance(text, str) and text.strip():
        return text.strip()
    errors = result.get("errors")
    if isinstance(errors, list) and errors:
        return "; ".join(str(e) for e in errors)
    terminal = result.get("terminal_reason")
    return f"terminal_reason {terminal}" if terminal else "no detail"


def _session_id(objects: list[dict[str, Any]]) -> str | None:
    """The session of the run: every stream-json line (from the init event on) names it."""
    for obj in reversed(objects):
        candidate = obj.get("session_id")
        if is_session_id(candidate):
            return str(candidate)
    return None


def rejected_limit(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The ``rate_limit_info`` of a ``rate_limit_event`` that refused the request, else None.

    ``allowed`` events accompany ordinary successful runs and mean nothing here, nor do
    rejected ones whose request is served on overage (``isUsingOverage``).
    """
    info = obj.get("rate_limit_info") if obj.get("type") == "rate_limit_event" else None
    if not isinstance(info, dict) or info.get("status") != "rejected":
        return None
    return None if info.get("isUsingOverage") is True else info


def _rejected_reset(objects: list[dict[str, Any]]) -> tuple[float | None, bool]:
    """(reset time, whether any) of the events that refused the request (:func:`rejected_limit`)."""
    found = False
    reset: float | None = None
    for obj in objects:
        info = rejected_limit(obj)
        if info is not None:
            found = True
            reset = epoch_seconds(info.get("resetsAt")) or reset
    return reset, found


def _with(result: AgentResult, *, session_id: str | None, used: _Streamed) -> AgentResult:
    return AgentResult(
        outcome=result.outcome,
        reason=result.reason,
        session_id=session_id,
        retry_at=result.retry_at,
        tokens_in=used.tokens_in,
        tokens_out=used.tokens_out,
        cache_read_tokens=used.cache_read,
        cache_write_tokens=used.cache_write,
    )


@dataclass(frozen=True, slots=True)
class _Streamed:
    """The tokens an attempt's ``assistant`` events reported (None: no message reported any)."""

    tokens_in: int | None = None
    tokens_out: int | None = None
    cache_read: int | None = None
    cache_write: int | None = None


def _streamed_usage(objects: list[dict[str, Any]]) -> _Streamed:
    """The tokens the ``assistant`` events report, each message counted once.

    A message's events (one per content block) each carry its usage; the last one's counts.
    """
    last: dict[str, dict[str, Any]] = {}
    for o in objects:
        message = o.get("message") if o.get("type") == "assistant" else None
        if not isinstance(message, dict) or not isinstance(message.get("usage"), dict):
            continue
        last[str(message.get("id") or len(last))] = message["usage"]
    if not last:
        return _Streamed()

    def total(key: str) -> int:
        return sum(as_int(usage.get(key)) or 0 for usage in last.values())

    return _Streamed(
        tokens_in=total("input_tokens"),
        tokens_out=total("output_tokens"),
        cache_read=total("cache_read_input_tokens"),
        cache_write=total("cache_creation_input_tokens"),
    )
