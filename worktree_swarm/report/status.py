"""Read-only views of the state store: status rows (one per task) and the run's totals."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from worktree_swarm.agents import provider_of
from worktree_swarm.core import units
from worktree_swarm.core.models import MERGE_CHECKING, ProcessIdentity, TaskState
from worktree_swarm.core.task import Task, merge_again
from worktree_swarm.git import branches as git_branches
from worktree_swarm.git import committed_secrets
from worktree_swarm.git import repo as git
from worktree_swarm.infra import proctree, shim_record
from worktree_swarm.infra.disk import DiskUsage, usage
from worktree_swarm.infra.lock import merge_running
from worktree_swarm.infra.redact import redact
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import AttemptRow, TaskRow, task_from_json
from worktree_swarm.report.run_info import manager_running
from worktree_swarm.run.gate_model import GateView, views_from_events

# The merge result `swarm status` shows for a merge killed while its checks ran.
MERGE_CUT_OFF = "cut off"
MERGE_UNDONE = "undone"  # recorded merged, but the target no longer holds that merge


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskStatus:
    """One row of `swarm status` (the ``--json`` fields, documented in the README)."""

    task_id: str
    state: str
    reason: str
    attempt: int
    pid: int | None
    alive: bool
    elapsed_s: float | None
    cost_usd: float | None
    tokens_in: int | None
    tokens_out: int | None
    files_changed: int | None
    insertions: int | None
    deletions: int | None
    branch: str
    worktree: str
    worktree_present: bool = False
    branch_made: bool = True  # false while (or when, blocked) the task never had its branch
    disk_apparent: int | None = None
    disk_actual: int | None = None
    agent: str = ""  # the profile of the newest attempt (a fallback or budget agent may differ)
    waiting_for: str = ""
    merge_result: str | None = None
    merge_target: str | None = None
    merge_detail: str = ""
    pr_number: int | None = None
    pr_url: str | None = None
    pr_state: str | None = None
    node: str | None = None  # executor `ray`: the node of the newest attempt
    taken_by: str | None = None  # the later run that reused the task id: its branch and worktree
    # A commit its agent made itself, holding a secret of the run's environment, that its
    # branch still holds (`swarm pr` and `swarm merge` refuse it): its file, the variable.
    secret_commit: str = ""

    @property
    def why(self) -> str:
        """What it waits for, else why it ended (not repeating the state: `stopped`)."""
        reason = self.reason.splitlines()[0] if self.reason else ""
        return self.waiting_for or ("" if reason == self.state else reason)

    @property
    def after(self) -> str:
        """What happened to the branch since it was done: merge result and pull request."""
        parts = []
        if self.secret_commit:
            parts.append(
                f"{self.secret_commit}, committed by its agent itself: `swarm pr` and "
                "`swarm merge` refuse its branch"
            )
        if self.taken_by:
            parts.append(f"{self.branch} is run {self.taken_by}'s now")
        if self.merge_result == "merged":
            parts.append(f"merged into {self.merge_target}")
        elif self.merge_result == MERGE_UNDONE:
            parts.append(f"merged into {self.merge_target}, since undone there")
        elif self.merge_result == MERGE_CUT_OFF:
            again = merge_again(self.merge_target)
            parts.append(
                f"merge into {self.merge_target} cut off in its checks: run `{again}` again"
            )
        elif self.merge_result:
            parts.append(f"{self.merge_result} in {self.merge_target}")
        if self.pr_number is not None:
            parts.append(f"PR #{self.pr_number} {self.pr_state or 'open'}")
        return ", ".join(parts)

    def to_json(self) -> dict[str, object]:
        """Plain dict for JSON output."""
        return asdict(self)


def _last_sign_of_life(attempt: AttemptRow) -> float:
    """When the agent of an open attempt that no longer runs ended.

    As its shim recorded it; without that record (the shim died too), its log's last write.
    """
    log = Path(attempt.log_path)
    recorded = shim_record.read_record(shim_record.record_path(log))
    if recorded is not None and recorded.ended_at is not None:
        return max(recorded.ended_at, attempt.started_at)
    try:
        written = log.stat().st_mtime
    except OSError:
        written = attempt.started_at
    return max(written, attempt.started_at)


def task_status(
    store: Store,
    run_id: str,
    *,
    now: float | None = None,
    disk: bool = False,
    repo: git.Repo | None = None,
    gates: GateReader | None = None,
) -> list[TaskStatus]:
    """Status rows of every task of *run_id*, checking recorded PIDs against reality.

    With *disk*, the disk use of each worktree: measured now while its task goes on, as
    recorded when it ended otherwise (also for a worktree removed since). With *repo*, a
    merge result is checked against its target too (one git process per target): a merge
    undone by hand since shows as ``undone``, as `swarm merge` sees it. *gates*: what a
    caller that asks again and again (`swarm watch`) keeps of the providers' gates.
    """
    now = time.time() if now is None else now
    last = {attempt.task_id: attempt for attempt in store.attempts(run_id)}
    tasks = store.tasks(run_id)
    # A merge's checks with no `swarm merge` left to finish them: killed in them.
    cut_off = any(t.merge_result == MERGE_CHECKING for t in tasks) and not merge_running(
        store.path.parent
    )
    specs = Specs(tasks)
    views = provider_gates(store, run_id) if gates is None else gates.views(store, run_id)
    waits = waiting_reasons(store, run_id, tasks, specs, gates=views, now=now)
    waits.update(_resuming(store, run_id, tasks, last, specs, gates=views, now=now))
    taken = store.taken_over(run_id)
    undone = undone_merges(repo, tasks) if repo is not None else set()
    own = {t.task_id: t.branch for t in tasks if t.task_id not in taken}
    secrets = committed_secrets.held(repo, store, run_id, own)
    rows = []
    for task in tasks:
        attempt = last.get(task.task_id)
        alive = attempt is not None and attempt.ended_at is None and _alive(attempt)
        elapsed = None
        if task.started_at is not None:
            end = task.ended_at or now
            # (A Ray attempt has no local pid: its actor knows whether it runs.)
            if attempt is not None and attempt.ended_at is None and attempt.pid > 0 and not alive:
                end = _last_sign_of_life(attempt)  # no clock runs for a dead agent
            elapsed = round(end - task.started_at, 3)
        # What its creation found at its path is not its worktree.
        present = task.task_id not in taken and task.made and Path(task.worktree).is_dir()
        used = None
        if disk and task.disk_actual is not None and (task.state.is_final or not present):
            used = DiskUsage(task.disk_apparent or 0, task.disk_actual)
        elif disk and present:
            used = usage(Path(task.worktree))
        rows.append(
            TaskStatus(
                task_id=task.task_id,
                state=task.state.value,
                reason=redact(task.reason),  # also rows written before redaction existed
                attempt=task.attempts,
                pid=attempt.pid if attempt else None,
                alive=alive,
                elapsed_s=elapsed,
                cost_usd=task.cost_usd,
                tokens_in=task.tokens_in,
                tokens_out=task.tokens_out,
                files_changed=task.diff_files,
                insertions=task.diff_insertions,
                deletions=task.diff_deletions,
                branch=task.branch,
                branch_made=task.made,
                worktree=task.worktree,
                worktree_present=present,
                taken_by=taken.get(task.task_id),
                disk_apparent=None if used is None else used.apparent,
                disk_actual=None if used is None else used.actual,
                agent=attempt.agent if attempt and attempt.agent else specs[task.task_id].agent,
                waiting_for=waits.get(task.task_id, ""),
                merge_result=MERGE_CUT_OFF
                if cut_off and task.merge_result == MERGE_CHECKING
                else MERGE_UNDONE
                if task.task_id in undone
                else task.merge_result,
                merge_target=task.merge_target,
                merge_detail=task.merge_detail,
                pr_number=task.pr_number,
                pr_url=task.pr_url,
                pr_state=task.pr_state,
                node=task.node,
                secret_commit=str(secrets.get(task.task_id, "")),
            )
        )
    return rows


class Specs(dict[str, Task]):
    """Tasks' specs by id, each parsed from its row once, when first asked for.

    `swarm watch` reads every task every second: three parses of each pending one's JSON
    were most of a refresh of a run of 500 tasks.
    """

    def __init__(self, tasks: list[TaskRow]) -> None:
        super().__init__()
        self._json = {task.task_id: task.spec_json for task in tasks}

    def __missing__(self, task_id: str) -> Task:
        spec = self[task_id] = task_from_json(self._json[task_id])
        return spec


def undone_merges(repo: git.Repo, tasks: list[TaskRow]) -> set[str]:
    """Tasks recorded as merged whose merge commit their target no longer contains."""
    by_target: dict[str, dict[str, str]] = {}
    for task in tasks:
        if task.merge_result == "merged" and task.merge_target and task.merge_commit:
            by_target.setdefault(task.merge_target, {})[task.task_id] = task.merge_commit
    undone: set[str] = set()
    for target, commits in by_target.items():
        tip = git.rev_parse(repo, f"refs/heads/{target}")
        there = git_branches.contained(repo, tip, sorted(set(commits.values()))) if tip else set()
        undone |= {task_id for task_id, commit in commits.items() if commit not in there}
    return undone


def waiting_reasons(
    store: Store,
    run_id: str,
    tasks: list[TaskRow],
    specs: Mapping[str, Task],
    *,
    gates: list[GateView],
    now: float | None = None,
) -> dict[str, str]:
    """Why each pending task has not started: its reason if it has one, else derived.

    *specs*: each task's spec by id (as parsed from its row); *gates*: the providers' gates.
    """
    now = time.time() if now is None else now
    states = {t.task_id: t.state for t in tasks}
    run = store.get_run(run_id)
    # Tasks holding an agent slot: the running ones (a rate-limited task waits without one,
    # and checks run after the agent gave its slot back).
    running = sum(t.state is TaskState.RUNNING for t in tasks)
    held = {g.provider: g for g in gates if g.waiting_until is not None and g.waiting_until > now}
    reasons = {}
    gone = None  # whether the run's manager died: looked at once, for a pending task
    for task in tasks:
        if task.state is not TaskState.PENDING:
            continue
        if task.reason:
            reasons[task.task_id] = task.reason
            continue
        if gone is None:
            gone = run is not None and run.ended_at is None and not manager_running(run)
        deps = specs[task.task_id].depends_on
        unfinished = [d for d in deps if states.get(d) is not TaskState.DONE]
        if unfinished:
            reasons[task.task_id] = f"waits for {', '.join(unfinished)}"
        elif run is not None and run.ended_at is not None:
            reasons[task.task_id] = "not started (the run ended)"
        elif gone:  # not a slot or a gate: nothing starts it until a manager runs again
            reasons[task.task_id] = "not started: its manager is not running (`swarm resume`)"
        elif (gate := held.get(provider_of(specs[task.task_id].agent))) is not None:
            when = units.clock_time(gate.waiting_until or now, now=now)
            why = f" ({gate.why})" if gate.why else ""
            reasons[task.task_id] = f"waits for {gate.provider}: launches wait until {when}{why}"
        elif run is not None and running >= run.jobs:
            reasons[task.task_id] = f"waits for a free slot ({running} running, jobs {run.jobs})"
        else:
            reasons[task.task_id] = "starting"
    return reasons


def _resuming(
    store: Store,
    run_id: str,
    tasks: list[TaskRow],
    last: dict[str, AttemptRow],
    specs: Mapping[str, Task],
    *,
    gates: list[GateView],
    now: float,
) -> dict[str, str]:
    """What each rate-limited task whose wait is over waits for now.

    Not its reason, "resuming after HH:MM", shown for minutes after that time while the task
    waited for a slot of its provider.
    """
    over = [
        t
        for t in tasks
        if t.state is TaskState.RATE_LIMITED
        and (a := last.get(t.task_id)) is not None
        and a.retry_at is not None
        and a.retry_at <= now
    ]
    if not over:
        return {}
    run = store.get_run(run_id)
    if run is not None and run.ended_at is None and not manager_running(run):
        return {t.task_id: "not resumed: its manager is not running (`swarm resume`)" for t in over}
    by_provider = {g.provider: g for g in gates}
    reasons = {}
    for task in over:
        provider = provider_of(last[task.task_id].agent or specs[task.task_id].agent)
        gate = by_provider.get(provider)
        if gate is not None and gate.waiting_until is not None and gate.waiting_until > now:
            when = units.clock_time(gate.waiting_until, now=now)
            why = f" ({gate.why})" if gate.why else ""
            reasons[task.task_id] = f"resumes once {provider} launches again at {when}{why}"
        elif gate is not None and gate.limit < gate.jobs:
            reasons[task.task_id] = (
                f"resumes once one of {provider}'s {gate.limit} agent slots is free"
            )
        else:
            reasons[task.task_id] = "resumes once an agent slot is free"
    return reasons


def provider_gates(store: Store, run_id: str) -> list[GateView]:
    """Each provider's gate as the run's manager last reported it (concurrency, wait, why)."""
    return views_from_events((e.kind, e.data) for e in store.events(run_id, kind="gate"))


class GateReader:
    """Each provider's gate of a run, read from the events recorded since the last read.

    `swarm watch` asks every second: reading all of a run's gate events each time grew with
    the run's length (thousands in a long one), not with its tasks.
    """

    def __init__(self) -> None:
        self._read: tuple[Store, str] | None = None  # the store and run read so far
        self._seen = 0  # the newest event read
        self._views: dict[str, GateView] = {}

    def views(self, store: Store, run_id: str) -> list[GateView]:
        """The gates of *run_id* in *store*, by provider (another store or run: read anew)."""
        if self._read is None or self._read[0] is not store or self._read[1] != run_id:
            self._read, self._seen, self._views = (store, run_id), 0, {}
        # Of every kind: asked for gate events only, those after the newest were read again.
        events = store.events(run_id, after=self._seen)
        if events:
            self._seen = events[-1].id
            self._views.update(
                (v.provider, v) for v in views_from_events((e.kind, e.data) for e in events)
            )
        return [self._views[p] for p in sorted(self._views)]


def open_attempt_end(attempt: AttemptRow, *, now: float) -> float:
    """Where the clock of an attempt recorded as open stops.

    *now* while its agent runs (or runs on Ray, with no local pid), else the agent's last sign
    of life (its manager died).
    """
    if attempt.pid <= 0 or _alive(attempt):
        return now
    return _last_sign_of_life(attempt)


def _alive(attempt: AttemptRow) -> bool:
    identity = ProcessIdentity(pid=attempt.pid, create_time=attempt.create_time, pgid=attempt.pgid)
    return proctree.is_alive(identity)


def run_totals(rows: list[TaskStatus], *, disk: bool = False) -> dict[str, float | int | None]:
    """Attempts, cost and tokens of the whole run (None where no task reported any).

    A task that reported none counts as zero beside those that did. With *disk* (rows read
    with disk use), also ``disk_apparent`` and ``disk_actual``: what the run's worktrees that
    are still there use (removed ones count zero).
    """
    costs = [r.cost_usd for r in rows if r.cost_usd is not None]
    tokens_in = [r.tokens_in for r in rows if r.tokens_in is not None]
    tokens_out = [r.tokens_out for r in rows if r.tokens_out is not None]
    totals: dict[str, float | int | None] = {
        "attempts": sum(r.attempt for r in rows),
        "cost_usd": round(sum(costs), 6) if costs else None,
        "tokens_in": sum(tokens_in) if tokens_in else None,
        "tokens_out": sum(tokens_out) if tokens_out else None,
    }
    if disk:
        present = [r for r in rows if r.worktree_present]
        totals["disk_apparent"] = sum(r.disk_apparent or 0 for r in present)
        totals["disk_actual"] = sum(r.disk_actual or 0 for r in present)
    return totals
