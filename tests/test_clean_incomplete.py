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


def test_clean_commits_the_edits_in_a_worktree_whose_index_was_deleted(tmp_path: Path) -> None:
    odd = "d/odd\nname -x.txt"  # -z listings; a name that looks like an option
    files = {"a.txt": "a\n", "d/b.txt": "b\n", odd: "odd\n", "cut.txt": "first\nsecond\n"}
    repo = make_repo(tmp_path / "repo", {**files, "empty.txt": "e\n"})
    out = swarm(repo, "run", "--agent", "scripted", "-t", "one=write one.txt: 1")
    assert out.returncode == 0, out.stdout + out.stderr
    worktree = repo.parent / "repo.swarm" / "one"
    (worktree / "a.txt").write_text("edited\n")
    (worktree / "d" / "b.txt").unlink()  # as a checkout killed half-way left it
    (worktree / odd).unlink()
    (worktree / "cut.txt").write_text("first\nsec")  # a write the kill cut short
    (worktree / "empty.txt").write_text("")  # made, not yet written
    (Path(git(worktree, "rev-parse", "--absolute-git-dir")) / "index").unlink()
    dry = swarm(repo, "clean")  # the edit alone is work to commit
    assert "commit its uncommitted changes on swarm/one, then remove it" in dry.stdout, dry.stdout
    (worktree / "new.txt").write_text("new\n")

    out = swarm(repo, "clean", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert not worktree.exists()
    files = git(repo, "ls-tree", "-r", "-z", "--name-only", "swarm/one").split("\0")
    expected = ["a.txt", "cut.txt", "d/b.txt", "empty.txt", odd, "new.txt", "one.txt"]
    assert sorted(f for f in files if f) == sorted(expected)
    assert git(repo, "show", "swarm/one:cut.txt") == "first\nsecond"
    assert git(repo, "show", "swarm/one:empty.txt") == "e"
    assert git(repo, "show", "swarm/one:a.txt") == "edited"
    assert git(repo, "show", "swarm/one:new.txt") == "new"
    assert git(repo, "show", "swarm/one:d/b.txt") == "b"
    assert git(repo, "log", "-1", "--format=%s", "swarm/one") == "swarm: checkpoint one (clean)"
