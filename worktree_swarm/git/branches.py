"""Branches: their names and tips, and which commits a tip contains.

On plain `git` (porcelain output); an answer git gave about a commit's ancestry is kept, as
it never changes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from worktree_swarm.git.repo import Repo, git, run


def current_branch(repo: Repo, checkout: Path | None = None) -> str | None:
    """The short name of the branch of *checkout* (the main worktree's by default).

    None when its HEAD is detached.
    """
    res = run(checkout or repo.root, ["symbolic-ref", "--quiet", "--short", "HEAD"], check=False)
    if res.returncode != 0:
        return None
    return res.stdout.strip() or None


def branch_exists(repo: Repo, branch: str) -> bool:
    """Return whether ``refs/heads/<branch>`` exists."""
    res = run(repo.root, ["show-ref", "--verify", "--quiet", f"refs/heads/{branch}"], check=False)
    return res.returncode == 0


def is_branch_name(repo: Repo, name: str) -> bool:
    """Whether *name* is a valid short branch name as given (not ``@{-1}``, not an option).

    Not ``@`` either, which `check-ref-format --branch` lets through and git refuses to make.
    """
    if not name or name.startswith("-") or name == "@":
        return False
    checked = git(repo.root, "check-ref-format", "--branch", name, check=False).strip()
    return checked == name


def branch_tips(repo: Repo) -> dict[str, str]:
    """Every branch's short name and tip (one git process, however many branches)."""
    out = git(repo.root, "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/")
    tips = {}
    for line in out.splitlines():
        sha, _, ref = line.partition(" ")
        tips[ref.removeprefix("refs/heads/")] = sha
    return tips


def merged_tips(repo: Repo, target: str) -> set[str]:
    """The tips of the branches whose history *target* contains (none if it names nothing)."""
    res = run(
        repo.root,
        ["for-each-ref", f"--merged={target}", "--format=%(objectname)", "refs/heads/"],
        check=False,
    )
    return set(res.stdout.split()) if res.returncode == 0 else set()


def contained(repo: Repo, tip: str, commits: Sequence[str]) -> set[str]:
    """Those of *commits* that *tip* contains (itself or an ancestor); a missing one is not.

    One git process when *tip* contains them all (the usual case), else one per commit; none
    for an answer git gave before (a commit's ancestry never changes: `swarm watch` asks
    every second).
    """
    found: set[str] = set()
    for commit in commits:
        key = (repo.root, tip, commit)
        with _ancestry_lock:
            known = _ancestry.get(key)
        if known is None:
            return _contained(repo, tip, commits)
        if known:
            found.add(commit)
    return found


def _contained(repo: Repo, tip: str, commits: Sequence[str]) -> set[str]:
    """:func:`contained` asked of git; its definite answers kept (a git that failed is not one)."""
    if not commits:
        return set()
    res = run(repo.root, ["merge-base", "--independent", tip, *commits], check=False)
    if res.returncode == 0 and res.stdout.split() == [tip]:
        codes = dict.fromkeys(commits, 0)
    else:  # --is-ancestor: 0 it is, 1 it is not, anything else git failed
        codes = {
            c: run(repo.root, ["merge-base", "--is-ancestor", c, tip], check=False).returncode
            for c in commits
        }
    with _ancestry_lock:
        if len(_ancestry) > _ANCESTRY_LIMIT:
            _ancestry.clear()
        _ancestry.update(
            {(repo.root, tip, c): code == 0 for c, code in codes.items() if code in {0, 1}}
        )
    return {c for c, code in codes.items() if code == 0}


_ANCESTRY_LIMIT = 65536  # answers kept, a bound on memory
_ancestry: dict[tuple[Path, str, str], bool] = {}  # (repository, tip, commit) -> contained
_ancestry_lock = threading.Lock()


def branches(repo: Repo) -> set[str]:
    """The short names of every branch (one git process, however many branches)."""
    out = git(repo.root, "for-each-ref", "--format=%(refname)", "refs/heads/")
    return {line.removeprefix("refs/heads/") for line in out.splitlines() if line}
