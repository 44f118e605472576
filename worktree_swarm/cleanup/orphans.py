"""`swarm doctor` (`swarm clean --orphans`): find and fix what crashes and other tools left.

Scanned, per kind (docs/clean.md has the reasons and fixes):

- processes: recorded agents alive while no manager holds the repository, processes started
  under one of the repository's shims that nothing supervises (found by the ``SWARM_SHIM``
  variable they inherit, wherever they moved), and any process whose cwd is under the
  worktree root (identified by pid + create time);
- stale git lock files (``*.lock``) while no git process works in the repository;
- worktrees: locked ``initializing`` by a killed ``git worktree add``, prunable, directory
  missing, or registered under the worktree root without a swarm task;
- directories under the worktree root that are not registered worktrees;
- worktrees of other tools, idle for a while, clean, with a merged branch (removed only when
  asked);
- ``swarm/*`` branches with no task, or whose finished task's branch is merged.

Worktrees and branches of tasks that are not final are left alone: they belong to a manager.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import psutil

from worktree_swarm.cleanup.branches import (
    merged_into,
    open_pull_request,
    remote_branch_finding,
)
from worktree_swarm.cleanup.clean import Report
from worktree_swarm.cleanup.findings import Action, Finding, Kind
from worktree_swarm.cleanup.fixes import apply
from worktree_swarm.cleanup.orphan_context import (
    _Context,
    _context,
    _integration_run,
    worktree_roots,
)
from worktree_swarm.cleanup.orphan_worktrees import DAY, _directories, _worktrees
from worktree_swarm.cleanup.processes import (
    describe,
    kill_finding,
    processes_using,
    protected_pids,
)
from worktree_swarm.cleanup.repo_repairs import broken_refs, ref_move_notes, stale_git_locks
from worktree_swarm.core.errors import BadInputError, SwarmError
from worktree_swarm.core.models import (
    BRANCH_PREFIX,
    SCRATCH_PREFIX,
    Executor,
    ProcessIdentity,
)
from worktree_swarm.core.paths import real_path, store_path
from worktree_swarm.core.units import format_size, parse_duration
from worktree_swarm.git import repo as git
from worktree_swarm.infra import lock, proc_scan, proctree
from worktree_swarm.infra.store import Store

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
            return Report(mode="orphans", findings=tuple(findings))
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
    finally:
        if store is not None:
            store.close()
    for root in worktree_roots(repo, None):
        with contextlib.suppress(OSError):
            root.rmdir()  # only when empty
    return Report(mode="orphans", findings=tuple(findings), applied=True, results=tuple(results))


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
    ctx = _context(repo, store)
    found = _processes(ctx)
    found += stale_git_locks(ctx.repo)
    found += broken_refs(ctx.repo)
    found += ref_move_notes(ctx.repo)
    wt_found, removing, dirty = _worktrees(
        ctx, force=force, foreign=foreign, idle=idle, now=time.time() if now is None else now
    )
    found += wt_found
    found += _directories(ctx)
    found += _branches(ctx, force=force, removing=removing, dirty=dirty)
    found += _node_clones(ctx)
    return found


def _node_clones(ctx: _Context) -> list[Finding]:
    """Task directories on Ray nodes that no live attempt uses (attempts lost with a node)."""
    recorded = ctx.store.runs() if ctx.store is not None else []
    runs = [r for r in recorded if r.settings.executor is Executor.RAY]
    if not runs:
        return []
    from worktree_swarm.run import ray_leftovers  # noqa: PLC0415 - only with Ray runs

    address = runs[-1].settings.ray_address  # one cluster: the newest Ray run's
    try:
        leftovers = ray_leftovers.find([r.run_id for r in runs], address=address)
    except SwarmError as exc:
        return [
            Finding(
                kind=Kind.NODE_CLONE,
                target="ray cluster",
                reason=f"not checked: {exc}",
                action=Action.KEEP,
                fix="run `swarm doctor` again where the cluster can be reached",
                problem=False,
            )
        ]
    return [
        Finding(
            kind=Kind.NODE_CLONE,
            target=f"{left.node}:{left.path}",
            reason=f"task {left.task_id} of run {left.run_id} has no live attempt on node "
            f"{left.node} (one lost with its node?); {format_size(left.size)}",
            action=Action.REMOVE_NODE_CLONE,
            fix=f"remove it from node {left.node} (the task's work is on {BRANCH_PREFIX}"
            f"{left.task_id} up to its last push)",
            run_id=left.run_id,
            task_id=left.task_id,
            branch=f"{BRANCH_PREFIX}{left.task_id}",
            node=left.node,
        )
        for left in leftovers
    ]


def _processes(ctx: _Context) -> list[Finding]:
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
            except OSError:
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


def _merge_worktrees(ctx: _Context) -> list[Path]:
    """The worktrees `swarm merge` works in: integration worktrees and ``--into`` scratch ones."""
    return [
        path for path, info in ctx.registered.items()
        if _integration_run(info.branch) is not None or path.name.startswith(SCRATCH_PREFIX)
    ]  # fmt: skip


def _shim_leftovers(ctx: _Context, covered: set[int]) -> list[Finding]:
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
            covered.update(p.pid for p in process.children(recursive=True))
    return found


def _branches(ctx: _Context, *, force: bool, removing: set[Path], dirty: set[str]) -> list[Finding]:
    out = git.git(
        ctx.repo.root, "for-each-ref", "--format=%(refname)%00%(objectname)", "refs/heads/swarm/"
    )
    checked_out = {w.branch: p for p, w in ctx.registered.items() if w.branch}
    recorded = ctx.store.runs() if ctx.store is not None else []
    # Where Ray runs pushed their task branches: deleted there too, with the branch here.
    pushed = {r.run_id: r.settings.remote for r in recorded if r.settings.executor is Executor.RAY}
    urls: dict[str, str] = {}
    found: list[Finding] = []
    for line in out.splitlines():
        ref, _, sha = line.partition("\0")
        branch = ref.removeprefix("refs/heads/")
        where = checked_out.get(branch)
        task = ctx.task_of_branch.get(branch)
        if (where is not None and where not in removing) or branch in ctx.needed:
            continue
        if _integration_run(branch) in ctx.bases:
            continue  # `swarm merge`'s result for a known run: the user's to land
        if task is not None and not task.state.is_final:
            continue
        targets = ctx.targets + ((ctx.bases[task.run_id],) if task is not None else ())
        merged = None if branch in dirty else merged_into(ctx.repo, sha, targets)
        owner = "no swarm task owns it" if task is None else f"task {task.task_id} is "
        owner += "" if task is None else task.state.value
        if merged:
            reason, action = f"{owner}; merged into {merged}", Action.DELETE_BRANCH
        elif task is not None:
            continue  # an unmerged result: `swarm merge`, `swarm pr` or `swarm clean --force`
        elif force:
            reason, action = f"{owner}; not merged (--force)", Action.DELETE_BRANCH
        else:
            reason, action = f"{owner} and it is not merged", Action.KEEP
        found.append(
            Finding(
                kind=Kind.BRANCH,
                target=branch,
                reason=reason,
                action=action,
                fix="delete it"
                if action is Action.DELETE_BRANCH
                else "kept: merge it, or delete it with --force",
                branch=branch,
                merged_into=targets if merged else (),
                run_id=task.run_id if task is not None else None,
                task_id=task.task_id if task is not None else None,
            )
        )
        remote = pushed.get(task.run_id) if task is not None else None
        if task is not None and remote is not None and action is Action.DELETE_BRANCH:
            if remote not in urls:
                urls[remote] = git.remote_location(ctx.repo, remote)
            found.append(
                remote_branch_finding(
                    branch=branch,
                    remote=remote,
                    url=urls[remote],
                    tip=sha,
                    reason=f"{reason}; run {task.run_id} pushed it there (executor ray)",
                    run_id=task.run_id,
                    task_id=task.task_id,
                    pull_request=open_pull_request(task),
                )
            )
    return found
