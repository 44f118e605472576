"""Fallback and budget agents: who carries a task on when its agent cannot, and what it is told.

A task's chain is its agent followed by its ``fallback`` profiles. When the current agent's
provider is in a usage window, or the agent ran out of rate-limit retries, the next agent of
the chain whose provider is not in a window continues in the same worktree, from the last
checkpoint, with a hand-over prompt. Past the budget share, ``budget_agent`` takes over.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from worktree_swarm.agents import PROFILES, provider_of
from worktree_swarm.core.task import Task
from worktree_swarm.core.text import paths_text
from worktree_swarm.git import diffs
from worktree_swarm.git import repo as git
from worktree_swarm.infra.store_rows import AttemptRow
from worktree_swarm.run.governor import Gates

FILES_SHOWN = 30


def chain(task: Task) -> tuple[str, ...]:
    """The task's agent, then its fallbacks, each once."""
    return tuple(dict.fromkeys((task.agent, *task.fallback)))


def current_agent(task: Task, previous: Sequence[AttemptRow]) -> str:
    """The agent a resumed task was on: its last attempt's, when the task still allows it."""
    allowed = {*chain(task), task.budget_agent} - {""}
    for attempt in reversed(previous):
        if attempt.agent:
            return attempt.agent if attempt.agent in allowed else task.agent
    return task.agent


def next_agent(task: Task, agent: str, gates: Gates) -> str | None:
    """The next agent of the chain after *agent* whose provider is not in a usage window."""
    agents = chain(task)
    after = agents[agents.index(agent) + 1 :] if agent in agents else agents
    for candidate in after:
        if candidate != agent and gates.window_until(provider_of(candidate)) is None:
            return candidate
    return None


def economy_agent(task: Task, agent: str, gates: Gates) -> str | None:
    """The budget agent, when spending passed the budget share and the task is not on it."""
    if task.budget_agent and agent != task.budget_agent and gates.economy:
        return task.budget_agent
    return None


def task_for(task: Task, agent: str) -> Task:
    """*task* as run by *agent* (a profile name); unchanged for its own agent."""
    if agent == task.agent:
        return task
    return dataclasses.replace(task, agent=agent, agent_argv=PROFILES[agent])


def handover_prompt(
    *,
    task: Task,
    repo: git.Repo,
    base: str,
    tip: str,
    previous_agent: str,
    why: str,
    findings: Path,
) -> str:
    """The prompt of an agent taking over: what was done (diff stat, findings) and what is left."""
    stat = diffs.diff_stat(repo, base, tip)
    files = diffs.changed_paths(repo, base, tip)
    shown = paths_text(files[:FILES_SHOWN]) + (" ..." if len(files) > FILES_SHOWN else "")
    done = (
        f"{stat.files} files changed, +{stat.insertions} -{stat.deletions}: {shown}"
        if stat.files
        else "no files changed yet"
    )
    return (
        f"Another coding agent ({previous_agent}) worked on this task before you and had to stop"
        f" ({why}). Its work is committed in this worktree, on this branch.\n\n"
        f"## Done so far\n{done}\n(`git diff {base[:12]}` shows it in full.) Notes agents"
        f" left for each other are in {findings}, if it exists.\n\n"
        "## What is left\nEverything the task below asks for that the work above does not do"
        " yet. Check what is there, keep it, and finish the task; do not start over.\n\n"
        f"## The task\n{task.prompt}"
    )
