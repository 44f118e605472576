"""Staging quarantined: an `add` hashes into an object store of its own, moved in once checked.

`git add` writes an object for each file it stages before anything can look at it: a file
then left out (one holding a secret's value, one past max_file) would lie in the repository's
store, in no commit, until `git gc` prunes it two weeks later. So swarm's commits of what it
finds on disk stage into a store of their own in the git dir (the repository's store its
alternate: nothing already there is written again); once the files left out are unstaged,
the objects the index still names move into the repository's store (:class:`Apart`).

A checkpoint stages into a copy of the worktree's index, in a directory of the worktree's git
dir that is its object store too (:mod:`worktree_swarm.git.index_copy`). A rescue
(:func:`apart`), whose index is a file of its own, gets the same in the repository's git dir.
Either directory is held (``flock``) while it is in use: what one killed half-way left, none holding
it, goes with the next checkpoint of that worktree or the next rescue (:func:`sweep`), or
with `swarm doctor --yes` (:func:`leftovers`, :func:`remove_unheld`); a live one is never
removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import NoReturn

from worktree_swarm.core.errors import GitError
from worktree_swarm.git import runner
from worktree_swarm.infra.faults import is_full

PREFIX = "swarm-staging-"  # in the worktree's git dir, one per checkpoint under way
APART_PREFIX = "swarm-apart-"  # in the repository's git dir, one per rescue under way
_TRIES = 5  # directories made in a row, each removed by a sweep before it was held
_LOOKS = 100  # tries, 10 ms apart, to lock a directory just made that a look holds
_FANOUT = re.compile(r"[0-9a-f]{2}")
_REST = re.compile(r"[0-9a-f]{38}(?:[0-9a-f]{24})?")


def alternate(store: Path) -> dict[str, str]:
    """The environment that has git read objects from *store* too (as an alternate)."""
    # Quoted as git unquotes it: a path may hold the list's separator, `:`.
    quoted = str(store).replace("\\", "\\\\").replace('"', '\\"')
    return {"GIT_ALTERNATE_OBJECT_DIRECTORIES": f'"{quoted}"'}


def keeping_shared_indexes() -> dict[str, str]:
    """The environment that keeps git from deleting a split index's shared indexes.

    Writing the index copy (``core.splitIndex``), git may write a shared index of its own
    beside the worktree's index and delete those older than ``splitIndex.sharedIndexExpire``:
    the one that index still names among them, until the copy replaces it. A checkpoint cut
    short would leave an index no git can read. Set after any your environment gives git.
    """
    count = os.environ.get("GIT_CONFIG_COUNT", "")
    given = int(count) if count.isdigit() else 0
    return {
        "GIT_CONFIG_COUNT": str(given + 1),
        f"GIT_CONFIG_KEY_{given}": "splitIndex.sharedIndexExpire",
        f"GIT_CONFIG_VALUE_{given}": "never",
    }


class Apart:
    """An object store of its own (*objects*), and moving what it wrote into the repository's.

    *store*: the repository's ``objects``; *cwd*: a checkout of the repository, where git runs.
    In the own store, the path of an index of its own (:attr:`index`; git reads objects from
    fan-out directories and ``pack/`` only): gone with it, and with what a sweep removes of
    one killed half-way.
    """

    def __init__(self, cwd: Path, objects: Path, store: Path) -> None:
        self.cwd = cwd
        self.objects = objects
        self.store = store
        self.index = objects / "index"

    @property
    def env(self) -> dict[str, str]:
        """The environment of a git that hashes into the own store (the repository's read too)."""
        return {
            "GIT_OBJECT_DIRECTORY": str(self.objects),
            **alternate(self.store),
            **keeping_shared_indexes(),  # it writes an index of its own
        }

    def move_in(self, keep: Collection[str] | None = None) -> None:
        """Move the objects to keep into the repository's store.

        *keep*: the blobs still wanted of those the own store holds (None: all it holds).
        The rest, never in the repository's store, goes with the own store. Every tree it
        wrote is kept: a file's content is only ever a blob, and with
        ``index.sparse`` the index names a tree `add` wrote (a directory outside the cone
        folded back into one entry), which no list of its changed files shows.
        """
        listed: list[tuple[str, str]] | None = None  # one listing for the trees and the packs
        if keep is not None:
            listed = self._listed()
            keep = {*keep, *(oid for oid, kind in listed if kind == "tree")}
        written: set[str] = set()
        for fanout in _entries(self.objects):
            if not _FANOUT.fullmatch(fanout.name):
                continue
            names = [name for name in os.listdir(fanout) if _REST.fullmatch(name)]  # noqa: PTH208
            written.update(fanout.name + name for name in names)
            wanted = [n for n in names if keep is None or fanout.name + n in keep]
            if wanted:  # one directory made a fan-out, plain strings for its thousands of files
                into = _fanout_dir(self.store / fanout.name, self.store)
                for name in wanted:
                    _link(f"{fanout}/{name}", f"{into}/{name}")
        if any((self.objects / "pack").glob("*.idx")):
            self._repack(keep, written, self._listed() if listed is None else listed)

    def _listed(self) -> list[tuple[str, str]]:
        """Each object of the own store (loose or packed), with its type."""
        mine = {"GIT_OBJECT_DIRECTORY": str(self.objects)}
        listed = runner.run(
            self.cwd, "cat-file", "--batch-all-objects",
            "--batch-check=%(objectname) %(objecttype)", env=mine,
        ).stdout.split()  # fmt: skip
        return list(zip(listed[0::2], listed[1::2], strict=True))

    def _repack(
        self, keep: Collection[str] | None, loose: set[str], listed: list[tuple[str, str]]
    ) -> None:
        """Pack into the repository's store the objects to keep that a pack of the own holds.

        `add` streams a file past ``core.bigFileThreshold`` into a pack, which may hold one
        left out too: the kept ones are packed again, by git, not the pack moved whole.
        *listed*: the own store's objects (:meth:`_listed`).
        """
        wanted = [oid for oid, _ in listed if oid not in loose and (keep is None or oid in keep)]
        if not wanted:
            return
        into = {"GIT_OBJECT_DIRECTORY": str(self.store), **alternate(self.objects)}
        runner.run(
            self.cwd, "pack-objects", "-q", str(self.store / "pack" / "pack"),
            input_text="".join(f"{oid}\n" for oid in wanted), env=into,
        )  # fmt: skip


@contextlib.contextmanager
def apart(cwd: Path, common: Path) -> Iterator[Apart]:
    """An :class:`Apart` in the git dir *common* of the checkout *cwd*, removed when it ends.

    Held (``flock``) while it is in use; what a rescue killed half-way left, none holding it,
    is removed first.
    """
    with owned(common, APART_PREFIX, cwd, "save files") as own:
        yield Apart(cwd, own, common / "objects")


@contextlib.contextmanager
def owned(where: Path, prefix: str, cwd: Path, doing: str) -> Iterator[Path]:
    """A directory *prefix*``*`` of its own in the git dir *where*: an empty object store.

    Held (``flock``) from before it is filled until it is removed, when it ends. What earlier
    ones killed half-way left there, none holding it, is removed first. *doing*: what an error
    says the directory was for, in *cwd*.
    """
    try:
        sweep(where, prefix)
        own, fd = _made_held(where, prefix)
    except OSError as exc:
        refuse(exc, cwd, doing)
    try:
        yield own
    finally:
        shutil.rmtree(own, ignore_errors=True)  # still held: no sweep looks at it meanwhile
        os.close(fd)


def _made_held(where: Path, prefix: str) -> tuple[Path, int]:
    """A directory *prefix*``*`` made in *where*, an empty object store, held (``flock``).

    Returned with the open descriptor through which this process holds it. A sweep may see it
    before it is held, and remove it (holding it as it does): it is filled only once held and
    still where it was made, else another is made (one that stays held by another process is
    left to it). A sweep never removes one once held. Where the file system cannot lock, it is
    used unheld: never swept.
    """
    for _ in range(_TRIES):
        own = Path(tempfile.mkdtemp(prefix=prefix, dir=where))
        try:
            fd = os.open(own, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue  # removed (or swapped for a link) as it was made: another
        if _locked(fd) and _same(fd, own):  # not removed by a sweep that held it before
            # It is the store itself, empty: git makes the fan-out and ``pack`` directories
            # it writes into, and takes no ``info`` from here (its alternate is in the
            # environment). Each directory made costs the file system an inode.
            return own, fd
        os.close(fd)
    raise OSError(errno.EAGAIN, f"each directory made in {where} was removed as it was made")


def _locked(fd: int) -> bool:
    """Lock the directory open as *fd* (``flock``): whether this process holds it now.

    A look at whether it is held (a sweep's, `swarm doctor`'s) holds it for an instant: waited
    out, for up to a second. True where the file system cannot lock.
    """
    for _ in range(_LOOKS):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                return True  # none can lock there: never swept either
            time.sleep(0.01)
        else:
            return True
    return False


def refuse(exc: OSError, cwd: Path, doing: str) -> NoReturn:
    """Raise *exc* for a full disk (waited out, as every write of swarm's), else a GitError."""
    if is_full(exc):
        raise exc
    raise GitError(f"{cwd}: cannot {doing} there ({exc.strerror})") from exc


def sweep(where: Path, prefix: str = PREFIX) -> None:
    """Remove what checkpoints (*prefix*: a rescue's, theirs) killed half-way left in *where*.

    Those none holds, in the git dir *where*; a symlink or file by their name too, as itself.
    """
    for left in where.glob(f"{prefix}*"):
        with contextlib.suppress(OSError):
            remove_unheld(left)


def leftovers(common: Path) -> list[Path]:
    """What checkpoints and rescues killed half-way left in the repository of git dir *common*.

    The staging stores of checkpoints in the git dir of each worktree (the main one's is
    *common*), the rescues' stores in *common*: those none holds, and anything else by their
    names (a file, a symlink). A worktree's git dir that is a symlink is not looked into.
    """
    worktrees = _entries(common / "worktrees")
    admins = [common, *(e for e in worktrees if e.is_dir() and not e.is_symlink())]
    found = [left for admin in admins for left in sorted(admin.glob(f"{PREFIX}*"))]
    found += sorted(common.glob(f"{APART_PREFIX}*"))
    return [left for left in found if not _held(left)]


def remove_unheld(left: Path) -> bool:
    """Remove *left* (a directory a checkpoint or rescue made) unless a process holds it.

    A symlink or any other file by that name is removed as itself, never what it points to.
    True when it was removed or is gone; False when it is held (in use), or where the file
    system cannot lock (never known to be free). Held by this process while it is removed:
    a checkpoint or rescue that made it and locks it only now sees it was not its own.
    """
    try:
        fd = os.open(left, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR):
            raise
        left.unlink(missing_ok=True)  # a symlink (ELOOP; EMLINK on BSDs), or a file
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        if _same(fd, left):  # else removed since it was opened, maybe another made there
            shutil.rmtree(left)
    finally:
        os.close(fd)
    return True


def _same(fd: int, path: Path) -> bool:
    """Whether the directory open as *fd* is still the one at *path*."""
    try:
        now = path.lstat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def _held(left: Path) -> bool:
    """Whether a process holds *left* (``flock``).

    False for anything but a directory; True where the file system cannot lock (never known
    to be free).
    """
    try:
        fd = os.open(left, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False  # gone, a symlink, a file: nothing holds it as a store
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        return False
    finally:
        os.close(fd)


def _entries(folder: Path) -> list[Path]:
    """The entries of *folder*, none when it is missing."""
    try:
        return list(folder.iterdir())
    except FileNotFoundError:
        return []


def _fanout_dir(folder: Path, store: Path) -> Path:
    """The fan-out directory *folder* of *store*, made with the store's mode where missing."""
    if not folder.is_dir():
        # git's own mode for a fan-out directory: its store's (a shared repository's).
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
            _chmod_made(folder, stat.S_IMODE(store.stat().st_mode))
    return folder


def _link(source: str, target: str) -> None:
    """Give the object file *source* its name *target* (one there already stays)."""
    try:
        os.link(source, target)
    except FileExistsError:
        pass  # the same object, written before
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        _copy(Path(source), Path(target))  # another file system, or one without hard links


def _chmod_made(folder: Path, mode: int) -> None:
    """Give the directory *folder*, just made, *mode*: never through a link put in its place.

    An agent writing the store (also under --sandbox) can swap it for a symlink to any
    directory of yours between the two: that one would get the store's mode.
    """
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return  # a link (or gone) already: left as it is, the guard's to take away
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _copy(source: Path, target: Path) -> None:
    """Copy *source* to *target* through a temporary file beside it (no hard link there).

    One cut short (a full disk) is removed: nothing half-written stays in the store.
    """
    copied: Path | None = None
    try:
        with (
            source.open("rb") as data,
            tempfile.NamedTemporaryFile(dir=target.parent, prefix="tmp_obj_", delete=False) as out,
        ):
            copied = Path(out.name)
            shutil.copyfileobj(data, out)
        copied.chmod(0o444)
        copied.replace(target)
    except BaseException:
        if copied is not None:
            copied.unlink(missing_ok=True)
        raise
