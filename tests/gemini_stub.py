"""A local stub of the Gemini API (``generativelanguage``) for the Gemini CLI.

``POST /v1beta/models/<model>:streamGenerateContent?alt=sse`` streams
``GenerateContentResponse`` objects as Server-Sent Events (``:generateContent`` answers one
object). Requests that offer ``functionDeclarations`` are the agent's turns and follow the
script (see :mod:`tests.llm_stub`); the CLI's side queries (routing, next-speaker checks) get
a plain answer, token counts get a count.
"""

from __future__ import annotations

import json
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
)

API_KEY = "AIzaSWARMTESTsecret0123456789abcdefGEMINI"  # a fake, to grep for leaks
MODEL = "gemini-2.5-pro"


def quota_error(*, quota_id: str, retry_delay: str | None = None) -> ApiError:
    """A 429 ``RESOURCE_EXHAUSTED`` naming the quota (``...PerMinute...`` or ``...PerDay...``)."""
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [
                {
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                    "quotaId": quota_id,
                    "quotaDimensions": {"location": "global", "model": MODEL},
                    "quotaValue": "50",
                }
            ],
        }
    ]
    if retry_delay is not None:
        details.append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}
        )
    return ApiError(
        status=429,
        body={
            "error": {
                "code": 429,
                "message": "You exceeded your current quota, please check your plan and "
                "billing details.",
                "status": "RESOURCE_EXHAUSTED",
                "details": details,
            }
        },
    )


def rate_limited() -> ApiError:
    """A per-minute quota 429: the kind that goes away by itself."""
    return quota_error(quota_id="GenerateRequestsPerMinutePerProjectPerModel", retry_delay="1s")


def daily_limited() -> ApiError:
    """A per-day quota 429: the CLI gives up at once."""
    return quota_error(quota_id="GenerateRequestsPerDayPerProjectPerModel")


def write_file(path: str, content: str) -> ToolCall:
    """The CLI's own ``write_file`` tool."""
    return ToolCall(name="write_file", input={"file_path": path, "content": content})


def _is_agent(request: Recorded) -> bool:
    if request.method != "POST" or "Content" not in request.path.rsplit(":", 1)[-1]:
        return False
    body = request.body if isinstance(request.body, dict) else {}
    return any(tool.get("functionDeclarations") for tool in body.get("tools") or [])


def _usage(stub: Stub) -> dict[str, Any]:
    return {
        "promptTokenCount": stub.input_tokens,
        "cachedContentTokenCount": stub.cached_tokens,
        "candidatesTokenCount": stub.output_tokens,
        "totalTokenCount": stub.input_tokens + stub.output_tokens,
    }


def _candidate(parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}


def _render(stub: Stub, request: Recorded, reply: Text | ToolCall | ApiError) -> Response:
    if isinstance(reply, ApiError):
        return json_response(reply.status, reply.body, reply.headers)
    if isinstance(reply, Text):
        cut = len(reply.text) // 2
        chunks = [[{"text": reply.text[:cut]}], [{"text": reply.text[cut:]}]]
    else:
        chunks = [[{"functionCall": {"name": reply.name, "args": reply.input}}]]
    return _answer(stub, request, chunks)


def _answer(stub: Stub, request: Recorded, chunks: list[list[dict[str, Any]]]) -> Response:
    model = request.path.rsplit("/", 1)[-1].split(":", 1)[0]
    objects = []
    for i, parts in enumerate(chunks):
        last = i == len(chunks) - 1
        candidate = _candidate(parts)
        if not last:
            del candidate["finishReason"]
        obj: dict[str, Any] = {"candidates": [candidate], "modelVersion": model}
        if last:
            obj["usageMetadata"] = _usage(stub)
        objects.append(obj)
    if request.path.endswith(":generateContent"):
        merged = [part for parts in chunks for part in parts]
        return json_response(
            200,
            {
                "candidates": [_candidate(merged)],
                "usageMetadata": _usage(stub),
                "modelVersion": model,
            },
        )
    data = b"".join(f"data: {json.dumps(obj)}\n\n".encode() for obj in objects)
    return Response(status=200, body=data, content_type="text/event-stream")


def _other(request: Recorded) -> Response | None:
    if request.method != "POST":
        return None
    if request.path.endswith(":countTokens"):
        return json_response(200, {"totalTokens": 100})
    if request.path.endswith(("Content", ":generateContent")):
        # A side query (model routing, next speaker, loop check): an empty JSON object is a
        # valid answer to the schema-constrained ones.
        text = '{"reasoning": "stub", "next_speaker": "user", "model_choice": "pro"}'
        answer = _candidate([{"text": text}])
        if request.path.endswith(":generateContent"):
            return json_response(200, {"candidates": [answer]})
        return Response(
            status=200,
            body=f"data: {json.dumps({'candidates': [answer]})}\n\n".encode(),
            content_type="text/event-stream",
        )
    return None


def gemini_stub() -> Stub:
    """A Gemini API stub (not yet serving)."""
    return Stub(is_agent=_is_agent, render=_render, other=_other, api_key=API_KEY)


def gemini_env(stub: Stub, home: Path) -> dict[str, str]:
    """Variables that make the real Gemini CLI use *home* and talk to *stub* only."""
    settings = home / ".gemini" / "settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    # What `gemini` asks on first use, answered: sign in with an API key.
    settings.write_text(json.dumps({"security": {"auth": {"selectedType": "gemini-api-key"}}}))
    return {
        "GEMINI_CLI_HOME": str(home),
        "GEMINI_API_KEY": stub.api_key,
        "GOOGLE_GEMINI_BASE_URL": stub.url,
        "GEMINI_MODEL": MODEL,
    }


@pytest.fixture
def gemini_api() -> Iterator[Stub]:
    """A running Gemini API stub on 127.0.0.1."""
    with serve(gemini_stub()) as stub:
        yield stub
