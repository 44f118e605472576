"""Git lock files an agent (or its checks) plants never block swarm's writes nor crash it.

A lock whose time is set in the future never ages, a directory named as a lock is never
git's, and a stale ``HEAD.lock`` left in the admin dir before switching the worktree blocked
the guard's put-back: each is gone past, the work committed on ``swarm/<id>``, main untouched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import git
from tests.test_run import AgentFactory, argv_toml, manifest, status_json, swarm, wait_for
from worktree_swarm.git.gitfiles import stale_lock

# Writes its work, then plants locks where swarm's git writes next. argv: how, then which.
PLANT = """
import os, pathlib, subprocess, sys, time
how, which = sys.argv[1], sys.argv[2:]
def git(*args):
    return subprocess.run(['git', *args], check=True, capture_output=True, text=True).stdout
common = pathlib.Path(git('rev-parse', '--path-format=absolute', '--git-common-dir').strip())
admin = pathlib.Path(git('rev-parse', '--path-format=absolute', '--git-dir').strip())
pathlib.Path('work.txt').write_text('own work\\n')
if 'switch' in which:
    git('checkout', '-q', '-b', 'elsewhere')
named = {'ref': common / 'refs/heads/swarm' / (os.environ['SWARM_TASK_ID'] + '.lock'),
         'HEAD': admin / 'HEAD.lock', 'index': admin / 'index.lock'}
for name in which:
    if name == 'switch':
        continue
    lock = named[name]
    if how == 'dir':  # git never makes one; it blocked git all the same
        lock.mkdir()
        (lock / 'inside').write_text('planted\\n')
    else:
        lock.write_text('')
    when = time.time() + (365 * 86400 if how == 'future' else -60)  # `touch -d '+1 year'`
    os.utime(lock, (when, when))
"""


def _run(repo: Path, agent: list[str], checks: list[str] | None = None) -> str:
    """`swarm run` of task t with *agent* (and *checks*); its output, which has no traceback."""
    text = f'[[task]]\nid = "t"\nprompt = "p"\nagent = {argv_toml(agent)}\n'
    if checks is not None:
        text += f"checks = [{argv_toml(checks)}]\n"
    out = swarm(repo, "run", manifest(repo, text))
    said = out.stdout + out.stderr
    assert "Traceback" not in said, said
    assert out.returncode == (0 if status_json(repo)["t"]["state"] == "done" else 1), said
    return said


def _locks(repo: Path) -> list[Path]:
    """Lock files (or directories) left anywhere in *repo*'s git dir but swarm's own."""
    common = repo / ".git"
    return [p for p in common.rglob("*.lock") if common / "swarm" not in p.parents]


@pytest.mark.parametrize(
    ("how", "which"),
    [
        ("future", ["ref"]),  # `git commit` of the checkpoint
        ("future", ["index"]),  # the checkpoint's staging takes index.lock as git does
        ("future", ["ref", "HEAD", "index"]),  # one commit meets several
        ("dir", ["ref"]),
        ("dir", ["index"]),
    ],
)
def test_a_lock_an_agent_plants_never_keeps_its_work_off_its_branch(
    repo: Path, write_agent: AgentFactory, how: str, which: list[str]
) -> None:
    main = git(repo, "rev-parse", "main")
    said = _run(repo, [*write_agent(PLANT), how, *which])
    assert status_json(repo)["t"]["state"] == "done", said
    assert git(repo, "show", "swarm/t:work.txt") == "own work"
    assert git(repo, "rev-parse", "main") == main
    assert _locks(repo) == []


@pytest.mark.parametrize("how", ["stale", "future", "dir"])
def test_an_agent_that_switched_its_worktree_past_a_head_lock_it_planted_is_put_back(
    repo: Path, write_agent: AgentFactory, how: str
) -> None:
    main = git(repo, "rev-parse", "main")
    said = _run(repo, [*write_agent(PLANT), how, "switch", "HEAD"])
    row = status_json(repo)["t"]
    assert row["state"] == "failed", said
    assert "its agent switched its worktree from swarm/t to elsewhere" in str(row["reason"])
    assert git(repo, "show", "swarm/t:work.txt") == "own work"
    assert git(Path(str(row["worktree"])), "symbolic-ref", "HEAD") == "refs/heads/swarm/t"
    assert git(repo, "rev-parse", "main") == main


@pytest.mark.parametrize("which", ["HEAD", "index"])
def test_checks_that_switch_the_worktree_past_a_lock_they_planted_are_undone(
    repo: Path, write_agent: AgentFactory, which: str
) -> None:
    main = git(repo, "rev-parse", "main")
    agent = write_agent("import pathlib\npathlib.Path('work.txt').write_text('own work\\n')\n")
    check = [*write_agent(PLANT), "stale", "switch", which]
    said = _run(repo, agent, checks=check)
    row = status_json(repo)["t"]
    assert row["state"] == "failed", said
    assert "its checks switched its worktree from swarm/t to elsewhere; put back" in str(
        row["reason"]
    )
    assert git(repo, "show", "swarm/t:work.txt") == "own work"
    assert git(Path(str(row["worktree"])), "symbolic-ref", "HEAD") == "refs/heads/swarm/t"
    assert git(repo, "rev-parse", "main") == main


@pytest.mark.long
def test_a_stop_of_a_dead_run_goes_past_the_lock_directories_its_agent_planted(
    repo: Path, write_agent: AgentFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its manager killed, the agent plants HEAD.lock and index.lock as directories and
    # switches its worktree: `swarm stop` removed git's lock files with a plain unlink.
    monkeypatch.setenv("FLAGS", str(tmp_path))
    waits = (
        "import os, pathlib, time\nflags = pathlib.Path(os.environ['FLAGS'])\n"
        "(flags / 'started').touch()\n"
        "while not (flags / 'go').exists():\n    time.sleep(0.02)\n"
    )
    planted = "(flags / 'planted').touch()\nwhile True:\n    time.sleep(1)\n"
    agent = [*write_agent(waits + PLANT + planted), "dir", "switch", "HEAD", "index"]
    text = f'[[task]]\nid = "t"\nprompt = "p"\nagent = {argv_toml(agent)}\n'
    main = git(repo, "rev-parse", "main")
    manager = subprocess.Popen(
        [sys.executable, "-m", "worktree_swarm.cli", "run", manifest(repo, text)],
        cwd=repo, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for((tmp_path / "started").exists, what="the agent to start")
    finally:
        os.killpg(manager.pid, signal.SIGKILL)
        manager.wait(timeout=30)
    (tmp_path / "go").touch()
    wait_for((tmp_path / "planted").exists, what="the agent to plant its locks")
    stopped = swarm(repo, "stop")
    said = stopped.stdout + stopped.stderr
    assert stopped.returncode == 0, said
    assert "Traceback" not in said, said
    row = status_json(repo)["t"]
    assert row["state"] == "failed", row  # as its manager fails it: switched, put back
    assert "its agent switched its worktree from swarm/t to elsewhere" in str(row["reason"])
    assert git(repo, "show", "swarm/t:work.txt") == "own work"
    assert git(repo, "rev-parse", "main") == main
    assert _locks(repo) == []


@pytest.mark.parametrize(
    ("ahead", "stale"),
    [
        (10.0, False),  # a live git's lock on NFS, dated by a server whose clock runs ahead
        (-1.0, False),  # just taken
        (-60.0, True),  # left by a killed git
        (3600.0, True),  # planted far in the future: it never ages
    ],
)
def test_a_lock_dated_a_little_ahead_is_a_live_gits(
    tmp_path: Path, ahead: float, stale: bool
) -> None:
    lock = tmp_path / "index.lock"
    lock.write_text("")
    when = time.time() + ahead
    os.utime(lock, (when, when))
    assert stale_lock(lock) is stale
