"""Worktree registrations an older swarm, killed as it wrote them, left half-made.

Before swarm wrote each file of a worktree's git layout whole, a manager killed between a
file's open and its write left an admin dir locked ``initializing`` with an empty
``commondir``: every git that lists worktrees then dies (``failed to read
.../commondir``), `swarm resume`, `swarm doctor` and your own `git worktree list` among
them. Such a registration is found, and removed, only where every file is exactly as swarm
wrote it up to that write and it holds nothing: anything else may be yours, or a live
git's, and is left for git's error to name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.core.paths import real_path
from worktree_swarm.git.repo import Repo, repo_lock
from worktree_swarm.git.worktrees import REGISTRATIONS, named_after, worktrees_dir

# What swarm had written when the kill came: `HEAD` comes after `commondir`, and nothing
# else (an index, a reflog) before the worktree is populated.
_WRITTEN = frozenset({"locked", "gitdir", "commondir"})
_LOCKED = b"initializing\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class HalfMade:
    """A half-made registration: its admin dir and the worktree directory it names."""

    admin: Path
    path: Path


def find(repo: Repo, paths: Iterable[Path]) -> list[HalfMade]:
    """The half-made registrations of *paths*, worktree directories swarm made for tasks.

    *paths* is read only when an admin dir has an empty ``commondir`` at all.
    """
    root = worktrees_dir(repo.common_dir)
    try:
        names = [entry.name for entry in root.iterdir()]
    except OSError:
        return []
    named: dict[Path, Path] = {}  # admin dir -> the worktree directory its gitdir names
    for name in names:
        with contextlib.suppress(OSError):
            if (root / name / "commondir").lstat().st_size == 0:
                gitdir = Path(os.fsdecode((root / name / "gitdir").read_bytes()).strip())
                if gitdir.name == ".git" and named_after(name, gitdir.parent.name):
                    named[root / name] = gitdir.parent
    if not named:
        return []
    ours = {real_path(path) for path in paths}
    return [
        HalfMade(admin=admin, path=path)
        for admin, path in named.items()
        if path in ours and _is_half_made(admin, path)
    ]


def remove_locked(half: HalfMade) -> bool:
    """Delete *half*'s admin dir and its directory (only its ``.git`` file) if still half-made.

    The caller holds the repository lock, which every swarm holds while it registers a
    worktree; looked at again under it: False, with nothing touched, when no longer so.
    """
    with REGISTRATIONS:
        if not _is_half_made(half.admin, half.path):
            return False
        (half.path / ".git").unlink()
        half.path.rmdir()
        shutil.rmtree(half.admin)
    return True


def drop(repo: Repo, paths: Iterable[Path]) -> list[HalfMade]:
    """Remove every half-made registration of *paths*; returns those removed."""
    found = find(repo, paths)
    if not found:
        return []
    with repo_lock(repo):
        return [half for half in found if remove_locked(half)]


def _is_half_made(admin: Path, path: Path) -> bool:
    """Whether *admin* and *path* are exactly as a swarm killed writing ``commondir`` left them."""
    try:
        if not stat.S_ISDIR(admin.lstat().st_mode) or not stat.S_ISDIR(path.lstat().st_mode):
            return False
        if {p.name for p in admin.iterdir()} != _WRITTEN or list(path.iterdir()) != [path / ".git"]:
            return False
        files = {name: _regular_bytes(admin / name) for name in _WRITTEN}
        dot_git = _regular_bytes(path / ".git")
    except OSError:
        return False
    return (
        files["locked"] == _LOCKED
        and files["commondir"] == b""
        and files["gitdir"] == os.fsencode(f"{real_path(path)}/.git\n")
        and dot_git == os.fsencode(f"gitdir: {real_path(admin)}\n")
    )


def _regular_bytes(path: Path) -> bytes | None:
    """The bytes of *path* when it is a regular file (never a symlink's target), else None."""
    if not stat.S_ISREG(path.lstat().st_mode):
        return None
    return path.read_bytes()
