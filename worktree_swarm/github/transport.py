"""The HTTP under the GitHub client's requests, as functions of a request, a failure or a reply.

One fetch, its answer read to a bound and a redirect handed back; whether a failed exchange is
worth another try; the wait a rate-limited reply asks for; what an error reply says.
"""

from __future__ import annotations

import http.client
import math
import time
import urllib.error
import urllib.request
from email.message import Message
from typing import Any

from worktree_swarm.github.errors import UnreachableError

WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})
MAX_REPLY = 32 * 2**20  # bytes of one answer: GitHub's pages are far smaller


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Hand a redirect back as the answer: GitHub redirects the API of a renamed repository."""

    def redirect_request(self, *_args: object, **_kwargs: object) -> None:
        return None


def _dropped(reason: object, method: str) -> bool:
    """Whether a failed exchange is worth trying again.

    Refused: it never reached the server. Dropped mid-way: only a request that changes
    nothing (a write may have been done before the connection went).
    """
    if isinstance(reason, ConnectionRefusedError):
        return True
    return method not in WRITE_METHODS and isinstance(
        reason, ConnectionResetError | ConnectionAbortedError | http.client.RemoteDisconnected
    )


def _fetch(
    opener: urllib.request.OpenerDirector, req: urllib.request.Request, timeout: float
) -> tuple[int, Message, bytes]:
    """The status, headers and body of *req* (an HTTP error's too), at most MAX_REPLY bytes."""
    try:
        with opener.open(req, timeout=timeout) as reply:
            return reply.status, reply.headers, _bounded(reply)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, _bounded(exc)


def _bounded(reply: Any) -> bytes:  # noqa: ANN401 - an HTTP response or error, both file-like
    raw: bytes = reply.read(MAX_REPLY + 1)
    if len(raw) > MAX_REPLY:  # never held whole: a proxy's endless page, a wrong host
        raise UnreachableError(f"the GitHub API answered more than {MAX_REPLY >> 20} MiB")
    return raw


def _rate_limit_wait(
    status: int, headers: Message, raw: bytes, attempt: int, secondary_wait: float
) -> float | None:
    """Seconds to wait before retrying, or None when the reply is not a rate limit."""
    if status not in {403, 429}:
        return None
    retry_after = headers.get("retry-after")
    if retry_after is not None:
        try:
            wait = float(retry_after)
        except ValueError:
            wait = math.nan
        if not math.isnan(wait):  # `inf` waits too long: one clear error, as 1e12 does
            return max(wait, 0.0)
    if headers.get("x-ratelimit-remaining") == "0":
        reset = _epoch_wait(headers.get("x-ratelimit-reset"))
        if reset is not None:
            return reset
    text = raw.decode("utf-8", "replace").lower()
    if status == 429 or "rate limit" in text:  # noqa: PLR2004
        return secondary_wait * float(2**attempt)
    return None


def _epoch_wait(reset: str | None) -> float | None:
    if reset is None:
        return None
    try:
        at = float(reset)
    except ValueError:
        return None
    # One extra second: the reset time is whole seconds, and clocks differ a little.
    return max(at - time.time(), 0.0) + 1.0 if math.isfinite(at) else None


def _error_detail(data: object) -> str:
    if not isinstance(data, dict):
        return ""
    parts = [str(data.get("message", ""))]
    errors = data.get("errors")
    for err in errors if isinstance(errors, list) else []:
        if isinstance(err, dict):
            parts.append(str(err.get("message") or err.get("code") or ""))
        else:
            parts.append(str(err))
    return "; ".join(p for p in parts if p)
