"""`swarm retry --fresh` killed while git's own `worktree remove` deletes the task's worktree.

A worktree whose submodules are checked out is removed by git, which deletes the files before
the admin dir and its index: the next `swarm retry` finishes that removal without committing
the deleted files, and the task runs again in a worktree made anew. A locked one is refused.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import add_submodule, git, make_repo
from tests.test_clean_git_remove import FILES, GONE, killed_in_git_remove, worktrees
from tests.test_run import argv_toml, manifest, status_json, swarm

# Writes one.txt, fails until the file FLAG names exists.
AGENT = """
import pathlib, sys
pathlib.Path('one.txt').write_text('work\\n')
sys.exit(0 if pathlib.Path(sys.argv[1]).exists() else 3)
"""


def failed_task(
    tmp_path: Path, write_agent: Callable[[str], list[str]], *, kind: str
) -> tuple[Path, Path, Path]:
    """A repository whose task `one` failed; its worktree (locked, or with `lib` checked out)."""
    repo = make_repo(tmp_path / "repo", FILES)
    if kind == "submodules":
        add_submodule(repo, tmp_path / "lib-origin")
    flag = tmp_path / "succeed"
    agent = argv_toml([*write_agent(AGENT), str(flag)])
    text = f'[[task]]\nid = "one"\nprompt = "p"\nagent = {agent}\n'
    assert swarm(repo, "run", manifest(repo, text)).returncode == 1
    path = repo.parent / "repo.swarm" / "one"
    if kind == "submodules":
        git(path, "-c", "protocol.file.allow=always", "submodule", "update", "-q", "--init")
        assert (path / "lib" / "README.md").is_file()
    else:
        git(repo, "worktree", "lock", "--reason", "on a USB disk", str(path))
    return repo, path, flag


def previous_tips(repo: Path) -> list[object]:
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
        rows = db.execute("SELECT data FROM events WHERE kind = 'retry'").fetchall()
    return [json.loads(row[0]).get("previous_tip") for row in rows]


@pytest.mark.long
@pytest.mark.parametrize("again", [("--fresh",), ()])
def test_a_fresh_retry_killed_in_gits_own_removal_is_finished_by_the_next_retry(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    write_agent: Callable[[str], list[str]],
    again: tuple[str, ...],
) -> None:
    # The worktree has lib checked out: git removes it, deleting its files before its index.
    repo, path, flag = failed_task(tmp_path, write_agent, kind="submodules")
    tip = git(repo, "rev-parse", "swarm/one")
    killed_in_git_remove(tmp_path, monkeypatch, repo, "retry", "one", "--fresh")
    # Killed half-way: files gone that the index of the registered worktree still lists.
    assert sorted(git(path, "ls-files", "--deleted").split()) == sorted(GONE)

    flag.touch()
    out = swarm(repo, "retry", "one", *again)

    assert out.returncode == 0, out.stdout + out.stderr
    assert status_json(repo)["one"]["state"] == "done"
    # Nothing committed of the killed removal: the deleted files were no work.
    new = git(repo, "rev-parse", "swarm/one")
    assert git(repo, "diff", "--name-only", "main", new).split() == ["one.txt"]
    assert previous_tips(repo) == [tip, tip if again else None]
    assert git(repo, "for-each-ref", "refs/swarm/rescued/") == ""
    on = subprocess.run(["git", "merge-base", "--is-ancestor", tip, new], cwd=repo, check=False)
    assert on.returncode == (1 if again else 0)  # from the base, or on from its branch
    # Run again in a worktree made anew, every file there.
    assert all((path / name).is_file() for name in [*FILES, *GONE])
    assert worktrees(repo) == [str(repo), str(path)]
    assert list((repo / ".git" / "swarm" / "removing").iterdir()) == []


def test_a_fresh_retry_of_a_task_whose_worktree_you_locked_is_refused_up_front(
    tmp_path: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # It was begun (its retry recorded, what the worktree held committed), then failed on
    # git's own refusal to remove a locked worktree.
    repo, path, _ = failed_task(tmp_path, write_agent, kind="locked")
    tip = git(repo, "rev-parse", "swarm/one")

    out = swarm(repo, "retry", "one", "--fresh")

    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr == (
        f"swarm: the worktree {path} of task one is locked (on a USB disk); --fresh deletes"
        f" it: unlock it (`git worktree unlock {path}`), then retry\n"
    )
    assert previous_tips(repo) == []
    assert git(repo, "rev-parse", "swarm/one") == tip
    assert status_json(repo)["one"]["state"] == "failed"
    assert (path / "one.txt").is_file()
    # Unlocked, it starts over.
    git(repo, "worktree", "unlock", str(path))
    (tmp_path / "succeed").touch()
    assert swarm(repo, "retry", "one", "--fresh").returncode == 0
    assert status_json(repo)["one"]["state"] == "done"
