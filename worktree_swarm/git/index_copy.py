"""A checkpoint's staging: a copy of the worktree's index, hashing into a store of its own.

The checkpoint stages into the copy (:func:`staging`), its objects apart (:mod:`quarantine`);
once the files left out are unstaged, the objects the copy still names move into the
repository's store and the copy replaces the index, under git's own ``index.lock``. Killed
before that, the worktree's index is as it was. Another git that wrote the index meanwhile (a
user's `git add` in the task's worktree) is never undone: the checkpoint stages again from
the index as it is now (:func:`staged_afresh`).
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import TypeVar

from worktree_swarm.core.errors import GitError
from worktree_swarm.git import quarantine, runner
from worktree_swarm.git.config_files import common_dir, git_dir
from worktree_swarm.git.gitfiles import remove_lock, stale_lock

T = TypeVar("T")
_LOCK_WAIT = 1.0  # seconds another git's `index.lock` is waited out
_ENTRIES = ("ls-files", "--stage", "-v", "-z")  # each entry's flag, mode, object, stage, path
# An index file's identity: git writes a new file and renames it over the index each time.
_Identity = tuple[int, int, int, int, int]


class Staging(quarantine.Apart):
    """One checkpoint's index copy and object store (:func:`staging`), and their settling."""

    def __init__(self, worktree: Path, admin: Path, own: Path) -> None:
        """*own*: the checkpoint's directory in *admin*, the git dir of *worktree*.

        The worktree's index is copied into it as it is now.
        """
        super().__init__(worktree, own, common_dir(admin) / "objects")
        self.worktree = worktree
        self.admin = admin
        # The worktree's index the copy was made of: its identity, and what it held.
        self.copied, self.before = _copy_index(admin / "index", self.index)

    @property
    def env(self) -> dict[str, str]:
        """The environment of a git that stages: the index copy, hashing into the own store."""
        return {"GIT_INDEX_FILE": str(self.index), **super().env}

    def settle(self, keep: Collection[str] | None = None) -> None:
        """Move the objects to keep into the repository's store, then put the index copy in place.

        *keep*: the object ids the index copy still names that its staging wrote (None: all
        it wrote). The rest, never in the repository's store, goes with the checkpoint's
        directory.
        """
        self.move_in(keep)
        self._install()

    def _install(self) -> None:
        """Replace the worktree's index with the copy, holding ``index.lock`` as git does.

        IndexChangedError, the index left as it is, where another git wrote it since it was
        copied: what that git wrote (a user's `git add -p` in the task's worktree) is kept.
        """
        if not self.index.exists():
            return  # nothing staged and no index before: none to put in place
        index = self.admin / "index"
        lock = self.admin / "index.lock"
        _take(lock)
        if _identity(index) != self.copied and not self._holds_as_before(index):
            lock.unlink(missing_ok=True)
            raise IndexChangedError(
                f"{self.worktree}: another git wrote the index while swarm staged a checkpoint"
                " there"
            )
        try:
            self.index.replace(lock)  # the lock's content is the new index, as git's is
            lock.replace(index)
        except BaseException:
            lock.unlink(missing_ok=True)
            raise

    def _holds_as_before(self, index: Path) -> bool:
        """Whether *index*, written anew since it was copied, holds the same entries still.

        Each path's mode, object, stage and flags: a `git status` (an editor's, a shell
        prompt's) rewrites the index to refresh the files' times and sizes it caches, which
        the copy put in place loses nothing of.
        """
        if self.before is None or self.copied is None:
            return False
        before = self.index.with_name("index.before")
        before.write_bytes(self.before)
        keep = quarantine.keeping_shared_indexes()
        listed = [
            runner.run_bytes(
                self.worktree, *_ENTRIES, check=False, env={"GIT_INDEX_FILE": str(path), **keep}
            )
            for path in (before, index)
        ]
        return all(r.returncode == 0 for r in listed) and listed[0].stdout == listed[1].stdout


class IndexChangedError(GitError):
    """Another git wrote a worktree's index while a checkpoint staged into its copy."""


def afresh(attempt: Callable[[], T], *, tries: int = 3) -> T:
    """What *attempt* (a :func:`staging`, settled) returned, made again on IndexChangedError.

    At most *tries* times in all. Another git wrote the index meanwhile (a user's in the
    task's worktree): what it wrote is never replaced by a copy of the index from before it;
    the attempt starts over from the index as it is now, each of its own writes to it done
    again.
    """
    for _ in range(tries - 1):
        with contextlib.suppress(IndexChangedError):
            return attempt()
    return attempt()


@contextlib.contextmanager
def staging(worktree: Path) -> Iterator[Staging]:
    """A :class:`Staging` for *worktree*, its directory removed when it ends, settled or not.

    Held (``flock``) while it is in use; what a checkpoint killed half-way left in the
    worktree's git dir, none holding it, is removed first.
    """
    try:
        admin = git_dir(worktree)
    except OSError as exc:
        quarantine.refuse(exc, worktree, "stage a checkpoint")
    with quarantine.owned(admin, quarantine.PREFIX, worktree, "stage a checkpoint") as own:
        yield Staging(worktree, admin, own)


def _copy_index(index: Path, copy: Path) -> tuple[_Identity | None, bytes | None]:
    """Make *copy* the index file *index* as it is; the identity and bytes of what was copied.

    None, and no copy, when there is no index. A copy, never a hard link: a checkpoint killed
    half-way would leave the worktree's index with a second name, which the look for links
    an agent planted where git writes takes for one. Its times and mode are the index's:
    git's check for a file changed within the index's own second reads them.
    """
    try:
        src = index.open("rb")
    except FileNotFoundError:
        return None, None
    with src:
        info = os.fstat(src.fileno())  # what is read, though git replaces the index meanwhile
        data = src.read()
    with copy.open("xb") as out:
        out.write(data)
    copy.chmod(stat.S_IMODE(info.st_mode))
    os.utime(copy, ns=(info.st_atime_ns, info.st_mtime_ns))
    return _identity_of(info), data


def _identity_of(info: os.stat_result) -> _Identity:
    """The identity of the file *info* describes: device, inode, size, change and write time."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _identity(path: Path) -> _Identity | None:
    """The identity of the file at *path* (None: none there)."""
    try:
        return _identity_of(path.stat())
    except FileNotFoundError:
        return None


def _take(lock: Path) -> None:
    """Create *lock*, past a stale one; GitError while another git holds it for a second.

    A `git status` (an editor's) holds it for the milliseconds it writes the index: waited
    out.
    """
    deadline = time.monotonic() + _LOCK_WAIT
    while True:
        try:
            os.close(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            try:
                stale = stale_lock(lock)  # an mtime planted in the future, a directory too
            except FileNotFoundError:
                continue
            if stale:
                try:
                    remove_lock(lock)
                except OSError:  # one that cannot be removed is held as a live git's
                    break
            elif time.monotonic() < deadline:
                time.sleep(0.02)
            else:
                break
        else:
            return
    raise GitError(f"Unable to create '{lock}': File exists (another git is using the index)")
