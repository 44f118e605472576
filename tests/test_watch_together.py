"""Two `swarm watch` on one run, beside `swarm status` and `swarm logs`: none waits on another.

Two screens in this process (Textual's headless pilot) and a third, the real CLI in tmux,
each with its own store; the readers run as processes of their own while the screens poll.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_run import status_json, wait_for
from tests.test_watch import (
    agent_pid,
    manager_gone,
    open_app,
    release,
    run_async,
    start_detached,
    until,
)
from worktree_swarm.ui.watch import WatchApp

CLI = [sys.executable, "-m", "worktree_swarm.cli"]


def cli(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in a process of its own (never in this one, whose screens must go on)."""
    return subprocess.run(
        [*CLI, *args], cwd=repo, capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def following(repo: Path, task: str) -> subprocess.Popen[str]:
    """`swarm logs -f TASK`, running on."""
    return subprocess.Popen(
        [*CLI, "logs", "-f", task], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def log_text(app: WatchApp) -> str:
    return "\n".join(app.query_one("#log-view").lines)


class Tmux:
    """A real `swarm watch` in a tmux session of its own."""

    def __init__(self, repo: Path, tmp_path: Path) -> None:
        self.tmux = ["tmux", "-S", str(tmp_path / "tmux.sock")]
        self.session = f"swarm-watch-{tmp_path.name}"
        # Its exit status written down by the shell: tmux's own (`pane_dead_status`) is at
        # times never filled in for a pane that died (tmux 3.3a).
        self.status = tmp_path / "watch.status"
        cmd = f"cd {repo} && {' '.join(CLI)} watch; echo $? > {self.status}"
        self._run("new-session", "-d", "-s", self.session, "-x", "160", "-y", "40", cmd)
        self._run("set-option", "-t", self.session, "remain-on-exit", "on")

    def _run(self, *args: str) -> str:
        return subprocess.run(
            [*self.tmux, *args], capture_output=True, text=True, check=False
        ).stdout

    def screen(self) -> str:
        return self._run("capture-pane", "-p", "-t", self.session)

    def pane(self, field: str) -> str:
        return self._run("display-message", "-p", "-t", self.session, f"#{{{field}}}").strip()

    def press(self, key: str) -> None:
        self._run("send-keys", "-t", self.session, key)

    def close(self) -> None:
        self._run("kill-server")


@pytest.mark.long
def test_two_watches_status_and_logs_at_once_block_neither_each_other_nor_the_run(
    repo: Path, write_agent: Callable[[str], list[str]], tmp_path: Path
) -> None:
    gate = start_detached(repo, write_agent, ["alpha", "beta"])
    tmux = Tmux(repo, tmp_path)
    follow: subprocess.Popen[str] | None = None
    try:
        first, first_store = open_app(repo)
        second, second_store = open_app(repo)
    except BaseException:
        tmux.close()
        release(repo, gate)
        raise

    async def drive() -> None:
        nonlocal follow
        async with first.run_test(size=(140, 40)) as one, second.run_test(size=(140, 40)) as two:
            await until(
                one,
                lambda: all(agent_pid(first_store, first.run_id, t) for t in ("alpha", "beta")),
                "two agents",
            )
            await until(
                one,
                lambda: all("[agent] started" in log_text(app) for app in (first, second)),
                "the log line on both screens",
            )
            await until(two, lambda: "running" in tmux.screen(), "the tmux screen's table")
            # Readers of their own, while all three screens poll the store.
            status = await asyncio.to_thread(cli, repo, "status", "--json")
            assert status.returncode == 0, status.stderr
            logs = await asyncio.to_thread(cli, repo, "logs", "alpha")
            assert (logs.returncode, logs.stdout) == (0, "[agent] started\n"), logs.stderr
            follow = following(repo, "beta")
            # One screen stops alpha; the other two see it, beta runs on.
            assert first.selected == "alpha"
            await one.press("s")
            await until(two, lambda: second.rows["alpha"].state == "stopped", "alpha stopped")
            await until(two, lambda: "stopped" in tmux.screen(), "alpha stopped in tmux")
            assert second.rows["beta"].state == "running"
            # The run goes on to its end under all of them.
            gate.write_text("go")
            for app, pilot in ((first, one), (second, two)):
                await until(pilot, lambda a=app: a.rows["beta"].state == "done", "beta done", 90)
            await until(one, lambda: manager_gone(repo), "the manager to end")
            out, err = await asyncio.to_thread(follow.communicate, timeout=60)
            assert follow.returncode == 0, err
            assert out == "[agent] started\n[agent] finished\n"
            assert any("stop" in m for m in first.messages), first.messages
            assert second.messages == []  # nothing went wrong on the screen that only watched

    try:
        run_async(drive)
        wait_for(lambda: "done" in tmux.screen(), what="beta done in tmux")
        tmux.press("q")
        wait_for(
            lambda: tmux.status.exists() and tmux.status.read_text().endswith("\n"),
            what="the tmux watch to quit",
        )
        assert tmux.status.read_text() == "0\n"
    finally:
        if follow is not None and follow.poll() is None:
            follow.kill()
            follow.wait()
        tmux.close()
        release(repo, gate)
        first_store.close()
        second_store.close()
    rows = status_json(repo)
    assert {t: r["state"] for t, r in rows.items()} == {"alpha": "stopped", "beta": "done"}
