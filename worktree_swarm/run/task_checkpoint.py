"""The checkpoints of a task's worktree made outside its attempts.

`swarm stop`, `swarm clean`, `swarm retry --fresh`, and a finished worktree's removal for
``max_disk``. They name the agent that ran the task last (a fallback or the budget agent,
maybe), and leave out what the run's own checkpoints leave out; but `swarm clean` commits
the agent tools' own files (droppings) with the rest, as the worktree it removes must hold
nothing uncommitted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.agents import adapter_for
from worktree_swarm.core.task import Task
from worktree_swarm.git import checkpoints, gitfiles, local_files
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import TaskRow


def last_agent(store: Store, row: TaskRow, task: Task) -> str:
    """The agent of the task's latest attempt; the task's own before any (or unrecorded)."""
    attempts = store.attempts(row.run_id, row.task_id)
    return attempts[-1].agent if attempts and attempts[-1].agent else task.agent


def trailers(store: Store, row: TaskRow, task: Task) -> str:
    """The checkpoint trailers of *row*'s task: its attempts so far, the agent that ran last."""
    return checkpoints.trailers(row.task_id, row.attempts or None, last_agent(store, row, task))


@dataclass(frozen=True, slots=True)
class LeftOut:
    """What such a checkpoint leaves out, as :func:`checkpoints.checkpoint` takes it."""

    exclude: tuple[str, ...]  # the ``link`` symlinks and ``copy`` files (a `.env`): local
    droppings: tuple[str, ...]  # the own files of the agent tools that ran the task


def left_out(store: Store, row: TaskRow, task: Task, worktree: Path) -> LeftOut:
    """What a checkpoint of *row*'s *worktree* leaves out: never on the branch."""
    ran = {task.agent, *(a.agent for a in store.attempts(row.run_id, row.task_id) if a.agent)}
    exclude = local_files.local_paths(
        worktree, link=task.link, copy=task.copy, base=row.base_commit
    )
    return LeftOut(exclude=exclude, droppings=droppings(ran))


def droppings(agents: Iterable[str]) -> tuple[str, ...]:
    """The own files of the tools of *agents* (profile names), each pattern once."""
    return tuple(dict.fromkeys(p for agent in sorted(agents) for p in adapter_for(agent).droppings))


def onto(worktree: Path, branch: str) -> str | None:
    """The branch a checkpoint of *worktree* outside an attempt commits onto alone: *branch*.

    A worktree switched after its put-back on *branch* (by you, by an agent's leftover) had
    the work committed onto the branch it went to. None (`git commit`, onto HEAD) in a merge
    or cherry-pick its agent left staged, which only `git commit` concludes, as the run's own
    checkpoint does.
    """
    return None if gitfiles.mid_operation(worktree) else branch
