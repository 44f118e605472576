"""Local stubs of the OpenAI Responses API (Codex CLI) and chat completions API (aider).

``POST /v1/responses`` streams Server-Sent Events as Codex reads them: ``response.created``,
output items (``message``, ``function_call``, ``custom_tool_call`` such as ``apply_patch``) and
``response.completed`` with ``usage``. ``POST /v1/chat/completions`` streams
``chat.completion.chunk`` lines ending in ``[DONE]`` (or one JSON object without ``stream``),
as litellm (inside aider) reads them. Replies come from the script (see :mod:`tests.llm_stub`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.llm_stub import (
    ApiError,
    Recorded,
    Response,
    Stub,
    Text,
    ToolCall,
    json_response,
    serve,
    sse_response,
)

API_KEY = "sk-proj-SWARMTESTsecret0123456789abcdefOPENAI"  # a fake, to grep for leaks
CODEX_MODEL = "gpt-5.5"  # in Codex's model catalog: it then offers its apply_patch tool


def rate_limited(message: str = "Rate limit reached for requests") -> ApiError:
    """A 429 ``rate_limit_exceeded`` as the OpenAI API sends it."""
    return ApiError(
        status=429,
        body={"error": {"message": message, "type": "requests", "code": "rate_limit_exceeded"}},
        headers={"retry-after": "0"},
    )


def usage_limited(resets_at: int) -> ApiError:
    """A 429 ``usage_limit_reached`` (a ChatGPT plan's limit) with its reset time."""
    return ApiError(
        status=429,
        body={
            "error": {
                "type": "usage_limit_reached",
                "message": "The usage limit has been reached",
                "plan_type": "plus",
                "resets_at": resets_at,
            }
        },
    )


def apply_patch_add(path: str, content: str) -> ToolCall:
    """Codex's ``apply_patch`` tool adding (or replacing) the file *path* with *content*."""
    lines = "".join(f"+{line}\n" for line in content.splitlines())
    return ToolCall(
        name="apply_patch",
        input=f"*** Begin Patch\n*** Add File: {path}\n{lines}*** End Patch\n",
    )


# -- Responses API (Codex) ------------------------------------------------------------------


def _responses_item(stub: Stub, reply: Text | ToolCall) -> dict[str, Any]:
    if isinstance(reply, Text):
        return {
            "type": "message",
            "id": stub.next_id("msg"),
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": reply.text, "annotations": []}],
        }
    call_id = stub.next_id("call")
    if isinstance(reply.input, str):  # a freeform tool such as apply_patch
        return {
            "type": "custom_tool_call",
            "id": stub.next_id("ctc"),
            "status": "completed",
            "call_id": call_id,
            "name": reply.name,
            "input": reply.input,
        }
    return {
        "type": "function_call",
        "id": stub.next_id("fc"),
        "status": "completed",
        "call_id": call_id,
        "name": reply.name,
        "arguments": json.dumps(reply.input),
    }


def _render_responses(
    stub: Stub, _request: Recorded, reply: Text | ToolCall | ApiError
) -> Response:
    if isinstance(reply, ApiError):
        return json_response(reply.status, reply.body, reply.headers)
    response_id = stub.next_id("resp")
    item = _responses_item(stub, reply)
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": {"id": response_id, "status": "in_progress"}},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
    ]
    if isinstance(reply, Text):
        half = len(reply.text) // 2
        events += [
            {"type": "response.output_text.delta", "output_index": 0, "delta": part}
            for part in (reply.text[:half], reply.text[half:])
            if part
        ]
    usage = {
        "input_tokens": stub.input_tokens,
        "input_tokens_details": {"cached_tokens": stub.cached_tokens},
        "output_tokens": stub.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": stub.input_tokens + stub.output_tokens,
    }
    events += [
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {
            "type": "response.completed",
            "response": {"id": response_id, "status": "completed", "usage": usage},
        },
    ]
    return sse_response(events, named=True)


def responses_stub() -> Stub:
    """A Responses API stub (not yet serving)."""
    return Stub(
        is_agent=lambda r: r.method == "POST" and r.path == "/v1/responses",
        render=_render_responses,
        api_key=API_KEY,
    )


def codex_home(stub: Stub, home: Path, *, model: str = CODEX_MODEL) -> Path:
    """A ``CODEX_HOME`` whose config sends Codex to *stub* with no retries of its own."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'model = "{model}"\n'
        'model_provider = "stub"\n'
        "[model_providers.stub]\n"
        'name = "local stub"\n'
        f'base_url = "{stub.url}/v1"\n'
        'env_key = "SWARM_TEST_OPENAI_KEY"\n'
        'wire_api = "responses"\n'
        # Codex retries 429s itself (4 times by default, with backoff): swarm's gate decides.
        "request_max_retries = 0\n"
        "stream_max_retries = 0\n"
    )
    return home


def codex_env(stub: Stub, home: Path) -> dict[str, str]:
    """Variables that make the real Codex CLI use *home* and talk to *stub* only."""
    return {"CODEX_HOME": str(home), "SWARM_TEST_OPENAI_KEY": stub.api_key}


@pytest.fixture
def responses_api() -> Iterator[Stub]:
    """A running Responses API stub on 127.0.0.1."""
    with serve(responses_stub()) as stub:
        yield stub


# -- chat completions (aider, through litellm) ------------------------------------------------


def _render_chat(stub: Stub, request: Recorded, reply: Text | ToolCall | ApiError) -> Response:
    if isinstance(reply, ApiError):
        return json_response(reply.status, reply.body, reply.headers)
    if isinstance(reply, ToolCall):
        msg = "the chat stub speaks text only (aider edits through its reply text)"
        raise TypeError(msg)
    body = request.body if isinstance(request.body, dict) else {}
    model = str(body.get("model") or "stub-model")
    usage = {
        "prompt_tokens": stub.input_tokens,
        "completion_tokens": stub.output_tokens,
        "total_tokens": stub.input_tokens + stub.output_tokens,
    }
    head = {"id": stub.next_id("chatcmpl"), "created": int(time.time()), "model": model}
    if not body.get("stream"):
        message = {"role": "assistant", "content": reply.text}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return json_response(
            200, {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
        )
    chunk = {**head, "object": "chat.completion.chunk"}
    cut = len(reply.text) // 2
    deltas = [{"role": "assistant", "content": reply.text[:cut]}, {"content": reply.text[cut:]}]
    lines = [
        {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        for delta in deltas
    ]
    lines.append({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    lines.append({**chunk, "choices": [], "usage": usage})
    data = b"".join(f"data: {json.dumps(line)}\n\n".encode() for line in lines)
    return Response(status=200, body=data + b"data: [DONE]\n\n", content_type="text/event-stream")


def _is_commit_message(request: Recorded) -> bool:
    """aider's request for a commit message of its own edit (not a turn of the task)."""
    body = request.body if isinstance(request.body, dict) else {}
    system = [m.get("content") for m in body.get("messages") or [] if m.get("role") == "system"]
    return any(isinstance(text, str) and "commit message" in text for text in system)


def chat_stub() -> Stub:
    """A chat completions stub (not yet serving); commit-message requests get a fixed answer."""

    def is_agent(request: Recorded) -> bool:
        chat = request.method == "POST" and request.path == "/v1/chat/completions"
        return chat and not _is_commit_message(request)

    def other(request: Recorded) -> Response | None:
        if request.method == "POST" and _is_commit_message(request):
            return _render_chat(stub, request, Text(text="Apply the task's edit"))
        return None

    stub = Stub(is_agent=is_agent, render=_render_chat, other=other, api_key=API_KEY)
    return stub


def whole_file(path: str, content: str) -> Text:
    """An aider reply in its ``whole`` edit format: the file's path, then all of it fenced."""
    return Text(text=f"{path}\n```\n{content}```\n")


def insufficient_quota() -> ApiError:
    """A 429 ``insufficient_quota``: the account's credit is used up (no reset time given)."""
    return ApiError(
        status=429,
        body={
            "error": {
                "message": "You exceeded your current quota, please check your plan and "
                "billing details.",
                "type": "insufficient_quota",
                "code": "insufficient_quota",
            }
        },
    )


def aider_env(stub: Stub, home: Path, *, cost_per_token: float = 1e-6) -> dict[str, str]:
    """Variables that make the real aider use *stub* (as ``openai/stub-model``) and *home*.

    A model metadata file gives the stub model a price, so aider reports a cost.
    """
    home.mkdir(parents=True, exist_ok=True)
    metadata = home / "model-metadata.json"
    metadata.write_text(
        json.dumps(
            {
                "openai/stub-model": {
                    "max_input_tokens": 128000,
                    "max_output_tokens": 4096,
                    "input_cost_per_token": cost_per_token,
                    "output_cost_per_token": 4 * cost_per_token,
                    "litellm_provider": "openai",
                    "mode": "chat",
                }
            }
        )
    )
    return {
        "HOME": str(home),  # aider keeps its analytics id and caches under ~/.aider
        "OPENAI_API_BASE": f"{stub.url}/v1",
        "OPENAI_API_KEY": stub.api_key,
        "AIDER_MODEL": "openai/stub-model",
        "AIDER_EDIT_FORMAT": "whole",
        "AIDER_MODEL_METADATA_FILE": str(metadata),
        "AIDER_CHECK_UPDATE": "false",
        "AIDER_ANALYTICS_DISABLE": "true",
        "AIDER_SHOW_MODEL_WARNINGS": "false",
        # litellm would fetch its price list from the network at start.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }


@pytest.fixture
def chat_api() -> Iterator[Stub]:
    """A running chat completions stub on 127.0.0.1."""
    with serve(chat_stub()) as stub:
        yield stub
