"""`swarm clean`: remove finished tasks' worktrees and merged branches, keep their history.

For every finished task (done, merged, failed, no_changes, timed_out, stopped, blocked,
conflicted) of one run or all runs: checkpoint and remove its worktree, prune git's worktree
list, delete its branch when merged (or with ``force``). What was removed is recorded as a
``cleaned`` event; rows, attempts and logs stay for ``swarm report``. The tasks of a run
whose manager died are left for `swarm resume` or `swarm stop`; the commits their agents made
themselves are looked through for this shell's secrets first, as those commands do.

This module puts the plan together and carries it out; a task's findings are made in
task_plan, the integration branch's in integration_plan, over what plan_reads read once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from worktree_swarm.agents import claude_auth
from worktree_swarm.cleanup.branches import (
    LOCAL_KEPT,
    Merged,
    merge_targets,
    merged_into,
    with_base,
)
from worktree_swarm.cleanup.findings import Action, Finding, Result
from worktree_swarm.cleanup.fixes import apply
from worktree_swarm.cleanup.integration_plan import (
    cut_off,
    integration_branch,
    merging_finding,
    plan_integration,
    stranded_tasks,
)
from worktree_swarm.cleanup.plan_reads import Pushed, Seen, to_look_at, worktree_statuses
from worktree_swarm.cleanup.repo_repairs import ref_move_notes, stale_git_locks
from worktree_swarm.cleanup.task_plan import plan_left_there, plan_task
from worktree_swarm.core import paths
from worktree_swarm.core.errors import BadInputError, ExitCode, ManagerLockedError
from worktree_swarm.core.models import RunStatus
from worktree_swarm.core.paths import real_path, store_path
from worktree_swarm.core.run_settings import Executor
from worktree_swarm.git import branches as git_branches
from worktree_swarm.git import committed_secrets, worktrees
from worktree_swarm.git import repo as git
from worktree_swarm.git.remotes import strip_userinfo
from worktree_swarm.guard import snapshot
from worktree_swarm.infra import lock, proc_scan
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import EventRow, TaskRow, task_from_json
from worktree_swarm.report import run_info

CLEANED_EVENT = "cleaned"


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """A plan, and after ``--yes`` what became of it."""

    mode: str
    findings: tuple[Finding, ...]
    applied: bool = False
    results: tuple[Result, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    # Task branches an earlier clean kept (not merged) and named: still there, not found again.
    kept_before: tuple[str, ...] = ()

    @property
    def left(self) -> list[Finding]:
        """Problems still there: all of them on a dry run, the unfixed ones after ``--yes``."""
        if not self.applied:
            return [f for f in self.findings if f.problem]
        return [r.finding for r in self.results if r.finding.problem and not r.fixed]

    @property
    def exit_code(self) -> ExitCode:
        """0 when nothing is left to clean, 1 when something was found and left."""
        return ExitCode.TASK_FAILED if self.left else ExitCode.OK

    def to_json(self) -> dict[str, object]:
        """The ``--json`` document (documented in docs/clean.md)."""
        by_finding = {id(r.finding): r for r in self.results}
        items = []
        for finding in self.findings:
            item = finding.to_json()
            result = by_finding.get(id(finding))
            item["fixed"] = None if result is None else result.fixed
            item["result"] = None if result is None else result.detail
            item["checkpoint"] = None if result is None else result.checkpoint
            items.append(item)
        return {
            "mode": self.mode,
            "applied": self.applied,
            "findings": items,
            "left": len(self.left),
            "notes": list(self.notes),
            "kept_before": list(self.kept_before),
        }


def needed_by_pending(rows: Iterable[TaskRow]) -> dict[str, str]:
    """Tasks of a run (its *rows*) whose branch an unfinished task starts from: {dep: task}."""
    needed: dict[str, str] = {}
    for row in rows:
        if not row.state.is_final:
            for dep in task_from_json(row.spec_json).depends_on:
                needed.setdefault(dep, row.task_id)
    return needed


# -- swarm clean ----------------------------------------------------------------------------


def clean(
    repo: git.Repo,
    *,
    run_id: str | None = None,
    all_runs: bool = False,
    keep_branches: bool = False,
    force: bool = False,
    yes: bool = False,
    grace: float = 5.0,
) -> Report:
    """Plan (and with *yes* carry out) the cleanup of finished tasks of one run or all runs."""
    if run_id is not None and all_runs:
        raise BadInputError("--run and --all exclude each other; give one of them")
    if not store_path(repo).exists():
        lock.refuse_while_state_is_gone(repo.state_dir, store_path(repo))
        if run_id is not None:
            raise BadInputError(f"unknown run {run_id!r}: no swarm runs in {repo.root} yet")
        return Report(mode="clean", findings=(), notes=("no swarm runs here yet",))
    with contextlib.ExitStack() as stack:
        # A dry run only looks: it works on a full disk too (the store as last written).
        store = stack.enter_context(
            Store(store_path(repo)) if yes else Store.to_read(store_path(repo))
        )
        if all_runs:
            run_ids = [run.run_id for run in store.runs()]
        else:  # an unknown run refused before the merge lock: it leaves no lock file
            run_ids = [run_info.resolve_run(store, run_id)]
        # A `swarm merge` works in the integration worktree: not removed under it, and no
        # merge starts while this removes it.
        free = stack.enter_context(
            lock.merge_lock_if_free(repo.state_dir)
            if yes
            else contextlib.nullcontext(not lock.merge_running(repo.state_dir))
        )
        if yes and free:  # a killed merge's checks would keep its worktree: "in use"
            for rid in run_ids:
                proc_scan.kill_merge_programs(paths.run_dir(repo, rid) / "merge", grace=0.5)
                # And its guard's baselines: a store of what its captures hashed (yours too).
                snapshot.drop_baselines(paths.merge_guard_dir(repo, rid))
        # Carried out at once, the plan leaves each worktree's status to its removal, which
        # asks git right before it deletes anything (a status fewer per worktree).
        findings, kept_before = plan_clean(
            repo,
            store,
            run_ids,
            keep_branches=keep_branches,
            force=force,
            look=not yes,
            merging=not free,
        )
        # A killed `swarm merge` or `swarm clean` left its note of the refs it was moving, a
        # killed git (or an agent) a lock file that would stop the branches' deletion below.
        findings = [*stale_git_locks(repo), *findings, *ref_move_notes(repo)]
        if not yes:
            return Report(mode="clean", findings=tuple(findings), kept_before=kept_before)
        _look_at_unended(repo, store, run_ids)
        _record_landed(repo, store, findings)
        results = apply(repo, findings, store=store, force=force, grace=grace)
        _record_cleaned(store, results)
        _forget_sign_ins(repo, store, run_ids)
        _drop_guard_baselines(repo, store, run_ids)
    _remove_empty_root(repo)
    return Report(
        mode="clean",
        findings=tuple(findings),
        applied=True,
        results=tuple(results),
        kept_before=kept_before,
    )


def _listed(value: object) -> list[object]:
    """*value* if it is a list (as an event's data holds it), else nothing."""
    return value if isinstance(value, list) else []


def _look_at_unended(repo: git.Repo, store: Store, run_ids: list[str]) -> None:
    """Record the secrets in commits the agents of unfinished tasks made themselves, unlooked.

    Those of a run whose manager died (none is alive): its tasks stay for `swarm resume` or
    `swarm stop`, which look with their own shell's environment; this shell's may be the one
    that has the value (:func:`committed_secrets.record_unlooked`). Each task's branch, as
    `swarm merge` and `swarm pr` take it. No git runs unless such a task has a branch.
    """
    if lock.manager_alive(repo.state_dir):
        return  # a live manager looks when each attempt ends
    rows = [row for rid in run_ids for row in store.tasks(rid) if not row.state.is_final]
    rows = [row for row in rows if row.base_commit]  # a branch made: commits to look at
    tips = git_branches.branch_tips(repo) if rows else {}
    for row in rows:
        task = task_from_json(row.spec_json)
        head = tips.get(row.branch)
        committed_secrets.record_unlooked(repo, store, row, task, head, env=os.environ)


def _forget_sign_ins(repo: git.Repo, store: Store, run_ids: list[str]) -> None:
    """Delete the copies of your Claude sign-in that finished tasks' agents left (killed ones).

    A manager takes each out when its agent ends; one killed first left it in the repository.
    """
    for run_id in run_ids:
        for task in store.tasks(run_id):
            if task.state.is_final:
                claude_auth.forget(paths.run_dir(repo, run_id) / task.task_id / "agent-config")


def _drop_guard_baselines(repo: git.Repo, store: Store, run_ids: list[str]) -> None:
    """Drop the guard baselines that runs not running still have (an older swarm kept them).

    A run drops its own after its last scan. Dropped under the manager lock, taken only while
    free: a `swarm resume` starting meanwhile would have its new guard's copies deleted under
    it. While a manager holds it they are left for the next clean.
    """
    if lock.held(repo.state_dir / "manager.lock"):
        return
    with lock.ManagerLock(repo.state_dir) as manager:
        try:
            manager.acquire(guarded=False)
        except ManagerLockedError:
            return
        for rid in run_ids:
            run = store.get_run(rid)
            if run is not None and run.status is not RunStatus.RUNNING:
                snapshot.drop_baselines(paths.guard_dir(repo, rid))


def plan_clean(
    repo: git.Repo,
    store: Store,
    run_ids: list[str],
    *,
    keep_branches: bool,
    force: bool,
    look: bool = True,
    merging: bool = False,
) -> tuple[list[Finding], tuple[str, ...]]:
    """Findings for every finished task of *run_ids* that still has a worktree or branch.

    And the task branches an earlier clean kept unmerged and named, found the same again.

    Without *look*, a worktree's status is taken only where it decides something (whether a
    merged branch can go): the plan is to be carried out at once, and each removal asks
    git again before it deletes anything. *merging*: a `swarm merge` runs, so integration
    worktrees and branches are kept.
    """
    registered = {real_path(w.path): w for w in worktrees.list_worktrees(repo)}
    seen = Seen(
        tips=git_branches.branch_tips(repo),
        merged=Merged(repo),
        cwds=proc_scan.working_directories(),
        owners=store.owners(),
    )
    landing = merge_targets(repo)  # the same for every run but for the run's own base
    runs = []
    pushed: dict[str, Pushed] = {}  # run id -> where it pushed its branches (executor `ray`)
    own: dict[str, Path] = {}  # run id -> where its integration worktree is, swarm's own
    for run_id in run_ids:
        run = store.get_run(run_id)
        targets = with_base(landing, run.base_commit if run is not None else None)
        runs.append((run_id, targets, store.tasks(run_id)))
        root = run.settings.worktree_root if run is not None else None
        own[run_id] = paths.integration_worktree(
            root or paths.default_worktree_root(repo.root), run_id
        )
        if run is not None and run.settings.executor is Executor.RAY:
            pushed[run_id] = Pushed(repo=repo, remote=run.settings.remote)
    seen.statuses.update(
        worktree_statuses(
            repo, to_look_at(runs, registered, seen, keep_branches=keep_branches, look=look)
        )
    )
    findings: list[Finding] = []
    kept_before: list[str] = []
    for run_id, run_targets, tasks in runs:
        targets = run_targets
        events = store.events(run_id, kind=CLEANED_EVENT)
        # What an earlier clean kept and named: (task, target).
        named = {(e.task_id, str(target)) for e in events for target in _listed(e.data.get("kept"))}
        left_there = _left_on_remote(events)
        needed = needed_by_pending(tasks)
        if merging and integration_branch(run_id) in seen.tips:
            findings.append(merging_finding(run_id))
        elif all(task.state.is_final for task in tasks):
            found = plan_integration(
                repo,
                run_id,
                registered,
                seen,
                own=own[run_id],
                targets=targets,
                keep_branches=keep_branches,
                force=force,
                look=look,
                unchecked=cut_off(tasks, integration_branch(run_id)),
                stranded=stranded_tasks(repo, tasks, integration_branch(run_id), seen.tips),
            )
            findings += found
            if any(f.action is Action.DELETE_BRANCH for f in found):
                # Merged into an integration branch that goes too is merged nowhere.
                gone = f"refs/heads/{integration_branch(run_id)}"
                targets = tuple(t for t in targets if t != gone)
        for task in tasks:
            if task.state.is_final:
                findings += plan_task(
                    repo,
                    task,
                    registered,
                    seen,
                    targets=targets,
                    named_before=(task.task_id, task.branch) in named,
                    needed_by=needed.get(task.task_id),
                    keep_branches=keep_branches,
                    force=force,
                    look=look,
                    pushed=pushed.get(run_id),
                    kept_before=kept_before,
                    merging=merging,
                )
                left = left_there.get(task.task_id)
                if left is not None and not keep_branches and run_id in pushed:
                    findings += plan_left_there(task, seen, left, pushed[run_id])
    return findings, tuple(kept_before)


def _left_on_remote(events: list[EventRow]) -> dict[str, str]:
    """{task: tip} of the task branches an earlier clean deleted here but left on the remote.

    A later clean that deleted one there (or found it gone) is the last word.
    """
    left: dict[str, str] = {}
    for event in events:
        there = event.data.get("remote_branch")
        if event.task_id is None or not isinstance(there, dict):
            continue
        if there.get("deleted") or not isinstance(there.get("tip"), str):
            left.pop(event.task_id, None)
        else:
            left[event.task_id] = str(there["tip"])
    return left


def _record_landed(repo: git.Repo, store: Store, findings: Sequence[Finding]) -> None:
    """Tasks merged into an integration branch deleted for being landed: merged where it landed.

    Recorded before the branch goes (a clean killed in between leaves them merged into a
    branch that holds their merges all the same). Left merged into a branch that is gone,
    `swarm status` showed every such merge undone and `swarm merge` asked for the task
    branches back to merge them again.
    """
    for f in findings:
        if f.action is not Action.DELETE_BRANCH or f.run_id is None or not f.merged_into:
            continue
        branch = integration_branch(f.run_id)
        if f.branch != branch:
            continue
        landed = merged_into(repo, branch, [t for t in f.merged_into if t.startswith("refs/")])
        if landed is None:
            continue
        for task in store.tasks(f.run_id):
            if task.merge_result == "merged" and task.merge_target == branch:
                store.update_task(f.run_id, task.task_id, merge_target=landed)


def _record_cleaned(store: Store, results: list[Result]) -> None:
    """Keep the history, note what was removed: one ``cleaned`` event per task touched."""
    per_task: dict[tuple[str, str], dict[str, object]] = {}
    for result in results:
        finding = result.finding
        if finding.run_id is None or finding.task_id is None:
            continue
        data = per_task.setdefault(
            (finding.run_id, finding.task_id),
            {"worktree_removed": False, "branch_deleted": False, "checkpoint": None, "kept": []},
        )
        if finding.action is Action.DELETE_REMOTE_BRANCH and result.detail != LOCAL_KEPT:
            # Deleted here but left there (unreachable, say): the next clean tries again.
            data["remote_branch"] = {
                "remote": finding.remote and strip_userinfo(finding.remote),
                "tip": finding.remote_tip,
                "deleted": result.fixed,
            }
        if result.fixed and finding.action in {Action.REMOVE_WORKTREE, Action.PRUNE}:
            data["worktree_removed"] = True
        if result.fixed and finding.action is Action.DELETE_BRANCH:
            data["branch_deleted"] = True
        if result.checkpoint:
            data["checkpoint"] = result.checkpoint
        if not result.fixed:
            kept = data["kept"]
            if isinstance(kept, list):
                kept.append(finding.target)
    for (run_id, task_id), data in per_task.items():
        store.add_event(run_id, CLEANED_EVENT, task_id=task_id, data=data)


def _remove_empty_root(repo: git.Repo) -> None:
    with contextlib.suppress(OSError):
        paths.default_worktree_root(repo.root).rmdir()
