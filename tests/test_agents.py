"""Agent adapters: argv for first attempts and resumes, env, and outcomes read from real logs.

Each fake CLI is a real executable named like the real one (claude, codex, gemini, aider) on a
PATH of its own; it prints output in the CLI's exact format (taken from the CLIs' docs and
source, see docs/agents.md), records the argv and env it got, and exits. It runs through
``supervisor.spawn`` like a real attempt, so stdout and stderr land in one log file that
``interpret`` then reads.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import git, script_interpreter
from tests.test_run import swarm
from worktree_swarm.agents import (
    PROFILES,
    AgentOutcome,
    AgentResult,
    adapter_for,
    backoff_delay,
    classify_rate_limit,
    profile_of,
)
from worktree_swarm.agents.aider import AiderAdapter
from worktree_swarm.agents.base import accountable
from worktree_swarm.agents.claude import ClaudeAdapter
from worktree_swarm.agents.codex import CodexAdapter
from worktree_swarm.agents.command import CommandAdapter
from worktree_swarm.agents.gemini import GeminiAdapter
from worktree_swarm.core import units
from worktree_swarm.infra import supervisor
from worktree_swarm.infra.proc import clean_env

NOW = 1_760_000_000.0  # 2025-10-09 08:53:20 UTC: every classification is relative to it
SESSION = "0e639165-79b1-4bd4-bb0f-4cb4c15115d4"
THREAD = "0199a213-81c0-7800-8aa1-bbab2a035a53"
GEMINI_SESSION = "a1b2c3d4-e5f6-7890-abcd-ef1234567890"

FAKE_CLI = """\
import json, os, signal, sys
plan = json.load(open(os.environ["FAKE_PLAN"]))
with open(os.environ["FAKE_RECORD"], "w") as f:
    json.dump({"argv": sys.argv[1:], "config": os.environ.get("CLAUDE_CONFIG_DIR")}, f)
sys.stderr.write(plan["stderr"]); sys.stderr.flush()
sys.stdout.write(plan["stdout"]); sys.stdout.flush()
if plan.get("kill"):
    os.kill(os.getpid(), signal.SIGKILL)
sys.exit(plan["exit"])
"""


def jsonl(*events: dict[str, Any]) -> str:
    return "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events)


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    result: AgentResult
    argv: list[str]
    config_dir: str | None


Attempt = Callable[..., Run]


@pytest.fixture
def attempt(tmp_path: Path) -> Attempt:
    """Run one attempt of a profile against its fake CLI and interpret the log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    worktree = tmp_path / "worktree"
    worktree.mkdir()
    counter = iter(range(1000))

    def _run(
        profile: str,
        *,
        stdout: str = "",
        stderr: str = "",
        exit_code: int = 0,
        kill: bool = False,
        session_id: str | None = None,
        resume_prompt: str | None = None,
    ) -> Run:
        n = next(counter)
        program = PROFILES[profile][0]
        script = bin_dir / program
        script.write_text(f"{script_interpreter()}\n{FAKE_CLI}")
        script.chmod(0o755)
        plan = tmp_path / f"plan-{n}.json"
        plan.write_text(
            json.dumps({"stdout": stdout, "stderr": stderr, "exit": exit_code, "kill": kill})
        )
        record = tmp_path / f"record-{n}.json"
        adapter = adapter_for(profile)
        argv = adapter.argv(
            PROFILES[profile],
            values={"prompt": "Add hello.txt", "prompt_file": str(tmp_path / "prompt.md")},
            session_id=session_id,
            resume_prompt=resume_prompt,
        )
        base = clean_env(
            {
                "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                "FAKE_PLAN": str(plan),
                "FAKE_RECORD": str(record),
            }
        )
        env = adapter.env(base=base, task_id="t1", config_dir=tmp_path / "agent-config")
        log_path = tmp_path / f"attempt-{n}.log"
        agent = supervisor.spawn(argv, cwd=worktree, env=env, log_path=log_path)
        code = agent.wait(timeout=60)
        assert code is not None, "fake CLI did not exit"
        log_text = log_path.read_text(encoding="utf-8")
        recorded = json.loads(record.read_text())
        assert recorded["argv"] == argv[1:], "the process got a different argv"
        result = adapter.interpret(exit_code=code, log_text=log_text, now=NOW)
        return Run(result=result, argv=argv, config_dir=recorded["config"])

    return _run


@pytest.fixture
def tokyo_time() -> Iterator[None]:
    """Local time is Asia/Tokyo (UTC+9, no DST) for wall-clock reset times."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Tokyo"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def utc(year: int, month: int, day: int, hour: int, minute: int) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()


# -- Claude Code -------------------------------------------------------------------------------

CLAUDE_USAGE = {
    "input_tokens": 3,
    "cache_creation_input_tokens": 1200,
    "cache_read_input_tokens": 15635,
    "output_tokens": 6,
    "server_tool_use": {"web_search_requests": 0},
    "service_tier": "standard",
}


def claude_result(**fields: Any) -> dict[str, Any]:
    result: dict[str, Any] = {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "duration_ms": 1998,
        "duration_api_ms": 1976,
        "num_turns": 4,
        "result": "Created hello.txt.",
        "stop_reason": "end_turn",
        "session_id": SESSION,
        "total_cost_usd": 0.0079825,
        "usage": CLAUDE_USAGE,
        "modelUsage": {},
        "permission_denials": [],
        "uuid": "b7a3c5c2-1111-4d1e-9f00-3f2f1b0e0a01",
    }
    result.update(fields)
    return result


CLAUDE_INIT = {
    "type": "system",
    "subtype": "init",
    "cwd": "/work/wt",
    "session_id": SESSION,
    "tools": ["Bash", "Edit", "Read", "Write"],
    "mcp_servers": [],
    "model": "claude-sonnet-4-5-20250929",
    "permissionMode": "acceptEdits",
    "apiKeySource": "ANTHROPIC_API_KEY",
    "uuid": "5d2c1f00-0000-4000-8000-000000000001",
}
CLAUDE_ASSISTANT = {
    "type": "assistant",
    "message": {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": "Creating hello.txt"}],
        "stop_reason": None,
        "usage": {"input_tokens": 3, "output_tokens": 6},
    },
    "parent_tool_use_id": None,
    "session_id": SESSION,
    "uuid": "5d2c1f00-0000-4000-8000-000000000002",
}


def rate_limit_event(status: str, resets_at: int) -> dict[str, Any]:
    return {
        "type": "rate_limit_event",
        "rate_limit_info": {"status": status, "resetsAt": resets_at, "rateLimitType": "five_hour"},
        "uuid": "5d2c1f00-0000-4000-8000-000000000003",
        "session_id": SESSION,
    }


API_429 = (
    'API Error: 429 {"type":"error","error":{"type":"rate_limit_error","message":"This request '
    "would exceed your account's rate limit. Please try again later.\"},"
    '"request_id":"req_011CTrmdPsD7d9uz7LstkY5g"}'
)


def test_claude_json_success_reads_session_cost_and_tokens(attempt: Attempt) -> None:
    run = attempt("claude", stdout=json.dumps(claude_result()) + "\n")
    assert run.result == AgentResult(
        outcome=AgentOutcome.SUCCESS,
        session_id=SESSION,
        cost_usd=0.0079825,
        tokens_in=3,
        tokens_out=6,
        cache_read_tokens=15635,
        cache_write_tokens=1200,
        num_turns=4,
    )


def test_claude_is_error_with_subtype_success_and_429_is_rate_limited(attempt: Attempt) -> None:
    stdout = json.dumps(
        claude_result(is_error=True, api_error_status=429, result=API_429, total_cost_usd=0.0012)
    )
    run = attempt("claude", stdout=stdout + "\n", exit_code=1)
    assert run.result.outcome is AgentOutcome.RATE_LIMITED
    assert run.result.reason.startswith("claude rate limited (HTTP 429): API Error: 429")
    assert run.result.session_id == SESSION
    assert run.result.cost_usd == pytest.approx(0.0012)
    assert run.result.retry_at is None  # no reset given: the runner backs off


def test_claude_is_error_with_subtype_success_is_a_failure(attempt: Attempt) -> None:
    # Named by its status, not "claude success: ..." (the subtype an API error ends with).
    stdout = json.dumps(claude_result(is_error=True, result="Invalid API key · Please run /login"))
    run = attempt("claude", stdout=stdout + "\n", exit_code=1)
    assert run.result.outcome is AgentOutcome.FAILED
    assert run.result.reason == "claude error: Invalid API key · Please run /login"
    key = "Invalid API key · Fix external API key"
    stdout = json.dumps(claude_result(is_error=True, api_error_status=401, result=key))
    run = attempt("claude", stdout=stdout + "\n", exit_code=1)
    assert run.result.outcome is AgentOutcome.FAILED
    assert run.result.reason == f"claude API error (HTTP 401): {key}"


# As Claude Code 2.1 ends a turn when its API answered 500 past its own retries.
API_500 = (
    "API Error: 500 Internal server error. This is a server-side issue, usually temporary — try "
    "again in a moment. If it persists, check your inference gateway (127.0.0.1:18431)."
)


@pytest.mark.parametrize("status", [500, 502, 503, 504, None])
def test_claude_api_servers_failing_are_waited_out_as_a_rate_limit_is(
    attempt: Attempt, status: int | None
) -> None:
    # A single 500 overnight failed its task for good, though the CLI says "usually temporary".
    result = API_500.replace("500", str(status or 500), 1)
    stdout = json.dumps(claude_result(is_error=True, api_error_status=status, result=result))
    run = attempt("claude", stdout=stdout + "\n", exit_code=1)
    assert run.result.outcome is AgentOutcome.RATE_LIMITED
    shown = f" (HTTP {status})" if status else ""
    assert run.result.reason.startswith(f"claude API unavailable{shown}: API Error: 5")
    assert run.result.retry_at is None  # the task's own backoff, then it resumes


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize(
    ("capture", "said"),
    [
        ("close", "API Error: Connection dropped (ECONNRESET)."),
        ("close-retried", "API Error: Connection dropped (ECONNRESET)."),  # its 2 retries
        ("refused", "API Error: Connection refused"),
        ("dns", "API Error: Can't reach the API server"),
        ("timeout", "Request timed out."),  # API_TIMEOUT_MS passed
        ("cut", "API Error: JSON Parse error: Unterminated string"),
        ("malformed", "API Error: JSON Parse error: Unexpected EOF"),
    ],
)
def test_claude_out_of_reach_of_its_api_waits_it_out_as_a_server_error(
    capture: str, said: str
) -> None:
    # Real Claude Code 2.1.330 against a local API that resets the connection, is not there,
    # has no such host, never answers, cuts its stream or sends garbage: each failed the
    # task for good, while a 5xx is waited out and resumed.
    log = (FIXTURES / "claude" / f"v2.1.330-api-{capture}.jsonl").read_text()
    result = ClaudeAdapter().interpret(exit_code=1, log_text=log, now=NOW)
    assert result.outcome is AgentOutcome.RATE_LIMITED
    assert result.reason.startswith(f"claude API unavailable: {said}")
    assert result.retry_at is None  # the task's own backoff, then it resumes
    assert result.session_id is not None


def test_a_claude_reply_naming_a_connection_error_is_no_outage(attempt: Attempt) -> None:
    # The model's own words in an error result ("... failed with ECONNREFUSED") were taken for
    # the API out of reach, and the attempt waited out and resumed instead of failing.
    said = "The tests could not reach the database: connect ECONNREFUSED 127.0.0.1:5432"
    stdout = json.dumps(claude_result(is_error=True, result=said))
    run = attempt("claude", stdout=stdout, exit_code=1)
    assert run.result.outcome is AgentOutcome.FAILED


def test_claude_overloaded_529_is_rate_limited(attempt: Attempt) -> None:
    body = (
        'API Error: 529 {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    )
    stdout = json.dumps(claude_result(is_error=True, api_error_status=529, result=body))
    assert attempt("claude", stdout=stdout, exit_code=1).result.outcome is AgentOutcome.RATE_LIMITED


def test_claude_usage_limit_message_gives_the_reset_epoch(attempt: Attempt) -> None:
    stdout = json.dumps(
        claude_result(is_error=True, result="Claude AI usage limit reached|1760004000")
    )
    run = attempt("claude", stdout=stdout, exit_code=1)
    assert run.result.outcome is AgentOutcome.RATE_LIMITED
    assert run.result.retry_at == 1760004000.0


def test_claude_stream_json_uses_last_result_and_rejected_rate_limit_event(
    attempt: Attempt,
) -> None:
    stdout = jsonl(
        CLAUDE_INIT,
        rate_limit_event("allowed", 1760001000),
        CLAUDE_ASSISTANT,
        rate_limit_event("rejected", 1760018000),
        claude_result(
            is_error=True,
            api_error_status=429,
            result="You've hit your limit · resets 4pm (Europe/Berlin)",
            num_turns=2,
        ),
    )
    run = attempt("claude", stdout=stdout, stderr="Warning: something on stderr\n", exit_code=1)
    assert run.result.outcome is AgentOutcome.RATE_LIMITED
    assert run.result.retry_at == 1760018000.0  # the structured reset wins over the message
    assert run.result.session_id == SESSION
    assert run.result.num_turns == 2


def test_claude_stream_json_allowed_events_do_not_spoil_success(attempt: Attempt) -> None:
    stdout = jsonl(
        CLAUDE_INIT,
        rate_limit_event("allowed", 1760001000),
        CLAUDE_ASSISTANT,
        claude_result(),
    )
    run = attempt("claude", stdout=stdout)
    assert run.result.outcome is AgentOutcome.SUCCESS
    assert run.result.tokens_out == 6


def test_claude_killed_mid_stream_keeps_its_session_for_resume(attempt: Attempt) -> None:
    run = attempt("claude", stdout=jsonl(CLAUDE_INIT), kill=True)
    assert run.result == AgentResult(
        outcome=AgentOutcome.FAILED, reason="claude killed by signal 9", session_id=SESSION
    )


def test_claude_killed_mid_stream_counts_the_tokens_its_messages_reported(
    attempt: Attempt,
) -> None:
    # A timeout or `swarm stop` leaves no result: what the messages so far used still counts
    # (each message once, however many of its blocks repeated its usage); no cost is known.
    second = json.loads(json.dumps(CLAUDE_ASSISTANT))
    second["message"].update(
        id="msg_02",
        usage={"input_tokens": 100, "output_tokens": 20, "cache_read_input_tokens": 50},
    )
    lines = jsonl(CLAUDE_INIT, CLAUDE_ASSISTANT, CLAUDE_ASSISTANT, second)
    run = attempt("claude", stdout=lines, kill=True)
    assert run.result == AgentResult(
        outcome=AgentOutcome.FAILED,
        reason="claude killed by signal 9",
        session_id=SESSION,
        tokens_in=103,
        tokens_out=26,
        cache_read_tokens=50,
        cache_write_tokens=0,
    )


def test_claude_killed_after_the_model_wrote_a_usage_limit_line_is_no_rate_limit(
    attempt: Attempt,
) -> None:
    # The model quoted the line (from a README, or told to) in its reply and in a command it
    # ran; then claude died with no result: nothing the API or the CLI said.
    line = "Claude AI usage limit reached|1760004000"
    said = {**CLAUDE_ASSISTANT["message"], "content": [{"type": "text", "text": line}]}
    ran = {
        "type": "user",
        "message": {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": line}],
        },
        "session_id": SESSION,
    }
    stdout = jsonl(CLAUDE_INIT, {**CLAUDE_ASSISTANT, "message": said}, ran)
    run = attempt("claude", stdout=stdout, kill=True)
    assert run.result.outcome is AgentOutcome.FAILED
    assert (run.result.reason, run.result.session_id) == ("claude killed by signal 9", SESSION)


def test_claude_max_turns_is_a_failure_with_its_subtype(attempt: Attempt) -> None:
    stdout = json.dumps(claude_result(subtype="error_max_turns", is_error=True, result=None))
    run = attempt("claude", stdout=stdout, exit_code=1)
    assert run.result.outcome is AgentOutcome.FAILED
    assert run.result.reason == "claude error_max_turns: no detail"


def test_claude_resume_runs_resume_flag_and_own_config_dir(
    attempt: Attempt, tmp_path: Path
) -> None:
    run = attempt(
        "claude",
        stdout=json.dumps(claude_result()),
        session_id=SESSION,
        resume_prompt="Checks failed: pytest exited 1",
    )
    assert run.argv == [
        "claude",
        "-p",
        "Checks failed: pytest exited 1",
        "--output-format",
        "stream-json",
        "--verbose",
        "--permission-mode",
        "acceptEdits",
        "--resume",
        SESSION,
    ]
    assert run.config_dir == str(tmp_path / "agent-config")
    assert (tmp_path / "agent-config").is_dir()


# -- Codex -------------------------------------------------------------------------------------

CODEX_START = ({"type": "thread.started", "thread_id": THREAD}, {"type": "turn.started"})
CODEX_ITEMS = (
    {"type": "item.completed", "item": {"id": "item_0", "type": "reasoning", "text": "**Plan**"}},
    {
        "type": "item.completed",
        "item": {
            "id": "item_1",
            "type": "command_execution",
            "command": "bash -lc ls",
            "aggregated_output": "README.md\n",
            "exit_code": 0,
            "status": "completed",
        },
    },
    {
        "type": "item.completed",
        "item": {
            "id": "item_2",
            "type": "file_change",
            "changes": [{"path": "hello.txt", "kind": "add"}],
            "status": "completed",
        },
    },
    {"type": "item.completed", "item": {"id": "item_3", "type": "agent_message", "text": "Done."}},
)
CODEX_LIMIT = (
    "You've hit your usage limit. Upgrade to Pro (https://chatgpt.com/explore/pro), visit "
    "https://chatgpt.com/codex/settings/usage to purchase more credits or try again at 3:04 PM."
)


def test_codex_success_reads_thread_and_usage(attempt: Attempt) -> None:
    stdout = jsonl(
        *CODEX_START,
        *CODEX_ITEMS,
        {
            "type": "turn.completed",
            "usage": {"input_tokens": 24763, "cached_input_tokens": 24448, "output_tokens": 122},
        },
    )
    run = attempt("codex", stdout=stdout)
    assert run.result == AgentResult(
        outcome=AgentOutcome.SUCCESS,
        session_id=THREAD,
        tokens_in=315,
        tokens_out=122,
        cache_read_tokens=24448,
        num_turns=1,
    )
    assert run.argv == ["codex", "exec", "--json", "--sandbox", "workspace-write", "Add hello.txt"]


@pytest.mark.usefixtures("tokyo_time")
def test_codex_usage_limit_is_rate_limited_until_the_time_it_names(attempt: Attempt) -> None:
    stdout = jsonl(
        *CODEX_START,
        {"type": "error", "message": CODEX_LIMIT},
        {"type": "turn.failed", "error": {"message": CODEX_LIMIT}},
    )
    run = attempt("codex", stdout=stdout, exit_code=1)
    assert run.result.outcome is AgentOutcome.RATE_LIMITED
    assert run.result.session_id == THREAD
    # NOW is 17:53 in Tokyo: the next 3:04 PM is the following day.
    assert run.result.retry_at == utc(2025, 10, 10, 6, 5)  # the end of the minute printed


def test_codex_usage_limit_reached_error_body_gives_resets_at(attempt: Attempt) -> None:
    message = (
        'unexpected status 429 Too Many Requests: {"error":{"type":"usage_limit_reached",'
        '"message":"The usage limit has been reached","plan_type":"plus","resets_at":1760010000}}'
    )
    stdout = jsonl(*CODEX_START, {"type": "turn.failed", "error": {"message": message}})
    run = attempt("codex", stdout=stdout, exit_code=1)
    assert run.result.outcome is AgentOutcome.RATE_LIMITED
    assert run.result.retry_at == 1760010000.0


@pytest.mark.parametrize(
    "message",
    [
        "We\u2019re currently experiencing high demand, which may cause temporary errors.",
        "exceeded retry limit, last status: 502 Bad Gateway",
        "stream disconnected before completion: error sending request",
    ],
)
def test_codex_api_servers_failing_are_waited_out_as_a_rate_limit_is(
    attempt: Attempt, message: str
) -> None:
    # With `request_max_retries = 0` (as docs/agents.md suggests), one 500 failed the task.
    stdout = jsonl(
        *CODEX_START,
        {"type": "error", "message": message},
        {"type": "turn.failed", "error": {"message": message}},
    )
    run = attempt("codex", stdout=stdout, exit_code=1)
    assert run.result.outcome is AgentOutcome.RATE_LIMITED
    assert run.result.reason == f"codex API unavailable: {message}"


def test_codex_turn_failed_for_another_reason_is_a_failure(attempt: Attempt) -> None:
    message = "unexpected status 401 Unauthorized: Missing bearer authentication in header"
    stdout = jsonl(*CODEX_START, {"type": "turn.failed", "error": {"message": message}})
    run = attempt("codex", stdout=stdout, exit_code=1)
    assert run.result == AgentResult(
        outcome=AgentOutcome.FAILED, reason=f"codex: {message}", session_id=THREAD
    )


def test_codex_ending_after_the_model_wrote_a_usage_limit_line_is_no_rate_limit(
    attempt: Attempt,
) -> None:
    said = {"id": "item_3", "type": "agent_message", "text": CODEX_LIMIT}
    stdout = jsonl(*CODEX_START, {"type": "item.completed", "item": said})
    run = attempt("codex", stdout=stdout, exit_code=1)
    assert (run.result.outcome, run.result.reason) == (AgentOutcome.FAILED, "codex exited 1")


def test_codex_resume_keeps_options_before_the_resume_subcommand(attempt: Attempt) -> None:
    stdout = jsonl(
        {"type": "thread.started", "thread_id": THREAD},
        {"type": "turn.started"},
        {
            "type": "turn.completed",
            "usage": {"input_tokens": 10, "cached_input_tokens": 0, "output_tokens": 5},
        },
    )
    run = attempt("codex", stdout=stdout, session_id=THREAD, resume_prompt="- keep going")
    assert run.argv == [
        "codex",
        "exec",
        "--json",
        "--sandbox",
        "workspace-write",
        "resume",
        THREAD,
        " - keep going",  # a leading dash would be read as an option
    ]
    assert run.result.outcome is AgentOutcome.SUCCESS


# -- Gemini ------------------------------------------------------------------------------------

GEMINI_STATS = {
    "models": {
        "gemini-2.5-pro": {
            "api": {"totalRequests": 2, "totalErrors": 0, "totalLatencyMs": 5112},
            "tokens": {
                "input": 200,
                "prompt": 1200,
                "candidates": 50,
                "total": 1280,
                "cached": 1000,
                "thoughts": 30,
                "tool": 0,
            },
            "roles": {},
        }
    },
    "tools": {
        "totalCalls": 1,
        "totalSuccess": 1,
        "totalFail": 0,
        "totalDurationMs": 12,
        "totalDecisions": {"accept": 0, "reject": 0, "modify": 0, "auto_accept": 1},
        "byName": {},
    },
    "files": {"totalLinesAdded": 1, "totalLinesRemoved": 0},
}


def test_gemini_json_success_reads_session_and_tokens(attempt: Attempt) -> None:
    # JsonFormatter prints with JSON.stringify(output, null, 2): a multi-line object.
    stdout = json.dumps(
        {"session_id": GEMINI_SESSION, "response": "Created hello.txt.", "stats": GEMINI_STATS},
        indent=2,
    )
    run = attempt("gemini", stdout=stdout + "\n", stderr="Loaded cached credentials.\n")
    assert run.result == AgentResult(
        outcome=AgentOutcome.SUCCESS,
        session_id=GEMINI_SESSION,
        tokens_in=200,
        tokens_out=50,
        cache_read_tokens=1000,
    )
    assert run.argv == [
        "gemini",
        "--approval-mode",
        "yolo",
        "--output-format",
        "stream-json",
        "--prompt",
        "Add hello.txt",
    ]


def test_gemini_quota_error_is_rate_limited(attempt: Attempt) -> None:
    error = {
        "type": "Error",
        "message": "[API Error: Quota exceeded for quota metric 'Gemini 2.5 Pro Requests' "
        "(RESOURCE_EXHAUSTED)]",
        "code": 1,
    }
    stdout = json.dumps({"session_id": GEMINI_SESSION, "error": error}, indent=2)
    run = attempt("gemini", stdout=stdout + "\n", exit_code=1)
    assert run.result.outcome is AgentOutcome.RATE_LIMITED
    assert run.result.session_id == GEMINI_SESSION


def test_gemini_other_error_is_a_failure(attempt: Attempt) -> None:
    error = {"type": "FatalInputError", "message": "No input provided via stdin.", "code": 42}
    run = attempt("gemini", stdout=json.dumps({"error": error}, indent=2), exit_code=42)
    assert run.result == AgentResult(
        outcome=AgentOutcome.FAILED, reason="gemini FatalInputError: No input provided via stdin."
    )


def test_gemini_resume_passes_the_session(attempt: Attempt) -> None:
    stdout = json.dumps({"session_id": GEMINI_SESSION, "response": "ok", "stats": GEMINI_STATS})
    run = attempt("gemini", stdout=stdout, session_id=GEMINI_SESSION, resume_prompt="Continue")
    assert run.argv == [
        "gemini",
        "--approval-mode",
        "yolo",
        "--output-format",
        "stream-json",
        "--prompt",
        "Continue",
        "--resume",
        GEMINI_SESSION,
    ]


# -- aider -------------------------------------------------------------------------------------

AIDER_BANNER = (
    "Aider v0.86.1\n"
    "Main model: anthropic/claude-sonnet-4-20250514 with diff edit format, infinite output\n"
    "Weak model: anthropic/claude-3-5-haiku-20241022\n"
    "Git repo: .git with 1 files\n"
    "Repo-map: using 4096 tokens, auto refresh\n"
)
AIDER_RATE_LIMIT = (
    'litellm.RateLimitError: AnthropicException - {"type":"error","error":{"type":'
    '"rate_limit_error","message":"This request would exceed the rate limit for your '
    'organization of 50,000 input tokens per minute."}}\n'
    "The API provider has rate limited you. Try again later or check your quotas.\n"
)
AIDER_DONE = (
    "hello.txt\n"
    "Applied edit to hello.txt\n"
    "Commit 1a2b3c4 feat: add hello.txt\n"
    "Tokens: 2.4k sent, 1.2k cache write, 12k cache hit, 95 received. "
    "Cost: $0.0123 message, $0.0123 session.\n"
)


def test_aider_success_reads_usage_lines(attempt: Attempt) -> None:
    run = attempt("aider", stdout=AIDER_BANNER + AIDER_DONE)
    assert run.result == AgentResult(
        outcome=AgentOutcome.SUCCESS,
        cost_usd=0.0123,
        tokens_in=2400,
        tokens_out=95,
        cache_read_tokens=12000,
        cache_write_tokens=1200,
    )
    assert run.argv == ["aider", "--yes-always", "--message-file", run.argv[-1]]


def test_numbers_no_float_holds_are_no_usage_not_a_failed_attempt(attempt: Attempt) -> None:
    # An agent's own output is untrusted: JSON's 1e999 and NaN, an integer past a float's
    # range and a `$1.2.3` made the manager fail the attempt with an internal error.
    stdout = json.dumps(claude_result(total_cost_usd=float("inf"), num_turns=10**400))
    run = attempt("claude", stdout=stdout.replace("Infinity", "1e999") + "\n")
    assert run.result.outcome is AgentOutcome.SUCCESS
    assert (run.result.cost_usd, run.result.num_turns) == (None, None)
    run = attempt("claude", stdout=json.dumps(claude_result(usage={"input_tokens": NAN})) + "\n")
    assert (run.result.outcome, run.result.tokens_in) == (AgentOutcome.SUCCESS, None)
    done = AIDER_DONE.replace("$0.0123 session", "$1.2.3 session").replace("2.4k", "2.4.1k")
    run = attempt("aider", stdout=AIDER_BANNER + done)
    assert (run.result.outcome, run.result.cost_usd) == (AgentOutcome.SUCCESS, None)


NAN = float("nan")


def test_aider_retried_rate_limit_then_success_is_success(attempt: Attempt) -> None:
    stdout = AIDER_BANNER + AIDER_RATE_LIMIT + "Retrying in 0.2 seconds...\n" + AIDER_DONE
    assert attempt("aider", stdout=stdout).result.outcome is AgentOutcome.SUCCESS


def test_aider_giving_up_on_a_rate_limit_exits_0_but_is_rate_limited(attempt: Attempt) -> None:
    stdout = AIDER_BANNER + AIDER_RATE_LIMIT + "Retrying in 32.0 seconds...\n" + AIDER_RATE_LIMIT
    run = attempt("aider", stdout=stdout)
    assert run.result.outcome is AgentOutcome.RATE_LIMITED
    assert run.result.reason.startswith("aider rate limited: litellm.RateLimitError")
    # As aider 0.86.2 prints a 429 insufficient_quota, wrapped at 80 columns; swarm stops it
    # at its first retry.
    quota = (
        "litellm.RateLimitError: RateLimitError: OpenAIException - You exceeded your \n"
        "current quota, please check your plan and billing details.\n"
        "The API provider has rate limited you. Try again later or check your quotas.\n"
        "Retrying in 0.2 seconds...\n"
    )
    run = attempt("aider", stdout=AIDER_BANNER + quota, kill=True)
    assert run.result.outcome is AgentOutcome.RATE_LIMITED
    assert run.result.reason == (
        "aider rate limited: litellm.RateLimitError: RateLimitError: OpenAIException - You "
        "exceeded your current quota, please check your plan and billing details."
    )


AIDER_SERVER_ERROR = (
    "litellm.InternalServerError: InternalServerError: OpenAIException - The server \n"
    "had an error\n"
    "The API provider's servers are down or overloaded.\n"
)
AIDER_BAD_KEY = (
    "litellm.AuthenticationError: AuthenticationError: OpenAIException - Incorrect \n"
    "API key provided: sk-proj-****\n"
    "The API provider is not able to authenticate you. Check your API key.\n"
)


def test_aider_exiting_0_on_an_api_error_is_not_a_success(attempt: Attempt) -> None:
    # aider exits 0 when it gives up: a refused key was a task with "no changes", its servers
    # down one done with whatever it edited before.
    run = attempt("aider", stdout=AIDER_BANNER + AIDER_BAD_KEY)
    assert run.result.outcome is AgentOutcome.FAILED
    # The whole message, not cut where aider wrapped it at 80 columns ("... - Incorrect").
    assert run.result.reason == (
        "aider: litellm.AuthenticationError: AuthenticationError: OpenAIException - Incorrect "
        "API key provided: sk-proj-****"
    )
    # Only its own wrapped lines are joined: a test's output line ending in a blank, just
    # before the error, hid the error (it no longer began a line) and the attempt passed.
    tested = "FAILED tests/test_x.py::test_y - assert 1 == \n"
    run = attempt("aider", stdout=AIDER_BANNER + tested + AIDER_BAD_KEY)
    assert run.result.outcome is AgentOutcome.FAILED
    gave_up = AIDER_SERVER_ERROR + "Retrying in 32.0 seconds...\n" + AIDER_SERVER_ERROR
    run = attempt("aider", stdout=AIDER_BANNER + AIDER_DONE + gave_up)
    assert run.result.outcome is AgentOutcome.RATE_LIMITED
    assert run.result.reason.startswith("aider API unavailable: litellm.InternalServerError")
    # Its own retries of a server error are its own: not cut short as a rate limit's are.
    assert not AiderAdapter().retrying_rate_limit(
        AIDER_BANNER + AIDER_SERVER_ERROR + "Retrying in 8.0 seconds...\n"
    )
    # One it got past is no failure.
    run = attempt("aider", stdout=AIDER_BANNER + AIDER_BAD_KEY + AIDER_DONE)
    assert run.result.outcome is AgentOutcome.SUCCESS
    timed_out = "litellm.Timeout: Connection timed out after 600.0 seconds\n"
    run = attempt("aider", stdout=AIDER_BANNER + timed_out)
    assert run.result.reason == f"aider API unavailable: {timed_out.strip()}"


def test_a_server_error_an_agents_own_output_mentions_is_not_taken_for_one(
    attempt: Attempt,
) -> None:
    # A test of an HTTP client prints such lines: read as the provider's, a failed command was
    # retried for minutes and the provider's concurrency halved.
    tests = "FAILED test_client - unexpected status 500\nE   API Error: 500 from the mock\n"
    result = adapter_for("command").interpret(exit_code=1, log_text=tests, now=0.0)
    assert result.outcome is AgentOutcome.FAILED
    run = attempt("aider", stdout=AIDER_BANNER + AIDER_DONE + tests)  # --auto-test output
    assert run.result.outcome is AgentOutcome.SUCCESS


def test_aider_cannot_resume_a_session() -> None:
    adapter = AiderAdapter()
    assert adapter.supports_resume is False
    argv = adapter.argv(
        PROFILES["aider"],
        values={"prompt": "x", "prompt_file": "/logs/prompt-2.md"},
        session_id="ignored",
        resume_prompt="fix the tests",
    )
    assert argv == ["aider", "--yes-always", "--message-file", "/logs/prompt-2.md"]


# -- generic command ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stdout", "code", "expected"),
    [
        ("wrote hello.txt\n", 0, AgentResult(outcome=AgentOutcome.SUCCESS)),
        (
            "working\nboom: disk full\n",
            3,
            AgentResult(outcome=AgentOutcome.FAILED, reason="agent exited 3: boom: disk full"),
        ),
        (
            "Error: 429 Too Many Requests\n",
            1,
            AgentResult(
                outcome=AgentOutcome.RATE_LIMITED,
                reason="agent rate limited: Error: 429 Too Many Requests",
            ),
        ),
    ],
)
def test_command_adapter_reads_exit_code_then_messages(
    tmp_path: Path,
    write_agent: Callable[[str], list[str]],
    stdout: str,
    code: int,
    expected: AgentResult,
) -> None:
    argv = write_agent(f"import sys\nsys.stdout.write({stdout!r})\nsys.exit({code})\n")
    adapter = adapter_for("command")
    log_path = tmp_path / "attempt-1.log"
    rendered = adapter.argv(argv, values={}, session_id=None, resume_prompt=None)
    env = adapter.env(base=clean_env(), task_id="t1", config_dir=tmp_path / "cfg")
    agent = supervisor.spawn(rendered, cwd=tmp_path, env=env, log_path=log_path)
    exit_code = agent.wait(timeout=60)
    result = adapter.interpret(exit_code=exit_code, log_text=log_path.read_text(), now=NOW)
    assert result == expected


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (-9, "agent killed by signal 9: half"),
        (None, "agent ended without an exit status (none was recorded): half"),
    ],
)
def test_an_agent_killed_or_ended_unseen_says_so(code: int | None, reason: str) -> None:
    result = CommandAdapter().interpret(exit_code=code, log_text="working\nhalf\n", now=NOW)
    assert result == AgentResult(outcome=AgentOutcome.FAILED, reason=reason)


def test_command_adapter_does_not_treat_an_early_prompt_echo_as_a_rate_limit() -> None:
    log = "prompt: handle rate_limit_error in the client\n" + "step\n" * 60 + "failed\n"
    result = CommandAdapter().interpret(exit_code=1, log_text=log, now=NOW)
    assert result == AgentResult(outcome=AgentOutcome.FAILED, reason="agent exited 1: failed")


# -- registry, argv safety -----------------------------------------------------------------------


def test_adapter_for_maps_profiles_and_falls_back_to_command() -> None:
    assert isinstance(adapter_for("claude"), ClaudeAdapter)
    assert isinstance(adapter_for("codex"), CodexAdapter)
    assert isinstance(adapter_for("aider"), AiderAdapter)
    assert isinstance(adapter_for("gemini"), GeminiAdapter)
    for other in ("command", "scripted", "no-such-agent"):
        assert isinstance(adapter_for(other), CommandAdapter)
    assert profile_of(["/usr/local/bin/claude", "-p", "{prompt}"]) == "claude"
    assert profile_of(["python3", "agent.py"]) == "command"


@pytest.mark.parametrize("profile", ["claude", "codex", "gemini"])
def test_a_session_id_that_looks_like_an_option_is_refused(profile: str) -> None:
    with pytest.raises(ValueError, match="refusing session id"):
        adapter_for(profile).argv(
            PROFILES[profile],
            values={},
            session_id="--dangerously-skip-permissions",
            resume_prompt=None,
        )


# Parses its command line as CLIs do (commander, clap): an argument that starts with `-` is an
# option, and an unknown one ends it. Else it does what its prompt says: write a file.
STRICT_CLI = """
import pathlib, sys
prompt = sys.argv[1]
if prompt.startswith('-'):
    sys.exit(f"error: unknown option '{prompt.splitlines()[0]}'")
pathlib.Path('prompt.txt').write_text(prompt)
"""


@pytest.mark.parametrize("prompt", ["- add the tests\n- fix the lint", "--help"])
def test_a_prompt_that_starts_with_a_dash_reaches_the_agent_as_its_prompt(
    repo: Path, write_agent: Callable[[str], list[str]], prompt: str
) -> None:
    agent = write_agent(STRICT_CLI)
    out = swarm(repo, "run", "--agent", " ".join([*agent, "{prompt}"]), "-t", f"t={prompt}")
    assert out.returncode == 0, out.stdout + out.stderr
    got = git(repo, "show", "swarm/t:prompt.txt")
    assert got.lstrip().startswith(prompt)


def test_a_prompt_inside_a_longer_argument_reaches_the_agent_byte_for_byte(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # `--task={prompt}` is one option with its value: nothing to protect, and the space a
    # positional prompt starting with `-` gets would change the task's text.
    agent = write_agent("import pathlib, sys\npathlib.Path('arg.txt').write_text(sys.argv[1])\n")
    out = swarm(
        repo, "run", "--agent", " ".join([*agent, "--task={prompt}"]), "-t", "t=- add the tests"
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert git(repo, "show", "swarm/t:arg.txt").startswith("--task=- add the tests")


def test_an_untrusted_session_id_in_output_is_not_recorded() -> None:
    log = json.dumps(claude_result(session_id="--evil"))
    assert ClaudeAdapter().interpret(exit_code=0, log_text=log, now=NOW).session_id is None


def test_first_attempt_argv_renders_the_template_for_every_adapter() -> None:
    values = {"prompt": "Add {task_id} hello", "prompt_file": "/l/p.md", "task_id": "t1"}
    assert ClaudeAdapter().argv(
        PROFILES["claude"], values=values, session_id=None, resume_prompt=None
    ) == [
        "claude",
        "-p",
        "Add {task_id} hello",  # task text is never expanded
        "--output-format",
        "stream-json",
        "--verbose",
        "--permission-mode",
        "acceptEdits",
    ]
    assert (
        CodexAdapter().argv(PROFILES["codex"], values=values, session_id=None, resume_prompt=None)[
            -1
        ]
        == "Add {task_id} hello"
    )


# -- classify_rate_limit -------------------------------------------------------------------------


# NOW is 2025-10-09 10:53:20 in Berlin (CEST, UTC+2).
@pytest.mark.parametrize(
    ("text", "retry_at"),
    [
        ("Claude AI usage limit reached|1760004000", 1760004000.0),
        ("You've hit your limit · resets 4pm (Europe/Berlin)", utc(2025, 10, 9, 14, 1)),
        ("You\u2019ve hit your limit · resets 10am (Europe/Berlin)", utc(2025, 10, 10, 8, 1)),
        ("You've hit your limit · resets Oct 12 at 4pm (America/Recife)", utc(2025, 10, 12, 19, 1)),
        ("You've hit your limit · resets Oct 16, 11:30am (UTC)", utc(2025, 10, 16, 11, 31)),
        ("You've hit your limit · resets Jan 2, 9am (UTC)", utc(2026, 1, 2, 9, 1)),
        # Claude Code names the window: 5-hour, weekly, Opus, Sonnet, session
        ("You've hit your 5-hour limit · resets 11:35pm (UTC)", utc(2025, 10, 9, 23, 36)),
        ("You've hit your weekly limit · resets Oct 12, 9am (UTC)", utc(2025, 10, 12, 9, 1)),
        ("You've hit your Opus limit · resets 4pm (UTC)", utc(2025, 10, 9, 16, 1)),
        ("You've hit your session limit · resets 4pm (UTC)", utc(2025, 10, 9, 16, 1)),
        ('{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}', None),
        ('{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}', None),
        ("HTTP/1.1 429 Too Many Requests", None),
        ('{"error":{"type":"usage_limit_reached","resets_at":1760010000}}', 1760010000.0),
    ],
)
def test_classify_rate_limit_message_forms(text: str, retry_at: float | None) -> None:
    assert classify_rate_limit(text, now=NOW) == (True, retry_at)


@pytest.mark.usefixtures("tokyo_time")
@pytest.mark.parametrize(
    "text",
    [
        "You've hit your limit · resets Dec 31, 9999 11:59pm",  # past 9999 in UTC: overflow
        "You've hit your usage limit. Try again at Jan 1st, 0001 12:00 AM.",  # before year 1
        "You've hit your limit · resets Dec 31, 9999 11:30pm (Pacific/Kiritimati)",
    ],
)
def test_a_stated_reset_outside_what_a_date_holds_is_no_reset(text: str) -> None:
    # It raised (OverflowError, ValueError): the task ended "internal error" with its work
    # left off its branch, and `swarm stop` of a dead manager's run crashed on it every time.
    assert classify_rate_limit(text, now=NOW) == (True, None)


@pytest.mark.usefixtures("tokyo_time")
def test_classify_rate_limit_wall_clock_without_zone_is_local_time() -> None:
    # NOW is 17:53:20 in Tokyo.
    assert classify_rate_limit("You've hit your limit · resets 6pm", now=NOW) == (
        True,
        utc(2025, 10, 9, 9, 1),
    )
    assert classify_rate_limit("You've hit your limit · resets 4pm", now=NOW) == (
        True,
        utc(2025, 10, 10, 7, 1),
    )
    assert classify_rate_limit(
        "You've hit your usage limit. Try again at Oct 12th, 2025 3:04 PM.", now=NOW
    ) == (True, utc(2025, 10, 12, 6, 5))


@pytest.mark.usefixtures("tokyo_time")
@pytest.mark.parametrize(
    ("printed", "retry_at"),
    [
        ("5:53 PM", utc(2025, 10, 9, 8, 54)),  # this minute: by its end, not tomorrow
        ("5:52 PM", utc(2025, 10, 9, 8, 53)),  # the minute before: already past, now
        ("5:51 PM", utc(2025, 10, 10, 8, 52)),  # two minutes ago: tomorrow
        ("5:54 PM", utc(2025, 10, 9, 8, 55)),  # printed cut down to the minute: by its end
    ],
)
def test_a_reset_printed_to_the_minute_in_this_minute_is_not_tomorrow(
    printed: str, retry_at: float
) -> None:
    # NOW is 17:53:20 in Tokyo.
    text = f"You've hit your usage limit. Upgrade to Pro or try again at {printed}."
    assert classify_rate_limit(text, now=NOW) == (True, retry_at)


def test_the_minute_before_midnight_just_after_it_is_now_not_tonight() -> None:
    just_after = utc(2025, 10, 10, 0, 0) + 30  # 00:00:30 UTC
    assert classify_rate_limit("You've hit your limit · resets 11:59pm (UTC)", now=just_after) == (
        True,
        utc(2025, 10, 10, 0, 0),
    )  # the end of that minute: now


@pytest.mark.parametrize(
    "text",
    [
        "All 12 tests passed",
        "Added rate limiting middleware to the API",
        "resets 4pm",  # a time alone is not a limit
        "error: status 500 Internal Server Error",
    ],
)
def test_classify_rate_limit_ignores_other_text(text: str) -> None:
    assert classify_rate_limit(text, now=NOW) == (False, None)


# -- backoff_delay -------------------------------------------------------------------------------


class _Top(random.Random):
    """Always draws the top of the range, to expose the ceiling."""

    def random(self) -> float:
        return 1.0


def test_backoff_delay_ceiling_doubles_up_to_the_cap() -> None:
    ceilings = [backoff_delay(n, rng=_Top()) for n in (1, 2, 3, 5, 6, 40, 10_000)]
    assert ceilings == [30, 60, 120, 480, 900, 900, 900]
    assert backoff_delay(3, base=1, cap=5, rng=_Top()) == 4


def test_backoff_delay_is_jittered_within_bounds() -> None:
    rng = random.Random(7)
    for n in range(1, 12):
        delays = [backoff_delay(n, rng=rng) for _ in range(50)]
        assert all(0 <= d <= min(900, 30 * 2 ** (n - 1)) for d in delays)
        assert len(set(delays)) > 1


def test_backoff_delay_needs_an_attempt_number() -> None:
    with pytest.raises(ValueError, match="attempt must be 1 or more"):
        backoff_delay(0)


def test_claude_session_total_cost_is_flagged_from_real_cli_output() -> None:
    fixtures = Path(__file__).parent / "fixtures" / "claude"
    claude = adapter_for("claude")
    first = claude.interpret(exit_code=0, log_text=(fixtures / "success.json").read_text(), now=0.0)
    resumed = claude.interpret(
        exit_code=0, log_text=(fixtures / "resumed.json").read_text(), now=0.0
    )
    assert first.cost_is_session_total is False
    assert resumed.cost_is_session_total is True
    assert resumed.cost_usd == pytest.approx(0.0032)


# -- what the real CLIs print (captured from the end-to-end runs, see docs/agents.md) ---------

GEMINI_STREAM_OK = jsonl(
    {"type": "init", "session_id": GEMINI_SESSION, "model": "gemini-2.5-pro"},
    {"type": "message", "role": "user", "content": "write hello.txt"},
    {"type": "tool_use", "tool_name": "write_file", "tool_id": "w1", "parameters": {}},
    {"type": "tool_result", "tool_id": "w1", "status": "success"},
    {"type": "message", "role": "assistant", "content": "Wrote it.", "delta": True},
    {
        "type": "result",
        "status": "success",
        "stats": {
            "total_tokens": 2460,
            "input_tokens": 2400,
            "output_tokens": 60,
            "cached": 400,
            "input": 2000,
            "models": {},
        },
    },
)
GEMINI_QUOTA_MESSAGE = (
    "[API Error: You exceeded your current quota, please check your plan and billing details."
    "\nSuggested retry after {delay}.]\nPlease wait and try again later."
)


def gemini_stream_error(message: str, *, replied: bool) -> str:
    events: list[dict[str, Any]] = [
        {"type": "init", "session_id": GEMINI_SESSION, "model": "gemini-2.5-pro"},
        {"type": "message", "role": "user", "content": "write hello.txt"},
    ]
    if replied:
        events.append({"type": "tool_use", "tool_name": "write_file", "tool_id": "w1"})
    events.append(
        {"type": "result", "status": "error", "error": {"type": "unknown", "message": message}}
    )
    return jsonl(*events)


def test_gemini_stream_json_success_reads_session_and_tokens() -> None:
    result = GeminiAdapter().interpret(exit_code=0, log_text=GEMINI_STREAM_OK, now=0.0)
    assert result == AgentResult(
        outcome=AgentOutcome.SUCCESS,
        session_id=GEMINI_SESSION,
        tokens_in=2000,
        tokens_out=60,
        cache_read_tokens=400,
    )


def test_gemini_first_request_limited_is_not_resumable_and_reset_is_relative() -> None:
    log = gemini_stream_error(GEMINI_QUOTA_MESSAGE.format(delay="7200s"), replied=False)
    result = GeminiAdapter().interpret(exit_code=1, log_text=log, now=1000.0)
    assert result.outcome is AgentOutcome.RATE_LIMITED
    assert result.retry_at == 1000.0 + 7200
    # Gemini CLI would say "No previous sessions found for this project".
    assert result.session_id is None


def test_a_reset_time_no_clock_shows_is_no_reset_and_a_huge_count_no_count(
    attempt: Attempt,
) -> None:
    # `time.localtime` of such a reset failed the task (internal error), and the gate event
    # kept broke `swarm status` for good; a count past 64 bits failed the attempt's record
    # before its checkpoint, its edits left off the branch.
    log = gemini_stream_error(GEMINI_QUOTA_MESSAGE.format(delay="1" + "0" * 17 + "s"), replied=True)
    result = GeminiAdapter().interpret(exit_code=1, log_text=log, now=1000.0)
    assert (result.outcome, result.retry_at) == (AgentOutcome.RATE_LIMITED, None)
    stdout = jsonl(
        {
            **rate_limit_event("rejected", 0),
            "rate_limit_info": {"status": "rejected", "resetsAt": 1e300},
        },
        claude_result(is_error=True, api_error_status=429, usage={"input_tokens": 10**30}),
    )
    run = attempt("claude", stdout=stdout, exit_code=1)
    assert (run.result.outcome, run.result.retry_at) == (AgentOutcome.RATE_LIMITED, None)
    assert run.result.tokens_in is None
    assert units.local_time(1e300, "%H:%M") == "never"


@pytest.mark.parametrize(
    ("stated", "kept"),
    [
        ({"cost_usd": -5000.0, "tokens_in": 100}, {"cost_usd": None, "tokens_in": 100}),
        ({"cost_usd": 1e308, "tokens_out": 2**63 - 1}, {"cost_usd": None, "tokens_out": None}),
        ({"cost_usd": 0.25, "tokens_in": -3}, {"cost_usd": 0.25, "tokens_in": None}),
        (
            {"cache_read_tokens": 10**15, "num_turns": 10**16},
            {"cache_read_tokens": 10**15, "num_turns": None},
        ),
    ],
)
def test_usage_no_attempt_could_have_is_recorded_as_unknown(
    stated: dict[str, float], kept: dict[str, float | None]
) -> None:
    result = accountable(AgentResult(outcome=AgentOutcome.SUCCESS, **stated))  # type: ignore[arg-type]
    assert {k: getattr(result, k) for k in kept} == kept


@pytest.mark.parametrize(
    "message",
    [
        (
            '[API Error: {"error":{"code":503,"message":"The model is overloaded. We are '
            'experiencing high demand. Please try again later.","status":"UNAVAILABLE"}}]'
        ),
        (
            '[API Error: {"error":{"code":500,"message":"Internal error encountered.","status":'
            '"INTERNAL"}}]'
        ),
        "[API Error: terminated]",  # the reply's stream cut off
    ],
)
def test_gemini_api_servers_failing_are_waited_out_as_a_rate_limit_is(message: str) -> None:
    # The stream's result names no code: a 503 "overloaded" (documented as a rate limit), a
    # 500 or a cut stream failed the task for good.
    log = gemini_stream_error(message, replied=True)
    result = GeminiAdapter().interpret(exit_code=1, log_text=log, now=50.0)
    assert (result.outcome, result.session_id) == (AgentOutcome.RATE_LIMITED, GEMINI_SESSION)
    assert result.reason == f"gemini API unavailable: unknown: {message}"
    bad_key = (
        '[API Error: {"error":{"code":400,"message":"API key not valid.","status":'
        '"INVALID_ARGUMENT"}}]'
    )
    refused = GeminiAdapter().interpret(
        exit_code=1, log_text=gemini_stream_error(bad_key, replied=True), now=50.0
    )
    assert refused.outcome is AgentOutcome.FAILED


@pytest.mark.parametrize(
    ("capture", "said"),
    [
        ("close", "exception TypeError: fetch failed sending request"),  # connection reset
        ("refused", "exception TypeError: fetch failed sending request"),
        ("dns", "exception TypeError: fetch failed sending request"),
        ("malformed", "Expected property name or '}' in JSON at position 1"),
    ],
)
def test_gemini_out_of_reach_of_its_api_waits_it_out_as_a_server_error(
    capture: str, said: str
) -> None:
    # Real Gemini CLI 0.61.0 against a local API that resets the connection, is not there,
    # has no such host or sends garbage: "gemini unknown: ..." failed the task for good.
    log = (FIXTURES / "gemini" / f"v0.61.0-api-{capture}.log").read_text()
    result = GeminiAdapter().interpret(exit_code=1, log_text=log, now=NOW)
    assert result.outcome is AgentOutcome.RATE_LIMITED
    assert result.reason == f"gemini API unavailable: unknown: [API Error: {said}]"
    assert result.retry_at is None


def test_a_killed_gemini_is_not_told_by_its_start_up_profilers_note() -> None:
    log = (
        "Loaded cached credentials.\n"
        "[STARTUP] Cannot measure phase 'cleanup_ops': start mark 'cleanup_ops' not found\n"
    )
    result = GeminiAdapter().interpret(exit_code=-9, log_text=log, now=0.0)
    assert result.reason == "gemini killed by signal 9: Loaded cached credentials."


def test_a_gemini_daily_quota_waits_for_midnight_pacific_time() -> None:
    # No retry delay stated: taken for a throttle, its retries went within minutes, then the
    # task failed; Google's daily quotas reset at midnight Pacific time.
    now = datetime(2026, 12, 5, 15, 0, tzinfo=UTC).timestamp()  # 07:00 in California
    daily = "You have exhausted your daily quota on this model."
    result = GeminiAdapter().interpret(
        exit_code=1, log_text=gemini_stream_error(daily, replied=True), now=now
    )
    assert result.outcome is AgentOutcome.RATE_LIMITED
    assert result.retry_at == datetime(2026, 12, 6, 8, 0, tzinfo=UTC).timestamp()
    minute = GEMINI_QUOTA_MESSAGE.format(delay="30s")  # a per-minute quota keeps its delay
    result = GeminiAdapter().interpret(
        exit_code=1, log_text=gemini_stream_error(minute, replied=True), now=now
    )
    assert result.retry_at == now + 30


def test_gemini_limited_after_a_reply_keeps_its_session() -> None:
    log = gemini_stream_error(GEMINI_QUOTA_MESSAGE.format(delay="1s"), replied=True)
    result = GeminiAdapter().interpret(exit_code=1, log_text=log, now=50.0)
    assert (result.outcome, result.session_id, result.retry_at) == (
        AgentOutcome.RATE_LIMITED,
        GEMINI_SESSION,
        51.0,
    )


def test_gemini_env_trusts_the_worktree_and_caps_its_own_retries(tmp_path: Path) -> None:
    env = GeminiAdapter().env(base={"PATH": "/bin"}, task_id="t", config_dir=tmp_path / "cfg")
    assert env["GEMINI_CLI_TRUST_WORKSPACE"] == "true"
    defaults = json.loads(Path(env["GEMINI_CLI_SYSTEM_DEFAULTS_PATH"]).read_text())
    assert defaults == {"general": {"maxAttempts": 1}}
    mine = {"GEMINI_CLI_TRUST_WORKSPACE": "false", "GEMINI_CLI_SYSTEM_DEFAULTS_PATH": "/etc/x"}
    env = GeminiAdapter().env(base=mine, task_id="t", config_dir=tmp_path / "other")
    assert env == mine
    assert not (tmp_path / "other").exists()


AIDER_RETRYING = (
    "litellm.RateLimitError: RateLimitError: OpenAIException - Rate limit reached for\n"
    "requests\n"
    "The API provider has rate limited you. Try again later or check your quotas.\n"
    "Retrying in 0.2 seconds...\n"
)


def test_aider_is_seen_retrying_a_rate_limit_only_right_after_one() -> None:
    adapter = AiderAdapter()
    assert adapter.retrying_rate_limit(AIDER_BANNER + AIDER_RETRYING)
    # Still waiting after its own output moved on (a reply came): not a rate limit any more.
    moved_on = AIDER_BANNER + AIDER_RETRYING + "Tokens: 914 sent, 11 received.\n"
    assert not adapter.retrying_rate_limit(moved_on)
    timeout = "litellm.Timeout: Connection timed out\nRetrying in 0.2 seconds...\n"
    assert not adapter.retrying_rate_limit(AIDER_BANNER + timeout)
    assert not adapter.retrying_rate_limit("")


def test_aider_is_told_not_to_edit_gitignore_and_its_files_are_droppings(tmp_path: Path) -> None:
    adapter = AiderAdapter()
    assert adapter.env(base={}, task_id="t", config_dir=tmp_path)["AIDER_GITIGNORE"] == "false"
    mine = {"AIDER_GITIGNORE": "true"}
    assert adapter.env(base=mine, task_id="t", config_dir=tmp_path) == mine
    assert ".aider.chat.history.md" in adapter.droppings
    assert CodexAdapter().droppings == ()


def test_codex_reads_cache_writes_when_reported() -> None:
    log = jsonl(
        {"type": "thread.started", "thread_id": THREAD},
        {
            "type": "turn.completed",
            "usage": {
                "input_tokens": 2400,
                "cached_input_tokens": 400,
                "cache_write_input_tokens": 100,
                "output_tokens": 60,
                "reasoning_output_tokens": 0,
            },
        },
    )
    result = CodexAdapter().interpret(exit_code=0, log_text=log, now=0.0)
    assert (result.tokens_in, result.cache_read_tokens, result.cache_write_tokens) == (
        2000,
        400,
        100,
    )
