"""`swarm stop`: stop agents (whole process trees) and keep their work."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import filelock

from worktree_swarm.agents.base import AgentResult
from worktree_swarm.core.errors import SwarmError, unknown_task
from worktree_swarm.core.models import AttemptOutcome, ProcessIdentity, RunStatus, TaskState
from worktree_swarm.core.paths import SCRUB_SKIP, TASK_SCRUB_SKIP, guard_dir, run_dir
from worktree_swarm.core.run_settings import Executor
from worktree_swarm.core.scheduler import Scheduler
from worktree_swarm.git import repo as git
from worktree_swarm.guard import held_files, snapshot
from worktree_swarm.infra import lock, proc_scan, proctree, scrub
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import AttemptRow, TaskRow, task_from_json
from worktree_swarm.report.run_info import know_secrets_of, manager_frozen
from worktree_swarm.run import provision, retry, stop_windup, unwatched


@dataclass(frozen=True, slots=True, kw_only=True)
class Stopped:
    """What a stop did: the tasks it stopped; git's own files changed unwatched it put back."""

    tasks: tuple[str, ...] = ()
    put_back: tuple[str, ...] = ()


def stop(
    repo: git.Repo,
    store: Store,
    run_id: str,
    task_ids: Sequence[str],
    *,
    grace: float | None = None,
    tell: Callable[[str], None] | None = None,
) -> Stopped:
    """Ask the manager to stop *task_ids* (all when empty); what was stopped and put back.

    When the run has no manager alive (it crashed), stop the recorded agent trees directly,
    checkpoint their worktrees and mark them stopped, so no work or process is left: under
    the manager lock when no manager holds it (a `swarm resume`, `run --force` or doctor
    waits), and one such stop at a time. *grace*: the run's own ``kill_grace`` by default.
    *tell*: gets a line for what its agents changed in git's files meanwhile (put back).
    """
    rows = {row.task_id: row for row in store.tasks(run_id)}
    for task_id in task_ids:
        if task_id not in rows:
            raise unknown_task(task_id, run_id)
    run = store.get_run(run_id)
    if grace is None:
        grace = run.settings.kill_grace if run is not None else DEFAULT_GRACE
    targets = [t for t in (task_ids or rows) if not rows[t].state.is_final]
    for task_id in targets:
        store.update_task(run_id, task_id, stop_requested=True)
    left = targets
    if _managed(repo, store, run_id):
        # It stops each within its grace, a group of them at once; checkpoints take a while.
        deadline = time.monotonic() + 2 * grace + 30
        # One stopped (SIGSTOP, Ctrl-Z) for a grace on end acts on nothing until it goes on.
        stopped = (lambda: manager_frozen(run) is not None) if run is not None else None
        left = _wait_final(
            repo, store, run_id, targets, deadline=deadline, frozen=stopped, patience=grace
        )
        if not left:
            return Stopped(tasks=tuple(targets))
        if _managed(repo, store, run_id):
            if run is not None and (frozen := manager_frozen(run)):  # acting on nothing
                raise SwarmError(f"{frozen}; it stops {', '.join(left)} then")
            raise SwarmError(
                f"the manager has not stopped {', '.join(left)} yet; `swarm status` shows them"
            )
        # The manager died before it stopped them: stopped here, as with no manager.
    with _unmanaged_stop(repo, run_id) as beside:
        here = stop_unmanaged(repo, store, run_id, left, grace=grace, announce=beside, tell=tell)
        # As the manager would (under its lock: a resume must not start one meanwhile, nor
        # write the logs the end's redaction rewrites).
        _block_dependents(store, run_id)
        end_if_final(repo, store, run_id)  # nothing left to resume: a `swarm run` may start
    # Not one whose agent had ended by itself meanwhile (recorded done or failed): never said
    # to be stopped; one stopped here and failed for what it changed in git's files is.
    said = tuple(t for t in targets if t not in left or t in here.tasks)
    return Stopped(tasks=said, put_back=here.put_back)


DEFAULT_GRACE = 5.0


def _managed(repo: git.Repo, store: Store, run_id: str) -> bool:
    """Whether a manager of *run_id* is alive: the one recorded, or one taking it over now."""
    if not lock.manager_alive(repo.state_dir):
        return False
    if lock.holder_run(repo.state_dir) == run_id:  # a resume or retry, maybe not recorded yet
        return True
    run = store.get_run(run_id)
    if run is None or run.manager_pid is None or run.manager_create_time is None:
        return False
    ident = ProcessIdentity(pid=run.manager_pid, create_time=run.manager_create_time, pgid=0)
    return proctree.is_alive(ident)


@contextlib.contextmanager
def _unmanaged_stop(repo: git.Repo, run_id: str) -> Iterator[bool]:
    """Hold the manager lock while a run's agents are stopped without a manager.

    When no manager holds it, so that a resume, `run --force` or doctor does not take the
    run over meanwhile. Yields whether another run's manager holds it and runs a guard (then
    this run has none to wait for, and that guard is to be told of what the stop commits).
    """
    with contextlib.ExitStack() as held:
        beside = lock.manager_alive(repo.state_dir)
        # Held by none of swarm's (an agent that took it once its manager died): not taken,
        # and the stop goes on, that agent among those it stops.
        squatted = not beside and lock.held(repo.state_dir / "manager.lock")
        if not beside and not squatted:
            manager = held.enter_context(lock.ManagerLock(repo.state_dir))
            manager.acquire(run_id=run_id, guarded=False)
        # Beside another stop (of another run with no manager), nobody would hear it.
        yield beside and lock.guard_alive(repo.state_dir)


STOP_LOCK = "stop.lock"
STOP_WAIT = 300.0  # seconds another stop may take before this one gives up


def _not_final(store: Store, run_id: str, task_ids: Sequence[str]) -> list[str]:
    """Those of *task_ids* not final yet (another stop may have ended them meanwhile)."""
    rows = {row.task_id: row for row in store.tasks(run_id)}
    return [t for t in task_ids if t in rows and not rows[t].state.is_final]


def _block_dependents(store: Store, run_id: str) -> None:
    """Mark ``blocked`` the pending tasks of *run_id* a dependency that did not succeed holds."""
    rows = store.tasks(run_id)
    scheduler = Scheduler([task_from_json(row.spec_json) for row in rows])
    states = {row.task_id: row.state for row in rows}
    for task_id, reason in scheduler.newly_blocked(states).items():
        store.update_task(
            run_id, task_id, state=TaskState.BLOCKED, reason=reason, ended_at=time.time()
        )


def end_if_final(repo: git.Repo, store: Store, run_id: str) -> bool:
    """Whether every task of *run_id* is final; if so, a run still marked running is ended.

    For a run whose manager is gone: finished, or stopped when a task was. Its guard died
    before its last scan: the object files it held (kept on disk by those links) are let go,
    what it was putting back (remote-tracking refs, a task worktree moved) is put back, and
    its copies of the checkouts' indexes are deleted.
    """
    rows = store.tasks(run_id)
    if not rows or not all(row.state.is_final for row in rows):
        return False
    run = store.get_run(run_id)
    if run is not None and run.status == RunStatus.RUNNING:
        stopped = any(row.state is TaskState.STOPPED for row in rows)
        store.finish_run(run_id, status=RunStatus.STOPPED if stopped else RunStatus.FINISHED)
        held_files.let_go(guard_dir(repo, run_id) / held_files.HELD)
        retry.settle_guard(repo, store, run_id)  # what its guard was at
        # The store stays with the tree of your checkout's last baseline: a retry's manager
        # tells what changed in your checkout since.
        snapshot.drop_baselines(guard_dir(repo, run_id), keep_base=True)
        scrub_ended(repo, store, run_id)
    return True


def scrub_ended(
    repo: git.Repo, store: Store, run_id: str, task_ids: Sequence[str] | None = None
) -> None:
    """Redact what ended tasks' agents, setup and checks wrote, as their manager would have.

    *task_ids*: tasks whose programs are gone, in their directories; None: the whole run's
    directory (the findings too), for a run that ended without its manager.
    """
    # a task's secret can show in another's log, or a note
    know_secrets_of(repo.root, [task_from_json(row.spec_json) for row in store.tasks(run_id)])
    root = run_dir(repo, run_id)
    if task_ids is None:  # not a `swarm merge`'s directory: it may run, and redacts its own
        scrub.scrub_tree(root, skip=(*SCRUB_SKIP, "merge"))
    for task_id in task_ids or ():
        scrub.scrub_tree(root / task_id, skip=TASK_SCRUB_SKIP)


def stop_unmanaged(
    repo: git.Repo,
    store: Store,
    run_id: str,
    targets: Sequence[str],
    *,
    grace: float = 5.0,
    announce: bool = False,
    tell: Callable[[str], None] | None = None,
) -> Stopped:
    """Stop *targets* of a run no manager watches: kill, checkpoint, mark stopped.

    One such stop at a time (`swarm stop`, `run --force`, doctor): two would checkpoint the
    same worktree at once. The agents' trees are killed together, each given *grace*. Then
    git's files are judged as a resume would (:func:`.unwatched.judge_git_files`, *tell*).
    Returns the tasks whose agents it stopped (or that never ran; not one that had ended by
    itself), and git's files it put back.
    """
    stopping = filelock.FileLock(repo.state_dir / STOP_LOCK, thread_local=False)
    try:
        # Another stop kills and checkpoints within its grace per agent: a lock held longer
        # is no stop's (an agent's, outside --sandbox), and waits for nothing.
        stopping.acquire(timeout=STOP_WAIT)
    except filelock.Timeout:
        raise SwarmError(
            f"{stopping.lock_file} has been held for {STOP_WAIT:.0f}s (another `swarm stop`?);"
            " try again"
        ) from None
    try:
        todo = _not_final(store, run_id, targets)
        stopped = _stop_unmanaged(repo, store, run_id, todo, grace, announce=announce, tell=tell)
        scrub_ended(repo, store, run_id, todo)  # their logs, as their manager's end would
        return stopped
    finally:
        stopping.release()


def _stop_unmanaged(
    repo: git.Repo,
    store: Store,
    run_id: str,
    targets: Sequence[str],
    grace: float,
    *,
    announce: bool,
    tell: Callable[[str], None] | None,
) -> Stopped:
    run = store.get_run(run_id)
    if run is not None and run.settings.executor is Executor.RAY:  # agents on cluster nodes
        from worktree_swarm.run import ray_stop  # noqa: PLC0415 - Ray only for such runs

        ray_stop.stop_unmanaged(repo, store, run_id, targets, spec=run.settings)
        states = {row.task_id: row.state for row in store.tasks(run_id)}
        return Stopped(tasks=tuple(t for t in targets if states.get(t) is TaskState.STOPPED))
    rows = {row.task_id: row for row in store.tasks(run_id)}
    # Cut short on record (timed out), its manager dead in what came after: it ends so.
    cuts = {t: unwatched.cut_on_record(rows[t], store.attempts(run_id, t)) for t in targets}
    ended, outlived = _kill_left(repo, store, rows, targets, grace)
    put_back: tuple[str, ...] = ()
    if not announce:  # beside a live manager, its guard judges git's files
        put_back = unwatched.judge_git_files(repo, store, run_id, tell, outlived=outlived)
    # A suspect of an outside write its manager judged before it died (or the judgement
    # above) fails, stopped or not.
    verdicts, _ = retry.since_last_retry(
        store, run_id, {t for t, r in rows.items() if r.state.is_final}
    )
    stopped: list[str] = []
    for task_id in targets:
        task = task_from_json(rows[task_id].spec_json)
        fails, left = stop_windup.wind_up(
            repo, store, rows[task_id], task, announce=announce, tell=tell
        )
        as_ended = unwatched.as_it_ended(store.task(run_id, task_id), task, ended[task_id])
        state, why = (
            (TaskState.FAILED, verdicts[task_id])
            if task_id in verdicts
            else cuts[task_id] or as_ended
        )
        if fails is not None and task_id not in verdicts:  # failed, as its manager fails it
            state, why = TaskState.FAILED, fails
        why = why if left is None else f"{why}; {left}"
        store.update_task(run_id, task_id, state=state, reason=why, ended_at=time.time())
        # Its agent killed here (or none ran), failed or not; or recorded stopped (one that
        # had ended by itself before its checks).
        if (ended[task_id] is None and cuts[task_id] is None) or state is TaskState.STOPPED:
            stopped.append(task_id)
    return Stopped(tasks=tuple(stopped), put_back=put_back)


def _kill_left(
    repo: git.Repo, store: Store, rows: Mapping[str, TaskRow], targets: Sequence[str], grace: float
) -> tuple[dict[str, AgentResult | None], set[str]]:
    """Kill what *targets* left running (agents, setup and checks); how each agent went.

    None for one that was stopped; its result for one that had ended by itself (unwatched, or
    its end recorded by a manager that died after). And the tasks whose agents outlived their
    manager: found running here, or their shims recorded an end no manager recorded.
    """
    began = time.time()
    ended: dict[str, AgentResult | None] = {}  # how an agent that ended unwatched went
    outlived: set[str] = set()
    open_attempts: list[AttemptRow] = []
    for task_id in targets:
        task = task_from_json(rows[task_id].spec_json)
        attempts = store.attempts(rows[task_id].run_id, task_id)
        # Its end recorded, its manager dead in what came after (its checkpoint, say).
        ended[task_id] = unwatched.ended_on_record(rows[task_id], attempts)
        for attempt in attempts:
            if attempt.ended_at is None:
                # Read as the agent it ran (a fallback's, maybe) would be.
                agent = attempt.agent or task.agent
                ended[task_id] = unwatched.ended_by_itself(store, attempt, agent)
                open_attempts.append(attempt)
        if unwatched.outlived(repo, rows[task_id], attempts):  # before it is killed
            outlived.add(task_id)
    # What they left, or all of them: at once, so that N agents take one grace, not N.
    # Each with its task's worktree: a leftover there is its tree's, its environment wiped.
    kills = [
        (
            ProcessIdentity(pid=a.pid, create_time=a.create_time, pgid=a.pgid),
            _worktree_of(rows[a.task_id]),
        )
        for a in open_attempts
    ]
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(kills)))) as pool:
        list(pool.map(lambda k: proctree.kill_tree(k[0], grace=grace, within=k[1]), kills))
    for attempt in open_attempts:
        if ended[attempt.task_id] is None:
            store.end_attempt(attempt.id, exit_code=None, outcome=AttemptOutcome.STOPPED.value)
    for task_id in targets:
        row = rows[task_id]
        _kill_steps(
            repo.state_dir / "runs" / row.run_id / task_id, within=_worktree_of(row), grace=grace
        )
        worktree = Path(row.worktree)
        # An agent its manager launched but was killed before recording.
        stray = (
            provision.unrecorded_agent(row.run_id, task_id, worktree) if worktree.is_dir() else None
        )
        if stray is not None:
            outlived.add(task_id)
            proctree.kill_tree(stray, grace=grace, within=_worktree_of(row))
        agent = task_from_json(row.spec_json).agent
        by_itself = unwatched.record_launch(repo, store, row, stray, agent, since=began)
        ended[task_id] = ended[task_id] or by_itself
    return ended, outlived


def _worktree_of(row: TaskRow) -> tuple[Path, ...]:
    """The task's worktree, as :func:`proctree.kill_tree` takes it (none recorded: none)."""
    return (Path(row.worktree),) if row.worktree else ()


def _kill_steps(task_logs: Path, *, within: Sequence[Path], grace: float) -> None:
    """Kill what still runs under shims recorded in *task_logs* (setup steps, checks).

    Oldest first, so each shim goes before its descendants and kills them itself; then the
    group of each shim that died before it could (see :func:`proc_scan.kill_shim_group`:
    *within*, the task's worktree, finds a member started with its environment wiped).
    """
    proc_scan.kill_left_in(task_logs, grace=grace, within=within, strict=True)


def _wait_final(
    repo: git.Repo,
    store: Store,
    run_id: str,
    task_ids: Sequence[str],
    *,
    deadline: float,
    frozen: Callable[[], bool] | None = None,
    patience: float = 0.0,
) -> list[str]:
    """Wait until the manager has recorded every task as final; those it has not.

    Returns early when the manager is gone (it died before it stopped them), or *frozen*
    (stopped) for *patience* seconds on end.
    """
    frozen_since: float | None = None
    while True:
        rows = {row.task_id: row for row in store.tasks(run_id)}
        left = [t for t in task_ids if not rows[t].state.is_final]
        now = time.monotonic()
        if not left or now >= deadline or not lock.manager_alive(repo.state_dir):
            return left
        if frozen is not None and frozen():
            frozen_since = now if frozen_since is None else frozen_since
            if now - frozen_since >= patience:
                return left
        else:
            frozen_since = None
        time.sleep(0.1)
