"""Gemini CLI (``gemini --output-format json``): one JSON object, ``--resume <session id>``.

``--output-format json`` prints ``{session_id, response, stats, error{type, message, code}}``
(packages/core/src/output/types.ts); ``stats.models.<model>.tokens`` holds ``input`` (not
cached), ``prompt``, ``candidates`` and ``cached``. ``stream-json`` ends with a ``result`` event
``{status, error, stats{input_tokens, output_tokens, cached}}`` after an ``init{session_id}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from worktree_swarm.agents.base import (
    REASON_MAX,
    AgentOutcome,
    AgentResult,
    as_int,
    classify_rate_limit,
    interpret_by_exit,
    is_session_id,
    iter_dicts,
    json_objects,
    render_argv,
    require_session_id,
    resume_text,
)
from worktree_swarm.core.text import one_line

HTTP_TOO_MANY_REQUESTS = 429


class GeminiAdapter:
    """Google Gemini CLI in headless mode."""

    name = "gemini"
    supports_resume = True

    def argv(
        self,
        template: Sequence[str],
        *,
        values: Mapping[str, str],
        session_id: str | None,
        resume_prompt: str | None,
    ) -> list[str]:
        """The template for a first attempt; for a resume, ``--resume <session_id>`` added.

        On resume the resume prompt is the ``--prompt``; sessions are per project directory,
        so run it in the same worktree.
        """
        if session_id is None:
            return render_argv(template, values)
        require_session_id(session_id)
        argv = render_argv(template, {**values, "prompt": resume_text(resume_prompt)})
        return [*argv, "--resume", session_id]

    def env(
        self,
        *,
        base: Mapping[str, str],
        task_id: str,  # noqa: ARG002 - nothing per task
        config_dir: Path,  # noqa: ARG002 - ~/.gemini holds the login: keep it shared
    ) -> dict[str, str]:
        """The base environment, unchanged."""
        return dict(base)

    def interpret(self, *, exit_code: int | None, log_text: str, now: float) -> AgentResult:
        """The JSON output (or the stream's ``result`` event) decides; else the exit code."""
        objects = json_objects(log_text)
        final = _final(objects)
        session_id = _session_id(objects)
        if final is None:
            fallback = interpret_by_exit(
                exit_code=exit_code, log_text=log_text, now=now, label="gemini", skip_json=True
            )
            return AgentResult(
                outcome=fallback.outcome,
                reason=fallback.reason,
                retry_at=fallback.retry_at,
                session_id=session_id,
            )
        accounting = {"session_id": session_id, **_tokens(final.get("stats"))}
        error = final.get("error")
        if isinstance(error, dict) or final.get("status") == "error":
            error = error if isinstance(error, dict) else {}
            message = str(error.get("message") or "no detail").strip()
            label = f"{error.get('type') or 'error'}: {message}"
            limited, retry_at = classify_rate_limit(message, now=now)
            if limited or as_int(error.get("code")) == HTTP_TOO_MANY_REQUESTS:
                return AgentResult(
                    outcome=AgentOutcome.RATE_LIMITED,
                    reason=one_line(f"gemini rate limited: {label}", limit=REASON_MAX),
                    retry_at=retry_at,
                    **accounting,
                )
            return AgentResult(
                outcome=AgentOutcome.FAILED,
                reason=one_line(f"gemini {label}", limit=REASON_MAX),
                **accounting,
            )
        if exit_code in (0, None):
            return AgentResult(outcome=AgentOutcome.SUCCESS, **accounting)
        fallback = interpret_by_exit(
            exit_code=exit_code, log_text=log_text, now=now, label="gemini", skip_json=True
        )
        return AgentResult(
            outcome=fallback.outcome,
            reason=fallback.reason,
            retry_at=fallback.retry_at,
            **accounting,
        )


def _final(objects: list[dict[str, Any]]) -> dict[str, Any] | None:
    for obj in reversed(objects):
        if obj.get("type") == "result":
            return dict(obj)
        if "type" not in obj and ({"response", "error", "stats"} & obj.keys()):
            return dict(obj)
    return None


def _session_id(objects: list[dict[str, Any]]) -> str | None:
    for obj in reversed(objects):
        if is_session_id(obj.get("session_id")):
            return str(obj["session_id"])
    return None


def _tokens(stats: object) -> dict[str, Any]:
    if not isinstance(stats, dict):
        return {}
    if "input_tokens" in stats:  # stream-json result event
        cached = as_int(stats.get("cached"))
        total_in = as_int(stats.get("input_tokens"))
        uncached = as_int(stats.get("input"))
        if uncached is None and total_in is not None:
            uncached = max(total_in - (cached or 0), 0)
        return {
            "tokens_in": uncached,
            "tokens_out": as_int(stats.get("output_tokens")),
            "cache_read_tokens": cached,
        }
    tokens = [
        m["tokens"] for m in iter_dicts(stats.get("models")) if isinstance(m.get("tokens"), dict)
    ]
    if not tokens:
        return {}

    def total(key: str) -> int:
        return sum(as_int(t.get(key)) or 0 for t in tokens)

    uncached = (
        total("input") if any("input" in t for t in tokens) else total("prompt") - total("cached")
    )
    return {
        "tokens_in": max(uncached, 0),
        "tokens_out": total("candidates"),
        "cache_read_tokens": total("cached"),
    }
