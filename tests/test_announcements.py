"""How the guard reads a ref-move announcement and judges its writer, on the awkward paths."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from worktree_swarm.guard import announcements


def test_a_writer_gone_or_unreadable_is_not_taken_for_swarm(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    process = psutil.Process(gone.pid)
    gone.wait()  # reaped: its command line can no longer be read
    assert announcements.swarm_command(process) is False
    # A program called `swarm` whose script is not there to read (`exec -a swarm`): not swarm.
    named = subprocess.Popen(["bash", "-c", "exec -a swarm sleep 30"], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while psutil.Process(named.pid).cmdline()[:1] != ["swarm"]:  # once bash has exec'd
            assert time.monotonic() < deadline, "sleep never ran as swarm"
            time.sleep(0.01)
        assert announcements.swarm_command(psutil.Process(named.pid)) is False
    finally:
        named.kill()
        named.wait()


def test_an_announcement_moved_or_unparsable_is_nobodys(tmp_path: Path) -> None:
    note = tmp_path / "note.json"
    note.write_text("{}")
    read = note.lstat()
    assert announcements.still_at(note, read)
    note.unlink()
    assert not announcements.still_at(note, read)  # gone: not the file that was read
    for text in (b"not json", b"{}", b'{"pid": "x", "started": 1, "moves": [], "done": false}'):
        assert announcements.parse_announcement(text) is None


def test_a_writer_that_ended_holds_no_announcement(tmp_path: Path) -> None:
    note = tmp_path / "note.json"
    note.write_text("{}")
    with note.open() as held:
        me = psutil.Process(os.getpid())
        assert announcements.holds(me, os.fstat(held.fileno()))
    ended = subprocess.Popen(["true"])
    process = psutil.Process(ended.pid)
    ended.wait()
    with pytest.raises(psutil.NoSuchProcess):
        announcements.holds(process, note.lstat())
