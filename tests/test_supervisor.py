"""Supervisor: spawning, identity, tree kills — all on real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

import worktree_swarm
from tests.conftest import agent_python
from worktree_swarm.core.errors import SwarmError
from worktree_swarm.core.models import ProcessIdentity
from worktree_swarm.infra import proc_scan, proctree, redact, shim, shim_record, starts
from worktree_swarm.infra.proc import clean_env
from worktree_swarm.infra.proc_scan import processes_in
from worktree_swarm.infra.proctree import (
    descendants,
    identity_of,
    is_alive,
    is_frozen,
    kill_tree,
    shim_alive,
)
from worktree_swarm.infra.shim_record import read_record
from worktree_swarm.infra.supervisor import (
    SHIM_AVAILABLE,
    AgentProcess,
    adopt,
    spawn,
)

WriteAgent = Callable[[str], list[str]]
PACKAGE_ROOT = Path(worktree_swarm.__file__).resolve().parent.parent

# Snippet for agent scripts: publish a value atomically so a reader never sees half a file.
PUBLISH = """
import os, sys
def publish(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(text))
    os.replace(tmp, path)
"""


def wait_for(condition: Callable[[], object], *, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {condition}")
        time.sleep(0.02)


def read_pid(path: Path) -> int:
    wait_for(lambda: path.exists() and path.read_text() != "")
    return int(path.read_text())


def gone(pid: int, create_time: float | None = None) -> bool:
    """No such process, a different process on that PID, or a zombie."""
    try:
        proc = psutil.Process(pid)
        if create_time is not None and proc.create_time() != create_time:
            return True
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Reaper:
    """Remembers every process a test starts and kills the survivors at teardown."""

    def __init__(self) -> None:
        self.procs: list[psutil.Process] = []
        self.popens: list[subprocess.Popen[bytes]] = []
        self.agents: list[AgentProcess] = []

    def pid(self, pid: int) -> int:
        self.procs.append(psutil.Process(pid))
        return pid

    def agent(self, agent: AgentProcess) -> AgentProcess:
        self.popens.append(agent.popen)
        self.agents.append(agent)
        self.pid(agent.identity.pid)
        return agent

    def popen(self, popen: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self.popens.append(popen)
        self.pid(popen.pid)
        return popen

    def cleanup(self) -> None:
        # An agent runs under its shim: stop the whole tree, not just the shim (whose death
        # would leave the agent running).
        for agent in self.agents:
            kill_tree(agent.identity, grace=0)
        for proc in self.procs:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    proc.kill()
            except psutil.NoSuchProcess:
                pass
        # Zombies count as gone: in a container PID 1 may never reap reparented ones.
        wait_for(lambda: all(gone(p.pid, p.create_time()) for p in self.procs if p.is_running()))
        for popen in self.popens:
            popen.wait(timeout=10)


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    r = Reaper()
    yield r
    r.cleanup()


@pytest.fixture
def start(tmp_path: Path, write_agent: WriteAgent, reaper: Reaper) -> Callable[..., AgentProcess]:
    """Spawn an agent from *source*, with tmp_path as cwd and the log in tmp_path/logs."""
    counter = iter(range(1000))

    def _start(
        source: str, *, env: dict[str, str] | None = None, grace: float = 5.0
    ) -> AgentProcess:
        log = tmp_path / "logs" / f"agent{next(counter)}.log"
        argv = write_agent(PUBLISH + source)
        agent = spawn(argv, cwd=tmp_path, env=clean_env(env), log_path=log, grace=grace)
        return reaper.agent(agent)

    return _start


def log_text(agent: AgentProcess) -> str:
    return agent.log_path.read_text(errors="replace")


def test_spawn_log_stdin_session_env(start, tmp_path: Path) -> None:
    agent = start(
        "print('out line', flush=True)\n"
        "print('err line', file=sys.stderr, flush=True)\n"
        "print('stdin=' + repr(sys.stdin.read()))\n"
        "print('sid', os.getsid(0), 'pgid', os.getpgid(0), 'pid', os.getpid())\n"
        "print('env', os.environ.get('SWARM_TEST_VAR'))\n"
        "print('cwd', os.getcwd())\n",
        env={"SWARM_TEST_VAR": "hello world"},
    )
    assert agent.wait(timeout=30) == 0
    text = log_text(agent)
    assert "out line" in text
    assert "err line" in text
    assert "stdin=''" in text
    pid = agent.identity.pid  # the shim's: the agent runs in its session and group
    assert f"sid {pid} pgid {pid} pid " in text
    assert "env hello world" in text
    assert f"cwd {os.path.realpath(tmp_path)}" in text
    assert agent.identity.pgid == pid != os.getpgrp()
    assert agent.last_line() == f"cwd {os.path.realpath(tmp_path)}"


@pytest.mark.skipif(not SHIM_AVAILABLE, reason="the shim needs a child subreaper (Linux)")
def test_the_shim_runs_isolated_whatever_pythonpath_the_task_sets(
    tmp_path: Path, reaper, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The shim as users get it, not as the suite measures it under coverage.
    monkeypatch.setattr(shim_record, "SHIM_FLAGS", ("-I", "-S"))
    env = {k: v for k, v in clean_env().items() if not k.startswith("COVERAGE_PROCESS")}
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "sitecustomize.py").write_text("raise SystemExit('a task module ran')\n")
    env["PYTHONPATH"] = str(broken)
    # Modules the shim imports, planted in the directory it starts in (an agent's worktree).
    for planted in ("shim", "ctypes", "time"):
        (tmp_path / f"{planted}.py").write_text("raise SystemExit('a planted module ran')\n")
    script = tmp_path / "agent.py"
    script.write_text(
        "import os\n"
        "shim = open(f'/proc/{os.getppid()}/cmdline', 'rb').read().split(b'\\0')\n"
        "print('shim', [part.decode() for part in shim[1:4]])\n"
    )
    argv = [sys.executable, "-I", str(script)]  # the agent, too, ignores PYTHONPATH
    log = tmp_path / "agent.log"
    agent = reaper.agent(spawn(argv, cwd=tmp_path, env=env, log_path=log))
    assert agent.wait(timeout=30) == 0
    assert log.read_text().strip() == f"shim {['-I', '-S', '-c']}"


def test_spawn_appends_and_creates_parents(tmp_path: Path, write_agent, reaper) -> None:
    log = tmp_path / "deep" / "er" / "a.log"
    argv = write_agent("print('second')")
    log.parent.mkdir(parents=True)
    log.write_text("first\n")
    agent = reaper.agent(spawn(argv, cwd=tmp_path, env=clean_env(), log_path=log))
    assert agent.wait(timeout=30) == 0
    assert log.read_text() == "first\nsecond\n"


def test_spawn_missing_program_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SwarmError, match="no-such-agent-binary"):
        spawn(["no-such-agent-binary"], cwd=tmp_path, env=clean_env(), log_path=tmp_path / "l.log")


def test_identity_and_is_alive(start, tmp_path: Path) -> None:
    agent = start(f"publish({str(tmp_path / 'ready')!r}, 1)\nimport time\ntime.sleep(3600)\n")
    read_pid(tmp_path / "ready")
    assert identity_of(agent.identity.pid) == agent.identity
    # in the frame of the boot time kept for this boot: psutil's moves with a step of the clock
    assert agent.identity.create_time == starts.start_time(agent.identity.pid)
    assert is_alive(agent.identity)
    assert agent.poll() is None
    kill_tree(agent.identity, grace=5)
    assert not is_alive(agent.identity)  # a zombie until reaped, and zombies are not alive
    assert agent.wait(timeout=30) == -signal.SIGTERM
    assert not is_alive(agent.identity)
    assert identity_of(agent.identity.pid) is None or not is_alive(agent.identity)


def test_an_adopted_agent_is_waited_for_until_it_ends(start, tmp_path: Path) -> None:
    # After a restart the agent is not our child: its end is seen without waitpid, its code
    # read from its shim's record.
    if not SHIM_AVAILABLE:
        pytest.skip("the exit code of an adopted agent comes from its shim's record")
    agent = start(f"publish({str(tmp_path / 'ready')!r}, 1)\nimport time\ntime.sleep(3600)\n")
    read_pid(tmp_path / "ready")
    assert agent.wait(timeout=0.05) is None  # our child, still running: the timeout, then nothing
    adopted = adopt(agent.identity, log_path=agent.log_path, started_at=agent.started_at)
    assert adopted.wait(timeout=0.05) is None  # still running: the timeout, then nothing
    assert adopted.alive()
    waited: list[int | None] = []  # no timeout: until it ends, as our own child's wait
    waiter = threading.Thread(target=lambda: waited.append(adopted.wait()))
    waiter.start()
    for child in descendants(agent.identity):
        child.terminate()  # the agent ends: its shim records the status and exits
    waiter.join(timeout=60)
    assert waited == [-signal.SIGTERM]
    assert adopted.wait(timeout=60) == -signal.SIGTERM
    assert not adopted.alive()
    assert agent.wait(timeout=30) == -signal.SIGTERM  # our child: reaped, its code recorded
    # A process that is gone (or whose PID another now uses): its record answers.
    gone = adopt(agent.identity, log_path=agent.log_path, started_at=agent.started_at)
    assert gone.wait(timeout=30) == -signal.SIGTERM


def test_a_process_an_older_swarm_recorded_by_psutils_clock_is_still_known(
    start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # swarm before the kept boot time recorded psutil's start time; with the wall clock
    # stepped since the boot time was kept (31 s on a VM), a live manager or agent of such a
    # swarm was taken for gone after an upgrade: its store upgraded under it, its agents killed.
    monkeypatch.setattr(starts, "_boot", psutil.boot_time() - 31.0)
    agent = start(f"publish({str(tmp_path / 'ready')!r}, 1)\nimport time\ntime.sleep(3600)\n")
    read_pid(tmp_path / "ready")
    pid = agent.identity.pid
    legacy = replace(agent.identity, create_time=psutil.Process(pid).create_time())
    assert abs(legacy.create_time - starts.start_time(pid)) > 30  # the two clocks differ
    assert is_alive(legacy)
    assert is_alive(agent.identity)
    # Another process's start, in either reading, is no match (a PID reused).
    assert not is_alive(replace(legacy, create_time=legacy.create_time - 15))
    kill_tree(agent.identity, grace=5)
    assert not is_alive(legacy)


def test_is_alive_false_after_exit(start) -> None:
    agent = start("pass\n")
    assert agent.wait(timeout=30) == 0
    assert not is_alive(agent.identity)
    assert descendants(agent.identity) == []
    kill_tree(agent.identity, grace=1)  # nothing left to stop: a no-op


def test_forged_identity_never_signals_the_pid_owner(reaper: Reaper, tmp_path: Path) -> None:
    helper = reaper.popen(
        subprocess.Popen(
            [*agent_python(), "-c", "import time; time.sleep(3600)"],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    )
    real = identity_of(helper.pid)
    assert real is not None
    for forged in (
        replace(real, create_time=real.create_time - 60),
        replace(real, create_time=real.create_time + 60),
    ):
        assert not is_alive(forged)
        assert descendants(forged) == []
        kill_tree(forged, grace=0.2)
        assert helper.poll() is None
        assert is_alive(real)


def test_identity_of_unknown_pid() -> None:
    # Above any pid_max (2**22 on Linux, 99999 on macOS).
    assert identity_of(2**22 + 1) is None


def test_kill_tree_plain_sleeper(start, tmp_path: Path) -> None:
    agent = start(f"publish({str(tmp_path / 'ready')!r}, 1)\nimport time\ntime.sleep(3600)\n")
    read_pid(tmp_path / "ready")
    kill_tree(agent.identity, grace=10)
    assert agent.wait(timeout=30) == -signal.SIGTERM


def test_kill_tree_escalates_to_sigkill(start, tmp_path: Path) -> None:
    agent = start(
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"publish({str(tmp_path / 'ready')!r}, 1)\n"
        "while True:\n"
        "    time.sleep(1)\n",
        grace=0.3,  # the shim's own grace: when it sends SIGKILL
    )
    read_pid(tmp_path / "ready")
    kill_tree(agent.identity, grace=0.3)
    assert agent.wait(timeout=30) == -signal.SIGKILL


GRANDCHILD = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.setsid()
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w") as f:
    f.write(str(os.getpid()))
os.replace(tmp, sys.argv[1])
while True:
    time.sleep(1)
"""


def tree_agent(tmp_path: Path) -> str:
    """An agent with a group child and a grandchild that left the group and ignores SIGTERM."""
    return (
        "import subprocess, time\n"
        f"subprocess.Popen([sys.executable, '-c', {GRANDCHILD!r}, {str(tmp_path / 'gc')!r}])\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)'])\n"
        f"publish({str(tmp_path / 'child')!r}, child.pid)\n"
        f"publish({str(tmp_path / 'agent')!r}, os.getpid())\n"
        "time.sleep(3600)\n"
    )


def tree_pids(tmp_path: Path, reaper: Reaper) -> list[tuple[int, float]]:
    pids = [reaper.pid(read_pid(tmp_path / name)) for name in ("agent", "child", "gc")]
    return [(pid, psutil.Process(pid).create_time()) for pid in pids]


def test_kill_tree_reaches_grandchild_that_left_the_group(start, tmp_path: Path, reaper) -> None:
    agent = start(tree_agent(tmp_path), grace=0.3)
    pids = tree_pids(tmp_path, reaper)
    gc_pid = pids[2][0]
    assert os.getpgid(gc_pid) != agent.identity.pgid
    assert {p.pid for p in descendants(agent.identity)} >= {pid for pid, _ in pids[1:]}
    kill_tree(agent.identity, grace=0.3)
    assert all(gone(pid, ctime) for pid, ctime in pids)
    assert agent.wait(timeout=30) == -signal.SIGTERM


@pytest.mark.slow  # the frozen shim is waited for: its grace and 10 s
def test_kill_tree_of_a_frozen_shim_kills_its_tree_the_old_way(
    start, tmp_path: Path, reaper
) -> None:
    if not SHIM_AVAILABLE:
        pytest.skip("the shim is what is frozen here")
    # The agent freezes its shim (SIGSTOP), which then can stop nothing: after waiting for it,
    # kill_tree kills the group and every descendant itself, the one that left the group too.
    source = tree_agent(tmp_path).removesuffix("time.sleep(3600)\n")
    agent = start(
        source + "import signal\nos.kill(os.getppid(), signal.SIGSTOP)\ntime.sleep(3600)\n",
        grace=0.3,
    )
    pids = tree_pids(tmp_path, reaper)
    shim = psutil.Process(agent.identity.pid)
    wait_for(lambda: shim.status() == psutil.STATUS_STOPPED)
    kill_tree(agent.identity, grace=0.3)
    assert all(gone(pid, ctime) for pid, ctime in pids)
    assert agent.wait(timeout=30) == -signal.SIGKILL


def test_kill_tree_from_another_process(start, tmp_path: Path, reaper) -> None:
    agent = start(tree_agent(tmp_path), grace=0.3)
    pids = tree_pids(tmp_path, reaper)
    ident = agent.identity
    code = (
        "from worktree_swarm.core.models import ProcessIdentity\n"
        "from worktree_swarm.infra.proctree import kill_tree\n"
        f"kill_tree(ProcessIdentity(pid={ident.pid}, create_time={ident.create_time!r},"
        f" pgid={ident.pgid}), grace=0.3)\n"
    )
    env = clean_env({"PYTHONPATH": str(PACKAGE_ROOT)})
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert all(gone(pid, ctime) for pid, ctime in pids)
    assert agent.wait(timeout=30) == -signal.SIGTERM


def test_stop_reaps_and_returns_exit_code(start, tmp_path: Path) -> None:
    agent = start(f"publish({str(tmp_path / 'ready')!r}, 1)\nimport time\ntime.sleep(3600)\n")
    read_pid(tmp_path / "ready")
    assert agent.stop(grace=5) == -signal.SIGTERM
    assert agent.poll() == -signal.SIGTERM


def test_idle_seconds_grows_and_resets(start, tmp_path: Path) -> None:
    go, ack = tmp_path / "go", tmp_path / "ack"
    agent = start(
        "import time\n"
        "print('ready', flush=True)\n"
        f"while not os.path.exists({str(go)!r}):\n"
        "    time.sleep(0.01)\n"
        "print('tick', flush=True)\n"
        f"publish({str(ack)!r}, 1)\n"
        "time.sleep(3600)\n"
    )
    wait_for(lambda: "ready" in log_text(agent))
    first = agent.idle_seconds()
    wait_for(lambda: agent.idle_seconds() > first)
    # Enough idleness that the reset is visible despite scheduling noise.
    wait_for(lambda: agent.idle_seconds() > 1.0)
    before_activity = agent.last_activity()
    before = agent.idle_seconds()
    go.touch()
    wait_for(ack.exists)
    assert agent.last_activity() > before_activity
    assert agent.idle_seconds() < before
    assert agent.last_line() == "tick"


def test_last_line(start, tmp_path: Path) -> None:
    agent = start(
        "sys.stdout.write('x' * 200000 + '\\n')\n"
        "sys.stdout.buffer.write(b'first\\nlast \\xff line  \\n\\n   \\n')\n"
    )
    assert agent.wait(timeout=30) == 0
    assert agent.last_line() == "last \ufffd line"


def test_last_line_without_log(tmp_path: Path, start) -> None:
    agent = start("pass\n")
    agent.wait(timeout=30)
    agent.log_path.unlink()
    assert agent.last_line() == ""
    assert agent.idle_seconds() >= 0


def test_processes_in(start, tmp_path: Path, reaper) -> None:
    agent = start(f"publish({str(tmp_path / 'ready')!r}, 1)\nimport time\ntime.sleep(3600)\n")
    read_pid(tmp_path / "ready")
    inside = {p.pid for p in processes_in(tmp_path)}
    assert agent.identity.pid in inside
    assert os.getpid() not in inside
    assert agent.identity.pid not in {p.pid for p in processes_in(tmp_path / "logs")}
    agent.stop(grace=5)


def test_processes_in_a_snapshot_are_checked_to_be_inside_still(
    start, tmp_path: Path, reaper
) -> None:
    # `swarm clean` plans from one snapshot of every process's cwd: a process that moved since
    # (or whose PID now names another process) is not taken for a user of the worktree.
    worktree = tmp_path / "worktree"
    worktree.mkdir()
    agent = start(
        f"import time\nos.chdir({str(worktree)!r})\npublish({str(tmp_path / 'in')!r}, 1)\n"
        f"while not os.path.exists({str(tmp_path / 'go')!r}):\n    time.sleep(0.01)\n"
        f"os.chdir('/')\npublish({str(tmp_path / 'out')!r}, 1)\ntime.sleep(3600)\n"
    )
    read_pid(tmp_path / "in")
    cwds = proc_scan.working_directories()
    assert cwds is not None
    # The agent's shim is in tmp_path; the agent itself is in the worktree.
    assert (
        {p.pid for p in processes_in(worktree, cwds=cwds)}
        == {pid for pid, cwd in cwds.items() if cwd == str(worktree)}
        != set()
    )
    (tmp_path / "go").write_text("")
    read_pid(tmp_path / "out")
    assert any(cwd == str(worktree) for cwd in cwds.values())  # the snapshot says inside
    assert processes_in(worktree, cwds=cwds) == []
    assert processes_in(worktree) == []
    agent.stop(grace=5)


def test_processes_in_without_proc_finds_the_same(
    start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where there is no /proc (macOS), psutil asks each process for its cwd.
    agent = start(f"publish({str(tmp_path / 'ready')!r}, 1)\nimport time\ntime.sleep(3600)\n")
    read_pid(tmp_path / "ready")
    with_proc = {p.pid for p in processes_in(tmp_path)}
    monkeypatch.setattr(proc_scan, "_PROC_CWD", tmp_path / "no-proc")
    without = {p.pid for p in processes_in(tmp_path)}
    assert agent.identity.pid in without
    assert os.getpid() not in without
    assert without == with_proc
    assert agent.identity.pid not in {p.pid for p in processes_in(tmp_path / "logs")}
    agent.stop(grace=5)


def orphaning_agent(tmp_path: Path) -> str:
    """An agent that leaves a child behind in its process group and exits."""
    return (
        "import subprocess\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)'])\n"
        f"publish({str(tmp_path / 'child')!r}, child.pid)\n"
    )


def test_kill_tree_after_leader_was_reaped_kills_its_group(start, tmp_path, reaper) -> None:
    agent = start(orphaning_agent(tmp_path))
    child = read_pid(tmp_path / "child")
    try:
        ctime: float | None = psutil.Process(reaper.pid(child)).create_time()
    except psutil.NoSuchProcess:
        ctime = None  # the shim already killed what its agent left behind when it exited
    assert agent.wait(timeout=30) == 0
    assert not is_alive(agent.identity)
    kill_tree(agent.identity, grace=5)
    assert ctime is None or gone(child, ctime)


def test_kill_tree_with_unreaped_zombie_leader_returns(start, tmp_path, reaper) -> None:
    agent = start(orphaning_agent(tmp_path))
    child = read_pid(tmp_path / "child")
    try:
        ctime: float | None = psutil.Process(reaper.pid(child)).create_time()
    except psutil.NoSuchProcess:
        ctime = None  # the shim already killed what its agent left behind when it exited
    leader = psutil.Process(agent.identity.pid)
    wait_for(lambda: leader.status() == psutil.STATUS_ZOMBIE)
    kill_tree(agent.identity, grace=5)
    assert ctime is None or gone(child, ctime)
    assert agent.poll() == 0


def test_kill_tree_never_signals_a_shared_group(reaper: Reaper) -> None:
    # Not started in its own session: its group is ours, and must not be signalled.
    helper = reaper.popen(
        subprocess.Popen(
            [*agent_python(), "-c", "import time; time.sleep(3600)"], stdin=subprocess.DEVNULL
        )
    )
    ident = identity_of(helper.pid)
    assert ident is not None
    assert ident.pgid == os.getpgrp()
    kill_tree(ident, grace=5)
    assert helper.wait(timeout=30) == -signal.SIGTERM


def test_kill_tree_escalates_on_a_process_without_a_shim(tmp_path: Path, reaper) -> None:
    # An adopted process, or one whose shim died: the group and snapshot kill does it all.
    ready = tmp_path / "ready"
    code = (
        PUBLISH
        + "import signal, time\n"
        + "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        + f"publish({str(ready)!r}, os.getpid())\n"
        + "while True:\n    time.sleep(1)\n"
    )
    popen = reaper.popen(subprocess.Popen([*agent_python(), "-c", code], start_new_session=True))
    read_pid(ready)
    identity = identity_of(popen.pid)
    assert identity is not None
    assert identity.pgid == popen.pid  # it leads its own group, which is signalled too
    kill_tree(identity, grace=0.3)
    assert popen.wait(timeout=30) == -signal.SIGKILL


def test_shim_alive_follows_the_shim_not_the_pid(start, tmp_path: Path) -> None:
    if not SHIM_AVAILABLE:
        pytest.skip("no shim on this platform")
    agent = start(f"publish({str(tmp_path / 'ready')!r}, 1)\nimport time\ntime.sleep(3600)\n")
    read_pid(tmp_path / "ready")
    assert agent.record is not None
    assert shim_alive(agent.record)
    kill_tree(agent.identity, grace=10)
    agent.wait(timeout=30)
    assert not shim_alive(agent.record)
    # A record naming a live process that is not our shim (this test) is not a live shim.
    raw = json.loads(agent.record.read_text())
    me = psutil.Process()
    raw.update(pid=me.pid, start_ticks=None, started_at=me.create_time())
    agent.record.write_text(json.dumps(raw))
    recorded = read_record(agent.record)
    assert recorded is not None
    assert recorded.shim_pid == me.pid
    assert not shim_alive(agent.record)
    # No record (a shim killed before it wrote one, or it was removed): no live shim.
    assert not shim_alive(tmp_path / "no-such-record.json")


def test_a_record_naming_a_live_process_that_is_not_its_shim_kills_nothing(
    start, tmp_path: Path, reaper: Reaper
) -> None:
    # A `*.exit.json` in a task's logs is a file its agent can write: one naming an unrelated
    # live process (its PID and start) had that process SIGTERMed, its group and children too.
    if not SHIM_AVAILABLE:
        pytest.skip("no shim on this platform")
    logs = tmp_path / "logs"
    logs.mkdir()
    sleeper = reaper.popen(
        subprocess.Popen(
            ["sleep", "600"], cwd=tmp_path, stdin=subprocess.DEVNULL, start_new_session=True
        )
    )
    forged = {
        "version": 1,
        "pid": sleeper.pid,
        "start_ticks": shim.start_ticks(sleeper.pid),
        "started_at": time.time(),
        "exit_code": None,
        "ended_at": None,
    }
    (logs / "checks-0.exit.json").write_text(json.dumps(forged))
    proc_scan.kill_left_in(logs, grace=0.5, within=(tmp_path,))
    assert sleeper.poll() is None
    # The live shim that wrote its record is still stopped by it, tree and all.
    agent = start(f"publish({str(tmp_path / 'ready')!r}, 1)\nimport time\ntime.sleep(3600)\n")
    read_pid(tmp_path / "ready")
    assert agent.record is not None
    assert shim_alive(agent.record)
    proc_scan.kill_left_in(logs, grace=5, within=(tmp_path,))
    assert agent.wait(timeout=30) is not None
    assert not shim_alive(agent.record)
    assert sleeper.poll() is None


# Marked as a shim's tree: ignores SIGTERM and reaps nothing (its child's PID is freed at
# once), and starts a child that ends at SIGTERM; prints that child's PID.
MARKED_PARENT = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)'],
                         preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
print(child.pid, flush=True)
time.sleep(3600)
"""


def _start_on_pid(pid: int, reaper: Reaper) -> subprocess.Popen[bytes] | None:
    """A sleeper started on *pid* (the kernel's next PID set just before), or None."""
    for _ in range(200):
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        started = reaper.popen(subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL))
        if started.pid == pid:
            return started
        started.kill()
    return None


@pytest.mark.skipif(
    not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK), reason="needs to set the next PID"
)
def test_a_marked_process_whose_pid_is_taken_meanwhile_leaves_the_new_owner_alone(
    reaper: Reaper, tmp_path: Path
) -> None:
    # `swarm stop` found a check's shim and the check, and while it gave the shim its grace
    # the check ended and its PID went to another program: it took that one's identity then,
    # and killed it.
    record = tmp_path / "logs" / "checks-1.json"
    parent = reaper.popen(subprocess.Popen(
        [sys.executable, "-c", MARKED_PARENT], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
        env={**os.environ, "SWARM_SHIM": str(record)}, start_new_session=True,
    ))  # fmt: skip
    assert parent.stdout is not None
    child = reaper.pid(int(parent.stdout.readline()))
    taken: list[subprocess.Popen[bytes] | None] = []

    def take_the_pid() -> None:
        wait_for(lambda: not psutil.pid_exists(child))
        taken.append(_start_on_pid(child, reaper))

    thief = threading.Thread(target=take_the_pid)
    thief.start()
    proc_scan.kill_marked(record.parent, grace=3)  # the parent first: the child ends then
    thief.join()
    (owner,) = taken
    assert owner is not None, "no process got the freed PID"
    assert parent.wait(timeout=10) == -signal.SIGKILL
    parent.stdout.close()
    assert owner.poll() is None  # the PID's new owner runs on


def test_kill_tree_of_a_killed_shim_ends_its_group_by_the_mark_one_of_it_carries(
    start, tmp_path: Path, reaper: Reaper
) -> None:
    if not SHIM_AVAILABLE:
        pytest.skip("no shim marks the tree")
    # The shim SIGKILLed (the OOM killer) and reaped: its PID is free, its group is not. One
    # member carries the shim's mark, the other wiped it: both are the shim's, and end.
    agent = start(
        "import subprocess, time\n"
        "env = {k: v for k, v in os.environ.items() if k != 'SWARM_SHIM'}\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)'],"
        " env=env)\n"
        f"publish({str(tmp_path / 'child')!r}, child.pid)\n"
        "time.sleep(3600)\n"
    )
    child = reaper.pid(read_pid(tmp_path / "child"))
    (command,) = psutil.Process(agent.identity.pid).children()
    reaper.pid(command.pid)
    left = [(p.pid, p.create_time()) for p in (command, psutil.Process(child))]
    os.kill(agent.identity.pid, signal.SIGKILL)
    assert agent.popen is not None
    assert agent.popen.wait(timeout=30) == -signal.SIGKILL
    assert {os.getpgid(pid) for pid, _ in left} == {agent.identity.pgid}
    kill_tree(agent.identity, grace=5)
    assert all(gone(pid, started) for pid, started in left)


def test_stopping_an_agent_whose_shim_was_killed_ends_a_leftover_started_with_no_environment(
    start, tmp_path: Path, reaper: Reaper
) -> None:
    if not SHIM_AVAILABLE:
        pytest.skip("no shim marks the tree")
    # The shim SIGKILLed and its command gone: what is left of the group was started with
    # `env -i` (no mark), in the directory the agent was started in. It is the agent's.
    agent = start(
        "import subprocess, time\n"
        "child = subprocess.Popen(['env', '-i', 'sleep', '3600'], env={})\n"
        f"publish({str(tmp_path / 'child')!r}, child.pid)\n"
        "time.sleep(3600)\n"
    )
    child = psutil.Process(reaper.pid(read_pid(tmp_path / "child")))
    wait_for(lambda: child.name() == "sleep")  # env has exec'd it
    (command,) = psutil.Process(agent.identity.pid).children()
    reaper.pid(command.pid)
    os.kill(agent.identity.pid, signal.SIGKILL)
    assert agent.popen is not None
    assert agent.popen.wait(timeout=30) == -signal.SIGKILL
    command.kill()
    wait_for(lambda: gone(command.pid, command.create_time()))
    assert os.getpgid(child.pid) == agent.identity.pgid
    assert "SWARM_SHIM" not in child.environ()
    agent.stop(grace=5)
    assert gone(child.pid, child.create_time())


def test_kill_tree_leaves_a_shell_job_that_took_a_dead_shims_group_number_in_its_worktree(
    tmp_path: Path, reaper: Reaper
) -> None:
    # A user's `git log | less` in a task's worktree after its shim died: the job's leader
    # took the dead shim's PID (a group number free again), exited, and left its pager in
    # the group, working in the worktree, in the user's shell's session. Not the agent's.
    worktree = tmp_path / "worktree"
    worktree.mkdir()
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 3600 & echo $!; exit 0"],
        cwd=worktree, stdout=subprocess.PIPE, text=True, process_group=0,
    )  # fmt: skip
    assert leader.stdout is not None
    with leader.stdout:
        pager = psutil.Process(reaper.pid(int(leader.stdout.readline())))
    leader.wait()  # reaped: its PID free, its group number held by the pager
    assert os.getpgid(pager.pid) == leader.pid
    assert os.getsid(pager.pid) == os.getsid(0)
    shim = ProcessIdentity(pid=leader.pid, create_time=pager.create_time() - 60, pgid=leader.pid)
    kill_tree(shim, grace=2, within=(worktree,))
    assert pager.is_running()
    assert pager.status() != psutil.STATUS_ZOMBIE


def test_kill_tree_of_a_leader_gone_at_sigterm_kills_its_stray_without_its_empty_group(
    tmp_path: Path, reaper: Reaper
) -> None:
    # The leader dies at SIGTERM, its group with it; its child left the group and ignores
    # SIGTERM. The group's number, free now, is not signalled with the SIGKILL.
    code = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {GRANDCHILD!r}, {str(tmp_path / 'gc')!r}])\n"
        "time.sleep(3600)\n"
    )
    leader = reaper.popen(subprocess.Popen([*agent_python(), "-c", code], start_new_session=True))
    stray = reaper.pid(read_pid(tmp_path / "gc"))
    stray_started = psutil.Process(stray).create_time()
    identity = identity_of(leader.pid)
    assert identity is not None
    kill_tree(identity, grace=0.3)
    assert leader.wait(timeout=30) == -signal.SIGTERM
    assert gone(stray, stray_started)


@pytest.mark.parametrize("marked", [["--grace", "soon"], ["--grace"]])
def test_a_process_marked_as_a_shim_with_no_grace_it_can_read_is_stopped_as_any_other(
    reaper: Reaper, marked: list[str]
) -> None:
    from worktree_swarm.infra.shim import MARKER  # noqa: PLC0415

    argv = [*agent_python(), "-c", "import time; time.sleep(3600)", MARKER, *marked]
    popen = reaper.popen(subprocess.Popen(argv, start_new_session=True))
    wait_for(lambda: MARKER in psutil.Process(popen.pid).cmdline())
    identity = identity_of(popen.pid)
    assert identity is not None
    kill_tree(identity, grace=5)
    assert popen.wait(timeout=30) == -signal.SIGTERM


def test_a_process_that_ends_while_it_is_looked_at_is_taken_for_gone(
    monkeypatch: pytest.MonkeyPatch, reaper: Reaper
) -> None:
    # It ends (and is reaped) between two of proctree's reads of it. No real process can be
    # timed to end there, so the read of its start (in `starts`, not proctree) is wrapped to
    # end it, for real, right after: each asking then finds no process, and raises nothing.
    def ending(read: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def read_then_end(arg: Any) -> Any:
            value = read(arg)
            if sleeper.poll() is None:
                sleeper.kill()
                sleeper.wait()
            return value

        return read_then_end

    start_time, of = starts.start_time, starts.of
    for ask in ("identity_of", "is_frozen", "kill_tree"):
        sleeper = reaper.popen(
            subprocess.Popen(
                [*agent_python(), "-c", "import time; time.sleep(3600)"], start_new_session=True
            )
        )
        identity = identity_of(sleeper.pid)
        assert identity is not None
        monkeypatch.setattr(starts, "start_time", ending(start_time))
        monkeypatch.setattr(starts, "of", ending(of))
        if ask == "identity_of":
            assert identity_of(sleeper.pid) is None
        elif ask == "is_frozen":
            assert not is_frozen(identity)
        else:
            kill_tree(identity, grace=5)
        monkeypatch.undo()
        assert sleeper.returncode == -signal.SIGKILL, ask  # ended by the wrapper, not swarm


def test_a_live_shim_is_known_by_its_record_and_its_command_lends_its_secrets(
    start, tmp_path: Path
) -> None:
    # What `swarm stop` trusts a record to name, and whose environment it learns secrets from.
    if not SHIM_AVAILABLE:
        pytest.skip("no shim on this platform")
    value = f"Kq7v{os.getpid()}xR2m{time.monotonic_ns()}"
    agent = start(
        f"publish({str(tmp_path / 'ready')!r}, 1)\nimport time\ntime.sleep(3600)\n",
        env={"SUPERVISED_API_KEY": value},
    )
    read_pid(tmp_path / "ready")
    assert agent.record is not None
    assert proctree.is_shim_of(agent.identity, agent.record)
    assert not proctree.is_shim_of(agent.identity, tmp_path / "elsewhere" / "a.exit.json")
    assert value in redact.redact(f"token {value}")  # not known to this process yet
    proctree.learn_secrets(agent.identity)
    assert value not in redact.redact(f"token {value}")
    agent.stop(grace=5)
    assert agent.wait(timeout=30) is not None
    assert not proctree.is_shim_of(agent.identity, agent.record)  # ended: names nothing
