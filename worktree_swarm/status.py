"""Read-only views of the state store: status rows and log locations."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from worktree_swarm import git, supervisor
from worktree_swarm.disk import DiskUsage, usage
from worktree_swarm.errors import BadInputError
from worktree_swarm.models import DEFAULT_COMMIT_AUTHOR, ProcessIdentity, TaskState
from worktree_swarm.redact import redact
from worktree_swarm.runner import store_path
from worktree_swarm.store import AttemptRow, Store


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskStatus:
    """One row of `swarm status` (the ``--json`` fields, documented in the README)."""

    task_id: str
    state: str
    reason: str
    attempt: int
    pid: int | None
    alive: bool
    elapsed_s: float | None
    cost_usd: float | None
    tokens_in: int | None
    tokens_out: int | None
    files_changed: int | None
    insertions: int | None
    deletions: int | None
    branch: str
    worktree: str
    worktree_present: bool = False
    disk_apparent: int | None = None
    disk_actual: int | None = None

    def to_json(self) -> dict[str, object]:
        """Plain dict for JSON output."""
        return asdict(self)


def open_store(repo: git.Repo) -> Store:
    """Open the store, or explain that no run has happened here yet."""
    path = store_path(repo)
    if not path.exists():
        raise BadInputError(f"no swarm runs in {repo.root} yet; start one with `swarm run`")
    return Store(path)


def resolve_run(store: Store, run_id: str | None) -> str:
    """The given run id (checked) or the latest one."""
    if run_id is None:
        latest = store.latest_run_id()
        if latest is None:
            raise BadInputError("no swarm runs recorded yet; start one with `swarm run`")
        return latest
    if store.get_run(run_id) is None:
        raise BadInputError(f"unknown run {run_id!r}; `swarm status` shows the latest run")
    return run_id


def task_status(
    store: Store, run_id: str, *, now: float | None = None, disk: bool = False
) -> list[TaskStatus]:
    """Status rows of every task of *run_id*, checking recorded PIDs against reality.

    With *disk*, the disk use of each worktree: measured now while its task goes on, as
    recorded when it ended otherwise (also for a worktree removed since).
    """
    now = time.time() if now is None else now
    last = {attempt.task_id: attempt for attempt in store.attempts(run_id)}
    rows = []
    for task in store.tasks(run_id):
        attempt = last.get(task.task_id)
        alive = attempt is not None and attempt.ended_at is None and _alive(attempt)
        elapsed = None
        if task.started_at is not None:
            elapsed = round((task.ended_at or now) - task.started_at, 3)
        present = Path(task.worktree).is_dir()
        used = None
        if disk and task.disk_actual is not None and (task.state.is_final or not present):
            used = DiskUsage(task.disk_apparent or 0, task.disk_actual)
        elif disk and present:
            used = usage(Path(task.worktree))
        rows.append(
            TaskStatus(
                task_id=task.task_id,
                state=task.state.value,
                reason=redact(task.reason),  # also rows written before redaction existed
                attempt=task.attempts,
                pid=attempt.pid if attempt else None,
                alive=alive,
                elapsed_s=elapsed,
                cost_usd=task.cost_usd,
                tokens_in=task.tokens_in,
                tokens_out=task.tokens_out,
                files_changed=task.diff_files,
                insertions=task.diff_insertions,
                deletions=task.diff_deletions,
                branch=task.branch,
                worktree=task.worktree,
                worktree_present=present,
                disk_apparent=None if used is None else used.apparent,
                disk_actual=None if used is None else used.actual,
            )
        )
    return rows


def _alive(attempt: AttemptRow) -> bool:
    identity = ProcessIdentity(pid=attempt.pid, create_time=attempt.create_time, pgid=attempt.pgid)
    return supervisor.is_alive(identity)


def log_path(store: Store, run_id: str, task_id: str) -> tuple[Path, AttemptRow]:
    """The newest attempt's log of *task_id*."""
    if store.task(run_id, task_id) is None:
        raise BadInputError(f"no task {task_id!r} in run {run_id}; `swarm status` lists them")
    attempts = store.attempts(run_id, task_id)
    if not attempts:
        raise BadInputError(f"task {task_id!r} has not started an agent yet")
    return Path(attempts[-1].log_path), attempts[-1]


def is_active(state: TaskState) -> bool:
    """Whether a task in *state* may still have a live agent."""
    return state in {TaskState.RUNNING, TaskState.CHECKING, TaskState.RATE_LIMITED}


def run_totals(rows: list[TaskStatus], *, disk: bool = False) -> dict[str, float | int]:
    """Attempts, cost and tokens of the whole run (missing values count as zero).

    With *disk* (rows read with disk use), also ``disk_apparent`` and ``disk_actual``: what
    the run's worktrees that are still there use (removed ones count zero).
    """
    totals: dict[str, float | int] = {
        "attempts": sum(r.attempt for r in rows),
        "cost_usd": round(sum(r.cost_usd or 0.0 for r in rows), 6),
        "tokens_in": sum(r.tokens_in or 0 for r in rows),
        "tokens_out": sum(r.tokens_out or 0 for r in rows),
    }
    if disk:
        present = [r for r in rows if r.worktree_present]
        totals["disk_apparent"] = sum(r.disk_apparent or 0 for r in present)
        totals["disk_actual"] = sum(r.disk_actual or 0 for r in present)
    return totals


def commit_author(store: Store, run_id: str) -> str:
    """The checkpoint/merge author configured for *run_id* (``Name <email>``)."""
    run = store.get_run(run_id)
    settings = json.loads(run.spec_json) if run is not None else {}
    author = settings.get("commit_author") if isinstance(settings, dict) else None
    return author if isinstance(author, str) else DEFAULT_COMMIT_AUTHOR
