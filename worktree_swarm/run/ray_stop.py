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
from pathlib import Path
from typing import Any

from worktree_swarm.agents.base import AgentResult
from worktree_swarm.core.models import AttemptOutcome, ProcessIdentity, TaskState
from worktree_swarm.core.paths import run_dir
from worktree_swarm.core.run_settings import RunSettings
from worktree_swarm.core.task import BRANCH_PREFIX
from worktree_swarm.git import committed_secrets
from worktree_swarm.git import remotes as git_remotes
from worktree_swarm.git import repo as git
from worktree_swarm.git.leaks import Leak
from worktree_swarm.infra.logtail import copy_anew
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import AttemptRow, TaskRow, task_from_json
from worktree_swarm.run.ray_actors import actor_name, namespace
from worktree_swarm.run.ray_cluster import connect, head_problem, ray_module
from worktree_swarm.run.ray_node import Progress
from worktree_swarm.run.ray_preflight import remote_url
from worktree_swarm.run.stop_windup import record_diff
from worktree_swarm.run.unwatched import (
    as_it_ended,
    as_logged,
    cut_on_record,
    end_as_logged,
    ended_on_record,
)


def stop_unmanaged(
    repo: git.Repo, store: Store, run_id: str, targets: Sequence[str], *, spec: RunSettings
) -> None:
    """Stop *targets* of a Ray run no manager watches: on their nodes, pushed, then marked.

    Each open attempt's actor (and one a killed manager launched without recording it, its
    attempt recorded first once its agent started) stops its agent's whole tree, pushes the
    checkpoint and is removed; the branch is fetched here.
    An attempt is recorded with what its log (copied here) says its agent used; one whose
    agent had ended by itself, as it ended (:func:`_stop_attempt`). The node looks through
    the agent's own commits for its own secrets, as at an attempt's end; those it finds are
    recorded once the branch is fetched here; so are those holding one of this shell's.
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
        opened = {a.id: a for a in attempts}
        own = task_from_json(row.spec_json).agent if row is not None else ""
        # Since its last recorded tip, as an attempt's end looks (None: nothing to look at).
        looks = (
            (row.tip_commit or row.base_commit, row.base_commit)
            if row and row.base_commit
            else None
        )
        found: list[Leak] = []
        for number, attempt_id in sorted(numbers.items()):
            actor = _actor(task_id, number, run_id) if problem is None else None
            attempt = opened.get(attempt_id)  # None: launched, never recorded
            if attempt is None and actor is not None and row is not None:
                attempt = _record_launch(repo, store, row, number, actor, own)
            # Read as the agent it ran (a fallback's, maybe) would be.
            agent = (attempt.agent if attempt is not None else None) or own
            named = f"{task_id} attempt {number}"
            by_itself, leaks = _stop_attempt(
                store, actor, attempt, agent, named, reason, spec, looks=looks
            )
            ended, found = by_itself or ended, found + leaks
        branch = f"{BRANCH_PREFIX}{task_id}"
        git.git(
            repo.root,
            "fetch", "--quiet", "--no-tags", "--", url, f"+refs/heads/{branch}:refs/heads/{branch}",
            check=False,
        )  # fmt: skip
        tip = git.rev_parse(repo, branch)
        committed_secrets.record(store, run_id, task_id, found)  # now here, in its branch
        if row is not None:  # and for this shell's secrets, as a local stop looks
            task = task_from_json(row.spec_json)
            committed_secrets.record_unlooked(repo, store, row, task, tip, env=os.environ)
        if row is not None:  # its diff and tip, as a local stop records them
            record_diff(repo, store, row, tip)
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


def _record_launch(
    repo: git.Repo,
    store: Store,
    row: TaskRow,
    number: int,
    actor: Any,  # noqa: ANN401 - a Ray handle
    own: str,
) -> AttemptRow | None:
    """Record attempt *number*, launched on *actor* by a dead coordinator that did not record it.

    As a local stop records such a launch (:func:`.unwatched.record_launch`): then ended as
    any open attempt, with what its agent used. Its agent's profile is the one launched
    (*own*, the task's, when not on record). None when its agent never started (its actor
    still cloning or in setup): no attempt ran.
    """
    try:
        progress: Progress = ray_module().get(actor.poll.remote(), timeout=60)
    except Exception:  # noqa: BLE001 - not started (or gone): nothing ran
        return None
    log = run_dir(repo, row.run_id) / row.task_id / f"attempt-{number}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    attempt_id = store.record_attempt(
        row.run_id,
        row.task_id,
        number=number,
        identity=ProcessIdentity(pid=0, create_time=0.0, pgid=0),  # on another machine
        log_path=str(log),
        started_at=progress.started_at or time.time(),
        agent=row.launching_agent or own,
    )
    return next(a for a in store.attempts(row.run_id, row.task_id) if a.id == attempt_id)


def _actor(task_id: str, number: int, run_id: str) -> Any:  # noqa: ANN401 - a Ray handle
    """The actor of attempt *number*, or None: gone with its node, or never made."""
    ray = ray_module()
    try:
        return ray.get_actor(actor_name(task_id, number), namespace=namespace(run_id))
    except ValueError:
        return None


def _stop_attempt(
    store: Store,
    actor: Any,  # noqa: ANN401 - a Ray handle
    attempt: AttemptRow | None,
    agent: str,
    named: str,
    reason: str,
    spec: RunSettings,
    *,
    looks: tuple[str, str] | None,
) -> tuple[AgentResult | None, list[Leak]]:
    """Stop an open attempt's agent on its node (*actor*, if there), and record its end.

    *named*: "TASK attempt N", as its checkpoint names it; *attempt*: its row (None: a
    launch never recorded). Its log, copied here whole once it ended, tells what it used;
    one whose agent ended by itself is recorded as it ended (as a local stop records one),
    its result returned; any other ends stopped with *reason*. Its actor pushes its
    checkpoint and looks through its agent's own commits since *looks* (since, base) for its
    node's secrets (returned, to record once fetched) before that end is recorded; then it is
    taken down, unless its log could not be copied here whole.
    """
    ended: Progress | None = None  # its agent's end, when it ended by itself
    leaks: list[Leak] = []
    copied = True
    if actor is not None:
        ray = ray_module()
        with contextlib.suppress(Exception):  # a dead actor has nothing to stop
            progress: Progress = ray.get(actor.poll.remote(), timeout=60)
            ended = progress if progress.ended and not progress.stopped else None
        if ended is None:
            with contextlib.suppress(Exception):
                ray.get(actor.stop.remote(), timeout=spec.kill_grace + 60)
        if attempt is not None:
            copied = _copy_log(actor, Path(attempt.log_path))
    # Read, not recorded: its end is recorded once its work is pushed and looked through, so
    # a stop killed before then finds it open and does it all again.
    code = ended.exit_code if ended is not None else None
    read = (
        as_logged(attempt, agent, exit_code=code)
        if attempt is not None and ended is not None
        else None
    )
    if actor is not None:
        how = "stopped" if read is None else read.outcome.value
        message = f"swarm: checkpoint {named} ({how})"
        with contextlib.suppress(Exception):
            ray_module().get(actor.finish.remote(message=message), timeout=120)
        if looks is not None:
            leaks = _node_leaks(actor, *looks)
    result: AgentResult | None = None
    if attempt is not None and ended is not None:
        # As it ended: when its node saw it end, not when this stop came.
        result = end_as_logged(store, attempt, agent, exit_code=code, ended_at=ended.ended_at)
    elif attempt is not None:
        cut = (AttemptOutcome.STOPPED, reason)
        end_as_logged(store, attempt, agent, exit_code=None, cut=cut)
    if actor is not None and copied:  # else its log is still there, whole
        _take_down(actor)
    return result, leaks


def _node_leaks(actor: Any, since: str, base: str) -> list[Leak]:  # noqa: ANN401 - a Ray handle
    """The agent's own commits holding a secret of its node's, as its node found them."""
    with contextlib.suppress(Exception):  # gone meanwhile: what was pushed is fetched all the same
        found = ray_module().get(actor.own_commits.remote(since=since, base=base), timeout=120)
        return committed_secrets.handed_back(found)
    return []


def _copy_log(actor: Any, log: Path) -> bool:  # noqa: ANN401 - a Ray handle
    """Copy the ended agent's log here anew, once its node redacted it whole (as an end's is).

    False when it could not be copied whole (gone meanwhile): the copy here is kept as it was.
    """
    ray = ray_module()
    try:
        ray.get(actor.scrub_log.remote(), timeout=60)
        copy_anew(log, lambda offset: ray.get(actor.tail.remote(offset), timeout=60))
    except Exception:  # noqa: BLE001 - gone, or not answering: what was copied is kept
        return False
    return True


def _discard_actor(task_id: str, number: int, run_id: str) -> None:
    """Take down the actor of attempt *number*, if there, whose end is on record: it is over."""
    actor = _actor(task_id, number, run_id)
    if actor is not None:  # not gone with its node, nor retired
        _take_down(actor)


def _take_down(actor: Any) -> None:  # noqa: ANN401 - a Ray handle
    """Have *actor* delete its clone, then kill it."""
    ray = ray_module()
    with contextlib.suppress(Exception):
        ray.get(actor.discard.remote(), timeout=30)
    with contextlib.suppress(Exception):
        ray.kill(actor)
