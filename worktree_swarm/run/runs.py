"""Runs as a whole: their state (is the manager still there?), `swarm runs`, abandoning one."""

from __future__ import annotations

import enum
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from worktree_swarm.core.errors import BadInputError
from worktree_swarm.core.models import RunStatus
from worktree_swarm.core.paths import guard_dir, store_path
from worktree_swarm.core.run_settings import Executor
from worktree_swarm.core.task import INTEGRATION_PREFIX
from worktree_swarm.git import branches as git_branches
from worktree_swarm.git import repo as git
from worktree_swarm.guard import snapshot
from worktree_swarm.infra.lock import ManagerLock, refuse_while_state_is_gone
from worktree_swarm.infra.store import RUN_STATUS_RUNNING, Store
from worktree_swarm.infra.store_rows import RunRow, TaskRow
from worktree_swarm.report.run_info import manager_running
from worktree_swarm.run import control, retry

RUN_STATUS_ABANDONED = RunStatus.ABANDONED


class RunState(enum.StrEnum):
    """What a run is doing now (``swarm runs``, ``swarm status --json`` ``run_state``)."""

    RUNNING = "running"
    MANAGER_GONE = "manager_gone"  # unfinished, but no process manages it: `swarm resume`
    FINISHED = "finished"
    STOPPED = "stopped"
    INTERRUPTED = "interrupted"
    ABANDONED = "abandoned"


def run_state(run: RunRow) -> RunState:
    """The state of *run*, checking an unfinished run's manager against reality."""
    if run.status == RUN_STATUS_RUNNING:
        return RunState.RUNNING if manager_running(run) else RunState.MANAGER_GONE
    try:
        return RunState(run.status)
    except ValueError:
        return RunState.FINISHED


def resume_command(store: Store, run_id: str) -> str:
    """The `swarm resume` line that carries *run_id* on (``--run`` unless it is the latest)."""
    return "swarm resume" if store.latest_run_id() == run_id else f"swarm resume --run {run_id}"


def left_unmanaged(store: Store, run: RunRow) -> bool:
    """Whether *run* waits for `swarm resume`: its manager gone, or interrupted with tasks left."""
    state = run_state(run)
    if state is RunState.INTERRUPTED:
        return not all(row.state.is_final for row in store.tasks(run.run_id))
    return state is RunState.MANAGER_GONE


def manager_note(store: Store, run: RunRow) -> str | None:
    """``manager not running — run `swarm resume``` for an orphaned run, else None.

    Also for a run interrupted with tasks left (its Ray cluster was lost); for a Ray run
    whose cluster does not answer, that and what to do.
    """
    if not left_unmanaged(store, run):
        return None
    state = run_state(run)
    resume = resume_command(store, run.run_id)
    if run.settings.executor is Executor.RAY:
        from worktree_swarm.run import ray_cluster  # noqa: PLC0415 - Ray runs only

        problem = ray_cluster.unreachable(run.settings, run.run_id)
        if problem is not None:
            gone = "manager not running" if state is RunState.MANAGER_GONE else "interrupted"
            return f"{gone}: {problem.replace('swarm resume', resume)}"
    if state is RunState.INTERRUPTED:
        return f"interrupted with tasks left — run `{resume}`"
    return f"manager not running — run `{resume}`"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSummary:
    """One row of `swarm runs` (the ``--json`` fields)."""

    run_id: str
    started_at: float
    ended_at: float | None
    state: str
    tasks: int
    counts: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """Plain dict for JSON output."""
        return asdict(self)


def list_runs(store: Store) -> list[RunSummary]:
    """Every recorded run, oldest first, with its state and task counts per state."""
    summaries = []
    every = store.state_counts()
    for run in store.runs():
        counts = {state.value: n for state, n in every.get(run.run_id, {}).items()}
        summaries.append(
            RunSummary(
                run_id=run.run_id,
                started_at=run.created_at,
                ended_at=run.ended_at,
                state=run_state(run).value,
                tasks=sum(counts.values()),
                counts=dict(sorted(counts.items())),
            )
        )
    return summaries


def format_runs(summaries: list[RunSummary]) -> list[str]:
    """The text table of `swarm runs`."""
    if not summaries:
        return ["no runs recorded yet; start one with `swarm run`"]
    lines = [f"{'run':<24} {'started':<19} {'state':<13} tasks"]
    for s in summaries:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.started_at))
        counts = ", ".join(f"{n} {state}" for state, n in s.counts.items())
        lines.append(f"{s.run_id:<24} {started:<19} {s.state:<13} {s.tasks} ({counts})")
    return lines


def orphaned_runs(store: Store) -> list[RunRow]:
    """Unfinished runs no manager runs: its manager gone, or interrupted with tasks left.

    An interrupted run's tasks left (a stop before they started, a lost Ray cluster) wait
    for `swarm resume` as a dead manager's do: a new run would take the ids of those not
    started yet, and their resume would then fail them.
    """
    return [r for r in store.runs() if left_unmanaged(store, r)]


def refuse_or_abandon(
    repo: git.Repo, store: Store, *, force: bool, tell: Callable[[str], None] | None = None
) -> list[str]:
    """Before a new run: refuse while a run has no manager, or (*force*) abandon those runs.

    Abandoning stops what the dead manager left running, checkpoints the worktrees of its
    unfinished tasks, marks them stopped and finishes what its guard was putting back (a
    task worktree moved, remote-tracking refs). Returns the abandoned run ids. *tell*: a line
    for what their agents changed in git's files while no manager watched (put back).
    """
    orphans = orphaned_runs(store)
    if orphans and not force:
        run = orphans[-1]
        how = (
            "was interrupted with tasks left"
            if run_state(run) is RunState.INTERRUPTED
            else "is unfinished and its manager is not running"
        )
        raise BadInputError(
            f"run {run.run_id} {how}; continue it with "
            f"`{resume_command(store, run.run_id)}` (or pass --force to abandon it)"
        )
    for run in orphans:
        targets = [t.task_id for t in store.tasks(run.run_id) if not t.state.is_final]
        control.stop_unmanaged(repo, store, run.run_id, targets, tell=tell)
        retry.settle_guard(repo, store, run.run_id)  # what its guard was at
        # As `swarm stop`'s end of it: the record of git's files (your config's bytes) goes.
        snapshot.drop_baselines(guard_dir(repo, run.run_id), keep_base=True)
        store.finish_run(run.run_id, status=RUN_STATUS_ABANDONED)
        control.scrub_ended(repo, store, run.run_id)  # as its manager's end would have
    return [r.run_id for r in orphans]


def branch_next_step(store: Store, branch: str, existing: set[str]) -> str | None:
    """What to do about an existing *branch* that a recorded run's task owns (else None).

    *existing*: the repository's branches. The delete it names deletes that task's alone.
    """
    for run in reversed(store.runs()):
        rows = store.tasks(run.run_id)
        for row in rows:
            if row.branch != branch:
                continue
            who = f"task {row.task_id} of run {run.run_id}"
            if not row.state.is_final:
                if run_state(run) is RunState.RUNNING:
                    return f"{who} is still running; wait for it or stop it with `swarm stop`"
                resume = resume_command(store, run.run_id)
                return f"{who} is unfinished; continue it with `{resume}`"
            if not row.made:
                continue  # it was there before the task came to make it: not its
            clean = _delete_one(row, run.run_id, rows, existing)
            if row.state.is_success:
                return f"{who} is {row.state.value}; merge it, or delete it with {clean}"
            return (
                f"{who} is {row.state.value}; run it again with "
                f"`swarm retry {row.task_id} --run {run.run_id}`, or delete it with {clean}"
            )
    return None


def _delete_one(row: TaskRow, run_id: str, rows: list[TaskRow], existing: set[str]) -> str:
    """The command that deletes *row*'s branch and worktree, and no other task's work.

    `swarm clean --run RUN --force` deletes every unmerged branch of the run: named only
    while this task's is the one left (it deleted another done task's unmerged work).
    """
    others = {r.branch for r in rows if r.branch and r.branch != row.branch}
    if not (others | {INTEGRATION_PREFIX + run_id}) & existing:
        return f"`swarm clean --run {run_id} --force --yes`"
    remove = (
        f"`git worktree remove --force {shlex.quote(row.worktree)}`, then "
        if (row.worktree and Path(row.worktree).is_dir())
        else ""
    )
    return f"{remove}`git branch -D {row.branch}`"


def settle_before_run(
    repo: git.Repo, *, force: bool, tell: Callable[[str], None] | None = None
) -> tuple[list[str], Callable[[str], str | None]]:
    """Before `swarm run`: refuse while a run has no manager, or (*force*) abandon it.

    Returns the abandoned run ids and, for the preflight, what to do about a branch a
    recorded run owns. Creates nothing where no run was ever recorded.
    """
    path = store_path(repo)
    abandoned: list[str] = []
    refuse_while_state_is_gone(repo.state_dir, path)  # its log deleted under a live manager
    if path.exists():
        with Store(path) as store:
            if force and orphaned_runs(store):
                with ManagerLock(repo.state_dir) as lock:
                    lock.acquire(guarded=False)
                    abandoned = refuse_or_abandon(repo, store, force=True, tell=tell)
            refuse_or_abandon(repo, store, force=False)

    return abandoned, next_step_for(repo)


def next_step_for(repo: git.Repo) -> Callable[[str], str | None]:
    """For the preflight: what to do about a branch a recorded run owns (None: no run does)."""
    path = store_path(repo)

    def next_step(branch: str) -> str | None:
        if not path.exists():
            return None
        with Store(path) as store:
            return branch_next_step(store, branch, git_branches.branches(repo))

    return next_step
