"""What one `swarm merge` works with: the task branches it takes, how they land, its session.

And git in its merge worktree, which every step of a merge runs through.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from worktree_swarm.core.errors import SwarmError
from worktree_swarm.core.models import MERGE_CHECKING
from worktree_swarm.core.task import Task
from worktree_swarm.git import repo as git
from worktree_swarm.git import runner
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import TaskRow
from worktree_swarm.merge import conflicts
from worktree_swarm.merge.guarded import MergeGuard
from worktree_swarm.merge.merge_report import MergeProgress, TaskResult
from worktree_swarm.merge.target import Target

if TYPE_CHECKING:
    import subprocess

# A merge made and being checked: its commit and the target's commit before it are recorded
# first, so that a merge killed during its checks is undone and made (and checked) again.
CHECKING = MERGE_CHECKING  # the intent recorded while a merge's checks run


class Strategy(enum.StrEnum):
    """How a task branch lands: a merge commit, or one squashed commit."""

    MERGE = "merge"
    SQUASH = "squash"


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """A task branch to merge."""

    row: TaskRow
    task: Task
    tip: str
    base: str

    @property
    def task_id(self) -> str:
        """The task's id."""
        return self.row.task_id


@dataclass(slots=True, kw_only=True)
class Session:
    """What one `swarm merge` works with; results accumulate in ``results``."""

    repo: git.Repo
    store: Store
    run_id: str
    target: Target
    strategy: Strategy
    checks: tuple[tuple[str, ...], ...]
    identity: dict[str, str]
    log: Path
    progress: MergeProgress
    resolve: bool = False
    # Outside writes of its programs recorded, neither put back nor failing a merge.
    allow_outside_writes: bool = False
    guard: MergeGuard | None = None  # while programs (resolvers, checks) may run
    # The files each task was predicted to conflict on, against the target or another task.
    predicted: conflicts.Prediction | None = None
    results: list[TaskResult] = field(default_factory=list)
    # Tasks merged into the target, before or by this merge: a task squashed onto them
    # brings only its own changes.
    landed: set[str] = field(default_factory=set)
    # With --into, results wait until the branch has moved: recorded before, a merge killed
    # in between would leave tasks recorded as merged into a branch that never got them.
    unrecorded: list[tuple[Candidate, TaskResult]] = field(default_factory=list)


def run_git(s: Session, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run git in the merge worktree, as the run's commit author."""
    # rerere would resolve conflicts the prediction reported; hooks and signing need a human.
    return runner.run(
        s.target.worktree, "-c", "rerere.enabled=false", *args, env=s.identity, check=check
    )


def head_commit(worktree: Path) -> str:
    """The commit HEAD of the merge *worktree* is at."""
    head = git.rev_parse_in(worktree, "HEAD^{commit}")
    if head is None:
        raise SwarmError(f"the merge worktree {worktree} has no HEAD")
    return head


def undo(s: Session, pre: str) -> None:
    """Reset the merge worktree to *pre*, what a merge started from."""
    # Only ever inside the merge worktree: never the user's checkout.
    run_git(s, "reset", "--quiet", "--hard", pre)
