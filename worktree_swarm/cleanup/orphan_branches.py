"""`swarm doctor`'s look at the ``swarm/*`` branches tasks left.

Branches no task owns, or whose finished task's branch is merged (with the copy a Ray run
pushed to its remote).
"""

from __future__ import annotations

from pathlib import Path

from worktree_swarm.cleanup.branches import merged_into, open_pull_request, remote_branch_finding
from worktree_swarm.cleanup.findings import Action, Finding, Kind
from worktree_swarm.cleanup.orphan_context import Context, integration_run
from worktree_swarm.core.run_settings import Executor
from worktree_swarm.git import remotes as git_remotes
from worktree_swarm.git import repo as git


def branches(ctx: Context, *, force: bool, removing: set[Path], dirty: set[str]) -> list[Finding]:
    """Findings for swarm's branches no live task needs: deleted once merged (or with *force*)."""
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
        if integration_run(branch) in ctx.bases:
            continue  # `swarm merge`'s result for a known run: the user's to land
        if task is not None and (not task.state.is_final or not task.made):
            continue  # running, or not its: there before it came to make it
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
                urls[remote] = git_remotes.remote_location(ctx.repo, remote)
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
