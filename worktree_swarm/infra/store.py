"""SQLite state of every run: the Store's runs, tasks, attempts and events, each write atomic."""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import time
from typing import TYPE_CHECKING, TypeVar, Unpack, cast

from worktree_swarm.core.errors import SwarmError
from worktree_swarm.core.models import RunStatus, TaskState
from worktree_swarm.core.task import Task
from worktree_swarm.infra import store_sql as sql
from worktree_swarm.infra.faults import DiskFullError, full_message, is_full, is_locked
from worktree_swarm.infra.store_file import StoreFile
from worktree_swarm.infra.store_rows import (
    AttemptRow,
    AttemptUsage,
    EventRow,
    RunRow,
    TaskFields,
    TaskRow,
    TaskUpdate,
    UnknownValueError,
    attempt_row,
    event_row,
    known,
    run_row,
    task_row,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from worktree_swarm.core.models import ProcessIdentity

RUN_STATUS_RUNNING = RunStatus.RUNNING

_F = TypeVar("_F", bound="Callable[..., object]")


def _waits_for_space(method: _F) -> _F:
    """A write that fails for a full (or failing) disk: handed to ``on_full`` and retried.

    Without ``on_full`` (no manager is pausing for it), it raises DiskFullError: one line.
    """

    @functools.wraps(method)
    def wrapper(self: Store, *args: object, **kwargs: object) -> object:
        failed = False
        while True:
            try:
                result = method(self, *args, **kwargs)
            except (sqlite3.OperationalError, OSError) as exc:
                # A write lock another program holds past the busy timeout (a `sqlite3` shell
                # left in a transaction, a backup) is waited out by a manager like a full disk.
                if self.on_full is None and is_locked(exc):
                    raise SwarmError(
                        f"the state database {self.path} is locked by another program (a"
                        " `sqlite3` shell in a transaction?); try again once it lets go"
                    ) from exc
                if not (is_full(exc) or is_locked(exc)):
                    raise
                if self.on_full is None:
                    what = f"the state database {self.path}"
                    raise DiskFullError(full_message(what, exc, self.path.parent)) from exc
                failed = True
                self.on_full(exc)
                continue
            if failed and self.on_full is not None:
                self.on_full(None)
            return result

    return cast("_F", wrapper)


class Store(StoreFile):
    """The state database; every method is atomic and safe to call from several threads."""

    # -- runs ------------------------------------------------------------------------------

    @_waits_for_space
    def create_run(
        self,
        *,
        run_id: str,
        base_commit: str,
        repo_root: str,
        jobs: int,
        manager: ProcessIdentity | None,
        spec_json: str,
        created_at: float | None = None,
        tasks: Sequence[tuple[Task, str, str]] = (),
    ) -> None:
        """Record a new run with status ``running`` and its *tasks* (as :meth:`add_tasks`).

        One transaction: a manager killed while recording leaves no run without its tasks.
        """
        with self._lock, self._write() as conn:
            conn.execute(
                "INSERT INTO runs (run_id, base_commit, repo_root, jobs, created_at, status,"
                " manager_pid, manager_create_time, spec_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    base_commit,
                    repo_root,
                    jobs,
                    time.time() if created_at is None else created_at,
                    RUN_STATUS_RUNNING,
                    None if manager is None else manager.pid,
                    None if manager is None else manager.create_time,
                    spec_json,
                ),
            )
            sql.insert_tasks(conn, run_id, tasks)

    @_waits_for_space
    def set_manager(self, run_id: str, manager: ProcessIdentity | None) -> None:
        """Record which process manages *run_id* now (None: no manager)."""
        with self._lock, self._write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET manager_pid = ?, manager_create_time = ? WHERE run_id = ?",
                (
                    None if manager is None else manager.pid,
                    None if manager is None else manager.create_time,
                    run_id,
                ),
            )
            sql.require_one(cursor, f"run {run_id}")

    @_waits_for_space
    def finish_run(self, run_id: str, *, status: RunStatus, ended_at: float | None = None) -> None:
        """Mark *run_id* ended with *status*."""
        with self._lock, self._write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET status = ?, ended_at = ? WHERE run_id = ?",
                (RunStatus(status).value, time.time() if ended_at is None else ended_at, run_id),
            )
            sql.require_one(cursor, f"run {run_id}")

    @_waits_for_space
    def reopen_run(self, run_id: str) -> None:
        """Mark *run_id* unfinished again (`swarm retry` carries it on)."""
        with self._lock, self._write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET status = ?, ended_at = NULL WHERE run_id = ?",
                (RUN_STATUS_RUNNING, run_id),
            )
            sql.require_one(cursor, f"run {run_id}")

    def latest_run_id(self) -> str | None:
        """Return the most recently created run, if any."""
        rows = self._read("SELECT run_id FROM runs ORDER BY created_at DESC, rowid DESC LIMIT 1")
        return str(rows[0]["run_id"]) if rows else None

    def get_run(self, run_id: str) -> RunRow | None:
        """Return one run, or None."""
        rows = self._read("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        with self._understood():
            return run_row(rows[0]) if rows else None

    def runs(self) -> list[RunRow]:
        """Return every run, oldest first."""
        rows = self._read("SELECT * FROM runs ORDER BY created_at, rowid")
        with self._understood():
            return [run_row(r) for r in rows]

    # -- tasks -----------------------------------------------------------------------------

    @_waits_for_space
    def add_tasks(self, run_id: str, tasks: Sequence[tuple[Task, str, str]]) -> None:
        """Record (task, branch, worktree path) triples as pending, in manifest order."""
        with self._lock, self._write() as conn:
            sql.insert_tasks(conn, run_id, tasks)

    @_waits_for_space
    def update_task(self, run_id: str, task_id: str, **fields: Unpack[TaskUpdate]) -> None:
        """Set the given columns of one task; unknown field names raise ValueError."""
        sql.check_fields(fields)
        if not fields:
            return
        with self._lock, self._write() as conn:
            sql.update_task(conn, run_id, task_id, fields)

    @_waits_for_space
    def record_state(
        self,
        run_id: str,
        task_id: str,
        state: TaskState,
        *,
        replaces: TaskState | None = None,
        **fields: Unpack[TaskFields],
    ) -> dict[str, object]:
        """Set the task's *state* (and *fields*), append its ``state`` event; the event's data.

        One transaction: neither is ever on record without the other, and a state change
        costs one commit, not two. *replaces*: the final state the new one withdraws.
        """
        sql.check_fields(fields)
        data: dict[str, object] = {"state": TaskState(state).value}
        if fields.get("reason"):
            data["reason"] = fields["reason"]
        if replaces is not None:
            data["replaces"] = replaces.value
        payload = sql.event_payload(data)
        with self._lock, self._write() as conn:
            sql.update_task(conn, run_id, task_id, {"state": state, **fields})
            sql.insert_event(conn, run_id, "state", task_id, payload, None)
        return data

    def forget_merge(self, run_id: str, task_id: str) -> None:
        """Clear what is recorded of the task's merge: the next `swarm merge` takes it anew."""
        self.update_task(
            run_id, task_id, merge_result=None, merge_target=None, merge_commit=None,
            merge_detail="",
        )  # fmt: skip

    def tasks(self, run_id: str) -> list[TaskRow]:
        """Return the run's tasks in manifest order."""
        rows = self._read("SELECT * FROM tasks WHERE run_id = ? ORDER BY position", (run_id,))
        with self._understood():
            return [task_row(r) for r in rows]

    def state_counts(self) -> dict[str, dict[TaskState, int]]:
        """How many tasks of each run are in each state, for every run (one query)."""
        counts: dict[str, dict[TaskState, int]] = {}
        for row in self._read("SELECT run_id, state, COUNT(*) AS n FROM tasks GROUP BY 1, 2"):
            with self._understood():
                state = known(TaskState, row["state"], f"a task of run {row['run_id']} in state")
            counts.setdefault(str(row["run_id"]), {})[state] = int(row["n"])
        return counts

    def owners(self) -> tuple[dict[str, str], dict[str, str]]:
        """The run each task branch and each task worktree path belongs to, by branch and by path.

        It is the latest run that used it: a task id reused by a later run (once the earlier
        one was cleaned) gets the same branch and path, which are that later run's from then on.
        For every run at once (`swarm clean --all`); commands on one run ask :meth:`taken_over`.
        """
        rows = self._read(
            "SELECT t.run_id, t.branch, t.worktree FROM tasks t JOIN runs r USING (run_id)"
            " ORDER BY r.created_at, r.rowid"
        )
        by_branch = {str(row["branch"]): str(row["run_id"]) for row in rows}
        by_path = {str(row["worktree"]): str(row["run_id"]) for row in rows}
        return by_branch, by_path

    def taken_over(self, run_id: str) -> dict[str, str]:
        """The tasks of *run_id* whose branch and worktree a later run took over: id → that run.

        The same rule as :meth:`owners`, read for one run: only the runs created after it are
        read (none for the latest run).
        """
        later = self._read(
            "SELECT t.run_id, t.branch, t.worktree FROM tasks t JOIN runs r USING (run_id)"
            " JOIN runs this ON this.run_id = ?"
            " WHERE (r.created_at, r.rowid) > (this.created_at, this.rowid)"
            " ORDER BY r.created_at, r.rowid",
            (run_id,),
        )
        if not later:
            return {}
        owner: dict[str, str] = {}
        for row in later:
            owner[str(row["branch"])] = owner[str(row["worktree"])] = str(row["run_id"])
        rows = self._read("SELECT task_id, branch, worktree FROM tasks WHERE run_id = ?", (run_id,))
        return {
            str(row["task_id"]): taker
            for row in rows
            if (taker := owner.get(str(row["branch"])) or owner.get(str(row["worktree"])))
        }

    def stop_requests(self, run_id: str) -> list[str]:
        """The ids of the run's tasks whose stop was requested (the manager polls this)."""
        rows = self._read(
            "SELECT task_id FROM tasks WHERE run_id = ? AND stop_requested ORDER BY position",
            (run_id,),
        )
        return [str(r["task_id"]) for r in rows]

    def task(self, run_id: str, task_id: str) -> TaskRow | None:
        """Return one task, or None."""
        rows = self._read("SELECT * FROM tasks WHERE run_id = ? AND task_id = ?", (run_id, task_id))
        with self._understood():
            return task_row(rows[0]) if rows else None

    @contextlib.contextmanager
    def _understood(self) -> Iterator[None]:
        """A value read that this worktree-swarm does not know: one line naming the database."""
        try:
            yield
        except UnknownValueError as exc:
            raise SwarmError(
                f"the state database {self.path} holds {exc}, which this worktree-swarm does"
                " not know (did a newer one write it?); upgrade worktree-swarm"
            ) from exc

    # -- attempts --------------------------------------------------------------------------

    @_waits_for_space
    def record_attempt(
        self,
        run_id: str,
        task_id: str,
        *,
        number: int,
        identity: ProcessIdentity,
        log_path: str,
        started_at: float | None = None,
        agent: str = "",
        event: tuple[str, Mapping[str, object]] | None = None,
    ) -> int:
        """Record a launched agent process (and its profile); return the attempt id.

        Its task's ``attempts`` is set and ``launching`` cleared with it, with *event* (kind,
        data) too. One transaction: the launch is either still an intent
        (``launching``, no attempt) or wholly on record, never half of each.
        """
        row = (run_id, task_id, number, identity, log_path, started_at, agent)
        kind, payload = (None, "") if event is None else (event[0], sql.event_payload(event[1]))
        with self._lock, self._write() as conn:
            attempt_id = sql.insert_attempt(conn, *row)
            sql.update_task(conn, run_id, task_id, {"attempts": number, "launching": None})
            if kind is not None:
                sql.insert_event(conn, run_id, kind, task_id, payload, None)
            return attempt_id

    @_waits_for_space
    def set_retry_at(
        self,
        run_id: str,
        task_id: str,
        number: int,
        retry_at: float,
        *,
        window: bool = False,
        progressed: bool | None = False,
    ) -> None:
        """Record until when the task of a rate-limited attempt waits before the next one.

        *window*: the wait is a usage window's, which uses none of the task's retries; nor
        does an attempt that *progressed* (got work done before its limit; None: as recorded).
        """
        done = None if progressed is None else int(progressed)
        with self._lock, self._write() as conn:
            conn.execute(
                "UPDATE attempts SET retry_at = ?, usage_window = ?,"
                " progressed = COALESCE(?, progressed)"
                " WHERE run_id = ? AND task_id = ? AND number = ?",
                (retry_at, int(window), done, run_id, task_id, number),
            )

    @_waits_for_space
    def end_attempt(
        self,
        attempt_id: int,
        *,
        exit_code: int | None,
        outcome: str,
        ended_at: float | None = None,
        usage: AttemptUsage | None = None,
    ) -> None:
        """Record how an attempt ended and what the agent reported about it."""
        ended = time.time() if ended_at is None else ended_at
        with self._lock, self._write() as conn:
            sql.end_attempt(conn, attempt_id, exit_code, outcome, ended, usage or AttemptUsage())

    @_waits_for_space
    def record_end(
        self,
        attempt_id: int,
        *,
        exit_code: int | None,
        outcome: str,
        usage: AttemptUsage,
        ended_at: float | None = None,
    ) -> None:
        """As :meth:`end_attempt`, *usage* added to its task's totals (cost, tokens) with it.

        One transaction: a manager killed there leaves the attempt open (the resumed one
        records and counts it) or both on record, never its cost counted twice or lost.
        """
        ended = time.time() if ended_at is None else ended_at
        with self._lock, self._write() as conn:
            sql.end_attempt(conn, attempt_id, exit_code, outcome, ended, usage)
            sql.add_usage(conn, attempt_id, usage)

    def attempts(self, run_id: str, task_id: str | None = None) -> list[AttemptRow]:
        """Return the run's attempts (or one task's), in launch order."""
        if task_id is None:
            rows = self._read("SELECT * FROM attempts WHERE run_id = ? ORDER BY id", (run_id,))
        else:
            rows = self._read(
                "SELECT * FROM attempts WHERE run_id = ? AND task_id = ? ORDER BY id",
                (run_id, task_id),
            )
        return [attempt_row(r) for r in rows]

    # -- events ----------------------------------------------------------------------------

    @_waits_for_space
    def add_event(
        self,
        run_id: str,
        kind: str,
        *,
        task_id: str | None = None,
        data: Mapping[str, object] | None = None,
        ts: float | None = None,
    ) -> int:
        """Append an event (*data* must be JSON-serializable) and return its id."""
        payload = sql.event_payload(data or {})
        with self._lock, self._write() as conn:
            return sql.insert_event(conn, run_id, kind, task_id, payload, ts)

    def events(self, run_id: str, *, after: int = 0, kind: str | None = None) -> list[EventRow]:
        """Return the run's events with id greater than *after* (of *kind* only), oldest first."""
        rows = self._read(
            "SELECT * FROM events WHERE run_id = ? AND id > ? AND (? IS NULL OR kind = ?)"
            " ORDER BY id",
            (run_id, after, kind, kind),
        )
        return [event_row(r) for r in rows]
