"""The inotify instance the guard's looks share: real watches, real events, a closed one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worktree_swarm.infra import inotify


def test_a_name_made_in_a_watched_directory_is_read_once(tmp_path: Path) -> None:
    ino = inotify.Inotify()
    try:
        wd = ino.add_names(tmp_path)
        (tmp_path / "made").touch()
        events = ino.read_or_lost()
        assert [(e.wd, e.name) for e in events] == [(wd, "made")]
        assert events[0].mask & inotify.CREATE
        assert ino.read_or_lost() == []
        ino.remove(wd)
        ino.remove(wd)  # gone already: nothing to do
        (tmp_path / "made later").touch()
        assert [e.mask & inotify.CREATE for e in ino.read_or_lost()] == [0]  # IGNORED alone
    finally:
        ino.close()


def test_a_closed_instance_watches_nothing_and_reads_nothing(tmp_path: Path) -> None:
    ino = inotify.Inotify()
    ino.close()
    for add in (ino.add, ino.add_names, ino.add_writes, ino.add_file):
        with pytest.raises(OSError, match="inotify closed"):
            add(tmp_path)
    with pytest.raises(OSError, match="inotify closed"):
        ino.add_dir(tmp_path, entries=True)
    ino.remove(1)  # nothing to do
    assert ino.read() == ino.read_or_lost() == []


def lose_events(ino: inotify.Inotify | None) -> None:
    """Have every read of *ino* fail from now on (its events lost), and every watch added.

    Its descriptor is made a directory's under it: the only way to have the kernel refuse a
    read here.
    """
    if ino is None:
        pytest.skip("no inotify here")
    directory = os.open("/", os.O_RDONLY)
    os.dup2(directory, ino._ino.fileno())  # type: ignore[union-attr]
    os.close(directory)


def test_events_that_cannot_be_read_are_told_as_lost(tmp_path: Path) -> None:
    # The caller hears that events were lost, and looks at everything again.
    ino = inotify.Inotify()
    ino.add_names(tmp_path)
    (tmp_path / "made").touch()
    lose_events(ino)
    try:
        events = ino.read_or_lost()
        assert [(e.wd, e.mask) for e in events] == [(-1, inotify.Q_OVERFLOW)]
    finally:
        ino.close()


def test_drain_hands_each_event_on_and_an_overflow_to_lost_alone(tmp_path: Path) -> None:
    noted: list[inotify.Event] = []
    lost: list[None] = []
    ino = inotify.Inotify()
    try:
        wd = ino.add_names(tmp_path)
        (tmp_path / "made").touch()
        inotify.drain(ino, noted.append, lambda: lost.append(None))
        assert [(e.wd, e.name) for e in noted] == [(wd, "made")]
        assert lost == []
        (tmp_path / "made again").touch()
        lose_events(ino)
        inotify.drain(ino, noted.append, lambda: lost.append(None))
        assert len(noted) == 1
        assert lost == [None]
    finally:
        ino.close()
    inotify.drain(None, noted.append, lambda: lost.append(None))  # no inotify: nothing read
    assert (len(noted), lost) == (1, [None])
