"""Frozen records and enums shared by every layer: tasks, states, attempts."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from pathlib import Path

TASK_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
BRANCH_PREFIX = "swarm/"
DEFAULT_COMMIT_AUTHOR = "worktree-swarm <swarm@localhost>"


def is_valid_task_id(task_id: str) -> bool:
    """Return whether *task_id* is safe as a path component and a ref name part."""
    # ".." and ".lock" are legal for the regex but not for git ref names.
    return (
        TASK_ID_RE.fullmatch(task_id) is not None
        and ".." not in task_id
        and not task_id.endswith((".lock", "."))
    )


class TaskState(enum.StrEnum):
    """Lifecycle of a task (SPEC.md)."""

    PENDING = "pending"
    BLOCKED = "blocked"
    RUNNING = "running"
    RATE_LIMITED = "rate_limited"
    CHECKING = "checking"
    DONE = "done"
    FAILED = "failed"
    NO_CHANGES = "no_changes"
    TIMED_OUT = "timed_out"
    STOPPED = "stopped"
    MERGED = "merged"
    CONFLICTED = "conflicted"

    @property
    def is_final(self) -> bool:
        """Whether nothing more will happen to the task in this run."""
        return self not in _ACTIVE

    @property
    def is_success(self) -> bool:
        """Whether the task delivered work."""
        return self in {TaskState.DONE, TaskState.MERGED}


_ACTIVE = frozenset(
    {TaskState.PENDING, TaskState.RUNNING, TaskState.RATE_LIMITED, TaskState.CHECKING}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Task:
    """One unit of work: a prompt for an agent in its own worktree and branch.

    ``agent`` is either a profile name (``agent_argv`` empty) or resolved to an argv
    template in ``agent_argv``; placeholders are substituted inside single arguments.
    Checks and setup steps are argv lists: no shell ever runs them.
    """

    id: str
    prompt: str
    title: str = ""
    depends_on: tuple[str, ...] = ()
    agent: str = "command"
    agent_argv: tuple[str, ...] = ()
    checks: tuple[tuple[str, ...], ...] = ()
    files: tuple[str, ...] = ()
    timeout: float | None = None
    idle_timeout: float | None = None
    retries: int = 0
    priority: int = 0
    copy: tuple[str, ...] = ()
    setup: tuple[tuple[str, ...], ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    expect_files: tuple[str, ...] = ()
    repair: int = 0
    no_placeholders: bool = False
    link: tuple[str, ...] = ()
    # Limits of the steps around the agent; None means the built-in default (30 minutes).
    setup_timeout: float | None = None
    check_timeout: float | None = None
    resolve_timeout: float | None = None

    @property
    def branch(self) -> str:
        """The task's branch name."""
        return BRANCH_PREFIX + self.id


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSpec:
    """A validated batch of tasks plus the run-wide settings."""

    tasks: tuple[Task, ...]
    jobs: int = 4
    worktree_root: Path | None = None
    commit_author: str = DEFAULT_COMMIT_AUTHOR
    port_base: int = 20000
    port_block: int = 10
    kill_grace: float = 5.0
    max_cost_usd: float | None = None
    rate_limit_backoff: float = 30.0
    max_disk: int | None = None
    copy_mode: str = "auto"
    sandbox: bool = False
    sandbox_writable: tuple[str, ...] = ()
    allow_outside_writes: bool = False
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessIdentity:
    """What identifies a process across PID reuse: (pid, create_time, pgid)."""

    pid: int
    create_time: float
    pgid: int
