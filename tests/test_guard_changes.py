"""The guard's cheap change test: untouched places cost no git command, no write goes unseen.

Real repositories and worktrees, real writes (including ones made to look untouched: the same
size, the mtime set back), and git's own trace to count the commands the guard runs.
"""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path

import pytest

from tests.conftest import git, make_repo
from tests.test_inotify import lose_events
from worktree_swarm.core.models import ProcessIdentity
from worktree_swarm.git.repo import open_repo
from worktree_swarm.guard import attribution, file_stats
from worktree_swarm.guard.changes import Changes
from worktree_swarm.guard.model import MAIN
from worktree_swarm.guard.watcher import Guard
from worktree_swarm.infra import inotify
from worktree_swarm.infra.proctree import identity_of


def me() -> ProcessIdentity:
    """This process, as the agent that misbehaves."""
    identity = identity_of(os.getpid())
    assert identity is not None
    return identity


def sneaky_write(path: Path, data: bytes) -> None:
    """Rewrite *path* with *data* of the same size and put its mtime back."""
    before = path.stat()
    assert len(data) == before.st_size
    path.write_bytes(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_mtime_ns == before.st_mtime_ns


def finished_worktrees(guard: Guard, repo: Path, ids: list[str]) -> dict[str, Path]:
    """Worktrees of tasks that have ended: handed over to the guard's watch."""
    paths = {}
    for task in ids:
        path = repo.parent / "wt" / task
        git(repo, "worktree", "add", "-q", "-b", f"swarm/{task}", str(path))
        with guard.busy(task, path):
            (path / "work.txt").write_text(f"{task} was here\n")
            git(path, "add", "work.txt")
            git(path, "-c", "user.name=a", "-c", "user.email=a@a", "commit", "-qm", "work")
        paths[task] = path
    return paths


def git_commands(trace: Path, name: str) -> int:
    """How many `git <name>` commands git's trace recorded."""
    if not trace.exists():
        return 0
    return sum(f" cmd_name {name} " in line for line in trace.read_text().splitlines())


@pytest.fixture
def guard(tmp_path: Path) -> Guard:
    files = {"app.py": "print('v1')\n", "lib/util.py": "x = 1\n", "pkg/sub/deep/m.py": "y = 1\n"}
    repo = make_repo(tmp_path / "repo", files)
    (repo / "notes.txt").write_text("my untracked notes\n")
    watcher = Guard(open_repo(repo), work_dir=tmp_path / "g", restore=True)
    watcher.start()
    return watcher


def test_untouched_finished_worktrees_cost_no_git_command(
    guard: Guard, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    finished_worktrees(guard, guard.repo.root, [f"t{i}" for i in range(6)])
    assert guard.scan() == []  # the worktrees' own settling is behind us
    trace = tmp_path / "trace"
    monkeypatch.setenv("GIT_TRACE2", str(trace))
    for _ in range(3):
        assert guard.scan() == []
    assert git_commands(trace, "status") == 0
    assert git_commands(trace, "add") == 0  # nor the user's checkout: nothing changed there
    assert git_commands(trace, "for-each-ref") >= 3  # the refs are compared every scan


@pytest.mark.parametrize(
    "how", ["plain", "sneaky", "deep", "new directory", "moved directory", "chmod"]
)
def test_outside_write_into_a_finished_worktree_is_caught(
    guard: Guard, how: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    paths = finished_worktrees(guard, guard.repo.root, ["victim", "other"])
    assert guard.scan() == []
    victim = paths["victim"]
    if how == "moved directory":  # the user's own, while no agent runs: the new baseline
        (victim / "lib").rename(victim / "moved")
        assert guard.scan() == []
    guard.agent_started("rogue", me())
    if how == "plain":
        (victim / "work.txt").write_text("rogue\n")
    elif how == "sneaky":
        sneaky_write(victim / "app.py", b"print('v2')\n")
    elif how == "deep":
        sneaky_write(victim / "pkg" / "sub" / "deep" / "m.py", b"y = 2\n")
    elif how == "chmod":
        (victim / "app.py").chmod(0o755)
    elif how == "new directory":
        (victim / "new" / "deeper").mkdir(parents=True)
        assert guard.scan() == []  # empty directories: nothing git sees, but now watched
        (victim / "new" / "deeper" / "evil.txt").write_text("evil\n")
    else:
        sneaky_write(victim / "moved" / "util.py", b"x = 2\n")
    trace = tmp_path / "trace"
    monkeypatch.setenv("GIT_TRACE2", str(trace))
    found = guard.scan()
    assert [(v.where, v.suspects, v.restored) for v in found] == [("victim", ("rogue",), True)]
    assert (victim / "work.txt").read_text() == "victim was here\n"
    assert (victim / "app.py").read_text() == "print('v1')\n"
    assert not os.access(victim / "app.py", os.X_OK)
    assert (victim / "pkg" / "sub" / "deep" / "m.py").read_text() == "y = 1\n"
    assert not (victim / "new").exists()
    if how == "moved directory":
        assert (victim / "moved" / "util.py").read_text() == "x = 1\n"
    # The victim's (none where its baseline had changes: compared in full); "other" cost nothing.
    assert git_commands(trace, "status") == (0 if how == "moved directory" else 1)


def test_outside_write_into_the_users_checkout_keeping_size_and_mtime_is_caught(
    guard: Guard,
) -> None:
    repo = guard.repo.root
    finished_worktrees(guard, repo, ["t1"])
    assert guard.scan() == []
    guard.agent_started("rogue", me())
    sneaky_write(repo / "lib" / "util.py", b"x = 2\n")
    sneaky_write(repo / "notes.txt", b"my untracked NOTES\n")
    found = guard.scan()
    assert [(v.where, v.paths, v.restored) for v in found] == [
        (MAIN, ("lib/util.py", "notes.txt"), True)
    ]
    assert (repo / "lib" / "util.py").read_text() == "x = 1\n"
    assert (repo / "notes.txt").read_text() == "my untracked notes\n"


def test_the_last_scan_compares_the_users_checkout_in_full(guard: Guard) -> None:
    # A write through a shared memory map raises no inotify event; the last scan sees it.
    repo = guard.repo.root
    guard.agent_started("rogue", me())
    fd = os.open(repo / "app.py", os.O_RDWR)
    mapped = mmap.mmap(fd, 0)
    os.close(fd)  # the only event, before anything changed
    try:
        assert guard.scan() == []
        mapped[0:5] = b"PRINT"
        mapped.flush()
    finally:
        mapped.close()
    guard.close()
    found = guard.scan()
    assert [(v.where, v.paths, v.restored) for v in found] == [(MAIN, ("app.py",), True)]
    assert (repo / "app.py").read_text() == "print('v1')\n"


def test_without_inotify_every_place_is_compared(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    changes = Changes()
    changes.watch("main", repo, [repo / ".git" / "index"])
    assert changes.changed() == (set() if changes.live else {"main"})
    changes.close()  # as on a system without inotify, or past the watch limit
    assert not changes.live
    assert changes.changed() == {"main"}
    assert changes.changed() == {"main"}


def test_events_that_cannot_be_read_flag_every_place(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    changes = Changes()
    changes.watch("main", repo, [repo / ".git" / "index"])
    lose_events(changes._ino)
    (repo / "new.txt").write_text("new\n")  # its event lost
    assert changes.changed() == {"main"}
    assert changes.changed() == {"main"}  # polled: no watch can be made now
    assert not changes.watched("main")


def test_the_index_and_head_are_compared_by_their_stat(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    changes = Changes()
    if not changes.live:
        pytest.skip("no inotify here")
    git_dir = repo / ".git"
    changes.watch("main", repo, [git_dir / "index", git_dir / "HEAD"])
    assert changes.changed() == set()
    head = (git_dir / "HEAD").read_bytes()
    (git_dir / "HEAD").write_bytes(head)  # same bytes, same size: a new ctime
    assert changes.changed() == {"main"}
    git(repo, "rm", "-q", "--cached", "README.md")
    assert changes.changed() == {"main"}
    assert changes.changed() == set()


def test_a_file_every_place_names_is_looked_at_once_a_pass_and_flags_each_of_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_stats, "FULL_EVERY", 3600.0)  # no full pass but when asked
    repo = make_repo(tmp_path / "repo")
    changes = Changes()
    if not changes.live:
        pytest.skip("no inotify here")
    git_dir = repo / ".git"
    git(repo, "pack-refs", "--all")
    packed = git_dir / "packed-refs"
    places = []
    for i in range(5):
        place = tmp_path / f"place{i}"
        place.mkdir()
        (place / "index").write_text(f"index {i}\n")
        changes.watch(f"p{i}", place, [place / "index", packed])
        places.append(place)
    assert changes.changed() == set()
    looked: list[str] = []
    real_stat = os.stat

    def spied(path: str | Path, **kwargs: object) -> os.stat_result:
        looked.append(os.fspath(path))
        return real_stat(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", spied)
    assert changes.changed() == set()
    assert looked == []  # nothing their watches told of: not looked at again
    assert changes.changed(full=True) == set()
    assert looked.count(os.fspath(packed)) == 1
    assert sorted(looked) == sorted([os.fspath(packed), *(f"{p}/index" for p in places)])
    git(repo, "branch", "moved")
    git(repo, "pack-refs", "--all")  # packed-refs written anew: every place is flagged
    assert changes.changed() == {f"p{i}" for i in range(5)}
    (places[2] / "index").write_text("index 2\n")  # same bytes: a new ctime
    assert changes.changed() == {"p2"}
    assert changes.changed() == set()


def test_an_agent_that_ended_before_the_place_was_last_seen_untouched_is_no_suspect(
    guard: Guard,
) -> None:
    victim = finished_worktrees(guard, guard.repo.root, ["victim"])["victim"]
    guard.agent_started("early", me())
    guard.agent_ended("early")
    assert guard.scan() == []  # the worktree is untouched: seen so, after "early" ended
    guard.agent_started("rogue", me())
    sneaky_write(victim / "app.py", b"print('v2')\n")  # its old mtime names no agent
    found = guard.scan()
    assert [(v.where, v.suspects) for v in found] == [("victim", ("rogue",))]


def test_without_inotify_the_guard_compares_every_place_with_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_inotify() -> None:
        raise OSError(38, "Function not implemented")  # as on a system without it

    monkeypatch.setattr(inotify, "Inotify", no_inotify)
    repo = make_repo(tmp_path / "repo", {"app.py": "print('v1')\n"})
    guard = Guard(open_repo(repo), work_dir=tmp_path / "g", restore=True)
    guard.start()
    victim = finished_worktrees(guard, repo, ["victim"])["victim"]
    assert guard.scan() == []
    guard.agent_started("rogue", me())
    sneaky_write(victim / "app.py", b"print('v2')\n")
    sneaky_write(repo / "app.py", b"print('v3')\n")
    found = guard.scan()
    assert sorted((v.where, v.paths, v.restored) for v in found) == [
        (MAIN, ("app.py",), True),
        ("victim", ("app.py",), True),
    ]
    assert (victim / "app.py").read_text() == (repo / "app.py").read_text() == "print('v1')\n"


def test_writes_into_a_directory_git_ignores_in_the_users_checkout_cost_no_git_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(tmp_path / "repo", {".gitignore": "build/\n", "app.py": "print('v1')\n"})
    (repo / "build" / "cache").mkdir(parents=True)
    guard = Guard(open_repo(repo), work_dir=tmp_path / "g", restore=True)
    guard.start()
    trace = tmp_path / "trace"
    monkeypatch.setenv("GIT_TRACE2", str(trace))
    guard.agent_started("rogue", me())
    (repo / "build" / "cache" / "out.o").write_text("object code\n")
    assert guard.scan() == []
    assert git_commands(trace, "add") == 0
    (repo / "app.py").write_text("print('v2')\n")  # next to it: seen at once
    found = guard.scan()
    assert [(v.where, v.paths) for v in found] == [(MAIN, ("app.py",))]
    assert (repo / "build" / "cache" / "out.o").exists()


def test_a_write_through_a_hard_link_seen_by_the_last_scan_is_blamed_on_its_ended_agent(
    guard: Guard, tmp_path: Path
) -> None:
    # Written through a second name outside your checkout, no event tells of it. Seen by the
    # last scan after its agent ended, its suspects are those since git last compared your
    # checkout, not since the change test last found no event there (nobody: "the user's").
    repo = guard.repo.root
    guard.agent_started("rogue", me())
    assert guard.scan() == []
    other = tmp_path / "app.py"
    os.link(repo / "app.py", other)
    other.write_bytes(b"PRINT('v1')\n")
    guard.agent_ended("rogue")
    assert guard.scan() == []  # no event: nothing flagged the checkout
    guard.close()
    found = guard.scan()
    assert [(v.where, v.paths, v.suspects, v.restored) for v in found] == [
        (MAIN, ("app.py",), ("rogue",), True)
    ]
    assert (repo / "app.py").read_text() == "print('v1')\n"
    assert other.read_text() == "PRINT('v1')\n"  # the restore wrote a file of its own


def _past_slack(path: Path) -> None:
    """Until the clock is past the slack around *path*'s change time (which nothing can set)."""
    changed = path.lstat().st_ctime + attribution._MTIME_SLACK
    while time.time() <= changed:
        time.sleep(0.05)


def test_your_edit_no_event_told_of_made_while_no_agent_ran_stays_yours_at_the_last_scan(
    guard: Guard, tmp_path: Path
) -> None:
    # Your edit on a network file system or a bind mount raises no event either. Seen by the
    # last scan, every agent since git last compared your checkout was a suspect: the edit,
    # made before any of them started, was blamed on them and undone.
    repo = guard.repo.root
    other = tmp_path / "app.py"
    os.link(repo / "app.py", other)
    other.write_bytes(b"print('mine')\n")
    _past_slack(other)
    guard.agent_started("later", me())
    assert guard.scan() == []
    guard.agent_ended("later")
    guard.close()
    assert guard.scan() == []
    assert (repo / "app.py").read_text() == "print('mine')\n"


def test_an_agents_write_no_event_told_of_is_blamed_though_it_set_the_files_time_back(
    guard: Guard, tmp_path: Path
) -> None:
    # Its modification time can be set to one when no agent ran (`touch -d`); the time of
    # that change to the file, set by the kernel, still falls within the agent's life.
    repo = guard.repo.root
    guard.agent_started("rogue", me())
    assert guard.scan() == []
    other = tmp_path / "app.py"
    os.link(repo / "app.py", other)
    other.write_bytes(b"PRINT('v1')\n")
    os.utime(other, (0, 0))
    guard.agent_ended("rogue")
    guard.close()
    found = guard.scan()
    assert [(v.where, v.paths, v.suspects, v.restored) for v in found] == [
        (MAIN, ("app.py",), ("rogue",), True)
    ]
    assert (repo / "app.py").read_text() == "print('v1')\n"
