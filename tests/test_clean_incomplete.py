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
    (worktree / "cut.txt").write_text("first\nsec")  # the agent's: its tail deleted
    (worktree / "empty.txt").write_text("")
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
    assert git(repo, "show", "swarm/one:cut.txt") == "first\nsec"  # edits, kept
    assert git(repo, "show", "swarm/one:empty.txt") == ""
    assert git(repo, "show", "swarm/one:a.txt") == "edited"
    assert git(repo, "show", "swarm/one:new.txt") == "new"
    assert git(repo, "show", "swarm/one:d/b.txt") == "b"
    assert git(repo, "log", "-1", "--format=%s", "swarm/one") == "swarm: checkpoint one (clean)"


def test_a_file_a_killed_checkout_of_a_merge_cut_short_is_checked_out_whole(
    tmp_path: Path,
) -> None:
    # git writes each file in place: a merge's checkout killed mid-file leaves HEAD's first
    # bytes (none, killed between making the file and writing it). No agent works in a
    # merge's worktree, so that is git's cut write, never an edit to keep.
    repo = make_repo(tmp_path / "repo", {"cut.txt": "first\nsecond\n", "empty.txt": "e\n"})
    (repo / "edited.txt").write_text("one\n")
    git(repo, "add", "edited.txt")
    git(repo, "commit", "-qm", "edited")
    made: dict[bool, Path] = {}
    for killed in (True, False):
        worktree = tmp_path / f"wt-{killed}"
        git(repo, "worktree", "add", "-q", "--detach", str(worktree))
        (worktree / "cut.txt").write_text("first\nsec")
        (worktree / "empty.txt").write_text("")
        (worktree / "edited.txt").write_text("two\n")  # not HEAD's bytes cut short
        (Path(git(worktree, "rev-parse", "--absolute-git-dir")) / "index").unlink()
        assert gitfiles.repair_checkout(worktree, killed_checkout=killed)
        made[killed] = worktree
    assert (made[True] / "cut.txt").read_text() == "first\nsecond\n"
    assert (made[True] / "empty.txt").read_text() == "e\n"
    assert (made[True] / "edited.txt").read_text() == "two\n"
    # Where an agent works, a file it cut short is its edit: kept.
    assert (made[False] / "cut.txt").read_text() == "first\nsec"
    assert (made[False] / "empty.txt").read_text() == ""
