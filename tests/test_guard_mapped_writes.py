"""A planted line written through a shared memory map, into a page already written.

The first write into a mapped page stamps the file's mtime and ctime; later ones into the same
page stamp nothing until the page is written back. An agent that writes a byte of your
``.git/config`` back as it was, lets the guard read the file (unchanged), then writes a
``core.fsmonitor`` into that page leaves a file whose stat data the guard kept with its old
bytes. Real repositories, a real map, the guard's own checks.
"""

from __future__ import annotations

import mmap
import os
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
