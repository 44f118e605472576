"""The attempts' actors on the Ray cluster: their class, names, errors, and work on every node.

Each attempt of the Ray executor is one named, detached :class:`NodeAgent` actor in its run's
namespace. This is what knows them by name, says which are alive, runs a function on every
node with agent slots, and turns what Ray raises from their calls into swarm's errors.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from worktree_swarm.core.errors import SwarmError
from worktree_swarm.run.ray_cluster import ray_module
from worktree_swarm.run.ray_node import NodeAgent
from worktree_swarm.run.ray_node_host import end_attempt, node_name

SLOT = "agent_slot"
# The actors' concurrency group of their own for probes: one answers while both of the
# default group's threads work (a check, and the stop sent to it).
PROBE_GROUP = "probe"


class NodeLostError(SwarmError):
    """The actor of an attempt, or its node, is gone."""


class UnansweredError(NodeLostError):
    """The actor of an attempt is there to Ray but has not answered for ``lost_after``."""


_actor_lock = threading.Lock()
_actor: list[Any] = []


def actor_class() -> Any:  # noqa: ANN401
    """NodeAgent as a Ray actor class (made once per process)."""
    with _actor_lock:
        if not _actor:
            _actor.append(ray_module().remote(concurrency_groups={PROBE_GROUP: 1})(NodeAgent))
        return _actor[0]


def namespace(run_id: str) -> str:
    """The Ray namespace of a run's actors."""
    return f"swarm-{run_id}"


def actor_name(task_id: str, attempt: int) -> str:
    """The name of the actor of one attempt (unique in its run's namespace)."""
    return f"{task_id}-{attempt}"


def on_every_node(function: Callable[..., Any], *args: object, timeout: float = 300.0) -> list[Any]:
    """*function* (*args*) run on every live node that offers agent slots, pinned to it."""
    ray = ray_module()
    from ray.util.scheduling_strategies import (  # noqa: PLC0415 - only this executor
        NodeAffinitySchedulingStrategy,
    )

    remote = ray.remote(num_cpus=0, max_retries=0)(function)
    refs = [
        remote.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        ).remote(*args)
        for node in ray.nodes()
        if node.get("Alive") and node.get("Resources", {}).get(SLOT)
    ]
    return list(ray.get(refs, timeout=timeout))


def live_actors(run_ids: Sequence[str]) -> set[tuple[str, str, str]]:
    """(run, task, node) of every live attempt's actor of *run_ids*; node ``""``: unknown.

    An actor that does not answer in time may be alive anywhere: its node is ``""``.
    """
    ray = ray_module()
    runs = {namespace(run_id): run_id for run_id in run_ids}
    live = set()
    for entry in ray.util.list_named_actors(all_namespaces=True):
        run_id = runs.get(entry["namespace"])
        task_id, _, attempt = str(entry["name"]).rpartition("-")
        if run_id is None or not task_id or not attempt.isdigit():
            continue
        try:
            actor = ray.get_actor(entry["name"], namespace=entry["namespace"])
            live.add((run_id, task_id, str(ray.get(actor.node.remote(), timeout=10))))
        except (ValueError, ray.exceptions.ActorDiedError):  # gone meanwhile, or dead
            continue
        except Exception:  # noqa: BLE001 - unreachable or slow: maybe alive
            live.add((run_id, task_id, ""))
    return live


def end_attempt_if_named(node: str, run_id: str, task_id: str, number: int, grace: float) -> None:
    """On a node: if this is *node*, end what attempt *number* of the task left here."""
    if node_name() == node:
        end_attempt(run_id, task_id, number, grace=grace)


def first_line(exc: BaseException, default: str) -> str:
    """The first line of *exc*'s text, or *default* when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else default


def node_side(exc: Exception) -> SwarmError:
    """What failed in a node-side method (a git error, say): the attempt fails with it."""
    if isinstance(exc, ray_module().exceptions.UnserializableException):
        # An error Ray cannot bring back: its last line says what it was.
        lines = [line for line in str(exc).splitlines() if line.strip()]
        return SwarmError(f"on its node: {lines[-1] if lines else 'an error'}")
    cause = getattr(exc, "cause", None)  # a RayTaskError: the method's own exception
    return SwarmError(str(cause) if cause else str(exc))
