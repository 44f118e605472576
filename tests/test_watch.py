"""`swarm watch` on real runs: Textual's headless pilot drives the keys; tmux shows the screen."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import psutil
import pytest
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Log

from tests.conftest import git
from tests.test_run import argv_toml, manifest, status_json, swarm, wait_for
from worktree_swarm.core.errors import BadInputError
from worktree_swarm.git import repo as swarm_git
from worktree_swarm.infra import redact
from worktree_swarm.infra.logtail import Follower
from worktree_swarm.infra.store import Store
from worktree_swarm.report import run_info
from worktree_swarm.report.status import MERGE_UNDONE, TaskStatus
from worktree_swarm.ui import watch as watch_module
from worktree_swarm.ui import watch_actions
from worktree_swarm.ui.watch import WatchApp
from worktree_swarm.ui.watch_view import TailLog, cells, details

# Writes a file, says so, then waits for a marker file (or runs forever without one).
SLOW_AGENT = """
import os, pathlib, sys, time
pathlib.Path(os.environ["SWARM_TASK_ID"] + ".txt").write_text("work\\n")
print("[agent] started", flush=True)
gate = pathlib.Path(sys.argv[1])
while not gate.exists():
    time.sleep(0.05)
print("[agent] finished", flush=True)
"""


def run_async(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(fn())


async def until(pilot: Any, predicate: Callable[[], bool], what: str, wait: float = 60) -> None:
    """Let the app run until *predicate* holds (polling, with a deadline)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if predicate():
            return
        await pilot.pause(0.1)
    pytest.fail(f"timed out waiting for {what}")


async def settled(pilot: Any, app: WatchApp) -> None:
    """Let the screen's read of the store under way (if any) end."""
    await until(pilot, lambda: app._reading is None, "the refresh under way to end")


async def refresh(pilot: Any, app: WatchApp) -> None:
    """One more read of the store, as the screen's clock does, once none is under way; shown."""
    await settled(pilot, app)
    worker = app.refresh_rows()  # no await since: none started meanwhile
    assert worker is not None
    await worker.wait()  # what it read is shown before its thread ends


def start_detached(repo: Path, write_agent: Callable[[str], list[str]], ids: list[str]) -> Path:
    gate = repo.parent / "gate"
    agent = [*write_agent(SLOW_AGENT), str(gate)]
    tasks = "".join(f'[[task]]\nid = "{i}"\nprompt = "work on {i}"\n' for i in ids)
    path = manifest(repo, f"[defaults]\nagent = {argv_toml(agent)}\njobs = 2\n{tasks}")
    out = swarm(repo, "run", "--detach", path)
    assert out.returncode == 0, out.stderr
    try:  # The manager holds its lock before it records the run: wait for the record.
        wait_for(lambda: swarm(repo, "status").returncode == 0, what="the run to be recorded")
    except BaseException:
        release(repo, gate)
        raise
    return gate


def release(repo: Path, gate: Path) -> None:
    """Let the detached run's agents finish, and wait for its manager to end."""
    gate.write_text("go")
    wait_for(lambda: manager_gone(repo), what="the manager to end")


def open_app(repo: Path) -> tuple[WatchApp, Store]:
    r = swarm_git.open_repo(repo)
    store = run_info.open_store(r)
    return WatchApp(r, store, run_info.resolve_run(store, None)), store


def agent_pid(store: Store, run_id: str, task_id: str) -> int | None:
    attempts = store.attempts(run_id, task_id)
    if not attempts or attempts[-1].ended_at is not None:
        return None
    return attempts[-1].pid


def manager_gone(repo: Path) -> bool:
    r = swarm_git.open_repo(repo)
    from worktree_swarm.infra import lock  # noqa: PLC0415

    return not lock.manager_alive(r.state_dir)


@pytest.mark.long
def test_stop_key_stops_a_real_agent_and_retry_starts_one(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    gate = start_detached(repo, write_agent, ["alpha", "beta"])
    try:
        app, store = open_app(repo)
    except BaseException:
        release(repo, gate)
        raise

    async def drive() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, lambda: agent_pid(store, app.run_id, "alpha") is not None, "alpha")
            await until(pilot, lambda: app.selected == "alpha", "alpha selected")
            pid = agent_pid(store, app.run_id, "alpha")
            assert pid is not None
            assert psutil.pid_exists(pid)
            # The log pane follows the agent's output; brackets are text, not markup.
            await until(
                pilot,
                lambda: "[agent] started" in "\n".join(app.query_one("#log-view").lines),
                "the log line",
            )
            await pilot.press("s")
            await until(pilot, lambda: not _alive(pid), "the stopped agent to be gone")
            await until(pilot, lambda: app.rows["alpha"].state == "stopped", "alpha stopped")
            assert app.rows["beta"].state == "running"
            assert cut_cells(app) == []  # what came after the first values shown is whole
            # beta finishes, the manager ends; then a retry starts a new agent for alpha.
            gate.write_text("go")
            await until(pilot, lambda: app.rows["beta"].state == "done", "beta done", 90)
            await until(pilot, lambda: manager_gone(repo), "the manager to end")
            await pilot.press("r")
            await pilot.press("r")  # pressed twice: one retry (each started one, 1 -> 3)
            await until(
                pilot, lambda: len(store.attempts(app.run_id, "alpha")) == 2, "a new attempt", 90
            )
            await until(pilot, lambda: app.rows["alpha"].state == "done", "alpha done", 90)
            assert any(m.startswith("retrying alpha") for m in app.messages), app.messages
            assert "alpha: its retry is asked for; it shows here once it starts" in app.messages
            assert len(store.attempts(app.run_id, "alpha")) == 2

    try:
        run_async(drive)
    finally:
        release(repo, gate)
        store.close()
    second = store_attempts(repo, "alpha")
    assert second[-1].number == 2
    assert git(repo, "show", "swarm/alpha:alpha.txt") == "work"


def cut_cells(app: WatchApp) -> list[str]:
    """The cells of the task table wider than their column: shown cut."""
    table = app.query_one("#tasks", DataTable)
    return [
        f"{task}/{key.value}: {table.get_cell(task, key)}"
        for task in app.rows
        for key, column in table.columns.items()
        if column.content_width < table.get_cell(task, key).cell_len
    ]


def store_attempts(repo: Path, task_id: str) -> list[Any]:
    r = swarm_git.open_repo(repo)
    with run_info.open_store(r) as store:
        return store.attempts(run_info.resolve_run(store, None), task_id)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_reason_in_brackets_is_shown_as_typed() -> None:
    row = TaskStatus(
        task_id="t",
        state="failed",
        reason="[agent] giving up on list[str]",
        attempt=1,
        pid=None,
        alive=False,
        elapsed_s=3.0,
        cost_usd=None,
        tokens_in=None,
        tokens_out=None,
        files_changed=1,
        insertions=2,
        deletions=0,
        branch="swarm/t",
        worktree="/w/t",
    )
    assert cells(row, marked=False, managed=True)[-1].plain == "[agent] giving up on list[str]"
    # Whatever reached a reason raw (a rate limit's message, recorded before it was made one
    # printable line) shows without its escape sequence: Rich drops a BEL, not an ESC.
    odd = dataclasses.replace(row, reason="\x1b]52;c;UFdO\x07\x1b]0;PWN\x07 waits\nforged")
    assert cells(odd, marked=False, managed=True)[-1].plain.isprintable()
    assert details(dataclasses.replace(row, branch="swarm/\x1b[2Jt")).plain.isprintable()
    # A task blocked before it started has no branch or worktree to point at.
    assert details(dataclasses.replace(row, branch_made=False)).plain == "swarm/t: not made"
    # A long id keeps the state on a narrow screen: cut in the table, whole in the details.
    long_id = "a-task-id-of-sixty-three-characters-which-pushes-everything-righ"
    shown = cells(dataclasses.replace(row, task_id=long_id), marked=False, managed=True)[1].plain
    assert (len(shown), shown[-1]) == (32, "…")
    assert long_id.startswith(shown[:-1])


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
@pytest.mark.parametrize("how", ["q", "C-c", "SIGTERM"])
def test_watch_in_tmux_shows_the_task_table(
    repo: Path, write_agent: Callable[[str], list[str]], tmp_path: Path, how: str
) -> None:
    gate = start_detached(repo, write_agent, ["alpha", "beta"])
    session = f"swarm-watch-{tmp_path.name}"
    sock = str(tmp_path / "tmux.sock")
    cmd = f"cd {repo} && exec {sys.executable} -m worktree_swarm.cli watch"
    tmux = ["tmux", "-S", sock]
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", session, "-x", "160", "-y", "40", cmd], check=True
    )
    # The pane stays once watch has quit: what it left the terminal in can be asked.
    subprocess.run([*tmux, "set-option", "-t", session, "remain-on-exit", "on"], check=True)

    def pane(field: str) -> str:
        return subprocess.run(
            [*tmux, "display-message", "-p", "-t", session, f"#{{{field}}}"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip

    try:

        def screen() -> str:
            return subprocess.run(
                [*tmux, "capture-pane", "-p", "-t", session],
                capture_output=True,
                text=True,
                check=False,
            ).stdout

        wait_for(lambda: "alpha" in screen() and "beta" in screen(), what="the task table")
        text = screen()
        assert "task" in text
        assert "state" in text
        wait_for(lambda: "running" in screen(), what="a running task")
        wait_for(lambda: all(r["alive"] for r in status_json(repo).values()), what="two agents")
        agents = {t: r["pid"] for t, r in status_json(repo).items()}
        if how != "SIGTERM":  # Ctrl-C too: Textual's own only asks for ctrl+q
            subprocess.run([*tmux, "send-keys", "-t", session, how], check=True)
        else:
            psutil.Process(int(pane("pane_pid"))).terminate()
        wait_for(lambda: pane("pane_dead") == "1", what="watch to quit")
        assert pane("alternate_on") == "0"  # the screen it drew on is closed, modes restored
        # Quitting the viewer stops nothing: the agents work on under the run's manager.
        assert not manager_gone(repo)
        rows = status_json(repo)
        assert {t: (r["state"], r["pid"], r["alive"]) for t, r in rows.items()} == {
            t: ("running", pid, True) for t, pid in agents.items()
        }
    finally:
        subprocess.run([*tmux, "kill-server"], check=False)
        release(repo, gate)
    assert {r["state"] for r in status_json(repo).values()} == {"done"}


@pytest.mark.long
def test_the_worktree_key_copies_the_selected_tasks_path_to_the_clipboard(repo: Path) -> None:
    assert swarm(repo, "run", "--agent", "scripted", "-t", "aa=a", "-t", "bb=b").returncode == 0
    app, store = open_app(repo)
    copied: list[str] = []

    async def drive() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, lambda: app.selected == "aa", "aa selected")
            await pilot.press("w")
            copied.append(app.clipboard)
            await pilot.press("down")
            await until(pilot, lambda: app.selected == "bb", "bb selected")
            await pilot.press("w")
            copied.append(app.clipboard)

    try:
        run_async(drive)
    finally:
        store.close()
    assert copied == [str(repo.parent / "repo.swarm" / t) for t in ("aa", "bb")]


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
@pytest.mark.long
def test_the_worktree_key_reaches_the_terminals_clipboard(repo: Path, tmp_path: Path) -> None:
    # tmux keeps what an application copies with OSC 52 as a paste buffer: the terminal's side.
    assert swarm(repo, "run", "--agent", "scripted", "-t", "aa=a", "-t", "bb=b").returncode == 0
    session = f"swarm-copy-{tmp_path.name}"
    tmux = ["tmux", "-S", str(tmp_path / "tmux.sock")]
    cmd = f"cd {repo} && exec {sys.executable} -m worktree_swarm.cli watch"
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", session, "-x", "160", "-y", "40", cmd], check=True
    )

    def tmux_out(*args: str) -> str:
        out = subprocess.run([*tmux, *args], capture_output=True, text=True, check=False)
        return out.stdout

    def copy(task_id: str) -> None:
        """Press `w` once the details line starts with *task_id*'s branch; wait for the copy."""
        wait_for(lambda: f"swarm/{task_id}  ·" in tmux_out("capture-pane", "-p", "-t", session),
                 what=f"{task_id} selected")  # fmt: skip
        subprocess.run([*tmux, "send-keys", "-t", session, "w"], check=True)
        path = str(repo.parent / "repo.swarm" / task_id)  # whole, though the screen wraps it
        wait_for(lambda: tmux_out("show-buffer") == path, what=f"{task_id}'s path copied")

    try:
        subprocess.run([*tmux, "set-option", "-s", "set-clipboard", "on"], check=True)
        copy("aa")
        subprocess.run([*tmux, "send-keys", "-t", session, "Down"], check=True)
        copy("bb")
    finally:
        subprocess.run([*tmux, "kill-server"], check=False)


@pytest.mark.long
def test_watch_without_a_terminal_is_one_line_and_exit_2(repo: Path) -> None:
    assert swarm(repo, "run", "--agent", "scripted", "-t", "a=x").returncode == 0
    out = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", "watch"], cwd=repo, capture_output=True,
        text=True, stdin=subprocess.DEVNULL, timeout=60, check=False,
    )  # fmt: skip
    assert (out.returncode, out.stderr) == (
        2, "swarm: swarm watch needs a terminal; without one, `swarm status` shows it\n"
    )  # fmt: skip


LOUD_AGENT = """
import os, pathlib, sys, time
print("\\x1b]52;c;ZXZpbA==\\x07\\x1b[2J leaked " + os.environ["DEPLOY_TOKEN"], flush=True)
pathlib.Path("a.txt").write_text("a")
gate = pathlib.Path(sys.argv[1])
while not gate.exists():
    time.sleep(0.05)
print("[agent] finished " + os.environ["DEPLOY_TOKEN"], flush=True)
"""


def test_the_log_pane_shows_an_agents_output_redacted_printable_and_to_its_end(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    value = "deploy-token-7c1e-44aa-91b0"
    gate = repo.parent / "gate"
    agent = [*write_agent(LOUD_AGENT), str(gate)]
    path = manifest(
        repo,
        f'[[task]]\nid = "t"\nprompt = "x"\nagent = {argv_toml(agent)}\n'
        f'env = {{ DEPLOY_TOKEN = "{value}" }}\n',
    )
    assert swarm(repo, "run", "--detach", path).returncode == 0
    app, store = open_app(repo)

    async def drive() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            view = app.query_one("#log-view")
            await until(pilot, lambda: "leaked" in "\n".join(view.lines), "the agent's line")
            gate.touch()  # its attempt ends: the log is rewritten redacted, the pane goes on
            await until(pilot, lambda: "finished" in "\n".join(view.lines), "its last line")
            shown = "\n".join(view.lines)
            assert value not in shown
            assert shown.count("[REDACTED]") == 2, shown
            assert "\x1b" not in shown
            assert "\x07" not in shown
            # Whole sequences go, not only their ESC: no clipboard payload, no `[2J` left.
            assert "]52;c;" not in shown
            assert "[2J" not in shown

    try:
        run_async(drive)
    finally:
        gate.touch()
        store.close()
        wait_for(lambda: manager_gone(repo), what="the run to end")


def test_a_log_follower_reads_whole_lines_skips_a_burst_and_restarts_on_a_rewrite(
    tmp_path: Path,
) -> None:
    log = tmp_path / "agent.log"
    log.write_bytes(b"old line\n")
    follow = Follower(log, limit=1024)
    assert follow.read() == (False, "old line\n")
    with log.open("ab") as fh:
        fh.write(b"caf" + "é".encode()[:1])  # a character split across two writes
    assert follow.read() == (False, "")
    with log.open("ab") as fh:
        fh.write("é".encode()[1:] + b"\n" + b"x" * 5000 + b"\nlast\n")  # then a burst
    restart, text = follow.read()
    assert not restart
    assert text.startswith("... (")
    assert text.endswith("\nlast\n")
    assert "café" not in text  # skipped with the burst
    assert len(text) < 1200
    log.write_bytes(b"rewritten\n")  # shorter, as a redacted rewrite may be
    assert follow.read() == (True, "rewritten\n")
    log.write_bytes(b"caf\xc3\xa9 rewritten again, longer\n")  # same size or longer
    assert follow.read() == (True, "café rewritten again, longer\n")
    with log.open("ab") as fh:
        fh.write(b"the last line, no newline")
    assert follow.read() == (False, "")  # it may go on while its writer runs
    assert follow.read(ended=True) == (False, "the last line, no newline")  # never shown before
    assert follow.read(ended=True) == (False, "")


def test_a_log_swapped_for_a_link_is_not_followed_and_the_pane_says_so(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("a file of yours outside the run\n")
    log = tmp_path / "attempt-1.log"
    log.symlink_to(outside)  # an agent's, where its log was
    follow = Follower(log, limit=1024)
    restart, text = follow.read()
    assert not restart
    assert text.startswith("(log not read: ")
    assert "outside the run" not in text
    assert follow.read() == (False, "")  # said once


def test_the_diff_pane_of_a_finished_task_without_changes_says_none_not_none_yet(
    repo: Path, tmp_path: Path
) -> None:
    agent = tmp_path / "agent.py"
    agent.write_text("print('nothing to do')\n")
    assert swarm(repo, "run", "--agent", f"{sys.executable} {agent}", "-t", "t=x").returncode
    app, store = open_app(repo)

    async def drive() -> None:
        async with app.run_test(size=(100, 24)) as pilot:
            await until(pilot, lambda: app.selected == "t", "t selected")
            await pilot.press("d")
            view = app.query_one("#diff-view", Log)
            await until(pilot, lambda: "t: no changes" in "\n".join(view.lines), "the pane")
            assert "no changes yet" not in "\n".join(view.lines)

    try:
        run_async(drive)
    finally:
        store.close()


def test_the_diff_pane_of_a_task_in_a_state_it_does_not_know_names_it_and_stays_up(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pane's thread read the state as a TaskState: a ValueError there ended the screen.
    # No store read gives such a row today (Store.tasks refuses it): it is set on the screen,
    # which re-reads the store only once here.
    monkeypatch.setattr(watch_module, "REFRESH_S", 3600.0)
    agent = tmp_path / "agent.py"
    agent.write_text("print('nothing to do')\n")
    assert swarm(repo, "run", "--agent", f"{sys.executable} {agent}", "-t", "t=x").returncode
    app, store = open_app(repo)

    async def drive() -> None:
        async with app.run_test(size=(100, 24)) as pilot:
            await until(pilot, lambda: app.selected == "t", "t selected")
            log = app.query_one("#log-view", Log)
            await until(pilot, lambda: "nothing to do" in log.lines, "its log read")
            await settled(pilot, app)  # no read after it
            app.rows["t"] = dataclasses.replace(app.rows["t"], state="merging")
            await pilot.press("d")
            view = app.query_one("#diff-view", Log)
            said = "t: no changes (merging)"
            await until(pilot, lambda: said in view.lines or not app.is_running, "the pane")
            assert app.is_running
            assert said in view.lines
            await pilot.press("q")

    try:
        run_async(drive)
    finally:
        store.close()
    assert app.crashed is None


def test_the_log_pane_still_ends_at_the_last_line_when_the_details_line_grows(
    repo: Path, tmp_path: Path
) -> None:
    # Merged, a task's details line wrapped to two lines: the pane shrank by one and hid the
    # log's last line (an agent's summary or its error), scrolled one line short of its end.
    agent = tmp_path / "agent.py"
    agent.write_text(
        "import pathlib\npathlib.Path('w.txt').write_text('w')\n"
        "for i in range(300):\n    print(f'step {i}')\nprint('agent done')\n"
    )
    assert swarm(repo, "run", "--agent", f"{sys.executable} {agent}", "-t", "t=x").returncode == 0
    app, store = open_app(repo)

    async def drive() -> None:
        async with app.run_test(size=(100, 24)) as pilot:
            view = app.query_one("#log-view", TailLog)
            details = app.query_one("#details")
            await until(pilot, lambda: "agent done" in "\n".join(view.lines), "the last line")
            assert details.size.height == 1
            assert swarm(repo, "merge").returncode == 0
            await until(pilot, lambda: details.size.height > 1, "the details line to wrap")
            await until(pilot, lambda: view.scroll_y == view.max_scroll_y, "the view at its end")
            assert [line for line in view.lines if line][-1] == "agent done"

    try:
        run_async(drive)
    finally:
        store.close()


@pytest.mark.long
def test_the_log_pane_shows_the_last_lines_of_a_log_longer_than_it_keeps(
    repo: Path, tmp_path: Path
) -> None:
    # Past its 5,000 lines the pane was scrolled beyond the lines it kept: blank.
    agent = tmp_path / "agent.py"
    agent.write_text("for i in range(40_000):\n    print(f'tick {i}')\n")
    assert swarm(repo, "run", "--agent", f"{sys.executable} {agent}", "-t", "long=x").returncode
    app, store = open_app(repo)

    async def drive() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            view = app.query_one("#log-view")
            await until(pilot, lambda: "tick 39999" in "\n".join(view.lines), "the last line")
            await pilot.pause(0.2)
            assert view.line_count <= 5000
            assert view.max_scroll_y <= max(0, view.line_count - view.size.height + 1)
            assert view.scroll_y == view.max_scroll_y  # at its end, on its lines

    try:
        run_async(drive)
    finally:
        store.close()


def test_a_secret_an_escape_sequence_splits_is_redacted_once_the_sequence_goes(
    tmp_path: Path,
) -> None:
    # Redacted first, the two halves were no value; the sequence removed then made it whole.
    key = "Zq8xT3vLp9Wm2RkY"
    redact.add_env([("WATCHED_API_KEY", key)])  # as a task's env is made known
    log = tmp_path / "agent.log"
    log.write_bytes(b"printed " + key[:8].encode() + b"\x1b[0m" + key[8:].encode() + b"\n")
    shown = Follower(log, limit=1024).read()[1]
    assert key not in shown
    assert "[REDACTED]" in shown


def test_quit_while_a_merge_checks_says_so_and_quits_once_it_ends(
    repo: Path, write_agent: Callable[[str], list[str]], tmp_path: Path
) -> None:
    hold, gate = tmp_path / "hold", tmp_path / "gate"
    check = write_agent(  # the run's own checks pass at once; the merge's wait for the gate
        f"import pathlib, time\nwhile pathlib.Path({str(hold)!r}).exists() "
        f"and not pathlib.Path({str(gate)!r}).exists():\n    time.sleep(0.05)\n"
    )
    agent = write_agent("import pathlib\npathlib.Path('a.txt').write_text('a')\n")
    path = manifest(
        repo,
        f'[[task]]\nid = "aa"\nprompt = "x"\nagent = {argv_toml(agent)}\n'
        f"checks = [{argv_toml(check)}]\n",
    )
    assert swarm(repo, "run", path).returncode == 0
    hold.touch()
    app, store = open_app(repo)

    async def drive() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, lambda: app.selected == "aa", "aa selected")
            await pilot.press("m")
            await until(pilot, lambda: "merge: working…" in app.messages, "the merge")
            await pilot.press("q")
            await until(pilot, lambda: app.messages[-1].startswith("quitting once merge"), "why")
            assert app.is_running
            gate.touch()
            await until(pilot, lambda: not app.is_running, "the screen to close")

    try:
        run_async(drive)
    finally:
        gate.touch()
        store.close()
    assert any(m.startswith("merged into") for m in app.messages), app.messages
    # Said after the screen closed: the merge's outcome was gone with it.
    said = app.said_after_quit()
    assert len(said) == 1
    assert said[0].startswith("merged into"), said


@pytest.mark.long
def test_the_screen_keeps_refreshing_while_a_merge_waits_for_the_database(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # A merge started from the screen that waits to write (another process writing: here
    # this test, holding SQLite's write lock) held the screen's own store while it waited,
    # and the screen froze with it, for up to SQLite's 30 s busy timeout.
    agent = write_agent("import pathlib\npathlib.Path('a.txt').write_text('a')\n")
    assert swarm(repo, "run", "--agent", " ".join(agent), "-t", "aa=a").returncode == 0
    app, store = open_app(repo)
    ticks: list[float] = []
    refresh = app.refresh_rows

    def counted() -> None:
        refresh()
        ticks.append(time.monotonic())

    app.refresh_rows = counted  # type: ignore[method-assign]
    writer = sqlite3.connect(store.path, isolation_level=None)

    async def drive() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, lambda: app.selected == "aa", "aa selected")
            writer.execute("BEGIN IMMEDIATE")  # another process writes, and holds on
            try:
                await pilot.press("m")
                await until(pilot, lambda: "merge: working…" in app.messages, "the merge")
                seen = len(ticks)
                await until(pilot, lambda: len(ticks) >= seen + 3, "three refreshes")
                assert app._busy == ["merge"]  # still waiting to write
                await pilot.press("d")
                await until(pilot, lambda: app.query_one("#panes").active == "diff", "keys")
            finally:
                writer.execute("ROLLBACK")
            await until(pilot, lambda: any(m.startswith("merged into") for m in app.messages),
                        "the merge to end")  # fmt: skip

    try:
        run_async(drive)
    finally:
        writer.close()
        store.close()
    assert status_json(repo)["aa"]["merge_result"] == "merged"


def test_every_key_shows_in_the_key_bar_of_an_80_column_terminal(repo: Path) -> None:
    # `l d c q` fell off its right end (the command palette's hint drawn over them too).
    assert swarm(repo, "run", "--agent", "scripted", "-t", "aa=a").returncode == 0
    app, store = open_app(repo)

    async def drive() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            # Laid out after the first refresh: on a busy machine, later than one pause.
            await until(
                pilot,
                lambda: any(k.region.width for k in app.query_one(Footer).children),
                "the key bar",
            )
            shown = [k for k in app.query_one(Footer).children if k.region.width > 0]
            keys = [b.key for b in app.BINDINGS if isinstance(b, Binding) and b.show]
            assert [getattr(k, "key", None) for k in shown] == keys
            assert max(k.region.right for k in shown) <= 80
            assert len({(k.region.x, k.region.y) for k in shown}) == len(shown)

    try:
        run_async(drive)
    finally:
        store.close()


@pytest.mark.long
def test_pr_merge_diff_and_worktree_keys_on_a_finished_run(
    repo: Path, write_agent: Callable[[str], list[str]], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from tests.github_server import NAME, OWNER, TOKEN, serve  # noqa: PLC0415

    bare = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    # GitHub names the repository from the fetch URL; pushes go to the local bare repository.
    git(repo, "remote", "add", "origin", f"https://github.test/{OWNER}/{NAME}.git")
    git(repo, "config", "remote.origin.pushurl", str(bare))
    agent = write_agent(
        "import os, pathlib\n"
        "pathlib.Path(os.environ['SWARM_TASK_ID'] + '.txt').write_text('[x] done\\n')\n"
    )
    out = swarm(repo, "run", "--agent", " ".join(agent), "-t", "aa=a", "-t", "bb=b")
    assert out.returncode == 0, out.stderr
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    with serve() as fake:
        fake.bare = bare
        monkeypatch.setenv("SWARM_GITHUB_API_URL", fake.url)
        app, store = open_app(repo)

        async def drive() -> None:
            async with app.run_test(size=(140, 40)) as pilot:
                await until(pilot, lambda: app.selected == "aa", "aa selected")
                await pilot.press("d")
                diff_view = app.query_one("#diff-view")
                await until(
                    pilot, lambda: "+[x] done" in "\n".join(diff_view.lines), "the diff pane"
                )
                await pilot.press("w")
                await until(pilot, lambda: any("worktree " in m for m in app.messages), "path")
                assert str(repo.parent / "repo.swarm" / "aa") in app.messages[-1]
                await pilot.press("space")
                await pilot.press("down")
                await pilot.press("space")
                await pilot.press("m")
                await until(
                    pilot, lambda: any(m.startswith("merged into") for m in app.messages), "merge"
                )
                await until(pilot, lambda: app.rows["bb"].merge_result == "merged", "recorded")
                assert app.rows["aa"].state == "done"
                # Undone on its target since, as `swarm status` says: not "merged" still.
                integration = next(repo.parent.glob("repo.swarm/_integration-*"))
                git(integration, "reset", "-q", "--hard", "HEAD~2")
                await until(
                    pilot, lambda: app.rows["bb"].merge_result == MERGE_UNDONE, "seen undone"
                )
                assert app.marked == set()  # taken by that merge: a next `m` is a new choice
                await pilot.press("p")
                await until(pilot, lambda: any("PR #" in m or "pr failed" in m
                                               for m in app.messages), "the PR")  # fmt: skip

        try:
            run_async(drive)
            # A refresh timer that fires while the screen closes finds no table: nothing to do.
            rows = dict(app.rows)
            app.refresh_rows()
            assert app.rows == rows
        finally:
            store.close()
    assert any("PR #1 created" in m for m in app.messages), app.messages
    assert fake.pulls[1]["head"]["ref"] == "swarm/bb"


@pytest.mark.long
def test_actions_that_cannot_be_done_say_why_and_change_nothing(
    repo: Path, write_agent: Callable[[str], list[str]], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from tests.github_server import NAME, OWNER, TOKEN, serve  # noqa: PLC0415

    # aa and bb write the same file differently (the second to merge conflicts); cc fails.
    agent = write_agent(
        "import os, pathlib, sys\n"
        "task = os.environ['SWARM_TASK_ID']\n"
        "pathlib.Path('shared.txt').write_text(task + '\\n')\n"
        "sys.exit(1 if task == 'cc' else 0)\n"
    )
    out = swarm(repo, "run", "--agent", " ".join(agent), "-t", "aa=a", "-t", "bb=b", "-t", "cc=c")
    assert out.returncode == 1, out.stderr
    # A remote GitHub knows, whose push URL leads nowhere: every push fails.
    git(repo, "remote", "add", "origin", f"https://github.test/{OWNER}/{NAME}.git")
    git(repo, "config", "remote.origin.pushurl", str(tmp_path / "missing.git"))
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    app, store = open_app(repo)
    said = r"^no task 'zz' in run (.*); `swarm status --run \1` lists them$"
    with pytest.raises(BadInputError, match=said):
        watch_actions.retry(app.repo, store, app.run_id, "zz")
    gate = repo.parent / "gate"

    async def say(pilot: Any, key: str) -> str:
        count = len(app.messages)
        await pilot.press(key)
        # Each action says "working…" first, then its result.
        await until(pilot, lambda: len(app.messages) >= count + 2, f"the {key!r} result")
        return app.messages[count + 1]

    with serve() as fake:
        monkeypatch.setenv("SWARM_GITHUB_API_URL", fake.url)

        async def drive() -> None:
            async with app.run_test(size=(140, 40)) as pilot:
                await until(pilot, lambda: app.selected == "aa", "aa selected")
                assert await say(pilot, "s") == "aa is not running; nothing to stop"
                assert await say(pilot, "r") == "aa is done; nothing to retry"
                pr = await say(pilot, "p")
                assert pr.startswith("aa: "), pr
                assert "PR #" not in pr
                await pilot.press("space")
                await pilot.press("down")
                await pilot.press("space")
                merged = await say(pilot, "m")
                assert merged.startswith("merged into swarm/"), merged
                assert ": aa; bb conflicted (conflicts with swarm/integration-" in merged
                assert merged.endswith(" in shared.txt)"), merged
                await pilot.press("down")
                await until(pilot, lambda: app.selected == "cc", "cc selected")
                # One key merged a failed task (its checks alone in the way): marked, it may.
                count = len(app.messages)
                await pilot.press("m")
                await until(pilot, lambda: len(app.messages) > count, "the 'm' answer")
                assert app.messages[count] == (
                    "cc is failed: `m` merges a done task; mark it (space) to merge it anyway"
                )
                # Another run's manager holds the repository: no second manager is started.
                slow = [*write_agent(SLOW_AGENT), str(gate)]
                other = swarm(repo, "run", "--detach", "--agent", " ".join(slow), "-t", "zz=z")
                assert other.returncode == 0, other.stderr
                await until(pilot, lambda: not manager_gone(repo), "the other manager")
                busy = await say(pilot, "r")
                assert busy.startswith("a manager (pid "), busy
                assert busy.endswith("runs this repository; retry cc once it has ended"), busy
                assert len(store.attempts(app.run_id, "cc")) == 1

        try:
            run_async(drive)
        finally:
            gate.write_text("go")
            wait_for(lambda: manager_gone(repo), what="the other manager to end")
            store.close()
    assert fake.pulls == {}
    assert git(repo, "show", "swarm/cc:shared.txt") == "cc"


def test_a_manager_starting_while_a_probe_holds_the_lock_waits_it_out(tmp_path: Path) -> None:
    # `swarm status` / `swarm watch` probe the manager lock by taking it for an instant.
    import threading  # noqa: PLC0415

    import filelock  # noqa: PLC0415

    from worktree_swarm.infra.lock import ManagerLock, manager_alive  # noqa: PLC0415

    state = tmp_path / "state"
    state.mkdir()
    probe = filelock.FileLock(state / "manager.lock", thread_local=False)
    probe.acquire(timeout=0)  # held at the moment the manager starts
    threading.Timer(0.05, probe.release).start()  # well inside the manager's grace
    lock = ManagerLock(state)
    lock.acquire(run_id="r1")
    try:
        assert manager_alive(state)
    finally:
        lock.release()
    assert not manager_alive(state)


def test_the_stop_key_with_no_manager_alive_stops_the_agent_and_keeps_its_work(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    gate = start_detached(repo, write_agent, ["alpha"])
    try:
        app, store = open_app(repo)
        wait_for(lambda: agent_pid(store, app.run_id, "alpha") is not None, what="alpha")
        run = store.get_run(app.run_id)
        assert run is not None
        assert run.manager_pid is not None
        psutil.Process(run.manager_pid).kill()  # the manager dies; its agent runs on
        wait_for(lambda: manager_gone(repo), what="the manager to be gone")
        pid = agent_pid(store, app.run_id, "alpha")
        assert pid is not None
        assert _alive(pid)

        async def drive() -> None:
            async with app.run_test(size=(140, 40)) as pilot:
                await until(pilot, lambda: app.selected == "alpha", "alpha selected")
                await pilot.press("s")
                await until(pilot, lambda: not _alive(pid), "the stopped agent to be gone")
                await until(pilot, lambda: app.rows["alpha"].state == "stopped", "alpha stopped")

        run_async(drive)
        store.close()
    finally:
        release(repo, gate)
    assert status_json(repo)["alpha"]["state"] == "stopped"
    assert git(repo, "show", "swarm/alpha:alpha.txt") == "work"  # checkpointed directly


def test_a_diff_longer_than_the_pane_holds_is_cut_and_says_where_the_rest_is(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # 25,000 new lines: the pane shows the first 20,000 of the diff and how many more there
    # are, and the screen stays live.
    agent = write_agent(
        "import pathlib\n"
        "pathlib.Path('big.txt').write_text(''.join(f'line {i}\\n' for i in range(25_000)))\n"
    )
    out = swarm(repo, "run", "--agent", " ".join(agent), "-t", "big=b")
    assert out.returncode == 0, out.stderr
    app, store = open_app(repo)

    async def drive() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, lambda: app.selected == "big", "big selected")
            await pilot.press("d")
            view = app.query_one("#diff-view")
            await until(pilot, lambda: "more lines" in "\n".join(view.lines), "the diff pane")
            shown = "\n".join(str(line).rstrip() for line in view.lines).strip().splitlines()
            header = shown.index("+line 0")  # the diff's own lines before the file's
            assert shown[0] == "diff --git a/big.txt b/big.txt"
            assert len(shown) == 20_000 + 1  # the first 20,000 lines, then what is left
            more = header + 25_000 - 20_000
            assert shown[-1] == f"... {more} more lines: `swarm diff big` prints all of it"
            assert shown[-2] == f"+line {20_000 - header - 1}"
            await pilot.press("q")

    try:
        run_async(drive)
    finally:
        store.close()


def test_a_pane_that_cannot_be_filled_says_why_and_the_screen_stays_up(
    repo: Path, write_agent: Callable[[str], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `c` with the integration worktree dirty: the prediction's error ended the screen and
    # Textual printed its traceback with every local variable, a task's secret `env` too.
    monkeypatch.setenv("DEPLOY_TOKEN", "sk-live-SUPERSECRET-1234567890")
    agent = write_agent("open('x.txt', 'w').write('x\\n')\n")
    out = swarm(repo, "run", "--agent", " ".join(agent), "-t", "aa=a")
    assert out.returncode == 0, out.stderr
    assert swarm(repo, "merge").returncode == 0
    (integration,) = (repo.parent / "repo.swarm").glob("_integration-*")
    (integration / "x.txt").write_text("your fix, not committed\n")
    app, store = open_app(repo)

    async def drive() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, lambda: app.selected == "aa", "aa selected")
            await pilot.press("c")
            view = app.query_one("#conflicts-view")
            await until(pilot, lambda: "no prediction" in "\n".join(view.lines), "the reason")
            assert "uncommitted changes" in "\n".join(view.lines)
            # A diff loaded for a task selected before (a thread cannot be stopped) is dropped,
            # not shown under the task selected since.
            await pilot.press("d")
            diff_view = app.query_one("#diff-view")
            await until(pilot, lambda: "+x" in "\n".join(diff_view.lines), "aa's diff")
            app._fill("#diff-view", "zz's diff", task_id="zz")
            assert "zz's diff" not in "\n".join(diff_view.lines)
            await pilot.press("q")

    try:
        run_async(drive)
    finally:
        store.close()
    assert app.crashed is None


def written_back(path: Path, change: str) -> None:
    """The store at *path* copied, changed by the SQL *change*, and put in its place.

    As a manager's put-back does: another file at the path, the one open deleted.
    """
    copy = path.with_name("copy.db")
    with sqlite3.connect(path) as db:
        db.execute("VACUUM INTO ?", (str(copy),))
    with sqlite3.connect(copy) as db:
        db.execute(change)
    copy.replace(path)


def test_a_store_written_back_under_the_screen_is_read_from_then_on(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # A manager writes its store back after `rm -rf .git/swarm`: a new file at the path. The
    # screen read the deleted one for good, "running" for ever beside `swarm status`'s "done".
    agent = write_agent("open('x.txt', 'w').write('x\\n')\n")
    assert swarm(repo, "run", "--agent", " ".join(agent), "-t", "aa=a").returncode == 0
    app, store = open_app(repo)
    path = store.path

    async def drive() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, lambda: app.selected == "aa", "aa selected")
            written_back(path, "UPDATE tasks SET reason = 'as written back'")
            await until(pilot, lambda: app.rows["aa"].why == "as written back", "the new file")
            await pilot.press("q")

    try:
        run_async(drive)
    finally:
        store.close()


def test_a_store_of_another_run_written_under_the_screen_leaves_it_up_showing_its_run(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # `rm -rf .git/swarm` and a new run: the screen closed (exit 2, "unknown run").
    agent = write_agent("open('x.txt', 'w').write('x\\n')\n")
    assert swarm(repo, "run", "--agent", " ".join(agent), "-t", "aa=a").returncode == 0
    app, store = open_app(repo)
    path = store.path

    async def drive() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, lambda: app.selected == "aa", "aa selected")
            written_back(path, "DELETE FROM runs")
            await until(pilot, lambda: any("without run" in m for m in app.messages), "told")
            assert app.is_running
            assert list(app.rows) == ["aa"]
            await pilot.press("q")

    try:
        run_async(drive)
    finally:
        store.close()


def test_an_error_of_the_screens_own_is_raised_without_textuals_traceback(
    repo: Path, write_agent: Callable[[str], list[str]]
) -> None:
    # Textual draws an unhandled error's traceback with every local variable's value when
    # the screen closes: a task's secret `env` among them.
    agent = write_agent("open('x.txt', 'w').write('x\\n')\n")
    assert swarm(repo, "run", "--agent", " ".join(agent), "-t", "aa=a").returncode == 0
    app, store = open_app(repo)
    value = "sk-live-" + "SUPERSECRET-1234567890"

    def boom() -> None:
        env = {"DEPLOY_TOKEN": value}
        raise ValueError(f"no such key in {len(env)} settings")

    async def drive() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            await until(pilot, lambda: app.selected == "aa", "aa selected")
            app.call_later(boom)
            await until(pilot, lambda: app.crashed is not None, "the error")

    try:
        with pytest.raises(ValueError, match="no such key"):
            run_async(drive)
    finally:
        store.close()
    assert isinstance(app.crashed, ValueError)
    assert app._exit_renderables == []  # nothing of it drawn, its locals least of all
