"""A finished task in a `swarm clean` plan: its worktree, its branch and its remote branch.

What is removed, deleted or kept of each, and why: a worktree is kept while it may be
someone's work (on another branch, mid-operation, tampered with, sealed, locked, not a
worktree at all), a branch while it is not merged, checked out elsewhere, still needed by a
task or its merge unchecked.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from worktree_swarm.cleanup.branches import open_pull_request, remote_branch_finding
from worktree_swarm.cleanup.findings import Action, Finding, Kind
from worktree_swarm.cleanup.plan_reads import Pushed, Seen
from worktree_swarm.cleanup.processes import describe, kill_finding, processes_using
from worktree_swarm.cleanup.worktree_plan import (
    finish_finding,
    locked_missing,
    sealed_worktree,
    worktree_finding,
)
from worktree_swarm.cleanup.worktree_removal import RESCUE_PREFIX
from worktree_swarm.core.models import MERGE_CHECKING
from worktree_swarm.core.task import merge_again
from worktree_swarm.git import gitfiles, removing, tampering
from worktree_swarm.git import repo as git
from worktree_swarm.git.worktrees import WorktreeInfo
from worktree_swarm.infra import fs
from worktree_swarm.infra.store_rows import TaskRow


def plan_task(
    repo: git.Repo,
    task: TaskRow,
    registered: dict[Path, WorktreeInfo],
    seen: Seen,
    *,
    targets: tuple[str, ...],
    named_before: bool,
    needed_by: str | None,
    keep_branches: bool,
    force: bool,
    look: bool,
    pushed: Pushed | None = None,
    kept_before: list[str],
    merging: bool = False,
) -> list[Finding]:
    """Findings for a finished *task*: its worktree, its branch and, *pushed*, its remote one.

    Its branch goes to *kept_before* instead when an earlier clean kept it, saying so
    (*named_before*), and it is still kept only for not being merged.
    """
    # A later run that reused the task id owns its branch and path now: never this task's.
    # Nor what its creation found there: a task that made neither has neither.
    if not task.made:
        return []
    found: list[Finding] = []
    dirty: bool | None = False
    kept = False
    branch_owners, path_owners = seen.owners
    if path_owners.get(task.worktree) == task.run_id and fs.sealed(Path(task.worktree)):
        # Its files are there, whatever git says (prunable): kept, and its branch with it.
        why = f"task {task.task_id} is {task.state.value}; "
        return [sealed_worktree(Path(task.worktree), why=why, task=task)]
    if path_owners.get(task.worktree) == task.run_id:
        found, dirty, kept = _plan_task_worktree(
            repo, task, registered, seen, force=force, look=look
        )
    if keep_branches or kept or task.branch not in seen.tips:
        return found
    if branch_owners.get(task.branch) != task.run_id:
        return found
    keep = _kept_for(task, registered, seen, needed_by, merging=merging)
    tip = seen.tips[task.branch]
    merged = (
        None
        if keep
        else seen.merged_into(tip, targets, dirty, Path(task.worktree), repo=repo, task=task)
    )
    why = f"task {task.task_id} is {task.state.value}"
    if merged or (force and not keep):
        reason = f"{why}; merged into {merged}" if merged else f"{why}; not merged (--force)"
        action, fix = Action.DELETE_BRANCH, "delete it"
    elif keep or not named_before:
        # Kept for a reason of its own, --force keeps it too: not what to do about it then.
        fix = "kept, also with --force" if keep else "kept: merge it (or delete it with --force)"
        keep = keep or f"not merged into {targets[0].removeprefix('refs/heads/')}"
        reason = f"{why}; {keep}"
        action = Action.KEEP
    else:  # kept unmerged, as an earlier clean said: named in one line
        kept_before.append(task.branch)
        return found
    found.append(
        Finding(
            kind=Kind.BRANCH,
            target=task.branch,
            reason=reason,
            action=action,
            fix=fix,
            problem=action is not Action.KEEP,
            branch=task.branch,
            merged_into=targets if merged else (),
            run_id=task.run_id,
            task_id=task.task_id,
        )
    )
    if pushed is not None and action is Action.DELETE_BRANCH:
        # The run's nodes pushed it there; fetched back after every attempt, it is where the
        # branch here is (unless you moved one of them since: then it stays there).
        found.append(
            remote_branch_finding(
                branch=task.branch,
                remote=pushed.remote,
                url=pushed.url,
                tip=tip,
                reason=f"{reason}; run {task.run_id} pushed it there (executor ray)",
                run_id=task.run_id,
                task_id=task.task_id,
                pull_request=open_pull_request(task),
            )
        )
    return found


def _kept_for(
    task: TaskRow,
    registered: dict[Path, WorktreeInfo],
    seen: Seen,
    needed_by: str | None,
    *,
    merging: bool,
) -> str:
    """Why the branch of *task* is kept whatever else holds ("" when it need not be).

    *merging*: a `swarm merge` holds the merge lock now (a merge in its checks is its own).
    """
    path = seen.real(task.worktree)
    elsewhere = [w for p, w in registered.items() if w.branch == task.branch and p != path]
    if elsewhere:
        return f"checked out in {elsewhere[0].path}"
    if needed_by is not None:
        return f"task {needed_by} still starts from it"
    if task.merge_result == MERGE_CHECKING and merging:
        # The merge lock is the repository's: that merge may be another run's, or into another
        # branch; either way this one is not "cut off" while it runs.
        return f"its merge into {task.merge_target} is unchecked while a `swarm merge` runs"
    if task.merge_result == MERGE_CHECKING:  # not landed: the next merge undoes it
        again = merge_again(task.merge_target)
        return f"its merge into {task.merge_target} was cut off; run `{again}` again first"
    return ""


def _plan_task_worktree(
    repo: git.Repo,
    task: TaskRow,
    registered: dict[Path, WorktreeInfo],
    seen: Seen,
    *,
    force: bool,
    look: bool,
) -> tuple[list[Finding], bool | None, bool]:
    """Findings for a finished task's worktree; returns (findings, dirty, kept).

    dirty is None when the worktree's status was not taken (without *look*).
    """
    why = f"task {task.task_id} is {task.state.value}"
    path = Path(task.worktree)
    info = registered.get(seen.real(task.worktree))
    if info is None and path.is_dir() and not path.is_symlink() and any(path.iterdir()):
        # Not a worktree (a creation that failed leaves part of a checkout): its files may
        # be an agent's, so only `swarm doctor` removes it, and only after saving them.
        stray = Finding(
            kind=Kind.DIRECTORY,
            target=str(path),
            reason=f"{why}; at its worktree path, but not a registered worktree",
            action=Action.KEEP,
            fix=f"kept: `swarm doctor --yes` saves its files under {RESCUE_PREFIX} and "
            "removes it (or move it aside yourself)",
            run_id=task.run_id,
            task_id=task.task_id,
        )
        return [stray], None, True
    if info is None or info.is_main:  # never the user's checkout, whatever the store says
        return [], False, False
    if removing.interrupted(repo, path) is not None:
        # Half deleted by a killed swarm, its `.git` file maybe too: whatever git says of it.
        return _plan_finish(task, info, seen, force=force)
    if not path.is_dir() and info.locked is not None:
        # Your lock says its drive may be unmounted: git keeps its entry, and so does clean.
        locked = locked_missing(repo, info, force=force, why=f"{why}; ", task=task)
        return [locked], False, not force
    if not path.is_dir() or info.prunable is not None:
        # No `.git` file left: a removal cut short (its files are on the branch).
        gone = (
            "its directory is gone (moved by hand? `git worktree repair NEW-PATH` before a"
            " clean keeps it a worktree)"
            if not path.is_dir()
            else "its .git file is gone"
        )
        prune = Finding(
            kind=Kind.WORKTREE,
            target=str(path),
            reason=f"{why}; {gone}",
            action=Action.PRUNE,
            fix="prune it from git's worktree list",
            run_id=task.run_id,
            task_id=task.task_id,
        )
        return [prune], False, False
    hands_off = _hands_off(repo, info, task)
    if hands_off is not None:
        kept = Finding(
            kind=Kind.WORKTREE,
            target=str(path),
            reason=f"{why}; {hands_off[0]}",
            action=Action.KEEP,
            fix=hands_off[1],
            run_id=task.run_id,
            task_id=task.task_id,
        )
        return [kept], None, True
    found: list[Finding] = []
    if force:
        for user in processes_using(path, seen.cwds):
            kill = kill_finding(user, reason=f"{describe(user)} is using {path}", fix="kill it")
            found += [kill] if kill else []
    finding, dirty = worktree_finding(
        repo,
        info,
        kind=Kind.WORKTREE,
        reason=why,
        force=force,
        run_id=task.run_id,
        task_id=task.task_id,
        look=look,
        cwds=seen.cwds,
        known=seen.statuses.get(str(path)),
        task=task,
    )
    found.append(finding)
    return found, dirty, finding.action is Action.KEEP


def _plan_finish(
    task: TaskRow, info: WorktreeInfo, seen: Seen, *, force: bool
) -> tuple[list[Finding], bool | None, bool]:
    """Findings for a finished task's worktree a killed swarm was removing; as above."""
    why = f"task {task.task_id} is {task.state.value}"
    found: list[Finding] = []
    path = Path(task.worktree)
    for user in processes_using(path, seen.cwds) if force and path.is_dir() else []:
        kill = kill_finding(user, reason=f"{describe(user)} is using {path}", fix="kill it")
        found += [kill] if kill else []
    finish = finish_finding(info, kind=Kind.WORKTREE, reason=why, force=force, cwds=seen.cwds)
    found.append(dataclasses.replace(finish, run_id=task.run_id, task_id=task.task_id))
    return found, False, finish.action is Action.KEEP


def _hands_off(repo: git.Repo, info: WorktreeInfo, task: TaskRow) -> tuple[str, str] | None:
    """Why swarm runs no git in the task worktree *info*, and what the user is told; or None."""
    path = Path(info.path)
    # Git there fails at once: doctor saves its files.
    if (cut := tampering.cut_off(path)) is not None:
        return cut, "kept: `swarm doctor --yes` saves its files and removes it"
    # Git there would work on another checkout or branch: hands off.
    if (changed := tampering.tampered(repo, path)) is not None:
        return changed, "kept: look at it and remove it by hand (swarm runs no git there)"
    # A commit of swarm's would land on your branch, or inside your rebase.
    if (yours := _switched_or_busy(info, task)) is not None:
        return yours, "kept: finish there, then remove it yourself (`git worktree remove`)"
    return None


def _switched_or_busy(info: WorktreeInfo, task: TaskRow) -> str | None:
    """What makes a task's worktree someone's work now: off its branch, or mid-operation.

    A detached HEAD too: the checkpoint before the removal would commit onto no branch.
    """
    if info.branch is not None and task.branch and info.branch != task.branch:
        return f"its worktree is on branch {info.branch} now, not {task.branch}"
    doing = gitfiles.operation_in_progress(Path(info.path))
    if doing is not None:  # a rebase detaches HEAD: that, not the detached HEAD, is named
        return f"{doing} is in progress in its worktree"
    if info.branch is None and task.branch:
        at = (info.head or "?")[:12]
        return f"its worktree is on a detached HEAD at {at} now, not {task.branch}"
    return None


def plan_left_there(task: TaskRow, seen: Seen, tip: str, pushed: Pushed) -> list[Finding]:
    """The remote branch of *task*, which an earlier clean could not delete there (at *tip*)."""
    if task.branch in seen.tips or seen.owners[0].get(task.branch) != task.run_id:
        return []  # planned with its branch here, or a later run's now
    if not task.made:
        return []  # one there before it: not its
    reason = f"task {task.task_id} is {task.state.value}; its branch here was deleted before"
    return [
        remote_branch_finding(
            branch=task.branch,
            remote=pushed.remote,
            url=pushed.url,
            tip=tip,
            reason=reason,
            run_id=task.run_id,
            task_id=task.task_id,
            pull_request=open_pull_request(task),
        )
    ]
