"""The checkpoints of a task's worktree made outside its attempts: stop, clean, retry --fresh.

They name the agent that ran the task last: a fallback or the budget agent, maybe.
"""

from __future__ import annotations

from worktree_swarm.core.task import Task
from worktree_swarm.git import checkpoints
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import TaskRow


def last_agent(store: Store, row: TaskRow, task: Task) -> str:
    """The agent of the task's latest attempt; the task's own before any (or unrecorded)."""
    attempts = store.attempts(row.run_id, row.task_id)
    return attempts[-1].agent if attempts and attempts[-1].agent else task.agent


def trailers(store: Store, row: TaskRow, task: Task) -> str:
    """The checkpoint trailers of *row*'s task: its attempts so far, the agent that ran last."""
    return checkpoints.trailers(row.task_id, row.attempts or None, last_agent(store, row, task))
