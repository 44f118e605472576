"""What attempts lost with their node left on a Ray cluster, found and removed for `swarm doctor`.

An attempt that ends removes its clone and logs from its node; one whose actor died with its
node (or its raylet) cannot, and its task's directory ``$SWARM_NODE_DIR/runs/<run>/<task>``
stays on that node when it comes back. A task directory that holds anything on a node where
no live actor of that task runs is such a leftover: its work is on the task's branch up to its
last push. Each node is asked by a Ray task pinned to it (the coordinator never reaches a
node's disk otherwise); the mirrors are caches shared by runs and are left alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from worktree_swarm.core.errors import SwarmError
from worktree_swarm.run.ray_actors import live_actors, on_every_node
from worktree_swarm.run.ray_cluster import connect
from worktree_swarm.run.ray_node_host import node_name, remove_task_dir, task_dirs

_ANY_NODE = ""  # an actor that did not say where it runs: maybe anywhere


@dataclass(frozen=True, slots=True, kw_only=True)
class Leftover:
    """A task directory on a node that no live attempt uses."""

    node: str
    run_id: str
    task_id: str
    path: str
    size: int


def find(run_ids: Sequence[str], *, address: str) -> list[Leftover]:
    """The leftovers of *run_ids* on every live node of the cluster at *address*.

    Raises BadInputError when Ray is missing or the cluster cannot be reached.
    """
    connect(address)
    live = live_actors(run_ids)
    found = []
    for name, dirs in on_every_node(task_dirs, tuple(run_ids)):
        for run_id, task_id, path, size in dirs:
            if {(run_id, task_id, name), (run_id, task_id, _ANY_NODE)} & live:
                continue  # an attempt of it runs there (or may): its work in progress
            found.append(Leftover(node=name, run_id=run_id, task_id=task_id, path=path, size=size))
    return found


def remove(leftover: Leftover, *, address: str) -> str:
    """Remove *leftover* from its node, unless an attempt of its task runs there now."""
    connect(address)
    run_id, task_id, node = leftover.run_id, leftover.task_id, leftover.node
    if {(run_id, task_id, node), (run_id, task_id, _ANY_NODE)} & live_actors([run_id]):
        raise SwarmError(f"an attempt of task {task_id} now runs on node {node}")
    removed = [path for path in on_every_node(_remove_if_named, node, run_id, task_id) if path]
    if not removed:
        raise SwarmError(f"node {node} is not in the cluster any more")
    return f"removed {removed[0]} from node {node}"


def _remove_if_named(node: str, run_id: str, task_id: str) -> str:
    """On a node: remove the task's directory if this is *node*; its path, or ``""``."""
    return remove_task_dir(run_id, task_id) if node_name() == node else ""
