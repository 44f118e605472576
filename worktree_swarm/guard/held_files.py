"""The object files of the baseline, held: hard links that keep each as git wrote it.

git never rewrites an object file, so a link to one is that object as it will stay: one an
agent deletes, moves or writes over is put back from the held file. Held files are compared
with what the store has at their names now (written over, or rewritten in place), and let go
when the run ends.

The guard's directory may lie on another file system than the object store (``.git/swarm``
a mount of its own): its hard links to object files are copies there.
"""

from __future__ import annotations

import contextlib
import errno
import filecmp
import os
import shutil
import stat
import tempfile
import zlib
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from worktree_swarm.guard.loose_objects import hashes_to, loose_name
from worktree_swarm.infra import fs

HELD = "held"  # under the guard's directory: links to the object files at the baseline


def link_or_copy(source: Path, dest: Path) -> None:
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


def hold(
    common: Path,
    held: Path,
    *,
    only: Collection[str] | None = None,
    unheld: set[str] | None = None,
) -> list[str]:
    """Hard-link every object file of *common*'s store (loose objects, packs) under *held*.

    git never rewrites an object file, so a link is the file as it will stay: one an agent
    deletes (or moves into a store of its own) stays here and can be put back. It costs a
    directory entry per file, no data, until the run lets go of them (:func:`let_go`); a copy
    of each file where *held* is on another file system than the store. Not
    the temporary file a killed git left beside the loose objects (``tmp_obj_...``): no
    object, and one `git gc` removes. Not cut short by a stop signal: links alone, quick, and
    the old hold may be let go already (a resume's agents run on after the stop, unwatched).
    A directory that cannot be listed (made unreadable), or a file that cannot be linked or
    copied (its directory made unsearchable, the file unreadable where it is copied), is not
    held, the rest is: returns why, once for each directory, and adds its name to *unheld*.
    *only*: those directories alone, held again later: a loose object then only when it
    hashes to its name (written since, it may be an agent's forgery, which held would be
    put back as yours); not ``pack``, whose files are held at the start only.
    """
    objects = common / "objects"
    failed = []
    for directory in os.scandir(objects):
        if directory.name == "info" or not directory.is_dir(follow_symlinks=False):
            continue
        if only is not None and (directory.name not in only or directory.name == "pack"):
            continue
        target = held / directory.name
        target.mkdir(parents=True, exist_ok=True)
        checked = None if only is None else held.with_name(f"{held.name}.again")
        if (why := _hold_directory(directory, target, checked)) is not None:
            failed.append(f"objects/{directory.name}{why}")
            if unheld is not None:
                unheld.add(directory.name)
    return failed


def _hold_directory(
    directory: os.DirEntry[str], target: Path, checked: Path | None = None
) -> str | None:
    """Link each object file of the store's *directory* under *target*; why some are not.

    *checked*: where a loose object is linked aside first, held only if it hashes to its name.
    """
    pack = directory.name == "pack"
    try:
        entries = list(os.scandir(directory.path))
    except FileNotFoundError:  # `git prune-packed` (a gc) removed it: its objects are packed
        return None
    except OSError as error:
        return f" not held: {error.strerror or error}"
    first: OSError | None = None
    missed = 0
    for entry in entries:
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if pack:
                link_or_copy(Path(entry.path), target / entry.name)
            elif loose_name(directory.name, entry.name):
                _hold_loose(Path(entry.path), target / entry.name, checked)
        except (FileExistsError, FileNotFoundError):
            continue  # held already, or gone meanwhile (packed by a gc)
        except OSError as error:
            first, missed = first or error, missed + 1
    if first is None:
        return None
    files = "file" if missed == 1 else "files"
    return f": {missed} {files} not held: {first.strerror or first}"


def _hold_loose(source: Path, dest: Path, aside: Path | None) -> None:
    """Hold the loose object *source* as *dest*; with *aside*, only if it hashes to its name.

    Linked *aside* first and that link read: what is held is what was read. OSError when it
    cannot be read now; a forgery is skipped (the scan's check of new loose objects has it).
    """
    if aside is None:
        link_or_copy(source, dest)
        return
    if os.path.lexists(dest):
        return
    aside.unlink(missing_ok=True)
    link_or_copy(source, aside)
    try:
        good = hashes_to(aside, dest.parent.name + dest.name)
        if good is None:
            raise OSError(errno.EIO, "cannot be read now", str(source))
        if good:
            os.link(aside, dest)
    finally:
        aside.unlink(missing_ok=True)


def let_go(held: Path) -> None:
    """Drop the links :func:`hold` made (what git removed since is freed then)."""
    shutil.rmtree(held, ignore_errors=True)


def written_over(
    common: Path, held: Path, *, unread: list[tuple[Path, Path]] | None = None
) -> list[tuple[Path, Path]]:
    """(held file, its name in the store) for each held object file written over.

    That is: its name in the store is another file now, with other content (a loose object,
    pack or pack index renamed onto, or removed and made again).

    git never does that (an object's name is its content's hash, and git reads a loose object
    by its name without checking it): your ``git show`` would show what the new file says.
    A file git wrote again with the same object (another compression, a `git gc` with nothing
    new renaming the same pack over its name) is no change: it is held instead of the old one,
    whose space is freed, and not compared again. A loose object's other file that cannot be
    read now tells nothing: added to *unread* (if given), never held; so is each held file
    in a directory of the store that cannot be searched now.
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
            same = _still_held(held, entry, dest, pack)
            if same is None and unread is not None:
                unread.append((Path(entry.path), dest))
            elif same is False:
                found.append((Path(entry.path), dest))
    return sorted(found, key=lambda pair: (pair[1].parent.name, pair[1].suffix == ".idx"))


def _still_held(held: Path, entry: os.DirEntry[str], dest: Path, pack: bool) -> bool | None:
    """Whether the store's *dest* holds what the held file *entry* does (gone: taken so).

    None when that cannot be told now (:func:`_held_again`, or its directory unsearchable).
    """
    try:
        now = os.lstat(dest)
        mine = entry.stat(follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return True  # gone: :func:`.integrity.recover` links it back
    except PermissionError:
        return None
    if (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
        return True
    return stat.S_ISREG(now.st_mode) and _held_again(held, Path(entry.path), dest, pack)


def _held_again(held: Path, mine: Path, dest: Path, pack: bool) -> bool | None:
    """Whether the store's *dest* holds what the held file *mine* does; if so, it is held.

    Linked aside first and that link compared: what is held is what was compared. None when
    it cannot be read now, and it is not held: an agent's forged file made unreadable to the
    guard, then readable again, would be the hold, your object's only copy gone with it.
    """
    aside = held.with_name(f"{held.name}.again")
    aside.unlink(missing_ok=True)
    try:
        os.link(dest, aside)
    except FileNotFoundError:
        return True  # gone meanwhile: :func:`.integrity.recover` links it back
    except OSError:
        return _same_object(mine, dest, pack)
    try:
        same = _same_object(mine, aside, pack)
        if same:
            aside.replace(mine)
        return same
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
            if changed and hashes_to(Path(entry.path), directory.name + entry.name) is False:
                found.append(objects / directory.name / entry.name)
    return sorted(found)


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


def put_back(pairs: Sequence[tuple[Path, Path]]) -> None:
    """Put each held file of *pairs* back in place of what is at its name now.

    One that fails does not stop the rest: OSError at the end names each (:func:`_not_back`).
    """
    failed: list[tuple[Path, OSError]] = []
    for source, dest in pairs:
        try:
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            # Named as git names its temporary files, which the object store's change test
            # skips.
            aside = dest.with_name(f"tmp_obj_{os.getpid()}")
            with contextlib.suppress(FileNotFoundError):
                aside.unlink()
            link_or_copy(source, aside)
            aside.replace(dest)
        except OSError as error:
            failed.append((dest, error))
    _not_back(failed)


def link_back(pairs: Iterable[tuple[Path, Path]]) -> None:
    """Link each held file of *pairs* back where it was (:func:`missing_held`'s pairs).

    One that fails (its directory made a file, or unwritable) does not stop the rest: OSError
    at the end names each (:func:`_not_back`). One there again meanwhile is left: git wrote
    it (the same object), or another file the comparison with the held one finds.
    """
    failed: list[tuple[Path, OSError]] = []
    for source, dest in pairs:
        try:
            dest.parent.mkdir(exist_ok=True)
            with contextlib.suppress(FileExistsError):
                link_or_copy(source, dest)
        except OSError as error:
            failed.append((dest, error))
    _not_back(failed)


def _not_back(failed: Sequence[tuple[Path, OSError]]) -> None:
    """Raise one OSError naming the object files of *failed* and why (the first few)."""
    if not failed:
        return
    named = [f"objects/{d.parent.name}/{d.name} ({e.strerror or e})" for d, e in failed[:3]]
    more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""  # noqa: PLR2004
    raise OSError(f"held object files not put back: {', '.join(named)}{more}")


def _same_object(held: Path, now: Path, pack: bool) -> bool | None:
    """Whether the object file *now* holds what the held file *held* does.

    None: a loose object's file that cannot be read now (out of file descriptors, or made
    unreadable), which tells nothing of it.
    """
    try:
        if pack:
            return filecmp.cmp(held, now, shallow=False)
        return hashes_to(now, held.parent.name + held.name)  # the held one is what it says
    except (OSError, zlib.error):
        return False


def missing_held(
    common: Path, held: Path, *, objects_only: bool = False
) -> list[tuple[Path, Path]]:
    """(held file, where it was) for each held object file missing from the store.

    A pack's index comes after its pack, as git writes them. *objects_only*: loose objects,
    packs and their indexes, not what git makes of them (a multi-pack index, a bitmap).
    """
    if not held.is_dir():
        return []
    objects = common / "objects"
    found = []
    for directory in os.scandir(held):
        pack = objects_only and directory.name == "pack"
        for entry in os.scandir(directory.path):
            if pack and not entry.name.endswith((".pack", ".idx")):
                continue
            dest = objects / directory.name / entry.name
            if not os.path.lexists(dest):
                found.append((Path(entry.path), dest))
    return sorted(found, key=lambda pair: (pair[1].parent.name, pair[1].suffix == ".idx"))
