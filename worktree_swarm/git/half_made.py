"""Worktree registrations a killed swarm left half-made.

Before swarm wrote each file of a worktree's git layout whole, a manager killed between a
file's open and its write left an admin dir locked ``initializing`` with an empty
``commondir``; so does a `swarm merge` killed while its ``git worktree add`` (of the
integration worktree, or an ``--into`` merge's temporary one) writes that file, since git
writes it in place. Every git that lists worktrees then dies (``failed to read
.../commondir``), `swarm resume`, `swarm merge`, `swarm doctor` and your own `git worktree
list` among them. Such a registration is found, and removed, only for a directory swarm
makes (a recorded task's worktree, a run's merge worktree under its worktree root) where
every file is exactly as written up to that write and it holds nothing: anything else may
be yours, or a live git's, and is left for git's error to name.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.core.paths import default_worktree_root, real_path
from worktree_swarm.core.task import INTEGRATION_DIR_PREFIX, SCRATCH_PREFIX
from worktree_swarm.git.repo import Repo, repo_lock
from worktree_swarm.git.worktrees import REGISTRATIONS, named_after, worktrees_dir
from worktree_swarm.infra.store import Store

# What swarm had written when the kill came: `HEAD` comes after `commondir`, and nothing
# else (an index, a reflog) before the worktree is populated.
_WRITTEN = frozenset({"locked", "gitdir", "commondir"})
_LOCKED = b"initializing\n"  # swarm's, and git's in the C locale swarm runs it in
# A run's integration worktree, or an `--into` merge's (`secrets.token_hex(3)` after the run).
_MERGE_DIR = re.compile(
    rf"{re.escape(INTEGRATION_DIR_PREFIX)}(?P<run>.+)"
    rf"|{re.escape(SCRATCH_PREFIX)}(?P<scratch>.+)-[0-9a-f]{{6}}"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class HalfMade:
    """A half-made registration: its admin dir and the worktree directory it names."""

    admin: Path
    path: Path


def find(repo: Repo, store: Store | None) -> list[HalfMade]:
    """The half-made registrations of worktree directories swarm made, as *store* has them.

    *store* is read only when an admin dir has an empty ``commondir`` at all.
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
    if not named or store is None:
        return []
    ours = _swarms(repo, store)
    return [
        HalfMade(admin=admin, path=path)
        for admin, path in named.items()
        if ours(path) and _is_half_made(admin, path)
    ]


def _swarms(repo: Repo, store: Store) -> Callable[[Path], bool]:
    """Whether a (real) worktree path is one swarm makes for a run *store* records.

    A task's recorded worktree; a run's integration worktree (``_integration-<run>``) or an
    ``--into`` merge's (``_merge-<run>-<6 hex digits>``), directly under its worktree root.
    """
    tasks: set[Path] = set()
    merges: dict[Path, set[str]] = {}  # worktree root -> the runs' ids
    for run in store.runs():
        tasks.update(real_path(Path(task.worktree)) for task in store.tasks(run.run_id))
        root = run.settings.worktree_root or default_worktree_root(repo.root)
        merges.setdefault(real_path(root), set()).add(run.run_id)

    def ours(path: Path) -> bool:
        merge = _MERGE_DIR.fullmatch(path.name)
        run = (merge["run"] or merge["scratch"]) if merge else None
        return path in tasks or (run is not None and run in merges.get(path.parent, ()))

    return ours


def merge_worktree(repo: Repo, store: Store, path: Path) -> bool:
    """Whether *path* (real) is a merge's worktree of a run *store* records.

    A run's integration worktree or an ``--into`` merge's, directly under that run's
    worktree root. The store is read only for a path so named.
    """
    merge = _MERGE_DIR.fullmatch(path.name)
    run_id = (merge["run"] or merge["scratch"]) if merge else None
    for run in store.runs() if run_id is not None else ():
        if run.run_id == run_id:
            return real_path(run.settings.worktree_root or default_worktree_root(repo.root)) == (
                path.parent
            )
    return False


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


def drop(repo: Repo, store: Store) -> list[HalfMade]:
    """Remove every half-made registration :func:`find` finds; returns those removed."""
    found = find(repo, store)
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
