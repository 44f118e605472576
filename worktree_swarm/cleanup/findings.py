"""The findings of `swarm clean` and `swarm doctor`: what a plan is made of.

A plan is a list of :class:`Finding` objects, each naming its target, the reason and what
``--yes`` does about it (its :class:`Action`); :func:`worktree_swarm.cleanup.fixes.apply`
carries it out and says what it did with each in a :class:`Result`.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass

from worktree_swarm.git.remotes import strip_userinfo


class Kind(enum.StrEnum):
    """What a finding is about."""

    PROCESS = "process"
    LOCK = "lock"
    REF = "ref"
    STAGING = "staging"
    WORKTREE = "worktree"
    DIRECTORY = "directory"
    FOREIGN_WORKTREE = "foreign_worktree"
    BRANCH = "branch"
    REMOTE_BRANCH = "remote_branch"
    NODE_CLONE = "node_clone"


class Action(enum.StrEnum):
    """What ``--yes`` does about a finding; declaration order is the order they are applied."""

    REMOVE_HALF_MADE = "remove_half_made"  # first: until then git lists no worktree
    STOP_TASK = "stop_task"
    KILL = "kill"
    UNLINK_LOCK = "unlink_lock"
    MEND_REF = "mend_ref"
    FORGET_REF_MOVES = "forget_ref_moves"
    REMOVE_STAGING = "remove_staging"
    REMOVE_WORKTREE = "remove_worktree"
    REMOVE_INITIALIZING = "remove_initializing"
    RESCUE_DIRECTORY = "rescue_directory"
    RESCUE_WORKTREE = "rescue_worktree"
    PRUNE = "prune"
    DELETE_BRANCH = "delete_branch"
    DELETE_REMOTE_BRANCH = "delete_remote_branch"
    REMOVE_NODE_CLONE = "remove_node_clone"
    KEEP = "keep"


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One thing to clean: what, why, and what ``--yes`` does (``fix``).

    ``problem`` is False for informational entries (an unmerged task branch kept on purpose);
    those never make the exit code 1.
    """

    kind: Kind
    target: str
    reason: str
    action: Action
    fix: str
    problem: bool = True
    run_id: str | None = None
    task_id: str | None = None
    pid: int | None = None
    create_time: float | None = None
    pgid: int | None = None
    branch: str | None = None
    admin_dir: str | None = None
    merged_into: tuple[str, ...] = ()
    node: str | None = None  # a Ray node's name (executor `ray`)
    remote: str | None = None  # remote_branch: the URL of the remote it is on
    remote_tip: str | None = None  # remote_branch: the commit it is deleted at, and only at

    def to_json(self) -> dict[str, object]:
        """Plain dict for ``--json``."""
        data = asdict(self)
        data["merged_into"] = list(self.merged_into)
        if self.remote is not None:  # as git shows it: its user info can be a token
            data["remote"] = strip_userinfo(self.remote)
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """What applying one finding did."""

    finding: Finding
    fixed: bool
    detail: str
    checkpoint: str | None = None
