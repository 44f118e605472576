"""Remote-tracking refs and their reflogs: as they were when the run started, once it ends.

An agent can forge `refs/remotes/origin/main` (your `git merge origin/main` takes its commit)
or add a line to its reflog (your `git pull --rebase` then drops your unpushed commits). An
agent's own `git fetch` does the same legitimately: it is undone without blame.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import git, make_repo
from tests.test_run import status_json, swarm
from tests.test_trust import MODES_SANDBOX_SLOW
from worktree_swarm.git.repo import open_repo
from worktree_swarm.guard.watcher import Guard
from worktree_swarm.infra.proctree import identity_of

AgentFactory = Callable[[str], list[str]]
REFLOG = Path(".git/logs/refs/remotes/origin/main")


@pytest.fixture
def cloned(tmp_path: Path) -> Path:
    """Your clone of a bare `origin`, with one commit of yours on main not pushed yet."""
    upstream = make_repo(tmp_path / "upstream")
    git(tmp_path, "clone", "-q", "--bare", str(upstream), "origin.git")
    git(tmp_path, "clone", "-q", str(tmp_path / "origin.git"), "repo")
    repo = tmp_path / "repo"
    git(repo, "config", "user.name", "You")
    git(repo, "config", "user.email", "you@example.com")
    push_upstream(tmp_path, "base.txt")
    git(repo, "pull", "-q", "--rebase")  # origin/main has a reflog now
    (repo / "mine.txt").write_text("my unpushed work\n")
    git(repo, "add", "mine.txt")
    git(repo, "commit", "-qm", "my unpushed commit")
    return repo


def push_upstream(tmp_path: Path, name: str) -> str:
    """Someone else pushes a commit to origin; its id."""
    other = tmp_path / "other"
    if not other.exists():
        git(tmp_path, "clone", "-q", str(tmp_path / "origin.git"), "other")
        git(other, "config", "user.name", "Other")
        git(other, "config", "user.email", "other@example.com")
    (other / name).write_text(f"{name}\n")
    git(other, "add", name)
    git(other, "commit", "-qm", f"upstream {name}")
    git(other, "push", "-q", "origin", "main")
    return git(other, "rev-parse", "HEAD")


def remote_state(repo: Path) -> tuple[str, bytes]:
    refs = git(repo, "for-each-ref", "--format=%(refname) %(objectname) %(symref)", "refs/remotes/")
    return refs, (repo / REFLOG).read_bytes()


def put_back(repo: Path) -> list[str]:
    out = swarm(repo, "status", "--json")
    assert out.returncode == 0, out.stderr
    refs: list[str] = json.loads(out.stdout)["remote_refs_put_back"]
    return refs


# Both attacks: origin/main forged to the agent's commit, and a reflog line that says your
# unpushed commit was fetched from origin.
FORGER = """
import os, subprocess, time
def git(*a):
    return subprocess.run(['git', *a], check=True, capture_output=True, text=True).stdout.strip()
open('own.txt', 'w').write('own\\n')
git('add', 'own.txt')
git('commit', '-qm', 'agent commit')
common = git('rev-parse', '--path-format=absolute', '--git-common-dir')
old = git('rev-parse', 'refs/remotes/origin/main')
yours = git('rev-parse', 'refs/heads/main')
log = os.path.join(common, 'logs', 'refs', 'remotes', 'origin', 'main')
with open(log, 'a') as out:
    out.write(f'{old} {yours} A <a@b> {int(time.time())} +0000\\tfetch: fast-forward\\n')
git('update-ref', 'refs/remotes/origin/feature', git('rev-parse', 'HEAD'))
git('update-ref', 'refs/remotes/origin/main', git('rev-parse', 'HEAD'))
"""


@pytest.mark.parametrize("sandboxed", MODES_SANDBOX_SLOW)
def test_forged_remote_refs_and_reflog_lines_are_put_back(
    cloned: Path, tmp_path: Path, write_agent: AgentFactory, sandboxed: bool
) -> None:
    repo = cloned
    before = remote_state(repo)
    sandbox = ["--sandbox"] if sandboxed else []
    agent = " ".join(write_agent(FORGER))
    out = swarm(repo, "run", *sandbox, "--agent", agent, "-t", "forger=p")
    assert out.returncode == 0, out.stderr
    assert status_json(repo)["forger"]["state"] == "done"  # a fetch looks the same: no blame
    assert remote_state(repo) == before
    assert put_back(repo) == ["origin/feature", "origin/main"]
    # What the forged line was for: your pull keeps your unpushed commit.
    git(repo, "pull", "-q", "--rebase")
    assert "my unpushed commit" in git(repo, "log", "--format=%s", "main")


FETCHER = """
import pathlib, subprocess
subprocess.run(['git', 'fetch', '-q', 'origin'], check=True)
subprocess.run(['git', 'rebase', '-q', 'origin/main'], check=True)
pathlib.Path('own.txt').write_text('own\\n')
"""


@pytest.mark.parametrize("sandboxed", MODES_SANDBOX_SLOW)
def test_an_agents_own_fetch_does_not_fail_it_and_is_undone_at_the_end(
    cloned: Path, tmp_path: Path, write_agent: AgentFactory, sandboxed: bool
) -> None:
    repo = cloned
    theirs = push_upstream(tmp_path, "theirs.txt")
    before = remote_state(repo)
    sandbox = ["--sandbox"] if sandboxed else []
    agent = " ".join(write_agent(FETCHER))
    out = swarm(repo, "run", *sandbox, "--agent", agent, "-t", "fetcher=p")
    assert out.returncode == 0, out.stderr
    rows = status_json(repo)
    assert rows["fetcher"]["state"] == "done", rows["fetcher"]
    assert git(repo, "merge-base", "--is-ancestor", theirs, "swarm/fetcher") == ""
    assert remote_state(repo) == before
    assert put_back(repo) == ["origin/main"]
    report = json.loads(swarm(repo, "report", "--json").stdout)
    assert report["outside_writes"] == []
    assert report["remote_refs_put_back"] == ["origin/main"]
    assert "remote-tracking refs origin/main put back" in swarm(repo, "report").stdout


def test_your_fetch_while_no_agent_runs_is_kept(cloned: Path, tmp_path: Path) -> None:
    repo = cloned
    guard = Guard(open_repo(repo), work_dir=tmp_path / "g", restore=True)
    guard.start()
    theirs = push_upstream(tmp_path, "first.txt")
    git(repo, "fetch", "-q", "origin")
    yours = remote_state(repo)
    assert guard.scan() == []
    guard.after_attempt()
    assert remote_state(repo) == yours
    assert git(repo, "rev-parse", "origin/main") == theirs
    assert guard.drain_notes() == []
    # An agent runs now: what moves meanwhile goes back to your fetch, not to the start.
    agent = subprocess.Popen(["sleep", "60"])
    try:
        guard.agent_started("a", identity_of(agent.pid))
        push_upstream(tmp_path, "second.txt")
        git(repo, "fetch", "-q", "origin")
        guard.scan()
        guard.after_attempt()
    finally:
        agent.kill()
        agent.wait()
    guard.agent_ended("a")
    assert remote_state(repo) == yours
    assert [n.refs for n in guard.drain_notes()] == [("refs/remotes/origin/main",)]
    assert (repo / REFLOG).exists()


def test_a_reflog_is_never_written_through_a_directory_swapped_for_a_link(
    cloned: Path, tmp_path: Path
) -> None:
    repo = cloned
    deep = "refs/remotes/origin/" + "/".join("abcdefghij") + "/x"  # deeper than links are sought
    git(repo, "update-ref", "-m", "fetch", deep, "origin/main")
    guard = Guard(open_repo(repo), work_dir=tmp_path / "g", restore=True)
    guard.start()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x").write_text("a file of yours\n")
    agent = subprocess.Popen(["sleep", "60"])
    try:
        guard.agent_started("a", identity_of(agent.pid))
        logs = repo / ".git" / "logs" / Path(deep).parent
        shutil.rmtree(logs)
        logs.symlink_to(elsewhere)
        git(repo, "update-ref", deep, "HEAD")  # git itself appends through the link
        theirs = (elsewhere / "x").read_bytes()
        guard.after_attempt()
    finally:
        agent.kill()
        agent.wait()
    assert (elsewhere / "x").read_bytes() == theirs  # the guard neither rewrote nor removed it
    assert [n.left for n in guard.drain_notes()] == [(deep,)]
