"""The Anthropic stub speaks the wire format the official SDK parses (so Claude Code can too)."""

from __future__ import annotations

import contextlib
import http.client
import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests import anthropic_stub as stub_module
from tests.anthropic_stub import MODEL, AnthropicStub, Text, ToolUse, overloaded, rate_limited

anthropic_stub = stub_module.anthropic_stub  # the fixture, visible to this module's tests

TOOLS: list[Any] = [
    {
        "name": "Write",
        "description": "Write a file",
        "input_schema": {
            "type": "object",
            "properties": {"file_path": {"type": "string"}, "content": {"type": "string"}},
        },
    }
]


@contextlib.contextmanager
def client(stub: AnthropicStub, *, key: str = "") -> Iterator[anthropic.Anthropic]:
    api = anthropic.Anthropic(api_key=key or stub.api_key, base_url=stub.url, max_retries=0)
    with api:
        yield api


def raw_request(stub: AnthropicStub, method: str, path: str, body: Any = None) -> int:
    """The status of a bare request (with the right key) to the stub."""
    address = urllib.parse.urlsplit(stub.url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=10)
    data = None if body is None else json.dumps(body)
    try:
        connection.request(method, path, body=data, headers={"x-api-key": stub.api_key})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def ask(stub: AnthropicStub, *, tools: bool = True) -> anthropic.types.Message:
    with (
        client(stub) as api,
        api.messages.stream(
            model=MODEL,
            max_tokens=100,
            messages=[{"role": "user", "content": "hi"}],
            tools=TOOLS if tools else [],
        ) as stream,
    ):
        return stream.get_final_message()


def test_streamed_tool_use_and_text(anthropic_stub: AnthropicStub) -> None:
    write = {"file_path": "/tmp/x.txt", "content": 'line "one"\nline two\n'}
    anthropic_stub.queue(
        ToolUse(name="Write", input=write, text="Writing."), Text(text="All done.")
    )

    first = ask(anthropic_stub)
    second = ask(anthropic_stub)

    assert first.stop_reason == "tool_use"
    text, call = first.content
    assert text.type == "text"
    assert text.text == "Writing."
    assert call.type == "tool_use"
    assert call.name == "Write"
    assert call.input == write
    assert first.usage.input_tokens == anthropic_stub.input_tokens
    assert first.usage.output_tokens == anthropic_stub.output_tokens
    assert second.stop_reason == "end_turn"
    assert [b.text for b in second.content if b.type == "text"] == ["All done."]
    assert [r.reply for r in anthropic_stub.requests] == ["tool_use:Write", "text"]


def test_non_streaming_message(anthropic_stub: AnthropicStub) -> None:
    anthropic_stub.queue(Text(text="plain"))

    with client(anthropic_stub) as api:
        message = api.messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}], tools=TOOLS
        )

    assert message.content[0].type == "text"
    assert message.content[0].text == "plain"
    assert message.model == MODEL


def test_rate_limit_error_with_retry_after(anthropic_stub: AnthropicStub) -> None:
    anthropic_stub.queue(rate_limited(retry_after=7), overloaded())

    with pytest.raises(anthropic.RateLimitError) as limited:
        ask(anthropic_stub)
    with pytest.raises(anthropic.InternalServerError) as busy:
        ask(anthropic_stub)

    assert limited.value.status_code == 429
    assert limited.value.response.headers["retry-after"] == "7"
    assert limited.value.body == {
        "type": "error",
        "error": {
            "type": "rate_limit_error",
            "message": "This request would exceed your organization's rate limit.",
        },
    }
    assert busy.value.status_code == 529
    assert ask(anthropic_stub).stop_reason == "end_turn"  # the script is used up: default


def test_side_queries_do_not_consume_the_script(anthropic_stub: AnthropicStub) -> None:
    anthropic_stub.queue(rate_limited())

    side = ask(anthropic_stub, tools=False)

    assert side.stop_reason == "end_turn"
    with pytest.raises(anthropic.RateLimitError):
        ask(anthropic_stub)


def test_rate_limit_fraction_is_seeded(anthropic_stub: AnthropicStub) -> None:
    def outcomes(seed: int) -> list[str]:
        anthropic_stub.set_rate_limit_fraction(0.3, seed=seed)
        anthropic_stub.requests.clear()
        agent = {"model": MODEL, "max_tokens": 1, "messages": [], "tools": TOOLS}
        for _ in range(40):
            raw_request(anthropic_stub, "POST", "/v1/messages", agent)
        return [r.reply for r in anthropic_stub.requests]

    first = outcomes(7)

    assert first == outcomes(7)
    assert first != outcomes(8)
    assert 0 < first.count("error:429") < 40


def test_other_endpoints_credentials_and_log(anthropic_stub: AnthropicStub) -> None:
    with client(anthropic_stub) as api:
        count = api.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert count.input_tokens == anthropic_stub.input_tokens

    assert raw_request(anthropic_stub, "HEAD", "/") == 200
    assert raw_request(anthropic_stub, "GET", "/v1/elsewhere") == 404
    assert anthropic_stub.unknown == ["GET /v1/elsewhere"]

    with client(anthropic_stub, key="wrong") as bad, pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model=MODEL, max_tokens=1, messages=[{"role": "user", "content": "x"}])

    recorded = json.dumps([r.headers for r in anthropic_stub.requests])
    assert anthropic_stub.api_key not in recorded
    assert "wrong" not in recorded
