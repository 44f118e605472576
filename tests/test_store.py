from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import as_owner_only, git, script_interpreter
from tests.test_crash import _kill_group, _manager
from tests.test_run import argv_toml, manifest, pid_alive, swarm, written
from tests.test_runs import AGENT as RUNS_AGENT
from tests.test_runs import finished_run
from worktree_swarm.core.errors import SwarmError
from worktree_swarm.core.models import ProcessIdentity, RunStatus, TaskState
from worktree_swarm.core.run_settings import CopyMode, RunSettings
from worktree_swarm.core.task import Task
from worktree_swarm.infra import store_file
from worktree_swarm.infra.faults import DiskFullError, is_full
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import (
    AttemptRow,
    AttemptUsage,
    EventRow,
    RunRow,
    task_from_json,
    task_to_json,
)
from worktree_swarm.infra.store_schema import MIGRATIONS, SCHEMA_VERSION

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

MANAGER = ProcessIdentity(pid=4242, create_time=1700000000.25, pgid=4242)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "common" / "swarm" / "state.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    with Store(db_path) as s:
        yield s


def new_run(store: Store, run_id: str = "r1", *, created_at: float = 100.0) -> None:
    store.create_run(
        run_id=run_id,
        base_commit="abc123",
        repo_root="/repo",
        jobs=4,
        manager=MANAGER,
        spec_json='{"jobs": 4}',
        created_at=created_at,
    )


def with_tasks(store: Store, *ids: str, run_id: str = "r1") -> None:
    store.add_tasks(
        run_id,
        [(Task(id=i, prompt=f"do {i}"), f"swarm/{i}", f"/wt/{i}") for i in ids],
    )


# --- schema ------------------------------------------------------------------------------


def test_creates_parent_dir_wal_and_user_version(db_path: Path, store: Store) -> None:
    assert db_path.is_file()
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 13
    finally:
        conn.close()


def test_a_store_switched_out_of_wal_by_hand_goes_back_once_no_other_connection_holds_it(
    db_path: Path, store: Store
) -> None:
    # `sqlite3 state.db 'PRAGMA journal_mode=DELETE'` stayed so: every read (the screen of
    # `swarm watch`) then waited behind a manager's writes, and the writes behind the reads.
    new_run(store)
    store.close()

    def mode() -> str:
        with contextlib.closing(sqlite3.connect(db_path)) as conn:
            return str(conn.execute("PRAGMA journal_mode").fetchone()[0])

    by_hand = sqlite3.connect(db_path, isolation_level=None)
    try:
        assert by_hand.execute("PRAGMA journal_mode = DELETE").fetchone()[0] == "delete"
        by_hand.execute("BEGIN")  # a reader at work: the switch needs it gone
        assert by_hand.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
        with Store(db_path) as opened:
            assert opened.latest_run_id() == "r1"  # opened and read all the same
        assert mode() == "delete"
        by_hand.execute("COMMIT")
        with Store(db_path) as opened:
            new_run(opened, "r2", created_at=200.0)
        assert mode() == "wal"
        assert by_hand.execute("SELECT count(*) FROM runs").fetchone()[0] == 2  # it reads on
    finally:
        by_hand.close()


def test_reopening_keeps_data(db_path: Path, store: Store) -> None:
    new_run(store)
    store.close()
    with Store(db_path) as again:
        assert again.latest_run_id() == "r1"


def test_newer_schema_is_refused(db_path: Path, store: Store) -> None:
    store.close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    newer = rf"schema version {SCHEMA_VERSION + 1}, newer .*upgrade worktree-swarm"
    with pytest.raises(SwarmError, match=newer):
        Store(db_path)


# Every command that reads or writes the store: those that would stop, adopt or clean what
# the run left included.
_ON_A_NEWER_STORE = [
    ("status",), ("runs",), ("report",), ("diff",), ("logs", "a"), ("resume",), ("stop",),
    ("stop", "a"), ("retry", "a"), ("clean",), ("clean", "--yes"), ("doctor", "--yes"),
    ("merge",), ("note", "n"), ("run", "--force", "--agent", "scripted", "-t", "b=write b: b"),
]  # fmt: skip


def _state_of(repo: Path) -> tuple[dict[str, bytes], str, str, list[str]]:
    """Every file of swarm's state by its bytes; the worktrees, refs and task directories."""
    state = repo / ".git" / "swarm"
    files = {str(p.relative_to(state)): p.read_bytes() for p in state.rglob("*") if p.is_file()}
    worktrees = git(repo, "worktree", "list", "--porcelain")
    refs = git(repo, "for-each-ref")
    return files, worktrees, refs, sorted(p.name for p in (repo.parent / "repo.swarm").iterdir())


@pytest.mark.parametrize("writable", [True, False], ids=["writable", "read-only state"])
def test_an_older_swarm_refuses_a_newer_database_in_one_line_and_changes_nothing(
    repo: Path, tmp_path: Path, write_agent: Callable[[str], list[str]], writable: bool
) -> None:
    # A run of the newer swarm whose manager died, its agent still at work: nothing of it is
    # stopped, adopted, cleaned or taken over by the older swarm. With the state directory
    # read-only (a read-only mount), the refusal said to free some space.
    pid_file = tmp_path / "agent.pid"
    agent = write_agent(
        "import os, pathlib, time\n"
        "pathlib.Path('work.txt').write_text('work')\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n"
        "time.sleep(600)\n"
    )
    text = f'[defaults]\nagent = {argv_toml(agent)}\n[[task]]\nid = "a"\nprompt = "x"\n'
    manager = _manager(repo, "run", manifest(repo, text))
    try:
        agent_pid = int(written(pid_file, timeout=120, what="the agent"))
    finally:
        _kill_group(manager)
    db = repo / ".git" / "swarm" / "state.db"
    newer = SCHEMA_VERSION + 1
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute(f"PRAGMA user_version = {newer}")
    before = _state_of(repo)
    prefix = [] if writable else as_owner_only()
    refusal = (
        f"swarm: {db} has schema version {newer}, newer than this worktree-swarm understands"
        f" ({SCHEMA_VERSION}); upgrade worktree-swarm\n"
    )
    try:
        if not writable:
            db.parent.chmod(0o555)
        for args in _ON_A_NEWER_STORE:
            out = subprocess.run(
                [*prefix, sys.executable, "-m", "worktree_swarm.cli", *args], cwd=repo,
                capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
            )  # fmt: skip
            assert (out.returncode, out.stdout, out.stderr) == (1, "", refusal), args
            assert _state_of(repo) == before, args
            assert pid_alive(agent_pid), args
    finally:
        db.parent.chmod(0o755)
        with contextlib.suppress(ProcessLookupError):
            os.kill(agent_pid, signal.SIGKILL)


def test_an_older_database_in_a_read_only_state_directory_says_what_would_let_it_be_read(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # An older database is read once it is upgraded, which writes it: where the state
    # directory is read-only (a read-only mount), the refusal said to free some space.
    finished_run(repo, write_agent)
    db = repo / ".git" / "swarm" / "state.db"
    older = SCHEMA_VERSION - 1
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute(f"PRAGMA user_version = {older}")
    prefix = as_owner_only()
    try:
        db.parent.chmod(0o555)
        out = subprocess.run(
            [*prefix, sys.executable, "-m", "worktree_swarm.cli", "status"], cwd=repo,
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
    finally:
        db.parent.chmod(0o755)
    assert out.returncode != 0
    assert out.stderr.count("\n") == 1, out.stderr
    assert f"schema version {older}, not {SCHEMA_VERSION}" in out.stderr
    assert "(make it writable)" in out.stderr, out.stderr


def test_garbage_file_is_refused_clearly(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(SwarmError, match=r"not a usable worktree-swarm state database"):
        Store(db_path)


@pytest.mark.long
def test_a_store_damaged_past_its_first_pages_is_one_clear_line(repo: Path) -> None:
    made = [f'[[task]]\nid = "t{n}"\nprompt = "write f{n}.txt: {"x" * 2000}"\n' for n in range(6)]
    (repo.parent / "tasks.toml").write_text('[defaults]\nagent = "scripted"\n' + "".join(made))
    assert swarm(repo, "run", str(repo.parent / "tasks.toml")).returncode == 0
    db = repo / ".git" / "swarm" / "state.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    with db.open("r+b") as damaged:  # a torn write or a bad sector: a page of junk
        damaged.seek(4096 * 2)
        damaged.write(b"\xde\xad" * 2048)

    for command in ("status", "report", "clean"):
        out = swarm(repo, command)
        assert (out.returncode, out.stdout) == (1, ""), out.stderr
        assert out.stderr == (
            f"swarm: {db} is not a usable worktree-swarm state database"
            " (database disk image is malformed); move it aside and run again\n"
        )


@pytest.mark.parametrize(
    ("sql", "what"),
    [
        ("UPDATE tasks SET state = 'exploded' WHERE task_id = 'ok'", "task"),
        ("UPDATE runs SET status = 'exploded'", "run"),
    ],
    ids=["task state", "run state"],
)
def test_a_state_this_swarm_does_not_know_is_one_clear_line(
    repo: Path, write_agent: Callable[[str], list[str]], sql: str, what: str
) -> None:
    # Written by a newer worktree-swarm (or by hand): every command that read it ended with an
    # internal error and its traceback file.
    run_id, _ = finished_run(repo, write_agent)
    db = repo / ".git" / "swarm" / "state.db"
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(sql)
    # A retry reads its run's tasks, never the run's row: it reopens the run, whatever it was.
    for command in ("status", "runs", "report", "clean", *(["retry"] if what == "task" else [])):
        out = swarm(repo, command)
        assert (out.returncode, out.stdout, out.stderr.count("\n")) == (1, "", 1), out.stderr
        assert out.stderr.startswith(f"swarm: the state database {db} holds "), out.stderr
        assert out.stderr.endswith(
            f"run {run_id} in state 'exploded', which this worktree-swarm does not know (did a"
            " newer one write it?); upgrade worktree-swarm\n"
        )
        if command != "runs":  # which task, where it has read the task's row
            named = f"task ok of run {run_id}" if what == "task" else f"holds run {run_id}"
            assert named in out.stderr


# --- runs --------------------------------------------------------------------------------


def test_run_round_trip(store: Store) -> None:
    new_run(store)
    assert store.get_run("r1") == RunRow(
        run_id="r1",
        base_commit="abc123",
        repo_root="/repo",
        jobs=4,
        created_at=100.0,
        ended_at=None,
        status="running",
        manager_pid=4242,
        manager_create_time=1700000000.25,
        spec_json='{"jobs": 4}',
    )
    assert store.get_run("nope") is None


def test_set_manager_and_finish(store: Store) -> None:
    new_run(store)
    store.set_manager("r1", None)
    run = store.get_run("r1")
    assert run is not None
    assert (run.manager_pid, run.manager_create_time) == (None, None)
    store.set_manager("r1", ProcessIdentity(pid=7, create_time=3.5, pgid=7))
    store.finish_run("r1", status=RunStatus.STOPPED)
    run = store.get_run("r1")
    assert run is not None
    assert (run.manager_pid, run.manager_create_time, run.status) == (7, 3.5, RunStatus.STOPPED)
    assert run.ended_at is not None


def test_missing_run_updates_raise(store: Store) -> None:
    with pytest.raises(KeyError):
        store.finish_run("ghost", status=RunStatus.FINISHED)
    with pytest.raises(KeyError):
        store.set_manager("ghost", None)


def test_latest_run_and_runs_order(store: Store) -> None:
    assert store.latest_run_id() is None
    assert store.runs() == []
    new_run(store, "old", created_at=1.0)
    new_run(store, "new", created_at=2.0)
    new_run(store, "same-time", created_at=2.0)
    assert store.latest_run_id() == "same-time"
    assert [r.run_id for r in store.runs()] == ["old", "new", "same-time"]


def test_duplicate_run_is_rejected(store: Store) -> None:
    new_run(store)
    with pytest.raises(sqlite3.IntegrityError):
        new_run(store)
    assert len(store.runs()) == 1


# --- tasks -------------------------------------------------------------------------------


def test_add_tasks_and_read_back(store: Store) -> None:
    new_run(store)
    t = Task(id="fix-login", prompt="Fix it", files=("src/auth/**",), priority=2)
    store.add_tasks(
        "r1",
        [(t, "swarm/fix-login", "/wt/fix-login"), (Task(id="b", prompt="x"), "swarm/b", "/wt/b")],
    )
    rows = store.tasks("r1")
    assert [r.task_id for r in rows] == ["fix-login", "b"]
    row = rows[0]
    assert row.position == 0
    assert row.state is TaskState.PENDING
    assert (row.branch, row.worktree, row.reason, row.attempts) == (
        "swarm/fix-login",
        "/wt/fix-login",
        "",
        0,
    )
    assert row.stop_requested is False
    assert task_from_json(row.spec_json) == t
    assert store.task("r1", "b") == rows[1]
    assert store.task("r1", "zzz") is None
    assert store.tasks("other") == []


def test_add_tasks_is_one_transaction(store: Store) -> None:
    new_run(store)
    dup = Task(id="a", prompt="p")
    with pytest.raises(sqlite3.IntegrityError):
        store.add_tasks("r1", [(dup, "swarm/a", "/a"), (dup, "swarm/a", "/a")])
    assert store.tasks("r1") == []
    with_tasks(store, "a")  # the store is usable after the rollback
    assert len(store.tasks("r1")) == 1


def test_update_task_every_allowed_field(store: Store) -> None:
    new_run(store)
    with_tasks(store, "a")
    store.update_task(
        "r1",
        "a",
        state=TaskState.DONE,
        reason="ok",
        base_commit="def456",
        attempts=2,
        started_at=10.0,
        ended_at=20.5,
        stop_requested=True,
        diff_files=3,
        diff_insertions=40,
        diff_deletions=5,
        cost_usd=0.125,
        tokens_in=1000,
        tokens_out=200,
    )
    row = store.task("r1", "a")
    assert row is not None
    assert row.state is TaskState.DONE
    assert (row.reason, row.base_commit, row.attempts) == ("ok", "def456", 2)
    assert (row.started_at, row.ended_at, row.stop_requested) == (10.0, 20.5, True)
    assert (row.diff_files, row.diff_insertions, row.diff_deletions) == (3, 40, 5)
    assert (row.cost_usd, row.tokens_in, row.tokens_out) == (0.125, 1000, 200)


def test_stop_requests_name_only_the_requested_tasks_in_manifest_order(store: Store) -> None:
    new_run(store)
    with_tasks(store, "a", "b", "c")
    assert store.stop_requests("r1") == []
    store.update_task("r1", "c", stop_requested=True)
    store.update_task("r1", "a", stop_requested=True)
    assert store.stop_requests("r1") == ["a", "c"]
    store.update_task("r1", "a", stop_requested=False)  # `swarm retry` clears it
    assert store.stop_requests("r1") == ["c"]


def test_update_task_accepts_state_value_and_noop(store: Store) -> None:
    new_run(store)
    with_tasks(store, "a")
    store.update_task("r1", "a", state="failed")
    store.update_task("r1", "a")
    row = store.task("r1", "a")
    assert row is not None
    assert row.state is TaskState.FAILED


@pytest.mark.parametrize("field", ["worktree", "spec_json", "branch", "position", "nonsense"])
def test_update_task_whitelist(store: Store, field: str) -> None:
    new_run(store)
    with_tasks(store, "a")
    before = store.task("r1", "a")
    with pytest.raises(ValueError, match=field):
        store.update_task("r1", "a", reason="changed", **{field: "x"})
    assert store.task("r1", "a") == before


def test_update_task_rejects_unknown_state(store: Store) -> None:
    new_run(store)
    with_tasks(store, "a")
    with pytest.raises(ValueError, match="exploded"):
        store.update_task("r1", "a", state="exploded")


def test_update_missing_task_raises(store: Store) -> None:
    new_run(store)
    with pytest.raises(KeyError):
        store.update_task("r1", "ghost", reason="x")


# --- attempts and events -----------------------------------------------------------------


def test_attempt_round_trip(store: Store) -> None:
    new_run(store)
    with_tasks(store, "a", "b")
    ident = ProcessIdentity(pid=100, create_time=5.5, pgid=99)
    first = store.record_attempt(
        "r1", "a", number=1, identity=ident, log_path="/l/a1", started_at=1.0
    )
    second = store.record_attempt(
        "r1", "b", number=1, identity=ident, log_path="/l/b1", started_at=2.0
    )
    store.end_attempt(first, exit_code=0, outcome="done", ended_at=3.0)
    assert store.attempts("r1", "a") == [
        AttemptRow(
            id=first,
            run_id="r1",
            task_id="a",
            number=1,
            pid=100,
            create_time=5.5,
            pgid=99,
            started_at=1.0,
            ended_at=3.0,
            exit_code=0,
            outcome="done",
            log_path="/l/a1",
        )
    ]
    assert [a.id for a in store.attempts("r1")] == [first, second]
    open_attempt = store.attempts("r1", "b")[0]
    assert (open_attempt.ended_at, open_attempt.exit_code, open_attempt.outcome) == (
        None,
        None,
        None,
    )
    store.end_attempt(second, exit_code=None, outcome="stopped")
    assert store.attempts("r1", "b")[0].exit_code is None
    with pytest.raises(KeyError):
        store.end_attempt(999, exit_code=0, outcome="done")


def test_events_round_trip_and_after(store: Store) -> None:
    new_run(store)
    e1 = store.add_event("r1", "run_started", ts=1.0)
    e2 = store.add_event("r1", "state", task_id="a", data={"state": "running", "n": [1, 2]}, ts=2.0)
    assert store.events("r1") == [
        EventRow(id=e1, run_id="r1", task_id=None, ts=1.0, kind="run_started", data={}),
        EventRow(
            id=e2,
            run_id="r1",
            task_id="a",
            ts=2.0,
            kind="state",
            data={"state": "running", "n": [1, 2]},
        ),
    ]
    assert [e.id for e in store.events("r1", after=e1)] == [e2]
    assert store.events("r1", after=e2) == []
    e3 = store.add_event("r1", "run_started", ts=3.0)
    assert [e.id for e in store.events("r1", kind="run_started")] == [e1, e3]
    assert [e.id for e in store.events("r1", kind="run_started", after=e1)] == [e3]
    assert store.events("r1", kind="state") == store.events("r1")[1:2]
    assert store.events("r1", kind="cleaned") == []


def test_a_state_and_its_event_are_one_transaction_all_or_nothing(store: Store) -> None:
    new_run(store)
    with_tasks(store, "a")
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    data = store.record_state(
        "r1", "a", TaskState.FAILED, replaces=TaskState.DONE, reason="x", ended_at=5.0
    )
    assert [s for s in statements if s.startswith(("BEGIN", "COMMIT"))] == [
        "BEGIN IMMEDIATE",
        "COMMIT",
    ]
    assert data == {"state": "failed", "reason": "x", "replaces": "done"}
    row = store.task("r1", "a")
    assert row is not None
    assert (row.state, row.reason, row.ended_at) == (TaskState.FAILED, "x", 5.0)
    assert [(e.kind, e.task_id, e.data) for e in store.events("r1")] == [("state", "a", data)]
    # The event refused: the state is not on record either.
    store._conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    with pytest.raises(sqlite3.IntegrityError):
        store.record_state("r1", "a", TaskState.DONE, reason="")
    assert store.task("r1", "a") == row
    store._conn.execute("DROP TRIGGER refuse")
    # No task: no event either.
    with pytest.raises(KeyError):
        store.record_state("r1", "zzz", TaskState.DONE)
    assert len(store.events("r1")) == 1


# Runs swarm with every SQLite statement it runs written to a file, by connection, one JSON
# array per line; with $SQL_KILL_AT, SIGKILLed as it begins the first statement starting so.
_TRACED_SWARM = """
import itertools, json, os, runpy, signal, sqlite3, sys
log = open(os.environ["SQL_LOG"], "a", buffering=1)
kill_at = os.environ.get("SQL_KILL_AT")
connect, numbers = sqlite3.connect, itertools.count()
def traced(*args, **kwargs):
    conn, number = connect(*args, **kwargs), next(numbers)
    def trace(sql):
        log.write(json.dumps([number, sql]) + "\\n")
        if kill_at and sql.startswith(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)
    conn.set_trace_callback(trace)
    return conn
sqlite3.connect = traced
sys.argv = ["swarm", *sys.argv[1:]]
runpy.run_module("worktree_swarm.cli", run_name="__main__")
"""


def _traced_swarm(
    repo: Path, log: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`swarm *args*` in *repo* (*env* added), every SQLite statement of it written to *log*."""
    return subprocess.run(
        [sys.executable, "-c", _TRACED_SWARM, *args],
        cwd=repo,
        env={**os.environ, **(env or {}), "SQL_LOG": str(log)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def launch_transactions(ended: list[list[str]]) -> tuple[list[str], list[str]]:
    """An attempt's launch in a traced run's committed transactions (:func:`_committed`).

    Two: before its agent started (the task running, its intent, its state event), and after
    (the attempt, the task's count with its intent cleared, the `agent_started` event).
    """
    before = ended[: ended.index(["the agent started"])]
    intent = [
        t for t in before if any(s.startswith("UPDATE tasks SET state = 'running'") for s in t)
    ]
    assert len(intent) == 1, before
    assert [t for t in ended if any("launching = 1" in s for s in t)] == intent
    assert len(intent[0]) == 2, intent  # the task's row and its state event
    assert ", 'state', '{" in intent[0][1]
    launch = [t for t in ended if any(s.startswith("INSERT INTO attempts") for s in t)]
    assert len(launch) == 1, ended
    assert [t for t in ended if any("launching = NULL" in s for s in t)] == launch
    assert len(launch[0]) == 3, launch
    assert "attempts = 1" in launch[0][1]
    assert ", 'agent_started', '{" in launch[0][2]
    return intent[0], launch[0]


def _committed(log: Path) -> list[list[str]]:
    """The transactions *log* holds, in the order they were committed; their statements.

    A line another process wrote there (connection number -1) is a transaction of its own.
    """
    transactions: dict[int, list[str]] = {}
    ended: list[list[str]] = []
    for line in log.read_text().splitlines():
        number, sql = json.loads(line)
        if number < 0:
            ended.append([sql])
        elif sql.startswith("BEGIN"):
            transactions[number] = []
        elif sql.startswith("COMMIT"):
            ended.append(transactions.pop(number))
        elif number in transactions:
            transactions[number].append(sql)
    return ended


def test_a_run_records_each_state_change_with_its_event_in_one_transaction(
    repo: Path, write_agent: Callable[[str], list[str]], tmp_path: Path
) -> None:
    # Each state change was two commits (the task's row, then its event): a manager killed
    # in between left a state with no event, and big runs paid a commit per change more.
    agent = " ".join(write_agent(RUNS_AGENT))
    log = tmp_path / "sql.jsonl"
    out = _traced_swarm(repo, log, "run", "--agent", agent, "-t", "ok=do", "-t", "bad=x")
    assert out.returncode == 1, out.stderr
    ended = _committed(log)
    changes = [t for t in ended if any(s.startswith("UPDATE tasks SET state") for s in t)]
    events = [t for t in ended if any(", 'state', '{" in s for s in t)]
    # running and an end for each task at least, each with its event in the same commit
    assert len(changes) >= 4, ended
    assert changes == events
    assert all(len(t) == 2 for t in changes), changes


def test_an_attempt_is_recorded_in_one_transaction_before_its_agent_starts_and_one_after(
    repo: Path, write_agent: Callable[[str], list[str]], tmp_path: Path
) -> None:
    # Before its agent: the task running and the launch's intent (a resumed manager adopts
    # an agent started but not recorded). After: the attempt, the task's count, the event.
    # Each was two or three commits.
    log = tmp_path / "sql.jsonl"
    started = json.dumps([-1, "the agent started"])
    source = f"""
import pathlib
with open({str(log)!r}, "a") as log:
    log.write({started!r} + "\\n")
pathlib.Path("out.txt").write_text("work\\n")
"""
    agent = " ".join(write_agent(source))
    out = _traced_swarm(repo, log, "run", "--agent", agent, "-t", "ok=do")
    assert out.returncode == 0, out.stderr
    intent, _ = launch_transactions(_committed(log))
    assert "launching_agent = " in intent[0]


# Named claude, read as Claude Code: it says what it cost and used, as its last line.
PAYING_AGENT = """#!PYTHON
import json, pathlib
pathlib.Path("out.txt").write_text("work\\n")
print(json.dumps({"type": "result", "subtype": "success", "is_error": False, "result": "ok",
                  "session_id": "s1", "total_cost_usd": 1.25,
                  "usage": {"input_tokens": 300, "output_tokens": 40}}), flush=True)
"""


def paying_agent(where: Path) -> list[str]:
    """The argv of :data:`PAYING_AGENT`, written to *where*/claude."""
    where.mkdir(parents=True, exist_ok=True)
    script = where / "claude"
    script.write_text(PAYING_AGENT.replace("#!PYTHON", script_interpreter(), 1))
    script.chmod(0o755)
    return [str(script), "-p", "{prompt}"]


def test_an_attempts_end_is_recorded_with_its_tasks_usage_in_one_transaction(
    repo: Path, tmp_path: Path
) -> None:
    # Its end, then the task's totals: a manager killed in between lost the attempt's cost
    # from its task (a resumed one takes an ended attempt as counted).
    log = tmp_path / "sql.jsonl"
    argv = paying_agent(tmp_path / "bin")
    text = f'[[task]]\nid = "a"\nprompt = "do"\nagent = {argv_toml(argv)}\n'
    key = {"ANTHROPIC_API_KEY": "sk-ant-api03-not-used"}
    out = _traced_swarm(repo, log, "run", manifest(repo, text), env=key)
    assert out.returncode == 0, out.stderr
    ended = _committed(log)
    end = [t for t in ended if any(s.startswith("UPDATE attempts SET exit_code") for s in t)]
    assert len(end) == 1, ended
    assert [t for t in ended if any("cost_usd = " in s for s in t)] == end
    assert end[0][-1].startswith("UPDATE tasks SET cost_usd = 1.25"), end
    with contextlib.closing(sqlite3.connect(repo / ".git" / "swarm" / "state.db")) as db:
        row = db.execute("SELECT state, cost_usd, tokens_in, tokens_out FROM tasks").fetchone()
        used = db.execute("SELECT cost_usd, tokens_in, tokens_out FROM attempts").fetchall()
    assert row == ("done", 1.25, 300, 40)
    assert used == [(1.25, 300, 40)]


def test_an_attempt_ended_again_with_a_reason_only_keeps_what_it_used(store: Store) -> None:
    # Its Ray cluster lost after its end was recorded, the attempt was ended again with the
    # loss as its reason only: its cost and tokens were wiped, its task's totals kept them,
    # and what the run had spent (`max_cost_usd`, counted from the attempts) lost them.
    new_run(store)
    with_tasks(store, "a")
    ident = ProcessIdentity(pid=1, create_time=1.0, pgid=1)
    aid = store.record_attempt("r1", "a", number=1, identity=ident, log_path="/l/1")
    used = AttemptUsage(
        reason="ok", session_id="s1", cost_usd=0.5, tokens_in=7, tokens_out=3, cache_read_tokens=2
    )
    store.record_end(aid, exit_code=0, outcome="succeeded", usage=used)
    lost = AttemptUsage(reason="the Ray cluster was lost")
    store.end_attempt(aid, exit_code=None, outcome="failed", usage=lost)
    (attempt,) = store.attempts("r1", "a")
    assert (attempt.outcome, attempt.reason) == ("failed", "the Ray cluster was lost")
    assert (attempt.session_id, attempt.cost_usd, attempt.cache_read_tokens) == ("s1", 0.5, 2)
    assert (attempt.tokens_in, attempt.tokens_out) == (7, 3)
    row = store.task("r1", "a")
    assert row is not None
    assert (row.cost_usd, row.tokens_in, row.tokens_out) == (0.5, 7, 3)  # counted once


def test_an_attempts_end_and_its_tasks_totals_are_all_or_nothing(store: Store) -> None:
    new_run(store)
    with_tasks(store, "a")
    ident = ProcessIdentity(pid=1, create_time=1.0, pgid=1)
    first = store.record_attempt("r1", "a", number=1, identity=ident, log_path="/l/1")
    store.record_end(
        first, exit_code=0, outcome="succeeded", usage=AttemptUsage(cost_usd=0.5, tokens_in=7)
    )
    row = store.task("r1", "a")
    assert row is not None
    assert (row.cost_usd, row.tokens_in, row.tokens_out) == (0.5, 7, None)
    second = store.record_attempt("r1", "a", number=2, identity=ident, log_path="/l/2")
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    # The task's totals refused: the attempt's end is not on record either.
    store._conn.execute(
        "CREATE TRIGGER refuse BEFORE UPDATE OF cost_usd ON tasks"
        " BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    usage = AttemptUsage(reason="r", cost_usd=0.25, tokens_out=3)
    with pytest.raises(sqlite3.IntegrityError):
        store.record_end(second, exit_code=1, outcome="failed", usage=usage)
    assert [a.ended_at for a in store.attempts("r1", "a")][1] is None
    store._conn.execute("DROP TRIGGER refuse")
    statements.clear()
    store.record_end(second, exit_code=1, outcome="failed", usage=usage)
    assert [s for s in statements if s.startswith(("BEGIN", "COMMIT"))] == [
        "BEGIN IMMEDIATE",
        "COMMIT",
    ]
    row = store.task("r1", "a")
    assert row is not None
    assert (row.cost_usd, row.tokens_in, row.tokens_out) == (0.75, 7, 3)
    assert [(a.outcome, a.cost_usd) for a in store.attempts("r1", "a")] == [
        ("succeeded", 0.5),
        ("failed", 0.25),
    ]


def test_a_tasks_end_is_recorded_with_its_worktrees_disk_use_in_one_transaction(
    repo: Path, write_agent: Callable[[str], list[str]], tmp_path: Path
) -> None:
    # Measured by its worker, the disk use was a commit of its own before the end's.
    agent = " ".join(write_agent(RUNS_AGENT))
    log = tmp_path / "sql.jsonl"
    out = _traced_swarm(repo, log, "run", "--agent", agent, "-t", "ok=do", "-t", "bad=x")
    assert out.returncode == 1, out.stderr
    ended = _committed(log)
    disk = [t for t in ended if any("disk_actual = " in s for s in t)]
    final = ("UPDATE tasks SET state = 'done'", "UPDATE tasks SET state = 'failed'")
    finals = [t for t in ended if any(s.startswith(final) for s in t)]
    assert len(finals) == 2, ended
    assert disk == finals
    assert all(len(t) == 2 and "ended_at = " in t[0] for t in finals), finals
    with contextlib.closing(sqlite3.connect(repo / ".git" / "swarm" / "state.db")) as db:
        used = db.execute("SELECT disk_apparent, disk_actual FROM tasks").fetchall()
    assert all(apparent and actual for apparent, actual in used), used


# --- task json ---------------------------------------------------------------------------


def test_task_json_round_trip_exact() -> None:
    t = Task(
        id="full",
        prompt='multi\nline "quoted" ✓',
        title="Title",
        depends_on=("a", "b"),
        agent="claude",
        agent_argv=("claude", "-p", "{prompt}"),
        checks=(("pytest", "-q"), ("ruff", "check", ".")),
        files=("src/**",),
        timeout=2700.0,
        idle_timeout=None,
        retries=2,
        priority=-1,
        copy=(".env",),
        setup=(("uv", "sync"),),
        env=(("A", "1"), ("B", "two")),
    )
    back = task_from_json(task_to_json(t))
    assert back == t
    assert type(back.checks) is tuple
    assert all(type(c) is tuple for c in back.checks)
    assert type(back.env[0]) is tuple
    assert task_from_json(task_to_json(Task(id="min", prompt="p"))) == Task(id="min", prompt="p")


def test_task_json_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="bogus"):
        task_from_json(json.dumps({"id": "a", "prompt": "p", "bogus": 1}))
    with pytest.raises(ValueError, match="object"):
        task_from_json("[]")


# --- concurrency -------------------------------------------------------------------------

READER = """
import sys
from pathlib import Path
from worktree_swarm.infra.store import Store
with Store(Path(sys.argv[1])) as s:
    run = s.latest_run_id()
    print(run, [t.task_id for t in s.tasks(run)], len(s.events(run)))
"""


def test_other_process_reads_while_a_write_is_open(db_path: Path, store: Store) -> None:
    new_run(store)
    with_tasks(store, "a", "b")
    store.add_event("r1", "committed")
    writer = sqlite3.connect(db_path, isolation_level=None, timeout=0)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute(
            "INSERT INTO events (run_id, ts, kind, data) VALUES ('r1', 1.0, 'uncommitted', '{}')"
        )
        result = subprocess.run(
            [sys.executable, "-c", READER, str(db_path)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "r1 ['a', 'b'] 1"
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_fresh_store_opens_while_another_process_writes(db_path: Path, store: Store) -> None:
    # Opening an up-to-date db must not need the write lock (status during a run).
    new_run(store)
    writer = sqlite3.connect(db_path, isolation_level=None, timeout=0)
    try:
        writer.execute("BEGIN IMMEDIATE")
        with Store(db_path) as reader:
            assert reader.latest_run_id() == "r1"
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_writes_wait_for_a_concurrent_writer(db_path: Path, store: Store) -> None:
    new_run(store)
    other = Store(db_path)
    started = threading.Event()
    writer = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")

    def blocked_write() -> None:
        started.set()
        other.add_event("r1", "after-release")

    thread = threading.Thread(target=blocked_write)
    thread.start()
    started.wait()
    writer.execute("COMMIT")
    writer.close()
    thread.join()
    other.close()
    assert [e.kind for e in store.events("r1")] == ["after-release"]


def test_concurrent_writers_lose_nothing(db_path: Path, store: Store) -> None:
    new_run(store)
    with_tasks(store, *(f"t{i}" for i in range(8)))
    second = Store(db_path)  # a second connection, as another process would have
    per_thread = 50
    errors: list[BaseException] = []

    def work(n: int, target: Store) -> None:
        try:
            for k in range(per_thread):
                target.add_event("r1", "tick", task_id=f"t{n}", data={"k": k})
                target.update_task("r1", f"t{n}", attempts=k + 1)
                aid = target.record_attempt(
                    "r1", f"t{n}", number=k + 1, identity=MANAGER, log_path=f"/l/{n}/{k}"
                )
                target.end_attempt(aid, exit_code=0, outcome="done")
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(n, store if n % 2 else second)) for n in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    second.close()
    assert errors == []
    events = store.events("r1")
    assert len(events) == 8 * per_thread
    assert len({e.id for e in events}) == len(events)
    for n in range(8):
        ks = [e.data["k"] for e in events if e.task_id == f"t{n}"]
        assert ks == list(range(per_thread))
        row = store.task("r1", f"t{n}")
        assert row is not None
        assert row.attempts == per_thread
        attempts = store.attempts("r1", f"t{n}")
        assert [a.number for a in attempts] == list(range(1, per_thread + 1))
        assert all(a.outcome == "done" for a in attempts)


def test_version_1_database_is_migrated_keeping_its_rows(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO runs VALUES"
            " ('old', 'abc', '/r', 2, 1.0, NULL, 'running', NULL, NULL, '{}')"
        )
        conn.execute("PRAGMA user_version = 1")
        conn.commit()
    with Store(db_path) as store:
        run = store.get_run("old")
        assert run is not None
        assert run.base_commit == "abc"
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        columns = {row[1] for row in conn.execute("PRAGMA table_info(attempts)")}
    assert {"session_id", "cost_usd", "tokens_in", "tokens_out"} <= columns


# Holds the manager lock and the database open as a manager of an older worktree-swarm
# would, until its stdin closes.
OLDER_MANAGER = """
import sqlite3, sys
from pathlib import Path
from worktree_swarm.infra.lock import ManagerLock
with ManagerLock(Path(sys.argv[1])) as lock:
    lock.acquire(run_id="older")
    db = sqlite3.connect(Path(sys.argv[1]) / "state.db")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("SELECT count(*) FROM runs").fetchone()
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_an_older_database_is_not_updated_under_an_older_manager_still_running(
    repo: Path,
) -> None:
    # A `swarm status` of the new version brought the database up to date under the old
    # manager of the night's run: every task it still ran failed with an internal error.
    state = repo / ".git" / "swarm"
    state.mkdir()
    db_path = state / "state.db"
    older = SCHEMA_VERSION - 1
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        for statements in MIGRATIONS[:older]:
            for statement in statements:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {older}")
        conn.commit()
    manager = subprocess.Popen(
        [sys.executable, "-c", OLDER_MANAGER, str(state)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert manager.stdout is not None
        assert manager.stdout.readline() == "locked\n"
        out = swarm(repo, "status")
        assert out.returncode == 3, out.stdout + out.stderr
        assert out.stderr.startswith(f"swarm: {db_path} has schema version {older}, older than")
        assert f"the manager running now (pid {manager.pid}, run older) is an older" in out.stderr
        with contextlib.closing(sqlite3.connect(db_path)) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == older
    finally:
        manager.communicate(timeout=30)
    # That run over, the next command brings the database up to date.
    swarm(repo, "status")
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


# A manager making a repository's first store: the lock taken, the schema written in a
# transaction it commits when told.
MAKING_MANAGER = """
import sqlite3, sys
from pathlib import Path
from worktree_swarm.infra.lock import ManagerLock
from worktree_swarm.infra.store_schema import MIGRATIONS, SCHEMA_VERSION
with ManagerLock(Path(sys.argv[1])) as lock:
    lock.acquire(run_id="new")
    db = sqlite3.connect(Path(sys.argv[1]) / "state.db", isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("BEGIN IMMEDIATE")
    for statements in MIGRATIONS:
        for statement in statements:
            db.execute(statement)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
    print("making", flush=True)
    sys.stdin.readline()
    db.execute("COMMIT")
    print("made", flush=True)
    sys.stdin.read()
"""


def test_a_store_a_starting_manager_is_making_is_not_taken_for_an_older_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A command opening the store as the first run made it read version 0 (not made yet),
    # then, under the write lock, the made one: it refused, exit 3, calling the manager
    # running now "an older worktree-swarm".
    state = tmp_path / "swarm"
    state.mkdir()
    manager = subprocess.Popen(
        [sys.executable, "-c", MAKING_MANAGER, str(state)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert manager.stdin is not None
    assert manager.stdout is not None
    try:
        assert manager.stdout.readline() == "making\n"
        looked = threading.Event()
        read_version = Store._user_version

        def user_version(store: Store) -> int:
            version = read_version(store)
            looked.set()  # the first look: the store not made yet
            return version

        monkeypatch.setattr(Store, "_user_version", user_version)
        opened: list[object] = []
        opener = threading.Thread(target=lambda: opened.append(_open_or_error(state)))
        opener.start()
        assert looked.wait(timeout=60)
        manager.stdin.write("commit\n")
        manager.stdin.flush()
        assert manager.stdout.readline() == "made\n"
        opener.join(timeout=60)
        assert opened == ["opened"]
    finally:
        manager.communicate(timeout=30)


def _open_or_error(state: Path) -> str:
    try:
        Store(state / "state.db").close()
    except SwarmError as exc:
        return str(exc)
    return "opened"


def test_run_settings_round_trip_and_old_rows() -> None:
    settings = RunSettings(
        jobs=3,
        worktree_root=Path("/tmp/wt"),
        copy_mode=CopyMode.HARDLINK,
        sandbox_writable=("/tmp/cache",),
        max_disk=10,
    )
    assert RunSettings.from_json(settings.to_json()) == settings
    # Rows written by earlier versions: a missing root as "None", unknown keys, odd JSON.
    old = RunSettings.from_json('{"worktree_root": "None", "jobs": 2, "gone": 1}')
    assert old == RunSettings(jobs=2)
    assert RunSettings.from_json("not json") == RunSettings()
    assert RunSettings.from_json("[]") == RunSettings()


def test_merged_and_conflicted_states_become_merge_facts_of_done_tasks(db_path: Path) -> None:
    # Stores written before merge results had their own fields recorded them as task states.
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        for statements in MIGRATIONS[:3]:
            for statement in statements:
                conn.execute(statement)
        conn.execute(
            "INSERT INTO runs VALUES"
            " ('old', 'abc', '/r', 2, 1.0, 2.0, 'finished', NULL, NULL, '{}')"
        )
        for position, (task_id, state, reason) in enumerate(
            [
                ("a", "merged", "merged into swarm/integration-old at 0123456789ab"),
                ("b", "conflicted", "conflicts with swarm/integration-old in x.txt"),
                ("c", "failed", "exit 1"),
            ]
        ):
            conn.execute(
                "INSERT INTO tasks (run_id, task_id, position, state, reason, branch, worktree,"
                " spec_json) VALUES ('old', ?, ?, ?, ?, ?, '/w', '{}')",
                (task_id, position, state, reason, f"swarm/{task_id}"),
            )
        conn.execute("PRAGMA user_version = 3")
        conn.commit()
    with Store(db_path) as store:
        rows = {row.task_id: row for row in store.tasks("old")}
    assert {t: r.state.value for t, r in rows.items()} == {"a": "done", "b": "done", "c": "failed"}
    assert (rows["a"].merge_result, rows["a"].reason) == ("merged", "")
    assert rows["a"].merge_detail == "merged into swarm/integration-old at 0123456789ab"
    assert rows["b"].merge_result == "conflicted"
    assert (rows["c"].merge_result, rows["c"].reason) == (None, "exit 1")


def test_merge_and_pull_request_fields_are_updatable(store: Store) -> None:
    store.create_run(
        run_id="r", base_commit="abc", repo_root="/r", jobs=1, manager=None, spec_json="{}"
    )
    store.add_tasks("r", [(Task(id="t", prompt="p"), "swarm/t", "/w/t")])
    store.update_task(
        "r",
        "t",
        state="done",
        merge_result="conflicted",
        merge_target="swarm/integration-r",
        merge_detail="conflicts with swarm/integration-r in a.txt",
        pr_number=7,
        pr_url="https://github.example/o/n/pull/7",
        pr_state="open",
    )
    row = store.task("r", "t")
    assert row is not None
    assert row.state.value == "done"
    assert (row.merge_result, row.merge_target) == ("conflicted", "swarm/integration-r")
    assert (row.pr_number, row.pr_url, row.pr_state) == (
        7,
        "https://github.example/o/n/pull/7",
        "open",
    )


def test_version_3_attempts_gain_agent_and_retry_at(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        for statements in MIGRATIONS[:3]:
            for statement in statements:
                conn.execute(statement)
        conn.execute(
            "INSERT INTO runs VALUES"
            " ('old', 'abc', '/r', 2, 1.0, NULL, 'running', NULL, NULL, '{}')"
        )
        conn.execute("PRAGMA user_version = 3")
        conn.commit()
    with Store(db_path) as store:
        with_tasks(store, "a", run_id="old")
        ident = ProcessIdentity(pid=100, create_time=5.5, pgid=99)
        first = store.record_attempt("old", "a", number=1, identity=ident, log_path="/l/1")
        second = store.record_attempt(
            "old", "a", number=2, identity=ident, log_path="/l/2", agent="codex"
        )
        store.end_attempt(first, exit_code=1, outcome="rate_limited")
        store.set_retry_at("old", "a", 1, 1234.5)
        rows = store.attempts("old", "a")
    assert [(r.id, r.agent, r.retry_at) for r in rows] == [
        (first, "", 1234.5),  # recorded before agents were: the task's own agent
        (second, "codex", None),
    ]


def _fill(disk: Path) -> Path:
    """Fill *disk* to the last byte; returns the file that does (unlink it to free the disk)."""
    filler = disk / "filler.bin"
    # Unbuffered: a buffered file would raise ENOSPC again from close(), past the except.
    with filler.open("wb", buffering=0) as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"x" * 65536)
    return filler


def test_a_store_deleted_under_it_is_put_back_whole_or_not_at_all_on_a_full_disk(
    small_disk: Path,
) -> None:
    path = small_disk / "swarm" / "state.db"
    with Store(path) as store:
        new_run(store)
        with_tasks(store, "a", "b")
        shutil.rmtree(path.parent)  # `rm -rf .git/swarm` under the run
        filler = _fill(small_disk)
        with pytest.raises(sqlite3.OperationalError) as failed:
            store.put_back()
        assert is_full(failed.value)
        assert sorted(path.parent.iterdir()) == []  # no half-written store, no temporary one
        # A look at the state meanwhile (`swarm status`) fails making a store there ...
        with pytest.raises(DiskFullError):
            Store.to_read(path)
        assert [t.task_id for t in store.tasks("r1")] == ["a", "b"]  # ... the open one works
        assert sorted(path.parent.iterdir()) == []  # and leaves no empty store that hides it
        path.touch()  # as an older swarm's look left it: an empty file is no store either
        filler.unlink()
        assert store.put_back()  # ... and is written back once there is room
        store.update_task("r1", "a", state="done")
        assert not store.put_back()  # once
    with Store(path) as again:
        assert [(t.task_id, t.state.value) for t in again.tasks("r1")] == [
            ("a", "done"),
            ("b", "pending"),
        ]
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.db"]


def test_a_store_put_back_over_an_empty_one_another_command_made_keeps_its_runs(
    tmp_path: Path,
) -> None:
    # `rm -rf .git/swarm` under a run, then another command made a store of its own there
    # (its write-ahead log beside it) before it gave up: that log must not land on the copy.
    path = tmp_path / "swarm" / "state.db"
    with Store(path) as store:
        new_run(store)
        with_tasks(store, "a", "b")
        shutil.rmtree(path.parent)
        with Store(path) as other:  # open: its pages still in its write-ahead log
            assert other.latest_run_id() is None
            assert store.put_back()
        store.add_event("r1", "note", task_id="a", data={"n": 1})
        store.update_task("r1", "a", state="done")
    with Store(path) as again:
        assert [(t.task_id, t.state.value) for t in again.tasks("r1")] == [
            ("a", "done"),
            ("b", "pending"),
        ]


def test_a_managers_write_waits_out_a_lock_another_program_holds(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A `sqlite3` shell left in a transaction (a backup, a DB browser) held the write lock
    # past the busy timeout: the task being recorded failed, its finished work not committed.
    monkeypatch.setattr(store_file, "BUSY_SECONDS", 0.05)
    with Store(db_path) as store:
        store.create_run(
            run_id="r", base_commit="abc", repo_root="/r", jobs=1, manager=None, spec_json="{}"
        )
        holder = sqlite3.connect(db_path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        told: list[str] = []

        def on_full(exc: Exception | None) -> None:
            told.append("" if exc is None else str(exc))
            if exc is not None:
                holder.execute("COMMIT")  # the other program ends its transaction meanwhile

        store.on_full = on_full
        store.add_event("r", "note", data={"n": 1})
        holder.close()
        assert told == ["database is locked", ""]
        assert [e.kind for e in store.events("r")][-1] == "note"
        store.on_full = None  # a command, not a manager: one clear error
        again = sqlite3.connect(db_path, isolation_level=None)
        again.execute("BEGIN EXCLUSIVE")
        with pytest.raises(SwarmError, match="is locked by another program"):
            store.add_event("r", "note", data={"n": 2})
        with pytest.raises(SwarmError, match="is locked by another program"):
            store.set_retry_at("r", "t", 1, 0.0)  # a rate limit's wait: the same one line
        again.close()
