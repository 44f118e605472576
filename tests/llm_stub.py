"""What the local model-API stubs share: a scripted reply queue and a real HTTP server on 127.0.0.1.

A stub answers the *agent* requests of a CLI (the ones its wire format marks as a model turn)
from a queue of replies, then from a default reply; everything else the CLI asks (model lists,
token counts, telemetry) gets a small fixed answer or a 404 and is recorded. The wire formats
live in :mod:`tests.openai_stub` and :mod:`tests.gemini_stub`.
"""

from __future__ import annotations

import contextlib
import http.server
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.localhost import listening

_SECRET_HEADERS = frozenset({"x-api-key", "authorization", "x-goog-api-key", "api-key"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Text:
    """An assistant turn that only says something (ends the agent's loop)."""

    text: str = "Done."


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCall:
    """An assistant turn calling one of the CLI's own tools with *input*."""

    name: str
    input: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiError:
    """An HTTP error with the API's own error body."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Slow:
    """*reply*, sent after *seconds* (the server thread waits; the CLI sees a slow API)."""

    seconds: float
    reply: Text | ToolCall | ApiError


Reply = Text | ToolCall | ApiError | Slow


@dataclass(slots=True)
class Recorded:
    """One request as the stub saw it (credential headers and query keys removed)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float  # time.monotonic() on arrival
    agent: bool = False
    reply: str = ""  # what the stub answered: "text", "tool:apply_patch", "error:429", ...

    def text(self) -> str:
        """The whole body as JSON text, to search for what the conversation carried."""
        return json.dumps(self.body)


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """What the handler sends: a status, a content type, the bytes and extra headers."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON response."""
    return Response(status=status, body=json.dumps(payload).encode(), headers=headers or {})


def sse_response(events: list[dict[str, Any]], *, named: bool) -> Response:
    """A ``text/event-stream`` of *events* (``event: <type>`` lines when *named*)."""
    chunks = []
    for event in events:
        head = f"event: {event['type']}\n" if named else ""
        chunks.append(f"{head}data: {json.dumps(event)}\n\n".encode())
    return Response(status=200, body=b"".join(chunks), content_type="text/event-stream")


@dataclass
class Stub:
    """A scripted model API: the reply queue, the request log and how to speak the wire format.

    *is_agent* says which requests are model turns; *render* turns a reply into a response;
    *other* answers the rest (None: 404).
    """

    is_agent: Callable[[Recorded], bool]
    render: Callable[[Stub, Recorded, Text | ToolCall | ApiError], Response]
    other: Callable[[Recorded], Response | None] = lambda _request: None
    url: str = ""
    api_key: str = ""
    script: deque[Reply] = field(default_factory=deque)
    default: Reply = field(default_factory=Text)
    policy: Callable[[Recorded], Reply | None] | None = None
    input_tokens: int = 1200
    cached_tokens: int = 200
    output_tokens: int = 30
    requests: list[Recorded] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def queue(self, *replies: Reply) -> None:
        """Answer the next agent requests with *replies*, in order."""
        with self.lock:
            self.script.extend(replies)

    def agent_requests(self) -> list[Recorded]:
        """The model turns the CLI asked for, in order."""
        with self.lock:
            return [r for r in self.requests if r.agent]

    def next_id(self, prefix: str) -> str:
        """A fresh id such as ``call_stub000001``."""
        return f"{prefix}_stub{next(self._ids):06d}"

    def choose(self, request: Recorded) -> Reply:
        """The reply to an agent request (called with the lock held)."""
        if self.policy is not None and (chosen := self.policy(request)) is not None:
            return chosen
        if self.script:
            return self.script.popleft()
        return self.default


def _handler(stub: Stub) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def do_GET(self) -> None:
            self._dispatch()

        def do_POST(self) -> None:
            self._dispatch()

        def _dispatch(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            headers = {
                k.lower(): v for k, v in self.headers.items() if k.lower() not in _SECRET_HEADERS
            }
            path, _, query = self.path.partition("?")
            request = Recorded(self.command, path, headers, body, time.monotonic())
            request.agent = stub.is_agent(request)
            with stub.lock:
                stub.requests.append(request)
            if stub.api_key and stub.api_key not in self._credentials(query):
                request.reply = "error:401"
                self._send(json_response(401, {"error": {"message": "invalid api key"}}))
                return
            if not request.agent:
                answer = stub.other(request)
                if answer is None:
                    with stub.lock:
                        stub.unknown.append(f"{request.method} {request.path}")
                    answer = json_response(404, {"error": {"message": "not found"}})
                request.reply = f"other:{answer.status}"
                self._send(answer)
                return
            with stub.lock:
                reply = stub.choose(request)
            if isinstance(reply, Slow):
                time.sleep(reply.seconds)
                reply = reply.reply
            request.reply = (
                "text"
                if isinstance(reply, Text)
                else f"tool:{reply.name}"
                if isinstance(reply, ToolCall)
                else f"error:{reply.status}"
            )
            with stub.lock:
                answer = stub.render(stub, request, reply)
            self._send(answer)

        def _credentials(self, query: str) -> str:
            values = [self.headers.get(name) or "" for name in _SECRET_HEADERS]
            return " ".join([*values, query])

        def _send(self, answer: Response) -> None:
            self.send_response(answer.status)
            self.send_header("content-type", answer.content_type)
            self.send_header("content-length", str(len(answer.body)))
            for key, value in answer.headers.items():
                self.send_header(key, value)
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(answer.body)

    return Handler


@contextlib.contextmanager
def serve(stub: Stub) -> Iterator[Stub]:
    """Run *stub* on 127.0.0.1 (its base URL in ``.url``) while in the block."""
    with listening(_handler(stub)) as url:
        stub.url = url
        yield stub
