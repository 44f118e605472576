"""Provisioning after a crash, on real repositories: roll back, reattach, repair, adopt.

Each test leaves what a manager killed at some point of making a task's worktree leaves
(found by the crash trials in test_crash.py), then checks that the library finishes or
undoes it: the branch, the worktree's files, git's admin dirs and lock files.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import agent_python, git
from worktree_swarm.core.errors import BadInputError, SwarmError
from worktree_swarm.core.models import ProcessIdentity
from worktree_swarm.git import repo as gitrepo
from worktree_swarm.git import worktrees
from worktree_swarm.infra import proctree
from worktree_swarm.run import provision


@pytest.fixture
def project(tmp_path: Path) -> gitrepo.Repo:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    for name in ("README.md", "src/app.py", "src/lib/util.py"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"{name}\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return gitrepo.open_repo(root)


def branches(repo: gitrepo.Repo) -> list[str]:
    return git(repo.root, "branch", "--format=%(refname:short)").split()


def admin_dirs(repo: gitrepo.Repo) -> list[str]:
    admin = repo.common_dir / "worktrees"
    return sorted(p.name for p in admin.iterdir()) if admin.is_dir() else []


@pytest.mark.parametrize("lock_kind", ["file", "directory"])
def test_a_half_made_worktree_is_rolled_back_entirely(
    project: gitrepo.Repo, tmp_path: Path, lock_kind: str
) -> None:
    start = gitrepo.head_commit(project)
    path = tmp_path / "wt" / "t1"
    git(project.root, "worktree", "add", "-q", "--no-checkout", "-b", "swarm/t1", str(path), start)
    # Killed while `worktree add -b` held the branch's lock (or a directory of that name an
    # agent planted); and a second `worktree add` of the same path killed before it wrote its
    # gitdir file.
    lock = project.common_dir / "refs" / "heads" / "swarm" / "t1.lock"
    if lock_kind == "file":
        lock.write_text(start)
    else:
        lock.mkdir()
        (lock / "inside").write_text("planted\n")
    (project.common_dir / "worktrees" / "t11").mkdir()
    # Someone else's worktree, which must survive.
    other = tmp_path / "wt" / "other"
    git(project.root, "worktree", "add", "-q", "-b", "keep", str(other))

    provision.roll_back(project, path=path, branch="swarm/t1", start=start)

    assert not path.exists()
    assert "swarm/t1" not in branches(project)
    assert admin_dirs(project) == ["other"]
    assert not os.path.lexists(lock)
    assert (other / "README.md").is_file()
    # The same creation now goes through.
    git(project.root, "worktree", "add", "-q", "-b", "swarm/t1", str(path), start)
    assert (path / "src" / "lib" / "util.py").is_file()


def test_a_branch_made_before_its_worktree_is_rolled_back_and_made_again(
    project: gitrepo.Repo, tmp_path: Path
) -> None:
    """Killed between the branch (made outside the repository lock) and `worktree add`."""
    start = gitrepo.head_commit(project)
    path = tmp_path / "wt" / "t1"
    git(project.root, "update-ref", "refs/heads/swarm/t1", start, "")
    with pytest.raises(BadInputError, match="branch swarm/t1 already exists"):
        worktrees.create_worktree(project, path=path, branch="swarm/t1", start=start)
    assert not path.exists()  # refused before anything was made

    provision.roll_back(project, path=path, branch="swarm/t1", start=start)
    assert "swarm/t1" not in branches(project)
    worktrees.create_worktree(project, path=path, branch="swarm/t1", start=start)
    assert (path / "src" / "lib" / "util.py").is_file()
    assert git(path, "symbolic-ref", "HEAD") == "refs/heads/swarm/t1"
    assert "swarm/t1" not in (project.common_dir / "config").read_text()  # no upstream


def test_a_branch_that_moved_is_not_rolled_back(project: gitrepo.Repo, tmp_path: Path) -> None:
    start = gitrepo.head_commit(project)
    path = tmp_path / "wt" / "t1"
    git(project.root, "worktree", "add", "-q", "-b", "swarm/t1", str(path), start)
    (path / "work.txt").write_text("an agent's work\n")
    git(path, "add", "work.txt")
    git(path, "commit", "-q", "-m", "work")
    moved = git(path, "rev-parse", "HEAD")
    provision.roll_back(project, path=path, branch="swarm/t1", start=start)
    assert git(project.root, "rev-parse", "swarm/t1") == moved
    assert admin_dirs(project) == []
    # Killed while rolling back: doing it again is harmless.
    provision.roll_back(project, path=path, branch="swarm/t1", start=start)
    assert git(project.root, "rev-parse", "swarm/t1") == moved


@pytest.mark.parametrize("yours", ["file", "repository", "link"])
def test_a_roll_back_never_removes_what_is_not_a_half_made_worktree(
    project: gitrepo.Repo, tmp_path: Path, yours: str
) -> None:
    """A store that recorded an intent over something of yours (an older swarm left it)."""
    start = gitrepo.head_commit(project)
    path = tmp_path / "wt" / "t1"
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("mine\n")
    if yours == "repository":
        git(path, "init", "-q")
    if yours == "link":
        path.rename(tmp_path / "mine")
        path.symlink_to(tmp_path / "mine")
    git(project.root, "branch", "swarm/t1", start)
    with pytest.raises(BadInputError, match=f"{path} "):
        provision.roll_back(project, path=path, branch="swarm/t1", start=start)
    assert (path / "notes.txt").read_text() == "mine\n"
    assert "swarm/t1" in branches(project)


def test_a_worktree_whose_directory_is_gone_is_added_again_on_its_branch(
    project: gitrepo.Repo, tmp_path: Path
) -> None:
    start = gitrepo.head_commit(project)
    path = tmp_path / "wt" / "t1"
    git(project.root, "worktree", "add", "-q", "-b", "swarm/t1", str(path), start)
    (path / "work.txt").write_text("checkpointed\n")
    git(path, "add", "work.txt")
    git(path, "commit", "-q", "-m", "checkpoint")
    tip = git(path, "rev-parse", "HEAD")
    subprocess.run(["rm", "-rf", str(path)], check=True)  # removed for disk room

    assert provision.restore(project, path=path, branch="swarm/t1", start=start, unlock=False)
    assert git(path, "rev-parse", "HEAD") == tip
    assert git(path, "symbolic-ref", "HEAD") == "refs/heads/swarm/t1"
    assert (path / "work.txt").read_text() == "checkpointed\n"
    assert git(path, "status", "--porcelain") == ""
    # A complete checkout with no lock is left as it is.
    assert not provision.restore(project, path=path, branch="swarm/t1", start=start, unlock=True)


def test_a_worktree_and_branch_both_gone_are_made_again_at_the_start(
    project: gitrepo.Repo, tmp_path: Path
) -> None:
    start = gitrepo.head_commit(project)
    path = tmp_path / "wt" / "t2"
    path.mkdir(parents=True)  # an empty directory is fine
    assert provision.restore(project, path=path, branch="swarm/t2", start=start, unlock=False)
    assert git(project.root, "rev-parse", "swarm/t2") == start
    assert (path / "src" / "app.py").read_text() == "src/app.py\n"
    # No upstream: the branch was made from a commit, not tracking main.
    assert git(path, "for-each-ref", "--format=%(upstream)", "refs/heads/swarm/t2") == ""


def test_a_directory_that_is_not_a_worktree_is_never_overwritten(
    project: gitrepo.Repo, tmp_path: Path
) -> None:
    path = tmp_path / "wt" / "t3"
    path.mkdir(parents=True)
    (path / "mine.txt").write_text("the user's file\n")
    start = gitrepo.head_commit(project)
    with pytest.raises(SwarmError) as caught:
        provision.restore(project, path=path, branch="swarm/t3", start=start, unlock=True)
    assert str(caught.value) == (
        f"{path} exists but is not a git worktree; move it aside and run `swarm resume`"
    )
    assert (path / "mine.txt").read_text() == "the user's file\n"
    assert "swarm/t3" not in branches(project)


def test_lock_files_a_killed_git_left_are_removed_only_when_asked(
    project: gitrepo.Repo, tmp_path: Path
) -> None:
    start = gitrepo.head_commit(project)
    path = tmp_path / "wt" / "t4"
    git(project.root, "worktree", "add", "-q", "-b", "swarm/t4", str(path), start)
    admin = project.common_dir / "worktrees" / "t4"
    locks = [
        admin / "index.lock",
        admin / "HEAD.lock",
        project.common_dir / "refs" / "heads" / "swarm" / "t4.lock",
    ]
    for lock in locks:
        lock.write_text("")
    # A task process may still run: the locks may be its git's, so they stay.
    assert not provision.restore(project, path=path, branch="swarm/t4", start=start, unlock=False)
    assert all(lock.exists() for lock in locks)
    assert provision.restore(project, path=path, branch="swarm/t4", start=start, unlock=True)
    assert not any(lock.exists() for lock in locks)
    (path / "new.txt").write_text("x")
    git(path, "add", "new.txt")  # git works in it again
    git(path, "commit", "-q", "-m", "works")


def test_a_checkout_killed_while_populating_gets_every_file(
    project: gitrepo.Repo, tmp_path: Path
) -> None:
    start = gitrepo.head_commit(project)
    path = tmp_path / "wt" / "t5"
    git(project.root, "worktree", "add", "-q", "--no-checkout", "-b", "swarm/t5", str(path), start)
    (path / "README.md").write_text("README.md\n")  # the one file written before the kill
    assert provision.restore(project, path=path, branch="swarm/t5", start=start, unlock=False)
    assert (path / "src" / "lib" / "util.py").read_text() == "src/lib/util.py\n"
    assert git(path, "status", "--porcelain") == ""


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def test_an_agent_no_attempt_records_is_found_by_its_run_and_task(
    project: gitrepo.Repo, tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    worktree = tmp_path / "wt" / "t6"
    (worktree / "sub").mkdir(parents=True)
    sleep = [*agent_python(), "-c", "import time; time.sleep(60)"]

    def start(cwd: Path, task: str, *, session: bool = True) -> subprocess.Popen[bytes]:
        env = {**os.environ, "SWARM_RUN_ID": "r1", "SWARM_TASK_ID": task}
        proc = subprocess.Popen(sleep, cwd=cwd, env=env, start_new_session=session)
        sleepers.append(proc)
        return proc

    assert provision.unrecorded_agent("r1", "t6", worktree) is None
    start(worktree, "other-task")
    start(worktree / "sub", "t6", session=False)  # not the leader of its process group
    assert provision.unrecorded_agent("r1", "t6", worktree) is None
    agent = start(worktree / "sub", "t6")
    later = start(worktree, "t6")

    def found() -> int | None:
        identity = provision.unrecorded_agent("r1", "t6", worktree)
        return None if identity is None else identity.pid

    assert found() == agent.pid  # the oldest of the task's agents
    assert provision.unrecorded_agent("r2", "t6", worktree) is None
    agent.kill()
    agent.wait()
    assert found() == later.pid


def test_agents_started_in_the_same_clock_tick_are_told_apart_by_pid(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Start times count in clock ticks: two agents started in one tick have the same, and the
    one found is still the first started (the lower PID), every time."""
    worktree = tmp_path / "wt" / "t6"
    worktree.mkdir(parents=True)
    env = {**os.environ, "SWARM_RUN_ID": "r1", "SWARM_TASK_ID": "t6"}
    sleep = [*agent_python(), "-c", "import time; time.sleep(60)"]
    sleepers.extend(
        subprocess.Popen(sleep, cwd=worktree, env=env, start_new_session=True) for _ in range(3)
    )
    real = proctree.identity_of

    def same_tick(pid: int) -> ProcessIdentity | None:
        found = real(pid)
        return None if found is None else dataclasses.replace(found, create_time=1000.0)

    monkeypatch.setattr(proctree, "identity_of", same_tick)
    first = min(p.pid for p in sleepers)
    for _ in range(5):
        identity = provision.unrecorded_agent("r1", "t6", worktree)
        assert identity is not None
        assert identity.pid == first


def test_the_oldest_of_processes_started_in_one_tick_is_the_lower_pid() -> None:
    def ident(pid: int, started: float) -> ProcessIdentity:
        return ProcessIdentity(pid=pid, create_time=started, pgid=pid)

    assert provision.oldest([ident(20, 1.0), ident(10, 1.0), ident(30, 1.0)]) == ident(10, 1.0)
    assert provision.oldest([ident(10, 2.0), ident(20, 1.0)]) == ident(20, 1.0)
    assert provision.oldest([]) is None
