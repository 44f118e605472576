"""End to end: what a killed shim left running is found the same way on every path.

An agent or a check starts a daemon with its environment wiped (``env -i``: no shim's mark)
in its worktree, and its shim is SIGKILLed (the OOM killer). A live manager watching the
agent or the check, `swarm resume` before it runs the check again, and `swarm stop` of a run
whose manager was killed must end that daemon, and leave alone a process of the same user
that works in the worktree in a session of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.test_crash import _manager
from tests.test_pid_reuse import _REAPER, _UNRELATED_ENV
from tests.test_run import argv_toml, manifest, state_db, status_json, swarm, wait_for, written

AgentFactory = Callable[[str], list[str]]

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the shim and its mark are Linux's")

# Starts a daemon with no environment, in its working directory (the worktree): its parent
# shell exits at once (a double fork), it ignores SIGTERM, and its PID goes to argv[1].
# Then waits, as an agent at work or a long check does.
WIPED_DAEMON = r"""
import subprocess, sys, time
daemon = 'trap "" TERM; sleep 600 & echo $! > "$0"'
subprocess.run(['env', '-i', 'sh', '-c', daemon, sys.argv[1]], check=True)
time.sleep(600)
"""

# The same daemon; then, once argv[2] exists, SIGKILLs its own shim and exits.
WIPED_DAEMON_SHIM_KILLED = r"""
import os, pathlib, signal, subprocess, sys, time
daemon = 'trap "" TERM; sleep 600 & echo $! > "$0"'
subprocess.run(['env', '-i', 'sh', '-c', daemon, sys.argv[1]], check=True)
while not pathlib.Path(sys.argv[2]).exists():
    time.sleep(0.02)
os.kill(os.getppid(), signal.SIGKILL)
"""

# WIPED_DAEMON, but run again (argv[1] written) it ends at once, passing.
WIPED_DAEMON_ONCE = (
    "import os, sys\nif os.path.exists(sys.argv[1]):\n    sys.exit(0)\n" + WIPED_DAEMON
)


@pytest.fixture
def left() -> Iterator[list[psutil.Process]]:
    """Processes to kill at the end, should the test fail (a reaper's, or a daemon)."""
    procs: list[psutil.Process] = []
    yield procs
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in proc.children(recursive=True):
                child.kill()
            proc.kill()
        if isinstance(proc, psutil.Popen):
            proc.wait(timeout=60)


def _under_reaper(repo: Path, *args: str) -> psutil.Popen:
    """`swarm ARGS` under a child subreaper, which reaps the shims the manager leaves it."""
    run = [sys.executable, "-m", "worktree_swarm.cli", *args]
    with (repo.parent / "bg.log").open("ab") as log:
        return psutil.Popen(
            [sys.executable, "-c", _REAPER, *run],
            cwd=repo, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )  # fmt: skip


def _daemon(pid_file: Path) -> psutil.Process:
    """The daemon whose PID is in *pid_file*, once it is `sleep` without SWARM_SHIM."""
    daemon = psutil.Process(int(written(pid_file, timeout=120, what="the daemon")))
    wait_for(lambda: daemon.name() == "sleep", what="the daemon's exec")
    assert "SWARM_SHIM" not in daemon.environ()
    return daemon


def _bystander(where: Path) -> psutil.Popen:
    """A process of the same user working in *where* in a session of its own (your shell's)."""
    return psutil.Popen(
        ["sleep", "600"], cwd=where, env=_UNRELATED_ENV, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip


def _gone(proc: psutil.Process) -> bool:
    """Whether *proc* (its PID and start time) is gone, a zombie counting as gone."""
    try:
        same = psutil.Process(proc.pid).create_time() == proc.create_time()
        return not same or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _managed(repo: Path) -> bool:
    """Whether a manager of the run is there (`swarm status`)."""
    return bool(json.loads(swarm(repo, "status", "--json").stdout)["manager_running"])


def _kill_manager(reaper: psutil.Popen, shim: int) -> None:
    """SIGKILL the manager under *reaper* (its group); its shim *shim* is the reaper's then."""
    (manager,) = reaper.children()
    os.killpg(manager.pid, signal.SIGKILL)
    wait_for(lambda: psutil.Process(shim).ppid() == reaper.pid, what="the manager's end")


def test_a_live_manager_ends_a_wiped_daemon_its_adopted_agents_killed_shim_left(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, left: list[psutil.Process]
) -> None:
    # The manager killed, `swarm resume` adopted the agent (its shim server gone with the old
    # manager), then the shim was SIGKILLed: the resumed manager killed only what carried the
    # shim's mark, and the agent's `env -i` daemon worked on in the worktree after the run.
    pid_file = tmp_path / "daemon.pid"
    agent = [*write_agent(WIPED_DAEMON), str(pid_file)]
    text = f'[defaults]\nagent = {argv_toml(agent)}\nkill_grace = "2s"\n'
    reaper = _under_reaper(repo, "run", manifest(repo, text + '[[task]]\nid = "a"\nprompt = "x"\n'))
    left.append(reaper)
    daemon = _daemon(pid_file)
    left.append(daemon)
    with state_db(repo) as conn:
        ((shim,),) = conn.execute("SELECT pid FROM attempts").fetchall()
    assert os.getpgid(daemon.pid) == shim
    _kill_manager(reaper, shim)
    resumed = _manager(repo, "resume")
    left.append(psutil.Process(resumed.pid))
    worktree = repo.parent / "repo.swarm" / "a"
    bystander = _bystander(worktree)
    left.append(bystander)
    wait_for(lambda: _managed(repo), timeout=120, what="the resumed manager")
    os.kill(shim, signal.SIGKILL)  # as the OOM killer would, the resumed manager watching
    assert resumed.wait(timeout=120) == 1
    assert status_json(repo)["a"]["state"] == "failed"
    assert _gone(daemon)  # killed before the attempt was recorded
    assert not _gone(bystander)  # in the worktree, but in a session of its own


def test_a_live_manager_ends_a_wiped_daemon_a_check_that_killed_its_shim_left(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, left: list[psutil.Process]
) -> None:
    # A check that SIGKILLed its own shim (its manager not a child subreaper): the manager
    # killed what carried the shim's mark as the check ended, and the `env -i` daemon the
    # check started worked on in the worktree after the run.
    pid_file, gate = tmp_path / "daemon.pid", tmp_path / "gate"
    check = [*write_agent(WIPED_DAEMON_SHIM_KILLED), str(pid_file), str(gate)]
    work = write_agent("import pathlib\npathlib.Path('work.txt').write_text('done')\n")
    text = f"[defaults]\nagent = {argv_toml(work)}\nchecks = [{argv_toml(check)}]\n"
    text += 'kill_grace = "2s"\n[[task]]\nid = "a"\nprompt = "x"\n'
    proc = _manager(repo, "run", manifest(repo, text))
    left.append(psutil.Process(proc.pid))
    try:
        daemon = _daemon(pid_file)
        left.append(daemon)
        bystander = _bystander(repo.parent / "repo.swarm" / "a")
        left.append(bystander)
    finally:
        gate.touch()  # whatever happened, nothing waits on
    assert proc.wait(timeout=120) == 1
    assert status_json(repo)["a"]["state"] == "failed"
    assert _gone(daemon)  # killed as the check ended
    assert not _gone(bystander)  # in the worktree, but in a session of its own


def test_swarm_stop_ends_a_wiped_daemon_a_check_left_when_its_shim_was_killed(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, left: list[psutil.Process]
) -> None:
    # The manager killed during a check (its shim lives on, in a session of its own), then
    # the check's shim SIGKILLed: `swarm stop` killed the check, which carries the mark, and
    # left its `env -i` daemon working in the worktree.
    pid_file = tmp_path / "daemon.pid"
    check = [*write_agent(WIPED_DAEMON), str(pid_file)]
    work = write_agent("import pathlib\npathlib.Path('work.txt').write_text('done')\n")
    text = f"[defaults]\nagent = {argv_toml(work)}\nchecks = [{argv_toml(check)}]\n"
    text += 'kill_grace = "2s"\n[[task]]\nid = "a"\nprompt = "x"\n'
    reaper = _under_reaper(repo, "run", manifest(repo, text))
    left.append(reaper)
    daemon = _daemon(pid_file)
    left.append(daemon)
    shim = os.getpgid(daemon.pid)  # the check's shim leads its group
    assert "--swarm-shim" in psutil.Process(shim).cmdline()
    # Its children: the check, and the daemon re-parented to it (a child subreaper).
    (command,) = [c for c in psutil.Process(shim).children() if c.pid != daemon.pid]
    _kill_manager(reaper, shim)
    os.kill(shim, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(shim), what="the shim reaped")
    bystander = _bystander(repo.parent / "repo.swarm" / "a")
    left.append(bystander)
    out = swarm(repo, "stop", "a")
    assert out.returncode == 0, out.stdout + out.stderr
    assert _gone(command)  # marked: killed before as now
    assert _gone(daemon)  # stop returns once what it kills is gone
    assert not _gone(bystander)  # in the worktree, but in a session of its own
    assert status_json(repo)["a"]["state"] == "stopped"


def test_swarm_resume_ends_a_wiped_daemon_a_check_left_before_it_checks_again(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, left: list[psutil.Process]
) -> None:
    # The manager killed during a check, then the check's shim SIGKILLed: `swarm resume`
    # killed the check (marked) before running it again, beside the `env -i` daemon the first
    # one left working in the worktree, which outlived the run.
    pid_file = tmp_path / "daemon.pid"
    check = [*write_agent(WIPED_DAEMON_ONCE), str(pid_file)]
    work = write_agent("import pathlib\npathlib.Path('work.txt').write_text('done')\n")
    text = f"[defaults]\nagent = {argv_toml(work)}\nchecks = [{argv_toml(check)}]\n"
    text += 'kill_grace = "2s"\n[[task]]\nid = "a"\nprompt = "x"\n'
    reaper = _under_reaper(repo, "run", manifest(repo, text))
    left.append(reaper)
    daemon = _daemon(pid_file)
    left.append(daemon)
    shim = os.getpgid(daemon.pid)
    _kill_manager(reaper, shim)
    os.kill(shim, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(shim), what="the shim reaped")
    bystander = _bystander(repo.parent / "repo.swarm" / "a")
    left.append(bystander)
    out = swarm(repo, "resume")
    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["a"]["state"] == "done"
    assert _gone(daemon)  # killed before the check ran again
    assert not _gone(bystander)  # in the worktree, but in a session of its own
