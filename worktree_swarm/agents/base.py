"""What every adapter shares: outcomes, argv rendering, log parsing, rate-limit classification.

An adapter turns an argv template into the command of a first attempt or of a resume, adds
what the CLI needs to its environment, and reads the attempt's log (stdout and stderr together)
into an :class:`AgentResult`. Nothing here starts processes or sleeps.
"""

from __future__ import annotations

import enum
import json
import math
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from worktree_swarm.core import units
from worktree_swarm.core.text import one_line
from worktree_swarm.infra.logtail import last_lines
from worktree_swarm.infra.redact import redact

PLACEHOLDERS = ("prompt", "prompt_file", "task_id", "worktree", "branch")
DEFAULT_RESUME_PROMPT = "Continue the task where you left off, then finish it."
# How much of the end of a log message heuristics look at: a prompt echoed at the start of a
# log must not make a failure look like a rate limit.
TAIL_LINES = 40
REASON_MAX = 240

# Longer prompts reach the agent as a file named in its argv (see prompt_argument).
PROMPT_ARG_LIMIT = 64 * 2**10
LONG_PROMPT = (
    "Your task is too long for a command line; it is in the file {path}. Read that whole file "
    "first and do what it says."
)


def quote(text: str, *, limit: int = REASON_MAX) -> str:
    """An agent's own words, fit for a reason: redacted, one line, no control characters.

    Redacted before it is cut, so that a cut cannot leave part of a secret; escapes and other
    control characters become spaces, so none reaches a terminal.
    """
    return one_line(redact(text), limit=limit, controls=True)


_PLACEHOLDER_RE = re.compile("\\{(" + "|".join(PLACEHOLDERS) + ")\\}")
_SESSION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")


class AgentOutcome(enum.StrEnum):
    """How one attempt of an agent ended, as far as its own output tells."""

    SUCCESS = "success"
    FAILED = "failed"
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentResult:
    """The interpreted end of one attempt: outcome, resume handle and accounting."""

    outcome: AgentOutcome
    reason: str = ""
    session_id: str | None = None
    cost_usd: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    num_turns: int | None = None
    retry_at: float | None = None
    # True when cost_usd is the session's running total (Claude Code >= 2.1.3xx after
    # --resume) rather than this attempt's own cost: the caller subtracts earlier attempts.
    cost_is_session_total: bool = False


class Adapter(Protocol):
    """A built-in agent profile: argv and env for an attempt, and the meaning of its log."""

    @property
    def name(self) -> str:
        """The profile name (``claude``, ``codex``, ...)."""
        ...

    @property
    def supports_resume(self) -> bool:
        """Whether :meth:`argv` can continue a recorded session."""
        ...

    @property
    def droppings(self) -> tuple[str, ...]:
        """Glob patterns (from the worktree root) of the CLI's own files, never checkpointed."""
        ...

    def argv(
        self,
        template: Sequence[str],
        *,
        values: Mapping[str, str],
        session_id: str | None,
        resume_prompt: str | None,
    ) -> list[str]:
        """The command of a first attempt (no *session_id*) or of a resume."""
        ...

    def env(self, *, base: Mapping[str, str], task_id: str, config_dir: Path) -> dict[str, str]:
        """The environment of an attempt; *config_dir* is private to the task and stable."""
        ...

    def interpret(self, *, exit_code: int | None, log_text: str, now: float) -> AgentResult:
        """Classify the attempt from its exit code (None: unknown) and its whole log."""
        ...


def render_argv(template: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """Substitute ``{name}`` placeholders inside each argument; nothing else is interpreted.

    One pass per argument, so a placeholder spelled inside task text is never expanded. An
    argument that is ``{prompt}`` alone is the CLI's positional prompt: one that starts with
    ``-`` (a Markdown list) gets a leading space, or the CLI would parse it as an option. Inside
    a longer argument (``--task={prompt}``) the prompt is left byte for byte.
    """
    return [
        positional(values.get("prompt", ""))
        if arg == "{prompt}"
        else _PLACEHOLDER_RE.sub(lambda m: values.get(m.group(1), ""), arg)
        for arg in template
    ]


def is_session_id(text: object) -> bool:
    """Whether *text* is safe to pass back to a CLI as a session id and to store.

    Never an option, and never a secret (an agent can print a key as its session id).
    """
    return (
        isinstance(text, str)
        and _SESSION_ID_RE.fullmatch(text) is not None
        and redact(text) == text
    )


def require_session_id(session_id: str) -> str:
    """Return *session_id*, or raise ValueError if it could be mistaken for an option."""
    if not is_session_id(session_id):
        msg = f"refusing session id {session_id[:40]!r}: not an id a CLI can take as argument"
        raise ValueError(msg)
    return session_id


def positional(text: str) -> str:
    """*text* as a positional argument: a leading ``-`` would be parsed as an option."""
    return " " + text if text.startswith("-") else text


def prompt_argument(text: str, prompt_file: Path) -> str:
    """What ``{prompt}`` stands for: *text*, or a pointer to *prompt_file* when it is long.

    Linux caps one argument at 128 KiB and the whole command line near 2 MiB; a longer
    prompt would make the agent fail to start. The file holds the same text.
    """
    if len(text.encode("utf-8")) <= PROMPT_ARG_LIMIT:
        return text
    return LONG_PROMPT.format(path=prompt_file)


def resume_text(resume_prompt: str | None) -> str:
    """The prompt of a resume: the runner's, or a plain "continue"."""
    return resume_prompt or DEFAULT_RESUME_PROMPT


def argv_resumed_by_flag(
    template: Sequence[str],
    values: Mapping[str, str],
    session_id: str | None,
    resume_prompt: str | None,
) -> list[str]:
    """*template* rendered; for a resume, with the resume prompt and ``--resume <session_id>``."""
    if session_id is None:
        return render_argv(template, values)
    require_session_id(session_id)
    argv = render_argv(template, {**values, "prompt": resume_text(resume_prompt)})
    return [*argv, "--resume", session_id]


def json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object in *text* that starts a line: JSONL events or one pretty-printed object.

    Lines that are not JSON (stderr, progress) are skipped, as is a truncated last object.
    """
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    resume_at = 0
    for match in re.finditer(r"^[ \t]*\{", text, flags=re.MULTILINE):
        start = match.end() - 1
        if start < resume_at:
            continue
        try:
            obj, end = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(obj, dict):
            found.append(obj)
            resume_at = end
    return found


def as_int(value: object) -> int | None:
    """An integer count from JSON, or None (booleans are not counts, nor NaN or Infinity).

    Nor one past what the store keeps (SQLite's 64 bits): recording it failed the attempt
    before its checkpoint.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or as_float(value) is None:
        return None
    number = int(value)
    return number if abs(number) <= _INT64 else None


_INT64 = 2**63 - 1


# What one attempt can have used: an agent's log states its usage, and a count or cost past
# these (an agent's 2**63 - 1 or 1e308, which the store cannot keep or sum) is no usage.
MAX_TOKENS = 10**15
MAX_COST_USD = 10.0**9


def accountable(result: AgentResult) -> AgentResult:
    """*result* with each count and cost it states kept only if a real attempt could use it.

    Negative costs would lower what a run has spent (``max_cost_usd``), a count past the
    store's 64 bits failed the attempt's record, and an infinite sum broke ``--json``.
    """

    def count(n: int | None) -> int | None:
        return n if n is not None and 0 <= n <= MAX_TOKENS else None

    cost = result.cost_usd
    return replace(
        result,
        cost_usd=cost if cost is not None and 0.0 <= cost <= MAX_COST_USD else None,
        tokens_in=count(result.tokens_in),
        tokens_out=count(result.tokens_out),
        cache_read_tokens=count(result.cache_read_tokens),
        cache_write_tokens=count(result.cache_write_tokens),
        num_turns=count(result.num_turns),
    )


def as_float(value: object) -> float | None:
    """A finite number from JSON, or None (JSON as an agent prints it holds 1e999 and NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = units.as_float(value)  # None: an integer past a float's range
    return number if number is not None and math.isfinite(number) else None


def epoch_seconds(value: object) -> float | None:
    """A reset time given as epoch seconds (or milliseconds), or None.

    None too for one past the year 9999: no clock shows it (`time.localtime` fails on it).
    """
    number = as_float(value)
    if number is None or number <= 0:
        return None
    seconds = number / 1000 if number > 1e12 else number  # noqa: PLR2004 - ms vs s
    return seconds if seconds < LAST_RESET else None


# 9999-12-31: a reset an agent states past this is no time (a garbage or huge number).
LAST_RESET = 253402214400.0


def interpret_by_exit(
    *,
    exit_code: int | None,
    log_text: str,
    now: float,
    label: str = "agent",
    skip_json: bool = False,
) -> AgentResult:
    """Exit code first, then known rate-limit messages in the log's last lines.

    With *skip_json*, JSON event lines are neither read for a limit nor quoted: they carry
    the model's text and its tools' output (a file it read, a line it was told to print), so
    only the CLI's own plain lines count.
    """
    if exit_code == 0:
        return AgentResult(outcome=AgentOutcome.SUCCESS)
    lines = last_lines(log_text, TAIL_LINES)
    quotable = [line for line in lines if not (skip_json and line.startswith("{"))]
    limited = rate_limited_result(quotable, now=now, label=label)
    if limited is not None:
        return limited
    last = quote(quotable[-1]) if quotable else ""
    return AgentResult(
        outcome=AgentOutcome.FAILED,
        reason=exit_phrase(exit_code, label) + (f": {last}" if last else ""),
    )


def rate_limited_result(lines: Sequence[str], *, now: float, label: str) -> AgentResult | None:
    """A RATE_LIMITED result naming the last rate-limit line among *lines*, or None."""
    for line in reversed(lines):
        limited, retry_at = classify_rate_limit(line, now=now)
        if limited:
            return AgentResult(
                outcome=AgentOutcome.RATE_LIMITED,
                reason=f"{label} rate limited: {quote(line, limit=160)}",
                retry_at=retry_at,
            )
    return None


# What the CLIs say (in their own messages, not an agent's output) when the provider's servers
# failed past their own retries, or could not be reached: transient, waited out and resumed as
# a rate limit is (a retry each), rather than failing the task at the first one.
_UNAVAILABLE_PATTERNS = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        r"\bAPI Error: 50[0-4]\b",  # Claude Code's result text
        r"\bexperiencing high demand\b",  # Codex's HTTP 500, Gemini's 503
        r"exceeded retry limit, last status: 5\d\d",  # Codex after its own retries
        r"\bunexpected status 50[0-4]\b",  # Codex
        r"\bstream disconnected before completion\b",  # Codex: a stream cut off
        # No connection: reset, refused, no such host, timed out (Node's error codes, which
        # Claude Code names: "API Error: Connection dropped (ECONNRESET)").
        (
            r"\b(?:ECONNRESET|ECONNREFUSED|ECONNABORTED|ENOTFOUND|EAI_AGAIN|ETIMEDOUT|EPIPE"
            r"|EHOSTUNREACH|ENETUNREACH)\b"
        ),
        r"\bAPI Error: JSON Parse error\b",  # Claude Code: a reply cut off or garbled
        r"^Request timed out\b",  # Claude Code: no answer within API_TIMEOUT_MS
        r"\bfetch failed\b",  # Gemini CLI (Node's fetch): no connection
    )
)
# HTTP statuses of a provider's servers failing for now (529, overloaded, is a rate limit).
SERVER_ERROR_STATUSES = frozenset({500, 502, 503, 504})


def unavailable(text: str) -> bool:
    """Whether *text* says the provider's API failed on its side (a server error, an outage)."""
    return any(p.search(text) for p in _UNAVAILABLE_PATTERNS)


def exit_phrase(exit_code: int | None, label: str) -> str:
    """How the process ended, for a reason line."""
    if exit_code is None:
        # Its shim (or, without one, its manager) was killed before it wrote the status down,
        # or the machine went down with them.
        return f"{label} ended without an exit status (none was recorded)"
    if exit_code < 0:
        return f"{label} killed by signal {-exit_code}"
    return f"{label} exited {exit_code}"


# -- rate limits ------------------------------------------------------------------------------

_LIMIT_PATTERNS = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        r"usage limit reached",  # Claude Code: "Claude AI usage limit reached|<epoch>"
        r"usage_limit_reached",  # Codex / OpenAI error type
        # Claude Code ("your limit", "your 5-hour limit", "weekly", "Opus", "session"), Codex
        r"\b(?:you['\u2019]ve|you have) hit your (?:[\w-]+ ){0,2}limit",
        r"\brate_limit_error\b",  # Anthropic API error type (HTTP 429)
        r"\boverloaded_error\b",  # Anthropic API error type (HTTP 529)
        r"\btoo many requests\b",  # HTTP 429 reason phrase
        r"\bresource_exhausted\b",  # Gemini API (HTTP 429)
        r"\bquota exceeded\b",
        r"\bexceeded your current quota\b",  # OpenAI and Gemini API (HTTP 429)
        r"\bexhausted your (?:daily quota|capacity)\b",  # Gemini CLI's terminal quota errors
        r"\brate limit (?:exceeded|reached)\b",
        r"\bRateLimitError\b",  # litellm's exception (aider), whatever the provider says
        r"exceeded retry limit, last status: 429",  # Codex after its own retries
    )
)
# An epoch reset inside the message: Claude Code's `usage limit reached|<epoch>`, or the
# `resets_at` / `resetsAt` field of an API error body quoted in it.
_EPOCH_RE = re.compile(
    r"usage limit reached\|(\d{9,13})|\"resets_?at\"\s*:\s*(\d{9,13})", re.IGNORECASE
)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
# Reset times as the CLIs print them. Claude Code: `resets 4pm`, `resets Apr 23 at 4pm
# (America/Recife)`, `resets Feb 16, 11am (Europe/Berlin)`, `Limits will reset at 9:30 AM`.
# Codex: `try again at 3:04 PM`, `try again at Sep 12th, 2025 3:04 PM`.
_RESET_RE = re.compile(
    r"(?:\bresets?(?:\s+at)?|\btry again at)\s+"
    r"(?:(?P<mon>jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+"
    r"(?P<day>\d{1,2})(?:st|nd|rd|th)?(?:,\s*(?P<year>\d{4}))?,?\s+(?:at\s+)?)?"
    r"(?P<hour>\d{1,2})(?::(?P<minute>\d{2}))?\s*(?P<ampm>[ap])\.?m\.?"
    r"(?:\s*\((?P<tz>[A-Za-z][A-Za-z0-9_+\-/]*)\))?",
    re.IGNORECASE,
)


def classify_rate_limit(text: str, *, now: float) -> tuple[bool, float | None]:
    """Whether *text* reports a rate/usage limit, and when it resets (epoch seconds) if it says.

    A reset given as a wall-clock time means its next occurrence after *now*, in the time zone
    the message names, else in local time; a time (to the minute) in the current minute or
    the one before means the end of that minute.
    """
    if not any(p.search(text) for p in _LIMIT_PATTERNS):
        return False, None
    epochs = [a or b for a, b in _EPOCH_RE.findall(text)]
    if epochs:
        return True, epoch_seconds(int(epochs[-1]))
    for match in reversed(list(_RESET_RE.finditer(text))):
        when = _resolve_reset(match, now=now)
        if when is not None:
            return True, when
    return True, None


def _resolve_reset(match: re.Match[str], *, now: float) -> float | None:
    hour = int(match["hour"])
    minute = int(match["minute"] or 0)
    if not 1 <= hour <= 12 or minute > 59:  # noqa: PLR2004 - a 12-hour clock
        return None
    hour = hour % 12 + (12 if match["ampm"].lower() == "p" else 0)
    zone = _zone(match["tz"])
    # Naive datetimes are local time: .timestamp() then applies the right DST offset.
    current = datetime.fromtimestamp(now, zone) if zone else datetime.fromtimestamp(now)  # noqa: DTZ006
    try:
        if match["mon"]:
            year = int(match["year"]) if match["year"] else current.year
            month = _MONTHS.index(match["mon"][:3].lower()) + 1
            reset = current.replace(
                year=year,
                month=month,
                day=int(match["day"]),
                hour=hour,
                minute=minute,
                second=0,
                microsecond=0,
            )
            if not match["year"] and reset < current - timedelta(days=1):
                reset = reset.replace(year=year + 1)
        else:
            reset = current.replace(hour=hour, minute=minute, second=0, microsecond=0)
            # This minute or the one before is now (or in seconds), not the same time tomorrow
            # (nor, just after midnight, tonight's).
            if current - reset >= timedelta(minutes=2):
                reset += timedelta(days=1)
            elif reset - current > timedelta(days=1, minutes=-2):
                reset -= timedelta(days=1)
        # Printed to the minute, cut down to it (4:03 PM for 16:03:50): the end of that
        # minute, or a resume at 16:03 is refused again and spends a retry.
        ends = (reset + timedelta(minutes=1)).timestamp()
    # Feb 30 and the like; a year outside what a date holds ("Dec 31, 9999 11:59pm" in a zone
    # east of UTC, "Jan 1, 0001"): no reset, as a time no clock shows.
    except (ValueError, OverflowError):
        return None
    return ends if ends < LAST_RESET else None


def _zone(name: str | None) -> tzinfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def backoff_delay(
    attempt: int, *, base: float = 30, cap: float = 900, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry number *attempt* (1, 2, ...): exponential, full jitter.

    Uniform in ``[0, min(cap, base * 2 ** (attempt - 1))]`` so that agents limited together
    do not come back together.
    """
    if attempt < 1:
        msg = f"attempt must be 1 or more, got {attempt}"
        raise ValueError(msg)
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 60))
    return (rng or random.Random()).uniform(0, ceiling)  # noqa: S311 - jitter, not secrets


def iter_dicts(value: object) -> Iterator[dict[str, Any]]:
    """The dict values of a JSON object (e.g. per-model stats), skipping anything else."""
    if isinstance(value, dict):
        for item in value.values():
            if isinstance(item, dict):
                yield item
