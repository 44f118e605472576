"""Where a checkout's repository-level config files are: its git dir, its common dir.

Located without a git process and cached per checkout until the files that name them
(``.git``, ``commondir``) change; :mod:`worktree_swarm.git.config_overrides` reads them.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from worktree_swarm.core.errors import GitError
from worktree_swarm.core.paths import real_path
from worktree_swarm.infra import fs

cache_lock = threading.Lock()
# Entries per cache (oldest used dropped first). Keyed per checkout: a run adds one per task
# worktree, and one of a task long ended is rarely asked again (a miss reads three small files).
_CACHE_MAX = 256


def bounded_put(cache: dict[Any, Any], key: object, value: object) -> None:
    """Put *key* in *cache* as its newest entry, the oldest dropped past ``_CACHE_MAX``."""
    cache.pop(key, None)
    while len(cache) >= _CACHE_MAX:
        del cache[next(iter(cache))]
    cache[key] = value


def git_dir(checkout: Path) -> Path:
    """The git dir of *checkout*: its ``.git`` directory, or the one its ``.git`` file names.

    For a linked worktree that is its admin dir, ``<common dir>/worktrees/<name>``.
    Raises GitError when *checkout* has neither.
    """
    dotgit = checkout / ".git"
    if dotgit.is_dir():
        return dotgit
    try:
        text = os.fsdecode(fs.read_file(dotgit))
    except OSError as exc:
        raise GitError(f"{dotgit}: cannot read ({exc}); is {checkout} a git checkout?") from exc
    if not text.startswith("gitdir:"):
        raise GitError(f"{dotgit}: not a git checkout's .git file")
    # Relative since git 2.48 with worktree.useRelativePaths.
    return real_path(checkout / text.removeprefix("gitdir:").strip())


def common_dir(admin: Path) -> Path:
    """The common dir of the git dir *admin*: the one its ``commondir`` names, else itself."""
    commondir = admin / "commondir"
    if not commondir.is_file():
        return admin
    return (admin / os.fsdecode(fs.read_file(commondir)).strip()).resolve()


# Per checkout: the stats of its `.git` and of `commondir` when its config files were located.
_located: dict[str, tuple[object, Path, object, list[Path]]] = {}


def config_files(cwd: Path) -> list[Path]:
    """The repository-level config files that apply in *cwd* (best effort, no git call)."""
    # Locating them resolves every component of two paths; it is done again only when the
    # files that name them (`.git`, `commondir`) change.
    dotgit = _signature(cwd / ".git")
    with cache_lock:
        known = _located.get(str(cwd))
        if known is not None:  # the newest again: used last, dropped last
            _located[str(cwd)] = _located.pop(str(cwd))
    if known is not None and known[0] == dotgit and _signature(known[1] / "commondir") == known[2]:
        return known[3]
    try:
        admin = git_dir(cwd)
    except GitError:
        return []  # a subdirectory, or not a checkout: not cached, scanned every time
    commondir = admin / "commondir"
    located = _signature(commondir)
    try:
        common = common_dir(admin)
    except OSError:
        return []
    files = [admin / "config.worktree", common / "config", common / "config.worktree"]
    if dotgit == _signature(cwd / ".git") and located == _signature(commondir):
        with cache_lock:
            bounded_put(_located, str(cwd), (dotgit, admin, located, files))
    return files


def _signature(path: Path) -> object:
    """What changes when *path* is replaced or rewritten (None when it is missing)."""
    try:
        st = path.lstat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)
