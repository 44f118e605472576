"""The HTTP under the GitHub client's requests, as functions of a request, a failure or a reply.

One fetch within a deadline, its answer read to a bound and a redirect handed back; whether a
failed exchange is worth another try; the wait a rate-limited reply asks for; what an error
reply says.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import math
import socket
import threading
import time
import urllib.error
import urllib.request
from email.message import Message
from typing import Any

from worktree_swarm.github.errors import UnreachableError

WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})
MAX_REPLY = 32 * 2**20  # bytes of one answer: GitHub's pages are far smaller


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Hand a redirect back as the answer: GitHub redirects the API of a renamed repository."""

    def redirect_request(self, *_args: object, **_kwargs: object) -> None:
        """No new request: the redirect itself is the answer."""


class _Cutoff:
    """One request's hold on its connection: cut off at the deadline, it sends and reads no more.

    A request given up on must not go on beside the next one (a POST sent late, after the
    caller was told it failed, opens a pull request the next try opens again).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cut = False
        self._sock: socket.socket | None = None
        self.answer: list[tuple[int, Message, bytes] | BaseException] = []

    def connected(self, sock: socket.socket | None) -> None:
        """Called once connected, before a byte of the request is sent: refused once cut off."""
        with self._lock:
            if not self._cut:
                self._sock = sock
                return
        if sock is not None:
            sock.close()
        raise ConnectionAbortedError("the request's deadline passed before it was connected")

    def deliver(self, got: tuple[int, Message, bytes] | BaseException) -> None:
        """Keep the exchange's outcome, unless it came after the cut."""
        with self._lock:
            if not self._cut:
                self.answer.append(got)

    def cut(self) -> bool:
        """End the exchange where it is; whether it was connected (its bytes may have gone)."""
        with self._lock:
            self._cut = True
            if self._sock is not None:
                with contextlib.suppress(OSError):  # closed meanwhile: the exchange is over
                    self._sock.shutdown(socket.SHUT_RDWR)
            return self._sock is not None


class Request(urllib.request.Request):
    """A request with its cutoff, which its connection reports to."""

    cutoff: _Cutoff


class _HTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, cutoff: _Cutoff, **kwargs: Any) -> None:  # noqa: ANN401
        super().__init__(*args, **kwargs)
        self._cutoff = cutoff

    def connect(self) -> None:
        super().connect()
        self._cutoff.connected(self.sock)


class _HTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, cutoff: _Cutoff, **kwargs: Any) -> None:  # noqa: ANN401
        super().__init__(*args, **kwargs)
        self._cutoff = cutoff

    def connect(self) -> None:
        super().connect()  # a proxy's tunnel and TLS too: the request is not sent yet
        self._cutoff.connected(self.sock)


class HTTPHandler(urllib.request.HTTPHandler):
    """Open the GitHub client's plain HTTP requests on connections cut off at their deadline."""

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        """Open *req*, one of the GitHub client's."""
        if not isinstance(req, Request):
            raise TypeError("not a request of the GitHub client's")
        return self.do_open(functools.partial(_HTTPConnection, cutoff=req.cutoff), req)


class HTTPSHandler(urllib.request.HTTPSHandler):
    """Open the GitHub client's HTTPS requests on connections cut off at their deadline."""

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        """Open *req*, one of the GitHub client's."""
        if not isinstance(req, Request):
            raise TypeError("not a request of the GitHub client's")
        return self.do_open(functools.partial(_HTTPSConnection, cutoff=req.cutoff), req)


class PastDeadlineError(Exception):
    """A request cut off at its deadline; *connected*: it may have reached the server."""

    def __init__(self, *, connected: bool) -> None:
        super().__init__("past its deadline")
        self.connected = connected


def fetch_within(
    opener: urllib.request.OpenerDirector, req: Request, *, timeout: float, deadline: float
) -> tuple[int, Message, bytes]:
    """:func:`_fetch` of *req*, within *deadline* seconds in all: cut off then (PastDeadlineError).

    In a thread of its own, so that the whole request has a deadline. Once cut off, its
    connection is shut down before this returns: nothing more of it is sent (a connection made
    later sends nothing at all), and its answer, however late, is never taken.
    """
    req.cutoff = cutoff = _Cutoff()

    def fetch() -> None:
        try:
            got: tuple[int, Message, bytes] | BaseException = _fetch(opener, req, timeout)
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            got = exc
        cutoff.deliver(got)

    exchange = threading.Thread(target=fetch, daemon=True)
    exchange.start()
    exchange.join(deadline)
    connected = cutoff.cut()  # a no-op when it ended in time
    if not cutoff.answer:
        raise PastDeadlineError(connected=connected)
    if isinstance(cutoff.answer[0], BaseException):
        raise cutoff.answer[0]
    return cutoff.answer[0]


def worth_retrying(reason: object, method: str) -> bool:
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


def rate_limit_wait(
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
        reset = epoch_wait(headers.get("x-ratelimit-reset"))
        if reset is not None:
            return reset
    text = raw.decode("utf-8", "replace").lower()
    if status == 429 or "rate limit" in text:  # noqa: PLR2004
        return secondary_wait * float(2**attempt)
    return None


def epoch_wait(reset: str | None) -> float | None:
    """Seconds until the epoch time *reset* (a rate-limit header), or None if unreadable."""
    if reset is None:
        return None
    try:
        at = float(reset)
    except ValueError:
        return None
    # One extra second: the reset time is whole seconds, and clocks differ a little.
    return max(at - time.time(), 0.0) + 1.0 if math.isfinite(at) else None


def error_detail(data: object) -> str:
    """The messages in GitHub's error body *data*, as one line."""
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
