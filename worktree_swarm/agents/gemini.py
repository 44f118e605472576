"""Gemini CLI (``gemini --output-format stream-json``): JSONL events, ``--resume <session id>``.

``stream-json`` prints ``init{session_id}``, ``message{role}``, ``tool_use``, ``tool_result``
and a last ``result{status, error{type, message}, stats{input_tokens, input, output_tokens,
cached}}``. ``--output-format json`` prints one ``{session_id, response, stats, error{type,
message, code}}`` (packages/core/src/output/types.ts); its ``stats.models.<model>.tokens`` holds
``input`` (not cached), ``prompt``, ``candidates`` and ``cached``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zoneinfo
from collections.abc import Mapping, Sequence
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any

from worktree_swarm.agents.base import (
    SERVER_ERROR_STATUSES,
    AgentOutcome,
    AgentResult,
    argv_resumed_by_flag,
    as_int,
    classify_rate_limit,
    epoch_seconds,
    interpret_by_exit,
    is_session_id,
    iter_dicts,
    json_objects,
    quote,
    unavailable,
)

HTTP_TOO_MANY_REQUESTS = 429
# The stream's `result` event names no code: the API's error body is quoted in its message
# (`[API Error: {"error":{"code":500,...,"status":"INTERNAL"}}]`), `terminated` when the
# reply's stream was cut off, or what parsing a garbled reply threw (`[API Error: Expected
# property name or '}' in JSON at position 1]`).
_SERVER_FAILED = re.compile(
    r'"code"\s*:\s*50[0-4]\b|"status"\s*:\s*"(?:UNAVAILABLE|INTERNAL|DEADLINE_EXCEEDED)"'
    r"|\bThe model is overloaded\b|^\[API Error: terminated\]$"
    r"|^\[API Error: (?:[^\]]* in JSON at position \d+|Unexpected end of JSON input)"
)


def _server_failed(message: str) -> bool:
    """Whether Gemini CLI's error *message* says the API's servers failed, not the request."""
    return bool(_SERVER_FAILED.search(message)) or unavailable(message)


# Gemini CLI's own retries of a 429 (up to 10 attempts, with backoff) would hide it from swarm's
# gate for minutes: one attempt, unless the user's settings say otherwise (system defaults are
# the lowest settings layer).
SYSTEM_DEFAULTS = {"general": {"maxAttempts": 1}}
# "…\nSuggested retry after 7200s." (the API's RetryInfo, quoted by the CLI) or the API's own
# "Please retry in 37.5s.": a reset relative to the end of the attempt.
_RETRY_AFTER_RE = re.compile(
    r"(?:Suggested retry after|Please retry in)\s+(?P<n>\d+(?:\.\d+)?)(?P<unit>ms|s)\b"
)


class GeminiAdapter:
    """Google Gemini CLI in headless mode."""

    name = "gemini"
    supports_resume = True
    droppings: tuple[str, ...] = ()  # its state lives in ~/.gemini (GEMINI_CLI_HOME)

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
        return argv_resumed_by_flag(template, values, session_id, resume_prompt)

    def env(
        self,
        *,
        base: Mapping[str, str],
        task_id: str,  # noqa: ARG002 - nothing per task
        config_dir: Path,
    ) -> dict[str, str]:
        """*base* plus a trusted workspace and one API attempt per turn; the login stays shared.

        A worktree is a folder Gemini CLI has never seen: untrusted, it would turn
        ``--approval-mode yolo`` back into asking. ``GEMINI_CLI_SYSTEM_DEFAULTS_PATH`` points at
        :data:`SYSTEM_DEFAULTS` written to *config_dir* (Gemini CLI skips the file, with a
        warning, when a directory above it is writable by others). Variables the user set win.
        """
        env = dict(base)
        env.setdefault("GEMINI_CLI_TRUST_WORKSPACE", "true")
        if "GEMINI_CLI_SYSTEM_DEFAULTS_PATH" not in env:
            config_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            defaults = config_dir / "gemini-system-defaults.json"
            # Written aside and renamed over: the agent can write its config dir, and a
            # symlink it left there would have this write (outside any sandbox) go through.
            fd, temp = tempfile.mkstemp(prefix=f".{defaults.name}.", dir=config_dir)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(SYSTEM_DEFAULTS, out)
            Path(temp).replace(defaults)
            env["GEMINI_CLI_SYSTEM_DEFAULTS_PATH"] = str(defaults)
        return env

    def interpret(self, *, exit_code: int | None, log_text: str, now: float) -> AgentResult:
        """The JSON output (or the stream's ``result`` event) decides; else the exit code."""
        objects = json_objects(log_text)
        final = _final(objects)
        session_id = _session_id(objects) if _resumable(objects, None) else None
        # Its start-up profiler's notes say nothing of how it ended: never the quoted line.
        log_text = _STARTUP_NOTE_RE.sub("", log_text)
        if final is None:
            return _by_exit(exit_code, log_text, now=now, accounting={"session_id": session_id})
        if not _resumable(objects, final.get("stats")):
            session_id = None
        accounting = {"session_id": session_id, **_tokens(final.get("stats"))}
        error = final.get("error")
        if isinstance(error, dict) or final.get("status") == "error":
            error = error if isinstance(error, dict) else {}
            message = str(error.get("message") or "no detail").strip()
            label = f"{error.get('type') or 'error'}: {message}"
            limited, retry_at = classify_rate_limit(message, now=now)
            retry_at = retry_at or _retry_after(message, now=now) or _daily_reset(message, now=now)
            code = as_int(error.get("code"))
            if limited or code == HTTP_TOO_MANY_REQUESTS:
                return AgentResult(
                    outcome=AgentOutcome.RATE_LIMITED,
                    reason=quote(f"gemini rate limited: {label}"),
                    retry_at=retry_at,
                    **accounting,
                )
            if code in SERVER_ERROR_STATUSES or _server_failed(message):
                # Its servers failing (503 "overloaded", 500, a stream cut): waited out.
                return AgentResult(
                    outcome=AgentOutcome.RATE_LIMITED,
                    reason=quote(f"gemini API unavailable: {label}"),
                    retry_at=retry_at,
                    **accounting,
                )
            return AgentResult(
                outcome=AgentOutcome.FAILED,
                reason=quote(f"gemini {label}"),
                **accounting,
            )
        if exit_code in (0, None):
            return AgentResult(outcome=AgentOutcome.SUCCESS, **accounting)
        return _by_exit(exit_code, log_text, now=now, accounting=accounting)


def _by_exit(
    exit_code: int | None, log_text: str, *, now: float, accounting: dict[str, Any]
) -> AgentResult:
    """The exit code and the log's last lines decide; *accounting* (its session, tokens) kept."""
    fallback = interpret_by_exit(
        exit_code=exit_code, log_text=log_text, now=now, label="gemini", skip_json=True
    )
    return AgentResult(
        outcome=fallback.outcome, reason=fallback.reason, retry_at=fallback.retry_at, **accounting
    )


def _retry_after(message: str, *, now: float) -> float | None:
    match = _RETRY_AFTER_RE.search(message)
    if match is None:
        return None
    seconds = float(match["n"]) / (1000 if match["unit"] == "ms" else 1)
    return epoch_seconds(now + seconds)  # a huge number is no reset time


_STARTUP_NOTE_RE = re.compile(r"^\[STARTUP\] .*\n?", re.MULTILINE)
# A per-day quota (Gemini CLI's "You have exhausted your daily quota on this model", a
# `...PerDay...` quota id) states no retry delay.
_DAILY_RE = re.compile(r"exhausted your daily quota|\bquotaId\W+\w*PerDay", re.IGNORECASE)


def _daily_reset(message: str, *, now: float) -> float | None:
    """When a daily quota *message* names resets: Google's reset at midnight Pacific time.

    A usage window then (waited for up to ``max_wait``, or handed to a fallback agent), not a
    throttle whose retries would all go within minutes.
    """
    if not _DAILY_RE.search(message):
        return None
    try:
        zone = zoneinfo.ZoneInfo("America/Los_Angeles")
    except zoneinfo.ZoneInfoNotFoundError:  # no time zone data here: backed off instead
        return None
    tomorrow = datetime.fromtimestamp(now, zone).date() + timedelta(days=1)
    return datetime.combine(tomorrow, time.min, tzinfo=zone).timestamp()


def _resumable(objects: list[dict[str, Any]], stats: object) -> bool:
    """Whether the session has a model reply: Gemini CLI resumes no other.

    (``--resume`` of a session whose only request failed says "No previous sessions found for
    this project"; the next attempt then starts afresh.) A ``stream-json`` log shows the
    replies; ``json`` output only its per-model API counts.
    """
    if any(o.get("type") == "init" for o in objects):
        return any(
            o.get("type") == "tool_use" or (o.get("type") == "message" and o.get("role") != "user")
            for o in objects
        )
    return _answered(stats)


def _answered(stats: object) -> bool:
    """False when per-model API stats show that every request of the attempt failed."""
    if not isinstance(stats, dict) or not isinstance(stats.get("models"), dict):
        return True
    apis = [m["api"] for m in iter_dicts(stats["models"]) if isinstance(m.get("api"), dict)]
    if not apis:
        # Older versions: no per-model API stats (unknown). No model at all: none was asked.
        return bool(stats["models"])
    return any(
        (as_int(api.get("totalRequests")) or 0) > (as_int(api.get("totalErrors")) or 0)
        for api in apis
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
