"""A run in the state store beside its tasks' rows: the store, the run, its manager, its records.

The store opened (or why there is none) and a run id resolved; whether the run's manager runs,
or is stopped or paused; the guard's failed scans and the remote-tracking refs it put back;
the run's commit author; a task's newest log, and its secrets made known to this process's
redactor.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

from worktree_swarm.core.errors import BadInputError, SwarmError, unknown_task
from worktree_swarm.core.models import ProcessIdentity, TaskState
from worktree_swarm.core.paths import run_dir, store_path
from worktree_swarm.core.run_settings import DEFAULT_COMMIT_AUTHOR
from worktree_swarm.core.task import Task
from worktree_swarm.core.text import printable
from worktree_swarm.git import local_files
from worktree_swarm.git import repo as git
from worktree_swarm.guard import remotes
from worktree_swarm.guard.model import group_failures
from worktree_swarm.infra import faults, proctree
from worktree_swarm.infra import redact as redaction
from worktree_swarm.infra.lock import refuse_while_state_is_gone
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import AttemptRow, EventRow, RunRow, TaskRow, task_from_json


@dataclass(frozen=True, slots=True, kw_only=True)
class ManagerStatus:
    """Whether a run's manager is there (``run_state``, ``manager_running`` in ``--json``)."""

    run_state: str
    manager_running: bool
    manager_note: str | None
    paused: str | None

    def to_json(self) -> dict[str, object]:
        """Plain dict for JSON output."""
        return asdict(self)

    def lines(self) -> list[str]:
        """What `swarm status` prints beside the run id."""
        return [line for line in (self.manager_note, self.paused) if line]


def manager_status(repo: git.Repo, store: Store, run_id: str) -> ManagerStatus:
    """The run's state and manager, and why a live manager is paused (a full disk)."""
    from worktree_swarm.run import runs  # noqa: PLC0415 - runs imports control, which imports us

    run = store.get_run(run_id)
    if run is None:
        raise BadInputError(f"unknown run {run_id!r}; `swarm runs` lists them")
    state = runs.run_state(run)
    running = state is runs.RunState.RUNNING
    return ManagerStatus(
        run_state=state.value,
        manager_running=running,
        manager_note=runs.manager_note(store, run),
        paused=(manager_frozen(run) or faults.paused_reason(run_dir(repo, run_id)))
        if running
        else None,
    )


def has_store(repo: git.Repo) -> bool:
    """Whether a run has been recorded here (ManagerLockedError as :func:`open_store`)."""
    refuse_while_state_is_gone(repo.state_dir, store_path(repo))
    return store_path(repo).exists()


def open_store(
    repo: git.Repo,
    *,
    to_read: bool = False,
    busy_seconds: float | None = None,
    run_id: str | None = None,
) -> Store:
    """Open the store, or explain that no run has happened here yet.

    ManagerLockedError instead where a live manager's state directory was deleted under it.
    With *to_read* (commands that only look), a full disk does not stop them: the store is
    opened as it was last written (:meth:`Store.to_read`). *busy_seconds*: how long to wait
    for another process's lock on it (SwarmError then), by default the store's own wait.
    *run_id*: a run read from it before (`swarm watch`): a store missing now was deleted.
    """
    # Not "no runs" where a live manager's `.git/swarm` was deleted (it writes it back).
    if not has_store(repo):
        if run_id is not None:
            raise SwarmError(
                f"run {run_id}'s state was deleted ({store_path(repo)} is gone); "
                "swarm cannot act on it"
            )
        raise BadInputError(f"no swarm runs in {repo.root} yet; start one with `swarm run`")
    path = store_path(repo)
    if to_read:
        return Store.to_read(path, busy_seconds=busy_seconds)
    return Store(path, busy_seconds=busy_seconds)


def resolve_run(store: Store, run_id: str | None) -> str:
    """The given run id (checked) or the latest one."""
    if run_id is None:
        latest = store.latest_run_id()
        if latest is None:
            raise BadInputError("no swarm runs recorded yet; start one with `swarm run`")
        return latest
    if store.get_run(run_id) is None:
        raise BadInputError(f"unknown run {run_id!r}; `swarm runs` lists the recorded runs")
    return run_id


def manager_frozen(run: RunRow) -> str | None:
    """What to do when *run*'s manager is alive but stopped (Ctrl-Z, SIGSTOP), else None."""
    if run.manager_pid is None or run.manager_create_time is None:
        return None
    ident = ProcessIdentity(pid=run.manager_pid, create_time=run.manager_create_time, pgid=0)
    if not proctree.is_frozen(ident):
        return None
    return (
        f"manager (pid {run.manager_pid}) is stopped (Ctrl-Z or SIGSTOP): it watches, launches"
        f" and stops nothing until it goes on (`kill -CONT {run.manager_pid}`, or `fg`)"
    )


def manager_running(run: RunRow) -> bool:
    """Whether the process recorded as *run*'s manager is alive (same PID and start time)."""
    if run.manager_pid is None or run.manager_create_time is None:
        return False
    ident = ProcessIdentity(pid=run.manager_pid, create_time=run.manager_create_time, pgid=0)
    return proctree.is_alive(ident)


def log_path(repo: git.Repo, store: Store, run_id: str, task_id: str) -> tuple[Path, AttemptRow]:
    """The newest attempt's log of *task_id*."""
    row = _task_row(store, run_id, task_id)
    attempts = store.attempts(run_id, task_id)
    if not attempts and row.state.is_final:  # it never will: no log, not a wrong question
        ran = _step_log(repo, run_id, task_id, "setup").is_file()
        see = f"; `swarm logs {task_id} --setup` shows what its setup printed" if ran else ""
        raise SwarmError(f"task {task_id!r} never started an agent ({_ended_as(row)}){see}")
    if not attempts:
        raise BadInputError(f"task {task_id!r} has not started an agent yet")
    return Path(attempts[-1].log_path), attempts[-1]


def step_log_path(repo: git.Repo, store: Store, run_id: str, task_id: str, step: str) -> Path:
    """The output of *task_id*'s *step* (``setup``, ``checks``) in its latest attempt: its log.

    SwarmError where none ran yet (a task that never got that far says how it ended).
    """
    row = _task_row(store, run_id, task_id)
    path = _step_log(repo, run_id, task_id, step)
    if not path.is_file() and step == "checks" and row.node and row.state is TaskState.CHECKING:
        # On a Ray node: what they print comes back whole, once they end.
        raise SwarmError(
            f"task {task_id!r} has no checks output here yet: its checks run on node"
            f" {printable(row.node)}, and what they print is copied here when they end"
        )
    if not path.is_file() and step == "setup" and _set_up_on_a_node(row):
        # As its checks: what it prints comes back whole, once it ends.
        raise SwarmError(
            f"task {task_id!r} has no setup output here yet: it is being set up on node"
            f" {printable(row.node or '')}, and what its setup prints is copied here when it ends"
        )
    if not path.is_file():
        how = f" ({_ended_as(row)})" if row.state.is_final else ""
        raise SwarmError(f"task {task_id!r} has no {step} output: none ran{how}")
    return path


def _set_up_on_a_node(row: TaskRow) -> bool:
    """Whether *row*'s task is being launched on a Ray node, a `setup` to run before its agent."""
    if row.node is None or row.launching is None or row.state is not TaskState.RUNNING:
        return False
    return bool(task_from_json(row.spec_json).setup)


def _step_log(repo: git.Repo, run_id: str, task_id: str, step: str) -> Path:
    """Where *task_id*'s *step* (``setup``, ``checks``) writes what it prints."""
    return run_dir(repo, run_id) / task_id / f"{step}.log"


def _task_row(store: Store, run_id: str, task_id: str) -> TaskRow:
    """*task_id*'s row in run *run_id*; BadInputError where the run has no such task."""
    row = store.task(run_id, task_id)
    if row is None:
        raise unknown_task(task_id, run_id)
    return row


def _ended_as(row: TaskRow) -> str:
    """A final task's state and reason, as one line: ``failed: setup ... exited 4``."""
    return row.state.value + (f": {printable(row.reason)}" if row.reason else "")


def know_task_secrets(repo: git.Repo, store: Store, run_id: str, task_id: str) -> None:
    """Have this process's redactor replace *task_id*'s own secrets too, as its manager does.

    Those are the secret-named values of the task's ``env`` and the secrets of its ``copy``
    files, and those of its running agent's environment (its manager's shell's, which this
    one's may lack).
    """
    row = store.task(run_id, task_id)
    if row is not None:
        know_secrets_of(repo.root, [task_from_json(row.spec_json)])
    for attempt in store.attempts(run_id, task_id):
        if attempt.ended_at is None:
            proctree.learn_secrets(
                ProcessIdentity(pid=attempt.pid, create_time=attempt.create_time, pgid=attempt.pgid)
            )


def know_secrets_of(root: Path, tasks: Iterable[Task]) -> None:
    """Redact *tasks*' secret-named `env` values and their `copy` files' secrets from now on.

    From everything this process writes; the `copy` files are those below *root* (each file
    read once, whatever number of tasks copies it).
    """
    tasks = list(tasks)
    redaction.add_env(pair for task in tasks for pair in task.env)
    redaction.add_env(local_files.copied_secrets(root, sorted({g for t in tasks for g in t.copy})))


def guard_errors(store: Store, run_id: str) -> list[dict[str, object]]:
    """The guard's failed scans of *run_id*, oldest first, each job and reason once.

    Each: ``job``, ``reason``, ``count`` (how many times it began), ``ts``, ``last_ts``.
    """
    return group_failures({"ts": e.ts, **e.data} for e in store.events(run_id, kind="guard_error"))


def remote_refs_put_back(store: Store, run_id: str) -> list[str]:
    """The remote-tracking refs the guard put back during *run_id* (``origin/main``), sorted."""
    return remote_refs_of(store.events(run_id, kind=remotes.EVENT))


def remote_refs_of(events: Iterable[EventRow]) -> list[str]:
    """The remote-tracking refs *events* say the guard put back (``origin/main``), sorted."""
    refs = {
        str(ref).removeprefix(remotes.PREFIX)
        for e in events
        if e.kind == remotes.EVENT
        for ref in cast("list[object]", e.data.get("refs") or [])
    }
    return sorted(refs)


def commit_author(store: Store, run_id: str) -> str:
    """The checkpoint/merge author configured for *run_id* (``Name <email>``)."""
    run = store.get_run(run_id)
    return run.settings.commit_author if run is not None else DEFAULT_COMMIT_AUTHOR
