"""Where a run's worktrees may go: checks on ``worktree_root`` before anything is made there."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from worktree_swarm.core import paths
from worktree_swarm.core.errors import BadInputError
from worktree_swarm.core.paths import real_path
from worktree_swarm.git import runner
from worktree_swarm.git.repo import Repo

# Directories whose direct children are the system's or the user's own: never a worktree root.
_SYSTEM_DIRS = (
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/media", "/mnt",
    "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/usr", "/usr/bin", "/usr/lib",
    "/usr/local", "/var", "/Applications", "/Library", "/System", "/Users", "/Volumes",
    "/private", "/private/var",
    "/tmp", "/private/tmp", "/var/tmp", "/dev/shm",  # noqa: S108 - refused as a root, never written
)  # fmt: skip


def seen_by_another_checkout(repo: Repo, root: Path) -> Path | None:
    """The checkout of another repository that holds *root* and does not ignore it, if any.

    A repository inside another's checkout (not ignored there) keeps its worktrees there too:
    a swarm run in that other repository at the same time would take each one for a write of
    its agents. One ``stat`` per folder above *root*; git only when such a checkout is found.
    """
    own = Path(os.path.realpath(repo.root))
    for outer in Path(os.path.realpath(root)).parents:
        if outer == own or not (outer / ".git").exists():
            continue
        # As a folder ("/x/"): a pattern for folders matches it before it exists too.
        ignored = runner.run(outer, "check-ignore", "-q", "--", f"{root}/", check=False)
        return None if ignored.returncode == 0 else outer
    return None


def check_worktree_root(repo: Repo, root: Path, *, checkout: Path | None = None) -> None:
    """Raise BadInputError unless *root* may hold the run's worktrees.

    Not inside the main checkout, the *checkout* swarm runs from, or the git directory (git
    would see the worktrees as untracked files, the guard as foreign writes, a checkpoint
    could commit one into another), and not a system directory or the home directory itself.
    """
    where = f"worktree_root {root}"
    if not str(root).isprintable():  # a newline would split every line that shows a worktree
        raise BadInputError(
            f"worktree_root {str(root)!r} holds a character that does not print (a control or "
            "blank one, not a space: unset, worktree_root is named after your repository's "
            "directory); set `worktree_root` to a plain path"
        )
    real = real_path(root)
    for inside in (repo.common_dir, repo.root, checkout):
        if inside is not None and real.is_relative_to(real_path(inside)):
            raise BadInputError(
                f"{where} is inside {inside}; put it outside the checkout and its git directory "
                f"(default: {paths.default_worktree_root(repo.root)})"
            )
    system = {real_path(Path(d)) for d in _SYSTEM_DIRS} | {real_path(Path.home())}
    if real in system:
        raise BadInputError(
            f"{where} is a system or home directory; name a directory of its own "
            f"(default: {paths.default_worktree_root(repo.root)})"
        )
    # A symlink on the way that leads nowhere: git and mkdir would meet it, not its target.
    dangling = next((p for p in (root, *root.parents) if p.is_symlink() and not p.exists()), None)
    if dangling is not None:
        raise BadInputError(
            f"{where}: {dangling} is a symlink to {dangling.readlink()}, which does not exist"
        )
    # The nearest existing part of the path must be a directory to make it in.
    existing = next((p for p in (real, *real.parents) if os.path.lexists(p)), None)
    if existing is not None and not existing.is_dir():
        what = "is" if existing == real else f"is inside {existing}, which is"
        raise BadInputError(f"{where} {what} not a directory; name a directory")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise BadInputError(f"{where}: {existing} is not writable; name a directory you can write")
    if existing is not None:
        # Root passes every access check, where a file system may still refuse (/proc).
        try:
            Path(tempfile.mkdtemp(prefix=".swarm-probe-", dir=existing)).rmdir()
        except OSError as exc:
            raise BadInputError(
                f"{where}: no directory can be made in {existing} ({exc.strerror}); name a "
                "directory you can write"
            ) from None
