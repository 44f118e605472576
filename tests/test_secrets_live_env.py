"""A dead manager's secrets are redacted by the command that picks up its live agents.

The manager ran with a secret variable; it is killed while its agent runs. `swarm logs`,
`swarm resume` and `swarm stop` from a shell without the variable read it from the live
agent's environment: what the agent printed reaches neither their output, nor the log they
rewrite, nor the store. Real runs of the real CLI; the agent waits for a file the test writes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_run import (
    AgentFactory,
    argv_toml,
    manifest,
    status_json,
    swarm,
    swarm_bg,
    wait_for,
)
from worktree_swarm.infra.redact import REDACTED

SECRET = "svc_9f8e7d6c5b4a3210Zq"  # noqa: S105 - a made-up value in no known format

# Says the token, then waits for the test's go (argv[1]) before it says it again and fails.
AGENT = (
    "import os, pathlib, sys, time\n"
    "print('connecting with ' + os.environ['SERVICE_TOKEN'], flush=True)\n"
    "pathlib.Path(sys.argv[2]).write_text('started')\n"
    "while not pathlib.Path(sys.argv[1]).exists():\n"
    "    time.sleep(0.05)\n"
    "print('fatal: refused ' + os.environ['SERVICE_TOKEN'], flush=True)\n"
    "sys.exit(1)\n"
)


def _orphaned_agent(
    repo: Path,
    write_agent: AgentFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    code: str = AGENT,
) -> Path:
    """A run whose manager had SERVICE_TOKEN, killed while its agent runs; the agent's go file.

    This process (and every swarm it starts from now on) is another shell: without it. The
    agent (*code*) is given its go file, the file it writes once started, and a third path.
    """
    monkeypatch.delenv("SERVICE_TOKEN", raising=False)
    go, started = tmp_path / "go", tmp_path / "started"
    agent = write_agent(code)
    argv = [*agent, str(go), str(started), str(tmp_path / "daemon")]
    text = f'[[task]]\nid = "t"\nprompt = "x"\nagent = {argv_toml(argv)}\n'
    manager = subprocess.Popen(
        [sys.executable, "-m", "worktree_swarm.cli", "run", manifest(repo, text)],
        cwd=repo, env={**os.environ, "SERVICE_TOKEN": SECRET}, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(started.exists, what="the agent's start")
    finally:
        os.killpg(manager.pid, signal.SIGKILL)
        manager.wait(timeout=30)
    return go


def _nowhere(repo: Path, texts: list[str]) -> None:
    """*SECRET* is in none of *texts*, nor in a byte of what swarm keeps (store, logs)."""
    for text in texts:
        assert SECRET not in text, text[:2000]
    files = [p for p in (repo / ".git" / "swarm").rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.name == "state.db" for p in files)
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("end", ["resume", "stop"])
def test_an_agent_a_dead_manager_left_is_redacted_with_its_environments_secrets(
    repo: Path,
    write_agent: AgentFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    end: str,
) -> None:
    go = _orphaned_agent(repo, write_agent, tmp_path, monkeypatch)
    logs = swarm(repo, "logs", "t")  # the raw log, shown while the agent runs
    assert logs.stdout == f"connecting with {REDACTED}\n", logs.stdout + logs.stderr
    if end == "resume":
        resumed = swarm_bg(repo, "resume")
        said = repo.parent / "bg.log"
        wait_for(lambda: "t: running" in said.read_text(), what="the agent adopted")
        go.write_text("go")
        assert resumed.wait(timeout=120) == 1, said.read_text()
        out = said.read_text()
        assert status_json(repo)["t"]["reason"] == f"agent exited 1: fatal: refused {REDACTED}"
    else:
        stopped = swarm(repo, "stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        out = stopped.stdout + stopped.stderr
        assert status_json(repo)["t"]["state"] == "stopped"
    shown = swarm(repo, "logs", "t").stdout
    assert f"connecting with {REDACTED}\n" in shown, shown
    _nowhere(repo, [logs.stdout, logs.stderr, out, shown, swarm(repo, "status", "--json").stdout])


ORDINARY = "notes/plan.md"
# Leaves a daemon (double-forked: the shim adopts it) whose environment it chose, a
# secret-named variable holding an ordinary path; says both once the daemon runs (its pid in
# argv[3]), then waits for the go as AGENT does.
DAEMONISING = (
    "import os, pathlib, subprocess, sys, time\n"
    "daemon = 'import os, pathlib, sys, time\\n"
    "pathlib.Path(sys.argv[1]).write_text(str(os.getpid()))\\ntime.sleep(600)\\n'\n"
    f"env = {{**os.environ, 'MY_TOKEN': '{ORDINARY}'}}\n"
    "subprocess.run(['sh', '-c', '\"$0\" -c \"$1\" \"$2\" </dev/null >/dev/null 2>&1 &',\n"
    "    sys.executable, daemon, sys.argv[3]], env=env, check=True)\n"
    "ready = pathlib.Path(sys.argv[3])\n"
    "while not (ready.exists() and ready.read_text()):\n"
    "    time.sleep(0.05)\n"
    f"print('editing {ORDINARY}', flush=True)\n" + AGENT.split("\n", 1)[1]
)


def test_a_daemon_an_agent_left_chooses_no_text_to_redact(
    repo: Path, write_agent: AgentFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The environment of every child of the agent's shim was read, re-parented orphans too:
    # an agent's daemon with MY_TOKEN=<a path> had that path redacted from every output.
    _orphaned_agent(repo, write_agent, tmp_path, monkeypatch, DAEMONISING)
    daemon = int((tmp_path / "daemon").read_text())
    try:
        logs = swarm(repo, "logs", "t")
        assert logs.stdout == f"editing {ORDINARY}\nconnecting with {REDACTED}\n", logs.stdout
        stopped = swarm(repo, "stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        shown = swarm(repo, "logs", "t").stdout
        assert f"editing {ORDINARY}\nconnecting with {REDACTED}\n" in shown, shown
    finally:
        with contextlib.suppress(ProcessLookupError):  # stopped with its tree, as it should be
            os.kill(daemon, signal.SIGKILL)
    _nowhere(repo, [logs.stdout, stopped.stdout, shown])
