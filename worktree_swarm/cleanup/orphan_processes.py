"""`swarm doctor`'s look for processes that nothing supervises.

Recorded agents alive while no manager holds the repository, processes started under one of
the repository's shims whose shim is gone or unsupervised, and any process whose working
directory is under a worktree root (except a live manager's or `swarm merge`'s own).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import psutil

from worktree_swarm.cleanup.findings import Action, Finding, Kind
from worktree_swarm.cleanup.orphan_context import Context, integration_run
from worktree_swarm.cleanup.processes import describe, kill_finding, processes_using, protected_pids
from worktree_swarm.core.models import ProcessIdentity
from worktree_swarm.core.paths import real_path
from worktree_swarm.core.task import SCRATCH_PREFIX
from worktree_swarm.infra import proc_scan, proctree


def processes(ctx: Context) -> list[Finding]:
    """Findings for processes left behind: agents no manager holds, others under the roots."""
    found: list[Finding] = []
    covered: set[int] = set()
    if ctx.store is not None and not ctx.manager_alive:
        # Every agent that still runs now was running already: the store's history of dead
        # ones is passed over without asking after each.
        running = proctree.running_pids()
        for run in ctx.store.runs():
            attempts = [a for a in ctx.store.attempts(run.run_id) if a.pid in running]
            rows = {row.task_id: row for row in ctx.store.tasks(run.run_id)} if attempts else {}
            for attempt in attempts:
                identity = ProcessIdentity(
                    pid=attempt.pid, create_time=attempt.create_time, pgid=attempt.pgid
                )
                if not proctree.is_alive(identity):
                    continue
                covered |= {identity.pid, *(p.pid for p in proctree.descendants(identity))}
                task = rows.get(attempt.task_id)
                active = task is not None and not task.state.is_final
                if active and any(f.task_id == attempt.task_id for f in found):
                    continue
                found.append(
                    Finding(
                        kind=Kind.PROCESS,
                        target=f"pid {identity.pid}",
                        reason=f"agent of task {attempt.task_id} (run {run.run_id}) is alive "
                        "but no manager holds the repository",
                        action=Action.STOP_TASK if active else Action.KILL,
                        fix=f"stop task {attempt.task_id}: kill its process tree, checkpoint "
                        "its worktree, mark it stopped"
                        if active
                        else "kill its process tree",
                        run_id=run.run_id,
                        task_id=attempt.task_id,
                        pid=identity.pid,
                        create_time=identity.create_time,
                        pgid=identity.pgid,
                    )
                )
    found += _shim_leftovers(ctx, covered)
    active_paths = [p for p, t in ctx.task_at.items() if not t.state.is_final]
    # A merge at work: its git, checks and resolver run in its worktrees.
    merging = _merge_worktrees(ctx) if ctx.merge_running else []
    for root in ctx.roots:
        for process in processes_using(root) if root.is_dir() else []:
            try:
                cwd = real_path(process.cwd())
            except (OSError, psutil.Error):  # gone or unreadable since it was listed
                continue
            mine = ctx.manager_alive and any(cwd.is_relative_to(p) for p in active_paths)
            mine = mine or any(cwd.is_relative_to(p) for p in merging)
            if process.pid in covered or mine:
                continue
            covered.add(process.pid)
            kill = kill_finding(
                process,
                reason=f"{describe(process)} has its working directory in {cwd}, under the "
                "worktree root",
                fix="kill its process tree",
            )
            found += [kill] if kill else []
    return found


def _merge_worktrees(ctx: Context) -> list[Path]:
    """The worktrees `swarm merge` works in: integration worktrees and ``--into`` scratch ones."""
    return [
        path for path, info in ctx.registered.items()
        if integration_run(info.branch) is not None or path.name.startswith(SCRATCH_PREFIX)
    ]  # fmt: skip


def _shim_leftovers(ctx: Context, covered: set[int]) -> list[Finding]:
    """Processes started under one of this repository's shims that nothing supervises.

    That is: their shim is gone (killed before it could clean up), or it lives but neither
    a manager nor `swarm merge` holds the repository. Adds what it finds to *covered*.
    """
    found: list[Finding] = []
    supervised = ctx.manager_alive or ctx.merge_running
    keep = protected_pids()
    for process, record in proc_scan.marked_processes(ctx.repo.state_dir):
        if process.pid in covered or process.pid in keep:
            continue
        alive = proctree.shim_alive(record)
        if alive and supervised:  # nor is it anyone's to kill for where it runs
            covered.add(process.pid)
            with contextlib.suppress(psutil.Error):
                covered.update(p.pid for p in process.children(recursive=True))
            continue
        why = "no manager holds the repository" if alive else "its shim is gone"
        kill = kill_finding(
            process,
            reason=f"{describe(process)} was started by swarm (shim record {record}) and {why}",
            fix="kill its process tree",
        )
        if kill is not None:
            found.append(kill)
            covered.add(process.pid)
            with contextlib.suppress(psutil.Error):  # it may be gone already
                covered.update(p.pid for p in process.children(recursive=True))
    return found
