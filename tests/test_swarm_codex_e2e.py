"""`swarm run` with the real Codex CLI (``codex exec --json``) against the local Responses stub.

Codex is pointed at the stub through its documented custom model provider (``CODEX_HOME``'s
config.toml: ``base_url``, ``env_key``, ``wire_api = "responses"``) with its own retries off,
so every 429 reaches swarm. Files are written by Codex's own ``apply_patch`` tool.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests import openai_stub
from tests.cli_e2e import (
    agent_manifest,
    attempts,
    clean_env,
    committed_files,
    find_cli,
    reason_when,
    swarm,
    task_states,
    with_program,
    write_manifest,
)
from tests.conftest import git
from tests.llm_stub import Stub, Text
from tests.openai_stub import apply_patch_add, rate_limited, usage_limited

CODEX = find_cli("codex")
responses_api = openai_stub.responses_api

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CODEX is None, reason="Codex CLI not installed (see .ci/run)"),
]


@pytest.fixture
def codex_env(tmp_path: Path, responses_api: Stub) -> dict[str, str]:
    """The environment of `swarm run` with the real codex talking to the stub only."""
    assert CODEX is not None
    home = openai_stub.codex_home(responses_api, tmp_path / "codex-home")
    # Codex refuses to set up its Linux sandbox helper when CODEX_HOME is under the temporary
    # directory; a TMPDIR of its own keeps the test's CODEX_HOME outside it.
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = clean_env(TMPDIR=str(temp)) | openai_stub.codex_env(responses_api, home)
    return with_program(env, CODEX)


def manifest(tasks: str, **defaults: object) -> str:
    return agent_manifest("codex", tasks, **defaults)


def test_task_done_with_its_file_and_tokens(
    repo: Path, responses_api: Stub, codex_env: dict[str, str]
) -> None:
    responses_api.queue(apply_patch_add("hello.txt", "hello, world"), Text(text="Wrote it."))
    path = write_manifest(repo, manifest('[[task]]\nid = "greet"\nprompt = "Create hello.txt"\n'))
    out = swarm(repo, codex_env, "run", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert git(repo, "show", "swarm/greet:hello.txt") == "hello, world"
    (row,) = attempts(repo)
    assert row.outcome == "succeeded"
    assert row.session_id
    # Two model turns (the patch, then the answer): input minus cached, output, cached.
    stub_in, cached, stub_out = (
        responses_api.input_tokens,
        responses_api.cached_tokens,
        responses_api.output_tokens,
    )
    assert (row.tokens_in, row.tokens_out, row.cache_read_tokens) == (
        2 * (stub_in - cached),
        2 * stub_out,
        2 * cached,
    )
    assert row.cost_usd is None  # Codex reports no cost
    assert responses_api.api_key not in out.stdout + out.stderr
    assert committed_files(repo, "swarm/greet") == ["README.md", "hello.txt"]


def test_rate_limit_resumes_the_same_codex_session(
    repo: Path, responses_api: Stub, codex_env: dict[str, str]
) -> None:
    responses_api.queue(
        rate_limited(),
        apply_patch_add("hello.txt", "hello, world"),
        Text(text="Wrote it."),
    )
    path = write_manifest(
        repo,
        manifest(
            '[[task]]\nid = "greet"\nprompt = "Create hello.txt saying hello"\n',
            retries=2,
            rate_limit_backoff="0.2s",
        ),
    )
    out = swarm(repo, codex_env, "run", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    rows = attempts(repo)
    assert [r.outcome for r in rows] == ["rate_limited", "succeeded"]
    assert "429" in rows[0].reason
    assert rows[0].session_id is not None
    assert rows[0].session_id == rows[1].session_id  # `codex exec resume <thread id>`
    # The resumed turn still carries the first prompt: the conversation was not lost.
    assert "Create hello.txt saying hello" in responses_api.agent_requests()[-1].text()
    assert git(repo, "show", "swarm/greet:hello.txt") == "hello, world"
    assert task_states(repo)["greet"][0] == "done"


def test_usage_limit_message_gives_the_reset_time(
    repo: Path, responses_api: Stub, codex_env: dict[str, str]
) -> None:
    resets_at = int(time.time()) + 3 * 3600
    responses_api.queue(usage_limited(resets_at))
    path = write_manifest(
        repo, manifest('[[task]]\nid = "greet"\nprompt = "Create hello.txt"\n', retries=1)
    )
    reason, _ = reason_when(repo, codex_env, path, "rate_limited")
    # Codex prints the reset as a local wall-clock minute ("try again at 4:03 PM"); swarm waits
    # until the end of that minute instead of its own backoff.
    minute = datetime.fromtimestamp(resets_at).replace(second=0)  # noqa: DTZ006 - local
    expected = minute + timedelta(minutes=1)
    assert reason == f"resuming after {expected:%H:%M:%S}"
    (row,) = attempts(repo)[:1]
    assert row.outcome == "rate_limited"
    assert "usage limit" in row.reason


def test_placeholder_caught_and_repaired_in_the_same_session(
    repo: Path, responses_api: Stub, codex_env: dict[str, str]
) -> None:
    responses_api.queue(
        apply_patch_add("calc.py", "# TODO: add"),
        Text(text="Done."),
        apply_patch_add("calc.py", "ADD = 1 + 1"),
        Text(text="Fixed."),
    )
    path = write_manifest(
        repo,
        manifest(
            '[[task]]\nid = "calc"\nprompt = "Write calc.py"\n', no_placeholders=True, repair=1
        ),
    )
    out = swarm(repo, codex_env, "run", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert git(repo, "show", "swarm/calc:calc.py") == "ADD = 1 + 1"
    # The repair prompt named the placeholder the check found.
    assert "TODO: add" in responses_api.agent_requests()[-2].text()
    rows = attempts(repo)
    assert [r.outcome for r in rows] == ["succeeded", "succeeded"]
    assert rows[0].session_id == rows[1].session_id
