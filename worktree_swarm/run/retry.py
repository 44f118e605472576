"""`swarm retry`: run a run's failed, stopped or timed-out tasks again, in their kept worktrees.

A retried task goes back to ``pending`` in the same run and continues on its branch from its
last checkpoint (the agent's session is resumed where it has one). ``fresh`` starts it over
from its base instead: its worktree and branch are made again, the old tip is named in the
``retry`` event. The run itself is then carried on like `swarm resume` does.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from worktree_swarm.core.errors import BadInputError, SwarmError, unknown_task
from worktree_swarm.core.models import MERGE_CHECKING, RunStatus, TaskState
from worktree_swarm.core.paths import guard_dir
from worktree_swarm.core.run_settings import DEFAULT_COMMIT_AUTHOR, DEFAULT_MAX_FILE
from worktree_swarm.git import checkpoints, gitfiles, removal, tampering, worktrees
from worktree_swarm.git import repo as git
from worktree_swarm.guard.model import blamed, suspect_reason
from worktree_swarm.guard.recovery import cut_verdicts, finish_put_backs, unsettled
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import TaskRow, task_from_json
from worktree_swarm.report.run_info import know_secrets_of
from worktree_swarm.run import task_checkpoint

RETRYABLE = frozenset({TaskState.FAILED, TaskState.STOPPED, TaskState.TIMED_OUT, TaskState.BLOCKED})
# Named explicitly, these may run again too; done/merged work is never redone by retry.
_NAMED_ALSO = frozenset({TaskState.NO_CHANGES})
RETRY_EVENT = "retry"
OUTSIDE_WRITE = "outside_write"  # the event a guard verdict is recorded as


def check_known(store: Store, run_id: str, task_ids: Sequence[str]) -> None:
    """BadInputError for the first of *task_ids* that is no task of *run_id*."""
    known = {row.task_id for row in store.tasks(run_id)}
    for task_id in task_ids:
        if task_id not in known:
            raise unknown_task(task_id, run_id)


def prepare(
    repo: git.Repo, store: Store, run_id: str, task_ids: Sequence[str], *, fresh: bool
) -> list[str]:
    """Put the tasks to retry back to pending and reopen the run; returns their ids.

    With no *task_ids*: every failed, stopped, timed-out or blocked task, but those whose id a
    later run reused (their branch and worktree are that run's now). Raises BadInputError
    (before changing anything) for an unknown id, a task that cannot be retried, or when
    there is nothing to retry. What the killed manager's guard was at is settled first: a task
    it caught fails for it now, not once its new attempt ran.
    """
    check_known(store, run_id, task_ids)
    settle_guard(repo, store, run_id)
    rows = {row.task_id: row for row in store.tasks(run_id)}
    picked = _checked(repo, store, run_id, task_ids, rows, fresh=fresh)  # before any is reset
    for task_id in picked:
        _reset(repo, store, rows[task_id], fresh=fresh)
    store.reopen_run(run_id)
    return picked


def check_retryable(
    repo: git.Repo, store: Store, run_id: str, task_ids: Sequence[str], *, fresh: bool
) -> None:
    """:func:`prepare`'s refusal of a task that cannot be retried now, or of nothing to retry.

    Decided ahead (before the merge lock, whose file a refused retry would leave behind)
    only while the killed manager's guard left nothing to settle: a verdict it reached fails
    a task once settled, which may make it retryable.
    """
    if not unsettled(guard_dir(repo, run_id)):
        rows = {r.task_id: r for r in store.tasks(run_id)}
        _checked(repo, store, run_id, task_ids, rows, fresh=fresh)


def _checked(
    repo: git.Repo,
    store: Store,
    run_id: str,
    task_ids: Sequence[str],
    rows: dict[str, TaskRow],
    *,
    fresh: bool,
) -> list[str]:
    """The tasks to retry; BadInputError for one that cannot be, or with a path in its way."""
    picked = _retryable(repo, store, run_id, task_ids, rows)
    _check_in_the_way([rows[task_id] for task_id in picked])
    listed = worktrees.list_worktrees(repo)
    _check_not_checked_out(listed, [rows[task_id] for task_id in picked])
    if fresh:
        _check_not_locked(listed, [rows[task_id] for task_id in picked])
        _check_swarms_own(repo, [rows[task_id] for task_id in picked])
    return picked


def _retryable(
    repo: git.Repo, store: Store, run_id: str, task_ids: Sequence[str], rows: dict[str, TaskRow]
) -> list[str]:
    """The tasks to retry; BadInputError for a named one that cannot be, or for none."""
    taken = store.taken_over(run_id)
    for task_id in task_ids:
        _check_named(repo, rows[task_id], taken, run_id)
    picked = (
        _with_blocked_dependents(rows, task_ids, taken)
        if task_ids
        else [t for t, row in rows.items() if row.state in RETRYABLE and t not in taken]
    )
    if not picked and all(row.state.is_final for row in rows.values()):
        if reused := [t for t, row in rows.items() if row.state in RETRYABLE and t in taken]:
            raise BadInputError(
                f"nothing to retry in run {run_id}: later runs reused the ids of "
                + ", ".join(f"{t} (run {taken[t]})" for t in reused)
                + " and own their branches and worktrees now"
            )
        run = store.get_run(run_id)
        # A manager killed once its last task was final, before it ended the run.
        left = run is not None and run.status is RunStatus.RUNNING
        raise BadInputError(
            f"nothing to retry in run {run_id}: no task failed, stopped, timed out or was blocked"
            + (
                "; its manager stopped before it ended the run: `swarm resume` ends it"
                if left
                else ""
            )
        )
    return picked


def _check_named(repo: git.Repo, row: TaskRow, taken: dict[str, str], run_id: str) -> None:
    """Refuse to retry the task of *row*, named by the user, if it cannot be retried."""
    if row.task_id in taken:
        raise BadInputError(taken_message(row, taken[row.task_id]))
    if row.state not in RETRYABLE | _NAMED_ALSO:
        what = f"{row.state.value}; its work is on {row.branch}"
        if git.rev_parse(repo, f"refs/heads/{row.branch}") is None:
            what = f"{row.state.value}; its branch {row.branch} was deleted since"
        if not row.state.is_final:
            what = "still in progress; `swarm resume` carries it on"
        elif row.merge_result == "conflicted":  # what is left to do is the merge's
            what += (
                f"; its merge conflicted: `swarm merge {row.task_id} --resolve` has its agent"
                " resolve it"
            )
        raise BadInputError(f"task {row.task_id} of run {run_id} is {what}")


def _check_in_the_way(rows: Sequence[TaskRow]) -> None:
    """Refuse a directory at a worktree path of *rows* that is not a worktree (nor empty).

    What a creation that failed may leave (part of a checkout, no ``.git``): neither git
    nor swarm may remove it as a worktree, and a new one cannot be made there.
    """
    for row in rows:
        path = Path(row.worktree)
        if path.is_dir() and not os.path.lexists(path / ".git") and any(path.iterdir()):
            # Only what a creation of swarm's left is swarm's to remove.
            doctor = " (or let `swarm doctor --yes` remove it)" if row.made else ""
            raise BadInputError(
                f"{path} is in the way of task {row.task_id}'s worktree and is not one; move it "
                f"aside{doctor}, then retry"
            )


def _check_not_checked_out(
    listed: Sequence[worktrees.WorktreeInfo], rows: Sequence[TaskRow]
) -> None:
    """Refuse a task whose branch is checked out elsewhere (your checkout, to fix it by hand).

    git would refuse its worktree (`already checked out`) or, with ``--fresh``, the branch's
    deletion, and the task failed on git's own words.
    """
    held = {w.branch: w.path for w in listed if w.branch}
    for row in rows:
        at = held.get(row.branch)
        if at is not None and os.path.realpath(at) != os.path.realpath(row.worktree):
            raise BadInputError(
                f"branch {row.branch} of task {row.task_id} is checked out in {at}; switch"
                " that checkout to another branch (`git switch -`), then retry"
            )


def _check_not_locked(listed: Sequence[worktrees.WorktreeInfo], rows: Sequence[TaskRow]) -> None:
    """Refuse to start afresh a task whose worktree you locked (`git worktree lock`).

    ``--fresh`` deletes the worktree: a locked one is kept as `swarm clean` keeps it (its
    drive may be unmounted), and git refused its removal once the retry had begun.
    """
    locked = {os.path.realpath(w.path): w.locked for w in listed if w.locked is not None}
    for row in rows:
        reason = locked.get(os.path.realpath(row.worktree))
        if reason is not None:
            why = f" ({reason})" if reason else ""
            raise BadInputError(
                f"the worktree {row.worktree} of task {row.task_id} is locked{why}; --fresh"
                f" deletes it: unlock it (`git worktree unlock {row.worktree}`), then retry"
            )


def _check_swarms_own(repo: git.Repo, rows: Sequence[TaskRow]) -> None:
    """Refuse to start afresh a task whose worktree is no longer the one swarm made.

    Its agent pointed its ``.git`` elsewhere (your git dir) or replaced it with a symlink: the
    commit that keeps its work before the worktree is deleted would land there.
    """
    for row in rows:
        changed = tampering.tampered(repo, Path(row.worktree))
        if changed is not None:
            raise BadInputError(
                f"{changed}; --fresh deletes the worktree of task {row.task_id}, and swarm runs"
                " no git there to keep its work: move it aside, then retry"
            )


def _with_blocked_dependents(
    rows: dict[str, TaskRow], task_ids: Sequence[str], taken: dict[str, str]
) -> list[str]:
    """*task_ids* and the blocked tasks waiting on them (directly or not), in run order.

    A task blocked by a dependency that runs again waits for it again: were it left blocked,
    it would keep a reason that no longer holds once the dependency is done.
    """
    needs = {t: set(task_from_json(row.spec_json).depends_on) for t, row in rows.items()}
    picked = set(task_ids)
    grew = True
    while grew:
        more = {
            t
            for t, row in rows.items()
            if row.state is TaskState.BLOCKED and t not in taken and needs[t] & picked
        } - picked
        picked |= more
        grew = bool(more)
    return list(task_ids) + [t for t in rows if t in picked and t not in task_ids]


def taken_message(row: TaskRow, later: str) -> str:
    """Why a task whose id a later run reused cannot run again in its own run."""
    return (
        f"task {row.task_id} of run {row.run_id} cannot run again: run {later} reused its id "
        f"and owns {row.branch} and its worktree now (`swarm status --run {later}`)"
    )


def in_the_way(store: Store, run_id: str, task_id: str, exc: worktrees.InTheWayError) -> str:
    """Why task *task_id*'s new worktree could not be made (*exc*), and the way on.

    Said by the manager of a run, a `swarm resume` or a `swarm retry`: the task fails, and
    a retry is what makes it again, never a resume of the run (which this may be already).
    A later run that reused the task id owns its branch and path: no retry takes them back.
    """
    later = store.taken_over(run_id).get(task_id)
    row = store.task(run_id, task_id)
    if later is not None and row is not None:
        return taken_message(row, later)
    return f"{exc.what}; {exc.fix}, then run `swarm retry {task_id} --run {run_id}`"


def _reset(repo: git.Repo, store: Store, row: TaskRow, *, fresh: bool) -> None:
    # From the attempts themselves: a manager killed right after a launch may not have
    # counted the last one on the task row.
    last = max((a.number for a in store.attempts(row.run_id, row.task_id)), default=0)
    # A branch or directory its creation found there is not its own: never touched.
    made = last > 0 or row.made
    tip = git.rev_parse(repo, f"refs/heads/{row.branch}") if made else None
    # Its branch deleted since (`swarm clean --force`): nothing to go on from, so from the base.
    # (A dependent blocked before it started never had one: it starts as it would have.)
    # A removal a killed swarm began (a fresh retry's, the disk budget's) is finished first:
    # the files git deleted are no work to commit, and the worktree is made again.
    removal.finish_if_interrupted(repo, Path(row.worktree))
    gone = tip is None and made and not fresh
    fresh = fresh or gone
    data: dict[str, object] = {"fresh": fresh, "after_attempt": last}
    switched = None
    if fresh:
        if not gone and made:
            switched = _keep_uncommitted(repo, store, row)
            tip = git.rev_parse(repo, f"refs/heads/{row.branch}")
        data["previous_tip"] = tip
    elif made:  # the next attempt works in it: on its branch
        switched = _put_back(repo, row)
    if switched is not None:
        data["put_back_from"] = switched
    # First: a retry killed after deleting the branch has the old tip on record.
    store.add_event(row.run_id, RETRY_EVENT, task_id=row.task_id, data=data)
    if fresh and made:
        path = Path(row.worktree)
        if path.exists():
            removal.remove_worktree(repo, path, force=True)
        with contextlib.suppress(BadInputError):
            removal.prune(repo)
        if tip is not None:
            removal.delete_branch(repo, row.branch, force=True)
    store.update_task(
        row.run_id,
        row.task_id,
        state=TaskState.PENDING,
        reason=f"retrying{' from the base' if fresh else ''}"
        + (f" ({row.branch} was deleted)" if gone else "")
        + (f" (its worktree was on {switched}: put back on {row.branch})" if switched else ""),
        ended_at=None,
        stop_requested=False,
        retry_base=last,
        retry_fresh=fresh,
        # A repair or hand-over the agent was asked for goes on with its work, not afresh.
        instruction=None if fresh else row.instruction,
        repairs=0,  # a new go: its `repair` rounds again
    )
    if row.merge_result not in {None, MERGE_CHECKING}:  # a killed merge's intent stays to undo
        # What merged before is not what the branch will hold: the next `swarm merge` takes it.
        store.forget_merge(row.run_id, row.task_id)
    if fresh:
        store.update_task(
            row.run_id, row.task_id, base_commit=None, start_commit=None, tip_commit=None
        )


def _put_back(repo: git.Repo, row: TaskRow) -> str | None:
    """Put the kept worktree of *row* back on its branch if it is off it; where it was.

    Its agent's `git checkout main` stays so when its attempt failed before the guard put it
    back (one that made its worktree unreadable): the next agent would work on that branch,
    and be blamed for the switch after its attempt. Its files and index stay. Not where no
    git of swarm's runs: a worktree gone, unreadable, or whose `.git` points elsewhere.
    """
    path = Path(row.worktree)
    if not os.path.lexists(path / ".git") or tampering.tampered(repo, path) is not None:
        return None
    tampering.unplant(repo, path, row.branch)  # nothing of git's below writes through one
    return gitfiles.put_back_on(path, row.branch)


def _keep_uncommitted(repo: git.Repo, store: Store, row: TaskRow) -> str | None:
    """Commit what the worktree holds beyond its branch onto it, before a fresh start.

    Edits made by hand since the task ended would go with the worktree: committed, the previous
    tip recorded for the retry holds them too. What no commit may hold (a file over the run's
    ``max_file``) stops the retry: the fresh start would delete it. A worktree switched off
    its branch (its agent's `git checkout main` left so: the task failed before its guard put
    it back) is put back on it first; where it was is returned.
    """
    path = Path(row.worktree)
    if not (path / ".git").exists():
        return None
    switched = _put_back(repo, row)  # else committed onto the branch it is on
    gitfiles.repair_checkout(path, agent_ran=row.agent_started)
    run = store.get_run(row.run_id)
    settings = run.settings if run is not None else None
    task = task_from_json(row.spec_json)
    # Its own secrets too (its `env`, its `copy` files'): a file holding one stops the retry.
    know_secrets_of(repo.root, [task])
    # The `copy` files (a `.env`) stay out: the old tip is kept, in the retry event too.
    kept = task_checkpoint.left_out(store, row, task, path)
    # `swarm retry` holds the manager lock: no run's guard watches this branch meanwhile.
    try:
        checkpoints.checkpoint(
            path,
            message=f"swarm: checkpoint {row.task_id} (retry --fresh)"
            + task_checkpoint.trailers(store, row, task),
            author=settings.commit_author if settings else DEFAULT_COMMIT_AUTHOR,
            exclude=kept.exclude,
            droppings=kept.droppings,
            max_file=settings.max_file if settings else DEFAULT_MAX_FILE,
            branch=row.branch,
            onto=task_checkpoint.onto(path, row.branch),
        )
    except checkpoints.LeftOutError as exc:
        raise SwarmError(
            f"not retrying {row.task_id} afresh, which deletes its worktree: its agent {exc}; "
            "move them out of it (or delete them) first"
        ) from exc
    except checkpoints.SwitchedError as exc:  # switched since its put-back: kept as it is
        raise SwarmError(
            f"not retrying {row.task_id} afresh, which deletes its worktree: {exc}; finish "
            f"there, or switch it back to {row.branch} there, then retry"
        ) from exc
    return switched


def since_last_retry(store: Store, run_id: str, final: set[str]) -> tuple[dict[str, str], float]:
    """What a killed manager knew and a resumed one must not forget.

    The guard's verdicts on tasks not final yet (a suspect fails when it ends, whatever its
    agent did after), and what the run has spent since its last `swarm retry` (which starts
    the budget's count again, as it does the retries' and repairs').
    """
    verdicts: dict[str, str] = {}
    since = 0.0
    for event in store.events(run_id):
        if event.kind == RETRY_EVENT and event.task_id is not None:
            verdicts.pop(event.task_id, None)  # a new go, judged anew
            since = event.ts
        elif event.kind == OUTSIDE_WRITE:
            suspects = event.data.get("suspects")
            for task_id in suspects if isinstance(suspects, list) else []:
                if isinstance(task_id, str) and task_id not in final:
                    verdicts[task_id] = suspect_reason(event.data, task_id)
    spent = sum(
        a.cost_usd or 0.0
        for a in store.attempts(run_id)
        if a.ended_at is not None and a.started_at >= since
    )
    return verdicts, spent


def settle_guard(repo: git.Repo, store: Store, run_id: str) -> None:
    """Finish what the guard of *run_id*'s killed manager was at: put-backs, then verdicts.

    Each verdict it reached that the run had not applied is recorded (unless it is on record
    already) and applied as the run would: a final suspect fails with its outside-write
    reason; one not final yet fails once it ends (:func:`since_last_retry` reads the record).
    """
    work = guard_dir(repo, run_id)
    finish_put_backs(repo, work)
    cut = cut_verdicts(repo, work)
    if not cut:
        return
    run = store.get_run(run_id)
    allowed = run is not None and run.settings.allow_outside_writes
    recorded = [event.data for event in store.events(run_id, kind=OUTSIDE_WRITE)]
    for note, violation, handed in cut:
        data = violation.as_dict()
        if not (handed and any(_same(data, seen) for seen in recorded)):
            store.add_event(run_id, OUTSIDE_WRITE, task_id=violation.task, data=data)
        for task_id in () if allowed else violation.suspects:
            row = store.task(run_id, task_id)
            # As the run blames a final suspect: once, whatever it ended as.
            if row is None or not row.state.is_final or blamed(row.reason):
                continue
            reason = violation.reason(task_id)
            # A failure's reason changes: no state withdrawn.
            withdrawn = None if row.state is TaskState.FAILED else row.state
            store.record_state(run_id, task_id, TaskState.FAILED, replaces=withdrawn, reason=reason)
        note.unlink(missing_ok=True)


def _same(data: dict[str, object], seen: dict[str, object]) -> bool:
    """Whether the recorded violation *seen* is *data*, as the guard noted it."""
    return all(data.get(k) == seen.get(k) for k in ("number", "where", "suspects", "summary"))
