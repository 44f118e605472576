"""A stopped task's worktree wound up by `swarm stop` of a run no manager watches.

Made fit for git, put back on its task's branch and checkpointed there, as its manager's
guard and checkpoint would after an attempt; the agent's own commits looked through for
secrets first, or on its branch when its worktree is gone or no longer swarm's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from worktree_swarm.core.run_settings import DEFAULT_MAX_FILE
from worktree_swarm.core.task import Task
from worktree_swarm.git import (
    checkpoints,
    committed_secrets,
    diffs,
    gitfiles,
    local_files,
    status,
    tampering,
)
from worktree_swarm.git import repo as git
from worktree_swarm.guard import ref_moves
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import TaskRow
from worktree_swarm.report.run_info import commit_author, know_secrets_of
from worktree_swarm.run import provision, task_checkpoint


def wind_up(
    repo: git.Repo,
    store: Store,
    row: TaskRow,
    task: Task,
    *,
    announce: bool,
    tell: Callable[[str], None] | None = None,
) -> tuple[str | None, str | None]:
    """A stopped task's worktree made fit for git, and its work committed on its branch.

    Returns why the task fails for what its agent did there (None: nothing), and what the
    checkpoint left (None: nothing; *tell*: as :func:`_checkpoint_stopped`).
    """
    worktree = Path(row.worktree)
    if not worktree.is_dir():
        _record_branch_unlooked(repo, store, row, task)
        provision.free_worktree(repo, worktree, row.branch, populated=row.base_commit is not None)
        return None, None
    # Its `.git` pointed elsewhere (your git dir): git there would commit onto another
    # checkout or branch, and no git of swarm's runs there, as after an attempt.
    admin = tampering.own_admin(repo, worktree)
    changed = None if admin is not None else tampering.tampered(repo, worktree)
    if changed is not None:
        _record_branch_unlooked(repo, store, row, task)
        return tampering.left_uncommitted(changed), None
    # Nothing of git's below writes through a planted link.
    planted = [] if admin is None else tampering.unplant(repo, worktree, row.branch, admin=admin)
    # What the dead manager's git left: the locks of a checkpoint killed half-way, and a
    # checkout of a worktree it was making, still writing on if it was killed alone.
    provision.free_worktree(repo, worktree, row.branch, populated=row.base_commit is not None)
    # Switched by its agent: back on its branch, as its manager's guard does after each
    # attempt, so that the checkpoint commits onto it (not yours, nor one of no commit yet).
    where = None if admin is None else gitfiles.put_back_on(worktree, row.branch)
    left = _checkpoint_stopped(repo, store, row, task, announce=announce, tell=tell)
    if where is not None:
        return f"its agent switched its worktree from {row.branch} to {where}; put back", left
    if planted:  # as after an attempt: its work committed all the same
        return f"planted links where git writes ({', '.join(planted)}); removed first", left
    return None, left


def _record_branch_unlooked(repo: git.Repo, store: Store, row: TaskRow, task: Task) -> None:
    """Look through the agent's own commits on its branch, for a task ending with no checkpoint.

    Its worktree gone or no longer swarm's: the branch keeps the commits its agent made
    before, and the task ends here, so they are looked through now, as after an attempt, or
    never.
    """
    tip = git.rev_parse(repo, f"refs/heads/{row.branch}^{{commit}}")
    committed_secrets.record_unlooked(repo, store, row, task, tip, env=os.environ)


def _checkpoint_stopped(
    repo: git.Repo,
    store: Store,
    row: TaskRow,
    task: Task,
    *,
    announce: bool,
    tell: Callable[[str], None] | None = None,
) -> str | None:
    """Commit what a stopped task's agent left in its worktree; record the branch's diff.

    Returns what the checkpoint left out there, and why (a file over ``max_file``), and the
    setuid programs it disarmed there, if any. Onto the task's branch alone: a worktree
    switched meanwhile has nothing committed, which is returned too and told (*tell*).

    Announced beside another run's live manager (*announce*), whose guard watches this branch
    too: with none, nothing would hear it and the announcement would wait in vain.
    """
    worktree = Path(row.worktree)
    ref = f"refs/heads/{row.branch}"
    # Its own secrets too (its `env`, its `copy` files'): a file holding one stays out.
    know_secrets_of(repo.root, [task])
    told = ref_moves.moving_refs(repo, [ref]) if announce else contextlib.nullcontext()
    run = store.get_run(row.run_id)
    left: str | None = None
    left_out: tuple[str, ...] = ()
    kept = task_checkpoint.left_out(store, row, task, worktree)
    committed_secrets.record_unlooked(
        repo, store, row, task, gitfiles.head_in(worktree), env=os.environ
    )
    with told as moves:
        try:
            tip = checkpoints.checkpoint(
                worktree,
                message=f"swarm: checkpoint {row.task_id} (stopped)"
                + task_checkpoint.trailers(store, row, task),
                author=commit_author(store, row.run_id),
                exclude=kept.exclude,
                droppings=kept.droppings,
                max_file=run.settings.max_file if run is not None else DEFAULT_MAX_FILE,
                agent_ran=row.agent_started,  # else only swarm's checkout wrote there
                branch=row.branch,
                onto=task_checkpoint.onto(worktree, row.branch),
            )
        except checkpoints.LeftOutError as exc:  # the rest is committed; they stay in the worktree
            tip, left, left_out = exc.head, str(exc), tuple(status.status_paths(worktree))
        except checkpoints.SwitchedError as exc:  # nothing committed: its work stays there
            tip, left = git.rev_parse(repo, ref), str(exc)
            if tell is not None:
                tell(f"swarm: task {row.task_id}: {exc}")
        if moves is not None:
            moves.moved(ref, git.rev_parse(repo, ref))
    local_files.unlink_links(repo.root, worktree, task.link)
    record_diff(repo, store, row, tip or gitfiles.head_in(worktree))
    armed = []
    if row.base_commit:
        armed = tampering.disarm_setuid(repo, worktree, row.base_commit, also=left_out)
    if armed:
        left = "; ".join([*([left] if left else []), tampering.setuid_reason(armed)])
    return left


def record_diff(repo: git.Repo, store: Store, row: TaskRow, tip: str | None) -> None:
    """What the task's branch holds now, as its manager records it after each attempt."""
    if row.base_commit is None or tip is None:
        return
    stat = diffs.diff_stat(repo, row.base_commit, tip)
    store.update_task(
        row.run_id,
        row.task_id,
        diff_files=stat.files,
        diff_insertions=stat.insertions,
        diff_deletions=stat.deletions,
        tip_commit=tip,
    )
