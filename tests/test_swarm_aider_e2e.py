"""`swarm run` with the real aider (``--message-file``) against the local chat completions stub.

aider reaches the stub as an OpenAI-compatible API (``OPENAI_API_BASE``, model
``openai/stub-model`` in its ``whole`` edit format); its replies are parsed and applied by
aider's own editor, and aider commits them itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import openai_stub
from tests.cli_e2e import (
    agent_manifest,
    attempts,
    clean_env,
    committed_files,
    find_cli,
    swarm,
    task_states,
    with_program,
    write_manifest,
)
from tests.conftest import git, make_repo
from tests.llm_stub import Recorded, Reply, Stub
from tests.openai_stub import insufficient_quota, rate_limited, whole_file

AIDER = find_cli("aider")
chat_api = openai_stub.chat_api

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(AIDER is None, reason="aider not installed (see .ci/run)"),
]


@pytest.fixture
def aider_env(tmp_path: Path, chat_api: Stub) -> dict[str, str]:
    """The environment of `swarm run` with the real aider talking to the stub only."""
    assert AIDER is not None
    env = clean_env() | openai_stub.aider_env(chat_api, tmp_path / "home")
    return with_program(env, AIDER)


@pytest.fixture
def user_repo(tmp_path: Path) -> Path:
    """A repository with the user's own .gitignore."""
    return make_repo(tmp_path / "repo", {"README.md": "hello\n", ".gitignore": "*.log\n"})


def manifest(tasks: str, **defaults: object) -> str:
    return agent_manifest("aider", tasks, **defaults)


def test_task_done_with_its_file_cost_and_no_aider_files(
    user_repo: Path, chat_api: Stub, aider_env: dict[str, str]
) -> None:
    chat_api.queue(whole_file("hello.txt", "hello, world\n"))
    path = write_manifest(
        user_repo, manifest('[[task]]\nid = "greet"\nprompt = "Create hello.txt"\n')
    )
    out = swarm(user_repo, aider_env, "run", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert git(user_repo, "show", "swarm/greet:hello.txt") == "hello, world"
    # aider wrote its chat history and repo-map cache into the worktree; none is committed,
    # and the user's .gitignore is as it was.
    worktree = user_repo.parent / "repo.swarm" / "greet"
    assert (worktree / ".aider.chat.history.md").exists()
    assert committed_files(user_repo, "swarm/greet") == [".gitignore", "README.md", "hello.txt"]
    assert git(user_repo, "show", "swarm/greet:.gitignore") == "*.log"
    assert (worktree / ".gitignore").read_text() == "*.log\n"
    (row,) = attempts(user_repo)
    assert row.outcome == "succeeded"
    # aider's own counts ("Tokens: 914 sent, 11 received. Cost: $0.00096 message, ..."),
    # priced from the model metadata file: 1e-6 per token in, 4e-6 out.
    assert row.tokens_in is not None
    assert row.tokens_out is not None
    assert row.tokens_in > 0
    assert row.tokens_out > 0
    assert row.cost_usd == pytest.approx(row.tokens_in * 1e-6 + row.tokens_out * 4e-6, rel=0.05)
    assert chat_api.api_key not in out.stdout + out.stderr + Path(row.log_path).read_text()


def _limited_until_resumed(error: Reply) -> object:
    """A policy: *error* for every request of the first aider run (it retries on its own)."""

    def policy(request: Recorded) -> Reply | None:
        return None if "You were interrupted" in request.text() else error

    return policy


@pytest.mark.parametrize("error", [rate_limited(), insufficient_quota()], ids=["429", "quota"])
def test_rate_limit_stops_aiders_own_retries_and_swarm_retries(
    user_repo: Path, chat_api: Stub, aider_env: dict[str, str], error: Reply
) -> None:
    chat_api.policy = _limited_until_resumed(error)  # type: ignore[assignment]
    chat_api.queue(whole_file("hello.txt", "hello, world\n"))
    path = write_manifest(
        user_repo,
        manifest(
            '[[task]]\nid = "greet"\nprompt = "Create hello.txt saying hello"\n',
            retries=2,
            rate_limit_backoff="0.2s",
        ),
    )
    out = swarm(user_repo, aider_env, "run", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    rows = attempts(user_repo)
    assert [r.outcome for r in rows] == ["rate_limited", "succeeded"]
    assert "aider rate limited" in rows[0].reason
    # Stopped at its first own retries (each try is up to 3 requests of its API client; a busy
    # machine may let another start), not after a minute of them (a dozen tries and more).
    first_run = [r for r in chat_api.agent_requests() if r.reply.startswith("error")]
    assert 1 <= len(first_run) <= 9
    # aider has no session: the retry carries the task itself, then the note.
    last = chat_api.agent_requests()[-1].text()
    assert "Create hello.txt saying hello" in last
    assert git(user_repo, "show", "swarm/greet:hello.txt") == "hello, world"
    assert task_states(user_repo)["greet"][0] == "done"


def test_placeholder_caught_and_repaired(
    user_repo: Path, chat_api: Stub, aider_env: dict[str, str]
) -> None:
    chat_api.queue(whole_file("calc.py", "# TODO: add\n"), whole_file("calc.py", "ADD = 1 + 1\n"))
    path = write_manifest(
        user_repo,
        manifest(
            '[[task]]\nid = "calc"\nprompt = "Write calc.py"\n', no_placeholders=True, repair=1
        ),
    )
    out = swarm(user_repo, aider_env, "run", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert git(user_repo, "show", "swarm/calc:calc.py") == "ADD = 1 + 1"
    repair = chat_api.agent_requests()[-1].text()
    assert "TODO: add" in repair
    assert "Write calc.py" in repair  # a fresh aider gets the task again
    assert [r.outcome for r in attempts(user_repo)] == ["succeeded", "succeeded"]
