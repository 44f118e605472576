"""A step of the wall clock during a run (NTP's first sync, a VM restored, WSL catching up).

The clock of the machine cannot be stepped by a test. What a step does to a swarm process is
what this hook does to the ones it is loaded into (``sitecustomize`` on their PYTHONPATH): once
the trigger file exists, the wall clock reads *by* seconds later, and so does the boot time the
kernel gives (``/proc/stat``'s is "now minus uptime"), which psutil adds to every process's
start. The processes themselves, the run and the commands that read it are real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.parametrize("by", [3.0, -3.0, 3600.0])
def test_a_step_of_the_wall_clock_ends_no_agent_and_no_manager(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, by: float
) -> None:
    # A step of over a second made every running agent's start differ from the one recorded:
    # each was taken for gone and killed as a leftover, and `swarm status` said the manager
    # was not running while it ran.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_STEP)
    trigger = tmp_path / "stepped"
    agent = argv_toml([*write_agent(_AGENT), str(tmp_path)])
    text = f'[defaults]\nagent = {agent}\njobs = 2\ntimeout = "10m"\n'
    text += '[[task]]\nid = "a"\nprompt = "p"\n[[task]]\nid = "b"\nprompt = "p"\n'
    env = {**os.environ, "SWARM_TEST_STEP": str(trigger), "SWARM_TEST_STEP_BY": str(by)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))
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
