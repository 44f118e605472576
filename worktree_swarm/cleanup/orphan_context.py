"""What a `swarm doctor` scan reads once and every one of its checks looks at.

The repository's registered worktrees, worktree roots and merge targets, the recorded tasks
by worktree path and by branch, the runs' base commits, the branches pending tasks need,
and whether a manager or a `swarm merge` holds the repository (``Context``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import filelock

from worktree_swarm.cleanup.branches import merge_targets
from worktree_swarm.cleanup.clean import needed_by_pending
from worktree_swarm.config import manifest
from worktree_swarm.core import paths
from worktree_swarm.core.errors import BadInputError
from worktree_swarm.core.paths import real_path
from worktree_swarm.core.task import INTEGRATION_PREFIX
from worktree_swarm.git import repo as git
from worktree_swarm.git import worktrees
from worktree_swarm.git.worktrees import WorktreeInfo
from worktree_swarm.infra import lock
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import TaskRow


@dataclass(frozen=True, slots=True, kw_only=True)
class Context:
    """What one scan read: the repository, its runs' tasks, worktrees and bases."""

    repo: git.Repo
    store: Store | None
    manager_alive: bool
    merge_running: bool  # a `swarm merge` holds the repository: its worktrees are in use
    roots: tuple[Path, ...]
    registered: dict[Path, WorktreeInfo]
    targets: tuple[str, ...]
    task_at: dict[Path, TaskRow]
    task_of_branch: dict[str, TaskRow]
    bases: dict[str, str]
    needed: frozenset[str]


def worktree_roots(repo: git.Repo, store: Store | None) -> list[Path]:
    """Where swarm puts worktrees: the configured root and every root a recorded run used."""
    roots = [paths.default_worktree_root(repo.root)]
    # A broken config file must not stop a clean-up: the recorded runs still name their roots.
    with contextlib.suppress(BadInputError):
        configured = manifest.configured(repo.root, "worktree_root")
        if isinstance(configured, Path):
            roots.append(configured)
    for run in store.runs() if store is not None else []:
        recorded = run.settings.worktree_root
        if recorded is not None:
            roots.append(recorded)
    return list(dict.fromkeys(real_path(root) for root in roots))


def context(repo: git.Repo, store: Store | None) -> Context:
    """Read what a scan of *repo* (its runs in *store*) looks at."""
    at: dict[str, TaskRow] = {}  # by the path as recorded: a reused id's path resolved once
    task_of_branch: dict[str, TaskRow] = {}
    bases: dict[str, str] = {}
    needed: set[str] = set()
    for run in store.runs() if store is not None else []:
        bases[run.run_id] = run.base_commit
        rows = store.tasks(run.run_id) if store is not None else []
        # Runs come oldest first, so a later run's task wins a reused path or branch (moved
        # to the end, it also wins a path that resolves to the same place).
        for row in rows:
            at.pop(row.worktree, None)
            at[row.worktree] = row
        task_of_branch.update({row.branch: row for row in rows})
        branch_of = {row.task_id: row.branch for row in rows}
        if store is not None:
            needed |= {branch_of[dep] for dep in needed_by_pending(rows)}
    return Context(
        repo=repo,
        store=store,
        manager_alive=lock.manager_alive(repo.state_dir),
        merge_running=_merge_running(repo),
        roots=tuple(worktree_roots(repo, store)),
        registered={real_path(w.path): w for w in worktrees.list_worktrees(repo)},
        targets=tuple(merge_targets(repo)),
        task_at={real_path(path): row for path, row in at.items()},
        task_of_branch=task_of_branch,
        bases=bases,
        needed=frozenset(needed),
    )


def _merge_running(repo: git.Repo) -> bool:
    """Whether a `swarm merge` holds the repository's merge lock right now."""
    if not (repo.state_dir / "merge.lock").exists():  # no merge ever ran; a look makes none
        return False
    merge_lock = filelock.FileLock(repo.state_dir / "merge.lock", thread_local=False)
    try:
        merge_lock.acquire(timeout=0)
    except filelock.Timeout:
        return True
    merge_lock.release()
    return False


def integration_run(branch: str | None) -> str | None:
    """The run id of a `swarm merge` integration branch (``swarm/integration-<run>``)."""
    if branch is None or not branch.startswith(INTEGRATION_PREFIX):
        return None
    return branch.removeprefix(INTEGRATION_PREFIX)
