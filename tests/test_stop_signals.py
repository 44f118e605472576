"""Stop signals to a run's manager (the real CLI): before its tasks start, and what it says."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import git, hang_git_at, killed_at_git
from tests.test_run import (
    argv_toml,
    manifest,
    pid_alive,
    status_json,
    swarm,
    swarm_bg,
    wait_for,
)

AgentFactory = Callable[[str], list[str]]


def _run_states(repo: Path) -> list[str]:
    return [run["state"] for run in json.loads(swarm(repo, "runs", "--json").stdout)["runs"]]


def test_a_stop_signal_during_the_guards_start_ends_the_run_interrupted_at_once(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A resume after your `git gc` walks the whole history as its guard starts (minutes on a
    # big repository): the signal was only noted, and the run went on until the walk ended.
    agent = write_agent("open('work.txt', 'w').write('work')")
    path = manifest(
        repo, f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "t"\nprompt = "p"\n'
    )
    run = [sys.executable, "-m", "worktree_swarm.cli", "-C", str(repo), "run", path]
    (tmp_path / "killed").mkdir()
    killed_at_git(tmp_path / "killed", monkeypatch, "update-ref", run)  # its guard holds objects
    pid_file = tmp_path / "walk.pid"
    hung = hang_git_at(
        tmp_path,
        monkeypatch,
        "rev-list",
        then=f"echo $$ > {shlex.quote(str(pid_file))}; exec sleep 600",
    )
    git(repo, "gc", "-q", "--prune=now")  # the held loose objects gone: the walk says if needed
    resume = swarm_bg(repo, "resume")
    try:
        wait_for(hung.exists, what="the resume's walk of the history")
        resume.send_signal(signal.SIGTERM)
        assert resume.wait(timeout=60) == 130
    finally:
        if resume.poll() is None:
            resume.kill()
            resume.wait(timeout=30)
    assert not pid_alive(int(pid_file.read_text()))  # the walk ended with it
    assert _run_states(repo) == ["interrupted"]
    assert status_json(repo)["t"]["state"] == "pending"
    out = swarm(repo, "resume")  # its git the real one from the first rev-list on
    assert out.returncode == 0, out.stderr
    assert status_json(repo)["t"]["state"] == "done"
    assert _run_states(repo) == ["finished"]


def test_a_stop_signal_during_the_guards_baseline_of_your_checkout_ends_its_git_add(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The baseline's `git add --all` of a huge checkout takes minutes, and no stop signal
    # could cut it short: Ctrl-C was only noted, and the run went on once git was done.
    agent = write_agent("open('work.txt', 'w').write('work')")
    path = manifest(
        repo, f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "t"\nprompt = "p"\n'
    )
    pid_file = tmp_path / "add.pid"
    # As git holds its lock on the index it writes (the guard's scratch one) while it adds.
    hung = hang_git_at(
        tmp_path,
        monkeypatch,
        "add",
        then=f'echo $$ > {shlex.quote(str(pid_file))}; : > "$GIT_INDEX_FILE.lock"; exec sleep 600',
    )
    manager = swarm_bg(repo, "run", path)
    try:
        wait_for(hung.exists, what="the baseline's git add")
        manager.send_signal(signal.SIGINT)
        assert manager.wait(timeout=60) == 130
    finally:
        if manager.poll() is None:
            manager.kill()
            manager.wait(timeout=30)
    assert not pid_alive(int(pid_file.read_text()))  # the git ended with it
    # Nor its lock (swarm's own `repo.lock`, `manager.lock` stay): no later add is refused.
    assert list((repo / ".git").rglob("*index.lock")) == []
    assert _run_states(repo) == ["interrupted"]
    assert status_json(repo)["t"]["state"] == "pending"
    out = swarm(repo, "resume")  # the real git from the first add on
    assert out.returncode == 0, out.stderr
    assert status_json(repo)["t"]["state"] == "done"
    assert _run_states(repo) == ["finished"]


# `swarm run` that gets two stop signals (as by Ctrl-C twice) while its guard starts: the
# second is raised at once, wherever the guard is.
_SIGNALLED_TWICE_AS_THE_GUARD_STARTS = """
import subprocess
import sys
from worktree_swarm.cli import main
from worktree_swarm.guard.watcher import Guard
from worktree_swarm.infra import interrupts

start = Guard.start

def signalled(self):
    start(self)
    interrupts.on_signal()  # what the handler does: noted
    interrupts.on_signal()  # raised at once

Guard.start = signalled
sys.argv = ["swarm", *sys.argv[1:]]
sys.exit(main())
"""


def test_a_stop_before_the_run_loop_ends_the_run_interrupted_and_resumable(
    repo: Path, write_agent: AgentFactory
) -> None:
    # It left the run `running` with no manager: `swarm status` said the manager was gone.
    agent = write_agent("open('work.txt', 'w').write('work')")
    path = manifest(
        repo, f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "t"\nprompt = "p"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-c", _SIGNALLED_TWICE_AS_THE_GUARD_STARTS, "run", path], cwd=repo,
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 130, proc.stderr
    assert _run_states(repo) == ["interrupted"]
    assert status_json(repo)["t"]["state"] == "pending"
    out = swarm(repo, "resume")
    assert out.returncode == 0, out.stderr
    assert status_json(repo)["t"]["state"] == "done"


def test_a_stop_before_a_resumes_loop_leaves_the_logs_of_agents_still_running_alone(
    repo: Path, tmp_path: Path, write_agent: AgentFactory
) -> None:
    # Its agents run on (not adopted yet): their logs were redacted by a rewrite in place
    # while they wrote to them, which loses what they append meanwhile. Redacted by the
    # manager that ends them.
    token = "ghp_" + "R4t5Y6" * 6
    started, gate = tmp_path / "started", tmp_path / "gate"
    agent = write_agent(
        "import pathlib, time\n"
        f"print({token!r}, flush=True)\n"
        f"pathlib.Path({str(started)!r}).touch()\n"
        f"while not pathlib.Path({str(gate)!r}).exists():\n"
        "    time.sleep(0.05)\n"
        "open('work.txt', 'w').write('work')\n"
    )
    path = manifest(
        repo, f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "t"\nprompt = "p"\n'
    )
    manager = swarm_bg(repo, "run", path)
    try:
        wait_for(started.exists, what="the agent")
    finally:
        manager.kill()  # the manager alone: its agent runs on
        manager.wait(timeout=30)
    (log,) = (repo / ".git" / "swarm" / "runs").glob("*/t/attempt-1.log")
    before = log.read_bytes()
    assert token.encode() in before
    proc = subprocess.run(
        [sys.executable, "-c", _SIGNALLED_TWICE_AS_THE_GUARD_STARTS, "resume"], cwd=repo,
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 130, proc.stderr
    assert log.read_bytes() == before  # not rewritten under its writer
    gate.touch()
    out = swarm(repo, "resume")
    assert out.returncode == 0, out.stderr
    assert status_json(repo)["t"]["state"] == "done"
    assert token not in log.read_text()  # redacted by the manager that saw it end


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_stop_signal_says_at_once_that_the_run_stops_but_not_after_a_hangup(
    repo: Path, tmp_path: Path, write_agent: AgentFactory, how: str
) -> None:
    # Nothing was said until the stop ended: a second Ctrl-C, pressed meanwhile, cut it short.
    agent = write_agent(
        "import pathlib, sys, time\n"
        "pathlib.Path(sys.argv[1]).touch()\n"
        "while True:\n    time.sleep(0.05)\n"
    )
    started = tmp_path / "started"
    agent_toml = argv_toml([*agent, str(started)])
    path = manifest(repo, f'[defaults]\nagent = {agent_toml}\n[[task]]\nid = "a"\nprompt = "p"\n')
    proc = swarm_bg(repo, "run", path)
    try:
        wait_for(started.exists, what="the first agent")
        proc.send_signal(getattr(signal, how))
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    said = (repo.parent / "bg.log").read_text().splitlines()
    told = [line for line in said if line.startswith("swarm: stopping")]
    if how == "SIGHUP":  # the terminal is gone: nobody to tell
        assert told == []
    else:
        assert told == [
            (
                "swarm: stopping 1 task under way (its work is kept); Ctrl-C again quits at"
                " once, leaving any agent not stopped yet to `swarm stop`"
            )
        ]
        assert said[-1] == "swarm: interrupted"
    assert status_json(repo)["a"]["state"] == "stopped"


def test_a_run_interrupted_with_tasks_left_refuses_a_new_run_until_forced_as_a_dead_one(
    repo: Path, write_agent: AgentFactory
) -> None:
    # A new run took the id of a task not started yet: the old run's resume then failed it
    # ("swarm/a is run ...'s now"), its work never done, and told to `swarm resume` again.
    agent = write_agent("import os; open('work.txt', 'w').write(os.environ['SWARM_RUN_ID'])")
    path = manifest(
        repo,
        f"[defaults]\nagent = {argv_toml(agent)}\n"
        '[[task]]\nid = "a"\nprompt = "p"\n[[task]]\nid = "b"\nprompt = "p"\n',
    )
    proc = subprocess.run(
        [sys.executable, "-c", _SIGNALLED_TWICE_AS_THE_GUARD_STARTS, "run", path], cwd=repo,
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 130, proc.stderr
    [old] = json.loads(swarm(repo, "runs", "--json").stdout)["runs"]
    again = ("run", "--agent", shlex.join(agent), "-t", "a=again")
    refused = swarm(repo, *again)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr == (
        f"swarm: run {old['run_id']} was interrupted with tasks left; continue it with"
        " `swarm resume` (or pass --force to abandon it)\n"
    )
    assert _run_states(repo) == ["interrupted"]  # nothing created
    assert git(repo, "branch", "--list", "swarm/*") == ""
    forced = swarm(repo, *again, "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"abandoned run {old['run_id']} (its work checkpointed)" in forced.stderr
    assert _run_states(repo) == ["abandoned", "finished"]
    old_rows = json.loads(swarm(repo, "status", "--json", "--run", old["run_id"]).stdout)
    assert {t["task_id"]: t["state"] for t in old_rows["tasks"]} == {"a": "stopped", "b": "stopped"}
    new = json.loads(swarm(repo, "runs", "--json").stdout)["runs"][1]["run_id"]
    assert git(repo, "show", "swarm/a:work.txt") == new
