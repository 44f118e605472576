"""`swarm doctor`'s look under the worktree roots and at every registered worktree.

Worktrees locked ``initializing`` by a killed ``git worktree add``, prunable or missing;
worktrees under a worktree root that no task owns (a run's integration worktree among them);
idle, clean worktrees of other tools whose branch is merged; and directories under a
worktree root that are not registered worktrees.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

from worktree_swarm.cleanup.branches import merged_into
from worktree_swarm.cleanup.findings import Action, Finding, Kind
from worktree_swarm.cleanup.orphan_context import Context, integration_run
from worktree_swarm.cleanup.processes import adding_process
from worktree_swarm.cleanup.worktree_plan import (
    finish_finding,
    locked_missing,
    sealed_worktree,
    worktree_finding,
)
from worktree_swarm.cleanup.worktree_removal import RESCUE_PREFIX
from worktree_swarm.core.paths import real_path
from worktree_swarm.core.task import INTEGRATION_DIR_PREFIX, INTEGRATION_PREFIX, SCRATCH_PREFIX
from worktree_swarm.git import removing, tampering, worktrees
from worktree_swarm.git import repo as git
from worktree_swarm.git.worktrees import WorktreeInfo
from worktree_swarm.infra import fs

DAY = 86400.0


def worktree_findings(
    ctx: Context, *, force: bool, foreign: bool, idle: float, now: float
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
        if finding is not None and task is not None and not task.made:
            finding = _not_made(finding, task.task_id)
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


def _not_made(finding: Finding, task_id: str) -> Finding:
    """*finding* for a worktree at the path of a task that made none there: its files stay."""
    if finding.action not in {Action.REMOVE_INITIALIZING, Action.RESCUE_WORKTREE}:
        return finding
    why = f"kept: swarm did not make it (task {task_id} made no worktree there)"
    return dataclasses.replace(finding, action=Action.KEEP, fix=why)


def _unowned(
    ctx: Context, info: WorktreeInfo, *, force: bool
) -> tuple[Finding | None, bool | None]:
    """A worktree under the worktree root no task owns, and whether it has uncommitted work."""
    if ctx.merge_running and info.path.name.startswith(SCRATCH_PREFIX):
        return None, False  # the `--into` merge at work right now
    run_id = integration_run(info.branch)
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


def _broken_worktree(ctx: Context, info: WorktreeInfo, *, force: bool) -> Finding | None:
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
    gone = info.prunable is not None or not os.path.lexists(path)
    if gone and removing.interrupted(ctx.repo, path) is not None:
        # git deleted its `.git` file (or all of it) before it was killed: swarm's to finish.
        why = f"prunable: {info.prunable}" if info.prunable else "its directory is missing"
        return finish_finding(info, kind=Kind.WORKTREE, reason=why, force=force)
    if info.prunable is not None:
        return Finding(
            kind=Kind.WORKTREE,
            target=str(path),
            reason=f"prunable: {info.prunable}",
            action=Action.PRUNE,
            fix="prune it from git's worktree list",
            branch=info.branch,
        )
    if (cut := tampering.cut_off(path)) is not None:
        return _cut_off(ctx, info, cut)
    if path.exists():
        return None
    return locked_missing(ctx.repo, info, force=force)


def _cut_off(ctx: Context, info: WorktreeInfo, why: str) -> Finding:
    """A worktree whose ``.git`` file names no git dir: git keeps it and never prunes it.

    Under a worktree root (swarm's) its files are saved and it goes, unless it is locked;
    elsewhere it is yours.
    """
    path = info.path
    ours = any(real_path(path).is_relative_to(root) for root in ctx.roots)
    if not ours:
        fix = f"kept: `git worktree repair {path}` makes it a checkout again"
    elif info.locked is not None:  # git's "never prune it" (its drive, say): nor does swarm
        locked = info.locked or "no reason given"
        fix = f"kept: it is locked ({locked}); `git worktree unlock {path}`"
    else:
        fix = f"save its files as a commit under {RESCUE_PREFIX}, delete it, prune it"
    return Finding(
        kind=Kind.WORKTREE,
        target=str(path),
        reason=why,
        action=Action.RESCUE_WORKTREE if ours and info.locked is None else Action.KEEP,
        fix=fix,
        branch=info.branch,
        admin_dir=worktrees.admin_of(ctx.repo, path),
    )


def _foreign(
    ctx: Context, info: WorktreeInfo, *, foreign: bool, idle: float, now: float
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


def directories(ctx: Context) -> list[Finding]:
    """Findings for the worktree roots: unreadable ones, and directories no worktree registers."""
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
            if task is not None and not task.made:  # intent first: a half-made one is made
                keep = f"swarm did not make it (task {task.task_id} made no worktree there)"
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


def _keep_directory(ctx: Context, child: Path, main: Path) -> str:
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
