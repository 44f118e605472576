"""Rate limits read from an agent's output while it runs, not only when it exits.

Claude Code's ``stream-json`` reports every API response (``assistant`` events), every retried
request (``system``/``api_retry`` with ``error_status`` 429 or 529), a rejected usage window
(``rate_limit_event`` with status ``rejected`` and ``resetsAt``, unless ``isUsingOverage``
says the request is served on overage) and its final ``result``.
Codex's ``--json`` reports each turn (``turn.completed``) and its errors. Those become
:class:`~worktree_swarm.run.gate_model.Limit` reports for the provider's gate the moment they
are written, so a throttle slows the provider before the attempt that met it has ended and its
slot is refilled. Agents without structured output are classified at exit only: their free
text (an echoed prompt, say) is not trusted line by line. The retry delay an agent announces
(Claude Code's ``api_retry``, Gemini CLI's "Retrying after N ms") extends its idle timeout.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worktree_swarm.agents import classify_rate_limit
from worktree_swarm.agents.base import as_float, as_int, epoch_seconds
from worktree_swarm.agents.claude import rejected_limit
from worktree_swarm.core.text import one_line
from worktree_swarm.infra import fs
from worktree_swarm.run.gate_model import Limit, Signal, limit_kind

READ_LIMIT = 2**20  # per poll; the rest is read on the next one
LINE_LIMIT = 8 * 2**20  # a line longer than this is no report: skipped, not held
_THROTTLE_STATUSES = frozenset({429, 529})
STREAMING_PROFILES = frozenset({"claude", "codex"})
_GEMINI_RETRY = re.compile(
    rb"^Suggested retry after [\d.]+s\.\. Retrying after (\d{1,9})ms\.\.\.\s*$"
)
# The longest announced wait idle_timeout makes room for: what an agent writes is not to be
# trusted for longer (a delay of 1e300 ms would have it never idle); swarm's own backoff stops
# at the same.
MAX_ANNOUNCED_WAIT = 15 * 60.0


@dataclass(slots=True)
class LogTail:
    """Follows one attempt's log and turns new complete lines into gate reports."""

    path: Path
    profile: str
    offset: int = 0
    limited: bool = False  # a throttle or window was reported live
    succeeded: bool = False  # at least one success was reported live
    # The delay (s) the agent said it waits before it asks again, while that is the last
    # thing it wrote: silent for that long, it is waiting, not hung.
    waiting: float = 0.0
    _partial: bytes = b""
    _skipping: bool = False  # until the next line break (see LINE_LIMIT)
    _messages: set[str] = field(default_factory=set)

    def poll(self, *, now: float) -> list[Limit]:
        """The reports in what was written since the last poll."""
        if self.profile not in STREAMING_PROFILES | {"gemini"}:
            return []
        try:
            with fs.open_file(self.path) as fh:
                fh.seek(self.offset)
                data = fh.read(READ_LIMIT)
        except OSError:
            return []
        self.offset += len(data)
        found = []
        for raw in self._lines(data):
            obj = _event(raw)
            if raw.strip():
                self.waiting = self._announced_wait(raw, obj)
            if obj is None or self.profile not in STREAMING_PROFILES:
                continue
            limit = self._classify(obj, now=now)
            if limit is None:
                continue
            if limit.signal is Signal.OK:
                self.succeeded = True
            else:
                self.limited = True
            found.append(limit)
        if self._partial.strip():
            self.waiting = 0.0  # it wrote more since
        return found

    def _lines(self, data: bytes) -> list[bytes]:
        """The lines *data* completes; the last one, unfinished, is held for the next poll.

        One longer than :data:`LINE_LIMIT` is no report: skipped to its end, not held (it
        grew with every poll, copied each time).
        """
        if self._skipping:
            newline = data.find(b"\n")
            data, self._skipping = (b"", True) if newline < 0 else (data[newline + 1 :], False)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > LINE_LIMIT:
            self._partial, self._skipping = b"", True
        return lines

    def _announced_wait(self, raw: bytes, obj: dict[str, Any] | None) -> float:
        """The delay (s) the line *raw* (*obj* parsed) says the agent waits before it asks again.

        Claude Code's ``api_retry`` event: ``retry_delay_ms``, a server's ``retry-after``
        honoured (48 s after a 429 asking 40 s). Gemini CLI, retrying on its own (the user's
        ``maxAttempts``), on stderr: "Suggested retry after 20s.. Retrying after 22638ms...".
        At most :data:`MAX_ANNOUNCED_WAIT`.
        """
        if self.profile == "gemini":
            found = _GEMINI_RETRY.search(raw) if obj is None else None
            return 0.0 if found is None else min(float(found[1]) / 1000, MAX_ANNOUNCED_WAIT)
        if self.profile != "claude" or obj is None:
            return 0.0
        if obj.get("type") != "system" or obj.get("subtype") != "api_retry":
            return 0.0
        delay = as_float(obj.get("retry_delay_ms"))
        return 0.0 if delay is None else min(max(0.0, delay / 1000), MAX_ANNOUNCED_WAIT)

    def _classify(self, obj: dict[str, Any], *, now: float) -> Limit | None:
        if self.profile == "claude":
            return self._claude(obj, now=now)
        return _codex(obj, now=now)

    def _claude(self, obj: dict[str, Any], *, now: float) -> Limit | None:
        kind = obj.get("type")
        if kind == "assistant":
            message = obj.get("message")
            if _made_up(obj, message):  # the CLI's own message for a refused request
                return None
            # One API response may arrive as several events (one per content block).
            ident = str(message.get("id", "")) if isinstance(message, dict) else ""
            if ident in self._messages:
                return None
            self._messages.add(ident)
            return Limit(signal=Signal.OK)
        if kind == "system" and obj.get("subtype") == "api_retry":
            status = as_int(obj.get("error_status"))
            if status not in _THROTTLE_STATUSES:
                return None
            # retry_delay_ms is the CLI's own backoff for that one request, which it is already
            # waiting out: not a hold for the provider's other launches.
            return Limit(signal=Signal.THROTTLE, detail=f"HTTP {status}")
        if kind == "rate_limit_event":
            info = rejected_limit(obj)
            if info is None:
                return None
            reset = epoch_seconds(info.get("resetsAt"))
            return Limit(
                signal=limit_kind(retry_at=reset, now=now), retry_at=reset, detail="usage limit"
            )
        if kind == "result" and obj.get("is_error") is True:
            text = str(obj.get("result") or "")
            status = as_int(obj.get("api_error_status"))
            limited, reset = classify_rate_limit(text, now=now)
            if not limited and status not in _THROTTLE_STATUSES:
                return None
            detail = (
                f"HTTP {status}"
                if status in _THROTTLE_STATUSES
                else one_line(text, limit=80, controls=True)
            )
            return Limit(signal=limit_kind(retry_at=reset, now=now), retry_at=reset, detail=detail)
        return None


def _event(raw: bytes) -> dict[str, Any] | None:
    """The JSON object a log line holds, or None."""
    stripped = raw.strip()
    if not stripped.startswith(b"{"):
        return None
    try:
        obj = json.loads(stripped.decode(errors="replace"))
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _made_up(obj: dict[str, Any], message: object) -> bool:
    """Whether an `assistant` event is Claude Code's stand-in for an API error, not a reply.

    It reports the error (a 429's "You've hit your limit") as a message of model
    ``<synthetic>``, marked ``is_api_error_message`` and ``error``: counted as a success it
    would cancel the throttle or the window it stands for.
    """
    model = message.get("model") if isinstance(message, dict) else None
    return bool(obj.get("is_api_error_message") or obj.get("error") or model == "<synthetic>")


def _codex(obj: dict[str, Any], *, now: float) -> Limit | None:
    kind = obj.get("type")
    if kind == "turn.completed":
        return Limit(signal=Signal.OK)
    if kind not in {"error", "turn.failed"}:
        return None
    error = obj.get("error")
    message = error.get("message") if isinstance(error, dict) else obj.get("message")
    text = str(message or "")
    limited, reset = classify_rate_limit(text, now=now)
    if not limited:
        return None
    return Limit(
        signal=limit_kind(retry_at=reset, now=now),
        retry_at=reset,
        detail=one_line(text, limit=80, controls=True),
    )
