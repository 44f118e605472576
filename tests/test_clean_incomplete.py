"""`swarm clean` of a worktree whose checkout was killed half-way: repaired from HEAD, said."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import git, killed_at_git, make_repo
from tests.test_run import swarm
from worktree_swarm.git import gitfiles

REPAIRED = "checkout was incomplete (repaired, nothing deleted)"


def finished_run(tmp_path: Path) -> Path:
    """A repository of a few files whose run's two tasks are done."""
    repo = make_repo(tmp_path / "repo", {f"d/f{i}.txt": f"{i}\n" for i in range(5)})
    out = swarm(
        repo,
        "run",
        "--agent",
        "scripted",
        "-t",
        "one=write one.txt: 1",
        "-t",
        "two=write two.txt: 2",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return repo


def test_clean_repairs_the_checkout_a_killed_merge_left_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = finished_run(tmp_path)
    argv = [sys.executable, "-m", "worktree_swarm.cli", "merge"]
    monkeypatch.chdir(repo)
    killed_at_git(tmp_path, monkeypatch, "read-tree", [*argv, "one", "two"])
    worktree = next(repo.parent.glob("repo.swarm/_integration-*"))
    assert [p.name for p in worktree.iterdir()] == [".git"]
    assert gitfiles.checkout_incomplete(worktree)
    branch = git(worktree, "branch", "--show-current")
    tip = git(repo, "rev-parse", branch)
    run_id = branch.removeprefix("swarm/integration-")

    out = swarm(repo, "clean", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    at = lines.index(f"  {worktree}: integration worktree of run {run_id} (`swarm merge`)")
    assert lines[at + 1] == f"    done: {REPAIRED}, removed"
    assert out.stdout.count("incomplete") == 1  # the task worktrees were whole
    assert not worktree.exists()
    # Nothing was committed as deleted: the branch went as the merge left it.
    assert f"{branch}: integration branch of run {run_id}; merged into main" in out.stdout
    assert f"done: deleted (was {tip[:12]})" in out.stdout


def test_clean_of_a_complete_checkout_says_nothing_of_a_repair(tmp_path: Path) -> None:
    repo = finished_run(tmp_path)
    assert swarm(repo, "merge", "one", "two").returncode == 0
    out = swarm(repo, "clean", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("done: removed") == 3  # the integration worktree and the tasks'
    assert "incomplete" not in out.stdout
    assert "repaired" not in out.stdout
