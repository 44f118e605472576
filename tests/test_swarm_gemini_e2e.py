"""`swarm run` with the real Gemini CLI (``--output-format json``) against the local Gemini stub.

Gemini CLI is pointed at the stub by its documented ``GOOGLE_GEMINI_BASE_URL`` (an API-key
login, ``GEMINI_API_KEY``), with its own ``GEMINI_CLI_HOME``; files are written by its own
``write_file`` tool. The gemini profile limits the CLI to one API attempt per turn through a
system-defaults file under the task's log directory, which Gemini CLI reads only when no
directory above it is writable by others: so these tests keep their repository under the
project's .cache/ (not /tmp).
"""

from __future__ import annotations

import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests import gemini_stub
from tests.cli_e2e import (
    ROOT,
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
from tests.conftest import git, make_repo
from tests.gemini_stub import quota_error, rate_limited, write_file
from tests.llm_stub import ApiError, Stub, Text

GEMINI = find_cli("gemini")
gemini_api = gemini_stub.gemini_api

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(GEMINI is None, reason="Gemini CLI not installed (see .ci/run)"),
]


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A directory no other user can write to, nor any directory above it."""
    base = ROOT / ".cache" / "e2e"
    base.mkdir(parents=True, exist_ok=True)
    shared = [d for d in (base, *base.parents) if d.stat().st_mode & stat.S_IWOTH]
    if shared:
        pytest.skip(
            f"this checkout is under {shared[0]}, which others can write to: Gemini CLI then "
            "ignores the system defaults the gemini profile relies on (clone it elsewhere)"
        )
    path = Path(tempfile.mkdtemp(dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def gemini_repo(private_dir: Path) -> Path:
    return make_repo(private_dir / "repo")


@pytest.fixture
def gemini_env(private_dir: Path, gemini_api: Stub) -> dict[str, str]:
    """The environment of `swarm run` with the real gemini talking to the stub only."""
    assert GEMINI is not None
    temp = private_dir / "tmp"  # its error reports land there, not in /tmp
    temp.mkdir()
    env = clean_env(TMPDIR=str(temp)) | gemini_stub.gemini_env(gemini_api, private_dir / "home")
    return with_program(env, GEMINI)


def manifest(tasks: str, **defaults: object) -> str:
    return agent_manifest("gemini", tasks, **defaults)


def logs_of(repo: Path) -> str:
    return "\n".join(Path(row.log_path).read_text() for row in attempts(repo))


def test_task_done_with_its_file_and_tokens(
    gemini_repo: Path, gemini_api: Stub, gemini_env: dict[str, str]
) -> None:
    gemini_api.queue(write_file("hello.txt", "hello, world\n"), Text(text="Wrote it."))
    path = write_manifest(
        gemini_repo, manifest('[[task]]\nid = "greet"\nprompt = "Create hello.txt"\n')
    )
    out = swarm(gemini_repo, gemini_env, "run", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert git(gemini_repo, "show", "swarm/greet:hello.txt") == "hello, world"
    (row,) = attempts(gemini_repo)
    assert row.outcome == "succeeded"
    assert row.session_id
    cached = gemini_api.cached_tokens
    assert (row.tokens_in, row.tokens_out, row.cache_read_tokens) == (
        2 * (gemini_api.input_tokens - cached),
        2 * gemini_api.output_tokens,
        2 * cached,
    )
    assert row.cost_usd is None  # Gemini CLI reports no cost
    # The profile's settings file was read, and the worktree trusted (else yolo is refused).
    log = logs_of(gemini_repo)
    assert "Skipping system defaults" not in log
    assert "not trusted" not in log
    assert gemini_api.api_key not in out.stdout + out.stderr + log
    assert committed_files(gemini_repo, "swarm/greet") == ["README.md", "hello.txt"]


OVERLOADED = ApiError(
    status=503,
    body={
        "error": {
            "code": 503,
            "message": "The model is overloaded. We are experiencing high demand. Please try "
            "again later.",
            "status": "UNAVAILABLE",
        }
    },
)


@pytest.mark.parametrize(("limit", "said"), [(rate_limited(), "quota"), (OVERLOADED, "overloaded")])
def test_rate_limit_is_swarms_to_retry_and_resumes_the_session(
    gemini_repo: Path, gemini_api: Stub, gemini_env: dict[str, str], limit: ApiError, said: str
) -> None:
    # The 429 comes after a first reply: Gemini CLI resumes only sessions with a model reply.
    # A 503 "overloaded" failed the task for good: the stream's result names no code.
    gemini_api.queue(
        write_file("hello.txt", "hello\n"),
        limit,
        write_file("hello.txt", "hello, world\n"),
        Text(text="Wrote it."),
    )
    path = write_manifest(
        gemini_repo,
        manifest(
            '[[task]]\nid = "greet"\nprompt = "Create hello.txt saying hello"\n',
            retries=2,
            rate_limit_backoff="0.2s",
        ),
    )
    out = swarm(gemini_repo, gemini_env, "run", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    rows = attempts(gemini_repo)
    # One request for the 429: the CLI did not retry it itself, swarm did.
    replies = [r.reply for r in gemini_api.agent_requests()]
    assert replies == ["tool:write_file", f"error:{limit.status}", "tool:write_file", "text"]
    assert [r.outcome for r in rows] == ["rate_limited", "succeeded"]
    assert said in rows[0].reason
    assert rows[0].session_id is not None
    assert rows[0].session_id == rows[1].session_id  # `gemini --resume <session id>`
    assert "Create hello.txt saying hello" in gemini_api.agent_requests()[-1].text()
    assert git(gemini_repo, "show", "swarm/greet:hello.txt") == "hello, world"
    assert task_states(gemini_repo)["greet"][0] == "done"


def test_quota_with_a_long_retry_delay_gives_the_reset_time(
    gemini_repo: Path, gemini_api: Stub, gemini_env: dict[str, str]
) -> None:
    gemini_api.queue(quota_error(quota_id="GenerateRequestsPerHour", retry_delay="7200s"))
    path = write_manifest(
        gemini_repo,
        manifest('[[task]]\nid = "greet"\nprompt = "Create hello.txt"\n', retries=1),
    )
    before = time.time()
    reason, after = reason_when(gemini_repo, gemini_env, path, "rate_limited")
    # "Suggested retry after 7200s.": swarm waits that long from the end of the attempt.
    clock = reason.removeprefix("resuming after ")
    window = {
        f"{datetime.fromtimestamp(t + 7200):%H:%M:%S}"  # noqa: DTZ006 - local, as printed
        for t in range(int(before), int(after) + 2)
    }
    assert clock in window
    assert attempts(gemini_repo)[0].outcome == "rate_limited"


def test_placeholder_caught_and_repaired_in_the_same_session(
    gemini_repo: Path, gemini_api: Stub, gemini_env: dict[str, str]
) -> None:
    gemini_api.queue(
        write_file("calc.py", "# TODO: add\n"),
        Text(text="Done."),
        write_file("calc.py", "ADD = 1 + 1\n"),
        Text(text="Fixed."),
    )
    path = write_manifest(
        gemini_repo,
        manifest(
            '[[task]]\nid = "calc"\nprompt = "Write calc.py"\n', no_placeholders=True, repair=1
        ),
    )
    out = swarm(gemini_repo, gemini_env, "run", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert git(gemini_repo, "show", "swarm/calc:calc.py") == "ADD = 1 + 1"
    assert "TODO: add" in gemini_api.agent_requests()[-1].text()
    rows = attempts(gemini_repo)
    assert [r.outcome for r in rows] == ["succeeded", "succeeded"]
    assert rows[0].session_id == rows[1].session_id
