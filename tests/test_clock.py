"""A step of the wall clock during a run (NTP's first sync, a VM restored, WSL catching up).

The clock of the machine cannot be stepped by a test. What a step does to a swarm process is
what this hook does to the ones it is loaded into (``sitecustomize`` on their PYTHONPATH): once
the trigger file exists, the wall clock reads *by* seconds later, and so does the boot time the
kernel gives (``/proc/stat``'s is "now minus uptime"), which psutil adds to every process's
start. The processes themselves, the run and the commands that read it are real.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.test_run import argv_toml, manifest, swarm_bg, wait_for
from tests.test_shim import AgentFactory

pytestmark = pytest.mark.skipif(
    not Path("/proc/stat").exists(), reason="the kernel's boot time is Linux's /proc/stat"
)

_STEP = """
import os, time
_trigger, _by = os.environ["SWARM_TEST_STEP"], float(os.environ["SWARM_TEST_STEP_BY"])
_time, _time_ns = time.time, time.time_ns
def _step():
    return _by if os.path.exists(_trigger) else 0.0
time.time = lambda: _time() + _step()
time.time_ns = lambda: _time_ns() + int(_step() * 1e9)
import psutil, psutil._pslinux as _linux
_boot_time = _linux.boot_time
def boot_time():
    return _boot_time() + _step()
_linux.boot_time = psutil.boot_time = boot_time
"""

# Says it started, then waits for the step and for the test's word to finish.
_AGENT = """
import os, pathlib, sys, time
here = pathlib.Path(sys.argv[1])
(here / ("started-" + os.environ["SWARM_TASK_ID"])).touch()
while not (here / "go").exists():
    time.sleep(0.05)
pathlib.Path(os.environ["SWARM_TASK_ID"] + ".txt").write_text("lived through the step\\n")
"""


def _stepping(tmp_path: Path, by: float) -> tuple[dict[str, str], Path]:
    """An environment whose swarm processes step their wall clock *by* once the file is made."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_STEP)
    trigger = tmp_path / "stepped"
    env = {**os.environ, "SWARM_TEST_STEP": str(trigger), "SWARM_TEST_STEP_BY": str(by)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))
    return env, trigger


@pytest.mark.parametrize("by", [3.0, -3.0, 3600.0])
def test_a_step_of_the_wall_clock_ends_no_agent_and_no_manager(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, by: float
) -> None:
    # A step of over a second made every running agent's start differ from the one recorded:
    # each was taken for gone and killed as a leftover, and `swarm status` said the manager
    # was not running while it ran.
    env, trigger = _stepping(tmp_path, by)
    agent = argv_toml([*write_agent(_AGENT), str(tmp_path)])
    text = f'[defaults]\nagent = {agent}\njobs = 2\ntimeout = "10m"\n'
    text += '[[task]]\nid = "a"\nprompt = "p"\n[[task]]\nid = "b"\nprompt = "p"\n'
    manager = swarm_bg(repo, "run", manifest(repo, text), env=env)
    try:
        wait_for(
            lambda: all((tmp_path / f"started-{t}").exists() for t in "ab"), what="both agents"
        )
        trigger.touch()  # the clock steps
        status = subprocess.run(
            [sys.executable, "-m", "worktree_swarm.cli", "status", "--json"],
            cwd=repo, env=env, capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        tasks = {t["task_id"]: t for t in json.loads(status.stdout)["tasks"]}
        assert {t: (tasks[t]["state"], tasks[t]["alive"]) for t in "ab"} == {
            "a": ("running", True), "b": ("running", True)
        }, status.stdout  # fmt: skip
        assert json.loads(status.stdout)["manager_running"] is True
        (tmp_path / "go").touch()
        assert manager.wait(timeout=120) == 0
    finally:
        (tmp_path / "go").touch()
        if manager.poll() is None:
            manager.kill()
            manager.wait(timeout=60)
    for task in "ab":
        assert subprocess.run(
            ["git", "show", f"swarm/{task}:{task}.txt"], cwd=repo, capture_output=True,
            text=True, check=True,
        ).stdout == "lived through the step\n"  # fmt: skip


_KEPT = """
import os
from pathlib import Path
from worktree_swarm.infra import fs
fs._kept_in = lambda: Path(os.environ["SWARM_TEST_KEPT_IN"])
"""


def test_start_times_kept_across_a_step_still_read_as_wall_clock_times(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    # The boot time was kept, then the clock stepped 100 s forward: a start time (kept boot +
    # ticks) was 100 s behind the wall clock. `swarm run --detach` took its own manager for an
    # older one ("the background manager exited 0"), and attempts' start times were 100 s off.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_KEPT)
    kept = tmp_path / "kept" / f"worktree-swarm-{os.getuid()}"
    kept.mkdir(parents=True, mode=0o700)
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    (kept / f"boot-{boot_id}").write_text(repr(psutil.boot_time() - 100.0))
    env = {**os.environ, "SWARM_TEST_KEPT_IN": str(kept.parent)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))
    agent = argv_toml(write_agent("import pathlib\npathlib.Path('a.txt').write_text('a')\n"))
    text = f'[defaults]\nagent = {agent}\n[[task]]\nid = "a"\nprompt = "p"\n'
    before = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "run", manifest(repo, text), "--detach"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("swarm: manager running in the background (pid ")
    db = repo / ".git" / "swarm" / "state.db"

    def ended() -> bool:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            return conn.execute("SELECT ended_at FROM runs").fetchone()[0] is not None

    wait_for(ended, what="the run to end")
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (started,) = conn.execute("SELECT started_at FROM attempts").fetchone()
    assert before - 1 <= started <= time.time()


@pytest.mark.long
def test_an_agent_adopted_after_a_step_keeps_the_time_its_timeout_left(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    # The manager was killed, the clock stepped an hour forward, `swarm resume` adopted the
    # live agent: its timeout counted from the record's wall-clock start, an hour "ago", and
    # the agent (10 minutes to go) was killed as timed out at once.
    env, trigger = _stepping(tmp_path, 3600.0)
    agent = argv_toml([*write_agent(_AGENT), str(tmp_path)])
    text = f'[defaults]\nagent = {agent}\ntimeout = "10m"\n[[task]]\nid = "a"\nprompt = "p"\n'
    manager = swarm_bg(repo, "run", manifest(repo, text), env=env)
    resumed = None
    try:
        wait_for((tmp_path / "started-a").exists, what="the agent")
        manager.kill()
        manager.wait(timeout=60)
        trigger.touch()  # the clock steps while no manager runs
        resumed = swarm_bg(repo, "resume", env=env)

        def state() -> str:
            out = subprocess.run(
                [sys.executable, "-m", "worktree_swarm.cli", "status", "--json"],
                cwd=repo, env=env, capture_output=True, text=True, timeout=120, check=True,
            )  # fmt: skip
            report = json.loads(out.stdout)
            task = report["tasks"][0]
            if task["state"] == "running" and not report["manager_running"]:
                return "waiting"  # the killed manager's record, not adopted yet
            return str(task["state"])

        seen = ["waiting"]

        def adopted() -> bool:
            seen[0] = state()
            return seen[0] != "waiting"

        wait_for(adopted, what="the adoption")
        assert seen[0] == "running"
        (tmp_path / "go").touch()
        assert resumed.wait(timeout=120) == 0
    finally:
        (tmp_path / "go").touch()
        for proc in (manager, resumed):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
    assert (
        subprocess.run(
            ["git", "show", "swarm/a:a.txt"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout
        == "lived through the step\n"
    )
