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
import os
import time
from dataclasses import dataclass
from pathlib import Path

import filelock
import psutil

from worktree_swarm.cleanup.branches import (
    merge_targets,
    merged_into,
    open_pull_request,
    remote_branch_finding,
)
from worktree_swarm.cleanup.clean import Report, needed_by_pending
from worktree_swarm.cleanup.findings import Action, Finding, Kind
from worktree_swarm.cleanup.fixes import apply
from worktree_swarm.cleanup.processes import (
    adding_process,
    describe,
    kill_finding,
    processes_using,
    protected_pids,
)
from worktree_swarm.cleanup.repo_repairs import broken_refs, ref_move_notes, stale_git_locks
from worktree_swarm.cleanup.worktree_removal import (
    RESCUE_PREFIX,
    locked_missing,
    sealed_worktree,
    worktree_finding,
)
from worktree_swarm.config import manifest
from worktree_swarm.core import paths
from worktree_swarm.core.errors import BadInputError, SwarmError
from worktree_swarm.core.models import (
    BRANCH_PREFIX,
    INTEGRATION_DIR_PREFIX,
    INTEGRATION_PREFIX,
    SCRATCH_PREFIX,
    Executor,
    ProcessIdentity,
)
from worktree_swarm.core.paths import real_path, store_path
from worktree_swarm.core.units import format_size, parse_duration
from worktree_swarm.git import repo as git
from worktree_swarm.git import worktrees
from worktree_swarm.git.worktrees import WorktreeInfo
from worktree_swarm.infra import fs, lock, proc_scan, proctree
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import TaskRow

DAY = 86400.0
DEFAULT_IDLE = 7 * DAY


@dataclass(frozen=True, slots=True, kw_only=True)
class _Context:
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


def _context(repo: git.Repo, store: Store | None) -> _Context:
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
    return _Context(
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


def _worktrees(
    ctx: _Context, *, force: bool, foreign: bool, idle: float, now: float
) -> tuple[list[Finding], set[Path], set[str]]:
    """Findings, the worktree paths planned for removal, and branches a checkpoint will move."""
    found: list[Finding] = []
    removing: set[Path] = set()
    dirty_branches: set[str] = set()
    for path, info in ctx.registered.items():
        task = ctx.task_at.get(path)
        if info.is_main or (task is not None and not task.state.is_final):
            continue
        finding = _broken_worktree(ctx, info, force=force)
        if finding is None and any(path.is_relative_to(root) for root in ctx.roots):
            if task is not None:
                continue  # a finished task's worktree: `swarm clean` decides
            finding, dirty = _unowned(ctx, info, force=force)
            if dirty and info.branch:
                dirty_branches.add(info.branch)
        elif finding is None:
            finding = _foreign(ctx, info, foreign=foreign, idle=idle, now=now)
        if finding is None:
            continue
        found.append(finding)
        if finding.action is not Action.KEEP:
            removing.add(path)
    return found, removing, dirty_branches


def _unowned(
    ctx: _Context, info: WorktreeInfo, *, force: bool
) -> tuple[Finding | None, bool | None]:
    """A worktree under the worktree root no task owns, and whether it has uncommitted work."""
    if ctx.merge_running and info.path.name.startswith(SCRATCH_PREFIX):
        return None, False  # the `--into` merge at work right now
    run_id = _integration_run(info.branch)
    if run_id in ctx.bases:
        return _integration_worktree(info, str(run_id)), False
    run_id = info.path.name.removeprefix(INTEGRATION_DIR_PREFIX)
    if info.path.name.startswith(INTEGRATION_DIR_PREFIX) and run_id in ctx.bases:
        return _switched_integration_worktree(info, run_id), False
    reason = "registered under the worktree root, but no swarm task owns it"
    return worktree_finding(ctx.repo, info, kind=Kind.WORKTREE, reason=reason, force=force)


def _switched_integration_worktree(info: WorktreeInfo, run_id: str) -> Finding:
    """A run's integration worktree the user switched to another branch: theirs to switch back.

    What is on that branch, or uncommitted in it, may be the user's work: never removed.
    """
    branch = INTEGRATION_PREFIX + run_id
    on = f"on branch {info.branch}" if info.branch else "on a detached HEAD"
    return Finding(
        kind=Kind.WORKTREE,
        target=str(info.path),
        reason=f"integration worktree of run {run_id} (`swarm merge`), {on}, not {branch}",
        action=Action.KEEP,
        fix=f"kept (it may hold your work); `swarm merge` needs it back on {branch}:"
        f" `git -C {info.path} switch {branch}`",
        branch=info.branch,
        run_id=run_id,
    )


def _integration_worktree(info: WorktreeInfo, run_id: str) -> Finding:
    """A run's `swarm merge` worktree, left after the merge: `swarm clean` removes it."""
    return Finding(
        kind=Kind.WORKTREE,
        target=str(info.path),
        reason=f"integration worktree of run {run_id} (`swarm merge`), still there",
        action=Action.KEEP,
        fix=f"kept: `swarm clean --run {run_id} --yes` removes it (and its branch once merged)",
        problem=False,
        branch=info.branch,
        run_id=run_id,
    )


def _broken_worktree(ctx: _Context, info: WorktreeInfo, *, force: bool) -> Finding | None:
    path = info.path
    if info.locked == "initializing":
        if adding_process(path) is not None:
            return None  # being created right now
        return Finding(
            kind=Kind.WORKTREE,
            target=str(path),
            reason="locked `initializing`: the `git worktree add` that made it was killed "
            "before its checkout finished",
            action=Action.REMOVE_INITIALIZING,
            fix="unlock it, delete its half-made checkout, prune it",
            branch=info.branch,
            admin_dir=worktrees.admin_of(ctx.repo, path),
        )
    if info.prunable is not None and fs.sealed(path):
        return sealed_worktree(path)
    if info.prunable is not None:
        return Finding(
            kind=Kind.WORKTREE,
            target=str(path),
            reason=f"prunable: {info.prunable}",
            action=Action.PRUNE,
            fix="prune it from git's worktree list",
            branch=info.branch,
        )
    if path.exists():
        return None
    return locked_missing(ctx.repo, info, force=force)


def _foreign(
    ctx: _Context, info: WorktreeInfo, *, foreign: bool, idle: float, now: float
) -> Finding | None:
    """An idle, clean worktree of another tool whose branch is merged, or None."""
    if info.locked is not None or info.branch is None or info.head is None:
        return None
    age = now - _last_used(ctx.repo, info.path)
    if age < idle:
        return None
    merged = merged_into(ctx.repo, info.head, ctx.targets)
    # --no-optional-locks: a plain `git status` may rewrite the index and so reset its age.
    changes = git.git(info.path, "--no-optional-locks", "status", "--porcelain", "-z")
    if merged is None or changes:
        return None
    reason = (
        f"worktree of another tool, unused for {age / DAY:.1f} days; "
        f"its branch {info.branch} is merged into {merged}"
    )
    if foreign:
        finding, _ = worktree_finding(
            ctx.repo, info, kind=Kind.FOREIGN_WORKTREE, reason=reason, force=False
        )
        return finding
    return Finding(
        kind=Kind.FOREIGN_WORKTREE,
        target=str(info.path),
        reason=reason,
        action=Action.KEEP,
        fix="kept: pass --foreign to remove it (its branch stays)",
        branch=info.branch,
    )


def _last_used(repo: git.Repo, path: Path) -> float:
    """Newest mtime among the worktree directory and its HEAD, index and HEAD reflog."""
    admin = worktrees.admin_of(repo, path)
    candidates = [path]
    if admin is not None:
        candidates += [Path(admin) / name for name in ("HEAD", "index", "logs/HEAD")]
    times = []
    for candidate in candidates:
        with contextlib.suppress(OSError):
            times.append(candidate.stat().st_mtime)
    return max(times, default=0.0)


def _directories(ctx: _Context) -> list[Finding]:
    found: list[Finding] = []
    main = real_path(ctx.repo.root)
    for root in ctx.roots:
        if fs.sealed(root):
            found.append(
                Finding(
                    kind=Kind.DIRECTORY,
                    target=str(root),
                    reason="the worktree root cannot be read",
                    action=Action.KEEP,
                    fix=f"kept: `chmod u+rwx {root}` gives it back to you; then look again",
                )
            )
            continue
        for child in sorted(root.iterdir()) if root.is_dir() else []:
            if child.is_symlink() or not child.is_dir() or real_path(child) in ctx.registered:
                continue
            task = ctx.task_at.get(real_path(child))
            if task is not None and not task.state.is_final and ctx.manager_alive:
                continue  # its worktree is being created
            keep = _keep_directory(ctx, child, main)
            found.append(
                Finding(
                    kind=Kind.DIRECTORY,
                    target=str(child),
                    reason="under the worktree root, but not a registered worktree",
                    action=Action.KEEP if keep else Action.RESCUE_DIRECTORY,
                    fix=f"kept: {keep}"
                    if keep
                    else f"save its files as a commit under {RESCUE_PREFIX}, then delete it",
                )
            )
    return found


def _keep_directory(ctx: _Context, child: Path, main: Path) -> str:
    """Why the stray directory *child* must not be removed ('' when it may be)."""
    if real_path(child).is_relative_to(main) or main.is_relative_to(real_path(child)):
        return "it is inside your checkout; remove it yourself"
    if fs.sealed(child):
        return f"it cannot be read; `chmod u+rwx {child}` gives it back to you"
    dotgit = child / ".git"
    if dotgit.is_dir():
        return "it is a repository of its own; move it elsewhere"
    if dotgit.is_file():
        try:
            text = os.fsdecode(fs.read_file(dotgit)).strip().removeprefix("gitdir:").strip()
        except OSError:
            return "its .git cannot be read; move it elsewhere"
        if not real_path(child / text).is_relative_to(real_path(ctx.repo.common_dir)):
            return "it is a worktree of another repository; move it elsewhere"
    return ""


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


def _integration_run(branch: str | None) -> str | None:
    """The run id of a `swarm merge` integration branch (``swarm/integration-<run>``)."""
    if branch is None or not branch.startswith(INTEGRATION_PREFIX):
        return None
    return branch.removeprefix(INTEGRATION_PREFIX)
