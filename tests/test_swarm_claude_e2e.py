"""`swarm run` with the real Claude Code CLI against the local Anthropic stub (no network).

The first request of the task is answered 429: Claude Code reports it (`is_error: true`,
`api_error_status: 429`), swarm classifies the attempt as rate limited, waits, and resumes the
same session in the same worktree, where the model's Write call really changes a file.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import anthropic_stub as stub_module
from tests.anthropic_stub import (
    AnthropicStub,
    ApiError,
    Text,
    ToolUse,
    claude_env,
    rate_limited,
    without_claude_vars,
)
from tests.conftest import git
from tests.test_claude_e2e import CLAUDE

anthropic_stub = stub_module.anthropic_stub

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CLAUDE is None, reason="Claude Code CLI not installed (see .ci/run)"),
]


def swarm_with_claude(
    repo: Path, stub: AnthropicStub, manifest: str | None, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run `swarm run MANIFEST` (or `swarm ARGS`) with the real claude talking to *stub*."""
    assert CLAUDE is not None
    env = without_claude_vars(dict(os.environ)) | claude_env(stub, max_retries=0)
    env["PATH"] = f"{Path(CLAUDE).parent}{os.pathsep}{env['PATH']}"
    if manifest is not None:
        path = repo.parent / "tasks.toml"
        path.write_text(manifest)
        args = ("run", str(path))
    return subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", *args],
        cwd=repo, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    "first",
    [
        rate_limited(),
        # The API's servers failing past the CLI's retries: a task failed at once, for good.
        ApiError(status=500, type="api_error", message="Internal server error", retry_after=None),
    ],
    ids=["429", "500"],
)
def test_rate_limited_first_request_is_resumed_in_the_same_session(
    repo: Path, anthropic_stub: AnthropicStub, first: ApiError
) -> None:
    assert CLAUDE is not None
    target = repo.parent / "repo.swarm" / "greet" / "hello.txt"
    anthropic_stub.queue(
        first,
        ToolUse(name="Write", input={"file_path": str(target), "content": "hello, world\n"}),
        Text(text="Wrote hello.txt."),
    )
    out = swarm_with_claude(
        repo,
        anthropic_stub,
        '[defaults]\nagent = "claude"\nretries = 2\nrate_limit_backoff = "0.2s"\n'
        '[[task]]\nid = "greet"\nprompt = "Create hello.txt saying hello, world"\n',
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert git(repo, "show", "swarm/greet:hello.txt") == "hello, world"
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
        rows = db.execute(
            "SELECT number, outcome, session_id FROM attempts ORDER BY number"
        ).fetchall()
    assert [(n, o) for n, o, _ in rows] == [(1, "rate_limited"), (2, "succeeded")]
    assert rows[0][2] is not None
    assert rows[0][2] == rows[1][2]  # the same session, resumed
    # The resumed request carried the first prompt: the conversation was not lost.
    last = anthropic_stub.agent_requests()[-1]
    assert any("hello, world" in text for text in last.user_texts())
    status = json.loads(swarm_with_claude(repo, anthropic_stub, None, "status", "--json").stdout)
    assert status["tasks"][0]["state"] == "done"
    assert anthropic_stub.api_key not in out.stdout + out.stderr


def test_placeholder_repaired_in_the_same_session_and_cost_not_double_counted(
    repo: Path, anthropic_stub: AnthropicStub
) -> None:
    assert CLAUDE is not None
    target = repo.parent / "repo.swarm" / "calc" / "calc.py"
    anthropic_stub.queue(
        ToolUse(name="Write", input={"file_path": str(target), "content": "# TODO: add\n"}),
        Text(text="Done."),
        ToolUse(name="Write", input={"file_path": str(target), "content": "ADD = 1 + 1\n"}),
        Text(text="Fixed."),
    )
    out = swarm_with_claude(
        repo,
        anthropic_stub,
        '[defaults]\nagent = "claude"\nno_placeholders = true\nrepair = 1\n'
        '[[task]]\nid = "calc"\nprompt = "Write calc.py"\n',
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert git(repo, "show", "swarm/calc:calc.py") == "ADD = 1 + 1"
    # The repair prompt carried the placeholder the check found.
    assert any("TODO: add" in t for t in anthropic_stub.agent_requests()[-1].user_texts())
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
        attempt_costs = [c for (c,) in db.execute("SELECT cost_usd FROM attempts ORDER BY number")]
        (task_cost,) = db.execute("SELECT cost_usd FROM tasks").fetchone()
        log = db.execute("SELECT log_path FROM attempts WHERE number = 2").fetchone()[0]
    last = [json.loads(x) for x in Path(log).read_text().splitlines() if x.startswith("{")][-1]
    # Claude reports the session's running total after --resume; swarm stores deltas.
    assert task_cost == pytest.approx(sum(attempt_costs))
    assert task_cost <= last["total_cost_usd"] + 1e-9
    assert all(c > 0 for c in attempt_costs)


@pytest.mark.parametrize(
    "tool",
    [
        ToolUse(name="EnterWorktree", input={"name": "side"}),
        ToolUse(
            name="Task",
            input={
                "description": "split",
                "prompt": "do half",
                "subagent_type": "general-purpose",
                "isolation": "worktree",
            },
        ),
    ],
    ids=["EnterWorktree", "subagent isolation"],
)
def test_claude_codes_own_worktrees_are_refused_and_the_task_works_in_its_own(
    repo: Path, anthropic_stub: AnthropicStub, tool: ToolUse
) -> None:
    """The CLI makes its worktrees under the *main* checkout's `.claude/worktrees/`, on a new
    branch: files in your checkout and a branch in your refs (the guard put both back and the
    task failed, leaving a locked registration in `git worktree list`)."""
    target = repo.parent / "repo.swarm" / "greet" / "hello.txt"
    anthropic_stub.queue(
        tool,
        ToolUse(name="Write", input={"file_path": str(target), "content": "hi\n"}),
        Text(text="Wrote it."),
    )
    out = swarm_with_claude(
        repo, anthropic_stub, '[[task]]\nid = "greet"\nagent = "claude"\nprompt = "hi"\n'
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert git(repo, "show", "swarm/greet:hello.txt") == "hi"
    assert git(repo, "for-each-ref", "--format=%(refname)", "refs/heads") == (
        "refs/heads/main\nrefs/heads/swarm/greet"
    )
    assert len(git(repo, "worktree", "list", "--porcelain").split("\n\n")) == 2
    assert git(repo, "status", "--porcelain", "--ignored") == ""
    refused = anthropic_stub.agent_requests()[1].tool_results()[-1]
    assert refused.get("is_error") is True
    assert "already runs in a git worktree of its own" in json.dumps(refused)


def sign_in(home: Path, token: str, *, expires_in: float = 3600.0) -> Path:
    """What `claude` + `/login` leaves on Linux: a credentials file and the account."""
    folder = home / ".claude"
    folder.mkdir(exist_ok=True)
    path = folder / ".credentials.json"
    oauth = {
        "accessToken": token,
        "refreshToken": "refresh-token-of-the-user",
        "expiresAt": int((time.time() + expires_in) * 1000),
        "scopes": ["user:inference", "user:profile", "user:sessions:claude_code"],
        "subscriptionType": "max",
    }
    path.write_text(json.dumps({"claudeAiOauth": oauth}))
    path.chmod(0o600)
    account = {"accountUuid": "u-1", "emailAddress": "me@example.com", "organizationUuid": "o-1"}
    (home / ".claude.json").write_text(json.dumps({"oauthAccount": account, "numStartups": 7}))
    return path


def test_a_signed_in_user_runs_claude_tasks_without_extra_steps(
    repo: Path, anthropic_stub: AnthropicStub
) -> None:
    home = Path(os.environ["HOME"])
    credentials = sign_in(home, anthropic_stub.api_key)
    user_config = (home / ".claude.json").read_text()
    target = repo.parent / "repo.swarm" / "greet" / "hello.txt"
    anthropic_stub.queue(
        ToolUse(name="Write", input={"file_path": str(target), "content": "hi\n"}),
        Text(text="Wrote it."),
    )
    env = without_claude_vars(dict(os.environ)) | claude_env(anthropic_stub, max_retries=0)
    del env["ANTHROPIC_API_KEY"]  # only the sign-in authenticates
    env["PATH"] = f"{Path(str(CLAUDE)).parent}{os.pathsep}{env['PATH']}"
    out = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "run", "--agent", "claude", "-t", "greet=hi"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert git(repo, "show", "swarm/greet:hello.txt") == "hi"
    # The task's own config dir got the sign-in (the stub takes no other token) and the
    # account, nothing else of the user's; the copy of the tokens went with its agent.
    config = next((repo / ".git" / "swarm" / "runs").glob("*/greet/agent-config"))
    assert not (config / ".credentials.json").exists()
    assert credentials.exists()
    task_config = json.loads((config / ".claude.json").read_text())
    assert task_config["oauthAccount"]["emailAddress"] == "me@example.com"
    assert "numStartups" not in task_config or task_config["numStartups"] != 7
    assert (home / ".claude.json").read_text() == user_config  # the user's config untouched
    assert anthropic_stub.api_key not in out.stdout + out.stderr


def test_run_refuses_before_anything_when_claude_is_not_signed_in(repo: Path) -> None:
    env = without_claude_vars(dict(os.environ))
    env["PATH"] = f"{Path(str(CLAUDE)).parent}{os.pathsep}{env['PATH']}"
    out = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "run", "--agent", "claude", "-t", "a=x"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        (
            "swarm: claude is not signed in: run `claude` and `/login` once (or export"
            " ANTHROPIC_API_KEY, or CLAUDE_CODE_OAUTH_TOKEN from `claude setup-token`)"
        )
    ]
    assert not (repo / ".git" / "swarm").exists()
    assert git(repo, "branch", "--list", "swarm/*") == ""
