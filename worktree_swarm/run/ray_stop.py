"""`swarm stop` of a Ray run that no manager watches: its attempts stopped on their nodes.

Each open attempt's actor stops its agent, pushes its checkpoint and goes; the branches are
fetched here and the tasks marked stopped, or as their last attempt ended where its end is on
record (its coordinator died after). With the cluster gone, the attempts end here only.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from typing import Any

from worktree_swarm.agents.base import AgentResult
from worktree_swarm.core.models import AttemptOutcome, TaskState
from worktree_swarm.core.run_settings import RunSettings
from worktree_swarm.core.task import BRANCH_PREFIX
from worktree_swarm.git import diffs
from worktree_swarm.git import remotes as git_remotes
from worktree_swarm.git import repo as git
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import AttemptRow, AttemptUsage, TaskRow, task_from_json
from worktree_swarm.run.ray_actors import actor_name, namespace
from worktree_swarm.run.ray_cluster import connect, head_problem, ray_module
from worktree_swarm.run.ray_preflight import remote_url
from worktree_swarm.run.unwatched import as_it_ended, cut_on_record, ended_on_record


def stop_unmanaged(
    repo: git.Repo, store: Store, run_id: str, targets: Sequence[str], *, spec: RunSettings
) -> None:
    """Stop *targets* of a Ray run no manager watches: on their nodes, pushed, then marked.

    Each open attempt's actor (and one a killed manager launched without recording it) stops
    its agent's whole tree, pushes the checkpoint and is removed; the branch is fetched here.
    With no cluster answering at its address (its head gone), nothing on the nodes can be
    reached (an agent there stopped with its actor, which ended with its node's raylet): the
    attempts end here, the branches are fetched as last pushed, and the reasons say so. A
    task whose last attempt its dead coordinator recorded ended (done, failed, timed out) ends
    so, as a local stop and a resume end it; the actor it left is taken down.
    """
    address = spec.ray_address or os.environ.get("RAY_ADDRESS", "")
    problem = head_problem(address)
    if problem is None:
        connect(spec.ray_address, lost_after=spec.lost_after)
        url = remote_url(repo, spec.remote)
        reason = "stopped"
    else:  # the remote is not the cluster: what was pushed is fetched all the same
        url = git_remotes.remote_location(repo, spec.remote)
        reason = (
            f"stopped without its Ray cluster (at {address}: {problem}); work kept on its "
            "branch as last pushed"
        )
    for task_id in targets:
        row = store.task(run_id, task_id)
        attempts = store.attempts(run_id, task_id)
        numbers, cut, ended = _on_record(row, attempts)
        if problem is None and (cut or ended):
            _discard_actor(task_id, attempts[-1].number, run_id)
        for number, attempt_id in sorted(numbers.items()):
            if problem is None:
                _stop_actor(task_id, number, run_id, spec)
            if attempt_id:
                store.end_attempt(
                    attempt_id,
                    exit_code=None,
                    outcome=AttemptOutcome.STOPPED.value,
                    usage=AttemptUsage(reason=reason),
                )
        branch = f"{BRANCH_PREFIX}{task_id}"
        git.git(
            repo.root,
            "fetch", "--quiet", "--no-tags", "--", url, f"+refs/heads/{branch}:refs/heads/{branch}",
            check=False,
        )  # fmt: skip
        tip = git.rev_parse(repo, branch)
        if row is not None and row.base_commit and tip:
            stat = diffs.diff_stat(repo, row.base_commit, tip)
            store.update_task(
                run_id,
                task_id,
                diff_files=stat.files,
                diff_insertions=stat.insertions,
                diff_deletions=stat.deletions,
            )
        state, why = TaskState.STOPPED, reason
        if row is not None and (cut or ended):
            task = task_from_json(row.spec_json)
            state, why = cut or as_it_ended(store.task(run_id, task_id), task, ended)
        store.update_task(
            run_id, task_id, state=state, reason=why, ended_at=time.time(), launching=None
        )


def _on_record(
    row: TaskRow | None, attempts: Sequence[AttemptRow]
) -> tuple[dict[int, int], tuple[TaskState, str] | None, AgentResult | None]:
    """What the store says of the task *row*: its open attempts, and how its last one ended.

    The open attempts by number, to their ids (0: one launched, never recorded); then the
    last attempt cut short, and ended, as on record (None: not so, or no row).
    """
    numbers = {a.number: a.id for a in attempts if a.ended_at is None}
    if row is None:
        return numbers, None, None
    if row.launching is not None:
        numbers.setdefault(row.launching, 0)
    # Its end on record, its coordinator dead in what came after (the fetch, its checks).
    return numbers, cut_on_record(row, attempts), ended_on_record(row, attempts)


def _stop_actor(task_id: str, number: int, run_id: str, spec: RunSettings) -> None:
    """Have the actor of attempt *number*, if there, stop its agent, push (if it started), go."""
    ray = ray_module()
    try:
        actor = ray.get_actor(actor_name(task_id, number), namespace=namespace(run_id))
    except ValueError:  # no such actor: gone with its node, or never made
        return
    message = f"swarm: checkpoint {task_id} attempt {number} (stopped)"
    with contextlib.suppress(Exception):  # a dead actor has nothing to stop
        ray.get(actor.stop.remote(), timeout=spec.kill_grace + 60)
        ray.get(actor.finish.remote(message=message), timeout=120)
    _take_down(actor)


def _discard_actor(task_id: str, number: int, run_id: str) -> None:
    """Take down the actor of attempt *number*, if there, whose end is on record: it is over."""
    ray = ray_module()
    try:
        actor = ray.get_actor(actor_name(task_id, number), namespace=namespace(run_id))
    except ValueError:  # gone with its node, or retired
        return
    _take_down(actor)


def _take_down(actor: Any) -> None:  # noqa: ANN401 - a Ray handle
    """Have *actor* delete its clone, then kill it."""
    ray = ray_module()
    with contextlib.suppress(Exception):
        ray.get(actor.discard.remote(), timeout=30)
    with contextlib.suppress(Exception):
        ray.kill(actor)
