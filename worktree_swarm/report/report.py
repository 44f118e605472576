"""What happened in a run, from the state store alone: per-task rows, time spans and totals.

Computed here into the records of :mod:`worktree_swarm.report.report_model`. Works for a
finished run and during a live one (open spans end "now"). Every text taken from prompts,
reasons and logs is passed through :class:`Redactor` before it leaves this module.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from worktree_swarm.core.models import AttemptOutcome, TaskState
from worktree_swarm.core.scheduler import Scheduler
from worktree_swarm.core.task import Task
from worktree_swarm.git import committed_secrets, local_files
from worktree_swarm.git import repo as git
from worktree_swarm.guard.model import group_failures
from worktree_swarm.infra.disk import DiskUsage, usage
from worktree_swarm.infra.logtail import tail
from worktree_swarm.infra.redact import Redactor, add_env, current
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import AttemptRow, EventRow, RunRow, TaskRow, task_from_json
from worktree_swarm.report.report_model import AttemptReport, RunReport, Span, TaskReport, Totals
from worktree_swarm.report.run_info import remote_refs_of
from worktree_swarm.report.status import MERGE_UNDONE, open_attempt_end, undone_merges
from worktree_swarm.run.gate_model import views_from_events
from worktree_swarm.run.runs import RunState, run_state

N = TypeVar("N", int, float)

PROMPT_CHARS = 20_000


def build_report(
    store: Store,
    run_id: str,
    *,
    logs_dir: Path | None = None,
    now: float | None = None,
    redactor: Redactor | None = None,
    repo: git.Repo | None = None,
) -> RunReport:
    """Read *run_id* from *store* and compute its report.

    *logs_dir* is the run's directory (``<state dir>/runs/<run>``) holding each task's
    ``checks.log`` and ``setup.log``; without it those tails are empty.
    """
    run = store.get_run(run_id)
    if run is None:
        raise KeyError(f"no run {run_id} in the state store")
    now = time.time() if now is None else now
    rows = store.tasks(run_id)
    specs = {row.task_id: _task_spec(row) for row in rows}
    if redactor is None:
        for spec in specs.values():
            add_env(spec.env)
            if repo is not None:  # what its `copy` files hold (a title may quote it)
                add_env(local_files.copied_secrets(repo.root, spec.copy))
        redactor = current()
    attempts: dict[str, list[AttemptRow]] = {row.task_id: [] for row in rows}
    for attempt in store.attempts(run_id):
        attempts.setdefault(attempt.task_id, []).append(attempt)
    events = store.events(run_id)
    # As `swarm status` and `swarm runs` say it: a dead manager's run is `manager_gone`.
    state = run_state(run)
    live = run.ended_at is None and state is RunState.RUNNING
    # An attempt a dead manager left open ended when its agent did (its shim's record, its
    # log's last write), not at the last thing the manager recorded.
    open_ends = {
        a.id: open_attempt_end(a, now=now)
        for listed in attempts.values()
        for a in listed
        if a.ended_at is None
    }
    end = _run_end(run, rows, attempts, events, open_ends=open_ends, live=live, now=now)
    state_changes: dict[str, list[tuple[float, str]]] = {}
    pulls: dict[str, tuple[int, str]] = {}
    outside = tuple(
        {"ts": e.ts, **{k: _redacted(v, redactor) for k, v in e.data.items()}}
        for e in events
        if e.kind == "outside_write"
    )
    guard_errors = tuple(
        group_failures(
            {"ts": e.ts, **{k: _redacted(v, redactor) for k, v in e.data.items()}}
            for e in events
            if e.kind == "guard_error"
        )
    )
    for event in events:
        if event.task_id is None:
            continue
        if event.kind == "state":
            state_changes.setdefault(event.task_id, []).append((event.ts, str(event.data["state"])))
        elif event.kind == "pull_request":
            pulls[event.task_id] = (_int(event.data.get("number")), str(event.data.get("url", "")))
    taken = store.taken_over(run_id)
    undone = undone_merges(repo, rows) if repo is not None else set()  # as `swarm status`
    own = {row.task_id: row.branch for row in rows if row.task_id not in taken}
    secrets = committed_secrets.held(repo, store, run_id, own)  # as `swarm status`
    tasks = tuple(
        _task_report(
            row,
            specs[row.task_id],
            sorted(attempts.get(row.task_id, []), key=lambda a: (a.number, a.id)),
            state_changes.get(row.task_id, []),
            pulls.get(row.task_id),
            end=end,
            open_ends=open_ends,
            logs=None if logs_dir is None else logs_dir / row.task_id,
            redact=redactor,
            taken=row.task_id in taken,
            undone=row.task_id in undone,
            secret=str(secrets.get(row.task_id, "")),
        )
        for row in rows
    )
    return RunReport(
        run_id=run.run_id,
        status=state,
        live=live,
        base_commit=run.base_commit,
        jobs=run.jobs,
        created_at=run.created_at,
        ended_at=run.ended_at,
        generated_at=now,
        end=end,
        tasks=tasks,
        totals=_totals(
            tasks,
            list(specs.values()),
            jobs=run.jobs,
            makespan=end - run.created_at - _idle(events),
        ),
        outside_writes=outside,
        guard_errors=guard_errors,
        remote_refs_put_back=tuple(remote_refs_of(events)),
        max_disk=_max_disk(run),
        providers=tuple(views_from_events((e.kind, e.data) for e in events)),
    )


def _redacted(value: object, redact: Redactor) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redacted(v, redact) for v in value]
    if isinstance(value, dict):
        return {k: _redacted(v, redact) for k, v in value.items()}
    return value


def _task_spec(row: TaskRow) -> Task:
    try:
        return task_from_json(row.spec_json)
    except (ValueError, TypeError):
        # A spec written by a newer version: the report still shows what the store knows.
        return Task(id=row.task_id, prompt="")


def _max_disk(run: RunRow) -> int | None:
    return run.settings.max_disk


def _disk(row: TaskRow, *, taken: bool) -> tuple[DiskUsage | None, bool]:
    """A task's disk use (measured now while it goes on, else as recorded) and presence.

    *taken*: a later run reused the task id; the worktree at its path is that run's.
    """
    present = not taken and row.made and Path(row.worktree).is_dir()  # never one it found
    if present and not row.state.is_final:
        return usage(Path(row.worktree)), present
    if row.disk_actual is None:
        return None, present
    return DiskUsage(row.disk_apparent or 0, row.disk_actual), present


def _run_end(
    run: RunRow,
    rows: Sequence[TaskRow],
    attempts: Mapping[str, Sequence[AttemptRow]],
    events: Sequence[EventRow],
    *,
    open_ends: Mapping[int, float],
    live: bool,
    now: float,
) -> float:
    """When the run ended; for a manager that died without saying so, the last thing seen.

    *open_ends*: where each attempt recorded as open ended (see :func:`open_attempt_end`),
    by attempt id: its agent may have worked on long after the manager's last record.
    """
    if run.ended_at is not None:
        return run.ended_at
    if live:
        return now
    seen = [run.created_at, *(e.ts for e in events), *open_ends.values()]
    seen += [t for r in rows for t in (r.started_at, r.ended_at) if t is not None]
    seen += [t for a in attempts.values() for x in a for t in (x.started_at, x.ended_at) if t]
    return max(seen)


def _idle(events: Sequence[EventRow]) -> float:
    """Time from each end of the run to its next start (`swarm retry`, `resume`): nothing ran.

    An end was recorded only where the run finished, stopped or was interrupted with no agent
    of it left; a manager that died recorded none, and its agents may have worked on.
    """
    idle, ended = 0.0, None
    for event in sorted(events, key=lambda e: e.ts):
        if event.kind == "run_finished":
            ended = event.ts
        elif event.kind == "run_started":
            idle += event.ts - ended if ended is not None else 0.0
            ended = None
    return idle


def _task_report(
    row: TaskRow,
    spec: Task,
    attempts: Sequence[AttemptRow],
    changes: Sequence[tuple[float, str]],
    pull: tuple[int, str] | None,
    *,
    end: float,
    open_ends: Mapping[int, float],
    logs: Path | None,
    redact: Redactor,
    taken: bool,
    undone: bool = False,
    secret: str = "",
) -> TaskReport:
    reports = tuple(
        _attempt_report(a, end=open_ends.get(a.id, end), redact=redact) for a in attempts
    )
    spans = tuple(_spans(changes, end=end))
    # A resume after a rate limit, or once a full disk has room, is a new attempt, not a retry.
    resumed = {AttemptOutcome.RATE_LIMITED, AttemptOutcome.DISK_FULL}
    retries = sum(1 for prev in reports[:-1] if prev.outcome not in resumed)
    # started_at moves to each new attempt's start; the task's wall time begins at the first.
    starts = [t for t in (row.started_at, *(a.started_at for a in reports)) if t is not None]
    # A task a dead manager left open ended with its agent.
    stop = row.ended_at or max(
        (open_ends[a.id] for a in attempts if a.id in open_ends), default=end
    )
    wall = stop - min(starts) if starts else None
    used, present = _disk(row, taken=taken)
    return TaskReport(
        task_id=row.task_id,
        title=redact(spec.title),
        state=row.state.value,
        reason=redact(row.reason),
        depends_on=spec.depends_on,
        branch=row.branch,
        attempts=reports,
        spans=spans,
        started_at=row.started_at,
        ended_at=row.ended_at,
        wall_s=wall,
        agent_s=sum(a.duration_s for a in reports),
        checks_s=sum(s.end - s.start for s in spans if s.kind == "checks"),
        rate_limit_wait_s=sum(s.end - s.start for s in spans if s.kind == "rate_limit"),
        retries=retries,
        cost_usd=_first(row.cost_usd, _sum(a.cost_usd for a in reports)),
        tokens_in=_first(row.tokens_in, _sum(a.tokens_in for a in reports)),
        tokens_out=_first(row.tokens_out, _sum(a.tokens_out for a in reports)),
        cache_read_tokens=_first(row.cache_read_tokens, _sum(a.cache_read_tokens for a in reports)),
        files_changed=row.diff_files,
        insertions=row.diff_insertions,
        deletions=row.diff_deletions,
        pr_number=row.pr_number if pull is None else pull[0],
        pr_url=redact(row.pr_url or "") if pull is None else redact(pull[1]),
        pr_state=row.pr_state,
        merge_result=MERGE_UNDONE if undone else row.merge_result,
        merge_target=row.merge_target,
        prompt=redact(spec.prompt)[:PROMPT_CHARS],  # cut once redacted: no half key
        checks_tail="" if logs is None else redact(tail(logs / "checks.log")),
        setup_tail="" if logs is None else redact(tail(logs / "setup.log")),
        disk_apparent=None if used is None else used.apparent,
        disk_actual=None if used is None else used.actual,
        worktree_present=present,
        secret_commit=secret,
    )


def _attempt_report(attempt: AttemptRow, *, end: float, redact: Redactor) -> AttemptReport:
    ended = attempt.ended_at
    return AttemptReport(
        number=attempt.number,
        started_at=attempt.started_at,
        ended_at=ended,
        duration_s=max(0.0, (ended if ended is not None else end) - attempt.started_at),
        outcome=attempt.outcome or ("running" if ended is None else "unknown"),
        exit_code=attempt.exit_code,
        reason=redact(attempt.reason),
        cost_usd=attempt.cost_usd,
        tokens_in=attempt.tokens_in,
        tokens_out=attempt.tokens_out,
        cache_read_tokens=attempt.cache_read_tokens,
        agent=attempt.agent,
    )


_SPAN_KINDS = {TaskState.CHECKING.value: "checks", TaskState.RATE_LIMITED.value: "rate_limit"}


def _spans(changes: Sequence[tuple[float, str]], *, end: float) -> Iterable[Span]:
    """Checks and rate-limit waits: from entering that state until the next state change."""
    for index, (start, state) in enumerate(changes):
        kind = _SPAN_KINDS.get(state)
        if kind is None:
            continue
        stop = changes[index + 1][0] if index + 1 < len(changes) else end
        yield Span(kind=kind, start=start, end=max(start, stop))


def _totals(
    tasks: Sequence[TaskReport], specs: Sequence[Task], *, jobs: int, makespan: float
) -> Totals:
    agent_time = sum(t.agent_s for t in tasks)
    durations = {t.task_id: t.agent_s for t in tasks}
    ideal = Scheduler(specs).ideal_makespan(durations, jobs) if specs else 0.0
    done = sum(1 for t in tasks if TaskState(t.state).is_success)
    states: dict[str, int] = {}
    for t in tasks:
        states[t.state] = states.get(t.state, 0) + 1
    total_cost = _sum(t.cost_usd for t in tasks)
    overhead = _token_overhead(tasks)
    tokens_in = _sum(t.tokens_in for t in tasks)
    cache = _sum(t.cache_read_tokens for t in tasks)
    context = (tokens_in or 0) + (cache or 0)
    return Totals(
        tasks=len(tasks),
        done=done,
        states=dict(sorted(states.items())),
        makespan_s=makespan,
        agent_time_s=agent_time,
        achieved_speedup=agent_time / makespan if makespan > 0 else None,
        ideal_makespan_s=ideal,
        ideal_speedup=agent_time / ideal if ideal > 0 else None,
        rate_limit_wait_s=sum(t.rate_limit_wait_s for t in tasks),
        retries=sum(t.retries for t in tasks),
        resumes=sum(len(t.attempts) - 1 - t.retries for t in tasks if t.attempts),
        total_cost_usd=total_cost,
        cost_per_done_usd=total_cost / done if total_cost is not None and done else None,
        tokens_in=tokens_in,
        tokens_out=_sum(t.tokens_out for t in tasks),
        cache_read_tokens=cache,
        token_overhead_tokens=overhead,
        token_overhead_pct=100 * overhead / context if overhead is not None and context else None,
        disk_apparent=_sum(t.disk_apparent for t in tasks),
        disk_actual=_sum(t.disk_actual for t in tasks),
        worktrees_removed=sum(t.disk_actual is not None and not t.worktree_present for t in tasks),
    )


def _token_overhead(tasks: Sequence[TaskReport]) -> int | None:
    """Context re-read because agents ran separately instead of in one session.

    Every agent starts by reading the same shared context (system prompt, tool definitions,
    project instructions), which shows up as cache reads. The smallest cache read of any
    attempt bounds that shared part from below; a serial session would read it once, N
    separate attempts read it N times. None when fewer than two attempts reported cache reads.
    """
    reads = [a.cache_read_tokens for t in tasks for a in t.attempts if a.cache_read_tokens]
    if len(reads) < 2:  # noqa: PLR2004 - overhead needs at least two agents
        reads = [t.cache_read_tokens for t in tasks if t.cache_read_tokens]
    if len(reads) < 2:  # noqa: PLR2004
        return None
    return min(reads) * (len(reads) - 1)


def _first(*values: N | None) -> N | None:
    return next((v for v in values if v is not None), None)


def _sum(values: Iterable[N | None]) -> N | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _int(value: object) -> int:
    return value if isinstance(value, int) else int(str(value)) if str(value).isdigit() else 0
