"""Codex (``codex exec --json``): JSONL thread events and ``codex exec resume``.

Events (codex-rs/exec/src/exec_events.rs): ``thread.started{thread_id}``,
``turn.completed{usage{input_tokens, cached_input_tokens, cache_write_input_tokens,
output_tokens}}``,
``turn.failed{error{message}}`` and ``error{message}`` (fatal). ``input_tokens`` includes the
cached ones, so the non-cached part is stored as ``tokens_in``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from worktree_swarm.agents.base import (
    AgentOutcome,
    AgentResult,
    as_int,
    classify_rate_limit,
    interpret_by_exit,
    is_session_id,
    json_objects,
    positional,
    quote,
    render_argv,
    require_session_id,
    resume_text,
    unavailable,
)

_TERMINAL = frozenset({"turn.completed", "turn.failed", "error"})


class CodexAdapter:
    """OpenAI Codex CLI in exec mode."""

    name = "codex"
    supports_resume = True
    droppings: tuple[str, ...] = ()  # its state lives in CODEX_HOME

    def argv(
        self,
        template: Sequence[str],
        *,
        values: Mapping[str, str],
        session_id: str | None,
        resume_prompt: str | None,
    ) -> list[str]:
        """The template for a first attempt; for a resume, ``... resume <id> <prompt>``.

        On resume the template's ``{prompt}`` argument is dropped and its options (``--json``
        included) stay before the ``resume`` subcommand, because not all of them are global.
        """
        if session_id is None:
            return render_argv(template, values)
        require_session_id(session_id)
        options = [arg for arg in template if arg != "{prompt}"]
        resume = positional(resume_text(resume_prompt))  # a positional argument of its own
        return [*render_argv(options, values), "resume", session_id, resume]

    def env(
        self,
        *,
        base: Mapping[str, str],
        task_id: str,  # noqa: ARG002 - nothing per task
        config_dir: Path,  # noqa: ARG002 - CODEX_HOME holds the login: keep it shared
    ) -> dict[str, str]:
        """The base environment, unchanged."""
        return dict(base)

    def interpret(self, *, exit_code: int | None, log_text: str, now: float) -> AgentResult:
        """The last turn event decides; failures are rate limited when their message says so."""
        events = [o for o in json_objects(log_text) if isinstance(o.get("type"), str)]
        if not events:
            return interpret_by_exit(
                exit_code=exit_code, log_text=log_text, now=now, label="codex", skip_json=True
            )
        accounting = _accounting(events)
        terminal = [e for e in events if e["type"] in _TERMINAL]
        if terminal and terminal[-1]["type"] == "turn.completed" and exit_code in (0, None):
            return AgentResult(outcome=AgentOutcome.SUCCESS, **accounting)
        messages = [m for e in terminal if (m := _message(e))]
        for message in reversed(messages):
            limited, retry_at = classify_rate_limit(message, now=now)
            if limited:
                return AgentResult(
                    outcome=AgentOutcome.RATE_LIMITED,
                    reason=quote(f"codex rate limited: {message}"),
                    retry_at=retry_at,
                    **accounting,
                )
        if messages and unavailable(messages[-1]):  # the API's servers failing: waited out
            return AgentResult(
                outcome=AgentOutcome.RATE_LIMITED,
                reason=quote(f"codex API unavailable: {messages[-1]}"),
                **accounting,
            )
        if messages:
            return AgentResult(
                outcome=AgentOutcome.FAILED,
                reason=quote(f"codex: {messages[-1]}"),
                **accounting,
            )
        fallback = interpret_by_exit(
            exit_code=exit_code, log_text=log_text, now=now, label="codex", skip_json=True
        )
        if fallback.outcome is AgentOutcome.SUCCESS:
            fallback = AgentResult(
                outcome=AgentOutcome.FAILED, reason="codex exited 0 without completing a turn"
            )
        return AgentResult(
            outcome=fallback.outcome,
            reason=fallback.reason,
            retry_at=fallback.retry_at,
            **accounting,
        )


def _accounting(events: list[dict[str, Any]]) -> dict[str, Any]:
    thread = next(
        (
            str(e["thread_id"])
            for e in events
            if e["type"] == "thread.started" and is_session_id(e.get("thread_id"))
        ),
        None,
    )
    turns = [e for e in events if e["type"] == "turn.completed"]
    total_in = cached = written = total_out = 0
    counted = writes_reported = False
    for turn in turns:
        usage = turn.get("usage")
        if not isinstance(usage, dict):
            continue
        counted = True
        total_in += as_int(usage.get("input_tokens")) or 0
        cached += as_int(usage.get("cached_input_tokens")) or 0
        # Codex 0.171 reports it; older versions leave it out (unknown, not zero).
        writes_reported |= "cache_write_input_tokens" in usage
        written += as_int(usage.get("cache_write_input_tokens")) or 0
        total_out += as_int(usage.get("output_tokens")) or 0
    return {
        "session_id": thread,
        "tokens_in": max(total_in - cached, 0) if counted else None,
        "tokens_out": total_out if counted else None,
        "cache_read_tokens": cached if counted else None,
        "cache_write_tokens": written if writes_reported else None,
        "num_turns": len(turns) if turns else None,
    }


def _message(event: dict[str, Any]) -> str:
    source = event.get("error") if event["type"] == "turn.failed" else event
    if isinstance(source, dict) and isinstance(source.get("message"), str):
        return str(source["message"]).strip()
    return ""
