"""Which other open swarm pull requests a task's branch is predicted to conflict with.

A reviewer of one pull request should know that merging it will make another one conflict.
The prediction is the same ``git merge-tree`` one `swarm merge --dry-run` makes, among the
done tasks of the run that have a branch, and a task's PR body names the conflicting tasks
that have an open pull request (recorded by `swarm pr`), with the files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from worktree_swarm.core.models import TaskState
from worktree_swarm.core.text import path_text
from worktree_swarm.git import repo as git
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import TaskRow
from worktree_swarm.merge import conflicts
from worktree_swarm.merge.diff import BranchTips, task_base, task_branch

HEADING = "**Predicted conflicts with other open swarm pull requests**"


@dataclass(frozen=True, slots=True, kw_only=True)
class Clash:
    """Another task's open pull request that conflicts with this task's branch, and where."""

    task_id: str
    number: int
    files: tuple[str, ...]


def predict_pairs(
    repo: git.Repo, store: Store, run_id: str, *, target: str
) -> dict[str, dict[str, tuple[str, ...]]]:
    """For every done task with a branch: the other such tasks it conflicts with, and files."""
    branches = []
    taken = store.taken_over(run_id)
    tips = BranchTips(repo)
    for row in store.tasks(run_id):
        if row.state is not TaskState.DONE:
            continue
        tip = None if row.task_id in taken else tips(task_branch(row))
        base = task_base(store, row)
        if tip is not None and base is not None and tip != base:
            branches.append(conflicts.Branch(name=row.task_id, tip=tip, base=base))
    found: dict[str, dict[str, tuple[str, ...]]] = {}
    if len(branches) < 2:  # noqa: PLR2004 - a pair needs two
        return found
    prediction = conflicts.predict(repo, branches, target=target)
    for (a, b), files in prediction.pairs.items():
        found.setdefault(a, {})[b] = files
        found.setdefault(b, {})[a] = files
    return found


def clashes(
    task_id: str,
    pairs: Mapping[str, Mapping[str, tuple[str, ...]]],
    open_pulls: Mapping[str, int],
) -> tuple[Clash, ...]:
    """The conflicts of *task_id* with tasks that have an open pull request, by PR number."""
    found = [
        Clash(task_id=other, number=open_pulls[other], files=files)
        for other, files in pairs.get(task_id, {}).items()
        if other in open_pulls and other != task_id
    ]
    return tuple(sorted(found, key=lambda c: c.number))


def open_pulls(rows: Sequence[TaskRow]) -> dict[str, int]:
    """Task id -> number of its pull request, for tasks whose recorded PR is open."""
    return {
        row.task_id: row.pr_number
        for row in rows
        if row.pr_number is not None and (row.pr_state or "open") == "open"
    }


# A section's bounds: GitHub refuses a body past 65,536 characters, and two branches that
# touch every file of a big repository conflict in thousands.
MAX_CLASHES = 30
MAX_FILES = 10
MAX_PATH = 120


def section(found: Sequence[Clash]) -> list[str]:
    """The PR body's lines about *found* (none when nothing is predicted), bounded in size."""
    if not found:
        return []
    lines = [HEADING, ""]
    for clash in found[:MAX_CLASHES]:
        files = ", ".join(_code(_short(f)) for f in clash.files[:MAX_FILES])
        if len(clash.files) > MAX_FILES:
            files += f" and {len(clash.files) - MAX_FILES} more files"
        lines.append(f"- #{clash.number} (task `{clash.task_id}`): {files}")
    if len(found) > MAX_CLASHES:
        lines.append(f"- and {len(found) - MAX_CLASHES} more pull requests")
    return lines


def _short(path: str) -> str:
    return path if len(path) <= MAX_PATH else path[: MAX_PATH - 1] + "…"


def _code(path: str) -> str:
    # A backtick in a file name would end the code span, and so would a blank line (a newline
    # in it): GitHub then renders the rest. Quoted as git quotes it, the name is one line.
    return "`" + path_text(path).replace("`", "'") + "`"
