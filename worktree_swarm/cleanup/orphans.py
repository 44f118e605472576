"""`swarm doctor` (`swarm clean --orphans`): find and fix what crashes and other tools left.

Scanned, per kind (docs/clean.md has the reasons and fixes):

- processes: recorded agents alive while no manager holds the repository, processes started
  under one of the repository's shims that nothing supervises (found by the ``SWARM_SHIM``
  variable they inherit, wherever they moved), and any process whose cwd is under the
  worktree root (identified by pid + create time);
- stale git lock files (``*.lock``) while no git process works in the repository;
- the object stores of swarm's checkpoints and rescues killed half-way, none holding them;
- worktrees: locked ``initializing`` by a killed ``git worktree add``, prunable, directory
  missing, or registered under the worktree root without a swarm task;
- directories under the worktree root that are not registered worktrees;
- worktrees of other tools, idle for a while, clean, with a merged branch (removed only when
  asked);
- ``swarm/*`` branches with no task, or whose finished task's branch is merged.

Worktrees and branches of tasks that are not final are left alone: they belong to a manager.

The checks are in ``orphan_processes``, ``orphan_worktrees`` and ``orphan_branches``; what
they all look at, read once per scan, in ``orphan_context``.
"""

from __future__ import annotations

import contextlib
import math
import time

from worktree_swarm.cleanup.clean import Report
from worktree_swarm.cleanup.findings import Action, Finding
from worktree_swarm.cleanup.fixes import apply
from worktree_swarm.cleanup.orphan_branches import branches
from worktree_swarm.cleanup.orphan_context import context, worktree_roots
from worktree_swarm.cleanup.orphan_nodes import node_clones
from worktree_swarm.cleanup.orphan_processes import processes
from worktree_swarm.cleanup.orphan_worktrees import DAY, directories, worktree_findings
from worktree_swarm.cleanup.repo_repairs import (
    broken_refs,
    half_made_registrations,
    ref_move_notes,
    staging_leftovers,
    stale_git_locks,
)
from worktree_swarm.core.errors import BadInputError
from worktree_swarm.core.paths import merge_guard_dir, store_path
from worktree_swarm.core.units import parse_duration
from worktree_swarm.git import removing
from worktree_swarm.git import repo as git
from worktree_swarm.guard import snapshot
from worktree_swarm.infra import lock
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import task_from_json
from worktree_swarm.report import run_info
from worktree_swarm.run import runs

DEFAULT_IDLE = 7 * DAY


def parse_age(text: str) -> float:
    """Seconds in ``7d``, ``36h``, ``90m`` or ``45s``; BadInputError otherwise."""
    if text.endswith("d"):
        try:
            days = float(text[:-1])
        except ValueError:
            days = -1.0
        if not 0 < days < math.inf:
            raise BadInputError(f"--idle: bad age {text!r} (use e.g. '7d', '36h' or '90m')")
        return days * DAY
    return parse_duration(text, where="--idle")


_FOLLOW_UPS = 2  # scans after the fixes, for what they uncovered


def doctor(
    repo: git.Repo,
    *,
    yes: bool = False,
    force: bool = False,
    foreign: bool = False,
    idle: float = DEFAULT_IDLE,
    grace: float = 5.0,
) -> Report:
    """Scan for orphans; with *yes* fix them (see :func:`worktree_swarm.cleanup.fixes.apply`)."""
    path = store_path(repo)
    # Not beside a manager whose state was deleted: its agents and worktrees would be orphans.
    lock.refuse_while_state_is_gone(repo.state_dir, path)
    # A dry run only looks: it works on a full disk too (the store as last written).
    store = (Store(path) if yes else Store.to_read(path)) if path.exists() else None
    try:
        findings = scan(repo, store, force=force, foreign=foreign, idle=idle)
        if not yes:
            return Report(mode="orphans", findings=tuple(findings), notes=_left_open(store))
        if store is not None:  # what a rescue saves stays without a file holding one
            tasks = [
                task_from_json(t.spec_json) for r in store.runs() for t in store.tasks(r.run_id)
            ]
            run_info.know_secrets_of(repo.root, tasks)
        results = apply(repo, findings, store=store, force=force, grace=grace)
        # A fix can leave another orphan behind (a pruned worktree's directory, still full, is
        # a stray directory now): fixed in the same go, so that none is left for a next run.
        # So can one that was kept: a worktree kept "in use" by a process the fixes ended.
        for _ in range(_FOLLOW_UPS):
            seen = {(f.kind, f.target): f.action for f in findings}
            new = scan(repo, store, force=force, foreign=foreign, idle=idle)
            more = [f for f in new if _new_to_fix(seen.get((f.kind, f.target)), f)]
            if not more:
                break
            again = {(f.kind, f.target) for f in more}
            findings = [f for f in findings if (f.kind, f.target) not in again] + more
            results = [r for r in results if (r.finding.kind, r.finding.target) not in again]
            results += apply(repo, more, store=store, force=force, grace=grace)
        _drop_merge_baselines(repo)
        if (repo.state_dir / removing.DIR).is_dir():  # no lock file where swarm never ran
            with git.repo_lock(repo):  # what a swarm killed once git was done left
                removing.sweep(repo)
        notes = _left_open(store)  # after the fixes: stopping its last agents may end one
    finally:
        if store is not None:
            store.close()
    for root in worktree_roots(repo, None):
        with contextlib.suppress(OSError):
            root.rmdir()  # only when empty
    return Report(
        mode="orphans", findings=tuple(findings), applied=True, results=tuple(results), notes=notes
    )


def _left_open(store: Store | None) -> tuple[str, ...]:
    """A line for each run left waiting for `swarm resume` (doctor ends its live agents only).

    Its manager killed after its agents ended, nothing of it is an orphan to fix, yet its
    tasks are not final and their work may be uncommitted in their worktrees.
    """
    if store is None:
        return ()
    found = []
    for run in store.runs():
        if runs.left_unmanaged(store, run):
            left = len([row for row in store.tasks(run.run_id) if not row.state.is_final])
            found.append(
                f"run {run.run_id}: {left} task{'s' * (left != 1)} not final, their work in"
                f" their worktrees: `{runs.resume_command(store, run.run_id)}` carries it on"
                " (`swarm stop` ends it)"
            )
    return tuple(found)


def _drop_merge_baselines(repo: git.Repo) -> None:
    """Delete the baselines a killed `swarm merge`'s guard left, while no merge runs.

    A merge deletes them on leaving; killed, it left its index copies and the store of what
    its captures hashed (your checkout's uncommitted files among them).
    """
    runs = repo.state_dir / "runs"
    if not runs.is_dir():
        return
    with lock.merge_lock_if_free(repo.state_dir) as free:
        for run in sorted(runs.iterdir()) if free else []:
            snapshot.drop_baselines(merge_guard_dir(repo, run.name))


def _new_to_fix(before: Action | None, finding: Finding) -> bool:
    """Whether a follow-up scan's *finding* was not planned (*before*: its planned action)."""
    return before is None or (before is Action.KEEP and finding.action is not Action.KEEP)


def scan(
    repo: git.Repo,
    store: Store | None,
    *,
    force: bool = False,
    foreign: bool = False,
    idle: float = DEFAULT_IDLE,
    now: float | None = None,
) -> list[Finding]:
    """Every orphan of *repo*, each with the reason and what fixing it does (read-only)."""
    if half := half_made_registrations(repo, store):
        # git lists no worktree until they go: what needs that listing waits for `--yes`
        # (whose scans after the fixes find it).
        return half + stale_git_locks(repo) + broken_refs(repo) + staging_leftovers(repo)
    ctx = context(repo, store)
    found = processes(ctx)
    found += stale_git_locks(ctx.repo)
    found += broken_refs(ctx.repo)
    found += ref_move_notes(ctx.repo)
    found += staging_leftovers(ctx.repo)
    wt_found, removing, dirty = worktree_findings(
        ctx, force=force, foreign=foreign, idle=idle, now=time.time() if now is None else now
    )
    found += wt_found
    found += directories(ctx)
    found += branches(ctx, force=force, removing=removing, dirty=dirty)
    found += node_clones(ctx)
    return found
