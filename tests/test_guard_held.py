"""The guard's hold of your object files when some of them cannot be read or put back.

Real runs and real guards on real repositories: an agent deletes objects deep in your history
and makes a directory of the object store something the guard cannot put a file back into or
read; each failing directory costs that directory alone, and is told.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import as_owner_only, git, make_repo
from tests.test_run import swarm
from worktree_swarm.git.repo import open_repo
from worktree_swarm.guard.watcher import Guard

AgentFactory = Callable[[str], list[str]]


def blob_name(text: str) -> str:
    data = text.encode()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's


def lone_deep_blobs(tmp_path: Path, count: int) -> tuple[Path, list[str]]:
    """A repository whose history has *count* blobs only an old commit names.

    Each alone in its fan-out directory (those directories all differ), neither a tip nor a
    root tree: only a walk of the whole history would miss them, so no scan during a run asks.
    """
    for attempt in range(50):
        repo = make_repo(tmp_path / f"repo{attempt}")
        taken = {p.name for p in (repo / ".git" / "objects").iterdir()}
        texts: list[str] = []
        for i in range(10_000):
            name = blob_name(f"old {i}\n")
            if name[:2] not in taken:
                taken.add(name[:2])
                texts.append(f"old {i}\n")
                if len(texts) == count:
                    break
        for i, text in enumerate(texts):
            (repo / f"f{i}.txt").write_text(text)
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "old")
        for i in range(count):
            (repo / f"f{i}.txt").write_text(f"new {i}\n")
        git(repo, "commit", "-qam", "new")
        names = sorted(blob_name(text) for text in texts)
        objects = repo / ".git" / "objects"
        if all(len(list((objects / n[:2]).iterdir())) == 1 for n in names):
            return repo, names
    raise AssertionError("no history with lone blobs")


# Deletes the first and last of the blobs it is given, and makes the middle one's directory a
# file: no held file can be linked back into it.
DELETES_AROUND_A_BLOCKED_DIRECTORY = """
import pathlib, shutil, subprocess, sys
common = pathlib.Path(subprocess.run(
    ['git', 'rev-parse', '--path-format=absolute', '--git-common-dir'],
    capture_output=True, text=True, check=True,
).stdout.strip())
first, middle, last = sys.argv[1:]
for name in (first, last):
    (common / 'objects' / name[:2] / name[2:]).unlink()
shutil.rmtree(common / 'objects' / middle[:2])
(common / 'objects' / middle[:2]).write_text('in the way\\n')
"""


def test_held_objects_on_both_sides_of_one_that_cannot_be_put_back_come_back(
    tmp_path: Path, write_agent: AgentFactory
) -> None:
    """The run's last put-back stopped at the first held file it could not link back: the
    objects whose directories sort after it were lost."""
    repo, (first, middle, last) = lone_deep_blobs(tmp_path, 3)
    agent = " ".join([*write_agent(DELETES_AROUND_A_BLOCKED_DIRECTORY), first, middle, last])
    swarm(repo, "run", "--agent", agent, "-t", "a=p")
    assert git(repo, "cat-file", "-t", first) == "blob"
    assert git(repo, "cat-file", "-t", last) == "blob"
    out = swarm(repo, "status", "--json")
    reasons = [e["reason"] for e in json.loads(out.stdout)["guard_errors"] if e["job"] == "objects"]
    assert any(f"objects/{middle[:2]}/{middle[2:]}" in reason for reason in reasons), reasons


# An agent's forged file, unreadable, renamed onto the name of your object, made readable
# again once the guard has compared it; the guard (owner only, as a user's manager) scans.
FORGES_UNREADABLE = """
import os, sys, zlib
from pathlib import Path
from worktree_swarm.git.repo import open_repo
from worktree_swarm.guard.watcher import Guard
from worktree_swarm.infra.proctree import identity_of
repo, work, victim = map(Path, sys.argv[1:])
guard = Guard(open_repo(repo), work_dir=work, restore=True)
guard.start()
guard.agent_started("rogue", identity_of(os.getpid()))
forged = victim.with_name("forged")
forged.write_bytes(zlib.compress(b"blob 7\\0forged\\n"))
forged.chmod(0)
forged.rename(victim)
guard.after_attempt()
victim.chmod(0o444)
guard.after_attempt()
guard.close()
guard.scan()
print([(v.git_files, v.restored) for v in guard.drain()])
"""


def test_a_forged_object_unreadable_while_compared_is_never_held_in_place_of_yours(
    tmp_path: Path,
) -> None:
    """The guard held the store's other file under your object's name when it could not read
    it: made readable again, the forged object stayed, and your object's only copy was gone."""
    repo = make_repo(tmp_path / "repo", {"a.txt": "yours\n"})
    victim = git(repo, "rev-parse", "main:a.txt")
    path = repo / ".git" / "objects" / victim[:2] / victim[2:]
    out = subprocess.run(
        [*as_owner_only(), sys.executable, "-c", FORGES_UNREADABLE, str(repo),
         str(tmp_path / "guard"), str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert git(repo, "show", "main:a.txt") == "yours"
    assert git(repo, "fsck", "--no-dangling") == ""


def listed_before(
    objects: Path, before: list[list[str]], *, but: set[str]
) -> tuple[Path, list[str]]:
    """A fan-out directory the store lists before one object of each list of *before*.

    Returns it and those objects (the first of each list listed after it), none in it; never
    one of the directories *but*. Chosen from the listing, whatever order the file system
    lists entries in (that of their making, newest first, by hash).
    """
    listed = [entry.name for entry in os.scandir(objects) if len(entry.name) == 2]
    for at, name in enumerate(listed):
        if name in but:
            continue
        later = set(listed[at + 1 :])
        picked = [next((o for o in names if o[:2] in later), None) for names in before]
        if all(picked):
            return objects / name, [o for o in picked if o is not None]
    raise AssertionError(f"no directory of {listed} is listed before one of each of {before}")


# The resumed guard (owner only, as a user's manager) while a directory of the store cannot be
# read: an agent renames another file over your object, and deletes one made while no manager
# ran.
RESUMED_BESIDE_AN_UNREADABLE_DIRECTORY = """
import os, sys
from pathlib import Path
from worktree_swarm.git.repo import open_repo
from worktree_swarm.guard.watcher import Guard
from worktree_swarm.infra.proctree import identity_of
repo, work, victim, new = map(Path, sys.argv[1:])
guard = Guard(open_repo(repo), work_dir=work, restore=True)
guard.start()
print([f.reason for f in guard.drain_failures() if f.job == "objects"])
guard.agent_started("rogue", identity_of(os.getpid()))
decoy = victim.with_name("decoy")
decoy.write_bytes(b"garbage")
decoy.rename(victim)
new.unlink()
guard.after_attempt()
print([(v.git_files, v.restored) for v in guard.drain()])
guard.close()
guard.scan()
"""


def test_a_directory_of_the_store_that_cannot_be_read_costs_that_directory_alone(
    tmp_path: Path,
) -> None:
    """A resumed guard's hold of the store, and every scan of it, failed as a whole on one
    unreadable directory: an object written over was not put back until the run's end, and
    one made while no manager ran (held by the resume alone) was lost."""
    repo = make_repo(tmp_path / "repo", {"a.txt": "yours\n"})
    objects = repo / ".git" / "objects"
    work = tmp_path / "runs" / "r1" / "guard"
    Guard(open_repo(repo), work_dir=work, restore=True).start()  # its manager then killed
    for name in ("b.txt", "c.txt"):
        (repo / name).write_text("made while no manager ran\n" if name == "b.txt" else "c\n")
    git(repo, "add", "b.txt", "c.txt")
    git(repo, "commit", "-qm", "b")
    # Objects of yours from before (held by the killed manager) and made since (by the
    # resume alone): one of each in a directory listed after the one made unreadable. Not
    # the tip's directories: your branch is read through them.
    revs = (["main:a.txt", "main~1^{tree}", "main~1"], ["main:b.txt", "main:c.txt"])
    tip = {git(repo, "rev-parse", rev)[:2] for rev in ("main", "main^{tree}")}
    names = [[git(repo, "rev-parse", rev) for rev in group] for group in revs]
    hidden, (victim, new) = listed_before(objects, names, but=tip)
    hidden.chmod(0)
    try:
        out = subprocess.run(
            [*as_owner_only(), sys.executable, "-c", RESUMED_BESIDE_AN_UNREADABLE_DIRECTORY,
             str(repo), str(work), *(str(objects / n[:2] / n[2:]) for n in (victim, new))],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    finally:
        hidden.chmod(0o755)
    assert out.returncode == 0, out.stderr[-2000:]
    failures, found = out.stdout.splitlines()
    assert found == str([((f"objects/{victim[:2]}/{victim[2:]}",), True)])  # during the run
    assert git(repo, "show", "main:a.txt") == "yours"
    assert git(repo, "show", "main:b.txt") == "made while no manager ran"
    assert git(repo, "show", "main:c.txt") == "c"
    assert f"objects/{hidden.name} not held: Permission denied" in failures  # told


def fan_out_blobs(tmp_path: Path, count: int) -> Path:
    """A repository whose store has at least *count* fan-out directories of loose objects."""
    repo = make_repo(tmp_path / "repo")
    taken = {p.name for p in (repo / ".git" / "objects").iterdir()}
    files = []
    for i in range(10_000):
        name = blob_name(f"fan-out {i}\n")
        if name[:2] not in taken:
            taken.add(name[:2])
            files.append(tmp_path / f"blob{i}.txt")
            files[-1].write_text(f"fan-out {i}\n")
        if len(files) == count:
            break
    git(repo, "hash-object", "-w", *map(str, files))
    return repo


# The hold (owner only, as a user's manager): what it says failed, and every loose object held.
HOLDS = """
import json, sys
from pathlib import Path
from worktree_swarm.guard import held_files
common, held = map(Path, sys.argv[1:])
failures = held_files.hold(common, held)
print(json.dumps([failures, sorted(held_files.held_loose(held))]))
"""


def held_as_owner(common: Path, held: Path) -> tuple[list[str], list[str]]:
    """:func:`.held_files.hold` of *common* under *held*: its failures and what it holds."""
    out = subprocess.run(
        [*as_owner_only(), sys.executable, "-c", HOLDS, str(common), str(held)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    failures, held_names = json.loads(out.stdout)
    return failures, held_names


def loose_objects(common: Path, *, but: Path | None = None) -> list[str]:
    """The names of the loose objects of *common*'s store (not those in the directory *but*)."""
    return sorted(
        d.name + f.name
        for d in (common / "objects").iterdir()
        if len(d.name) == 2 and d != but
        for f in d.iterdir()
    )


def test_a_fan_out_directory_that_cannot_be_searched_costs_that_directory_alone(
    tmp_path: Path,
) -> None:
    """A directory listed but not searched (mode 0644) failed its first link, and the hold
    stopped there: no directory after it was held."""
    common = fan_out_blobs(tmp_path, 40) / ".git"
    fan_outs = sorted(d for d in (common / "objects").iterdir() if len(d.name) == 2)
    closed = fan_outs[len(fan_outs) // 2]
    others = loose_objects(common, but=closed)
    closed.chmod(0o644)
    try:
        failures, held = held_as_owner(common, tmp_path / "held")
    finally:
        closed.chmod(0o755)
    assert held == others
    assert failures == [f"objects/{closed.name}: 1 file not held: Permission denied"]


def test_an_unreadable_object_file_copied_costs_that_file_alone(tmp_path: Path) -> None:
    """With the hold on another file system each file is copied: one that cannot be read
    failed the hold, and no file after it was held."""
    elsewhere = Path("/dev/shm")  # a tmpfs of its own on Linux
    common = fan_out_blobs(tmp_path, 40) / ".git"
    if not elsewhere.is_dir() or elsewhere.stat().st_dev == common.stat().st_dev:
        pytest.skip("no second file system at /dev/shm")
    fan_outs = sorted(d for d in (common / "objects").iterdir() if len(d.name) == 2)
    closed = next(fan_outs[len(fan_outs) // 2].iterdir())
    others = [n for n in loose_objects(common) if n != closed.parent.name + closed.name]
    closed.chmod(0)
    work = Path(tempfile.mkdtemp(prefix="swarm-held-", dir=elsewhere))
    try:
        failures, held = held_as_owner(common, work / "held")
    finally:
        closed.chmod(0o444)
        shutil.rmtree(work)
    assert held == others
    assert failures == [f"objects/{closed.parent.name}: 1 file not held: Permission denied"]


# The guard (owner only, as a user's manager) started while a directory of the store cannot
# be read; made readable again, a forged file is written there, a scan runs, then an agent
# deletes your object in it.
HELD_ONCE_READABLE = """
import os, sys, zlib
from pathlib import Path
from worktree_swarm.git.repo import open_repo
from worktree_swarm.guard import held_files
from worktree_swarm.guard.watcher import Guard
from worktree_swarm.infra.proctree import identity_of
repo, work, victim, forged = map(Path, sys.argv[1:])
guard = Guard(open_repo(repo), work_dir=work, restore=True)
victim.parent.chmod(0)
try:
    guard.start()
finally:
    victim.parent.chmod(0o755)
print([f.reason for f in guard.drain_failures() if f.job == "objects"])
forged.write_bytes(zlib.compress(b"blob 7\\0forged\\n"))
guard.after_attempt()
print(sorted(held_files.held_loose(work / held_files.HELD)))
guard.agent_started("rogue", identity_of(os.getpid()))
victim.unlink()
guard.agent_ended("rogue")
guard.close()
guard.scan()
"""


def test_a_directory_of_the_store_unreadable_at_the_start_is_held_once_it_is_readable(
    tmp_path: Path,
) -> None:
    """A directory the hold skipped at the start (unreadable) was never held: made readable
    again, an object of yours deleted from it deep in your history was lost. A forged file
    written there meanwhile is not held (it would be put back as an object of yours)."""
    repo, (name,) = lone_deep_blobs(tmp_path, 1)
    objects = repo / ".git" / "objects"
    victim = objects / name[:2] / name[2:]
    forged = victim.with_name("0" * 38)
    work = tmp_path / "runs" / "r1" / "guard"
    out = subprocess.run(
        [*as_owner_only(), sys.executable, "-c", HELD_ONCE_READABLE, str(repo), str(work),
         str(victim), str(forged)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    failures, held = out.stdout.splitlines()
    assert f"objects/{name[:2]} not held: Permission denied" in failures
    assert name in held
    assert name[:2] + "0" * 38 not in held
    assert git(repo, "cat-file", "-t", name) == "blob"
    assert not forged.exists()
    assert git(repo, "fsck", "--no-dangling") == ""


# The guard (owner only, as a user's manager) started while the store's pack directory cannot
# be listed, beside a dead manager's hold of another run; then an agent deletes an object of
# yours.
PACKS_UNLISTED_AT_THE_START = """
import os, sys
from pathlib import Path
from worktree_swarm.git.repo import open_repo
from worktree_swarm.guard.watcher import Guard
from worktree_swarm.infra.proctree import identity_of
repo, work, victim = map(Path, sys.argv[1:])
pack = repo / '.git' / 'objects' / 'pack'
guard = Guard(open_repo(repo), work_dir=work, restore=True)
pack.chmod(0)
try:
    guard.start()
finally:
    pack.chmod(0o755)
print([f.reason for f in guard.drain_failures() if f.job == "objects"])
guard.agent_started("rogue", identity_of(os.getpid()))
victim.unlink()
guard.agent_ended("rogue")
guard.after_attempt()
print([(v.broken, v.restored) for v in guard.drain()])
guard.close()
"""


def test_a_pack_directory_unlisted_at_the_start_costs_that_directory_alone(
    tmp_path: Path,
) -> None:
    """The start's listing of the packs raised on an unlistable ``objects/pack``: the rest of
    the start's objects job was skipped (a dead manager's hold kept), and the failure told was
    the exception's, not the part that failed."""
    repo = make_repo(tmp_path / "repo", {"a.txt": "yours\n"})
    name = git(repo, "rev-parse", "main")
    victim = repo / ".git" / "objects" / name[:2] / name[2:]
    stale = tmp_path / "runs" / "r0" / "guard" / "held"
    stale.mkdir(parents=True)
    (stale / "old").write_text("a dead manager's\n")
    work = tmp_path / "runs" / "r1" / "guard"
    out = subprocess.run(
        [*as_owner_only(), sys.executable, "-c", PACKS_UNLISTED_AT_THE_START, str(repo),
         str(work), str(victim)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    failures, found = out.stdout.splitlines()
    assert failures == str(["objects/pack not held: Permission denied"])
    assert not stale.exists()  # the rest of the start was done
    assert found == str([(("refs/heads/main",), True)])  # made whole from the hold
    assert git(repo, "show", "main:a.txt") == "yours"
