"""`swarm clean` of a worktree without an index: a checkout killed half-way is checked out again
from HEAD, one whose agent deleted its index has it made again and its files committed; each
is said, and the dry run says which beforehand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import git, killed_at_git, make_repo
from tests.test_index_deleted import DELETES_INDEX, WriteAgent
from tests.test_run import argv_toml, manifest, swarm
from worktree_swarm.git import gitfiles

REPAIRED = (
    "checkout was incomplete (checked out again from HEAD, no missing file committed as deleted)"
)
INDEX_MADE = (
    "its index was missing (made again from HEAD, its files committed as they were, "
    "deletions included)"
)


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


def _agent_deleted_its_index(tmp_path: Path, write_agent: WriteAgent) -> tuple[Path, Path]:
    """A run of task `a` done; its agent, run again in the kept worktree, deleted its index.

    As `DELETES_INDEX` does: README.md edited, gone.txt deleted, new.txt written (then
    removed: no file HEAD lacks is left). Returns the repository and the worktree.
    """
    repo = make_repo(tmp_path / "repo", {"README.md": "hello\n", "gone.txt": "g\n", "k.txt": "k\n"})
    agent = argv_toml(write_agent("import pathlib\npathlib.Path('one.txt').write_text('1\\n')\n"))
    text = f'[[task]]\nid = "a"\nprompt = "x"\nagent = {agent}\n'
    out = swarm(repo, "run", manifest(repo, text))
    assert out.returncode == 0, out.stdout + out.stderr
    worktree = repo.parent / "repo.swarm" / "a"
    again = subprocess.run(write_agent(DELETES_INDEX), cwd=worktree, check=False)
    assert again.returncode == 0
    (worktree / "new.txt").unlink()  # only the edit and the deletion are left to commit
    assert gitfiles.checkout_incomplete(worktree)
    return repo, worktree


def _committed_as_the_agent_left_it(repo: Path) -> None:
    files = git(repo, "ls-tree", "-r", "--name-only", "swarm/a").split("\n")
    assert sorted(files) == ["README.md", "k.txt", "one.txt"]  # gone.txt deleted
    assert git(repo, "show", "swarm/a:README.md") == "edited"


def test_clean_dry_run_says_the_checkpoint_an_index_deleted_by_an_agent_gets(
    tmp_path: Path, write_agent: WriteAgent
) -> None:
    # With its index gone, only a file HEAD lacks counted as work: the dry run said "remove
    # it" where the clean commits the agent's edit and deletion first.
    repo, worktree = _agent_deleted_its_index(tmp_path, write_agent)
    dry = swarm(repo, "clean")
    assert "would: commit its uncommitted changes on swarm/a, then remove it" in dry.stdout, (
        dry.stdout
    )
    assert gitfiles.checkout_incomplete(worktree)  # the dry run only looked
    out = swarm(repo, "clean", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    done = next(line for line in out.stdout.splitlines() if "checkpointed" in line)
    assert done.strip().startswith(f"done: {INDEX_MADE}, checkpointed "), out.stdout
    assert REPAIRED not in out.stdout
    _committed_as_the_agent_left_it(repo)


def test_a_merged_branch_whose_agent_deleted_its_index_since_is_kept_and_said_so(
    tmp_path: Path, write_agent: WriteAgent
) -> None:
    # Merged, then the agent's edits left in a worktree without an index: the dry run said
    # the branch goes as merged, where the clean's checkpoint adds a commit to it.
    repo, worktree = _agent_deleted_its_index(tmp_path, write_agent)
    git(repo, "merge", "-q", "--ff-only", "swarm/a")
    dry = swarm(repo, "clean")
    assert "swarm/a: task a is done; not merged into main" in dry.stdout, dry.stdout
    assert "would: delete it" not in dry.stdout
    out = swarm(repo, "clean", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "swarm/a: task a is done; not merged into main" in out.stdout, out.stdout
    assert not worktree.exists()
    _committed_as_the_agent_left_it(repo)
