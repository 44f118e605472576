"""The notes swarm's commands leave for the guard (``.git/swarm/ref-moves``): never left half."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import git, make_repo
from worktree_swarm.git.repo import open_repo
from worktree_swarm.guard.attribution import Agents
from worktree_swarm.guard.channel import Channel
from worktree_swarm.guard.ref_moves import moving_refs
from worktree_swarm.infra import starts

SWARM = [sys.executable, "-m", "worktree_swarm.cli"]


@pytest.fixture
def holder() -> Iterator[subprocess.Popen[bytes]]:
    """A live process: it holds a pid that a killed writer's notes may name."""
    process = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                               stdin=subprocess.PIPE)  # fmt: skip
    assert process.stdin is not None
    with process.stdin:
        yield process
    process.wait()


@pytest.mark.parametrize("left", ["cut short", "whole"])
def test_doctor_removes_a_note_being_written_by_a_writer_gone_since_its_pid_reused(
    tmp_path: Path, holder: subprocess.Popen[bytes], left: str
) -> None:
    # A command killed while it wrote its note aside (or whose rename failed) left
    # `<pid>-<token>.json.tmp`; its pid is now another process's. A note being written by a
    # live command (this one) is left alone.
    repo = make_repo(tmp_path / "repo")
    notes = repo / ".git" / "swarm" / "ref-moves"
    notes.mkdir(parents=True)
    started = starts.start_time(holder.pid)
    assert started is not None
    whole = {"pid": holder.pid, "started": started - 3600, "moves": [], "done": False}
    text = json.dumps(whole)
    stale = notes / f"{holder.pid}-0badc0de.json.tmp"
    stale.write_text(text if left == "whole" else text[:20])
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))  # written by the pid's former process
    live = notes / f"{os.getpid()}-600dc0de.json.tmp"
    live.write_text(text[:20])

    found = json.loads(_swarm(repo, "doctor", "--json"))["findings"]
    assert [f["target"] for f in found if f["action"] == "forget_ref_moves"] == [str(stale)]
    _swarm(repo, "doctor", "--yes")
    assert sorted(notes.iterdir()) == [live]


def test_a_note_that_cannot_be_renamed_into_place_leaves_no_copy_aside(tmp_path: Path) -> None:
    # The rename over the note fails (here: a directory in its place): the copy written aside
    # is removed, not left for doctor to keep while the pid is reused.
    repo = make_repo(tmp_path / "repo")
    opened = open_repo(repo)
    with pytest.raises(IsADirectoryError), moving_refs(opened, []) as moves:  # noqa: PT012
        moves.path.unlink()
        moves.path.mkdir()
        moves.announce("refs/heads/main")
    assert list(moves.path.parent.iterdir()) == [moves.path]


@pytest.mark.parametrize("fails", [False, True], ids=["moved", "failed"])
def test_a_directory_where_a_note_goes_is_left_and_the_commands_own_result_stands(
    tmp_path: Path, fails: bool
) -> None:
    # Directories made at the names of a note's verdict and of a guard's mark: removing the
    # notes on the way out raised IsADirectoryError, in place of the command's own result.
    repo = make_repo(tmp_path / "repo")
    opened = open_repo(repo)
    moved = git(repo, "commit-tree", "-p", "main", "-m", "next", "main^{tree}")

    def move() -> None:
        with moving_refs(opened, ["refs/heads/main"]) as moves:
            for suffix in (".verdict", ".heard-1-0badc0de"):
                made = moves.path.with_name(moves.path.name + suffix)
                made.mkdir()
                (made / "yours").write_text("kept\n")
            git(repo, "update-ref", "refs/heads/main", moved)
            moves.moved("refs/heads/main", moved)
            if fails:
                raise ValueError("the command's own failure")

    if fails:
        with pytest.raises(ValueError, match="the command's own failure"):
            move()
    else:
        move()
    assert git(repo, "rev-parse", "main") == moved
    notes = opened.state_dir / "ref-moves"
    assert sorted(p.name.split(".", 1)[1] for p in notes.iterdir()) == [
        "json.heard-1-0badc0de", "json.verdict",
    ]  # fmt: skip
    assert all((p / "yours").read_text() == "kept\n" for p in notes.iterdir())


def test_the_guard_forgets_a_killed_writers_copy_aside_with_its_note(tmp_path: Path) -> None:
    # Killed while it wrote its note anew: its note and the copy aside stay. The guard, finding
    # the writer gone, removes both.
    repo = make_repo(tmp_path / "repo")
    opened = open_repo(repo)
    notes = opened.state_dir / "ref-moves"
    notes.mkdir(parents=True)
    gone_pid, gone_started = _ended_process()
    note = notes / f"{gone_pid}-0badc0de.json"
    text = json.dumps({"pid": gone_pid, "started": gone_started, "moves": [], "done": False})
    note.write_text(text)
    note.with_name(note.name + ".tmp").write_text(text[:20])

    _, refused = Channel(opened.state_dir, Agents()).read()
    assert refused == [f"ignored {note}: its writer (pid {gone_pid}) is gone"]
    assert list(notes.iterdir()) == []


def _ended_process() -> tuple[int, float | None]:
    """The pid and start time of a process that has ended (a writer that is gone)."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    started = starts.start_time(gone.pid)
    gone.wait()
    return gone.pid, started


def _swarm(repo: Path, *args: str) -> str:
    out = subprocess.run([*SWARM, *args], cwd=repo, capture_output=True, text=True, check=False)
    assert out.returncode in {0, 1}, out.stdout + out.stderr
    return out.stdout


def test_doctor_removes_a_dead_writers_note_and_leaves_a_directory_at_its_verdicts_name(
    tmp_path: Path,
) -> None:
    # A directory at `<note>.verdict`: removing the note's files stopped there, the note's
    # fix failed with IsADirectoryError, and what came after it in the note's name was kept.
    repo = make_repo(tmp_path / "repo")
    notes = repo / ".git" / "swarm" / "ref-moves"
    notes.mkdir(parents=True)
    gone_pid, gone_started = _ended_process()
    note = notes / f"{gone_pid}-0badc0de.json"
    note.write_text(json.dumps({"pid": gone_pid, "started": gone_started, "moves": []}))
    verdict = note.with_name(note.name + ".verdict")
    verdict.mkdir()
    (verdict / "yours").write_text("kept\n")
    heard = note.with_name(note.name + ".heard-1-0badc0de")
    heard.write_text("")

    out = subprocess.run(
        [*SWARM, "doctor", "--yes", "--json"], cwd=repo, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    found = [r for r in json.loads(out.stdout)["findings"] if r["action"] == "forget_ref_moves"]
    assert [(r["target"], r["fixed"], r["result"]) for r in found] == [
        (str(note), True, "removed")
    ]  # the directory is no note of a writer's: nothing to remove
    assert sorted(notes.iterdir()) == [verdict]
    assert (verdict / "yours").read_text() == "kept\n"


def test_a_directory_at_a_guards_mark_is_not_taken_for_its_hearing(tmp_path: Path) -> None:
    # Anything at the mark's name was taken as heard: the writer went on without looking at the
    # guard that listens (a live one not waited for). Here it is gone: looked at, its mark goes.
    repo = make_repo(tmp_path / "repo")
    opened = open_repo(repo)
    notes = opened.state_dir / "ref-moves"
    notes.mkdir(parents=True)
    gone_pid, gone_started = _ended_process()
    listener = notes / f"{gone_pid}-0badc0de.listening"
    listener.write_text(json.dumps({"pid": gone_pid, "started": gone_started}))
    moved = git(repo, "commit-tree", "-p", "main", "-m", "next", "main^{tree}")
    with moving_refs(opened, ["refs/heads/main"]) as moves:
        heard = moves.path.with_name(f"{moves.path.name}.heard-{gone_pid}-0badc0de")
        heard.mkdir()
        git(repo, "update-ref", "refs/heads/main", moved)
        moves.moved("refs/heads/main", moved)
    assert not listener.exists()
    assert sorted(notes.iterdir()) == [heard]  # left as it is
