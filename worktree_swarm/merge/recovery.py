"""What a `swarm merge` cut off in its checks left, undone; task records put back.

A merge killed while its checks ran leaves its commit on the target, recorded as being
checked: the next merge undoes it. An ``--into`` move refused at the end leaves the tasks
its checks marked: they are recorded as before.
"""

from __future__ import annotations

from collections.abc import Sequence

from worktree_swarm.merge.messages import merged_task
from worktree_swarm.merge.session import CHECKING, Candidate, Session, head_commit, run_git, undo


def as_before_checks(s: Session, order: Sequence[Candidate]) -> None:
    """After an ``--into`` move refused: the tasks its checks marked, as recorded before.

    Left marked, they read as cut off in their checks, and the next merge skipped them.
    """
    now = {row.task_id: row for row in s.store.tasks(s.run_id)}
    for c in order:
        row = now.get(c.task_id)
        if row is not None and row.merge_result == CHECKING and row.merge_target == s.target.branch:
            s.store.update_task(
                s.run_id, c.task_id, merge_result=c.row.merge_result,
                merge_target=c.row.merge_target, merge_commit=c.row.merge_commit,
                merge_detail=c.row.merge_detail,
            )  # fmt: skip


def undo_unchecked(s: Session) -> None:
    """Undo the merges a `swarm merge` killed during their checks left on the target.

    Whichever tasks this merge was asked for, but only while such a merge is still the
    target's last commit (nothing was merged on top of it since). Its task's merge result is
    cleared: merged and checked anew, now if it is a candidate, else by a later merge. With
    ``--into`` the branch never moved (it moves once, at the end): nothing to undo.
    """
    if s.target.temporary:
        return
    rows = [
        row
        for row in s.store.tasks(s.run_id)
        if row.merge_result == CHECKING and row.merge_target == s.target.branch
    ]
    head = head_commit(s.target.worktree)
    for row in rows:
        if row.merge_commit is None:  # killed between its commit and its checks' record
            pre = row.merge_detail
            # Swarm's merge commit of that task, not one you made on the target since.
            if pre and head != pre and _parent(s, head) == pre and _merges(s, head, row.task_id):
                undo(s, pre)
                head = pre
            s.store.forget_merge(s.run_id, row.task_id)
    unchecked = {r.merge_commit: (r.task_id, r.merge_detail) for r in rows if r.merge_commit}
    while head in unchecked:
        task_id, pre = unchecked.pop(head)
        if not pre:
            return
        undo(s, pre)
        s.store.forget_merge(s.run_id, task_id)
        head = pre


def _merges(s: Session, commit: str, task_id: str) -> bool:
    """Whether *commit* is swarm's merge (or squash) commit of task *task_id*."""
    subject = run_git(s, "log", "-1", "--format=%s", commit, "--").stdout.strip()
    return merged_task(subject) == task_id


def _parent(s: Session, commit: str) -> str | None:
    res = run_git(s, "rev-parse", "--verify", "--quiet", f"{commit}^1", check=False)
    return res.stdout.strip() or None
