"""`swarm watch` against what a user meets in the morning: many tasks, a dead manager, a busy
or vanished store, hostile agent output, and keys pressed on tasks that ended meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from textual.widgets import DataTable, Log

from tests.conftest import hang_git_at
from tests.test_run import argv_toml, manifest, status_json, swarm, wait_for
from tests.test_watch import (
    SLOW_AGENT,
    manager_gone,
    open_app,
    refresh,
    release,
    run_async,
    settled,
    start_detached,
    until,
)
from worktree_swarm.git import repo as swarm_git
from worktree_swarm.infra import store as store_module
from worktree_swarm.infra import store_file
from worktree_swarm.report import status
from worktree_swarm.ui import watch as watch_module
from worktree_swarm.ui import watch_store
from worktree_swarm.ui.watch import WatchApp


def statements(app: WatchApp) -> list[str]:
    """Every statement the screen's store runs from now on."""
    seen: list[str] = []
    app.store._conn.set_trace_callback(seen.append)
    return seen


def test_a_run_of_500_tasks_costs_few_reads_a_refresh_and_keeps_the_selection(
    repo: Path, write_agent: Callable[[str], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = repo.parent / "gate"
    agent = [*write_agent(SLOW_AGENT), str(gate)]
    tasks = "".join(f'[[task]]\nid = "t{i:03d}"\nprompt = "p"\n' for i in range(500))
    path = manifest(repo, f"[defaults]\nagent = {argv_toml(agent)}\njobs = 2\n{tasks}")
    assert swarm(repo, "run", "--detach", path).returncode == 0
    wait_for(lambda: swarm(repo, "status").returncode == 0, what="the run to be recorded")
    app, store = open_app(repo)
    parsed: list[str] = []
    parse = status.task_from_json
    monkeypatch.setattr(status, "task_from_json", lambda text: parsed.append(text) or parse(text))

    async def drive() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, lambda: len(app.rows) == 500, "500 rows")
            await until(pilot, lambda: app.rows["t001"].state == "running", "two running")
            table = app.query_one("#tasks", DataTable)
            table.move_cursor(row=400)
            log = app.query_one("#log-view", Log)
            await until(pilot, lambda: app.selected == "t400" and table.scroll_y > 0
                        and log.lines == ["(no agent started yet)"],
                        "t400 selected, scrolled to, its log read")  # fmt: skip
            scrolled = table.scroll_y
            await settled(pilot, app)
            reads = statements(app)
            parsed.clear()
            before = app.rows["t000"]
            await refresh(pilot, app)
            assert app.rows["t000"] != before  # its elapsed time: a row redrawn
            # A fixed few reads of the store, whatever the number of tasks; each task's spec
            # parsed once at most (three times each pending one's, before).
            assert len(reads) <= 8, reads
            assert len(parsed) <= 500
            assert (app.selected, table.scroll_y) == ("t400", scrolled)

    try:
        run_async(drive)
    finally:
        store.close()
        assert swarm(repo, "stop").returncode == 0
        wait_for(lambda: manager_gone(repo), what="the manager to end")


def test_a_refresh_reads_the_events_recorded_since_the_last_not_every_gate_event_of_the_run(
    repo: Path, write_agent: Callable[[str], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each refresh read all of the run's gate events: thousands in a long run, every second.
    agent = write_agent("open('x.txt', 'w').write('x\\n')\n")
    assert swarm(repo, "run", "--agent", " ".join(agent), "-t", "aa=a").returncode == 0
    app, store = open_app(repo)
    gate = {"provider": "anthropic", "jobs": 4, "waiting_until": None, "why": ""}
    for limit in range(3000):  # a gate the manager narrowed and widened all night
        store.add_event(app.run_id, "gate", data={**gate, "limit": limit % 4 + 1})
    parsed: list[int] = []  # the ids of the events the screen reads
    parse = store_module.event_row
    monkeypatch.setattr(
        store_module, "event_row", lambda row: parsed.append(row["id"]) or parse(row)
    )

    async def drive() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, lambda: app.selected == "aa", "aa selected")
            await settled(pilot, app)
            reads = statements(app)
            parsed.clear()
            await refresh(pilot, app)
            assert len(parsed) == 0  # nothing recorded since the last refresh
            assert len(reads) <= 8, reads
            store.add_event(app.run_id, "state", data={"note": "another kind"})
            store.add_event(app.run_id, "gate", data={**gate, "provider": "openai", "limit": 2})
            parsed.clear()
            await refresh(pilot, app)
            assert len(parsed) == 2  # those two, not the 3,001 gate events
            await pilot.press("q")

    try:
        run_async(drive)
        # What it keeps is what reading them all at once gives: each provider's newest view.
        gates = status.GateReader()
        assert gates.views(store, app.run_id) == status.provider_gates(store, app.run_id)
        store.add_event(app.run_id, "gate", data={**gate, "limit": 7})
        views = gates.views(store, app.run_id)
        limits = {v.provider: v.limit for v in views}  # the run's own too ("other")
        assert (limits["anthropic"], limits["openai"]) == (7, 2)
        assert views == status.provider_gates(store, app.run_id)
    finally:
        store.close()
    assert app.crashed is None


def test_a_manager_killed_under_the_screen_is_said_and_so_is_its_agents_end(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    gate = start_detached(repo, write_agent, ["alpha"])
    app, store = open_app(repo)

    async def drive() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, lambda: app.rows["alpha"].alive, "alpha's agent at work")
            pid = app.rows["alpha"].pid
            run = store.get_run(app.run_id)
            assert run is not None
            assert run.manager_pid is not None
            psutil.Process(run.manager_pid).kill()
            await until(pilot, lambda: "manager not running" in app.sub_title, "the header")
            assert "swarm resume" in app.sub_title
            # Its agent ends with no manager to record it: the row says so, not only "running".
            gate.write_text("go")
            await until(pilot, lambda: not app.rows["alpha"].alive, "the agent's end seen")
            table = app.query_one("#tasks", DataTable)
            row = [str(cell) for cell in table.get_row("alpha")]
            assert row[2] == "running"  # as recorded, as `swarm status` says
            assert row[-1] == f"its agent (pid {pid}) has ended", row

    try:
        run_async(drive)
    finally:
        store.close()
        release(repo, gate)


def test_an_agent_ended_under_a_live_manager_at_work_is_not_said_to_be_left_unrecorded(
    repo: Path,
    tmp_path: Path,
    write_agent: Callable[[str], list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The checkpoint after the attempt held (its `git commit` waits for a file): the task
    # reads running, its agent has ended, and its manager is alive and at work.
    go, real = tmp_path / "go", shutil.which("git")
    assert real is not None
    wait = f'while [ ! -e {shlex.quote(str(go))} ]; do sleep 0.05; done; exec {real} "$@"'
    hung = hang_git_at(tmp_path, monkeypatch, "commit", then=wait)
    gate = start_detached(repo, write_agent, ["alpha"])
    app, store = open_app(repo)

    async def drive() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, lambda: app.rows["alpha"].alive, "alpha's agent at work")
            gate.write_text("go")
            await until(pilot, hung.exists, "the checkpoint")
            await until(pilot, lambda: not app.rows["alpha"].alive, "the agent's end seen")
            assert not manager_gone(repo)
            await refresh(pilot, app)
            row = [str(cell) for cell in app.query_one("#tasks", DataTable).get_row("alpha")]
            assert row[2] == "running", row
            assert "has ended" not in row[-1], row

    try:
        run_async(drive)
    finally:
        store.close()
        go.touch()
        release(repo, gate)
    assert status_json(repo)["alpha"]["state"] == "done"


def test_a_manager_killed_after_its_agent_ended_unrecorded_is_said_on_a_row_unchanged(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # The manager held still (SIGSTOP: alive) while its agent ends, its attempt still open:
    # nothing on the row moves (the clock stops at the agent's end) when it is killed then.
    gate = start_detached(repo, write_agent, ["alpha"])
    app, store = open_app(repo)
    held: list[psutil.Process] = []

    async def drive() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, lambda: app.rows["alpha"].alive, "alpha's agent at work")
            run = store.get_run(app.run_id)
            assert run is not None
            assert run.manager_pid is not None
            manager = psutil.Process(run.manager_pid)
            held.append(manager)
            manager.suspend()
            gate.write_text("go")
            await until(pilot, lambda: not app.rows["alpha"].alive, "the agent's end seen")
            table = app.query_one("#tasks", DataTable)
            assert "has ended" not in str(table.get_row("alpha")[-1])
            manager.kill()
            await until(pilot, lambda: "manager not running" in app.sub_title, "the header")
            row = [str(cell) for cell in table.get_row("alpha")]
            assert row[-1] == f"its agent (pid {app.rows['alpha'].pid}) has ended", row

    try:
        run_async(drive)
    finally:
        store.close()
        for manager in held:  # still held, should the test fail before it was killed
            with contextlib.suppress(psutil.NoSuchProcess):
                manager.kill()
        release(repo, gate)


# Holds the database at argv[1] locked for writing (readers get SQLITE_BUSY) until the file
# argv[2] exists, or for 30 seconds at most; says "held" once it holds it.
LOCK_HOLDER = """
import pathlib, sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0)
db.execute("PRAGMA locking_mode = EXCLUSIVE")
db.execute("BEGIN EXCLUSIVE")
db.execute("UPDATE tasks SET reason = 'as written back'")
print("held", flush=True)
gate = pathlib.Path(sys.argv[2])
deadline = time.monotonic() + 30
while not gate.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
db.execute("COMMIT")
"""


def test_a_store_written_back_while_another_process_locks_it_leaves_the_screen_live(
    repo: Path, write_agent: Callable[[str], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The screen opened the new file on its own thread, waiting 30 s for the lock at every
    # refresh: frozen while another process held it (its keys, its clock, its other rows).
    monkeypatch.setattr(store_file, "BUSY_SECONDS", 3600.0)  # what a lock held that long does
    agent = write_agent("open('x.txt', 'w').write('x\\n')\n")
    out = swarm(repo, "run", "--agent", " ".join(agent), "-t", "aa=a", "-t", "bb=b")
    assert out.returncode == 0, out.stderr
    app, store = open_app(repo)
    path, copy, gate = store.path, store.path.with_name("copy.db"), repo.parent / "unlock"
    with sqlite3.connect(path) as db:
        db.execute("VACUUM INTO ?", (str(copy),))
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(copy), str(gate)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None
    assert holder.stdout.readline() == "held\n"

    async def drive() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, lambda: app.selected == "aa", "aa selected")
            copy.replace(path)  # a store written back, locked by the process that wrote it
            await until(pilot, lambda: any("cannot read it yet" in m for m in app.messages),
                        "the screen to say it cannot read the new file yet")  # fmt: skip
            assert holder.poll() is None  # said while the lock is held, not once it was let go
            await pilot.press("down")
            await until(pilot, lambda: app.selected == "bb", "bb selected, the lock held")
            assert holder.poll() is None
            assert app.rows["bb"].why == ""  # the file it had open, read meanwhile
            gate.touch()
            await until(pilot, lambda: app.rows["bb"].why == "as written back", "the new file")
            await pilot.press("q")

    try:
        run_async(drive)
    finally:
        gate.touch()
        holder.communicate(timeout=60)
        store.close()
    assert app.crashed is None


def _locking(path: Path, gate: Path) -> subprocess.Popen[str]:
    """LOCK_HOLDER on *path*, once it holds the lock; it waits for the screen's reads."""
    code = LOCK_HOLDER.replace("timeout=0", "timeout=30")
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(path), str(gate)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_store_written_back_then_locked_past_its_wait_keeps_the_screen_and_its_rows(
    repo: Path, write_agent: Callable[[str], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read again, the store written back kept the reopen's short wait for a lock for good, and
    # a lock held past a refresh's wait (a manager writing it back) ended the screen.
    monkeypatch.setattr(store_file, "BUSY_SECONDS", 1.0)  # the store's own wait, made short
    agent = write_agent("open('x.txt', 'w').write('x\\n')\n")
    out = swarm(repo, "run", "--agent", " ".join(agent), "-t", "aa=a", "-t", "bb=b")
    assert out.returncode == 0, out.stderr
    app, store = open_app(repo)
    path, copy, gate = store.path, store.path.with_name("copy.db"), repo.parent / "unlock"
    with sqlite3.connect(path) as db:
        db.execute("VACUUM INTO ?", (str(copy),))
    holder: subprocess.Popen[str] | None = None
    said = "is locked by another process; the rows are shown as last read until it lets go"

    def locks() -> int:
        return sum(said in m for m in app.messages)

    async def drive() -> None:
        nonlocal holder
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, lambda: app.selected == "aa", "aa selected")
            # Read meanwhile: opened, the file stays out of WAL (as VACUUM INTO made it), where
            # an exclusive-locking writer can take it under the screen's open connection.
            reading = sqlite3.connect(copy, isolation_level=None)
            reading.execute("BEGIN")
            reading.execute("SELECT count(*) FROM runs").fetchall()
            copy.replace(path)  # a store written back
            await until(pilot, lambda: app.store is not store, "the new file read")
            reading.execute("COMMIT")
            reading.close()
            (busy,) = app.store._conn.execute("PRAGMA busy_timeout").fetchone()
            # A slice of the store's own wait, tried again until that is over (not once).
            assert busy == round(watch_store.LOCK_SLICE_S * 1000)
            holder = _locking(path, gate)
            await until(pilot, lambda: locks() > 0, "the screen to say the store is locked")
            await refresh(pilot, app)
            await refresh(pilot, app)
            assert holder.poll() is None  # said while the lock is held
            assert locks() == 1
            assert app.crashed is None
            assert sorted(app.rows) == ["aa", "bb"]
            assert app.rows["bb"].why == ""  # what it read last
            gate.touch()
            await until(pilot, lambda: app.rows["bb"].why == "as written back", "read again")
            await pilot.press("q")

    try:
        run_async(drive)
    finally:
        gate.touch()
        if holder is not None:
            holder.communicate(timeout=60)
        store.close()
    assert app.crashed is None


# Switches the database at argv[1] out of WAL, as by hand, and reads it (no one puts it back
# meanwhile). At a line on stdin: holds it locked for writing (every reader waits); at the next
# one, or after 90 seconds with none, lets go. Says each step.
BY_HAND = """
import select, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
print(db.execute("PRAGMA journal_mode = DELETE").fetchone()[0], flush=True)
db.execute("BEGIN")
db.execute("SELECT count(*) FROM tasks").fetchall()
print("reading", flush=True)
sys.stdin.readline()
db.execute("COMMIT")
db.execute("BEGIN EXCLUSIVE")
db.execute("UPDATE tasks SET reason = 'written under the lock'")
print("held", flush=True)
select.select([sys.stdin], [], [], 90)
db.execute("COMMIT")
print("let go", flush=True)
"""


def test_keys_work_and_quit_closes_while_a_store_out_of_wal_is_locked_for_writing(
    repo: Path, write_agent: Callable[[str], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each refresh read the store on the screen's thread, waiting for the lock up to the
    # store's wait at every second: the keys did nothing, `q` too, until the writer let go.
    monkeypatch.setattr(store_file, "BUSY_SECONDS", 3600.0)  # what a lock held that long does
    agent = write_agent("open('x.txt', 'w').write('x\\n')\n")
    out = swarm(repo, "run", "--agent", " ".join(agent), "-t", "aa=a", "-t", "bb=b")
    assert out.returncode == 0, out.stderr
    path = swarm_git.open_repo(repo).state_dir / "state.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", BY_HAND, str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdin is not None
    assert holder.stdout is not None
    assert [holder.stdout.readline(), holder.stdout.readline()] == ["delete\n", "reading\n"]
    app, store = open_app(repo)

    async def drive() -> None:
        assert holder.stdin is not None
        assert holder.stdout is not None
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, lambda: app.selected == "aa", "aa selected")
            holder.stdin.write("lock\n")
            holder.stdin.flush()
            assert await asyncio.to_thread(holder.stdout.readline) == "held\n"
            await pilot.press("down")
            await until(pilot, lambda: app.selected == "bb", "bb selected, the lock held")
            assert holder.poll() is None  # selected while the lock is held, not once let go
            await pilot.press("w")
            await until(pilot, lambda: any("/bb" in m for m in app.messages), "bb's path said")
            busy = "state database busy, waiting for it"
            await until(pilot, lambda: app.sub_title.endswith(busy), "the header to say so")
            assert app.rows["bb"].why == ""  # as read last
            assert holder.poll() is None
            await pilot.press("q")

    try:
        run_async(drive)  # closed, its read waiting no more
        assert holder.poll() is None  # still held: `q` did not wait for it
        assert app.crashed is None
    finally:
        holder.communicate("go\n", timeout=120)
        store.close()
    assert holder.returncode == 0
    assert status_json(repo)["bb"]["reason"] == "written under the lock"


def test_a_slow_read_that_met_no_lock_does_not_say_the_store_is_busy(
    repo: Path, write_agent: Callable[[str], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any refresh longer than one tick of the clock said "busy, waiting for it": a big store
    # read slowly is not locked. The read here is held by the test until it lets it go.
    agent = write_agent("open('x.txt', 'w').write('x\\n')\n")
    out = swarm(repo, "run", "--agent", " ".join(agent), "-t", "aa=a")
    assert out.returncode == 0, out.stderr
    app, store = open_app(repo)
    held = threading.Event()
    go = threading.Event()
    plain_read = WatchApp._read

    def slow_read(self: WatchApp, *args: Any, **kwargs: Any) -> Any:
        if not go.is_set():
            held.set()
            go.wait()
        return plain_read(self, *args, **kwargs)

    monkeypatch.setattr(WatchApp, "_read", slow_read)

    async def drive() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, held.is_set, "the read to be under way")
            app._tick()  # the clock's, while the read is under way
            assert watch_module.BUSY not in app.sub_title
            go.set()
            await settled(pilot, app)
            await until(pilot, lambda: app.selected == "aa", "the rows read")
            assert watch_module.BUSY not in app.sub_title

    try:
        run_async(drive)
        assert app.crashed is None
    finally:
        go.set()
        store.close()


def test_a_store_deleted_under_the_screen_is_said_once_and_its_run_still_shown(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # `rm -rf .git/swarm` after a run: `swarm status` says "no swarm runs"; the screen went on
    # showing the deleted file's run as if nothing had happened.
    agent = write_agent("open('x.txt', 'w').write('x\\n')\n")
    assert swarm(repo, "run", "--agent", " ".join(agent), "-t", "aa=a").returncode == 0
    app, store = open_app(repo)

    async def drive() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, lambda: app.selected == "aa", "aa selected")
            shutil.rmtree(store.path.parent)
            await until(pilot, lambda: any("was deleted" in m for m in app.messages), "told")
            said = [m for m in app.messages if "was deleted" in m]
            deleted = f"the state database {store.path} was deleted; run {app.run_id} is shown"
            assert said == [f"{deleted} as it was last read"]
            gone = f"run {app.run_id}'s state was deleted ({store.path} is gone)"
            for key, name in (("s", "stop"), ("r", "retry")):
                await pilot.press(key)  # an action makes no store where there is none
                failed = f"{name} failed: {gone}; swarm cannot act on it"  # not "no runs yet"
                await until(pilot, lambda: failed in app.messages, f"{name}'s answer")  # noqa: B023
            assert not store.path.exists()
            assert list(app.rows) == ["aa"]
            assert app.is_running
            assert [m for m in app.messages if m.startswith("the state database")] == said
            await pilot.press("q")

    try:
        run_async(drive)
    finally:
        store.close()
    assert app.crashed is None


def test_the_diff_pane_of_a_task_whose_branch_was_deleted_says_so_not_no_changes(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    agent = write_agent("open('x.txt', 'w').write('x\\n')\n")
    assert swarm(repo, "run", "--agent", " ".join(agent), "-t", "aa=a").returncode == 0
    app, store = open_app(repo)

    async def drive() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, lambda: app.selected == "aa", "aa selected")
            out = swarm(repo, "clean", "--yes", "--force")  # its unmerged branch deleted too
            assert out.returncode == 0, out.stderr
            await until(pilot, lambda: not app.rows["aa"].worktree_present, "the clean seen")
            await pilot.press("d")
            view = app.query_one("#diff-view", Log)
            await until(pilot, lambda: any(line.strip() for line in view.lines), "the pane")
            # As `swarm diff aa` says: its work is not here any more, not "no changes".
            assert [line.rstrip() for line in view.lines if line.strip()] == [
                "aa  done  (no branch swarm/aa)"
            ]
            await pilot.press("q")

    try:
        run_async(drive)
    finally:
        store.close()
    assert app.crashed is None


def test_the_worktree_key_says_where_the_work_is_once_clean_deleted_its_branch(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # It said "(removed; the branch keeps the work)" of a branch `swarm clean --force` had
    # deleted, and of a task that never started.
    agent = write_agent(
        "import os, sys\n"
        "sys.exit(1) if os.environ['SWARM_TASK_ID'] == 'cc' else open('x.txt', 'w').write('x')\n"
    )
    path = manifest(
        repo,
        f"[defaults]\nagent = {argv_toml(agent)}\n"
        '[[task]]\nid = "aa"\nprompt = "a"\n[[task]]\nid = "cc"\nprompt = "c"\n'
        '[[task]]\nid = "bb"\nprompt = "b"\ndepends_on = ["cc"]\n',
    )
    swarm(repo, "run", path)
    assert status_json(repo)["bb"]["state"] == "blocked"
    app, store = open_app(repo)
    worktree = repo.parent / "repo.swarm"

    async def say(pilot: Any, task_id: str) -> str:
        count = len(app.messages)
        app.query_one("#tasks", DataTable).move_cursor(row=list(app.rows).index(task_id))
        await until(pilot, lambda: app.selected == task_id, f"{task_id} selected")
        await pilot.press("w")
        await until(pilot, lambda: len(app.messages) > count, "what `w` says")
        return app.messages[-1]

    async def drive() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, lambda: app.selected == "aa", "aa selected")
            out = swarm(repo, "clean", "--yes", "--force")  # its unmerged branch deleted too
            assert out.returncode == 0, out.stderr
            await until(pilot, lambda: not app.rows["aa"].worktree_present, "the clean seen")
            assert await say(pilot, "aa") == (
                f"worktree {worktree / 'aa'} (removed, and its branch swarm/aa deleted: "
                '`swarm diff aa` says "no branch swarm/aa") (copied)'
            )
            assert await say(pilot, "bb") == (
                f"worktree {worktree / 'bb'} (not made: the task never started) (copied)"
            )
            await pilot.press("q")

    try:
        run_async(drive)
    finally:
        store.close()
    assert app.crashed is None


HOSTILE_AGENT = r"""
import os, pathlib, sys, time
token = os.environ["DEPLOY_TOKEN"].encode()
sys.stdout.buffer.write(
    b"\x1b[31mred\x1b[0m \x1b]52;c;ZXZpbA==\x07copied \x1b]0;title\x1b\\ over\rwritten "
    b"\xe2\x80\xaebidi\xe2\x80\xac \xc2\x9b2J c1 \xff\xfe bytes " + token + b"\n"
)
sys.stdout.flush()
pathlib.Path("a.txt").write_text("a")
gate = pathlib.Path(sys.argv[1])
while not gate.exists():
    time.sleep(0.05)
"""


def test_hostile_agent_output_is_shown_inert_and_the_runs_secret_redacted_while_it_runs(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    value = "deploy-token-0f3e-41c2-88aa"
    gate = repo.parent / "gate"
    agent = [*write_agent(HOSTILE_AGENT), str(gate)]
    path = manifest(  # the run's environment: every task's
        repo,
        f'[defaults]\nagent = {argv_toml(agent)}\nenv = {{ DEPLOY_TOKEN = "{value}" }}\n'
        '[[task]]\nid = "t"\nprompt = "x"\n',
    )
    assert swarm(repo, "run", "--detach", path).returncode == 0
    wait_for(lambda: swarm(repo, "status").returncode == 0, what="the run to be recorded")
    app, store = open_app(repo)

    async def drive() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            view = app.query_one("#log-view", Log)
            await until(pilot, lambda: "bytes" in "\n".join(view.lines), "the agent's line")
            assert app.rows["t"].state == "running"  # read live, before its log is rewritten
            (line,) = [line for line in view.lines if "bytes" in line]
            assert line.isprintable(), repr(line)  # no ESC, BEL, CR, C1 CSI, bidi override
            assert value not in line
            assert line.endswith(" bytes [REDACTED]"), repr(line)
            assert "red" in line
            assert "]52;" not in line
            assert "title" not in line
            assert "\ufffd" in line  # bytes that are no UTF-8, shown replaced

    try:
        run_async(drive)
    finally:
        gate.touch()
        store.close()
        wait_for(lambda: manager_gone(repo), what="the run to end")


def test_keys_on_a_task_that_ended_since_the_screen_last_looked_say_so_in_one_line(
    repo: Path, write_agent: Callable[[str], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch_module, "REFRESH_S", 3600.0)  # the screen reads the store once
    gate = start_detached(repo, write_agent, ["alpha"])
    wait_for(lambda: status_json(repo)["alpha"]["alive"] is True, what="alpha's agent")
    app, store = open_app(repo)

    async def say(pilot: Any, key: str) -> str:
        count = len(app.messages)
        await pilot.press(key)
        await until(pilot, lambda: len(app.messages) >= count + 2, f"the {key!r} result")
        return app.messages[count + 1]

    async def drive() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, lambda: app.selected == "alpha", "alpha selected")
            assert app.rows["alpha"].state == "running"
            release(repo, gate)  # it ends, its manager too; the screen has not looked since
            assert app.rows["alpha"].state == "running"
            assert await say(pilot, "s") == "alpha is not running; nothing to stop"
            assert await say(pilot, "r") == "alpha is done; nothing to retry"
            # Read again once an action has ended.
            await until(pilot, lambda: app.rows["alpha"].state == "done", "alpha read done")
            await pilot.press("q")

    try:
        run_async(drive)
    finally:
        store.close()
        release(repo, gate)
    assert app.crashed is None
