"""A branch or directory a task's creation found already there is yours, never the task's.

Task b waits on a, which fails; meanwhile you make something at b's branch or worktree path.
`swarm retry a` then runs b, whose creation refuses it: from then on no command takes it for
b's own (deleted, merged, removed, rolled back or shown as its).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import git
from tests.test_run import AgentFactory, _told, manifest, status_json, swarm

TASKS = '[[task]]\nid = "a"\nprompt = "p"\n[[task]]\nid = "b"\nprompt = "p"\ndepends_on = ["a"]\n'


def _b_finds(
    repo: Path, write_agent: AgentFactory, tmp_path: Path, yours: Callable[[], None]
) -> dict[str, object]:
    """Run a and b (a fails), call *yours*, retry a: b finds it there. Returns b's status."""
    failing = tmp_path / "failing"
    failing.write_text("a")
    text = f"[defaults]\nagent = {_told(write_agent, failing)}\n{TASKS}"
    assert swarm(repo, "run", manifest(repo, text)).returncode == 1
    yours()
    failing.write_text("")
    assert swarm(repo, "retry", "a").returncode == 1
    b = status_json(repo)["b"]
    assert b["state"] == "failed"
    return b


def _your_branch(repo: Path, *, commit: bool) -> Callable[[], None]:
    """Make swarm/b: with a commit of yours on it, or at main's tip (merged)."""

    def make() -> None:
        if not commit:
            git(repo, "branch", "swarm/b")
            return
        git(repo, "checkout", "-q", "-b", "swarm/b")
        (repo / "mine.txt").write_text("mine\n")
        git(repo, "add", "mine.txt")
        git(repo, "commit", "-q", "-m", "mine")
        git(repo, "checkout", "-q", "main")

    return make


def test_a_task_that_found_your_branch_there_shows_it_as_yours(
    repo: Path, write_agent: AgentFactory, tmp_path: Path
) -> None:
    b = _b_finds(repo, write_agent, tmp_path, _your_branch(repo, commit=True))
    assert (b["branch_made"], b["worktree_present"]) == (False, False)
    assert str(b["reason"]).startswith("branch swarm/b already exists; if it holds nothing")
    assert "`swarm retry b --run " in str(b["reason"])


@pytest.mark.parametrize(
    "command",
    [
        ("clean", "--yes", "--force"),
        ("clean", "--all", "--yes", "--force"),
        ("retry", "b", "--fresh"),
    ],
)
def test_your_branch_a_task_found_there_is_never_deleted(
    repo: Path, write_agent: AgentFactory, tmp_path: Path, command: tuple[str, ...]
) -> None:
    _b_finds(repo, write_agent, tmp_path, _your_branch(repo, commit=True))
    tip = git(repo, "rev-parse", "swarm/b").strip()
    swarm(repo, *command)
    assert git(repo, "rev-parse", "swarm/b").strip() == tip


@pytest.mark.parametrize("command", [("clean", "--yes"), ("doctor", "--yes")])
def test_your_merged_branch_a_task_found_there_is_not_taken_for_its_merged_one(
    repo: Path, write_agent: AgentFactory, tmp_path: Path, command: tuple[str, ...]
) -> None:
    _b_finds(repo, write_agent, tmp_path, _your_branch(repo, commit=False))
    out = swarm(repo, *command)
    assert "swarm/b" not in out.stdout
    assert git(repo, "rev-parse", "swarm/b") == git(repo, "rev-parse", "main")


def test_merging_a_task_that_found_your_branch_there_merges_nothing_of_yours(
    repo: Path, write_agent: AgentFactory, tmp_path: Path
) -> None:
    _b_finds(repo, write_agent, tmp_path, _your_branch(repo, commit=True))
    main = git(repo, "rev-parse", "main")
    out = swarm(repo, "merge", "a", "b")
    assert "swarm/b is not its work" in out.stdout
    assert "mine" not in git(repo, "log", "--format=%s", "main")
    assert git(repo, "rev-parse", "main") == main
    assert "swarm/b" not in swarm(repo, "diff").stdout


def test_your_directory_a_task_found_there_is_left_to_you(
    repo: Path, write_agent: AgentFactory, tmp_path: Path
) -> None:
    yours = repo.parent / "repo.swarm" / "b"
    _b_finds(repo, write_agent, tmp_path, yours.mkdir)  # empty: no retry's check refuses it
    _write(yours / "notes.txt", "mine\n")
    out = swarm(repo, "doctor", "--yes")
    assert "swarm did not make it" in out.stdout
    assert (yours / "notes.txt").read_text() == "mine\n"


@pytest.mark.parametrize("command", [("clean", "--yes", "--force"), ("doctor", "--yes")])
def test_your_directory_at_a_blocked_tasks_path_is_left_whole(
    repo: Path, write_agent: AgentFactory, tmp_path: Path, command: tuple[str, ...]
) -> None:
    failing = tmp_path / "failing"
    failing.write_text("a")
    text = f"[defaults]\nagent = {_told(write_agent, failing)}\n{TASKS}"
    assert swarm(repo, "run", manifest(repo, text)).returncode == 1
    yours = repo.parent / "repo.swarm" / "b"
    _write(yours / "notes.txt", "mine\n")
    out = swarm(repo, *command)
    assert (yours / "notes.txt").read_text() == "mine\n", out.stdout
    # Its retry is refused while it is there, and names no command that would remove it.
    out = swarm(repo, "retry", "b")
    assert (out.returncode, "doctor" in out.stderr) == (2, False), out.stderr


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
