"""The object store's change test: adding objects costs no walk, losing one is never missed.

Real repositories, git's own commands for what it does while agents work (add, commit, fetch
of a pack, automatic maintenance), and the hostile ways an object is lost or damaged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import as_owner_only, git, hang_git_at, make_repo
from tests.test_guard_changes import git_commands
from worktree_swarm.core.models import ProcessIdentity
from worktree_swarm.git.repo import open_repo
from worktree_swarm.guard import held_files, integrity, packfiles
from worktree_swarm.guard.objects import ObjectWatch
from worktree_swarm.guard.watcher import Guard
from worktree_swarm.infra.proctree import identity_of

COMMIT = ("-c", "user.name=a", "-c", "user.email=a@a", "commit", "-qm")


def me() -> ProcessIdentity:
    """This process, as the agent that misbehaves."""
    identity = identity_of(os.getpid())
    assert identity is not None
    return identity


def objects_of(repo: Path) -> Path:
    return repo / ".git" / "objects"


def loose(repo: Path, rev: str) -> Path:
    sha = git(repo, "rev-parse", rev)
    return objects_of(repo) / sha[:2] / sha[2:]


def commit_file(repo: Path, name: str, text: str) -> None:
    (repo / name).write_text(text)
    git(repo, "add", name)
    git(repo, *COMMIT, name)


def test_what_git_does_while_agents_work_keeps_the_generation(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    other = make_repo(tmp_path / "other", {"b.txt": "b\n"})
    for i in range(30):  # enough objects in the fetch for git to keep them as a pack
        commit_file(other, f"f{i}.txt", f"{i}\n")
    watch = ObjectWatch(objects_of(repo))
    assert watch.watched
    start = watch.generation()
    for i in range(20):  # new objects, some in new fan-out directories
        commit_file(repo, f"n{i}.txt", f"new {i}\n")
    git(repo, "-c", "fetch.unpackLimit=1", "fetch", "-q", str(other), "main:refs/heads/other")
    old = loose(repo, "HEAD:a.txt")
    os.utime(old, (0, 0))
    git(repo, "hash-object", "-w", "a.txt")  # written again: git freshens the old one's time
    assert old.stat().st_mtime > 0
    assert list((objects_of(repo) / "pack").glob("pack-*.pack"))  # a pack came in
    assert watch.generation() == start


def test_an_object_freshened_again_and_again_is_looked_at_once_and_a_chmod_still_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every task's checkpoint freshens the same blobs: one look at each per read of events.
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n", "b.txt": "b\n"})
    watch = ObjectWatch(objects_of(repo))
    assert watch.watched
    start = watch.generation()
    blob, other = loose(repo, "HEAD:a.txt"), loose(repo, "HEAD:b.txt")
    for _ in range(5):
        git(repo, "hash-object", "-w", "a.txt", "b.txt")  # git freshens both again
    looked: list[str] = []
    real_lstat = os.lstat

    def spied(path: str | Path, **kwargs: object) -> os.stat_result:
        looked.append(os.fspath(path))
        return real_lstat(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "lstat", spied)
    assert watch.generation() == start
    assert sorted(looked) == sorted([os.fspath(blob), os.fspath(other)])
    os.utime(blob)
    other.chmod(0)  # unreadable among freshened ones: lost
    os.utime(blob)
    assert watch.generation() != start


def _loose_names(repo: Path) -> set[str]:
    return {
        path.parent.name + path.name
        for path in objects_of(repo).glob("??/*")
        if len(path.name) == 38  # SHA-1 less its fan-out
    }


def test_every_loose_object_made_or_written_over_is_named_once(tmp_path: Path) -> None:
    # What the check for forged objects reads after each attempt, instead of every loose one.
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    watch = ObjectWatch(objects_of(repo))
    before = _loose_names(repo)
    for i in range(20):  # most in fan-out directories made meanwhile, linked in at once
        commit_file(repo, f"n{i}.txt", f"new {i}\n")
    made = _loose_names(repo) - before
    assert len(made) == 60  # a blob, a tree and a commit each
    assert watch.loose_named() == (made, True)
    assert watch.loose_named() == (set(), True)
    old, head, blob = (loose(repo, rev) for rev in ("HEAD~3:n16.txt", "HEAD", "HEAD:a.txt"))
    _overwrite_loose(repo)  # a.txt, from before the watch
    _rename_over(repo)  # onto HEAD
    os.utime(old, (0, 0))  # a time changed, as git freshens an object: no other bytes
    assert watch.loose_named() == ({p.parent.name + p.name for p in (head, blob)}, True)
    # Named, then a watched directory gone: those are still named, but they are not all.
    _rename_over(repo)
    for entry in old.parent.iterdir():
        entry.unlink()
    old.parent.rmdir()
    assert watch.loose_named() == ({head.parent.name + head.name}, False)
    assert watch.loose_named() == (set(), False)


Damage = Callable[[Path], None]


def _delete_loose(repo: Path) -> None:
    loose(repo, "HEAD:a.txt").unlink()


def _overwrite_loose(repo: Path) -> None:
    path = loose(repo, "HEAD:a.txt")
    path.chmod(0o644)
    path.write_bytes(b"garbage")


def _rename_over(repo: Path) -> None:
    (objects_of(repo) / "decoy").write_bytes(b"garbage")
    (objects_of(repo) / "decoy").rename(loose(repo, "HEAD"))


def _unreadable(repo: Path) -> None:
    loose(repo, "HEAD:a.txt").chmod(0)


def _delete_pack(repo: Path) -> None:
    next((objects_of(repo) / "pack").glob("pack-*.pack")).unlink()


def _repack(repo: Path) -> None:
    git(repo, "-c", "gc.auto=0", "repack", "-adq")  # removes the loose objects it packed


def _alternates(repo: Path) -> None:
    (objects_of(repo) / "info" / "alternates").write_text("/elsewhere/objects\n")


def _remove_fanout(repo: Path) -> None:
    directory = loose(repo, "HEAD:a.txt").parent
    for entry in directory.iterdir():
        entry.unlink()
    directory.rmdir()


@pytest.mark.parametrize(
    "damage",
    [
        _delete_loose,
        _overwrite_loose,
        _rename_over,
        _unreadable,
        _delete_pack,
        _repack,
        _alternates,
        _remove_fanout,
    ],
)
def test_whatever_can_lose_or_damage_an_object_changes_the_generation(
    tmp_path: Path, damage: Damage
) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    git(repo, "-c", "gc.auto=0", "repack", "-q")  # a pack next to the loose objects
    commit_file(repo, "a.txt", "a, again\n")
    watch = ObjectWatch(objects_of(repo))
    first = watch.generation()
    damage(repo)
    assert watch.generation() != first


def test_a_pack_written_in_place_through_any_name_is_told_and_its_time_is_not(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    git(repo, "-c", "gc.auto=0", "repack", "-q")
    watch = ObjectWatch(objects_of(repo))
    commit_file(repo, "b.txt", "b\n")
    git(repo, "-c", "gc.auto=0", "repack", "-q")  # a pack made after the watch began
    packs = objects_of(repo) / "pack"
    old, new = sorted(packs.glob("pack-*.idx"), key=lambda p: p.stat().st_mtime_ns)
    watch.watch_pack(new)  # as the guard does before it verifies a new pack
    watch.generation()
    made = {new.name, new.with_suffix(".pack").name}
    assert watch.written_packs() == made  # the guard verifies a new pack anyway
    for idx in (old, new):
        os.utime(idx.with_suffix(".pack"))  # git freshens a pack: no write
    first = watch.generation()
    assert watch.written_packs() == set()
    elsewhere = tmp_path / "link"
    os.link(old.with_suffix(".pack"), elsewhere)  # written through another name
    elsewhere.chmod(0o644)
    with elsewhere.open("r+b") as out:
        out.write(b"PACK")
    new.chmod(0o644)
    with new.open("r+b"):  # opened for writing (a shared map writes without an event)
        pass
    assert watch.generation() != first
    assert watch.written_packs() == {old.with_suffix(".pack").name, new.name}
    for path in packs.glob(f"{new.stem}.*"):  # removed: no longer watched, the rest still
        path.unlink()
    watch.generation()
    assert watch.watched


def test_a_pack_renamed_over_a_watched_one_is_told(tmp_path: Path) -> None:
    # The watch on a pack's file stays with the file: another renamed onto its name is told
    # by the directory's event.
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    git(repo, "-c", "gc.auto=0", "repack", "-q")
    watch = ObjectWatch(objects_of(repo))
    idx = next((objects_of(repo) / "pack").glob("pack-*.idx"))
    watch.generation()
    aside = tmp_path / "forged.idx"
    aside.write_bytes(idx.read_bytes())
    aside.rename(idx)
    watch.generation()
    assert watch.written_packs() == {idx.name}


def test_a_reverse_index_is_right_only_in_the_order_of_the_pack_offsets(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n", "b.txt": "b\n"})
    git(repo, "-c", "pack.writeReverseIndex=true", "repack", "-adq")
    idx = next((objects_of(repo) / "pack").glob("pack-*.idx"))
    rev = idx.with_suffix(".rev")
    assert packfiles.lying_rev(idx) == ""  # git's own
    good = rev.read_bytes()
    data = bytearray(good)
    data[12:16], data[16:20] = data[16:20], data[12:16]
    rev.chmod(0o644)
    rev.write_bytes(bytes(data))
    assert "order" in packfiles.lying_rev(idx)
    rev.write_bytes(bytes(data[:-4]))
    assert packfiles.lying_rev(idx) == "not a reverse index of this pack"
    rev.unlink()
    assert packfiles.lying_rev(idx) == ""  # none: git orders the objects itself
    os.mkfifo(rev)  # read by git, it would wait for a writer
    assert packfiles.lying_rev(idx) == "not a file (a named pipe, a device or a socket)"
    assert (
        packfiles.lying_pack(repo, idx)
        == f"{rev.name}: not a file (a named pipe, a device or a socket)"
    )
    rev.unlink()
    rev.write_bytes(good)
    # The index cut short after git checked it (an agent's write between two reads): the
    # scan went down on it (an array of a length no multiple of 4, an offset past its end).
    whole = idx.read_bytes()
    idx.chmod(0o644)
    for cut in (len(whole) - 30, len(whole) - 41, 8 + 1024 + 10):
        idx.write_bytes(whole[:cut])
        assert packfiles.lying_rev(idx) == ""  # the index's own check judges it


def test_a_store_with_alternates_is_never_trusted(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--reference", str(repo), str(repo), str(clone))
    watch = ObjectWatch(objects_of(clone))
    assert not watch.watched
    assert watch.generation() != watch.generation()


def test_after_an_attempt_only_a_damaged_store_costs_a_walk_of_every_branch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An untouched store costs one walk of what moved; a deleted object, every branch."""
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    guard = Guard(open_repo(repo), work_dir=tmp_path / "g", restore=True)
    guard.start()
    for task in ("done1", "done2"):
        git(repo, "branch", f"swarm/{task}")
        path = tmp_path / "wt" / task
        git(repo, "worktree", "add", "-q", str(path), f"swarm/{task}")
        with guard.busy(task, path):
            commit_file(path, f"{task}.txt", f"{task}\n")
    guard.after_attempt()
    assert guard.drain() == []
    trace = tmp_path / "trace"
    monkeypatch.setenv("GIT_TRACE2", str(trace))
    guard.after_attempt()  # nothing moved, nothing lost: no object is looked at
    assert git_commands(trace, "for-each-ref") >= 1  # (the trace works)
    assert git_commands(trace, "cat-file") == git_commands(trace, "rev-list") == 0
    guard.agent_started("rogue", me())
    loose(repo, "swarm/done1:done1.txt").unlink()  # a blob deep in a finished branch
    guard.after_attempt()
    found = guard.drain()
    assert [(v.broken, v.suspects, v.restored) for v in found] == [
        (("refs/heads/swarm/done1",), ("rogue",), True)
    ]
    assert git(repo, "show", "swarm/done1:done1.txt") == "done1"


@pytest.mark.parametrize("hole", ["root-tree", "parent-tree"])
def test_a_task_branch_made_to_name_a_missing_tree_is_caught_by_the_walk_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hole: str
) -> None:
    """Nothing is lost from the store (no change test event), yet the branch is incomplete:
    its agent wrote a commit naming a tree that was never there. After an attempt one walk of
    what moved answers for its tip and root tree too; a complete one asks nothing else."""
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    guard = Guard(open_repo(repo), work_dir=tmp_path / "g", restore=True)
    guard.start()
    git(repo, "branch", "swarm/t")
    path = tmp_path / "wt" / "t"
    git(repo, "worktree", "add", "-q", str(path), "swarm/t")
    guard.agent_started("t", me())
    guard.after_attempt()  # every ref found complete once
    trace = tmp_path / "trace"
    monkeypatch.setenv("GIT_TRACE2", str(trace))
    with guard.busy("t", path):
        commit_file(path, "t.txt", "t\n")
    guard.after_attempt()
    assert guard.drain() == []
    assert (git_commands(trace, "rev-list"), git_commands(trace, "cat-file")) == (1, 0)
    with guard.busy("t", path):
        head = git(path, "rev-parse", "HEAD")
        body = f"tree {'1' * 40}\nparent {head}\nauthor a <a@a> 1 +0000\n"
        body += "committer a <a@a> 1 +0000\n\nno tree\n"
        forged = subprocess.run(
            ["git", "hash-object", "-t", "commit", "-w", "--literally", "--stdin"],
            cwd=path, input=body, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        if hole == "parent-tree":  # a complete commit on top of it
            forged = git(path, "commit-tree", "-p", forged, "-m", "on top", f"{head}^{{tree}}")
        git(path, "update-ref", "refs/heads/swarm/t", forged)
    guard.after_attempt()
    found = guard.drain()
    assert [v.broken for v in found] == [("refs/heads/swarm/t",)]
    assert git(repo, "rev-parse", "swarm/t") == head  # back to its last complete tip


def test_the_guards_own_held_files_are_kept_when_a_symlink_also_names_its_run(
    tmp_path: Path,
) -> None:
    """Held files of runs whose manager died are let go when a guard starts; not its own.

    Its run's directory also reached through a symlink beside it (pytest's ``-current`` link
    beside each test's directory, a `latest` link of yours) was taken for another run's: the
    guard let go of its own hold at once, and an object file an agent removed could not be
    put back.
    """
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    runs = tmp_path / "runs"
    (runs / "r1").mkdir(parents=True)
    (runs / "latest").symlink_to("r1")
    guard = Guard(open_repo(repo), work_dir=runs / "r1" / "guard", restore=True)
    guard.start()
    guard.agent_started("rogue", me())
    loose(repo, "main").unlink()  # your last commit
    guard.after_attempt()
    assert [(v.broken, v.restored) for v in guard.drain()] == [(("refs/heads/main",), True)]
    assert git(repo, "log", "--format=%s", "main") == "initial"


def test_a_file_written_over_while_no_manager_ran_is_put_back_after_a_resume(
    tmp_path: Path,
) -> None:
    """The resumed guard let go of its dead manager's hold: the only copy of the real file.

    Another file under your commit's name, not a gone one: the hold is still needed.
    """
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    work = tmp_path / "runs" / "r1" / "guard"
    Guard(open_repo(repo), work_dir=work, restore=True).start()  # its manager then killed
    _rename_over(repo)  # while no manager ran
    resumed = Guard(open_repo(repo), work_dir=work, restore=True)
    resumed.start()
    try:
        resumed.after_attempt()
        assert git(repo, "log", "--format=%s", "main") == "initial"
        assert git(repo, "fsck", "--no-dangling") == ""
    finally:
        resumed.close()


def test_a_pack_git_writes_again_under_its_name_is_held_in_place_of_the_old_one(
    tmp_path: Path,
) -> None:
    """`git gc` with nothing new writes the same pack again and renames it over its name.

    The guard held the old file: it pinned the pack's disk space a second time for the rest
    of the run, and every later change to the store compared the two byte for byte again.
    """
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    commit_file(repo, "b.txt", "b\n")
    git(repo, "gc", "-q")
    (pack,) = (objects_of(repo) / "pack").glob("pack-*.pack")
    guard = Guard(open_repo(repo), work_dir=tmp_path / "g", restore=True)
    guard.start()
    before = pack.stat()
    assert before.st_nlink == 2  # the store's name and the guard's hold
    git(repo, "gc", "-q")  # the same objects: the same pack, renamed over its name
    now = pack.stat()
    assert (now.st_ino, now.st_nlink) != (before.st_ino, 2)
    guard.after_attempt()
    assert guard.drain() == []
    assert pack.stat().st_nlink == 2  # the guard holds git's new file


# A loose object of yours written over, and one planted under a new name, each with a few
# bytes that inflate to 256 MiB of zeros after a header that says 7; the guard judging them
# in a process allowed 200 MiB of memory (as the manager on a small machine).
BOMB_JUDGED = """
import os, resource, sys, zlib
from pathlib import Path
from worktree_swarm.guard import held_files, loose_objects
common, held, victim, planted = map(Path, sys.argv[1:])
squeeze = zlib.compressobj(9)
bomb = [squeeze.compress(b"blob 7\\0forged\\n")]
bomb += [squeeze.compress(bytes(1 << 20)) for _ in range(256)]
bomb = b"".join([*bomb, squeeze.flush()])
for path in (victim, planted):
    path.parent.mkdir(exist_ok=True)
    aside = path.with_name("aside")
    aside.write_bytes(bomb)
    os.replace(aside, path)
resource.setrlimit(resource.RLIMIT_AS, (200 << 20, 200 << 20))
over = held_files.written_over(common, held)
forged, _ = loose_objects.forged_loose(
    common, set(), held=held_files.held_loose(held), listing=True
)
print([dest.name for _, dest in over], [path.name for path in forged])
"""


def test_an_object_that_inflates_far_past_its_header_is_judged_in_bounded_memory(
    tmp_path: Path,
) -> None:
    """The guard inflated an object file it judged whole: an agent's few kilobytes that
    inflate to gigabytes had the manager run out of memory (killed, or the scan failing)
    before it put your object back.
    """
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    common = repo / ".git"
    held = tmp_path / "held"
    held_files.hold(common, held)
    victim = loose(repo, "main:a.txt")
    planted = objects_of(repo) / "ab" / ("c" * 38)
    args = [str(p) for p in (common, held, victim, planted)]
    out = subprocess.run(
        [sys.executable, "-c", BOMB_JUDGED, *args], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[0] == f"{[victim.name]} {[planted.name]}"


def test_an_object_that_cannot_be_read_now_is_not_taken_for_forged(tmp_path: Path) -> None:
    """A loose object made since the hold that the guard cannot open (here: no permission, as
    its owner; likewise out of file descriptors, an I/O error) tells nothing: it was taken for
    one that does not hash to its name, and removed, your new commit's object with it."""
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    common = repo / ".git"
    held = tmp_path / "held"
    held_files.hold(common, held)
    commit_file(repo, "b.txt", "yours\n")
    new = loose(repo, "main:b.txt")
    new.chmod(0)
    code = (
        "import sys; from pathlib import Path; "
        "from worktree_swarm.guard import held_files, loose_objects; "
        f"found, unread = loose_objects.forged_loose(Path({str(common)!r}), set(), "
        f"held=held_files.held_loose(Path({str(held)!r})), listing=True); "
        "print([p.name for p in found], sorted(unread))"
    )
    out = subprocess.run(
        [*as_owner_only(), sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == f"[] {[new.parent.name + new.name]}"  # read again next time
    new.chmod(0o444)
    assert git(repo, "show", "main:b.txt") == "yours"


def test_a_pack_whose_check_was_killed_is_kept_and_checked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`git verify-pack` killed (the OOM killer, on a big pack) tells nothing of the pack.

    The guard took its failure for a lying index and removed the pack: your commit, packed by
    your own `git repack` during the run, was gone with it.
    """
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    guard = Guard(open_repo(repo), work_dir=tmp_path / "runs" / "r" / "guard", restore=True)
    guard.start()
    commit_file(repo, "b.txt", "yours\n")
    git(repo, "repack", "-d", "-q")  # your commit now only in a new pack
    killed = hang_git_at(tmp_path, monkeypatch, "verify-pack", then="kill -9 $$")
    guard.after_attempt()
    assert killed.exists()
    assert guard.drain() == []
    assert git(repo, "show", "main:b.txt") == "yours"
    subprocess.run(["git", "fsck", "--no-dangling"], cwd=repo, check=True, capture_output=True)


def test_a_pack_gone_at_the_end_comes_back_when_listing_its_index_is_killed_mid_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`git show-index` killed (the OOM killer) after part of a line: the listing says nothing.

    The guard parsed that line before looking at git's exit code and failed on it: the run's
    last scan put back no held object at all.
    """
    repo = make_repo(tmp_path / "repo", {"a.txt": "yours\n"})
    git(repo, "repack", "-a", "-d", "-q")  # your blob only in a pack
    held = tmp_path / "held"
    held_files.hold(objects_of(repo).parent, held)
    for packed in (objects_of(repo) / "pack").iterdir():
        packed.unlink()
    killed = hang_git_at(tmp_path, monkeypatch, "show-index", then="printf 12; kill -9 $$")

    integrity.recover_held(repo, objects_of(repo).parent, held)

    assert killed.exists()
    assert git(repo, "show", "main:a.txt") == "yours"


def test_a_lying_pack_whose_first_check_was_killed_is_still_blamed_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked again at the next scan, it was judged over that scan's window: the agent that
    planted it (and killed `git verify-pack`, or the OOM killer did) had ended before, so no
    one was suspected and the pack taken as yours for good: your git read its bytes."""
    repo = make_repo(tmp_path / "repo", {"a.txt": "yours\n"})
    victim = git(repo, "rev-parse", "main:a.txt")
    git(repo, "repack", "-a", "-d", "-q")  # your blob packed: a forged pack can shadow it
    guard = Guard(open_repo(repo), work_dir=tmp_path / "runs" / "r" / "guard", restore=True)
    guard.start()
    assert guard.scan() == []
    guard.agent_started("rogue", me())
    pack, index, name = forged_pack(victim)
    (objects_of(repo) / "pack" / f"{name}.pack").write_bytes(pack)
    (objects_of(repo) / "pack" / f"{name}.idx").write_bytes(index)
    guard.agent_ended("rogue")
    killed = hang_git_at(tmp_path, monkeypatch, "verify-pack", then="kill -9 $$")
    assert guard.scan() == []  # its check killed: it tells nothing yet
    assert killed.exists()
    [found] = guard.scan()  # checked again
    assert (found.git_files, found.suspects, found.restored) == (
        (f"objects/pack/{name}.idx",), ("rogue",), True,
    )  # fmt: skip
    assert not (objects_of(repo) / "pack" / f"{name}.idx").exists()
    assert git(repo, "cat-file", "blob", victim) == "yours"


def test_a_ref_left_broken_does_not_keep_an_ended_agent_suspected_ever_after(
    tmp_path: Path,
) -> None:
    """With outside writes allowed, a branch an agent left naming a deleted commit stays
    broken; the window of the object checks stayed where it was, and every later object
    write of the run named that agent too, long after it ended."""
    repo = make_repo(tmp_path / "repo", {"a.txt": "yours\n"})
    victim = git(repo, "rev-parse", "main:a.txt")
    git(repo, "repack", "-a", "-d", "-q")
    guard = Guard(open_repo(repo), work_dir=tmp_path / "runs" / "r" / "guard", restore=False)
    guard.start()
    assert guard.scan() == []
    guard.agent_started("a", me())
    commit = git(repo, "commit-tree", "-m", "x", git(repo, "rev-parse", "main^{tree}"))
    git(repo, "branch", "x", commit)
    (objects_of(repo) / commit[:2] / commit[2:]).unlink()
    guard.agent_ended("a")
    assert [v.suspects for v in guard.scan()] == [("a",), ("a",)]  # the move, the broken ref
    assert guard.scan() == []  # told once while it stays broken
    guard.agent_started("b", me())
    pack, index, name = forged_pack(victim)
    (objects_of(repo) / "pack" / f"{name}.pack").write_bytes(pack)
    (objects_of(repo) / "pack" / f"{name}.idx").write_bytes(index)
    [found] = guard.scan()
    assert (found.git_files, found.suspects) == ((f"objects/pack/{name}.idx",), ("b",))


def test_a_pack_whose_check_failed_with_no_agent_running_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`git verify-pack` that fails for want of file descriptors or memory exits 1, as for a
    lie: with no agent of the run at work, the pack is yours or git's, and stays (it was
    removed, your commit with it)."""
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    guard = Guard(open_repo(repo), work_dir=tmp_path / "runs" / "r" / "guard", restore=True)
    guard.start()
    commit_file(repo, "b.txt", "yours\n")
    git(repo, "repack", "-d", "-q")  # your commit now only in a new pack
    failed = hang_git_at(
        tmp_path, monkeypatch, "verify-pack", then="echo 'fatal: Too many open files' >&2; exit 1"
    )
    guard.after_attempt()
    assert failed.exists()
    assert guard.drain() == []
    assert git(repo, "show", "main:b.txt") == "yours"


def forged_pack(victim: str) -> tuple[bytes, bytes, str]:
    """A one-object pack whose index names *victim* (a blob of yours) for other bytes."""
    oid = bytes.fromhex(victim)
    content = b"forged\n"
    body = b"PACK" + struct.pack(">II", 2, 1) + bytes([(3 << 4) | len(content)])
    body += zlib.compress(content)
    pack = body + hashlib.sha1(body).digest()  # noqa: S324 - git's own
    index = b"\xfftOc" + struct.pack(">I", 2)
    index += b"".join(struct.pack(">I", 0 if i < oid[0] else 1) for i in range(256))
    index += oid + struct.pack(">II", zlib.crc32(pack[12:-20]), 12) + hashlib.sha1(body).digest()  # noqa: S324
    index += hashlib.sha1(index).digest()  # noqa: S324
    return pack, index, f"pack-{hashlib.sha1(body).hexdigest()}"  # noqa: S324


def test_a_pack_that_appears_while_another_is_checked_is_checked_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard took every pack there at the end of its check for checked: one an agent
    added while `git verify-pack` read another (a big one takes minutes) was never checked,
    and your git read its lie: the agent's bytes for a blob of yours.
    """
    repo = make_repo(tmp_path / "repo", {"a.txt": "yours\n"})
    victim = git(repo, "rev-parse", "main:a.txt")
    guard = Guard(open_repo(repo), work_dir=tmp_path / "runs" / "r" / "guard", restore=True)
    guard.start()
    guard.agent_started("rogue", me())
    commit_file(repo, "b.txt", "b\n")
    git(repo, "repack", "-d", "-q")  # an honest new pack, checked first
    pack, index, name = forged_pack(victim)
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / f"{name}.pack").write_bytes(pack)
    (staged / f"{name}.idx").write_bytes(index)
    into = objects_of(repo) / "pack"
    plant = f"cp {staged}/{name}.pack {into}/ && cp {staged}/{name}.idx {into}/"
    planted = hang_git_at(tmp_path, monkeypatch, "verify-pack", then=plant)
    guard.after_attempt()
    assert planted.exists()
    guard.after_attempt()
    found = guard.drain()
    assert [(v.git_files, v.restored) for v in found] == [((f"objects/pack/{name}.idx",), True)]
    assert git(repo, "cat-file", "blob", victim) == "yours"


def test_work_of_yours_and_of_tasks_comes_back_with_the_guards_files_on_another_file_system(
    tmp_path: Path,
) -> None:
    """A hard link cannot cross file systems: the guard holds copies there instead.

    With its directory elsewhere (`.git/swarm` a mount of its own), the held links and the
    kept pack failed at every scan ("Invalid cross-device link"), and an object an agent
    deleted, of your branch or of a finished task's, was lost.
    """
    elsewhere = Path("/dev/shm")  # a tmpfs of its own on Linux
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    if not elsewhere.is_dir() or elsewhere.stat().st_dev == repo.stat().st_dev:
        pytest.skip("no second file system at /dev/shm")
    work = Path(tempfile.mkdtemp(prefix="swarm-guard-", dir=elsewhere))
    guard = Guard(open_repo(repo), work_dir=work / "guard", restore=True)
    try:
        guard.start()
        git(repo, "branch", "swarm/done")
        path = tmp_path / "wt" / "done"
        git(repo, "worktree", "add", "-q", str(path), "swarm/done")
        with guard.busy("done", path):
            commit_file(path, "done.txt", "done\n")
        guard.after_attempt()
        assert (guard.drain(), guard.drain_failures()) == ([], [])
        guard.agent_started("rogue", me())
        loose(repo, "swarm/done").unlink()  # the finished task's commit
        loose(repo, "main").unlink()  # your last commit
        guard.after_attempt()
        found = [(v.broken, v.restored) for v in guard.drain()]
        assert found == [(("refs/heads/main", "refs/heads/swarm/done"), True)]
        _rename_over(repo)  # another object under the name of your commit
        guard.after_attempt()
        assert [(v.git_files, v.restored) for v in guard.drain()] == [
            ((str(loose(repo, "main").relative_to(repo / ".git")),), True)
        ]
        assert guard.drain_failures() == []
        assert git(repo, "log", "--format=%s", "swarm/done") == "done.txt\ninitial"
        assert git(repo, "fsck", "--no-dangling") == ""
        # Packed again with the same content (a branch at a commit yours reach, a retry): one
        # pack, kept as git keeps it; a second one stopped the scan (FileExistsError).
        packs = work / "guard" / "packs"
        for _ in range(2):
            integrity.keep(repo, repo / ".git", packs, ["main"], ["main"])
        kept = sorted(packs.glob("keep-*"))
        assert [p.suffix for p in kept] == [".idx", ".pack"]
        assert {stat.S_IMODE(p.stat().st_mode) for p in kept} == {0o444}
    finally:
        guard.close()
        shutil.rmtree(work)


# The guard (owner only, as a user's manager): two tasks' work kept in a pack each; an agent
# deletes both tips, and the first kept pack cannot be read (copied back) any more.
ONE_KEPT_PACK_UNREADABLE = """
import json, os, subprocess, sys
from pathlib import Path
from worktree_swarm.git.repo import open_repo
from worktree_swarm.guard.watcher import Guard
from worktree_swarm.infra.proctree import identity_of
repo, work = map(Path, sys.argv[1:])
def git(where, *args):
    return subprocess.run(['git', '-C', str(where), *args], capture_output=True, text=True,
                          check=True).stdout.strip()
guard = Guard(open_repo(repo), work_dir=work, restore=True)
guard.start()
for task in ('t1', 't2'):
    git(repo, 'branch', f'swarm/{task}')
    path = repo.parent / 'wt' / task
    git(repo, 'worktree', 'add', '-q', str(path), f'swarm/{task}')
    with guard.busy(task, path):
        (path / f'{task}.txt').write_text(f'{task}\\n')
        git(path, 'add', '-A')
        git(path, '-c', 'user.name=a', '-c', 'user.email=a@a', 'commit', '-qm', task)
guard.after_attempt()
assert guard.drain() == [] and guard.drain_failures() == []
first, second = sorted((work / 'keep').glob('keep-*.pack'))
first.chmod(0)
guard.agent_started('rogue', identity_of(os.getpid()))
for task in ('t1', 't2'):
    tip = git(repo, 'rev-parse', f'swarm/{task}')
    (repo / '.git' / 'objects' / tip[:2] / tip[2:]).unlink()
guard.agent_ended('rogue')
guard.after_attempt()
print(json.dumps([first.name, second.name,
                  [f.reason for f in guard.drain_failures() if f.job == 'objects']]))
guard.close()
"""


def test_a_kept_pack_that_cannot_be_copied_back_stops_none_of_the_others(
    tmp_path: Path,
) -> None:
    """The first kept pack that failed to copy back into the store stopped the rest: the work
    of a task in a later pack was lost with it, and why was never told."""
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    work = tmp_path / "runs" / "r" / "guard"
    out = subprocess.run(
        [*as_owner_only(), sys.executable, "-c", ONE_KEPT_PACK_UNREADABLE, str(repo),
         str(work)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    first, second, reasons = json.loads(out.stdout)
    assert any(
        f"kept packs not put back: {first} (Permission denied)" in reason for reason in reasons
    ), reasons
    back = [
        task for task in ("t1", "t2")
        if subprocess.run(["git", "-C", str(repo), "cat-file", "-e", f"swarm/{task}:{task}.txt"],
                          check=False, capture_output=True).returncode == 0
    ]  # fmt: skip
    assert len(back) == 1, back  # the work in the second pack, whichever task's it is
    pack = objects_of(repo) / "pack" / second.replace("keep-", "pack-")
    assert pack.is_file()
    assert stat.S_IMODE(pack.stat().st_mode) == 0o444
    assert not list((objects_of(repo) / "pack").glob("tmp_pack_*"))


@pytest.mark.parametrize("planted", ["dangling", "to-a-file"])
def test_a_link_planted_at_a_kept_packs_name_is_replaced_by_the_pack(
    tmp_path: Path, planted: str
) -> None:
    """A dangling symlink an agent planted at a kept pack's name in the store had that pack
    skipped, unsaid, when it was put back: the task's work stayed lost. A link to a file of
    the agent's is no pack of the store either: replaced, the file left as it was."""
    repo = make_repo(tmp_path / "repo", {"a.txt": "a\n"})
    git(repo, "switch", "-q", "-c", "swarm/t")
    commit_file(repo, "t.txt", "the task's work\n")
    tip = git(repo, "rev-parse", "HEAD")
    git(repo, "switch", "-q", "main")
    kept = tmp_path / "keep"
    integrity.keep(repo, repo / ".git", kept, [tip], ["main"])
    (idx,) = kept.glob("keep-*.idx")
    (loose(repo, "swarm/t")).unlink()  # the tip lost: git finds it in no pack of the store
    pack = objects_of(repo) / "pack" / idx.with_suffix(".pack").name.replace("keep-", "pack-")
    pack.parent.mkdir(exist_ok=True)
    target = tmp_path / "agents.txt"
    if planted == "to-a-file":
        target.write_text("the agent's\n")
    pack.symlink_to(target)
    integrity.recover(repo / ".git", kept)
    assert not pack.is_symlink()
    assert pack.read_bytes() == idx.with_suffix(".pack").read_bytes()
    assert git(repo, "show", "swarm/t:t.txt") == "the task's work"
    assert not target.exists() or target.read_text() == "the agent's\n"
