"""Faults in the manager itself: a full disk is waited out, a crashed thread leaves a traceback.

The full disk is real: writes go to ``/dev/full`` (every write fails with ENOSPC) and SQLite
is capped with ``max_page_count`` (it then reports "database or disk is full").
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from worktree_swarm.core.errors import CommandError
from worktree_swarm.infra import faults
from worktree_swarm.infra.proc import run

needs_dev_full = pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")


def write_to_full_device() -> OSError:
    """The error a write to a full disk raises."""
    try:
        with open("/dev/full", "wb") as f:  # noqa: PTH123 - the device, not a path to build on
            f.write(b"x")
    except OSError as exc:
        return exc
    raise AssertionError("/dev/full took a write")


def full_database(tmp_path: Path) -> sqlite3.OperationalError:
    """The error SQLite raises when its database cannot grow."""
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("CREATE TABLE t (x BLOB)")
    db.execute("PRAGMA max_page_count = 2")
    try:
        db.execute("INSERT INTO t VALUES (?)", (b"x" * 65536,))
    except sqlite3.OperationalError as exc:
        return exc
    finally:
        db.close()
    raise AssertionError("the capped database grew")


@needs_dev_full
def test_a_full_disk_is_told_apart_from_bugs_and_other_failures(tmp_path: Path) -> None:
    assert faults.is_full(write_to_full_device())
    assert faults.is_full(full_database(tmp_path))
    git_full = CommandError(["git", "commit"], 128, "fatal: cannot write: No space left on device")
    assert faults.is_full(git_full)
    # Git's index and pack writer says it its own way.
    index = "fatal: sha1 file '.git/worktrees/b/index.lock' write error. Out of diskspace"
    assert faults.is_full(CommandError(["git", "add"], 128, index))
    # A git that failed for another reason, a busy database, a refused write: not full.
    out = run(["git", "rev-parse", "HEAD"], cwd=tmp_path, check=False)
    assert not faults.is_full(CommandError(["git", "rev-parse"], out.returncode, out.stderr))
    assert not faults.is_full(sqlite3.OperationalError("database is locked"))
    assert not faults.is_full(PermissionError(13, "Permission denied"))
    assert not faults.is_full(ValueError("a bug"))


@needs_dev_full
def test_the_full_disk_line_names_what_and_what_to_do(tmp_path: Path) -> None:
    line = faults.full_message("the state database", write_to_full_device())
    assert line == (
        "cannot write the state database: No space left on device; "
        "free some space, then run `swarm resume`"
    )
    git_full = CommandError(["git", "commit", "-q"], 128, "No space left on device")
    assert faults.full_message("a checkpoint", git_full) == (
        "cannot write a checkpoint: `git commit`: No space left on device; "
        "free some space, then run `swarm resume`"
    )
    options = ["git", "-c", "rerere.enabled=false", "reset"]
    past_options = CommandError(options, 128, "Out of diskspace")
    assert faults.why(past_options) == "`git reset`: No space left on device"
    db = faults.full_message("the store", full_database(tmp_path))
    assert db.startswith("cannot write the store: database or disk is full;")


@needs_dev_full
def test_a_write_waits_while_the_disk_is_full_then_goes_through(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    paths = iter([Path("/dev/full"), Path("/dev/full"), target])
    seen: list[str | None] = []

    def write() -> int:
        return next(paths).write_bytes(b"state")

    def on_full(exc: Exception | None) -> None:
        seen.append(None if exc is None else type(exc).__name__)

    assert faults.retry_while_full(write, on_full) == len(b"state")
    assert target.read_bytes() == b"state"
    # Told twice that the disk is full, then once that it took the write.
    assert seen == ["OSError", "OSError", None]


@needs_dev_full
def test_other_failures_and_a_full_disk_nobody_waits_for_are_raised(tmp_path: Path) -> None:
    calls: list[Exception | None] = []
    with pytest.raises(FileNotFoundError):
        faults.retry_while_full(lambda: (tmp_path / "no" / "dir").write_text("x"), calls.append)
    assert calls == []
    with pytest.raises(OSError, match="No space left on device"):
        faults.retry_while_full(lambda: Path("/dev/full").write_bytes(b"x"), None)
    # A write that works at once never reports a recovery.
    assert faults.retry_while_full(lambda: 7, calls.append) == 7
    assert calls == []


@needs_dev_full
def test_a_paused_manager_says_why_in_its_pause_file_until_a_write_works(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "r1"
    stopping = threading.Event()
    stopping.set()  # a stopping manager does not sleep between retries
    pause = faults.Pause(run_dir, stopping=stopping)
    # The file has its blocks from the start: a full disk can still take the reason.
    assert pause.path.stat().st_size == 4096
    assert faults.paused_reason(run_dir) is None
    pause.wait(write_to_full_device())
    pause.wait(write_to_full_device())
    reason = "paused: the disk is full (No space left on device); retrying"
    assert faults.paused_reason(run_dir) == reason
    assert pause.path.stat().st_size == 4096  # rewritten in place, never grown
    pause.wait(None)
    assert faults.paused_reason(run_dir) is None


def test_a_missing_or_garbled_pause_file_means_not_paused(tmp_path: Path) -> None:
    assert faults.paused_reason(tmp_path / "never") is None
    (tmp_path / faults.PAUSE_FILE).write_text("{not json")
    assert faults.paused_reason(tmp_path) is None
    (tmp_path / faults.PAUSE_FILE).write_text('["paused"]')
    assert faults.paused_reason(tmp_path) is None
    (tmp_path / faults.PAUSE_FILE).write_text('{"reason": 3}')
    assert faults.paused_reason(tmp_path) is None


def test_a_pause_file_that_cannot_be_made_only_loses_the_reason(tmp_path: Path) -> None:
    blocker = tmp_path / "runs"
    blocker.write_text("a file where the run's directory goes")
    stopping = threading.Event()
    stopping.set()
    pause = faults.Pause(blocker / "r1", stopping=stopping)
    pause.wait(OSError(28, "No space left on device"))  # nowhere to write: no crash
    assert faults.paused_reason(blocker / "r1") is None


def test_an_exception_is_appended_to_the_manager_log_with_its_traceback(tmp_path: Path) -> None:
    log = tmp_path / "run" / faults.MANAGER_LOG
    try:
        {}["missing"]
    except KeyError:
        assert faults.record_exception(log, "the run loop")
    try:
        int("second")
    except ValueError:
        faults.record_exception(log, "a checkpoint")
    text = log.read_text()
    assert " internal error in the run loop\nTraceback (most recent call last):" in text
    assert "KeyError: 'missing'" in text
    assert text.index("KeyError") < text.index("internal error in a checkpoint")
    assert "ValueError: invalid literal for int() with base 10: 'second'" in text


def test_a_crashed_thread_leaves_its_traceback_and_an_exiting_one_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / faults.MANAGER_LOG
    # What the manager installs at start.
    monkeypatch.setattr(threading, "excepthook", faults.thread_hook(log))

    def crash() -> None:
        raise ValueError("a bug in the watcher")

    def leave() -> None:
        raise SystemExit(0)

    for target, name in ((crash, "guard-watcher"), (leave, "quitter")):
        thread = threading.Thread(target=target, name=name)
        thread.start()
        thread.join()
    text = log.read_text()
    assert "internal error in guard-watcher\n" in text
    assert "ValueError: a bug in the watcher" in text
    assert "quitter" not in text


@needs_dev_full
def test_a_log_the_disk_refuses_goes_to_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "run"
    blocker.write_text("a file where the log's directory goes")
    try:
        Path("/dev/full").write_bytes(b"x")
    except OSError:
        # Not written: a task's reason must not point to its traceback in that log.
        assert not faults.record_exception(blocker / faults.MANAGER_LOG, "the store")
    log = blocker / faults.MANAGER_LOG
    assert capsys.readouterr().err == (
        "swarm: internal error in the store: OSError: [Errno 28] No space left on device;"
        f" cannot write it to {log}: File exists\n"
    )


# Out of file descriptors with the log still to open: a worker's error under `ulimit -n 32`.
_OUT_OF_FDS = """
import os, resource, sys
from pathlib import Path
from worktree_swarm.infra import faults
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    faults.record_exception(Path(sys.argv[1]), "swarm-t2")
for fd in held:  # given back: what runs at exit (coverage's data file) may open files again
    os.close(fd)
"""


def test_a_log_the_open_file_limit_refuses_is_one_line_on_stderr(tmp_path: Path) -> None:
    # The traceback went to the terminal, where every error is one line.
    log = tmp_path / faults.MANAGER_LOG
    done = subprocess.run(
        [sys.executable, "-c", _OUT_OF_FDS, str(log)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert (done.returncode, done.stdout) == (0, "")
    assert done.stderr == (
        "swarm: internal error in swarm-t2: OSError: [Errno 24] Too many open files: '/dev/null';"
        f" cannot write it to {log}: Too many open files, a system limit (`ulimit -n`)\n"
    )
    assert not log.exists()


def test_a_pause_reason_with_escapes_or_lines_is_shown_as_one_printable_line(
    tmp_path: Path,
) -> None:
    # The reason is an error's text (a path in it): `swarm watch` put it in its header, where an
    # OSC sequence retitled the terminal and another cleared the screen.
    (tmp_path / faults.PAUSE_FILE).write_text(
        '{"reason": "cannot write x\\u001b]0;HACKED\\u0007 \\u001b[2J\\nnext line"}'
    )
    shown = faults.paused_reason(tmp_path)
    assert shown is not None
    assert "\x1b" not in shown
    assert "HACKED" not in shown
    assert "[2J" not in shown
    assert "\n" not in shown
    assert shown.startswith("cannot write x")
