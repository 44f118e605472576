"""`swarm doctor`'s look at Ray nodes: task directories no live attempt uses.

Only with Ray runs recorded: it asks every node of the cluster (the slow tests' part).
"""

from __future__ import annotations

from worktree_swarm.cleanup.findings import Action, Finding, Kind
from worktree_swarm.cleanup.orphan_context import Context
from worktree_swarm.core.errors import SwarmError
from worktree_swarm.core.run_settings import Executor
from worktree_swarm.core.task import BRANCH_PREFIX
from worktree_swarm.core.units import format_size


def node_clones(ctx: Context) -> list[Finding]:
    """Task directories on Ray nodes that no live attempt uses (attempts lost with a node)."""
    recorded = ctx.store.runs() if ctx.store is not None else []
    runs = [r for r in recorded if r.settings.executor is Executor.RAY]
    if not runs:
        return []
    from worktree_swarm.run import ray_leftovers  # noqa: PLC0415 - only with Ray runs

    address = runs[-1].settings.ray_address  # one cluster: the newest Ray run's
    try:
        leftovers = ray_leftovers.find([r.run_id for r in runs], address=address)
    except SwarmError as exc:
        return [
            Finding(
                kind=Kind.NODE_CLONE,
                target="ray cluster",
                reason=f"not checked: {exc}",
                action=Action.KEEP,
                fix="run `swarm doctor` again where the cluster can be reached",
                problem=False,
            )
        ]
    return [
        Finding(
            kind=Kind.NODE_CLONE,
            target=f"{left.node}:{left.path}",
            reason=f"task {left.task_id} of run {left.run_id} has no live attempt on node "
            f"{left.node} (one lost with its node?); {format_size(left.size)}",
            action=Action.REMOVE_NODE_CLONE,
            fix=f"remove it from node {left.node} (the task's work is on {BRANCH_PREFIX}"
            f"{left.task_id} up to its last push)",
            run_id=left.run_id,
            task_id=left.task_id,
            branch=f"{BRANCH_PREFIX}{left.task_id}",
            node=left.node,
        )
        for left in leftovers
    ]
