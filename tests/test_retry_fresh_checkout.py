"""`swarm retry` of a task whose worktree its agent left switched or pointed elsewhere.

With `--fresh`, its first commit keeps what the worktree holds before the worktree is deleted:
on the task's own branch, never on the branch its agent switched to, nor in the git dir its
`.git` names. Without, the worktree is put back on the task's branch before the next attempt.
(`swarm clean` keeps a switched one, naming it, and commits nowhere.)
"""

from __future__ import annotations

import json
import shlex
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import as_owner_only, git, hang_git_at
from tests.test_run import argv_toml, manifest, status_json, swarm

# The first go switches its worktree off its branch, writes its work and makes the worktree
# unreadable (the task fails before the guard would put its HEAD back); the next one writes.
SWITCHES_AND_SEALS = """
import os, pathlib, subprocess, sys
flag = pathlib.Path(sys.argv[1])
if flag.exists():
    pathlib.Path('fresh.txt').write_text('fresh\\n')
    sys.exit(0)
flag.touch()
subprocess.run(['git', 'checkout', '-q', *sys.argv[2:]], check=True)
pathlib.Path('work.txt').write_text('work\\n')
os.chmod('.', 0)
"""


def retry_events(repo: Path) -> list[dict[str, object]]:
    with sqlite3.connect(repo / ".git" / "swarm" / "state.db") as db:
        rows = db.execute("SELECT data FROM events WHERE kind = 'retry'").fetchall()
    return [json.loads(row[0]) for row in rows]


def switched_and_sealed(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]], how: list[str]
) -> Path:
    """Task a failed, its worktree (returned) switched by its agent as *how* says."""
    git(repo, "checkout", "-q", "-b", "feature")  # `main` free to be checked out elsewhere
    agent = [*write_agent(SWITCHES_AND_SEALS), str(tmp_path / "went"), *how]
    text = f'[[task]]\nid = "a"\nprompt = "x"\nagent = {argv_toml(agent)}\n'
    worktree = repo.parent / "repo.swarm" / "a"
    try:
        first = subprocess.run(
            [*as_owner_only(), sys.executable, "-m", "worktree_swarm.cli", "run",
             manifest(repo, text)],
            cwd=repo, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
            timeout=120,
        )  # fmt: skip
        assert first.returncode == 1, first.stdout + first.stderr
        assert "cannot be read" in str(status_json(repo)["a"]["reason"])
    finally:
        worktree.chmod(0o755)  # as its reason says: `chmod u+rwx` gives it back
    return worktree


@pytest.mark.long
@pytest.mark.parametrize(("how", "to"), [(["--orphan", "x"], "x"), (["main"], "main")])
def test_retry_fresh_commits_a_switched_worktree_on_the_task_branch(
    repo: Path,
    tmp_path: Path,
    write_agent: Callable[[str], list[str]],
    how: list[str],
    to: str,
) -> None:
    # Its commit before the fresh start landed on the branch the agent had switched to: your
    # `main` moved, or (`checkout --orphan`) a branch of every file, sharing no base, made.
    base = git(repo, "rev-parse", "HEAD")
    worktree = switched_and_sealed(repo, tmp_path, write_agent, how)
    assert git(worktree, "symbolic-ref", "HEAD") == f"refs/heads/{to}"

    out = swarm(repo, "retry", "a", "--fresh")

    assert out.returncode == 0, out.stdout + out.stderr
    assert git(repo, "rev-parse", "main") == base
    assert git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/") == (
        "feature\nmain\nswarm/a"  # no branch made for the orphan
    )
    [event] = retry_events(repo)
    kept = str(event["previous_tip"])
    assert git(repo, "show", f"{kept}:work.txt") == "work"  # on top of where it was
    assert git(repo, "rev-parse", f"{kept}^") == base
    assert event["put_back_from"] == to
    assert status_json(repo)["a"]["state"] == "done"
    assert git(repo, "ls-tree", "--name-only", "swarm/a").splitlines() == [
        "README.md",
        "fresh.txt",
    ]


@pytest.mark.long
def test_retry_fresh_of_a_worktree_switched_to_main_as_its_commit_stages_keeps_it(
    repo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    write_agent: Callable[[str], list[str]],
) -> None:
    # Switched after the retry's look at its HEAD (its put-back), before the commit that keeps
    # its work: `git commit` committed it onto wherever HEAD was by then, your `main`.
    git(repo, "checkout", "-q", "-b", "feature")  # `main` free to be checked out elsewhere
    agent = " ".join(write_agent("open('a.txt', 'w').write('a\\n')\nraise SystemExit(3)\n"))
    assert swarm(repo, "run", "--agent", agent, "-t", "a=a").returncode == 1
    worktree = repo.parent / "repo.swarm" / "a"
    tips = {b: git(repo, "rev-parse", b) for b in ("main", "feature", "swarm/a")}
    (worktree / "wip.txt").write_text("yours, half done\n")
    # The checkpoint's `add` comes after that look: the worktree goes to `main` right then.
    real = shlex.quote(str(shutil.which("git")))
    switch = f"{real} -C {shlex.quote(str(worktree))} switch -q main"
    switched = hang_git_at(tmp_path, monkeypatch, "add", then=f'{switch}; exec {real} "$@"')

    out = swarm(repo, "retry", "a", "--fresh")

    assert switched.exists()
    assert out.returncode == 1, out.stdout + out.stderr
    assert {b: git(repo, "rev-parse", b) for b in tips} == tips
    assert out.stderr == (
        f"swarm: not retrying a afresh, which deletes its worktree: {worktree} is on main now, "
        "not swarm/a: nothing committed there, its work stays in it; finish there, or switch "
        "it back to swarm/a there, then retry\n"
    )
    assert (worktree / "wip.txt").read_text() == "yours, half done\n"
    assert git(worktree, "symbolic-ref", "--short", "HEAD") == "main"
    assert status_json(repo)["a"]["state"] == "failed"
    assert retry_events(repo) == []


# Points its worktree's `.git` at your git dir and writes its work.
REPOINTS = """
import pathlib, sys
pathlib.Path('.git').write_text('gitdir: ' + sys.argv[1] + '\\n')
pathlib.Path('work.txt').write_text('work\\n')
"""


@pytest.mark.long
def test_retry_fresh_of_a_worktree_whose_git_file_points_elsewhere_is_refused_up_front(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # Its commit before the fresh start ran git in the worktree: the agent's work landed on
    # your checked-out branch, in your git dir and index, and the worktree was deleted.
    base = git(repo, "rev-parse", "HEAD")
    agent = [*write_agent(REPOINTS), str(repo / ".git")]
    text = f'[[task]]\nid = "a"\nprompt = "x"\nagent = {argv_toml(agent)}\n'
    assert swarm(repo, "run", manifest(repo, text)).returncode == 1
    worktree = repo.parent / "repo.swarm" / "a"
    registered = repo / ".git" / "worktrees"
    assert status_json(repo)["a"]["reason"] == (
        f"{worktree}/.git no longer names its registration in {registered}: its work since the"
        " last checkpoint is left there, uncommitted"
    )

    out = swarm(repo, "retry", "a", "--fresh")

    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr == (
        f"swarm: {worktree}/.git no longer names its registration in {registered}; --fresh"
        " deletes the worktree of task a, and swarm runs no git there to keep its work: move it"
        " aside, then retry\n"
    )
    assert git(repo, "rev-parse", "HEAD") == base
    assert git(repo, "status", "--porcelain") == ""
    assert (worktree / "work.txt").read_text() == "work\n"
    assert retry_events(repo) == []
    assert status_json(repo)["a"]["state"] == "failed"


@pytest.mark.long
@pytest.mark.parametrize(("how", "to"), [(["main"], "main"), (["--detach"], "a detached HEAD")])
def test_retry_puts_a_switched_worktree_back_on_the_task_branch_before_the_next_attempt(
    repo: Path,
    tmp_path: Path,
    write_agent: Callable[[str], list[str]],
    how: list[str],
    to: str,
) -> None:
    # The next attempt's agent worked on the branch the last one had switched to, and the
    # check after its attempt failed the task for that switch.
    base = git(repo, "rev-parse", "HEAD")
    worktree = switched_and_sealed(repo, tmp_path, write_agent, how)

    out = swarm(repo, "retry", "a")

    assert out.returncode == 0, out.stdout + out.stderr
    row = status_json(repo)["a"]
    assert row["state"] == "done", row
    assert git(repo, "rev-parse", "main") == base
    assert git(worktree, "symbolic-ref", "HEAD") == "refs/heads/swarm/a"
    assert git(repo, "ls-tree", "--name-only", "swarm/a").splitlines() == [
        "README.md",
        "fresh.txt",
        "work.txt",  # the first attempt's work, kept on the task's branch
    ]
    [event] = retry_events(repo)
    assert str(event["put_back_from"]).startswith(to)
