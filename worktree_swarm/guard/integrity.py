"""Every watched ref must resolve to a complete commit; task work is kept in a private pack.

A deleted object (the loose file of a branch tip, a tree, a blob) breaks a branch without
moving it. Each check asks git about every ref's tip commit and root tree in one batch, and
walks every object a task branch added on top of the user's branches. After a good check the
new objects of each task branch are copied into a pack under the run's guard directory, which
the sandbox keeps read-only: a broken task branch gets its objects back from there.

The guard's directory may lie on another file system than the object store (``.git/swarm``
a mount of its own): its hard links to object files are copies there, and its packs are
written there by git's output, not renamed into place from the store.
"""

from __future__ import annotations

import contextlib
import errno
import filecmp
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import zlib
from collections.abc import Collection, Mapping, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path

from worktree_swarm.core.errors import CommandError
from worktree_swarm.git import runner
from worktree_swarm.guard.snapshot import ref_owner
from worktree_swarm.infra import fs

KEEP_PREFIX = "refs/swarm/keep/"
HELD = "held"  # under the guard's directory: links to the object files at the baseline
_REFLOG_LOOK = 50  # the newest entries of a reflog looked at for a complete commit
_OBJECT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # SHA-1 or SHA-256


def broken_refs(
    root: Path, refs: Mapping[str, str], *, deep: bool, only: Collection[str] | None = None
) -> list[str]:
    """The refs of *refs* whose tip or root tree is missing.

    With *deep*, also those task branches any object of which (on top of the user's branches)
    is missing. *only*: the refs to check (by default all); the others are known complete,
    and the user's branches among them still bound the walk.
    """
    checked = refs if only is None else {r: s for r, s in refs.items() if r in only}
    if not checked:
        return []
    if deep and only is not None and all(ref_owner(ref) is not None for ref in checked):
        # Task branches alone: an object missing from one is out of your complete branches'
        # reach, so the walk bounded by them meets it, tip and root tree included.
        user = [sha for ref, sha in refs.items() if ref_owner(ref) is None]
        if _complete(root, sorted(set(checked.values())), user):
            return []
    tips = sorted(set(checked.values()))
    # One process for tips and root trees (a tip that is no commit has no tree to ask about).
    kinds = _batch_check(root, [*tips, *(f"{t}^{{tree}}" for t in tips)])
    commits = [t for t in tips if kinds.get(t) == "commit"]
    bad = {t for t in tips if kinds.get(t) is None}
    bad |= {c for c in commits if kinds.get(f"{c}^{{tree}}") is None}
    user = [sha for ref, sha in refs.items() if ref_owner(ref) is None and sha not in bad]
    user = [sha for sha in user if kinds.get(sha, "commit") == "commit"]  # unchecked: complete
    tasks = sorted({sha for ref, sha in checked.items() if ref_owner(ref) is not None} - bad)
    # One walk for all task branches; only when it finds a hole, one per branch to say whose.
    if deep and tasks and not _complete(root, tasks, user):
        bad |= {sha for sha in tasks if not _complete(root, [sha], user)}
    return sorted(ref for ref, sha in checked.items() if sha in bad)


def keep(
    root: Path, common: Path, pack_dir: Path, tips: Sequence[str], exclude: Sequence[str]
) -> None:
    """Copy the objects of *tips* not reachable from *exclude* into a pack in *pack_dir*."""
    if not tips:
        return
    pack_dir.mkdir(parents=True, exist_ok=True)
    revs = "\n".join([*tips, *(f"^{e}" for e in exclude)]) + "\n"
    if _same_file_system(pack_dir, common / "objects"):
        runner.run(root, "pack-objects", "--revs", "-q", str(pack_dir / "keep"), input_text=revs)
        return
    # git writes a pack in the store and renames it into place, which cannot cross file
    # systems: written here from its output instead, indexed here, then named as git names it.
    with tempfile.NamedTemporaryFile(dir=pack_dir, prefix="tmp-", suffix=".pack") as out:
        temp = Path(out.name)
        try:
            runner.run_into(root, out.file, "pack-objects", "--revs", "--stdout", input_text=revs)
            name = runner.run(root, "index-pack", "--no-rev-index", str(temp)).stdout.strip()
            if (pack_dir / f"keep-{name}.idx").exists():
                return  # the same objects kept already (as git takes an existing pack)
            os.chmod(temp, 0o444)  # noqa: PTH101 - as git leaves a pack
            os.chmod(temp.with_suffix(".idx"), 0o444)  # noqa: PTH101
            with contextlib.suppress(FileExistsError):  # a .pack whose .idx never came
                os.link(temp, pack_dir / f"keep-{name}.pack")
            temp.with_suffix(".idx").rename(pack_dir / f"keep-{name}.idx")  # the .idx last
        finally:
            temp.with_suffix(".idx").unlink(missing_ok=True)


def _same_file_system(a: Path, b: Path) -> bool:
    """Whether the directories *a* and *b* lie on one file system (taken so if *b* is gone)."""
    try:
        return a.stat().st_dev == b.stat().st_dev
    except FileNotFoundError:  # the store moved: git's own command says what is wrong
        return True


def _link_or_copy(source: Path, dest: Path) -> None:
    """Hard-link *source* as *dest*, or copy it where they lie on different file systems.

    FileExistsError if *dest* exists, as for a link. A copy is written under a temporary
    name (git's, which the store's change test skips) and linked in once whole.
    """
    try:
        os.link(source, dest)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
    else:
        return
    if os.path.lexists(dest):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dest))
    fd, name = tempfile.mkstemp(prefix="tmp_obj_", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, fs.open_file(source) as data:
            shutil.copyfileobj(data, out)
        os.chmod(name, 0o444)  # noqa: PTH101 - as git leaves an object file
        os.link(name, dest)
    finally:
        os.unlink(name)  # noqa: PTH108


def hold(common: Path, held: Path) -> None:
    """Hard-link every object file of *common*'s store (loose objects, packs) under *held*.

    git never rewrites an object file, so a link is the file as it will stay: one an agent
    deletes (or moves into a store of its own) stays here and can be put back. It costs a
    directory entry per file, no data, until the run lets go of them (:func:`let_go`); a copy
    of each file where *held* is on another file system than the store. Not
    the temporary file a killed git left beside the loose objects (``tmp_obj_...``): no
    object, and one `git gc` removes.
    """
    objects = common / "objects"
    for directory in os.scandir(objects):
        if directory.name == "info" or not directory.is_dir(follow_symlinks=False):
            continue
        pack = directory.name == "pack"
        target = held / directory.name
        target.mkdir(parents=True, exist_ok=True)
        try:
            entries = list(os.scandir(directory.path))
        except FileNotFoundError:  # `git prune-packed` (a gc) removed it: its objects are packed
            continue
        for entry in entries:
            if entry.is_file(follow_symlinks=False) and (
                pack or _loose_name(directory.name, entry.name)
            ):
                with contextlib.suppress(FileExistsError, FileNotFoundError):
                    _link_or_copy(Path(entry.path), target / entry.name)


_HEX = frozenset("0123456789abcdef")


def _loose_name(fan_out: str, name: str) -> bool:
    """Whether ``objects/<fan_out>/<name>`` is named as a loose object (SHA-1 or SHA-256)."""
    oid = fan_out + name
    return len(fan_out) == 2 and len(oid) in {40, 64} and set(oid) <= _HEX  # noqa: PLR2004


def let_go(held: Path) -> None:
    """Drop the links :func:`hold` made (what git removed since is freed then)."""
    shutil.rmtree(held, ignore_errors=True)


def recover(common: Path, pack_dir: Path, held: Path | None = None) -> None:
    """Put the kept packs, and the held object files missing now, back into the object store.

    git skips objects it has twice.
    """
    if held is not None:
        for source, dest in _gone(common, held):
            dest.parent.mkdir(exist_ok=True)
            _link_or_copy(source, dest)
        put_back(written_over(common, held))
    if not pack_dir.is_dir():
        return
    target = common / "objects" / "pack"
    target.mkdir(parents=True, exist_ok=True)
    for idx in sorted(pack_dir.glob("keep-*.idx")):
        pack = idx.with_suffix(".pack")
        if not pack.is_file():
            continue
        name = idx.stem.removeprefix("keep-")
        for source, suffix in ((pack, ".pack"), (idx, ".idx")):  # the .idx last: git's order
            dest = target / f"pack-{name}{suffix}"
            if not dest.exists():
                shutil.copyfile(source, dest)
                dest.chmod(0o444)


def recover_held(root: Path, common: Path, held: Path) -> None:
    """Link back each held object git no longer finds (a pack: each pack that is gone).

    For the end of a run, when the refs are complete: an object deep in your history is not
    asked about on every scan. A loose file git removed because a pack holds its object now
    (`gc`) stays removed.
    """
    gone = _gone(common, held)
    loose = {f"{dest.parent.name}{dest.name}": (source, dest) for source, dest in gone
             if dest.parent.name != "pack"}  # fmt: skip
    present = _batch_check(root, sorted(loose))
    # A pack that is gone comes back only when git misses one of its objects (a `git gc`
    # of yours replaced it by a new one otherwise).
    packs = {
        dest.stem for source, dest in gone if dest.suffix == ".idx" and _missing_from(root, source)
    }
    for source, dest in gone:
        name = f"{dest.parent.name}{dest.name}"
        if name in loose and name in present:
            continue
        if dest.parent.name == "pack" and dest.stem not in packs:
            continue
        dest.parent.mkdir(exist_ok=True)
        _link_or_copy(source, dest)


def written_over(common: Path, held: Path) -> list[tuple[Path, Path]]:
    """(held file, its name in the store) for each held object file written over.

    That is: its name in the store is another file now, with other content (a loose object,
    pack or pack index renamed onto, or removed and made again).

    git never does that (an object's name is its content's hash, and git reads a loose object
    by its name without checking it): your ``git show`` would show what the new file says.
    A file git wrote again with the same object (another compression, a `git gc` with nothing
    new renaming the same pack over its name) is no change: it is held instead of the old one,
    whose space is freed, and not compared again.
    """
    if not held.is_dir():
        return []
    objects = common / "objects"
    found = []
    for directory in os.scandir(held):
        pack = directory.name == "pack"
        for entry in os.scandir(directory.path):
            if pack and not entry.name.endswith((".pack", ".idx")):
                continue  # what git rewrites itself (multi-pack-index, bitmaps), or no object
            dest = objects / directory.name / entry.name
            try:
                now = os.lstat(dest)
                mine = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # gone: :func:`recover` links it back
            if (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                continue
            if not stat.S_ISREG(now.st_mode) or not _held_again(held, Path(entry.path), dest, pack):
                found.append((Path(entry.path), dest))
    return sorted(found, key=lambda pair: (pair[1].parent.name, pair[1].suffix == ".idx"))


def _held_again(held: Path, mine: Path, dest: Path, pack: bool) -> bool:
    """Whether the store's *dest* holds what the held file *mine* does; if so, it is held.

    Linked aside first and that link compared: what is held is what was compared.
    """
    aside = held.with_name(f"{held.name}.again")
    aside.unlink(missing_ok=True)
    try:
        os.link(dest, aside)
    except FileNotFoundError:
        return True  # gone meanwhile: :func:`recover` links it back
    except OSError:
        return _same_object(mine, dest, pack)
    try:
        if not _same_object(mine, aside, pack):
            return False
        aside.replace(mine)
        return True
    finally:
        aside.unlink(missing_ok=True)


def rewritten(common: Path, held: Path, since_ns: int) -> list[Path]:
    """The held loose objects rewritten in place (through the store's name or another).

    Those changed since *since_ns* (their ctime) whose bytes no longer hash to their name.
    The held link is that very file, so there is nothing to put back. A change git makes (it
    refreshes the time of an object it would have written again) keeps the content.
    """
    if not held.is_dir():
        return []
    objects = common / "objects"
    found = []
    for directory in os.scandir(held):
        if directory.name == "pack":
            continue
        for entry in os.scandir(directory.path):
            try:
                changed = entry.stat(follow_symlinks=False).st_ctime_ns >= since_ns
            except FileNotFoundError:
                continue
            if changed and _hashes_to(Path(entry.path), directory.name + entry.name) is False:
                found.append(objects / directory.name / entry.name)
    return sorted(found)


def forged_loose(
    common: Path,
    seen: set[str],
    *,
    held: AbstractSet[str],
    named: AbstractSet[str] = frozenset(),
    listing: bool = False,
) -> tuple[list[Path], set[str]]:
    """The loose objects made since the hold whose bytes do not hash to their name.

    Read: those of *named* (the store's change test saw their file made, renamed onto or
    written since last time: read even if in *seen*, for another file may hold a known name
    now) and, with *listing*, every loose object not in *seen*. *seen*: the names known good,
    each one found good added (an object is read once while its file stays); *held*: the held
    names, never read here (:func:`written_over` compares those). git never writes an object
    it finds it has: one planted under the name of an object you have not made yet (the
    empty blob) would be what your next commit of that content records. Returns the forged
    ones and the names that could not be read now (to read next time).
    """
    objects = common / "objects"
    wanted = set(named)
    if listing:
        for directory in os.scandir(objects):
            if len(directory.name) != 2 or not directory.is_dir(follow_symlinks=False):  # noqa: PLR2004
                continue
            try:
                names = os.listdir(directory.path)  # noqa: PTH208 - names only
            except (FileNotFoundError, NotADirectoryError):
                continue
            wanted.update(
                directory.name + name
                for name in names
                if directory.name + name not in seen and _loose_name(directory.name, name)
            )
    found, unread = [], set()
    for oid in sorted(wanted - held):
        path = objects / oid[:2] / oid[2:]
        good = _hashes_to(path, oid)
        if good:
            seen.add(oid)
        elif good is False:
            found.append(path)
        elif os.path.lexists(path):  # not gone: unreadable now (out of fds)
            unread.add(oid)
    return found, unread


def held_loose(held: Path) -> set[str]:
    """The names of the loose objects held."""
    if not held.is_dir():
        return set()
    return {
        directory.name + name
        for directory in os.scandir(held)
        if directory.name != "pack"
        for name in os.listdir(directory.path)  # noqa: PTH208 - names only
    }


_PIECE = 1 << 20  # read and inflated at most this much at a time
_HEADER_MAX = 64  # "<type> <size>\0"
_NO_HEADER = -2


def _hashes_to(path: Path, name: str) -> bool | None:
    """Whether the loose object file *path* holds the object named *name*.

    Read and inflated a piece at a time, and no further than the size its header gives: an
    agent's few kilobytes that inflate to gigabytes cost no more memory than a piece. None
    when it could not be read (gone, out of file descriptors, an I/O error): that tells
    nothing of the object, which is looked at again next time. False for a named pipe or a
    device: git would wait on it (or read it without end), never find an object there.
    """
    # git's own object names: SHA-256 in a repository made so, SHA-1 otherwise.
    digest = hashlib.sha256() if len(name) == 64 else hashlib.sha1()  # noqa: PLR2004, S324
    inflate = zlib.decompressobj()
    head, total, seen = b"", -1, 0
    try:
        with fs.open_file(path) as data:
            while chunk := data.read(_PIECE):
                while True:
                    piece = inflate.decompress(chunk, _PIECE)
                    digest.update(piece)
                    seen += len(piece)
                    if total < 0:
                        head += piece[:_HEADER_MAX]
                        total = _object_length(head)
                        if total == _NO_HEADER or (total < 0 and len(head) >= _HEADER_MAX):
                            return False
                    if 0 <= total < seen:
                        return False  # more than its header says: not what git wrote
                    chunk = inflate.unconsumed_tail
                    if not chunk and len(piece) < _PIECE:
                        break
        digest.update(inflate.flush(_PIECE))
    except fs.NotAFileError:
        return False  # a named pipe or a device: git would wait on it, never read an object
    except OSError:
        return None
    except zlib.error:
        return False
    return inflate.eof and not inflate.unused_data and digest.hexdigest() == name


def _object_length(head: bytes) -> int:
    """The length of the object whose inflated bytes begin with *head*, header included.

    -1 while the header is not whole yet, ``_NO_HEADER`` when it is none.
    """
    end = head.find(b"\0")
    if end < 0:
        return -1
    _, _, size = head[:end].partition(b" ")
    return end + 1 + int(size) if size.isdigit() else _NO_HEADER


def put_back(pairs: Sequence[tuple[Path, Path]]) -> None:
    """Put each held file of *pairs* back in place of what is at its name now."""
    for source, dest in pairs:
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        # Named as git names its temporary files, which the object store's change test skips.
        aside = dest.with_name(f"tmp_obj_{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            aside.unlink()
        _link_or_copy(source, aside)
        aside.replace(dest)


def _same_object(held: Path, now: Path, pack: bool) -> bool:
    """Whether the object file *now* holds what the held file *held* does."""
    try:
        if pack:
            return filecmp.cmp(held, now, shallow=False)
        # The held one is what it says; one that cannot be read now tells nothing.
        return _hashes_to(now, held.parent.name + held.name) is not False
    except (OSError, zlib.error):
        return False


def _missing_from(root: Path, idx: Path) -> bool:
    """Whether the store of *root* misses an object the pack index *idx* lists."""
    listed = runner.run_bytes(root, "show-index", input_bytes=fs.read_file(idx), check=False)
    names = [line.split()[1].decode() for line in listed.stdout.splitlines() if line.strip()]
    found = _batch_check(root, names)
    return listed.returncode != 0 or len(found) < len(names)


def _gone(common: Path, held: Path) -> list[tuple[Path, Path]]:
    """(held file, where it was) for each held object file missing from the store.

    A pack's index comes after its pack, as git writes them.
    """
    if not held.is_dir():
        return []
    objects = common / "objects"
    found = []
    for directory in os.scandir(held):
        for entry in os.scandir(directory.path):
            dest = objects / directory.name / entry.name
            if not os.path.lexists(dest):
                found.append((Path(entry.path), dest))
    return sorted(found, key=lambda pair: (pair[1].parent.name, pair[1].suffix == ".idx"))


def last_complete(root: Path, common: Path, ref: str) -> str | None:
    """The newest commit *ref*'s reflog names whose commit and root tree are there, or None.

    For a ref the guard never saw complete (a task's branch made since its last check).
    """
    try:
        lines = fs.read_file(common / "logs" / ref).decode(errors="replace").splitlines()
    except OSError:
        return None
    named: list[str] = []
    for line in reversed(lines[-_REFLOG_LOOK:]):
        for sha in reversed(line.split(" ", 2)[:2]):  # the entry's new value, then its old
            if _OBJECT_ID.fullmatch(sha) and sha.strip("0") and sha not in named:
                named.append(sha)
    kinds = _batch_check(root, [*named, *(f"{sha}^{{tree}}" for sha in named)])
    return next((s for s in named if kinds.get(s) == "commit" and f"{s}^{{tree}}" in kinds), None)


def keep_ref(ref: str) -> str:
    """Where the last good tip of *ref* is kept when *ref* breaks."""
    return KEEP_PREFIX + ref.removeprefix("refs/")


def _batch_check(root: Path, names: Sequence[str]) -> dict[str, str]:
    """Object type of each of *names* that exists (and is complete enough to peel)."""
    if not names:
        return {}
    out = runner.run(
        root, "cat-file", "--batch-check=%(objecttype)", input_text="\n".join(names) + "\n"
    ).stdout.splitlines()
    found = {}
    for name, line in zip(names, out, strict=False):
        if not line.endswith(" missing") and not line.endswith(" ambiguous"):
            found[name] = line.strip()
    return found


def _complete(root: Path, tips: Sequence[str], exclude: Sequence[str]) -> bool:
    """Whether every object reachable from *tips* but not from *exclude* is present.

    The tips are given on stdin: tens of thousands of tags (each a branch of yours to *exclude*)
    are more than a command line holds.
    """
    revs = [*tips, *(f"^{sha}" for sha in sorted(set(exclude)))]
    args = ["rev-list", "--objects", "--missing=print", "--stdin"]
    try:
        out = runner.run(root, *args, input_text="\n".join(revs) + "\n").stdout
    except (CommandError, subprocess.SubprocessError):
        return False
    return not any(line.startswith("?") for line in out.splitlines())
