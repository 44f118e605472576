"""A planted line written through a shared memory map, into a page already written.

The first write into a mapped page stamps the file's mtime and ctime; later ones into the same
page stamp nothing until the page is written back. An agent that writes a byte of your
``.git/config`` back as it was, lets the guard read the file (unchanged), then writes a
``core.fsmonitor`` into that page leaves a file whose stat data the guard kept with its old
bytes. Real repositories, a real map, the guard's own checks.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import git, make_repo
from tests.test_guard_objects import me
from tests.test_run import wait_for
from worktree_swarm.git.repo import open_repo
from worktree_swarm.guard import known_bytes
from worktree_swarm.guard.model import Violation
from worktree_swarm.guard.watcher import Guard
from worktree_swarm.infra.proctree import identity_of

OLD = b"\tlogallrefupdates = true\n"
PLANTED = b"\tfsmonitor = touch ran".ljust(len(OLD) - 1) + b"\n"  # the same size


def _signature(path: Path) -> tuple[int, int, int, int]:
    info = path.stat()
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


@contextmanager
def _dirtied(config: Path) -> Iterator[mmap.mmap]:
    """*config* mapped shared, its first page written as it was (its times stamped now)."""
    fd = os.open(config, os.O_RDWR)
    mapped = mmap.mmap(fd, 0)
    os.close(fd)
    try:
        mapped[0:1] = mapped[0:1]
        yield mapped
    finally:
        mapped.close()


def _plant(config: Path, mapped: mmap.mmap) -> None:
    """Write the `core.fsmonitor` into the page already written: the stat data stays."""
    before = _signature(config)
    at = mapped.find(OLD)
    assert at >= 0
    mapped[at : at + len(OLD)] = PLANTED
    assert _signature(config) == before  # (else the page went back to disk meanwhile)


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # A file changed within RACY_NS before a read is read every time; here: none is.
    monkeypatch.setattr(known_bytes, "RACY_NS", 0)
    made = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    assert OLD in (made / ".git" / "config").read_bytes()
    return made


def _read_once_unchanged(guard: Guard, config: Path) -> None:
    """The guard reads *config* as it is (the same bytes) once its ctime is in the past."""
    stamped = config.stat().st_ctime_ns
    wait_for(lambda: time.time_ns() > stamped, what="the clock past the file's ctime")
    guard.after_attempt()
    assert guard.drain() == []


def _planted_is_put_back(repo: Path, found: list[Violation]) -> None:
    assert [(v.git_files, v.suspects, v.restored) for v in found] == [
        (("config",), ("rogue",), True)
    ]
    assert b"fsmonitor" not in (repo / ".git" / "config").read_bytes()
    git(repo, "status")
    assert not (repo / "ran").exists()


def test_a_config_planted_through_a_map_into_a_written_page_is_put_back_after_the_attempt(
    repo: Path, tmp_path: Path
) -> None:
    # The check after the attempt read the bytes it kept for that stat: the run ended `done`,
    # the `core.fsmonitor` in your config ran with your next `git status`.
    config = repo / ".git" / "config"
    guard = Guard(open_repo(repo), work_dir=tmp_path / "g", restore=True)
    guard.start()
    try:
        guard.agent_started("rogue", me())
        with _dirtied(config) as mapped:
            _read_once_unchanged(guard, config)
            _plant(config, mapped)
        guard.after_attempt()
        _planted_is_put_back(repo, guard.drain())
    finally:
        guard.close()
        guard.scan()


def test_a_config_planted_through_a_map_into_a_written_page_is_put_back_by_the_last_scan(
    repo: Path, tmp_path: Path
) -> None:
    config = repo / ".git" / "config"
    guard = Guard(open_repo(repo), work_dir=tmp_path / "g", restore=True)
    guard.start()
    guard.agent_started("rogue", me())
    with _dirtied(config) as mapped:
        _read_once_unchanged(guard, config)
        _plant(config, mapped)
        guard.close()
        found = guard.scan()  # the last scan, the map still open
    _planted_is_put_back(repo, found)


@pytest.mark.parametrize("by", ["you", "other"])
def test_another_git_file_changed_beside_a_mapped_plant_in_the_last_scan_is_judged_alone(
    repo: Path, tmp_path: Path, by: str
) -> None:
    # The plant, which no stat told of, is blamed on the run's agents since the file was last
    # read, ended or not. Another of git's files changed after the agent ended is judged by
    # who ran since the scan before: made while no agent ran, the user's (kept, not put back
    # with the plant); made by another agent, that one's alone.
    config = repo / ".git" / "config"
    exclude = repo / ".git" / "info" / "exclude"
    theirs = exclude.read_text()
    guard = Guard(open_repo(repo), work_dir=tmp_path / "g", restore=True)
    guard.start()
    guard.agent_started("rogue", me())
    with _dirtied(config) as mapped:
        _read_once_unchanged(guard, config)
        _plant(config, mapped)
        guard.agent_ended("rogue")
        assert guard.scan() == []  # by its stat: unchanged; the window now past the agent
        with contextlib.ExitStack() as stack:
            if by == "other":  # alive from past the plant's mtime and its slack (1 s) on
                stamped = config.stat().st_mtime
                wait_for(lambda: time.time() > stamped + 1.5, what="the clock past the plant")
                other = stack.enter_context(subprocess.Popen(["sleep", "600"], cwd=tmp_path))
                stack.callback(other.kill)
                identity = identity_of(other.pid)
                assert identity is not None
                guard.agent_started("other", identity)
            exclude.write_text(theirs + "mine.log\n")
            guard.close()
            found = guard.scan()  # the last scan, the map still open
    if by == "you":
        _planted_is_put_back(repo, found)
        assert exclude.read_text() == theirs + "mine.log\n"
        return
    assert [(v.git_files, v.suspects, v.restored) for v in found] == [
        (("config",), ("rogue",), True),
        (("info/exclude",), ("other",), True),
    ]
    assert b"fsmonitor" not in config.read_bytes()
    assert exclude.read_text() == theirs
