"""What happens in a run, for every layer: task states, attempt outcomes, run status, processes."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

# A run's event sink: (kind, task id or None, data). The store records what it is given and the
# views (live table, JSON lines) show it.
Emit: TypeAlias = Callable[[str, str | None, Mapping[str, object]], None]

# A task's merge result while `swarm merge` runs checks on its merge: an intent, undone by the
# next merge when that one was killed.
MERGE_CHECKING = "checking"


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


class AttemptOutcome(enum.StrEnum):
    """How one launch of an agent ended, as recorded with the attempt."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RATE_LIMITED = "rate_limited"
    STOPPED = "stopped"  # cut short by `swarm stop`
    TIMED_OUT = "timed_out"
    DISK_FULL = "disk_full"  # failed while the disk was full: tried again once there is room

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


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessIdentity:
    """What identifies a process across PID reuse: (pid, create_time, pgid)."""

    pid: int
    create_time: float
    pgid: int
