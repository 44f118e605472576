"""`swarm stop`: stop agents (whole process trees) and keep their work."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from worktree_swarm import git, lock, supervisor, worktrees
from worktree_swarm.errors import BadInputError
from worktree_swarm.models import ProcessIdentity, TaskState
from worktree_swarm.status import commit_author, is_active
from worktree_swarm.store import Store, task_from_json


def stop(
    repo: git.Repo, store: Store, run_id: str, task_ids: Sequence[str], *, grace: float = 5.0
) -> list[str]:
    """Ask the manager to stop *task_ids* (all when empty); returns the tasks asked.

    When no manager is alive (it crashed), stop the recorded agent trees directly,
    checkpoint their worktrees and mark them stopped, so no work or process is left.
    """
    rows = {row.task_id: row for row in store.tasks(run_id)}
    for task_id in task_ids:
        if task_id not in rows:
            raise BadInputError(f"no task {task_id!r} in run {run_id}; `swarm status` lists them")
    targets = [t for t in (task_ids or rows) if not rows[t].state.is_final]
    for task_id in targets:
        store.update_task(run_id, task_id, stop_requested=True)
    if lock.manager_alive(repo.state_dir):
        _wait_final(store, run_id, targets, deadline=time.monotonic() + 2 * grace + 30)
        return targets
    for task_id in targets:
        for attempt in store.attempts(run_id, task_id):
            if attempt.ended_at is None:
                ident = ProcessIdentity(
                    pid=attempt.pid, create_time=attempt.create_time, pgid=attempt.pgid
                )
                supervisor.kill_tree(ident, grace=grace)
                store.end_attempt(attempt.id, exit_code=None, outcome=TaskState.STOPPED.value)
        _kill_steps(repo.state_dir / "runs" / run_id / task_id, grace=grace)
        worktree = Path(rows[task_id].worktree)
        if is_active(rows[task_id].state) and worktree.is_dir():
            links = task_from_json(rows[task_id].spec_json).link
            git.checkpoint(
                worktree,
                message=f"swarm: checkpoint {task_id} (stopped)",
                author=commit_author(store, run_id),
                exclude=links,
            )
            worktrees.unlink_links(repo.root, worktree, links)
        store.update_task(
            run_id, task_id, state=TaskState.STOPPED, reason="stopped", ended_at=time.time()
        )
    return targets


def _kill_steps(task_logs: Path, *, grace: float) -> None:
    """Kill what still runs under shims recorded in *task_logs* (setup steps, checks).

    Oldest first, so each shim goes before its descendants and kills them itself.
    """
    for process, _record in supervisor.marked_processes(task_logs):
        identity = supervisor.identity_of(process.pid)
        if identity is not None:
            supervisor.kill_tree(identity, grace=grace)


def _wait_final(store: Store, run_id: str, task_ids: Sequence[str], *, deadline: float) -> None:
    """Wait until the manager has recorded every task as final (its agents are gone)."""
    while time.monotonic() < deadline:
        rows = {row.task_id: row for row in store.tasks(run_id)}
        if all(rows[t].state.is_final for t in task_ids):
            return
        time.sleep(0.1)
