"""Frozen records and enums shared by every layer: tasks, states, attempts."""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

TASK_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
BRANCH_PREFIX = "swarm/"
DEFAULT_COMMIT_AUTHOR = "worktree-swarm <swarm@localhost>"
DEFAULT_RETRIES = 5  # rate-limited attempts resumed per agent before giving up
DEFAULT_MAX_WAIT = 4 * 3600.0  # seconds


def is_valid_task_id(task_id: str) -> bool:
    """Return whether *task_id* is safe as a path component and a ref name part."""
    # ".." and ".lock" are legal for the regex but not for git ref names.
    return (
        TASK_ID_RE.fullmatch(task_id) is not None
        and ".." not in task_id
        and not task_id.endswith((".lock", "."))
    )


class TaskState(enum.StrEnum):
    """Lifecycle of a task (docs/cli.md lists the states)."""

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

    @property
    def is_active(self) -> bool:
        """Whether the task is still in play: pending, running, checking or rate limited."""
        return self in _ACTIVE

    @property
    def is_final(self) -> bool:
        """Whether nothing more will happen to the task in this run."""
        return not self.is_active

    @property
    def is_success(self) -> bool:
        """Whether the task delivered work."""
        return self is TaskState.DONE


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
    fallback: tuple[str, ...] = ()  # profile names that carry the task on (run/fallback.py)
    budget_agent: str = ""  # the profile new attempts use past the budget share
    max_wait: float = DEFAULT_MAX_WAIT  # longest usage-limit reset a task waits for
    # Limits of the steps around the agent; None means the built-in default (30 minutes).
    setup_timeout: float | None = None
    check_timeout: float | None = None
    resolve_timeout: float | None = None

    @property
    def branch(self) -> str:
        """The task's branch name."""
        return BRANCH_PREFIX + self.id


class AttemptOutcome(enum.StrEnum):
    """How one launch of an agent ended, as recorded with the attempt."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RATE_LIMITED = "rate_limited"
    STOPPED = "stopped"  # cut short by `swarm stop`
    TIMED_OUT = "timed_out"

    @classmethod
    def parse(cls, text: str | None) -> AttemptOutcome:
        """A stored outcome; anything unknown (or none) counts as a failure."""
        try:
            return cls(text or cls.FAILED)
        except ValueError:
            return cls.FAILED


class RunStatus(enum.StrEnum):
    """Where a run stands as a whole."""

    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"  # `swarm stop` ended it
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM of the manager
    ABANDONED = "abandoned"  # its manager died and `swarm run --force` gave it up


class Executor(enum.StrEnum):
    """Where agents run."""

    LOCAL = "local"  # worktrees of this repository, agents on this machine
    RAY = "ray"  # per-node clones on a Ray cluster (run/ray_exec.py)


class CopyMode(enum.StrEnum):
    """How `copy` files reach a worktree."""

    AUTO = "auto"  # a copy-on-write clone where the filesystem can, else a byte copy
    HARDLINK = "hardlink"
    COPY = "copy"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSettings:
    """The run-wide settings: stored with the run, read back by every later command."""

    jobs: int = 4
    worktree_root: Path | None = None
    commit_author: str = DEFAULT_COMMIT_AUTHOR
    port_base: int = 20000
    port_block: int = 10
    kill_grace: float = 5.0
    max_cost_usd: float | None = None
    budget_share: float = 0.8
    rate_limit_backoff: float = 30.0
    max_disk: int | None = None
    copy_mode: CopyMode = CopyMode.AUTO
    sandbox: bool = False
    sandbox_writable: tuple[str, ...] = ()
    allow_outside_writes: bool = False
    executor: Executor = Executor.LOCAL
    ray_address: str = ""  # empty: RAY_ADDRESS, else a cluster on this machine
    remote: str = "origin"  # the remote (name or URL) every node clones from and pushes to
    ray_memory: int = 2 * 2**30  # bytes a task's actor asks Ray for
    checkpoint_interval: float = 60.0  # seconds between pushes while an agent runs (ray)

    def to_json(self) -> str:
        """The settings as stored in the run's row."""
        data: dict[str, object] = {}
        for f in fields(RunSettings):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            data[f.name] = value
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> RunSettings:
        """Read stored settings; unknown keys are ignored, missing ones take their default."""
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        values: dict[str, object] = {}
        for f in fields(RunSettings):
            if f.name not in data or data[f.name] is None:
                continue
            value = data[f.name]
            if f.name == "worktree_root":
                # Runs stored before this class wrote a missing root as the string "None".
                if value == "None":
                    continue
                value = Path(str(value))
            elif f.name == "copy_mode":
                value = CopyMode(str(value))
            elif f.name == "executor":
                value = Executor(str(value))
            elif isinstance(value, list):
                value = tuple(value)
            values[f.name] = value
        return cls(**values)  # type: ignore[arg-type]

    @property
    def settings(self) -> RunSettings:
        """Only the run-wide settings (a RunSpec without its tasks)."""
        return RunSettings(**{f.name: getattr(self, f.name) for f in fields(RunSettings)})


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSpec(RunSettings):
    """A validated batch of tasks plus the run-wide settings."""

    tasks: tuple[Task, ...]
    extra: dict[str, object] = field(default_factory=dict)

    @classmethod
    def of(cls, settings: RunSettings, tasks: tuple[Task, ...]) -> RunSpec:
        """A spec of *tasks* under *settings* (e.g. read back from the store)."""
        return cls(tasks=tasks, **{f.name: getattr(settings, f.name) for f in fields(RunSettings)})


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessIdentity:
    """What identifies a process across PID reuse: (pid, create_time, pgid)."""

    pid: int
    create_time: float
    pgid: int
