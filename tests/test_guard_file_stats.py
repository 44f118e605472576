"""The change test's stat of git files, taken again only where a watch told of a change."""

from __future__ import annotations

import mmap
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_inotify import lose_events
from worktree_swarm.guard import file_stats
from worktree_swarm.guard.file_stats import FileStats, look
from worktree_swarm.guard.surface_entry import Entry
from worktree_swarm.guard.worktree_configs import WorktreeConfigs


@pytest.fixture
def admin(tmp_path: Path) -> Path:
    """An admin dir with an index and a HEAD, as a linked worktree's."""
    where = tmp_path / "common" / "worktrees" / "t0"
    where.mkdir(parents=True)
    (where / "index").write_bytes(b"DIRC" + bytes(60))
    (where / "HEAD").write_text("ref: refs/heads/swarm/t0\n")
    return where


def stats_of(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths `os.stat` and `os.lstat` are called for from now on (each call still made)."""
    looked: list[str] = []
    real_stat, real_lstat = os.stat, os.lstat

    def spied_stat(path: str | Path, **kwargs: object) -> os.stat_result:
        looked.append(os.fspath(path))
        return real_stat(path, **kwargs)  # type: ignore[arg-type]

    def spied_lstat(path: str | Path, **kwargs: object) -> os.stat_result:
        looked.append(os.fspath(path))
        return real_lstat(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", spied_stat)
    monkeypatch.setattr(os, "lstat", spied_lstat)
    return looked


def test_unchanged_files_are_not_looked_at_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_stats, "FULL_EVERY", 3600.0)  # no full pass but when asked
    stats = FileStats()
    files = []
    for i in range(40):
        where = tmp_path / "common" / "worktrees" / f"t{i}"
        where.mkdir(parents=True)
        (where / "index").write_text(f"index {i}\n")
        files += [f"{where}/index", f"{where}/HEAD"]  # HEAD: not there
    stats.refresh()
    first = [stats.stat(f) for f in files]
    assert first == [look(f) for f in files]
    looked = stats_of(monkeypatch)
    for _ in range(3):
        stats.refresh()
        assert [stats.stat(f) for f in files] == first
    assert looked == []
    (tmp_path / "common" / "worktrees" / "t3" / "index").write_text("index 3\n")  # a new ctime
    (tmp_path / "common" / "worktrees" / "t5" / "HEAD").write_text("ref: refs/heads/x\n")
    stats.refresh()
    now = [stats.stat(f) for f in files]
    assert set(looked) == {files[6], files[11]}  # those two only (an lstat and a stat each)
    assert now == [look(f) for f in files]
    looked.clear()
    stats.refresh()
    now = [stats.stat(f, fresh=True) for f in files]  # a full pass: every file looked at, once
    assert sorted(looked) == sorted(files)
    assert now == [look(f) for f in files]


def changes(admin: Path, tmp_path: Path) -> list[tuple[str, Callable[[], None]]]:
    """Writes to the index that a stat shows, each made a way the guard's watch must see."""
    index = admin / "index"

    def same_bytes_time_set_back() -> None:
        before = index.stat()
        index.write_bytes(index.read_bytes())
        os.utime(index, ns=(before.st_atime_ns, before.st_mtime_ns))

    def through_another_name() -> None:
        other = tmp_path / "other-name"
        other.unlink(missing_ok=True)
        os.link(index, other)
        with other.open("r+b") as out:
            out.write(b"X")

    def renamed_over() -> None:  # as git writes it
        (admin / "index.lock").write_bytes(b"DIRC" + bytes(61))
        (admin / "index.lock").rename(index)

    def removed() -> None:
        index.unlink()

    def made_again() -> None:
        index.write_bytes(b"DIRC")

    def admin_dir_swapped() -> None:  # another admin dir at its path, the same sizes and times
        twin = admin.with_name("twin")
        shutil.copytree(admin, twin, copy_function=shutil.copy2)
        admin.rename(admin.with_name("old"))
        twin.rename(admin)

    def a_directory_above_swapped() -> None:
        common = admin.parent.parent
        twin = common.with_name("common-twin")
        shutil.copytree(common, twin, copy_function=shutil.copy2, symlinks=True)
        common.rename(common.with_name("common-old"))
        twin.rename(common)

    def chmod() -> None:
        index.chmod(0o600)

    return [
        ("same bytes, time set back", same_bytes_time_set_back),
        ("through another name", through_another_name),
        ("renamed over", renamed_over),
        ("chmod", chmod),
        ("removed", removed),
        ("made again", made_again),
        ("admin dir swapped", admin_dir_swapped),
        ("a directory above swapped", a_directory_above_swapped),
        ("removed from the directories swapped in", removed),
        ("made again there", made_again),  # the watches now on those, not the old ones
    ]


def test_every_change_a_stat_shows_is_seen_at_the_next_pass(admin: Path, tmp_path: Path) -> None:
    stats = FileStats()
    files = [f"{admin}/index", f"{admin}/HEAD"]
    stats.refresh()
    kept = [stats.stat(f) for f in files]
    for what, change in changes(admin, tmp_path):
        change()
        stats.refresh()
        now = [stats.stat(f) for f in files]
        assert now == [look(f) for f in files], what
        assert now != kept, what
        kept = now


def test_a_write_through_a_shared_map_is_seen_by_the_next_full_pass(admin: Path) -> None:
    stats = FileStats()
    index = f"{admin}/index"
    stats.refresh()
    before = stats.stat(index)
    fd = os.open(index, os.O_RDWR)
    mapped = mmap.mmap(fd, 0)
    os.close(fd)
    try:
        stats.refresh()
        assert stats.stat(index) == before
        os.utime(index, ns=(0, 0))  # the map's write below stamps the times anew
        stats.refresh()
        before = stats.stat(index)
        mapped[0:1] = b"X"
        mapped.flush()
        stats.refresh()
        assert stats.stat(index, fresh=True) == look(index) != before  # a full pass
    finally:
        mapped.close()


def test_without_inotify_every_file_is_looked_at_every_time(
    admin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stats = FileStats(watch=False)
    stats.refresh()
    index = f"{admin}/index"
    assert stats.stat(index) == look(index)
    looked = stats_of(monkeypatch)
    stats.refresh()
    assert stats.stat(index) == look(index)
    assert looked.count(index) == 2  # the kept one's and the test's own


def test_a_name_known_there_is_looked_for_again_only_once_it_may_have_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stats = FileStats()
    tops = [tmp_path / "root" / f"t{i}" for i in range(10)]
    for top in tops:
        top.mkdir(parents=True)
        (top / ".git").write_text("gitdir: elsewhere\n")
    links = [f"{top}/.git" for top in tops]
    assert [stats.there(p) for p in links] == [True] * 10
    looked = stats_of(monkeypatch)
    stats.refresh()
    assert [stats.there(p) for p in links] == [True] * 10
    assert looked == []
    (tops[1] / ".git").unlink()
    (tops[2] / ".git").rename(tops[2] / "aside")
    (tops[3] / ".git").write_text("gitdir: another\n")  # written: still there
    stats.refresh()
    assert [stats.there(p) for p in links] == [i not in (1, 2) for i in range(10)]
    shutil.rmtree(tops[4])
    moved = tmp_path / "moved"
    (tmp_path / "root").rename(moved)  # every one gone from its path at once
    (tmp_path / "root").mkdir()
    tops[5].mkdir()
    (tops[5] / ".git").write_text("gitdir: elsewhere\n")
    stats.refresh()
    now = [True if i == 5 else None for i in range(10)]  # None: no directory to watch there
    assert [stats.there(p) for p in links] == now
    assert [stats.there(p, fresh=True) for p in links] == now
    (tops[5] / ".git").unlink()  # in the directory made since: its own watch tells
    stats.refresh()
    assert stats.there(links[5]) is False


def test_events_lost_let_go_of_everything_kept_and_nothing_fails(tmp_path: Path) -> None:
    # The kernel's queue overflowed (an agent made more names than it holds between two
    # passes): letting go of a directory with those below it, the next one, already let go
    # of, raised KeyError and took the guard's scans down for the rest of the run.
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 100_000:
        pytest.skip("an inotify queue too long to overflow in a test")
    stats = FileStats()
    worktrees = [tmp_path / "repo.swarm" / name for name in ("a", "b")]
    for top in worktrees:
        top.mkdir(parents=True)
        (top / ".git").write_text("gitdir: elsewhere\n")
        assert stats.stat(f"{top}/.git") == look(f"{top}/.git")
    for i in range(limit + 100):  # each made in a watched directory: more events than fit
        (worktrees[1] / f"f{i}").touch()
    (worktrees[0] / ".git").write_text("gitdir: changed\n")  # its event lost with the rest
    stats.refresh()
    assert stats.stat(f"{worktrees[0]}/.git") == look(f"{worktrees[0]}/.git")
    assert stats.kept_at(f"{worktrees[0]}/.git") is not None  # kept again, watched anew


def test_events_that_cannot_be_read_let_go_of_every_stat_kept(admin: Path) -> None:
    stats = FileStats()
    index = f"{admin}/index"
    kept = stats.stat(index)
    assert stats.kept_at(index) is not None
    lose_events(stats._ino)
    (admin / "index").write_bytes(b"DIRC" + bytes(61))  # its event lost
    stats.refresh()
    assert stats.kept_at(index) is None  # looked at every time: no watch can be made now
    assert stats.stat(index) == look(index) != kept


def test_the_last_read_of_a_config_worktree_reads_what_a_map_still_open_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A write through a shared map raises no event: the guard's last scan read the entry it
    # kept, and a `core.fsmonitor` written so within seconds of the end stayed.
    monkeypatch.setattr(file_stats, "FULL_EVERY", 3600.0)  # no full pass but the last
    worktrees = tmp_path / "common" / "worktrees"
    (worktrees / "t0").mkdir(parents=True)
    config = worktrees / "t0" / "config.worktree"
    config.write_bytes(b"[core]\n\tsparseCheckout = true\n")
    configs = WorktreeConfigs()

    def read() -> list[bytes]:
        listed = [p for p in configs.to_read(str(worktrees)) if p.endswith("config.worktree")]
        entries = [configs.entry(p, lambda p=p: Entry(kind="file", data=Path(p).read_bytes()))
                   for p in listed]  # fmt: skip
        return [e.data for e in entries if e is not None]

    assert read() == [config.read_bytes()]
    fd = os.open(config, os.O_RDWR)
    mapped = mmap.mmap(fd, 0)
    os.close(fd)
    try:
        planted = b"[core]\n\tfsmonitor=touch /x #\n"[: len(mapped)].ljust(len(mapped), b"#")
        mapped[:] = planted
        mapped.flush()
        configs.look_afresh()
        assert read() == [planted]
    finally:
        mapped.close()
        configs.close()


def test_a_directory_reached_again_by_another_path_keeps_telling_of_names_made(
    tmp_path: Path,
) -> None:
    # Watched again for itself alone through a symlink above it, the directory's watch lost
    # the names made in it: a file made where one was known absent stayed absent.
    (tmp_path / "real" / "d" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    stats = FileStats()
    packed = f"{tmp_path}/real/d/packed-refs"
    assert stats.stat(packed) is None
    assert stats.absent(packed)
    stats.stat(f"{tmp_path}/link/d/sub/x")  # its directories by the other path
    Path(packed).write_text("planted\n")
    stats.refresh()
    assert not stats.absent(packed)
    assert stats.stat(packed) == look(packed)
