"""A run checked for the Ray executor before anything of it is made.

What a task asks that this executor does not do yet, a secret in a task's env, the remote the
nodes share, the cluster's agent slots and memory, and bubblewrap on every node: each refused
with a BadInputError that says what to do instead.
"""

from __future__ import annotations

from collections.abc import Callable

from worktree_swarm.core.errors import BadInputError, CommandError
from worktree_swarm.core.run_settings import RunSpec
from worktree_swarm.core.task import Task
from worktree_swarm.core.units import format_size
from worktree_swarm.git import repo as git
from worktree_swarm.git.remotes import remote_location, strip_userinfo
from worktree_swarm.infra import redact
from worktree_swarm.run.ray_actors import SLOT, on_every_node
from worktree_swarm.run.ray_cluster import connect, ray_module
from worktree_swarm.run.ray_node_host import node_name, sandbox_problem


def remote_url(repo: git.Repo, remote: str) -> str:
    """The URL the nodes clone from and push to: remote *remote*'s, or *remote* as a URL."""
    url = remote_location(repo, remote)
    try:
        git.git(repo.root, "ls-remote", "--heads", "--", url)
    except CommandError as exc:
        raise BadInputError(
            f"remote {strip_userinfo(remote)!r} ({strip_userinfo(url)}) cannot be "
            f"reached: {strip_userinfo(str(exc).splitlines()[0])}; the "
            "nodes clone from it and push to it (set --remote)"
        ) from None
    return url


_UNSUPPORTED: tuple[tuple[str, Callable[[Task], bool]], ...] = (
    ("copy", lambda t: bool(t.copy)),
    ("link", lambda t: bool(t.link)),
    ("sparse", lambda t: t.sparse and bool(t.files)),
    ("fallback", lambda t: bool(t.fallback or t.budget_agent)),
)


def preflight(repo: git.Repo, spec: RunSpec) -> str:
    """Validate a run for the Ray executor and join the cluster; the remote's URL.

    Raises BadInputError (nothing created yet) when Ray is missing, a task needs what this
    executor does not do yet, the remote cannot be reached or the cluster has no agent slots.
    """
    ray_module()
    for task in spec.tasks:
        for key, used in _UNSUPPORTED:
            if used(task):
                raise BadInputError(
                    f"task {task.id}: `{key}` is not supported with executor `ray` yet; "
                    "run it with --executor local"
                )
        for name, _value in task.env:
            if redact.is_secret_name(name):
                # Ray would carry it to the node in plain text.
                raise BadInputError(
                    f"task {task.id}: env {name} looks like a secret; with executor `ray` "
                    "provision it in the nodes' environment instead (docs/cluster.md)"
                )
    url = remote_url(repo, spec.remote)
    connect(spec.ray_address, lost_after=spec.lost_after)
    slots = ray_module().cluster_resources().get(SLOT, 0)
    if not slots:
        raise BadInputError(
            f"the Ray cluster offers no `{SLOT}` resource; start each node with "
            f"`ray start ... --resources '{{\"{SLOT}\": N}}'` (N agents at once)"
        )
    _check_memory(spec.ray_memory)
    if spec.sandbox:
        check_sandbox(spec.ray_address, lost_after=spec.lost_after)
    return url


def _check_memory(wanted: int) -> None:
    """Refuse a ``ray_memory`` no node with agent slots has: its tasks would wait for ever."""
    offered = [
        int(node.get("Resources", {}).get("memory", 0))
        for node in ray_module().nodes()
        if node.get("Alive") and node.get("Resources", {}).get(SLOT)
    ]
    if offered and wanted > max(offered):
        raise BadInputError(
            f"ray_memory {format_size(wanted)} is more than any node with agent slots offers"
            f" (at most {format_size(max(offered))}); lower it, or start nodes with more"
            " `--memory`"
        )


def check_sandbox(address: str, *, lost_after: float) -> None:
    """Raise BadInputError unless bubblewrap can sandbox agents on every node with slots.

    A node that joins later is checked by each attempt placed on it (the attempt fails,
    saying so). The cluster is joined here for the run: with its *lost_after* (a later join
    of the run's is a no-op).
    """
    connect(address, lost_after=lost_after)
    for node, problem in on_every_node(_node_sandbox_problem):
        if problem:
            raise BadInputError(f"node {node}: {problem}")


def _node_sandbox_problem() -> tuple[str, str]:
    """On a node: its name, and why it cannot sandbox agents (or ``""``)."""
    return node_name(), sandbox_problem()
