"""A real HTTP server on 127.0.0.1 that speaks the Anthropic Messages API, scriptable per test.

``POST /v1/messages`` answers with streaming SSE (``"stream": true``) or one JSON message, built
from the stub's script: a queue of replies (text, a tool_use, an API error such as a 429
``rate_limit_error``), then a default reply. ``rate_limit_fraction`` turns a seeded,
deterministic share of agent requests into 429s, for the rate-limit benchmark.

Claude Code also sends side requests (a title/topic query without tools, token counting,
``HEAD /``); the script applies only to *agent* requests (those that carry ``tools``), so a test
scripts the conversation and nothing else. Every request is recorded, minus credentials.
"""

from __future__ import annotations

import contextlib
import http.server
import itertools
import json
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.localhost import listening

API_KEY = "sk-ant-api03-SWARMTESTsecret0123456789abcdefXYZ"  # a fake, to grep for leaks
MODEL = "claude-stub-model"  # any name: the stub does not check it
_SECRET_HEADERS = frozenset({"x-api-key", "authorization"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Text:
    """An assistant message with one text block."""

    text: str = "Done."
    stop_reason: str = "end_turn"


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolUse:
    """An assistant message calling one tool (e.g. ``Write`` with ``file_path``/``content``)."""

    name: str
    input: dict[str, Any]
    text: str = ""  # an optional text block before the tool call


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiError:
    """An HTTP error with the API's error body, e.g. 429 ``rate_limit_error``."""

    status: int = 429
    type: str = "rate_limit_error"
    message: str = "This request would exceed your organization's rate limit."
    retry_after: int | None = 0  # seconds; 0 keeps the client's own retries fast
    headers: dict[str, str] = field(default_factory=dict)


def rate_limited(**kw: Any) -> ApiError:
    """A 429 ``rate_limit_error``."""
    return ApiError(**kw)


def overloaded(**kw: Any) -> ApiError:
    """A 529 ``overloaded_error``."""
    return ApiError(status=529, type="overloaded_error", message="Overloaded", **kw)


Reply = Text | ToolUse | ApiError
Policy = Callable[["Recorded"], Reply | None]  # None: fall through to the queue / default


@dataclass(slots=True)
class Recorded:
    """One request as the stub saw it (credential headers removed)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float  # time.monotonic() on arrival
    reply: str = ""  # what the stub answered: "text", "tool_use:Write", "error:429", ...

    @property
    def is_agent(self) -> bool:
        """A Messages request of the agent loop (it offers tools), not a side query."""
        return (
            self.method == "POST"
            and self.path == "/v1/messages"
            and isinstance(self.body, dict)
            and bool(self.body.get("tools"))
        )

    def user_texts(self) -> list[str]:
        """Every text the user side of the conversation contains, in order."""
        out: list[str] = []
        for message in (self.body or {}).get("messages", []):
            if message.get("role") != "user":
                continue
            content = message.get("content")
            if isinstance(content, str):
                out.append(content)
                continue
            out.extend(b.get("text", "") for b in content or [] if b.get("type") == "text")
        return out

    def tool_results(self) -> list[dict[str, Any]]:
        """The ``tool_result`` blocks sent back to the model."""
        return [
            block
            for message in (self.body or {}).get("messages", [])
            if message.get("role") == "user" and isinstance(message.get("content"), list)
            for block in message["content"]
            if block.get("type") == "tool_result"
        ]


@dataclass
class AnthropicStub:
    """State of the stub: script, policy and the request log."""

    url: str = ""
    api_key: str = API_KEY
    script: deque[Reply] = field(default_factory=deque)
    default: Reply = field(default_factory=Text)
    policy: Policy | None = None
    rate_limit_fraction: float = 0.0
    seed: int = 0
    input_tokens: int = 100
    output_tokens: int = 20
    requests: list[Recorded] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _rng: random.Random = field(init=False)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def queue(self, *replies: Reply) -> None:
        """Answer the next agent requests with *replies*, in order."""
        with self.lock:
            self.script.extend(replies)

    def set_rate_limit_fraction(self, fraction: float, *, seed: int = 0) -> None:
        """Answer a seeded, reproducible *fraction* of agent requests with a 429."""
        with self.lock:
            self.rate_limit_fraction = fraction
            self.seed = seed
            self._rng = random.Random(seed)

    def agent_requests(self) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.is_agent]

    def messages_requests(self) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.path == "/v1/messages" and r.method == "POST"]

    def choose(self, request: Recorded) -> Reply:
        """The reply for *request* (called with the lock held)."""
        if not request.is_agent:
            return Text(text="Side query answered by the stub.")
        if self.policy is not None and (chosen := self.policy(request)) is not None:
            return chosen
        if self.rate_limit_fraction and self._rng.random() < self.rate_limit_fraction:
            return rate_limited()
        if self.script:
            return self.script.popleft()
        return self.default

    def next_id(self, prefix: str) -> str:
        return f"{prefix}_stub{next(self._ids):06d}"


# -- wire format ---------------------------------------------------------------------------


def _blocks(stub: AnthropicStub, reply: Text | ToolUse) -> list[dict[str, Any]]:
    if isinstance(reply, Text):
        return [{"type": "text", "text": reply.text}]
    blocks: list[dict[str, Any]] = [{"type": "text", "text": reply.text}] if reply.text else []
    tool_id = stub.next_id("toolu")
    blocks.append({"type": "tool_use", "id": tool_id, "name": reply.name, "input": reply.input})
    return blocks


def _usage(stub: AnthropicStub, *, output: int) -> dict[str, Any]:
    return {
        "input_tokens": stub.input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output,
    }


def message_json(stub: AnthropicStub, reply: Text | ToolUse, model: str) -> dict[str, Any]:
    """A complete non-streaming Messages response."""
    stop = reply.stop_reason if isinstance(reply, Text) else "tool_use"
    return {
        "id": stub.next_id("msg"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": _blocks(stub, reply),
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": _usage(stub, output=stub.output_tokens),
    }


def sse_events(stub: AnthropicStub, reply: Text | ToolUse, model: str) -> list[tuple[str, Any]]:
    """The SSE events of a streamed Messages response, as (event name, data) pairs."""
    full = message_json(stub, reply, model)
    start = dict(full, content=[], stop_reason=None, usage=_usage(stub, output=1))
    events: list[tuple[str, Any]] = [("message_start", {"type": "message_start", "message": start})]
    events.append(("ping", {"type": "ping"}))
    for index, block in enumerate(full["content"]):
        if block["type"] == "text":
            empty: dict[str, Any] = {"type": "text", "text": ""}
            text = block["text"]
            # Two deltas, so clients really have to concatenate.
            halves = [text[: len(text) // 2], text[len(text) // 2 :]]
            deltas = [{"type": "text_delta", "text": part} for part in halves if part]
        else:
            empty = dict(block, input={})
            raw = json.dumps(block["input"])
            cut = len(raw) // 2
            parts = (raw[:cut], raw[cut:])
            deltas = [{"type": "input_json_delta", "partial_json": part} for part in parts]
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": empty},
            )
        )
        events.extend(
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
            for d in deltas
        )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": full["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": stub.output_tokens},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def _plain_error(status: int, kind: str, message: str) -> ApiError:
    return ApiError(status=status, type=kind, message=message, retry_after=None)


def _handler(stub: AnthropicStub) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def do_HEAD(self) -> None:
            self._record(b"")
            self._send_json(200, {}, head_only=True)

        def do_GET(self) -> None:
            self._dispatch()

        def do_POST(self) -> None:
            self._dispatch()

        def _record(self, raw: bytes) -> Recorded:
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            headers = {
                k.lower(): v for k, v in self.headers.items() if k.lower() not in _SECRET_HEADERS
            }
            path = self.path.split("?", 1)[0]
            request = Recorded(self.command, path, headers, body, time.monotonic())
            with stub.lock:
                stub.requests.append(request)
            return request

        def _dispatch(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            request = self._record(self.rfile.read(length) if length else b"")
            keys = {self.headers.get("x-api-key"), self.headers.get("authorization")}
            if not keys & {stub.api_key, f"Bearer {stub.api_key}"}:
                self._error(request, _plain_error(401, "authentication_error", "invalid x-api-key"))
                return
            if request.method == "POST" and request.path == "/v1/messages/count_tokens":
                request.reply = "count_tokens"
                self._send_json(200, {"input_tokens": stub.input_tokens})
                return
            if request.method != "POST" or request.path != "/v1/messages":
                with stub.lock:
                    stub.unknown.append(f"{request.method} {request.path}")
                request.reply = "not_found"
                self._error(request, _plain_error(404, "not_found_error", "Not found"))
                return
            with stub.lock:
                reply = stub.choose(request)
            if isinstance(reply, ApiError):
                self._error(request, reply)
                return
            body = request.body if isinstance(request.body, dict) else {}
            model = str(body.get("model") or MODEL)
            request.reply = "text" if isinstance(reply, Text) else f"tool_use:{reply.name}"
            with stub.lock:
                if body.get("stream"):
                    events = sse_events(stub, reply, model)
                else:
                    message = message_json(stub, reply, model)
            if body.get("stream"):
                self._send_sse(events)
            else:
                self._send_json(200, message)

        def _error(self, request: Recorded, error: ApiError) -> None:
            request.reply = f"error:{error.status}"
            headers = dict(error.headers)
            if error.retry_after is not None:
                headers["retry-after"] = str(error.retry_after)
            payload = {"type": "error", "error": {"type": error.type, "message": error.message}}
            self._send_json(error.status, payload, headers)

        def _send_json(
            self,
            status: int,
            payload: Any,
            headers: dict[str, str] | None = None,
            *,
            head_only: bool = False,
        ) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("request-id", stub.next_id("req"))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if not head_only:
                self.wfile.write(data)

        def _send_sse(self, events: list[tuple[str, Any]]) -> None:
            data = b"".join(
                f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()
                for name, payload in events
            )
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("cache-control", "no-cache")
            self.send_header("content-length", str(len(data)))
            self.send_header("request-id", stub.next_id("req"))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def claude_env(stub: AnthropicStub, *, max_retries: int = 2) -> dict[str, str]:
    """Variables that make the real Claude Code CLI talk to *stub* only, never home.

    Add ``CLAUDE_CONFIG_DIR`` (its config and session transcripts) per instance.
    """
    return {
        "ANTHROPIC_BASE_URL": stub.url,
        "ANTHROPIC_API_KEY": stub.api_key,
        # Updates, telemetry, error reports, feedback: none can reach a host from here.
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        # The CLI's own retries of 429/529 (default 10, with backoff): keep tests short.
        "CLAUDE_CODE_MAX_RETRIES": str(max_retries),
    }


def without_claude_vars(environ: dict[str, str]) -> dict[str, str]:
    """*environ* minus anything that could point the CLI at a real account or another provider.

    (``ANTHROPIC_*``, ``CLAUDE*`` such as ``CLAUDECODE`` or ``CLAUDE_CODE_USE_BEDROCK``.)
    """
    return {k: v for k, v in environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE"))}


@contextlib.contextmanager
def serve(**options: Any) -> Iterator[AnthropicStub]:
    """An AnthropicStub listening on 127.0.0.1 (base URL in ``.url``) while in the block."""
    stub = AnthropicStub(**options)
    with listening(_handler(stub)) as url:
        stub.url = url
        yield stub


@pytest.fixture
def anthropic_stub() -> Iterator[AnthropicStub]:
    """A running stub of the Anthropic Messages API on 127.0.0.1."""
    with serve() as stub:
        yield stub
