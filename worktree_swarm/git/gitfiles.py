"""A checkout's state read from git's own files, and mending what a killed git or an agent left.

HEAD and loose refs read without a git process, stale lock files, the markers of an operation
under way, a deleted branch put back, a HEAD switched elsewhere put back, a checkout that was
never populated.
"""

from __future__ import annotations

import enum
import os
import re
import shutil
import stat
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

from worktree_swarm.core.errors import CommandError, GitError
from worktree_swarm.git import sparse
from worktree_swarm.git.config_files import common_dir, git_dir
from worktree_swarm.git.repo import rev_parse_in, run
from worktree_swarm.infra import fs

if TYPE_CHECKING:
    import subprocess


_LOCK_EXISTS = re.compile(r"Unable to create '([^'\n]+\.lock)': File exists")
# Git holds a lock file for the moment it writes what it locks: one older than this was left
# (a git killed half-way) or planted (an agent, also under --sandbox: the top of the git dir and
# refs/ are writable there), and would fail every later write of that ref or file.
STALE_LOCK_SECONDS = 2.0
# A lock dated further ahead than this is planted; a nearer one may be an NFS server's clock.
FUTURE_LOCK_SECONDS = 60.0


def past_stale_lock(
    cwd: Path, args: Sequence[str], *, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``git *args`` in *cwd*, unchecked, and once more past each stale lock file it meets.

    Run again only when it failed on one that :func:`removed_stale_lock` removed: git stops
    at the first lock it cannot take, and one command takes several (a commit: the index,
    HEAD and its branch), all of which an agent can plant.
    """
    res = run(cwd, args, check=False, env=env)
    for _ in range(_LOCKS_PER_COMMAND):
        if res.returncode == 0 or not removed_stale_lock(cwd, res.stdout + res.stderr):
            break
        res = run(cwd, args, check=False, env=env)
    return res


# Locks one git command takes at most that past_stale_lock goes past.
_LOCKS_PER_COMMAND = 8


def removed_stale_lock(cwd: Path, said: str) -> bool:
    """Remove a stale lock file git *said* it could not create in *cwd*'s repository.

    Whether one was removed (:func:`stale_lock`). Only one named ``*.lock`` under that
    repository's common dir (its worktrees' admin dirs too): git's message names the path,
    which is not trusted further.
    """
    match = _LOCK_EXISTS.search(said)
    if match is None:
        return False
    found = run(cwd, ["rev-parse", "--git-common-dir"], check=False)
    if found.returncode != 0:
        return False
    common = Path(os.path.realpath(cwd / found.stdout.strip()))
    lock = Path(match[1])
    try:
        inside = Path(os.path.realpath(lock.parent)).is_relative_to(common)
        if not inside or not lock.name.endswith(".lock") or not stale_lock(lock):
            return False
        remove_lock(lock)
    except OSError:  # gone, or left as it is: git's own error stands
        return False
    return True


def stale_lock(lock: Path) -> bool:
    """Whether the lock file *lock* is no live git's; OSError when it cannot be looked at.

    A git holds its lock, a regular file it has just made, while it writes: one changed more
    than :data:`STALE_LOCK_SECONDS` ago, or dated more than :data:`FUTURE_LOCK_SECONDS` ahead
    (`touch -d '+1 year'` never ages; a nearer future may be a live git's lock on NFS, dated
    by a server whose clock runs ahead), or of another kind (a directory: git never makes one,
    and no ref name has a component ending in ``.lock``) was left or planted.
    """
    found = lock.lstat()
    if not stat.S_ISREG(found.st_mode):
        return True
    age = time.time() - found.st_mtime
    return age > STALE_LOCK_SECONDS or -age > FUTURE_LOCK_SECONDS


def remove_lock(lock: Path) -> None:
    """Remove the stale lock *lock*: a file or link, or a directory planted so, with its content.

    Gone already is no error; another OSError is raised.
    """
    with suppress(FileNotFoundError):
        if stat.S_ISDIR(lock.lstat().st_mode):
            shutil.rmtree(lock)  # never follows a link inside (an agent's, to your files)
        else:
            lock.unlink()


# Files git keeps while a merge, cherry-pick, revert or rebase waits for a commit.
_OBJECT_NAME = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
_REF_FILE = re.compile(rb"[0-9a-f]{40}(?:[0-9a-f]{24})?|ref: refs/\S+")


def is_object_name(text: str) -> bool:
    """Whether *text* is a full object name (SHA-1 or SHA-256, lowercase hex)."""
    return _OBJECT_NAME.fullmatch(text) is not None


def broken_ref_file(path: Path) -> bool:
    """Whether *path* is a regular file git cannot read as a ref (garbage written into it).

    Not a symlink, directory or missing file: those are no loose ref of garbage to mend.
    """
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return False
        data = path.read_bytes().strip()
    except OSError:
        return False
    return _REF_FILE.fullmatch(data) is None


_OPERATIONS = {
    "MERGE_HEAD": "a merge",
    "CHERRY_PICK_HEAD": "a cherry-pick",
    "REVERT_HEAD": "a revert",
    "rebase-merge": "a rebase",
    "rebase-apply": "a rebase",
    "BISECT_LOG": "a bisect",
}
# What a commit would land inside (a bisect does not take one).
_IN_PROGRESS = tuple(name for name in _OPERATIONS if name != "BISECT_LOG")


def operation_in_progress(worktree: Path) -> str | None:
    """The git operation under way in *worktree* (``a rebase``, ...), or None.

    One a user left half done there (a conflict resolved and staged, not continued): a
    commit of swarm's would land inside it.
    """
    try:
        admin = git_dir(worktree)
    except GitError:
        return None
    return next((what for name, what in _OPERATIONS.items() if (admin / name).exists()), None)


def mid_operation(worktree: Path) -> bool:
    """Whether a commit in *worktree* would land inside a git operation (True when unknown)."""
    try:
        admin = git_dir(worktree)
    except GitError:
        return True  # unknown: take the careful path
    return any(os.path.lexists(admin / name) for name in _IN_PROGRESS)


def head_in(worktree: Path) -> str | None:
    """The commit HEAD of *worktree* points at, read from git's files where they are plain.

    A checkpoint's commit has just written the branch as a loose ref, so reading ``HEAD`` and
    that file answers without a git process; anything else (packed refs, a ref backend
    without loose files, a symlinked HEAD) asks ``git rev-parse``.
    """
    try:
        admin = git_dir(worktree)
        head = _plain(admin / "HEAD")
        if head.startswith("ref: refs/heads/"):
            ref = head.removeprefix("ref: ")
            if ".." not in ref.split("/"):
                head = _plain(common_dir(admin) / ref)
    except (OSError, GitError):
        head = ""
    if _OBJECT_NAME.fullmatch(head):
        return head
    return rev_parse_in(worktree, "HEAD")


def _plain(path: Path) -> str:
    """The text of one of git's small files (HEAD, a loose ref), stripped."""
    return fs.read_file(path).decode("utf-8", errors="replace").strip()


def put_back_on(worktree: Path, branch: str) -> str | None:
    """Put *worktree*'s HEAD back on *branch* if it is elsewhere; where it was, or None.

    Another branch, one of no commit yet (``git checkout --orphan x``), or a detached HEAD
    (``a detached HEAD at <commit>``): its files and index stay, for the checkpoint to commit
    onto *branch*. What the guard does after each attempt, for a stop no manager watched.
    Past a stale ``HEAD.lock`` (:func:`past_stale_lock`); CommandError when git fails.
    """
    want = f"refs/heads/{branch}"
    with suppress(OSError, GitError):  # the fast way: read the HEAD file
        if _plain(git_dir(worktree) / "HEAD") == f"ref: {want}":
            return None
    found = run(worktree, ["symbolic-ref", "-q", "HEAD"], check=False)
    on = found.stdout.strip()
    if on == want or found.returncode not in (0, 1):  # 1: detached; else no checkout to mend
        return None
    where = on.removeprefix("refs/heads/")
    if not on:
        where = f"a detached HEAD at {(rev_parse_in(worktree, 'HEAD') or '?')[:12]}"
    point_head(worktree, branch)
    return where


def point_head(worktree: Path, branch: str) -> None:
    """Point *worktree*'s HEAD at *branch* (its files and index stay); CommandError if not.

    Past a stale ``HEAD.lock`` (:func:`past_stale_lock`): one a killed git left, or an agent
    planted before it switched its worktree, would block this for good.
    """
    put = ["symbolic-ref", "-m", "swarm: put back", "HEAD", f"refs/heads/{branch}"]
    done = past_stale_lock(worktree, put)
    if done.returncode != 0:
        raise CommandError(["git", *put], done.returncode, done.stdout + done.stderr)


def restore_deleted_branch(worktree: Path, branch: str | None = None) -> str | None:
    """Put back the branch *worktree* is on if it is gone, at HEAD's last commit; that commit.

    An agent that deleted its own branch (`git update-ref -d`, `git branch -D` from elsewhere)
    had its checkpoint start a history of its own: a root commit of every file, sharing no
    base with anything (no diff, no merge, every retry the same). HEAD's reflog in the
    worktree's admin dir still names the commit it was last at (before the deletion's line).
    Only *branch* when given (a task's): HEAD on another branch of no commit yet (``git
    checkout --orphan x``) is no deleted branch, and none is made for it.
    """
    if head_in(worktree) is not None:
        return None
    try:
        admin = git_dir(worktree)
        head = _plain(admin / "HEAD")
        logged = os.fsdecode(fs.read_file(admin / "logs" / "HEAD")).splitlines()
    except (OSError, GitError):
        return None
    # The newest value that is a commit: the deletion itself is logged, to zeros.
    values = [line.split(" ")[1:2] for line in reversed(logged)]  # "old new who when\tmsg"
    last = next(
        (v[0] for v in values if v and _OBJECT_NAME.fullmatch(v[0]) and v[0].strip("0")), ""
    )
    if not head.startswith("ref: refs/heads/") or not last:
        return None
    ref = head.removeprefix("ref: ")
    if branch is not None and ref != f"refs/heads/{branch}":
        return None
    if run(worktree, ["cat-file", "-e", f"{last}^{{commit}}"], check=False).returncode != 0:
        return None
    done = run(worktree, ["update-ref", "-m", "swarm: put back", ref, last, ""], check=False)
    return last if done.returncode == 0 else None


def checkout_incomplete(worktree: Path) -> bool:
    """Whether *worktree* was never populated: it has no index while its HEAD has files.

    ``git worktree add --no-checkout`` makes a worktree without an index, and ``read-tree
    -u`` writes the index only once every file is written; a process killed in between leaves
    files missing that ``git add --all`` would record as deleted.
    """
    try:
        index = git_dir(worktree) / "index"
    except GitError:
        return False
    if index.exists():
        return False
    res = run(worktree, ["ls-tree", "--name-only", "HEAD"], check=False)
    return res.returncode == 0 and bool(res.stdout.strip())


# Left in a worktree's admin dir by swarm's own writes of its files, when killed half-way: its
# checkout (written before ``read-tree -u``, removed after) and its removal (the index aside).
POPULATING = "swarm-populating"
REMOVING_INDEX = "index.swarm-removing"


def populate(path: Path, cone: sparse.Cone | None) -> None:
    """Check out HEAD into the new worktree *path* (only *cone*'s directories when given).

    Marked meanwhile (:data:`POPULATING`): killed half-way, it is checked out whole again.
    """
    admin = git_dir(path)
    if cone is not None:
        sparse.write(admin, cone)
    (admin / POPULATING).touch()
    run(path, ["read-tree", "--reset", "-u", "HEAD"])
    (admin / POPULATING).unlink(missing_ok=True)


def _only_git(worktree: Path) -> bool:
    """Whether *worktree* holds nothing but its ``.git`` (or cannot be listed).

    As `git worktree add --no-checkout` leaves it: a worktree swarm made again where an agent
    had run, killed before its checkout began (before :func:`populate` marks it).
    """
    try:
        with os.scandir(worktree) as listed:
            return all(entry.name == ".git" for entry in listed)
    except OSError:
        return True


class Repair(enum.Enum):
    """How :func:`repair_checkout` mends a checkout without an index."""

    WHOLE = "whole"  # HEAD checked out whole: none of its missing files is work
    INDEX = "index"  # the index alone made from HEAD: every file stays, as the agent left it


def repair_due(worktree: Path, *, agent_ran: bool = False) -> Repair | None:
    """The repair :func:`repair_checkout` makes of *worktree* (None: it needs none); only looks.

    Its index alone where an agent ran (*agent_ran*, as the store records) since swarm's
    checkout finished: the agent deleted it. HEAD checked out whole where no agent ran, where
    swarm's own checkout or removal was killed there (its mark, :data:`POPULATING` or
    :data:`REMOVING_INDEX`, is left), or where nothing but ``.git`` is there (made again,
    killed before its checkout).
    """
    if not checkout_incomplete(worktree):
        return None
    admin = git_dir(worktree)
    marked = any(os.path.lexists(admin / n) for n in (POPULATING, REMOVING_INDEX))
    if agent_ran and not marked and not _only_git(worktree):
        return Repair.INDEX
    return Repair.WHOLE


def repair_checkout(worktree: Path, *, agent_ran: bool = False) -> Repair | None:
    """Give a checkout without an index (:func:`checkout_incomplete`) one from HEAD.

    Returns the repair made (:func:`repair_due`), None when none was needed. A whole checkout
    never commits HEAD's missing files as deletions, nor a half-written file as work; the
    index alone keeps the agent's edits, new files and deletions for the checkpoint to
    commit. A whole checkout is marked as :func:`populate`'s is. Marks left beside an index
    (swarm killed once ``read-tree -u`` was done, a removal's index set aside) are let go
    of, as after a whole checkout: an index an agent deletes later is the agent's.
    """
    due = repair_due(worktree, agent_ran=agent_ran)
    if due is None:
        with suppress(OSError, GitError):
            _unmark(git_dir(worktree))
        return None
    if due is Repair.INDEX:
        run(worktree, ["read-tree", "HEAD"])  # the index alone: no file is written
        sparse_on = run(worktree, ["config", "--bool", "core.sparseCheckout"], check=False)
        if sparse_on.stdout.strip() == "true":  # outside the cone is no deletion, as after -u
            run(worktree, ["sparse-checkout", "reapply"])
        return due
    admin = git_dir(worktree)
    with suppress(OSError):  # killed half-way (or not to be marked), whole the next time too
        (admin / POPULATING).touch()
    run(worktree, ["read-tree", "--reset", "-u", "HEAD"])
    _unmark(admin)
    return due


def _unmark(admin: Path) -> None:
    """Let go of the marks of swarm's own checkout and removal: the checkout is whole now.

    A directory planted under either name stays: the next repair is whole too.
    """
    for mark in (POPULATING, REMOVING_INDEX):
        with suppress(OSError):
            (admin / mark).unlink(missing_ok=True)
