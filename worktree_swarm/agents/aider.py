"""aider (``--message-file``): exit code, its usage lines, and its rate-limit messages.

aider retries rate limits itself ("Retrying in N seconds...") and, when it gives up, prints
the error and still exits 0 in ``--message`` mode; so an exit 0 whose log ends on a rate-limit
error with no later retry or usage line is rate limited. After each reply it prints
``Tokens: 12k sent, 1.2k cache write, 3.4k cache hit, 567 received. Cost: $0.01 message,
$0.03 session.`` (aider/coders/base_coder.py); counts are rounded by aider.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from worktree_swarm.agents.base import (
    TAIL_LINES,
    AgentOutcome,
    AgentResult,
    as_float,
    interpret_by_exit,
    quote,
    rate_limited_result,
    render_argv,
    resume_text,
)
from worktree_swarm.infra.logtail import last_lines

_TOKENS_RE = re.compile(r"Tokens:\s*(?P<body>[^\n]+?)\s+received\.", re.IGNORECASE)
_PART_RE = re.compile(r"(?P<n>[\d.]+)(?P<unit>[kKmM]?)\s+(?P<kind>sent|cache write|cache hit)$")
_RECEIVED_RE = re.compile(r"(?P<n>[\d.]+)(?P<unit>[kKmM]?)$")
_COST_RE = re.compile(r"\$(?P<cost>[\d.]+)\s+session", re.IGNORECASE)
_RETRYING_RE = re.compile(r"^Retrying in [\d.]+ seconds", re.IGNORECASE)
# What aider writes in the repository besides the edits (its default file names): the chat and
# input histories, the optional LLM log and the repo-map cache.
DROPPINGS = (
    ".aider.chat.history.md",
    ".aider.input.history",
    ".aider.llm.history",
    ".aider.tags.cache.v*/**",
)


class AiderAdapter:
    """aider in one-shot mode; its git auto-commits are fine (the checkpoint adds the rest)."""

    name = "aider"
    supports_resume = False
    droppings: tuple[str, ...] = DROPPINGS

    def argv(
        self,
        template: Sequence[str],
        *,
        values: Mapping[str, str],
        session_id: str | None,  # noqa: ARG002 - aider keeps no resumable session
        resume_prompt: str | None,
    ) -> list[str]:
        """Render *template*; a resume prompt replaces ``{prompt}``.

        The runner points ``{prompt_file}`` at a file holding the same text.
        """
        if resume_prompt is not None:
            values = {**values, "prompt": resume_text(resume_prompt)}
        return render_argv(template, values)

    def env(
        self,
        *,
        base: Mapping[str, str],
        task_id: str,  # noqa: ARG002 - nothing per task
        config_dir: Path,  # noqa: ARG002 - no shared config file to protect
    ) -> dict[str, str]:
        """*base*, with aider told not to add ``.aider*`` to the repository's ``.gitignore``.

        (Its own files stay out of checkpoints anyway: see :data:`DROPPINGS`.) A value the
        user set wins.
        """
        env = dict(base)
        env.setdefault("AIDER_GITIGNORE", "false")
        return env

    def retrying_rate_limit(self, log_tail: str) -> bool:
        """Whether aider has just started waiting to retry a rate limit on its own.

        aider retries a rate limit for about a minute (more with its API client's retries)
        and has no setting to stop it, so the runner stops it here and its gate decides.
        """
        lines = last_lines(log_tail)
        if not lines or not _RETRYING_RE.match(lines[-1]):
            return False
        earlier = lines[:-1]
        progress = (
            i for i, line in enumerate(earlier) if _RETRYING_RE.match(line) or "Tokens:" in line
        )
        since = max(progress, default=-1)
        return rate_limited_result(earlier[since + 1 :], now=0.0, label="aider") is not None

    def interpret(self, *, exit_code: int | None, log_text: str, now: float) -> AgentResult:
        """Exit code and messages; an exit 0 after aider gave up on a rate limit is limited."""
        usage = _usage(log_text)
        log_text = _unwrapped(log_text)
        lines = last_lines(log_text, TAIL_LINES)
        if exit_code == 0:
            limited = _gave_up(lines, now=now)
            if limited is None:
                return AgentResult(outcome=AgentOutcome.SUCCESS, **usage)
            return AgentResult(
                outcome=limited.outcome, reason=limited.reason, retry_at=limited.retry_at, **usage
            )
        result = interpret_by_exit(exit_code=exit_code, log_text=log_text, now=now, label="aider")
        return AgentResult(
            outcome=result.outcome, reason=result.reason, retry_at=result.retry_at, **usage
        )


# aider wraps its messages at 80 columns, leaving the space it broke at at the end of the line:
# `litellm.AuthenticationError: ... Incorrect \nAPI key provided: ...`.
_WRAPPED_RE = re.compile(r"\S \r?\n$")


def _unwrapped(text: str) -> str:
    """*text* with the lines of aider's API errors it wrapped joined again.

    A reason quotes the whole message. Only theirs: a test's output line that ends in a blank
    is not joined to the error line that may follow it.
    """
    lines: list[str] = []
    for line in text.splitlines(keepends=True):
        if (
            lines
            and lines[-1].startswith("litellm.")
            and _WRAPPED_RE.search(lines[-1])
            and line[:1].strip()
        ):
            lines[-1] = lines[-1].rstrip("\r\n") + line
        else:
            lines.append(line)
    return "".join(lines)


def _gave_up(lines: list[str], *, now: float) -> AgentResult | None:
    """How aider ended, exit 0, on an API error after its last retry notice and usage line.

    A rate limit, or the API's servers failing, is waited out; another error of its API
    client (a key refused, a model unknown) fails the attempt: aider exits 0 either way.
    """
    last_progress = max(
        (i for i, line in enumerate(lines) if _RETRYING_RE.match(line) or "Tokens:" in line),
        default=-1,
    )
    after = lines[last_progress + 1 :]
    limited = rate_limited_result(after, now=now, label="aider")
    if limited is not None:
        return limited
    # Its own line, whatever a test it ran printed (`--auto-test` output may come last).
    error = next((line for line in reversed(after) if _API_ERROR_RE.match(line)), None)
    if error is None:
        return None
    reason = quote(error, limit=160)
    if _SERVER_DOWN_RE.match(error):  # after its own retries: waited out, as a rate limit
        return AgentResult(
            outcome=AgentOutcome.RATE_LIMITED, reason=f"aider API unavailable: {reason}"
        )
    return AgentResult(outcome=AgentOutcome.FAILED, reason=f"aider: {reason}")


# litellm's exception as aider prints it when it gives up: `litellm.AuthenticationError: ...`;
# those of a provider's servers failing (or unreachable) are transient.
_API_ERROR_RE = re.compile(r"^litellm\.(?:\w+Error|Timeout)\b")
_SERVER_DOWN_RE = re.compile(
    r"^litellm\.(?:InternalServerError|ServiceUnavailableError|APIConnectionError|Timeout)\b"
)


def _usage(log_text: str) -> dict[str, Any]:
    sent = received = cache_write = cache_hit = 0
    seen = False
    for match in _TOKENS_RE.finditer(log_text):
        seen = True
        *parts, last = [p.strip() for p in match["body"].split(",")]
        for part in parts:
            m = _PART_RE.match(part)
            if m is None:
                continue
            count = _count(m["n"], m["unit"])
            if m["kind"] == "sent":
                sent += count
            elif m["kind"] == "cache write":
                cache_write += count
            else:
                cache_hit += count
        m_received = _RECEIVED_RE.match(last)
        if m_received:
            received += _count(m_received["n"], m_received["unit"])
    costs = _COST_RE.findall(log_text)
    usage: dict[str, Any] = {"cost_usd": _number(costs[-1]) if costs else None}
    if seen:
        usage |= {
            "tokens_in": sent,
            "tokens_out": received,
            "cache_read_tokens": cache_hit,
            "cache_write_tokens": cache_write,
        }
    return usage


def _count(number: str, unit: str) -> int:
    scale = {"": 1, "k": 1_000, "m": 1_000_000}[unit.lower()]
    value = _number(number)
    return 0 if value is None else round(value * scale)


def _number(text: str) -> float | None:
    """A finite number aider printed (`1.2.3` or 400 digits are none)."""
    try:
        return as_float(float(text))
    except ValueError:
        return None
