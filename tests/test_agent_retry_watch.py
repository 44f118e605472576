"""The worker stops an agent CLI that retries a rate limit on its own (aider) at its first retry.

A small program named ``aider`` (so the aider profile's adapter reads it) prints what aider
prints when it starts waiting out a 429, then sleeps as long as aider would; swarm must stop
it there, record the attempt as rate limited, and run it again to done.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import psutil

from tests.cli_e2e import attempts, swarm, task_states, write_manifest
from tests.conftest import git, script_interpreter

FAKE_AIDER = """\
import os, pathlib, time
state = pathlib.Path(os.environ["FAKE_STATE"])
first = not state.exists()
with state.open("a") as pids:
    pids.write(f"{os.getpid()}\\n")
if first:
    for line in (
        "Aider v0.86.2",
        "litellm.RateLimitError: RateLimitError: OpenAIException - Rate limit reached",
        "The API provider has rate limited you. Try again later or check your quotas.",
        "Retrying in 0.2 seconds...",
    ):
        print(line, flush=True)
    time.sleep(600)  # aider's own retries: far longer than the test may take
pathlib.Path("hello.txt").write_text("hello\\n")
print("Tokens: 900 sent, 12 received. Cost: $0.01 message, $0.01 session.", flush=True)
"""


def test_agent_retrying_a_rate_limit_is_stopped_and_retried_by_swarm(
    repo: Path, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    aider = bin_dir / "aider"
    aider.write_text(f"{script_interpreter()}\n{FAKE_AIDER}")
    aider.chmod(aider.stat().st_mode | stat.S_IXUSR)
    state = tmp_path / "aider.pid"
    env = dict(os.environ) | {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_STATE": str(state),
    }
    path = write_manifest(
        repo,
        '[defaults]\nagent = "aider"\nretries = 1\nrate_limit_backoff = "0.1s"\n'
        '[[task]]\nid = "greet"\nprompt = "Create hello.txt"\n',
    )
    out = swarm(repo, env, "run", str(path), timeout=120)

    assert out.returncode == 0, out.stdout + out.stderr
    rows = attempts(repo)
    assert [r.outcome for r in rows] == ["rate_limited", "succeeded"]
    assert "aider rate limited" in rows[0].reason
    assert rows[1].cost_usd == 0.01
    assert task_states(repo)["greet"][0] == "done"
    assert git(repo, "show", "swarm/greet:hello.txt") == "hello"
    # The first run, which would have slept for ten minutes, is gone.
    first = int(state.read_text().split()[0])
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
