"""End to end: an agent's recorded process is only signalled while it is that process.

The manager of a run is killed, its agent ends unwatched, and the PID (or the process group)
recorded for it is another process's now: `swarm stop`, `swarm resume` and `swarm run
--force` must leave that process alone and take the agent for gone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.test_crash import _kill_group, _manager
from tests.test_run import (
    argv_toml,
    branch_file,
    manifest,
    pid_alive,
    state_db,
    status_json,
    swarm,
    wait_for,
    written,
)

AgentFactory = Callable[[str], list[str]]

# Not one of swarm's: no shim's mark in its environment.
_UNRELATED_ENV = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}


def _sleeper() -> psutil.Popen:
    """A process of the same user, leading a process group of its own."""
    return psutil.Popen(
        ["sleep", "600"], stdin=subprocess.DEVNULL, env=_UNRELATED_ENV, start_new_session=True
    )


def _orphaned_group() -> tuple[int, psutil.Process]:
    """A process group whose leader has ended, and its one member (a daemon's double fork).

    The group's number is a PID no process has now, as a dead agent's shim's would be.
    """
    code = "import subprocess as s; print(s.Popen(['sleep', '600'], stdout=s.DEVNULL).pid)"
    leader = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=_UNRELATED_ENV,
        start_new_session=True, text=True,
    )  # fmt: skip
    out, _ = leader.communicate(timeout=30)
    member = psutil.Process(int(out))
    assert not psutil.pid_exists(leader.pid)
    assert os.getpgid(member.pid) == leader.pid
    return leader.pid, member


@pytest.fixture
def unrelated() -> Iterator[list[psutil.Process]]:
    """The processes a test starts as another program's; each killed at the end."""
    started: list[psutil.Process] = []
    yield started
    for proc in started:
        if proc.is_running():
            proc.kill()
        if isinstance(proc, psutil.Popen):  # this test's child: reaped
            proc.wait(timeout=10)
    psutil.wait_procs(started, timeout=10)


def _agent_ended_unwatched(repo: Path, tmp_path: Path, write_agent: AgentFactory) -> int:
    """A run whose manager was killed and whose agent then ended; its shim's (gone) PID."""
    pid_file, go = tmp_path / "agent.pid", tmp_path / "go"
    agent = write_agent(
        "import os, pathlib, time\n"
        "pathlib.Path('work.txt').write_text('work')\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.02)\n"
    )
    text = f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "a"\nprompt = "x"\n'
    proc = _manager(repo, "run", manifest(repo, text))
    try:
        agent_pid = int(written(pid_file, timeout=120, what="the agent"))
    finally:
        _kill_group(proc)
    with state_db(repo) as conn:
        ((shim,),) = conn.execute("SELECT pid FROM attempts").fetchall()
    assert pid_alive(agent_pid)
    assert pid_alive(shim)
    go.touch()
    wait_for(lambda: not pid_alive(agent_pid) and not pid_alive(shim), what="the agent's end")
    return int(shim)


def _record_as(repo: Path, *, pid: int, pgid: int) -> None:
    """The attempt's PID and group changed to another process's, started a minute after it.

    Its create time moved a minute back: the new owner of a PID started within a second of
    the recorded one is taken for it (two readings of one start differ by up to a second).
    """
    with state_db(repo) as conn:
        conn.execute(
            "UPDATE attempts SET pid = ?, pgid = ?, create_time = create_time - 60", (pid, pgid)
        )


COMMANDS = {
    "stop": ("stop", "a"),
    "resume": ("resume",),
    "run --force": ("run", "--force", "--agent", "scripted", "-t", "b=write b.txt: b"),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("taken", ["pid", "group"])
def test_a_recorded_pid_or_group_another_process_holds_now_is_never_signalled(
    repo: Path,
    tmp_path: Path,
    write_agent: AgentFactory,
    unrelated: list[psutil.Process],
    taken: str,
    command: str,
) -> None:
    # The agent's shim led a group of its own (its PID): once the shim is gone, that number
    # can be a new process's, or a group whose leader has ended (a daemon's double fork).
    _agent_ended_unwatched(repo, tmp_path, write_agent)
    if taken == "pid":
        sleeper = _sleeper()
        unrelated.append(sleeper)
        _record_as(repo, pid=sleeper.pid, pgid=sleeper.pid)
    else:
        group, sleeper = _orphaned_group()
        unrelated.append(sleeper)
        _record_as(repo, pid=group, pgid=group)
    assert status_json(repo)["a"]["alive"] is False
    out = swarm(repo, *COMMANDS[command])
    assert out.returncode == 0, out.stdout + out.stderr
    assert sleeper.status() != psutil.STATUS_ZOMBIE  # signalled, it would be one (or gone)
    row = status_json(repo, "--run", _first_run(repo))["a"]
    assert row["alive"] is False
    assert branch_file(repo, "swarm/a", "work.txt") == "work"


def _first_run(repo: Path) -> str:
    with state_db(repo) as conn:
        ((run_id,),) = conn.execute("SELECT run_id FROM runs ORDER BY created_at LIMIT 1")
    return str(run_id)
