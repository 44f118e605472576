"""Which task branches a `swarm merge` takes, and in what order.

A task is skipped with the reason why (no branch, nothing to merge, a leaked credential, a
dependency left out), and the ones taken go dependencies first, then the least conflicting.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from worktree_swarm.core.errors import BadInputError
from worktree_swarm.core.models import TaskState
from worktree_swarm.core.task import merge_again
from worktree_swarm.git import branches as git_branches
from worktree_swarm.git import committed_secrets, leaks, local_files
from worktree_swarm.git import repo as git
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import TaskRow, task_from_json
from worktree_swarm.merge import conflicts
from worktree_swarm.merge.diff import (
    BranchTips,
    branch_tip,
    named_rows,
    task_base,
    task_branch,
    work_tip,
)
from worktree_swarm.merge.merge_report import MergeOutcome, TaskResult
from worktree_swarm.merge.session import CHECKING, Candidate


def select_candidates(
    repo: git.Repo,
    store: Store,
    run_id: str,
    task_ids: Sequence[str],
    *,
    target: str,
    standing: Mapping[str, str],
    start: str | None = None,
) -> tuple[list[Candidate], list[TaskResult]]:
    """The branches to merge, and the named tasks skipped (no branch, nothing to merge).

    Without *task_ids*: every ``done`` task not yet tried against *target* (its merge result
    there is *standing*, see :func:`standing_results`). Named tasks may be in any final state
    and are always tried, unless one depends on a task that is neither named nor in *target*
    (whose start is *start*): its branch carries that task's work, unchecked and unrecorded.
    BadInputError when there is something to merge and *start* lacks the run's base commit.
    """
    rows = named_rows(store, run_id, task_ids) if task_ids else store.tasks(run_id)
    candidates: list[Candidate] = []
    skipped: list[TaskResult] = []
    taken = store.taken_over(run_id)
    tips = BranchTips(repo)
    run = store.get_run(run_id)
    run_base = run.base_commit if run is not None else None
    landed = _landed_without_branch(repo, rows, start, taken=taken, tips=tips)
    for row in rows:
        if task_ids and row.state.is_active:
            raise BadInputError(
                f"task {row.task_id!r} is {row.state.value}; wait for it to finish"
                " (`swarm status`) before merging it"
            )
        if not task_ids and (row.state is not TaskState.DONE or row.task_id in standing):
            continue
        later = taken.get(row.task_id)
        tip = None if later else tips(task_branch(row)) or landed.get(row.task_id)
        if tip is not None and not row.made:  # what its creation found there: not its work
            why = f"it never made its branch ({row.state.value}): {row.branch} is not its work"
            skipped.append(
                TaskResult(task_id=row.task_id, outcome=MergeOutcome.SKIPPED, reason=why)
            )
            continue
        base = task_base(store, row)
        why = _skip_reason(
            repo, store, row, target=target, later=later, tip=tip, base=base, run_base=run_base
        )
        if why or tip is None or base is None:
            skipped.append(
                TaskResult(task_id=row.task_id, outcome=MergeOutcome.SKIPPED, reason=why)
            )
            continue
        candidates.append(
            Candidate(row=row, task=task_from_json(row.spec_json), tip=tip, base=base)
        )
    every = store.tasks(run_id)
    cut_off = {r.task_id for r in every if _cut_off_elsewhere(repo, r, target)}
    absent = _deps_not_there(every, candidates, standing, start, taken=taken, tips=tips)
    absent = {dep: own for dep, own in absent.items() if dep not in cut_off}  # said so below
    kept, held = _without_unmerged_deps(
        candidates, target, standing, cut_off=cut_off, absent=absent
    )
    if kept and run_base and start and not git_branches.contained(repo, start, [run_base]):
        raise BadInputError(_without_base(repo, target, start, run_base))
    return kept, skipped + held


def _without_base(repo: git.Repo, target: str, start: str, base: str) -> str:
    """Why *target* (at *start*, which lacks the run's *base*) takes none of its tasks."""
    new = branch_tip(repo, target) is None  # the integration branch, to start at your HEAD
    where = f"{target} would start at {start[:12]}, which" if new else f"{target} ({start[:12]})"
    then = (
        "run `swarm merge` in a checkout of a branch that contains it"
        if new
        else f"merge {base[:12]} into {target} first"
    )
    return (
        f"{where} does not contain the run's base commit {base[:12]}, where its tasks started:"
        " their branches would bring it (and the commits before it) along, unchecked;"
        f" {then}, or merge into a branch that contains it (`--into BRANCH`)"
    )


def _landed_without_branch(
    repo: git.Repo,
    rows: Sequence[TaskRow],
    start: str | None,
    *,
    taken: Mapping[str, str],
    tips: BranchTips,
) -> dict[str, str]:
    """Task id -> its last recorded tip, for tasks whose branch is gone but *start* holds it.

    Landed by hand and cleaned since: merged as "already in target" (its checks run there),
    not skipped as gone.
    """
    gone = {
        r.task_id: r.tip_commit
        for r in rows
        if r.tip_commit and r.task_id not in taken and tips(task_branch(r)) is None
    }
    if start is None or not gone:
        return {}
    there = git_branches.contained(repo, start, sorted(set(gone.values())))
    return {t: tip for t, tip in gone.items() if tip in there}


def _deps_not_there(
    tasks: Sequence[TaskRow],
    candidates: Sequence[Candidate],
    standing: Mapping[str, str],
    start: str | None,
    *,
    taken: Mapping[str, str],
    tips: BranchTips,
) -> dict[str, bool]:
    """The dependencies of *candidates* neither among them, merged, nor held by *start*.

    Each with whether it has a branch of its own to merge (not gone, not a later run's).
    Its work is :func:`work_tip`: a dependency landed and cleaned is in *start* by its last
    recorded tip.
    """
    names = {d for c in candidates for d in c.task.depends_on}
    names -= {c.task_id for c in candidates}
    names -= set(standing)  # merged, or left out there (judged by what it did there)
    if not names:
        return {}
    repo = tips.repo
    rows = {r.task_id: r for r in tasks if r.task_id in names}
    work = {t: work_tip(repo, r, taken=taken, tips=tips) for t, r in rows.items()}
    own = {t: t not in taken and tips(task_branch(r)) is not None for t, r in rows.items()}
    there = (
        git_branches.contained(repo, start, sorted({tip for tip in work.values() if tip}))
        if start is not None
        else set()
    )
    return {name: own.get(name, False) for name in names if work.get(name) not in there}


def _restore_from(repo: git.Repo, row: TaskRow) -> str:
    """How to bring back the branch of a task merged once (`swarm clean` deleted it then).

    Its work is its merge commit's second parent, while that commit is kept (the reflog of
    the branch it was merged into): none after a squash, whose commit has one parent.
    """
    if row.merge_result != MergeOutcome.MERGED or not row.merge_commit:
        return ""
    work = git.rev_parse(repo, f"{row.merge_commit}^2^{{commit}}")
    if work is None:
        return ""
    return (
        f" (deleted once merged into {row.merge_target}); bring it back with"
        f" `git branch {row.branch} {work[:12]}`, then merge it again"
    )


def _skip_reason(
    repo: git.Repo,
    store: Store,
    row: TaskRow,
    *,
    target: str,
    later: str | None,
    tip: str | None,
    base: str | None,
    run_base: str | None,
) -> str:
    """Why the task cannot be merged into *target* ('' when it can)."""
    if later:
        return f"branch {row.branch} is run {later}'s now (it reused the task id)"
    if _cut_off_elsewhere(repo, row, target):
        return (
            f"its merge into {row.merge_target} was cut off in its checks; run "
            f"`{merge_again(row.merge_target, row.task_id)}` first (that merge is undone and "
            "checked again)"
        )
    if tip is None and row.base_commit is None:
        return f"it never ran ({row.state.value}): no branch {row.branch}"
    if tip is None:
        return f"branch {row.branch} is gone{_restore_from(repo, row)}"
    if base is None or base == tip:
        return "no commits on its branch"
    if leak := _leak(repo, store, row, run_base or base, tip):
        return f"not merging {row.branch}: {leak}; remove it from the branch's history"
    return ""


def _cut_off_elsewhere(repo: git.Repo, row: TaskRow, target: str) -> bool:
    """Whether *row*'s merge into another branch than *target* was cut off in its checks.

    The task's one merge record holds that intent: recorded over by a merge into *target*,
    the unchecked merge would be taken for landed there. Not when that branch lacks the
    merge: an ``--into`` merge moves its branch only at its end (killed before, it left
    nothing there), and one you reset away is gone too; nothing is left to undo.
    """
    if row.merge_result != CHECKING or not row.merge_target or row.merge_target == target:
        return False
    tip = branch_tip(repo, row.merge_target)
    if tip is None:
        return False
    # No commit recorded: killed right after committing, in swarm's integration worktree.
    return not row.merge_commit or bool(git_branches.contained(repo, tip, [row.merge_commit]))


def _leak(repo: git.Repo, store: Store, row: TaskRow, base: str, tip: str) -> leaks.Leak | None:
    """A credential the commits from *base* to *tip* would bring (as `swarm pr` refuses).

    *base* is the run's base, as for `swarm pr`: a task built on its dependency's work brings
    the dependency's commits too, and would land a leak that keeps the dependency out.
    Not a tracked file that matches a ``copy`` pattern: the run commits changes to those.
    Also a commit the run's manager recorded holding a secret of its environment, which
    this shell may not have (:mod:`committed_secrets`).
    """
    secrets = local_files.copied_secrets(repo.root, task_from_json(row.spec_json).copy)
    found = leaks.find_leak(repo, base=base, tip=tip, copy_globs=(), local_secrets=secrets)
    return found or committed_secrets.recorded_leak(repo, store, row.run_id, base=base, tip=tip)


def standing_results(
    repo: git.Repo, store: Store, run_id: str, target: str, *, start: str | None = None
) -> dict[str, str]:
    """Task id -> its recorded merge result into *target*, for the results that still hold.

    None holds once *target* is gone (deleted by hand: the next merge starts it again), and a
    merge whose commit *target* no longer contains (reset by hand) did not land after all.
    The intent of a merge killed in its checks is not a result: it is undone and merged again.
    A task merged into another branch, its own branch gone since, whose merge *start* (where
    *target* starts, or is) holds counts as merged here: `swarm clean` deletes an integration
    branch once landed, and the task branches merged into it, and records the tasks merged
    into the branch it landed on. (With its branch there, it is tried: `already in target`.)
    """
    tip = branch_tip(repo, target)
    rows = [r for r in store.tasks(run_id) if r.merge_result not in {None, CHECKING}]
    mine = [r for r in rows if r.merge_target == target and tip is not None]
    tips = BranchTips(repo)
    elsewhere = [
        r
        for r in rows
        if r.merge_target != target
        and r.merge_result == MergeOutcome.MERGED
        and r.merge_commit
        and tips(task_branch(r)) is None
    ]
    commits = {r.merge_commit for r in mine if r.merge_result == MergeOutcome.MERGED}
    there = git_branches.contained(repo, tip, sorted(c for c in commits if c)) if tip else set()
    standing = {
        r.task_id: r.merge_result
        for r in mine
        if r.merge_result
        and (r.merge_result != MergeOutcome.MERGED or not r.merge_commit or r.merge_commit in there)
    }
    if start is not None and elsewhere:
        held = git_branches.contained(
            repo, start, sorted({r.merge_commit for r in elsewhere if r.merge_commit})
        )
        standing.update(
            {r.task_id: MergeOutcome.MERGED for r in elsewhere if r.merge_commit in held}
        )
    return standing


def _without_unmerged_deps(
    candidates: list[Candidate],
    target: str,
    standing: Mapping[str, str],
    *,
    cut_off: Collection[str],
    absent: Mapping[str, bool] | None = None,
) -> tuple[list[Candidate], list[TaskResult]]:
    """Drop the candidates built on a task an earlier merge into *target* left out.

    A branch built on its dependency's work carries it: merged, it would land the dependency
    that conflicted or failed its checks there, or (*cut_off*) is skipped because its merge
    into another branch waits to be undone, or (*absent*) was not named with it and is not
    in *target* (each with whether it has a branch of its own to name). The dependency merged
    again by this merge (named, or retried) is judged when it is tried.
    """
    absent = absent or {}
    left_out = {MergeOutcome.CONFLICTED, MergeOutcome.FAILED}
    out = {t for t, result in standing.items() if result in left_out}
    out -= {c.task_id for c in candidates}
    out.update(cut_off)
    kept = list(candidates)
    held: list[TaskResult] = []
    for named in list(kept):
        if wanted := sorted(d for d in named.task.depends_on if d in absent):
            reason = f"depends on {', '.join(wanted)}, not in {target}: its branch would bring "
            if all(absent[d] for d in wanted):
                reason += (
                    f"that work along; name it too (`swarm merge {' '.join(wanted)} "
                    f"{named.task_id}`)"
                )
            else:  # a dependency's branch is gone or another run's: naming it merges nothing
                reason += (
                    "that work along unchecked, and it has no branch of its own to merge (gone,"
                    " or a later run's): land that work in the target first, or merge"
                    f" {named.task_id}'s branch by hand"
                )
            held.append(
                TaskResult(task_id=named.task_id, outcome=MergeOutcome.SKIPPED, reason=reason)
            )
            kept.remove(named)
            out.add(named.task_id)
    while True:
        c = next((c for c in kept if any(d in out for d in c.task.depends_on)), None)
        if c is None:
            return kept, held
        missing = ", ".join(sorted(d for d in c.task.depends_on if d in out))
        reason = f"depends on {missing}, which did not merge into {target}"
        held.append(TaskResult(task_id=c.task_id, outcome=MergeOutcome.SKIPPED, reason=reason))
        kept.remove(c)
        out.add(c.task_id)


def merge_order(
    candidates: Sequence[Candidate], prediction: conflicts.Prediction
) -> list[Candidate]:
    """Dependencies first, then what conflicts with nothing, then the least conflicting.

    Ties go to the smaller branch. Least-conflicting-first is the greedy heuristic for a maximum
    independent set of the conflict graph: it lands the most branches.
    """
    ids = {c.task_id for c in candidates}
    deps = {c.task_id: {d for d in c.task.depends_on if d in ids} for c in candidates}

    def key(c: Candidate) -> tuple[bool, int, int, int]:
        changes = prediction.changes.get(c.task_id)
        return (
            c.task_id in prediction.target,
            len(prediction.conflicts_of(c.task_id)),
            changes.lines if changes else 0,
            c.row.position,
        )

    placed: list[Candidate] = []
    done: set[str] = set()
    remaining = list(candidates)
    while remaining:
        ready = [c for c in remaining if deps[c.task_id] <= done] or remaining
        pick = min(ready, key=key)
        placed.append(pick)
        done.add(pick.task_id)
        remaining.remove(pick)
    return placed
