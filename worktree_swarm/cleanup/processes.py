"""The processes `swarm clean` and `swarm doctor` look at, and the ones they never signal.

Which processes use a directory (they keep a worktree) or work in the repository (they may
hold git's locks), which process is creating a worktree, and a KILL finding for one.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Mapping
from pathlib import Path

import psutil

from worktree_swarm.cleanup.findings import Action, Finding, Kind
from worktree_swarm.core.paths import real_path
from worktree_swarm.git import repo as git
from worktree_swarm.infra import fs, proc_scan, proctree


@functools.cache
def protected_pids() -> frozenset[int]:
    """PIDs never signalled: this process and its ancestors (the user's shell)."""
    me = psutil.Process()
    return frozenset({me.pid, *(p.pid for p in me.parents())})


# How long a git left working in a worktree by a swarm command that was killed may take to end.
_ORPHAN_GIT_SECONDS = 10.0


def processes_using(path: Path, cwds: Mapping[int, str] | None = None) -> list[psutil.Process]:
    """Processes whose cwd is inside *path*, other than this one and its ancestors.

    *cwds*: a snapshot of every process's (:func:`proc_scan.working_directories`) to look in.
    A git whose parent is gone (a checkpoint's `git add` or `commit` of a `swarm clean` that
    was killed) is waited for, for a few seconds: it ends by itself, and is no user's.
    """
    keep = protected_pids()
    found = [p for p in proc_scan.processes_in(path, cwds=cwds) if p.pid not in keep]
    orphans = [p for p in found if _orphaned_git(p)]
    if orphans:
        gone, _alive = psutil.wait_procs(orphans, timeout=_ORPHAN_GIT_SECONDS)
        found = [p for p in found if p not in gone]
    return found


def _orphaned_git(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return process.name() == "git" and process.ppid() == 1
    return False


def describe(process: psutil.Process) -> str:
    """``name (pid N)``."""
    try:
        name = process.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        name = "?"
    return f"{name} (pid {process.pid})"


def kill_finding(process: psutil.Process, *, reason: str, fix: str) -> Finding | None:
    """A KILL finding for *process* with its identity (None when it is already gone)."""
    identity = proctree.found_identity(process)
    if identity is None:
        return None
    return Finding(
        kind=Kind.PROCESS,
        target=f"pid {identity.pid}",
        reason=reason,
        action=Action.KILL,
        fix=fix,
        pid=identity.pid,
        create_time=identity.create_time,
        pgid=identity.pgid,
    )


def adding_process(path: Path) -> psutil.Process | None:
    """A live process that is creating the worktree *path* (``git worktree add``), if any."""
    users = processes_using(path)
    if users:
        return users[0]
    target = real_path(path)
    for process in psutil.process_iter(["name", "cmdline", "cwd"]):
        if not (process.info.get("name") or "").startswith("git"):
            continue
        cwd = process.info.get("cwd") or "/"
        for arg in process.info.get("cmdline") or []:
            if arg and not arg.startswith("-") and real_path(Path(cwd) / arg) == target:
                return process
    return None


def git_users(paths: list[Path]) -> list[psutil.Process]:
    """Live git processes whose cwd is inside one of *paths* (they may hold git's locks)."""
    roots = [real_path(p) for p in paths]
    found = []
    for process in psutil.process_iter(["name"]):
        name = process.info.get("name") or ""
        if not name.startswith("git"):
            continue
        try:
            cwd = Path(process.cwd())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(cwd.is_relative_to(root) for root in roots):
            found.append(process)
    return found


def repo_paths(repo: git.Repo) -> list[Path]:
    """The main checkout, the git common dir and every registered worktree of *repo*."""
    paths = [repo.root, repo.common_dir]
    admin = repo.common_dir / "worktrees"
    if admin.is_dir():
        for entry in admin.iterdir():
            with contextlib.suppress(OSError):
                paths.append(Path(os.fsdecode(fs.read_file(entry / "gitdir")).strip()).parent)
    return paths
