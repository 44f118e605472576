"""End to end: an agent's recorded process is only signalled while it is that process.

The manager of a run is killed, its agent ends unwatched, and the PID (or the process group)
recorded for it is another process's now: `swarm stop`, `swarm resume` and `swarm run
--force` must leave that process alone and take the agent for gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
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


# Runs the command given in a session of its own and reaps whatever is re-parented to it (a
# child subreaper: PR_SET_CHILD_SUBREAPER) until it has no child left, as an init that reaps
# would (a container's PID 1 may not: a dead shim would stay a zombie holding its PID).
_REAPER = (
    "import ctypes, os, subprocess, sys\n"
    "ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)\n"
    "subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, start_new_session=True)\n"
    "while True:\n"
    "    try:\n"
    "        os.wait()\n"
    "    except ChildProcessError:\n"
    "        break\n"
)


@pytest.mark.skipif(sys.platform != "linux", reason="a child subreaper is Linux's")
def test_swarm_stop_ends_a_leftover_with_no_environment_whose_shim_was_killed(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, unrelated: list[psutil.Process]
) -> None:
    # The manager, then the agent's shim (reaped) and the agent killed: left in the shim's
    # group is what the agent started with `env -i` (no mark), working in its worktree.
    pid_file = tmp_path / "leftover.pid"
    agent = write_agent(
        "import pathlib, subprocess, time\n"
        "child = subprocess.Popen(['env', '-i', 'sleep', '600'], env={})\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(child.pid))\n"
        "time.sleep(600)\n"
    )
    text = f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "a"\nprompt = "x"\n'
    run = [sys.executable, "-m", "worktree_swarm.cli", "run", str(manifest(repo, text))]
    with (tmp_path / "bg.log").open("ab") as log:
        reaper = subprocess.Popen(
            [sys.executable, "-c", _REAPER, *run], cwd=repo, stdout=log, stderr=log
        )
    try:
        leftover = psutil.Process(int(written(pid_file, timeout=120, what="the agent")))
        unrelated.append(leftover)  # killed at the end, should the test fail
        wait_for(lambda: leftover.name() == "sleep", what="env to start sleep")
        with state_db(repo) as conn:
            ((shim,),) = conn.execute("SELECT pid FROM attempts").fetchall()
        (command,) = psutil.Process(shim).children()
        (manager,) = psutil.Process(reaper.pid).children()
        os.killpg(manager.pid, signal.SIGKILL)
        # Its shim server ends with it, the shim left to the reaper.
        wait_for(lambda: psutil.Process(shim).ppid() == reaper.pid, what="the server's end")
        os.kill(shim, signal.SIGKILL)
        command.kill()
        wait_for(lambda: not psutil.pid_exists(shim), what="the shim reaped")
        wait_for(lambda: not pid_alive(command.pid), what="the agent's end")
        assert os.getpgid(leftover.pid) == shim
        out = swarm(repo, "stop", "a")
        assert out.returncode == 0, out.stdout + out.stderr
        assert not pid_alive(leftover.pid)  # stop returns once what it kills is gone
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(reaper.pid).children():
                child.kill()
        reaper.wait(timeout=60)


def _first_run(repo: Path) -> str:
    with state_db(repo) as conn:
        ((run_id,),) = conn.execute("SELECT run_id FROM runs ORDER BY created_at LIMIT 1")
    return str(run_id)
