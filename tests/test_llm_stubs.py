"""The OpenAI and Gemini API stubs speak their wire formats, follow their script, check keys."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests import gemini_stub, openai_stub
from tests.llm_stub import Slow, Stub, Text, serve


def post(url: str, body: dict[str, Any], *, key: str) -> tuple[int, str]:
    request = urllib.request.Request(  # noqa: S310 - a local http URL
        url,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - local
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def sse_data(text: str) -> list[dict[str, Any]]:
    return [
        json.loads(line.removeprefix("data: "))
        for line in text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def test_responses_stub_streams_a_patch_then_a_429_body() -> None:
    with serve(openai_stub.responses_stub()) as stub:
        stub.queue(openai_stub.apply_patch_add("a.txt", "hi"), openai_stub.usage_limited(1700))
        status, text = post(f"{stub.url}/v1/responses", {"stream": True}, key=stub.api_key)
        assert status == 200
        events = sse_data(text)
        assert [e["type"] for e in events][-1] == "response.completed"
        item = next(e["item"] for e in events if e["type"] == "response.output_item.done")
        assert item["type"] == "custom_tool_call"
        assert "*** Add File: a.txt\n+hi\n" in item["input"]
        status, text = post(f"{stub.url}/v1/responses", {"stream": True}, key=stub.api_key)
        assert status == 429
        assert json.loads(text)["error"]["resets_at"] == 1700
        assert [r.reply for r in stub.agent_requests()] == ["tool:apply_patch", "error:429"]


def test_chat_stub_refuses_a_wrong_key_and_answers_commit_messages_apart() -> None:
    with serve(openai_stub.chat_stub()) as stub:
        url = f"{stub.url}/v1/chat/completions"
        assert post(url, {"messages": []}, key="sk-wrong")[0] == 401
        stub.queue(Text(text="scripted"))
        commit = {"messages": [{"role": "system", "content": "Write a commit message"}]}
        status, text = post(url, commit, key=stub.api_key)
        assert status == 200
        assert "scripted" not in text
        status, text = post(url, {"stream": True, "messages": []}, key=stub.api_key)
        chunks = sse_data(text)
        content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
        assert content == "scripted"
        assert text.rstrip().endswith("data: [DONE]")
        assert stub.api_key not in json.dumps([r.headers for r in stub.requests])


def test_gemini_stub_is_slow_when_told_and_sends_quota_details() -> None:
    with serve(gemini_stub.gemini_stub()) as stub:
        url = f"{stub.url}/v1beta/models/m:streamGenerateContent?alt=sse&key={stub.api_key}"
        agent = {"tools": [{"functionDeclarations": [{"name": "write_file"}]}]}
        stub.queue(Slow(seconds=0.2, reply=gemini_stub.daily_limited()), Text(text="ok"))
        status, text = post(url, agent, key="")
        assert status == 429
        details = json.loads(text)["error"]["details"]
        assert "PerDay" in details[0]["violations"][0]["quotaId"]
        status, text = post(url, agent, key="")
        assert [c["candidates"][0]["content"]["parts"][0]["text"] for c in sse_data(text)] == [
            "o",
            "k",
        ]
        # A side query (no tools) does not take a scripted reply.
        assert post(url, {"contents": []}, key="")[0] == 200
        assert [r.agent for r in stub.requests] == [True, True, False]


@pytest.mark.parametrize("factory", [openai_stub.responses_stub, gemini_stub.gemini_stub])
def test_unknown_paths_are_recorded(factory: Any) -> None:
    stub: Stub = factory()
    with serve(stub):
        assert post(f"{stub.url}/nope?key={stub.api_key}", {}, key=stub.api_key)[0] == 404
        assert stub.unknown == ["POST /nope"]
