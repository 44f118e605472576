"""The statements the Store's writes are made of, each run inside the caller's transaction."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import TYPE_CHECKING

from worktree_swarm.core.models import TaskState
from worktree_swarm.core.text import printable
from worktree_swarm.infra.redact import redact, redact_data
from worktree_swarm.infra.store_rows import UPDATABLE, AttemptUsage, task_to_json

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from worktree_swarm.core.models import ProcessIdentity
    from worktree_swarm.core.task import Task


def insert_tasks(
    conn: sqlite3.Connection, run_id: str, tasks: Sequence[tuple[Task, str, str]]
) -> None:
    """Insert (task, branch, worktree path) triples as pending, in manifest order."""
    conn.executemany(
        "INSERT INTO tasks (run_id, task_id, position, state, branch, worktree, spec_json)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (run_id, task.id, pos, TaskState.PENDING.value, branch, worktree, task_to_json(task))
            for pos, (task, branch, worktree) in enumerate(tasks)
        ],
    )


def insert_attempt(
    conn: sqlite3.Connection,
    run_id: str,
    task_id: str,
    number: int,
    identity: ProcessIdentity,
    log_path: str,
    started_at: float | None,
    agent: str,
) -> int:
    """Insert an attempt's launched agent process; its id."""
    cursor = conn.execute(
        "INSERT INTO attempts (run_id, task_id, number, pid, create_time, pgid,"
        " started_at, log_path, agent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            run_id,
            task_id,
            number,
            identity.pid,
            identity.create_time,
            identity.pgid,
            time.time() if started_at is None else started_at,
            log_path,
            agent,
        ),
    )
    return lastrowid(cursor)


def end_attempt(
    conn: sqlite3.Connection,
    attempt_id: int,
    exit_code: int | None,
    outcome: str,
    ended_at: float,
    usage: AttemptUsage,
) -> None:
    """Record how an attempt ended and what its agent reported (*usage*) on its own row.

    What *usage* does not report keeps what is on record: an attempt ended again (its
    cluster lost after its end was recorded, say) keeps the cost and tokens counted for it.
    """
    cursor = conn.execute(
        "UPDATE attempts SET exit_code = ?, outcome = ?, ended_at = ?, reason = ?,"
        " session_id = COALESCE(?, session_id), cost_usd = COALESCE(?, cost_usd),"
        " tokens_in = COALESCE(?, tokens_in), tokens_out = COALESCE(?, tokens_out),"
        " cache_read_tokens = COALESCE(?, cache_read_tokens) WHERE id = ?",
        (
            exit_code,
            outcome,
            ended_at,
            printable(redact(usage.reason)),
            usage.session_id,
            usage.cost_usd,
            usage.tokens_in,
            usage.tokens_out,
            usage.cache_read_tokens,
            attempt_id,
        ),
    )
    require_one(cursor, f"attempt {attempt_id}")


def add_usage(conn: sqlite3.Connection, attempt_id: int, usage: AttemptUsage) -> None:
    """Add what attempt *attempt_id* used to its task's totals; what none reported stays NULL."""
    if usage.cost_usd is None and usage.tokens_in is None:
        return
    row = conn.execute(
        "SELECT run_id, task_id, t.cost_usd, t.tokens_in, t.tokens_out, t.cache_read_tokens"
        " FROM attempts a JOIN tasks t USING (run_id, task_id) WHERE a.id = ?",
        (attempt_id,),
    ).fetchone()
    if row is None:
        return
    cost = None
    if row["cost_usd"] is not None or usage.cost_usd is not None:
        cost = (row["cost_usd"] or 0.0) + (usage.cost_usd or 0.0)
    totals = {
        "cost_usd": cost,
        "tokens_in": _total(row["tokens_in"], usage.tokens_in),
        "tokens_out": _total(row["tokens_out"], usage.tokens_out),
        "cache_read_tokens": _total(row["cache_read_tokens"], usage.cache_read_tokens),
    }
    update_task(conn, row["run_id"], row["task_id"], totals)


_MAX_STORED = 2**63 - 1  # SQLite's integers


def _total(before: int | None, used: int | None) -> int | None:
    if before is None and used is None:
        return None  # never reported: `-`, not 0
    return min((before or 0) + (used or 0), _MAX_STORED)


def check_fields(fields: Mapping[str, object]) -> None:
    """ValueError for field names no task update may set."""
    unknown = sorted(set(fields) - UPDATABLE)
    if unknown:
        raise ValueError(f"cannot update task field(s): {', '.join(unknown)}")


def update_task(
    conn: sqlite3.Connection, run_id: str, task_id: str, fields: Mapping[str, object]
) -> None:
    """Set *fields* of one task; KeyError when there is no such task."""
    values = [column_value(name, value) for name, value in fields.items()]
    assignments = ", ".join(f"{name} = ?" for name in fields)
    cursor = conn.execute(
        f"UPDATE tasks SET {assignments} WHERE run_id = ? AND task_id = ?",  # noqa: S608
        (*values, run_id, task_id),
    )
    require_one(cursor, f"task {task_id} of run {run_id}")


def event_payload(data: Mapping[str, object]) -> str:
    """*data* as an event stores it: JSON, its secrets redacted."""
    return json.dumps(redact_data(dict(data)), sort_keys=True)


def insert_event(
    conn: sqlite3.Connection,
    run_id: str,
    kind: str,
    task_id: str | None,
    payload: str,
    ts: float | None,
) -> int:
    """Insert an event with its *payload* (:func:`event_payload`); its id."""
    cursor = conn.execute(
        "INSERT INTO events (run_id, task_id, ts, kind, data) VALUES (?, ?, ?, ?, ?)",
        (run_id, task_id, time.time() if ts is None else ts, kind, payload),
    )
    return lastrowid(cursor)


def require_one(cursor: sqlite3.Cursor, what: str) -> None:
    """KeyError naming *what* when the statement touched no row (or several)."""
    if cursor.rowcount != 1:
        raise KeyError(f"no {what} in the state store")


def lastrowid(cursor: sqlite3.Cursor) -> int:
    """The id of the row the INSERT just made."""
    if cursor.lastrowid is None:  # pragma: no cover - INSERT always sets it
        raise RuntimeError("sqlite did not report the inserted row id")
    return cursor.lastrowid


def column_value(name: str, value: object) -> object:
    """*value* as column *name* stores it."""
    if name == "reason" and isinstance(value, str):
        # Agent output and error text: no secret reaches the file, no escape a terminal.
        return printable(redact(value))
    if name == "instruction" and isinstance(value, str):
        return redact(value)
    if name == "state":
        return TaskState(str(value)).value
    if name in {"stop_requested", "retry_fresh"}:
        return int(bool(value))
    return value
