"""What a `swarm clean` plan reads once, and which task worktrees it looks into together.

Branch tips and merges, processes' working directories, owners and worktree statuses
(``Seen``); where a Ray run pushed its branches (``Pushed``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from worktree_swarm.cleanup.branches import Merged
from worktree_swarm.cleanup.worktree_plan import worktree_dirty
from worktree_swarm.core.errors import CommandError, GitError
from worktree_swarm.core.paths import real_path
from worktree_swarm.git import remotes as git_remotes
from worktree_swarm.git import repo as git
from worktree_swarm.git.worktrees import WorktreeInfo
from worktree_swarm.infra import parallel
from worktree_swarm.infra.store_rows import TaskRow


@dataclass(frozen=True, slots=True, kw_only=True)
class Seen:
    """What a plan reads once, so that it reads no branch or process twice.

    Every branch's tip, which are merged where, every process's working directory (None
    without ``/proc``), the run each task branch and worktree path belongs to, and the status
    of the task worktrees the plan looks at (taken together beforehand, several at once).
    """

    tips: dict[str, str]
    merged: Merged
    cwds: dict[int, str] | None
    owners: tuple[dict[str, str], dict[str, str]]  # by branch, by worktree path
    statuses: dict[str, bool] = field(default_factory=dict)  # task worktree -> holds work
    reals: dict[str, Path] = field(default_factory=dict)  # task worktree -> its real path

    def merged_into(
        self,
        tip: str,
        targets: tuple[str, ...],
        dirty: bool | None,
        worktree: Path | None,
        *,
        repo: git.Repo,
        task: TaskRow | None = None,
    ) -> str | None:
        """The first of *targets* that has *tip*, shortened, or None.

        A branch whose *worktree* holds uncommitted work is not merged: its checkpoint will add
        a commit. *dirty* None means the plan has not looked yet: looked at here, only when
        the answer matters (as the worktree of *task* in *repo*: :func:`worktree_dirty`).
        """
        if dirty:
            return None
        merged = self.merged.into(tip, targets)
        if not merged or dirty is not None or worktree is None:
            return merged
        return None if self.dirty(repo, worktree, task) else merged

    def real(self, worktree: str) -> Path:
        """:func:`real_path` of a task's recorded worktree, resolved once per plan."""
        found = self.reals.get(worktree)
        if found is None:
            found = self.reals[worktree] = real_path(worktree)
        return found

    def dirty(self, repo: git.Repo, worktree: Path, task: TaskRow | None = None) -> bool:
        """Whether the worktree *worktree* of *task* holds work to keep (looked at once)."""
        known = self.statuses.get(str(worktree))
        if known is None:
            try:
                known = worktree_dirty(repo, worktree, task)
            except (GitError, CommandError):  # git cannot look into it: it may hold work
                known = True
            self.statuses[str(worktree)] = known
        return known


class Pushed:
    """Where a Ray run pushed its task branches: its ``remote`` setting, resolved once asked."""

    def __init__(self, *, repo: git.Repo, remote: str) -> None:
        self.repo = repo
        self.remote = remote
        self._url: str | None = None

    @property
    def url(self) -> str:
        """The remote's URL (a path made absolute), as the run's nodes pushed to it."""
        if self._url is None:
            self._url = git_remotes.remote_location(self.repo, self.remote)
        return self._url


def to_look_at(
    runs: list[tuple[str, tuple[str, ...], list[TaskRow]]],
    registered: dict[Path, WorktreeInfo],
    seen: Seen,
    *,
    keep_branches: bool,
    look: bool,
) -> dict[str, TaskRow]:
    """The task worktrees whose status the plan will ask for (a few more without *look*).

    Each with its task (for :func:`worktree_dirty`). With *look*, every finished task's
    worktree the plan would remove; without, only those whose branch is merged (a worktree
    with work to checkpoint keeps its branch). It only decides what is looked at together: a
    worktree it leaves out is looked at when planned.
    """
    branch_owners, path_owners = seen.owners
    paths: dict[str, TaskRow] = {}
    for run_id, targets, tasks in runs:
        for task in tasks:
            if not task.state.is_final or not task.made or path_owners.get(task.worktree) != run_id:
                continue
            info = registered.get(seen.real(task.worktree))
            if (
                info is None
                or info.is_main
                or info.prunable is not None
                or not Path(task.worktree).is_dir()
            ):
                continue
            tip = seen.tips.get(task.branch)
            if look or (
                not keep_branches
                and tip is not None
                and branch_owners.get(task.branch) == run_id
                and seen.merged.into(tip, targets)
            ):
                paths[str(Path(task.worktree))] = task
    return paths


def worktree_statuses(repo: git.Repo, paths: dict[str, TaskRow]) -> dict[str, bool]:
    """{path: whether the worktree there holds work to keep}, several looked at at once.

    *paths*: {path: its task}, as :func:`to_look_at` gives them. One git could not look into
    is left out: its finding looks again, and says why it is kept.
    """

    def look(path: str) -> bool | None:
        try:
            return worktree_dirty(repo, Path(path), paths[path])
        except (GitError, CommandError):
            return None

    found = parallel.in_order(look, list(paths))
    return {path: dirty for path, dirty in zip(paths, found, strict=True) if dirty is not None}
