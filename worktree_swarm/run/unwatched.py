"""What agents did while no manager watched, for the commands that end such a run without one.

`swarm resume` judges git's own files (config, hooks, info, ...) against the baseline the
killed manager's guard kept. `swarm stop` and `swarm run --force` end the run (or stop its
tasks) instead: they judge the same files the same way (:func:`judge_git_files`), so that a
`core.fsmonitor` or a hook an agent planted meanwhile does not run with your next `git status`.
A program-running setting new in your global config is theirs too (reported, never trusted
by the next run).
And how an agent that ended meanwhile went, read from its shim's record and its log
(:func:`ended_by_itself`, :func:`record_launch`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from worktree_swarm.agents import adapter_for
from worktree_swarm.agents.base import AgentOutcome, AgentResult
from worktree_swarm.core.models import AttemptOutcome, ProcessIdentity, TaskState
from worktree_swarm.core.paths import guard_dir
from worktree_swarm.core.task import Task
from worktree_swarm.core.text import path_text
from worktree_swarm.git import repo as git
from worktree_swarm.guard.model import Violation
from worktree_swarm.guard.watcher import Guard
from worktree_swarm.infra import proctree, shim_record, starts
from worktree_swarm.infra.logtail import read_log_end
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import AttemptRow, TaskRow
from worktree_swarm.run.agent_watch import LOG_READ_LIMIT
from worktree_swarm.run.attempt_record import attempt_outcome, attempt_usage, attempts_own
from worktree_swarm.run.retry import settle_guard


def ran_on(row: TaskRow, attempts: Sequence[AttemptRow]) -> bool:
    """Whether *row*'s task may have gone on unwatched once its manager died (a resume adopts it).

    Not final, started, its last attempt one since its last `swarm retry`: its agent, setup or
    checks may have run on.
    """
    return (
        not row.state.is_final
        and row.state is not TaskState.PENDING
        and bool(attempts)
        and attempts[-1].number > row.retry_base
    )


def may_have_run(row: TaskRow, attempts: Sequence[AttemptRow]) -> bool:
    """Whether *row*'s task's agent may have written while no manager watched.

    One that :func:`ran_on`, or one a killed manager launched (``launching``) but recorded no
    attempt of: a suspect of what changed meanwhile all the same.
    """
    launching = row.launching
    unrecorded = (
        launching is not None
        and launching > row.retry_base
        and launching not in {a.number for a in attempts}
    )
    return ran_on(row, attempts) or (unrecorded and not row.state.is_final)


def outlived(repo: git.Repo, row: TaskRow, attempts: Sequence[AttemptRow]) -> bool:
    """Whether *row*'s agent was seen alive after its manager died (it may have written since).

    Its open last attempt's agent, or the launch a killed manager did not record: running
    still, its shim running, or its shim recorded an end (a live manager records it at once).
    One killed with its shim (a reboot) did not: what changed since is not its doing.
    """
    last = attempts[-1] if attempts and attempts[-1].number > row.retry_base else None
    if last is not None and last.ended_at is None:
        agent = ProcessIdentity(pid=last.pid, create_time=last.create_time, pgid=last.pgid)
        if (last.pid and proctree.is_alive(agent)) or _shim_outlived(Path(last.log_path)):
            return True
    number = row.launching
    if number is None or number <= row.retry_base or number in {a.number for a in attempts}:
        return False
    return _shim_outlived(
        repo.state_dir / "runs" / row.run_id / row.task_id / f"attempt-{number}.log"
    )


def _shim_outlived(log: Path) -> bool:
    """Whether the shim of the agent logging to *log* runs, or recorded its agent's end."""
    record = shim_record.read_record(shim_record.record_path(log))
    if record is None:
        return False
    if record.ended_at is not None:
        return True
    ticks = record.start_ticks
    born = record.started_at if ticks is None else starts.at_ticks(ticks)
    shim = ProcessIdentity(pid=record.shim_pid, create_time=born, pgid=record.shim_pid)
    return proctree.is_alive(shim)


def judge_git_files(
    repo: git.Repo,
    store: Store,
    run_id: str,
    tell: Callable[[str], None] | None = None,
    *,
    outlived: Collection[str] | None = None,
) -> tuple[str, ...]:
    """Git's files changed since the killed manager of *run_id* last looked: put back, failed.

    Called once the agents its tasks left are killed, before those stopped are recorded: the
    suspects are the tasks that :func:`may_have_run`. What changed is put back and recorded as their
    outside write (each fails once it ends, its work kept on its branch), and *tell* gets one
    line saying so. Not to be called beside another run's live manager: its guard judges them.
    A setting new in your global config is blamed only on those of them *outlived* names (their
    agents seen alive after the manager died; None: all); with none, it is yours, trusted.
    Returns the files put back.
    """
    run = store.get_run(run_id)
    if run is None:
        return ()
    suspects = {
        row.task_id: Path(row.worktree)
        for row in store.tasks(run_id)
        if may_have_run(row, store.attempts(run_id, row.task_id))
    }
    if not suspects:
        return ()
    settings = run.settings
    guard = Guard(
        repo,
        work_dir=guard_dir(repo, run_id),
        restore=not settings.allow_outside_writes,
        exclude=[settings.worktree_root] if settings.worktree_root else [],
        on_record=lambda _: None,  # noted: settle_guard records and applies it
    )
    try:
        found = guard.judge_ended_unwatched(suspects)
        alive = [t for t in suspects if outlived is None or t in outlived]
        found += guard.judge_user_config_unwatched(alive)  # a filter in your ~/.gitconfig
    finally:
        guard.stand_down()
    settle_guard(repo, store, run_id)
    for violation in found:
        if tell is not None:
            tell(_line(run_id, violation, allowed=settings.allow_outside_writes))
    allowed = settings.allow_outside_writes
    return tuple(f for v in found if v.restored and not allowed for f in v.git_files)


def _line(run_id: str, violation: Violation, *, allowed: bool) -> str:
    """The one line that tells of *violation*, found as run *run_id* ended without a manager."""
    if allowed:
        done = "left as found (allow_outside_writes)"
    elif violation.restored:
        done = "put back"
    else:
        done = "not put back"
    blamed = ", ".join(violation.suspects)
    patch = f" (patch {path_text(violation.patch)})" if violation.patch else ""
    return (
        f"swarm: run {run_id}: git's own files {', '.join(violation.git_files)} changed while"
        f" no manager watched: {done}; an outside write of {blamed}{patch}"
    )


def record_launch(
    repo: git.Repo,
    store: Store,
    row: TaskRow,
    agent: ProcessIdentity | None,
    own: str,
    *,
    since: float,
) -> AgentResult | None:
    """Record the attempt a killed manager launched but did not record; how it went.

    Left unrecorded, a later `swarm retry` took the stop's own SIGTERM in its shim's record
    for how that attempt failed, and failed the task without running its agent. One whose
    shim recorded its end before this stop began (*since*) ended by itself: recorded as it
    went (as a resume reads it), its result returned; any other, as stopped. *agent*: the
    one found running. Its profile is the one launched (a fallback's, maybe); *own*, the
    task's, when not on record.
    """
    number = row.launching
    if number is None or number in {a.number for a in store.attempts(row.run_id, row.task_id)}:
        return None
    log = repo.state_dir / "runs" / row.run_id / row.task_id / f"attempt-{number}.log"
    record = shim_record.read_record(shim_record.record_path(log))
    if agent is None and record is None and not log.exists():
        return None  # never launched: the next attempt is that number
    by_itself = record is not None and record.ended_at is not None and record.ended_at < since
    started = (
        starts.as_wall(agent.create_time) if agent else record.started_at if record else time.time()
    )
    profile = row.launching_agent or own
    attempt = store.record_attempt(
        row.run_id, row.task_id, number=number, log_path=str(log), started_at=started,
        identity=agent or ProcessIdentity(pid=0, create_time=0.0, pgid=0), agent=profile,
    )  # fmt: skip
    opened = next(a for a in store.attempts(row.run_id, row.task_id) if a.id == attempt)
    result = ended_by_itself(store, opened, profile) if by_itself else None
    if result is None:
        store.end_attempt(attempt, exit_code=None, outcome=AttemptOutcome.STOPPED.value)
    return result


def ended_by_itself(store: Store, attempt: AttemptRow, agent: str) -> AgentResult | None:
    """How the agent of open *attempt* went when it ended by itself with no manager watching.

    Read, as `swarm resume` reads it, from its shim's record and its log; recorded with the
    attempt, and what it used (cost, tokens) with its task's totals, as a watched end is. None
    when it did not (it runs still, or its shim recorded no end).
    """
    log = Path(attempt.log_path)
    record = shim_record.read_record(shim_record.record_path(log))
    if record is None or record.ended_at is None or record.stopped:
        return None
    return end_as_logged(
        store, attempt, agent, exit_code=record.exit_code, ended_at=record.ended_at
    )


def as_logged(attempt: AttemptRow, agent: str, *, exit_code: int | None) -> AgentResult:
    """How *attempt*'s agent went, as its log (the copy here) and *exit_code* tell; unrecorded."""
    log = Path(attempt.log_path)
    return adapter_for(agent).interpret(
        exit_code=exit_code, log_text=read_log_end(log, LOG_READ_LIMIT), now=time.time()
    )


def end_as_logged(
    store: Store,
    attempt: AttemptRow,
    agent: str,
    *,
    exit_code: int | None,
    ended_at: float | None = None,
    cut: tuple[AttemptOutcome, str] | None = None,
) -> AgentResult:
    """Record open *attempt*'s end as its log (the copy here) tells it; how its agent went.

    Its outcome is as its agent (*agent*'s adapter) reads from the log and *exit_code*, or
    *cut*'s (outcome, reason) when it did not end by itself (stopped, lost); what the log
    says it used (cost, tokens) is kept with it and added to its task's totals, at once.
    """
    result = as_logged(attempt, agent, exit_code=exit_code)
    own = attempts_own(store, attempt.run_id, attempt.task_id, attempt.id, result)
    outcome, reason = cut or (attempt_outcome(own), own.reason)
    store.record_end(
        attempt.id,
        exit_code=exit_code,
        outcome=outcome.value,
        usage=attempt_usage(own, reason),
        ended_at=ended_at,
    )
    return result


def ended_on_record(row: TaskRow, attempts: Sequence[AttemptRow]) -> AgentResult | None:
    """How *row*'s agent went, as its manager recorded it before it died (in a checkpoint).

    Its last attempt since the last retry, closed, succeeded or failed. None while a launch
    is on record beyond it, or when it ended any other way (stopped, timed out, rate
    limited, on a full disk).
    """
    last = _closed_last(row, attempts)
    outcome = AttemptOutcome.parse(last.outcome) if last is not None else None
    if last is not None and outcome is AttemptOutcome.SUCCEEDED:
        return AgentResult(outcome=AgentOutcome.SUCCESS, reason=last.reason)
    if last is not None and outcome is AttemptOutcome.FAILED:
        return AgentResult(outcome=AgentOutcome.FAILED, reason=last.reason)
    return None


def as_it_ended(
    row: TaskRow | None, task: Task, ended: AgentResult | None
) -> tuple[TaskState, str]:
    """A stopped task's state: stopped, unless its agent had ended by itself meanwhile.

    Failed as it failed; done (or no changes) when it succeeded and had no checks to run.
    """
    if ended is None or ended.outcome is AgentOutcome.RATE_LIMITED:
        return TaskState.STOPPED, "stopped"
    if ended.outcome is not AgentOutcome.SUCCESS:
        return TaskState.FAILED, ended.reason or "the agent failed"
    if row is not None and row.diff_files == 0:
        return TaskState.NO_CHANGES, "the agent changed nothing"
    if task.checks:
        return TaskState.STOPPED, "stopped before its checks (its agent had succeeded)"
    return TaskState.DONE, ""


def cut_on_record(row: TaskRow, attempts: Sequence[AttemptRow]) -> tuple[TaskState, str] | None:
    """How *row*'s last attempt was cut short, as its manager recorded it before it died.

    Timed out (or stopped): the task ends so, with the attempt's reason, as a resume ends it.
    None for any other end, or while a launch is on record beyond it.
    """
    last = _closed_last(row, attempts)
    outcome = AttemptOutcome.parse(last.outcome) if last is not None else None
    if last is None or outcome not in {AttemptOutcome.TIMED_OUT, AttemptOutcome.STOPPED}:
        return None
    return TaskState(outcome.value), last.reason


def _closed_last(row: TaskRow, attempts: Sequence[AttemptRow]) -> AttemptRow | None:
    """*row*'s last attempt since its last retry, when closed and no launch is on record after."""
    if row.launching is not None or not attempts or attempts[-1].number <= row.retry_base:
        return None
    return attempts[-1] if attempts[-1].ended_at is not None else None
