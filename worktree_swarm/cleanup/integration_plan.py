"""A run's integration branch and worktree in a `swarm clean` plan.

The branch `swarm merge` integrates a run into (``swarm/integration-<run>``): its worktree
removed, the branch deleted once landed (or forced), kept while a merge uses it, while it
holds the only record of undone merges, or while it is checked out in a checkout of yours.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from worktree_swarm.cleanup.findings import Action, Finding, Kind
from worktree_swarm.cleanup.plan_reads import Seen
from worktree_swarm.cleanup.worktree_plan import worktree_finding
from worktree_swarm.core.models import MERGE_CHECKING
from worktree_swarm.core.paths import real_path
from worktree_swarm.core.task import INTEGRATION_PREFIX
from worktree_swarm.git import branches as git_branches
from worktree_swarm.git import repo as git
from worktree_swarm.git.worktrees import WorktreeInfo
from worktree_swarm.infra.store_rows import TaskRow


def integration_branch(run_id: str) -> str:
    """The branch `swarm merge` integrates a run into (``swarm/integration-<run>``)."""
    return INTEGRATION_PREFIX + run_id


def merging_finding(run_id: str) -> Finding:
    """The finding that keeps run *run_id*'s integration branch while a merge uses it."""
    branch = integration_branch(run_id)
    return Finding(
        kind=Kind.BRANCH,
        target=branch,
        reason=f"integration branch of run {run_id}; a `swarm merge` is using it",
        action=Action.KEEP,
        fix="kept: run `swarm clean` again once the merge is done",
        problem=False,
        branch=branch,
        run_id=run_id,
    )


def cut_off(tasks: Iterable[TaskRow], branch: str) -> list[str]:
    """The tasks whose merge into *branch* was cut off in its checks."""
    return [
        t.task_id for t in tasks if t.merge_result == MERGE_CHECKING and t.merge_target == branch
    ]


def plan_integration(
    repo: git.Repo,
    run_id: str,
    registered: dict[Path, WorktreeInfo],
    seen: Seen,
    *,
    own: Path,
    targets: tuple[str, ...],
    keep_branches: bool,
    force: bool,
    look: bool,
    unchecked: Iterable[str] = (),
    stranded: Sequence[str] = (),
) -> list[Finding]:
    """The run's `swarm merge` worktree (removed) and branch (deleted once merged, or forced).

    *unchecked*: the tasks whose merge into it was cut off in its checks (not to be landed).
    *stranded*: the tasks whose merge into it was undone since, their own branches gone:
    their work is only in its reflog, which deleting it deletes (kept unless forced).

    *own* is where swarm keeps that worktree: the branch checked out anywhere else is in a
    checkout of yours (`git worktree add ../review swarm/integration-<run>`), never removed.
    """
    branch = integration_branch(run_id)
    found: list[Finding] = []
    dirty: bool | None = False
    kept = False
    worktree = None
    elsewhere = None  # a checkout of the user's: git refuses to delete its branch
    for info in registered.values():
        if info.branch != branch:
            continue
        if info.is_main or real_path(info.path) != real_path(own):
            elsewhere = info.path
            continue
        worktree = info.path
        finding, dirty = worktree_finding(
            repo,
            info,
            kind=Kind.WORKTREE,
            reason=f"integration worktree of run {run_id} (`swarm merge`)",
            force=force,
            run_id=run_id,
            look=look,
            cwds=seen.cwds,
        )
        kept = kept or finding.action is Action.KEEP
        if dirty and finding.action is Action.REMOVE_WORKTREE and branch not in seen.tips:
            # Never committed: that would make its branch anew (see
            # worktree_removal.remove_worktree).
            finding = dataclasses.replace(
                finding, fix="save what it holds aside (its branch is gone), then remove it"
            )
        found.append(finding)
    if keep_branches or kept or branch not in seen.tips:
        return found
    tip = seen.tips[branch]
    # Task branches count as merged once in an integration branch; this one must reach more.
    landing = tuple(t for t in targets if not t.startswith(f"refs/heads/{INTEGRATION_PREFIX}"))
    merged = None if elsewhere else seen.merged_into(tip, landing, dirty, worktree, repo=repo)
    why = f"integration branch of run {run_id}"
    if elsewhere:
        reason = f"{why}; checked out in {elsewhere}"
        action, fix = Action.KEEP, "kept: check out another branch there first"
    elif stranded and not force:
        reason = (
            f"{why}; the merges of {', '.join(stranded)} were undone on it and their branches "
            "are gone: their work is only in its reflog"
        )
        action = Action.KEEP
        fix = "kept: `swarm merge` names the commits to restore them from (or use --force)"
    elif merged or force:
        reason = f"{why}; merged into {merged}" if merged else f"{why}; not merged (--force)"
        action, fix = Action.DELETE_BRANCH, "delete it"
    else:
        onto = landing[0].removeprefix("refs/heads/") if landing else "your branch"
        reason = f"{why}; not merged into {onto}"
        action, fix = Action.KEEP, f"kept: land it (`git merge {branch}`) or use --force"
        if unchecked := list(unchecked):  # its tip may be a merge its checks never passed
            fix = (
                f"kept: the merge of {', '.join(unchecked)} was cut off in its checks; run "
                "`swarm merge` (it is undone and checked again) before you land it"
            )
    found.append(
        Finding(
            kind=Kind.BRANCH,
            target=branch,
            reason=reason,
            action=action,
            fix=fix,
            problem=action is not Action.KEEP,
            branch=branch,
            merged_into=landing if merged else (),
            run_id=run_id,
        )
    )
    return found


def stranded_tasks(
    repo: git.Repo, tasks: Sequence[TaskRow], branch: str, tips: Mapping[str, str]
) -> list[str]:
    """Tasks merged into *branch* whose merge it no longer holds, their own branches gone."""
    here = [
        t
        for t in tasks
        if t.merge_result == "merged"
        and t.merge_target == branch
        and t.merge_commit
        and t.branch not in tips
    ]
    tip = tips.get(branch)
    if not here or tip is None:
        return []
    held = git_branches.contained(repo, tip, [t.merge_commit for t in here if t.merge_commit])
    return [t.task_id for t in here if t.merge_commit not in held]
