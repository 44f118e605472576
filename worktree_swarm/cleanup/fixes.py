"""How a cleanup plan is applied, shared by `swarm clean` and `swarm doctor`.

A plan is a list of :class:`~worktree_swarm.cleanup.findings.Finding` objects, each naming its
target, the reason and what ``--yes`` does about it. :func:`apply` carries a plan out under the
repository lock in a safe order (stop processes, remove stale git locks and the stores of
killed checkpoints, checkpoint and remove worktrees, prune, delete branches), re-checking each
finding first, so a stale plan never destroys anything. The fixes of each kind live beside
their findings (``branches``, ``repo_repairs``), a worktree's in ``worktree_removal`` (its
findings: ``worktree_plan``); stopping tasks and processes is here.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from worktree_swarm.cleanup.branches import delete_branches, delete_remote_branches
from worktree_swarm.cleanup.cut_off_worktrees import rescue_worktree
from worktree_swarm.cleanup.findings import Action, Finding, Result
from worktree_swarm.cleanup.processes import protected_pids
from worktree_swarm.cleanup.repo_repairs import (
    mend_ref,
    remove_half_made,
    remove_staging,
    unlink_lock,
)
from worktree_swarm.cleanup.worktree_removal import (
    prune,
    remove_initializing,
    remove_worktree,
    rescue_directory,
)
from worktree_swarm.core.errors import SwarmError
from worktree_swarm.core.models import ProcessIdentity
from worktree_swarm.git import repo as git
from worktree_swarm.guard import ref_moves
from worktree_swarm.infra import lock, proctree
from worktree_swarm.infra.store import Store
from worktree_swarm.run import control

_REMOVERS = max(2, min(8, os.cpu_count() or 1))  # worktrees removed at once
_ORDER = {action: index for index, action in enumerate(Action)}


def apply(
    repo: git.Repo,
    findings: list[Finding],
    *,
    store: Store | None,
    force: bool,
    grace: float = 5.0,
) -> list[Result]:
    """Carry out *findings* in the safe order, under the repository lock; never raises for one.

    Each finding is re-checked before it is acted on; one that no longer holds, or fails, is
    reported as not fixed with the reason, and the others go on. With nothing to act on, no
    lock is taken: a cleanup that found nothing leaves no `.git/swarm` where swarm never ran.
    """
    if all(f.action is Action.KEEP for f in findings):
        return [Result(finding=f, fixed=False, detail=f.fix) for f in findings]
    # A running guard is told exactly which branches this moves, so it blames no agent. Its
    # verdict is awaited without the repository lock: the guard may need that lock first (to
    # put back a task worktree an agent removed), and would give it after the wait gave up.
    with ref_moves.moving_refs(repo, []) as moves, git.repo_lock(repo):

        def one(finding: Finding) -> Result:
            if finding.action is Action.KEEP:
                return Result(finding=finding, fixed=False, detail=finding.fix)
            try:
                detail, sha = _apply_one(
                    repo, finding, store=store, force=force, grace=grace, moves=moves
                )
            except (SwarmError, OSError) as exc:
                return Result(finding=finding, fixed=False, detail=str(exc))
            return Result(finding=finding, fixed=True, detail=detail, checkpoint=sha)

        results: list[Result] = []
        ordered = sorted(findings, key=lambda f: _ORDER[f.action])
        for action, group in itertools.groupby(ordered, key=lambda f: f.action):
            batch = list(group)
            if action is Action.REMOVE_WORKTREE and len(batch) > 1:
                # Each worktree's files are its own: deleting them is the slow part on a big
                # checkout, and the disk is kept busier by several at once.
                with ThreadPoolExecutor(min(len(batch), _REMOVERS)) as pool:
                    results.extend(pool.map(one, batch))
            elif action is Action.DELETE_BRANCH:
                results.extend(delete_branches(repo, batch, moves=moves))
            elif action is Action.DELETE_REMOTE_BRANCH:
                kept = {
                    r.finding.branch or r.finding.target
                    for r in results
                    if r.finding.action is Action.DELETE_BRANCH and not r.fixed
                }
                results.extend(delete_remote_branches(repo, batch, kept=kept))
            else:
                results.extend(map(one, batch))
    return results


def _apply_one(
    repo: git.Repo,
    f: Finding,
    *,
    store: Store | None,
    force: bool,
    grace: float,
    moves: ref_moves.RefMoves,
) -> tuple[str, str | None]:
    if f.action is Action.STOP_TASK:
        return _stop_task(repo, f, store=store, grace=grace), None
    if f.action is Action.KILL:
        return _kill(f, grace=grace), None
    if (simple := _by_repo().get(f.action)) is not None:
        return simple(repo, f), None
    if f.action is Action.FORGET_REF_MOVES:
        return ("removed" if ref_moves.forget_abandoned(Path(f.target)) else "in use again"), None
    if f.action is Action.REMOVE_WORKTREE:
        return remove_worktree(repo, f, force=force, moves=moves, store=store)
    if f.action is Action.PRUNE:
        return prune(repo, f, moves=moves), None
    if f.action is Action.RESCUE_DIRECTORY:
        return rescue_directory(repo, f)
    if f.action is Action.RESCUE_WORKTREE:
        return rescue_worktree(repo, f, moves=moves)
    if f.action is Action.REMOVE_NODE_CLONE:
        return _remove_node_clone(f, store=store), None
    raise ValueError(f"{f.action} is applied by its batch")  # the branches: _delete_*branches


def _by_repo() -> dict[Action, Callable[[git.Repo, Finding], str]]:
    """The fixes that need the repository and the finding alone."""
    return {
        Action.REMOVE_HALF_MADE: remove_half_made,
        Action.UNLINK_LOCK: unlink_lock,
        Action.MEND_REF: mend_ref,
        Action.REMOVE_STAGING: remove_staging,
        Action.REMOVE_INITIALIZING: remove_initializing,
    }


def _remove_node_clone(f: Finding, *, store: Store | None) -> str:
    from worktree_swarm.run import ray_leftovers  # noqa: PLC0415 - only with Ray runs

    run = store.get_run(f.run_id) if store is not None and f.run_id is not None else None
    if run is None or f.task_id is None or f.node is None:
        raise SwarmError(f"{f.target}: no run recorded for it")
    path = f.target.split(":", 1)[1]
    leftover = ray_leftovers.Leftover(
        node=f.node, run_id=run.run_id, task_id=f.task_id, path=path, size=0
    )
    return ray_leftovers.remove(leftover, address=run.settings.ray_address)


def _stop_task(repo: git.Repo, f: Finding, *, store: Store | None, grace: float) -> str:
    if store is None or f.run_id is None or f.task_id is None:
        raise SwarmError(f"{f.target}: no run recorded for it")
    if lock.manager_alive(repo.state_dir):
        raise SwarmError(f"a manager now holds the repository and owns task {f.task_id}")
    run = store.get_run(f.run_id)
    if run is not None:
        # The run's own kill_grace: its agents may need longer (or less) to checkpoint.
        grace = run.settings.kill_grace
    told: list[str] = []  # what its agents changed in git's files meanwhile, put back
    control.stop(repo, store, f.run_id, [f.task_id], grace=grace, tell=told.append)
    return "; ".join([f"stopped task {f.task_id} (process tree killed, work checkpointed)", *told])


def _kill(f: Finding, *, grace: float) -> str:
    if f.pid is None or f.create_time is None or f.pgid is None:
        raise SwarmError(f"{f.target}: no process identity recorded")
    identity = ProcessIdentity(pid=f.pid, create_time=f.create_time, pgid=f.pgid)
    if f.pid in protected_pids():
        raise SwarmError(f"pid {f.pid} is this process or its parent; not killed")
    if not proctree.is_alive(identity):
        return "already gone"
    # kill_tree re-checks the create time, so a reused PID is never signalled.
    proctree.kill_tree(identity, grace=grace)
    return "killed (whole process tree)"
