"""What `swarm watch` does to a run: stop, retry, pull request, merge (one function each).

Each action goes through the same library calls as its command, against the state store,
so the screen never becomes a second manager: a stop is a request the run's manager carries
out (or, with no manager alive, done directly), and a retry hands the task to a manager
started in the background.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.core.errors import unknown_task
from worktree_swarm.core.models import TaskState
from worktree_swarm.core.text import one_line
from worktree_swarm.git import repo as git
from worktree_swarm.infra import lock
from worktree_swarm.infra.store import Store
from worktree_swarm.merge.merge_report import MergeOutcome
from worktree_swarm.run import background, control
from worktree_swarm.run.retry import taken_message


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionResult:
    """What an action did, in one line for the screen."""

    ok: bool
    message: str


def stop(repo: git.Repo, store: Store, run_id: str, task_id: str) -> ActionResult:
    """Stop one task's agent (its whole process tree), keeping its work (`swarm stop TASK`)."""
    told: list[str] = []  # what its agents changed in git's files unwatched, put back
    done = control.stop(repo, store, run_id, [task_id], tell=told.append)
    if not done.tasks:
        said = "; ".join([f"{task_id} is not running", *(told or ["nothing to stop"])])
        return ActionResult(ok=False, message=said)
    said = "; ".join([f"stopped {task_id}; its work is on its branch", *told])
    return ActionResult(ok=True, message=said)


def retry(repo: git.Repo, store: Store, run_id: str, task_id: str) -> ActionResult:
    """Run a finished task again in its kept worktree: `swarm retry TASK --run RUN`, detached.

    The detached command puts the task back to pending (resuming the agent's session where it
    has one) and manages the new attempt; the watch goes on reading the store.
    """
    row = store.task(run_id, task_id)
    if row is None:
        raise unknown_task(task_id, run_id)
    if not row.state.is_final:
        return ActionResult(ok=False, message=f"{task_id} is {row.state.value}; stop it first")
    if row.state is TaskState.DONE:
        return ActionResult(ok=False, message=f"{task_id} is done; nothing to retry")
    later = store.taken_over(run_id).get(task_id)
    if later is not None:
        return ActionResult(ok=False, message=taken_message(row, later))
    if lock.manager_alive(repo.state_dir):
        return ActionResult(
            ok=False,
            message=f"a manager {lock.describe_holder(repo.state_dir)} runs this repository; "
            f"retry {task_id} once it has ended",
        )
    argv = ["-C", str(repo.root), "retry", task_id, "--run", run_id]
    pid, log = background.detach(repo, argv)
    return ActionResult(ok=True, message=f"retrying {task_id} (manager pid {pid}, log {log})")


def pull_request(
    repo: git.Repo, store: Store, run_id: str, task_id: str, *, checkout: Path | None = None
) -> ActionResult:
    """Push the task's branch and open or update its pull request (`swarm pr TASK`)."""
    from worktree_swarm.github import pr  # noqa: PLC0415 - only this action needs the GitHub client

    report = pr.push_and_open(repo, store, run_id, task_ids=[task_id], checkout=checkout)
    if report.failures:
        return ActionResult(ok=False, message=f"{task_id}: {report.failures[0].reason}")
    pull = report.pulls[0]
    return ActionResult(ok=True, message=f"{task_id}: PR #{pull.number} {pull.action} {pull.url}")


def merge(
    repo: git.Repo,
    store: Store,
    run_id: str,
    task_ids: Sequence[str],
    *,
    checkout: Path | None = None,
) -> ActionResult:
    """Merge *task_ids* into the run's integration branch (`swarm merge TASK...`)."""
    from worktree_swarm.merge import merge as merging  # noqa: PLC0415 - kept at this anchor

    report = merging.merge(repo, store, run_id, task_ids=task_ids, checkout=checkout)
    merged = [r.task_id for r in report.by_outcome(MergeOutcome.MERGED)]
    other = [f"{r.task_id} {r.outcome.value}{_why(r.reason)}" for r in report.results]
    other = [o for o, r in zip(other, report.results, strict=True) if r.task_id not in merged]
    text = f"merged into {report.target_branch}: {', '.join(merged) or 'nothing'}"
    if other:
        text += f"; {', '.join(other)}"
    return ActionResult(ok=report.ok, message=text)


def _why(reason: str) -> str:
    """`` (reason)`` on one line, cut; empty without one (a skipped task said nothing)."""
    return f" ({one_line(reason, limit=80)})" if reason else ""
