"""After an attempt: its checkpoint, and what in its worktree ends the task.

The checkpoint commits the attempt's edits to the task's branch, whatever happens next.
Around it the worktree is looked at: removed or moved, unreadable, pointed at another
checkout or branch, links planted where git writes, setuid programs (disarmed), files past
``max_file``, work left in a submodule.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from worktree_swarm.core.errors import GitStartError
from worktree_swarm.core.models import TaskState
from worktree_swarm.core.task import Task
from worktree_swarm.core.text import paths_text
from worktree_swarm.git import (
    checkpoints,
    diffs,
    gitfiles,
    local_files,
    status,
    tampering,
)
from worktree_swarm.git import repo as git
from worktree_swarm.guard.model import Violation
from worktree_swarm.infra import faults, fs
from worktree_swarm.run import task_checkpoint
from worktree_swarm.run.agent_watch import Ended
from worktree_swarm.run.run_worker import RunWorker, TaskOutcome


class Checkpoints(RunWorker):
    """Checks and checkpoints what an attempt left (a task worker's part)."""

    def _after_attempt(
        self,
        task: Task,
        path: Path,
        base: str,
        number: int,
        ended: Ended,
        *,
        agent: str,
        ran: Collection[str],
    ) -> tuple[diffs.DiffStat, TaskOutcome | None]:
        """Guard checks and the checkpoint; an outcome when the attempt ends the task.

        *agent* ran the attempt: the task's own, or a fallback that took over. The own files
        of its tool and of every agent in *ran* (the task's agents so far) stay out.
        """
        lost = self.guard.worktree_lost(task.id)  # first: it may put the worktree back
        if lost is not None:
            return self._failed_before_checkpoint(task, base, _lost_reason(task, lost))
        if fs.sealed(path):  # no git can work there
            return self._failed_before_checkpoint(task, base, sealed_reason(path))
        admin = tampering.own_admin(self.repo, path)
        changed = None if admin is not None else tampering.tampered(self.repo, path)
        if changed is not None:  # git there would commit onto another checkout or branch
            return self._failed_before_checkpoint(task, base, tampering.left_uncommitted(changed))
        planted = tampering.unplant(self.repo, path, task.branch, admin=admin)  # before git
        switched = self.guard.own_head(task.id, path, task.branch)
        self.guard.after_attempt()  # git's files, the stash, objects: before the checkpoint
        self._record_committed_secrets(task, path, base)  # before it: the agent's own commits
        stat, armed = self._checkpoint_disarmed(
            task, path, base, number, ended, agent=agent, ran=ran
        )
        if switched is not None:
            return stat, TaskOutcome(state=TaskState.FAILED, reason=switched.reason(task.id))
        if planted:
            reason = f"planted links where git writes ({', '.join(planted)}); removed first"
            return stat, TaskOutcome(state=TaskState.FAILED, reason=reason)
        if armed:
            return stat, TaskOutcome(state=TaskState.FAILED, reason=tampering.setuid_reason(armed))
        if ended.cut_short is not None:
            return stat, TaskOutcome(state=ended.cut_short, reason=ended.reason)
        big = diffs.over_size(self.repo, stat, self.spec.max_file)
        if big:  # committed by the agent itself: a push of the branch would be refused
            return stat, TaskOutcome(
                state=TaskState.FAILED, reason=diffs.over_size_reason(big, self.spec.max_file)
            )
        left = status.submodule_work(path)
        if left:  # kept by `swarm clean` too: the task must not look done with it unsaved
            return stat, TaskOutcome(
                state=TaskState.FAILED,
                reason=f"left work in submodule {paths_text(left)}, which no commit of "
                f"{task.branch} can hold; it stays in {path}",
            )
        return stat, None

    def _record_committed_secrets(self, task: Task, path: Path, base: str) -> None:
        """Record the agent's own commits holding a secret (:meth:`_record_own_commits`).

        No git runs unless the agent committed itself (its HEAD moved from the recorded tip).
        """
        self._record_own_commits(task, base, gitfiles.head_in(path))

    def _failed_before_checkpoint(
        self, task: Task, base: str, reason: str
    ) -> tuple[diffs.DiffStat, TaskOutcome]:
        """The task failed for *reason* before its checkpoint, its worktree unfit for git.

        The commits its agent made itself on its branch are recorded all the same: the branch
        keeps them, and `swarm merge` of the task would take them (:meth:`_record_own_commits`
        of the branch's tip: the worktree's HEAD is gone, unreadable or another checkout's).
        """
        tip = git.rev_parse(self.repo, f"refs/heads/{task.branch}^{{commit}}")
        self._record_own_commits(task, base, tip)
        return _failed_uncommitted(reason)

    def _checkpoint_disarmed(
        self,
        task: Task,
        path: Path,
        base: str,
        number: int,
        ended: Ended,
        *,
        agent: str,
        ran: Collection[str],
    ) -> tuple[diffs.DiffStat, list[str]]:
        """The checkpoint's diff stat, and the setuid programs of the attempt disarmed.

        Those it committed (the diff stat names them: no git process of its own), and when it
        left some out (a file past max_file, one holding a secret's value: they stay in the
        worktree) or failed, those git is asked for.
        """
        try:
            stat = self._checkpoint(task, path, base, number, ended, agent=agent, ran=ran)
        except checkpoints.LeftOutError:  # its files stay in the worktree, as git status lists them
            tampering.disarm_setuid(self.repo, path, base, also=status.status_paths(path))
            raise
        except BaseException:
            tampering.disarm_setuid(self.repo, path, base)
            raise
        changed = [name for name, _ in stat.blobs]
        return stat, tampering.disarm_setuid(self.repo, path, base, changed)

    def _checkpoint(
        self,
        task: Task,
        path: Path,
        base: str,
        number: int,
        ended: Ended,
        *,
        agent: str,
        ran: Collection[str],
    ) -> diffs.DiffStat:
        """Commit the attempt's edits (by *agent*) to the task's branch; record the diff stat.

        Left out: the own files of *agent*'s tool and of every agent in *ran* (after a
        hand-over, those the agents before it left in the worktree).
        """
        message = (
            f"swarm: checkpoint {task.id} attempt {number} "
            f"({ended.cut_short or ended.result.outcome})"
            + checkpoints.trailers(task.id, number, agent)
        )
        try:
            tip = faults.retry_while_full(  # on a full disk the work waits in the worktree
                lambda: checkpoints.checkpoint(
                    path,
                    message=message,
                    author=self.spec.commit_author,
                    # `copy` files are local (.env, keys): like the links, never on the branch.
                    exclude=local_files.local_paths(
                        path, link=task.link, copy=task.copy, base=base
                    ),
                    droppings=task_checkpoint.droppings({agent, *ran}),
                    report_secrets=True,  # the task fails, saying so
                    max_file=self.spec.max_file,
                    agent_ran=True,
                    branch=task.branch,
                ),
                self.store.on_full,
            )
        except checkpoints.LeftOutError as exc:  # the task fails, saying so; the rest is committed
            self._record_diff(task.id, base, exc.head or gitfiles.head_in(path) or base)
            raise
        except GitStartError as exc:  # retried already: the agent's own reason stays told
            told = ended.reason or ended.result.reason
            failed = f"its checkpoint failed ({exc}): its work is left uncommitted in {path}"
            msg = f"{told}; {failed}" if told else failed
            raise GitStartError(f"{msg}; `swarm retry` commits it") from exc
        return self._record_diff(task.id, base, tip or gitfiles.head_in(path) or base)


def sealed_reason(path: Path) -> str:
    """Why a task whose worktree *path* its reader may not enter is not done."""
    return (
        f"its worktree {path} cannot be read (its agent's `chmod`?): its work since the last "
        f"checkpoint is left there, uncommitted; `chmod u+rwx {path}` gives it back"
    )


def _failed_uncommitted(reason: str) -> tuple[diffs.DiffStat, TaskOutcome]:
    """The task failed for *reason* before its checkpoint: nothing committed."""
    return diffs.DiffStat(files=0, insertions=0, deletions=0), TaskOutcome(
        state=TaskState.FAILED, reason=reason
    )


def _lost_reason(task: Task, lost: Violation) -> str:
    """Why a task whose worktree went while its agent worked is not done.

    The worktree root gone with it names no suspect: every task's worktree went alike.
    """
    again = ", and the worktree made again from it" if lost.restored else ""
    if lost.root_gone:
        return (
            f"the worktree root {lost.root_gone} disappeared (unmounted or removed) while its "
            f"agent worked: the attempt's work since its last checkpoint went with it; "
            f"{task.branch} keeps what was committed{again}"
        )
    others = [s for s in lost.suspects if s != task.id]
    who = "by its own agent" if not others else f"by {' or '.join(others)}"
    if lost.worktree != "was removed":  # moved, and could not be moved back
        return (
            f"its worktree {lost.worktree} while its agent worked ({who}) and stays there: "
            f"its work since the last checkpoint is there, uncommitted"
        )
    return (
        f"its worktree was removed while its agent worked ({who}): the attempt's work since "
        f"its last checkpoint went with it; {task.branch} keeps what was committed{again}"
    )
