"""What the state database holds, as records: runs, tasks, attempts, events, task specs."""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

from worktree_swarm.core.models import RunStatus, TaskState
from worktree_swarm.core.run_settings import RunSettings
from worktree_swarm.core.task import Task

if TYPE_CHECKING:
    import sqlite3


# Columns update_task may write; the names are interpolated into SQL, so this list is the guard.
class TaskFields(TypedDict, total=False):
    """The task columns :meth:`Store.update_task` may set beside the state, with their types."""

    reason: str
    base_commit: str | None
    attempts: int
    started_at: float | None
    ended_at: float | None
    stop_requested: bool
    diff_files: int | None
    diff_insertions: int | None
    diff_deletions: int | None
    cost_usd: float | None
    tokens_in: int | None
    tokens_out: int | None
    cache_read_tokens: int | None
    disk_apparent: int | None
    disk_actual: int | None
    worktree_removed_at: float | None
    merge_result: str | None
    merge_target: str | None
    merge_commit: str | None
    merge_detail: str
    pr_number: int | None
    pr_url: str | None
    pr_state: str | None
    start_commit: str | None
    retry_base: int
    retry_fresh: bool
    launching: int | None
    node: str | None
    instruction: str | None
    repairs: int
    tip_commit: str | None
    launching_agent: str | None


class TaskUpdate(TaskFields, total=False):
    """Every task column :meth:`Store.update_task` may set."""

    state: TaskState


UPDATABLE = TaskUpdate.__optional_keys__


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRow:
    """One run as recorded."""

    run_id: str
    base_commit: str
    repo_root: str
    jobs: int
    created_at: float
    ended_at: float | None
    status: RunStatus
    manager_pid: int | None
    manager_create_time: float | None
    spec_json: str

    @property
    def settings(self) -> RunSettings:
        """The run-wide settings the run was started with."""
        return RunSettings.from_json(self.spec_json)


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRow:
    """One task of a run as recorded."""

    run_id: str
    task_id: str
    position: int
    state: TaskState
    reason: str
    branch: str
    worktree: str
    base_commit: str | None
    attempts: int
    started_at: float | None
    ended_at: float | None
    stop_requested: bool
    spec_json: str
    diff_files: int | None
    diff_insertions: int | None
    diff_deletions: int | None
    cost_usd: float | None
    tokens_in: int | None
    tokens_out: int | None
    cache_read_tokens: int | None = None
    disk_apparent: int | None = None
    disk_actual: int | None = None
    worktree_removed_at: float | None = None
    merge_result: str | None = None
    merge_target: str | None = None
    merge_commit: str | None = None
    merge_detail: str = ""
    pr_number: int | None = None
    pr_url: str | None = None
    pr_state: str | None = None
    start_commit: str | None = None
    retry_base: int = 0
    retry_fresh: bool = False
    launching: int | None = None
    node: str | None = None
    instruction: str | None = None
    repairs: int = 0
    tip_commit: str | None = None
    launching_agent: str | None = None

    @property
    def made(self) -> bool:
        """Whether swarm made (or, its intent recorded, set out to make) its branch and worktree.

        A branch or directory its creation found already there is not the task's: never
        deleted, merged or shown as its.
        """
        return bool(self.start_commit or self.base_commit)

    @property
    def agent_started(self) -> bool:
        """Whether an attempt's agent started (or was being launched) in its worktree.

        A fresh retry's worktree is made anew: only the attempts since that retry count.
        """
        last = max(self.attempts, self.launching or 0)
        return last > (self.retry_base if self.retry_fresh else 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptRow:
    """One launch of a task's agent process."""

    id: int
    run_id: str
    task_id: str
    number: int
    pid: int
    create_time: float
    pgid: int
    started_at: float
    ended_at: float | None
    exit_code: int | None
    outcome: str | None
    log_path: str
    reason: str = ""
    session_id: str | None = None
    cost_usd: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cache_read_tokens: int | None = None
    agent: str = ""
    retry_at: float | None = None
    usage_window: bool = False
    progressed: bool = False  # rate limited after it got work done: no retry used


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptUsage:
    """What an agent reported about one attempt (all optional)."""

    reason: str = ""
    session_id: str | None = None
    cost_usd: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cache_read_tokens: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EventRow:
    """One entry of a run's event log."""

    id: int
    run_id: str
    task_id: str | None
    ts: float
    kind: str
    data: dict[str, object]


def task_to_json(task: Task) -> str:
    """Serialize *task*; :func:`task_from_json` restores it exactly."""
    return json.dumps({f.name: getattr(task, f.name) for f in dataclasses.fields(task)})


def task_from_json(text: str) -> Task:
    """Restore a task written by :func:`task_to_json`."""
    raw = json.loads(text)
    if not isinstance(raw, dict):
        # ValueError, not TypeError: the stored text is malformed, the caller did nothing wrong.
        raise ValueError(f"task json must be an object, got {type(raw).__name__}")  # noqa: TRY004
    known = {f.name for f in dataclasses.fields(Task)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"task json has unknown fields: {', '.join(unknown)}")
    # Every sequence field of Task is a (possibly nested) tuple; JSON only has lists.
    kwargs: dict[str, Any] = {key: _tuples(value) for key, value in raw.items()}
    return Task(**kwargs)


def _tuples(value: object) -> object:
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


class UnknownValueError(ValueError):
    """A stored value this worktree-swarm has no meaning for (a newer one may have written it)."""


_E = TypeVar("_E", bound=enum.Enum)


def known(kind: type[_E], value: object, what: str) -> _E:
    """*value* as one of *kind*; else UnknownValueError saying *what* holds it and the value."""
    try:
        return kind(value)
    except ValueError:
        raise UnknownValueError(f"{what} {value!r}") from None


# Column names equal field names, so rows convert by keyword; only non-SQL types need care.
def run_row(r: sqlite3.Row) -> RunRow:
    """A RunRow from its database row."""
    values = dict(r)
    values["status"] = known(RunStatus, values["status"], f"run {values['run_id']} in state")
    return RunRow(**values)


def task_row(r: sqlite3.Row) -> TaskRow:
    """A TaskRow from its database row."""
    values = dict(r)
    what = f"task {values['task_id']} of run {values['run_id']} in state"
    values["state"] = known(TaskState, values["state"], what)
    values["stop_requested"] = bool(values["stop_requested"])
    values["retry_fresh"] = bool(values["retry_fresh"])
    return TaskRow(**values)


def attempt_row(r: sqlite3.Row) -> AttemptRow:
    """An AttemptRow from its database row."""
    values = dict(r)
    values["usage_window"] = bool(values["usage_window"])
    values["progressed"] = bool(values["progressed"])
    return AttemptRow(**values)


def event_row(r: sqlite3.Row) -> EventRow:
    """An EventRow from its database row."""
    values = dict(r)
    values["data"] = json.loads(values["data"])
    return EventRow(**values)
