"""End to end: the real Claude Code CLI against the local Anthropic stub, with no network.

Each test runs ``claude -p ... --permission-mode acceptEdits`` in a fresh git repository with
its own config directory, the stub scripting the model's side. The JSON the CLI prints is saved
under tests/fixtures/claude/ when SWARM_UPDATE_FIXTURES=1: adapter tests use those files as the
ground truth of the CLI's output.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import anthropic_stub as stub_module
from tests.anthropic_stub import (
    AnthropicStub,
    Text,
    ToolUse,
    claude_env,
    rate_limited,
    without_claude_vars,
)
from tests.conftest import make_repo
from worktree_swarm.infra.proc import run

anthropic_stub = stub_module.anthropic_stub  # the fixture, visible to this module's tests
ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "claude"
# Where .ci/run installs the CLI (npm --prefix), used when `claude` is not on PATH.
LOCAL_CLAUDE = ROOT / ".cache" / "npm" / "node_modules" / ".bin" / "claude"
# What the claude adapter reads from the result object.
RESULT_FIELDS = {
    "type",
    "subtype",
    "is_error",
    "api_error_status",
    "session_id",
    "total_cost_usd",
    "usage",
    "num_turns",
    "result",
    "terminal_reason",
}


def _find_claude() -> str | None:
    if found := shutil.which("claude"):
        return found
    return str(LOCAL_CLAUDE) if LOCAL_CLAUDE.exists() else None


CLAUDE = _find_claude()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CLAUDE is None,
        reason="Claude Code CLI not installed: npm install --prefix .cache/npm "
        "@anthropic-ai/claude-code (see docs/claude-e2e.md)",
    ),
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaudeRun:
    exit_code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def result(self) -> dict[str, Any]:
        """The final result object (the last line for stream-json)."""
        lines = self.stdout.strip().splitlines()
        assert lines, f"claude printed nothing; stderr: {self.stderr}"
        parsed: dict[str, Any] = json.loads(lines[-1])
        return parsed

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.strip().splitlines()]


def claude(
    repo: Path,
    stub: AnthropicStub,
    prompt: str,
    *args: str,
    max_retries: int = 2,
    output: str = "json",
) -> ClaudeRun:
    """Run the real CLI in *repo* against *stub*; config and sessions live beside the repo."""
    assert CLAUDE is not None
    env = without_claude_vars(dict(os.environ)) | claude_env(stub, max_retries=max_retries)
    env["CLAUDE_CONFIG_DIR"] = str(repo.parent / "claude-config")
    argv = [CLAUDE, "-p", prompt, "--output-format", output, "--permission-mode", "acceptEdits"]
    if output == "stream-json":
        argv.append("--verbose")  # -p refuses stream-json without it
    started = time.monotonic()
    proc = run([*argv, *args], cwd=repo, env=env, check=False, timeout=240)
    return ClaudeRun(
        exit_code=proc.returncode,
        stdout=proc.stdout,
        stderr=proc.stderr,
        seconds=time.monotonic() - started,
    )


def keep_fixture(name: str, done: ClaudeRun) -> None:
    """Save the CLI's exact output as a fixture when asked to; check the saved one otherwise."""
    path = FIXTURES / name
    if os.environ.get("SWARM_UPDATE_FIXTURES") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(done.stdout)
    saved = path.read_text().strip().splitlines()
    assert json.loads(saved[-1]).keys() >= RESULT_FIELDS


def assistant_tool_calls(request_body: dict[str, Any]) -> list[str]:
    return [
        block["name"]
        for message in request_body["messages"]
        if message["role"] == "assistant" and isinstance(message["content"], list)
        for block in message["content"]
        if block.get("type") == "tool_use"
    ]


def test_write_tool_use_changes_the_file(tmp_path: Path, anthropic_stub: AnthropicStub) -> None:
    repo = make_repo(tmp_path / "repo")
    target = repo / "hello.txt"
    anthropic_stub.queue(
        ToolUse(name="Write", input={"file_path": str(target), "content": "hello from the stub\n"}),
        Text(text="Wrote hello.txt."),
    )

    done = claude(repo, anthropic_stub, "Create hello.txt")

    assert done.exit_code == 0, done.stderr
    assert target.read_text() == "hello from the stub\n"
    result = done.result
    assert result.keys() >= RESULT_FIELDS
    assert result["type"] == "result"
    assert result["subtype"] == "success"
    assert result["is_error"] is False
    assert result["api_error_status"] is None
    assert result["result"] == "Wrote hello.txt."
    assert result["num_turns"] == 2
    assert result["total_cost_usd"] > 0
    assert result["usage"]["input_tokens"] == 2 * anthropic_stub.input_tokens
    assert result["usage"]["output_tokens"] == 2 * anthropic_stub.output_tokens
    first, second = anthropic_stub.agent_requests()
    assert first.body["stream"] is True
    assert any("Create hello.txt" in text for text in first.user_texts())
    # The CLI really ran the tool and sent its result back.
    (tool_result,) = second.tool_results()
    assert tool_result.get("is_error") is not True
    assert not anthropic_stub.unknown
    assert all("x-api-key" not in r.headers for r in anthropic_stub.requests)
    keep_fixture("success.json", done)


def test_every_request_rate_limited(tmp_path: Path, anthropic_stub: AnthropicStub) -> None:
    repo = make_repo(tmp_path / "repo")
    anthropic_stub.default = rate_limited()

    done = claude(repo, anthropic_stub, "Create hello.txt", max_retries=1)

    assert done.exit_code == 1
    result = done.result
    assert result.keys() >= RESULT_FIELDS
    assert result["is_error"] is True
    assert result["api_error_status"] == 429
    assert "429" in result["result"]
    assert result["session_id"]
    # One request and CLAUDE_CODE_MAX_RETRIES=1 retry.
    assert [r.reply for r in anthropic_stub.agent_requests()] == ["error:429", "error:429"]
    assert not (repo / "hello.txt").exists()
    keep_fixture("rate_limited.json", done)


def test_resume_sends_the_earlier_conversation(
    tmp_path: Path, anthropic_stub: AnthropicStub
) -> None:
    repo = make_repo(tmp_path / "repo")
    anthropic_stub.queue(
        ToolUse(name="Write", input={"file_path": str(repo / "a.txt"), "content": "one\n"}),
        Text(text="Wrote a.txt."),
    )
    first = claude(repo, anthropic_stub, "Create a.txt").result
    before = len(anthropic_stub.agent_requests())
    anthropic_stub.queue(
        ToolUse(name="Write", input={"file_path": str(repo / "b.txt"), "content": "two\n"}),
        Text(text="Wrote b.txt too."),
    )

    done = claude(repo, anthropic_stub, "Now create b.txt", "--resume", first["session_id"])

    assert done.exit_code == 0, done.stderr
    assert done.result["is_error"] is False
    assert (repo / "a.txt").read_text() == "one\n"
    assert (repo / "b.txt").read_text() == "two\n"
    resumed = anthropic_stub.agent_requests()[before]
    texts = resumed.user_texts()
    assert any("Create a.txt" in t for t in texts)
    assert any("Now create b.txt" in t for t in texts)
    assert assistant_tool_calls(resumed.body) == ["Write"]  # the first run's call, replayed
    # Same session; `usage` counts this run only. In 2.1.330 `total_cost_usd` and `modelUsage`
    # are the session's running totals after --resume (in 2.1.197, this run only): an adapter
    # tells them apart by modelUsage's token count exceeding `usage`'s.
    result = done.result
    assert result["session_id"] == first["session_id"]
    assert result["usage"]["input_tokens"] == first["usage"]["input_tokens"]
    session_tokens = sum(m["inputTokens"] for m in result["modelUsage"].values())
    runs = 2 if session_tokens > result["usage"]["input_tokens"] else 1
    assert result["total_cost_usd"] == pytest.approx(runs * first["total_cost_usd"])
    keep_fixture("resumed.json", done)


def test_rate_limited_then_resumed_in_the_same_session(
    tmp_path: Path, anthropic_stub: AnthropicStub
) -> None:
    repo = make_repo(tmp_path / "repo")
    anthropic_stub.default = rate_limited()
    limited = claude(repo, anthropic_stub, "Create hello.txt", max_retries=0).result
    assert limited["is_error"] is True
    assert limited["api_error_status"] == 429
    anthropic_stub.default = Text(text="Done.")
    anthropic_stub.queue(
        ToolUse(name="Write", input={"file_path": str(repo / "hello.txt"), "content": "hi\n"}),
    )

    done = claude(repo, anthropic_stub, "Continue.", "--resume", limited["session_id"])

    assert done.exit_code == 0, done.stderr
    assert done.result["is_error"] is False
    assert (repo / "hello.txt").read_text() == "hi\n"
    resumed = next(r for r in anthropic_stub.agent_requests() if r.reply != "error:429")
    assert any("Create hello.txt" in t for t in resumed.user_texts())


def test_stream_json_reports_retries(tmp_path: Path, anthropic_stub: AnthropicStub) -> None:
    repo = make_repo(tmp_path / "repo")
    anthropic_stub.queue(
        rate_limited(),
        ToolUse(name="Write", input={"file_path": str(repo / "s.txt"), "content": "s\n"}),
        Text(text="Wrote s.txt."),
    )

    done = claude(repo, anthropic_stub, "Create s.txt", output="stream-json")

    assert done.exit_code == 0, done.stderr
    events = done.events()
    assert events[0]["type"] == "system"
    assert events[0]["subtype"] == "init"
    retries = [e for e in events if e["type"] == "system" and e.get("subtype") == "api_retry"]
    assert [e["error_status"] for e in retries] == [429]
    assert events[-1]["type"] == "result"
    assert events[-1]["is_error"] is False
    assert (repo / "s.txt").read_text() == "s\n"
    keep_fixture("stream_retry.jsonl", done)
