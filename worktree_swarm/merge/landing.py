"""Landing the task branches of a `swarm merge`, one after another, in its merge worktree.

Each is merged (``--no-ff``) or squashed; a conflict is left out, or handed to the task's
agent to resolve; the merge is checked, and undone when its checks fail; its result is
recorded on the task.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING

from worktree_swarm.core.run_settings import DEFAULT_MAX_FILE
from worktree_swarm.core.text import paths_text
from worktree_swarm.git import repo as git
from worktree_swarm.git import runner
from worktree_swarm.merge import conflicts
from worktree_swarm.merge.checks import (
    check_env,
    run_checks,
    task_env,
    untracked_noted,
    watched,
    wrote_outside,
)
from worktree_swarm.merge.merge_report import CheckResult, MergeOutcome, TaskResult
from worktree_swarm.merge.messages import (
    changes_message,
    merge_message,
    merged_task,
    squash_message,
)
from worktree_swarm.merge.resolve import run_resolver
from worktree_swarm.merge.session import (
    CHECKING,
    Candidate,
    Session,
    Strategy,
    head_commit,
    run_git,
    undo,
)
from worktree_swarm.merge.target import half_merged

if TYPE_CHECKING:
    import subprocess


def merge_all(s: Session, order: Sequence[Candidate]) -> None:
    """Merge the candidates in *order*; one whose dependency did not merge is skipped."""
    failed: set[str] = set()
    for c in order:
        missing = sorted(d for d in c.task.depends_on if d in failed)
        if missing:
            result = TaskResult(
                task_id=c.task_id,
                outcome=MergeOutcome.SKIPPED,
                reason=f"depends on {', '.join(missing)}, which did not merge",
            )
            failed.add(c.task_id)
        else:
            result = _merge_one(s, c)
            (s.landed if result.outcome is MergeOutcome.MERGED else failed).add(c.task_id)
            if s.target.temporary:
                s.unrecorded.append((c, result))
            else:  # each merge commit is on the integration branch already
                record(s, c, result)
        s.results.append(result)
        s.progress.finished(result)


def _merge_one(s: Session, c: Candidate) -> TaskResult:
    pre = head_commit(s.target.worktree)
    if (s.checks or c.task.checks) and not s.target.temporary:
        # The intent first: a merge killed once committed, before its checks were recorded,
        # is undone by the next merge, not taken for one already landed.
        s.store.update_task(
            s.run_id, c.task_id, merge_result=CHECKING, merge_target=s.target.branch,
            merge_commit=None, merge_detail=pre,
        )  # fmt: skip
    # What git writes is put right by the next merge when this one ends half-way (killed, a
    # full disk): a git merge or reset cut off leaves files that are no one's changes.
    with untracked_noted(s):
        return _merge_step(s, c, pre)


def _merge_step(s: Session, c: Candidate, pre: str) -> TaskResult:
    message = merge_message(c.task_id, c.row.branch)
    flags = ["--no-verify", "--no-gpg-sign", "--no-edit"]
    if s.strategy is Strategy.SQUASH:
        res = _squash(s, c, flags[:2])
    else:
        res = run_git(s, "merge", "--no-ff", *flags, "-m", message, c.tip, check=False)
    if res.returncode != 0:
        files = _unmerged(s, c.tip) or _unrecorded_conflict(s, c, res, pre)
        if files and s.resolve:
            return _resolve(s, c, pre, files)
        undo(s, pre)
        if files:
            return _conflicted(s, c, files)
        tail = " | ".join((res.stdout + res.stderr).strip().splitlines()[-3:])
        return TaskResult(
            task_id=c.task_id,
            outcome=MergeOutcome.FAILED,
            reason=f"git merge: {tail}{_gitmodules_cause(s, res.stderr)}",
        )
    if s.strategy is Strategy.SQUASH:
        if _nothing_staged(s):
            undo(s, pre)  # drops the squash message git left waiting
            return _held_already(s, c, pre)
        run_git(s, "commit", "--quiet", "--no-verify", "--no-gpg-sign", "-m",
             squash_message(c.task.title, c.task_id))  # fmt: skip
        return _check(s, c, pre, settled=_settled(s, c))
    head = head_commit(s.target.worktree)
    if head == pre:
        return _held_already(s, c, pre)
    return _check(s, c, pre, commit=head, settled=_settled(s, c))


def _settled(s: Session, c: Candidate) -> str:
    """What to review of a clean merge predicted to conflict ('' when none was).

    The prediction reads merge attributes from your checkout, the merge from what is merged
    so far: a ``merge=union`` or ``merge=ours`` a task added settles a conflict silently.
    """
    p = s.predicted
    if p is None:
        return ""
    files = list(p.target.get(c.task_id, ()))
    for (a, b), clash in p.pairs.items():
        if c.task_id in (a, b) and (b if a == c.task_id else a) in s.landed:
            files += clash
    files = list(dict.fromkeys(files))
    if not files:
        return ""
    out = run_git(s, "check-attr", "-z", "merge", "--", *files, check=False).stdout.split("\0")
    by = any(out[i + 2] != "unspecified" for i in range(0, len(out) - 2, 3))
    how = " by a merge attribute" if by else ""
    return f"predicted to conflict in {paths_text(files)}; merged clean{how}: review it"


def _squash(s: Session, c: Candidate, flags: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """`git merge --squash` the task, or only its own changes once its dependencies landed.

    A squashed dependency leaves no ancestry: git would merge the task from the run's base
    and take the dependency's own changes for the other side. Then the task's changes since
    its base (its dependencies' tips) are merged three-way instead, the state left as a
    squash's (``SQUASH_MSG``, written first), so it is committed, resolved and undone alike.
    """
    deps = set(c.task.depends_on)
    ancestor = run_git(s, "merge-base", "--is-ancestor", c.base, "HEAD", check=False)
    if not deps or not deps <= s.landed or ancestor.returncode == 0:
        return run_git(s, "merge", "--squash", *flags, c.tip, check=False)
    message = changes_message(c.task_id, c.base) + "\n"
    (git.git_dir(s.target.worktree) / "SQUASH_MSG").write_text(message, encoding="utf-8")
    return run_git(s, "merge-recursive", c.base, "--", "HEAD", c.tip, check=False)


def _held_already(s: Session, c: Candidate, pre: str) -> TaskResult:
    """A task the target holds already (nothing to merge): merged once its checks pass there.

    Brought in by a dependent task merged first, by a merge cut off in its checks that you
    committed on top of, or by hand: never recorded merged with its checks not run.
    """
    landed = c.row.merge_result == MergeOutcome.MERGED and c.row.merge_target == s.target.branch
    if landed or not (s.checks or c.task.checks):  # merged (and checked) there before
        return _already(c, pre)
    result = _check(s, c, pre, commit=pre)
    if result.outcome is MergeOutcome.MERGED:
        return dataclasses.replace(result, reason="already in target")
    if result.check is not None and not result.check.ok:
        why = f"{result.check.summary} on {s.target.branch}, which holds its work already"
        return dataclasses.replace(result, reason=why)
    return result


def _already(c: Candidate, commit: str) -> TaskResult:
    return TaskResult(
        task_id=c.task_id, outcome=MergeOutcome.MERGED, reason="already in target", commit=commit
    )


def _conflicted(s: Session, c: Candidate, files: tuple[str, ...], why: str = "") -> TaskResult:
    reason = f"conflicts with {s.target.branch} in {paths_text(files)}"
    return TaskResult(
        task_id=c.task_id,
        outcome=MergeOutcome.CONFLICTED,
        files=files,
        reason=f"{reason}; {why}" if why else reason,
    )


def _resolve(s: Session, c: Candidate, pre: str, files: tuple[str, ...]) -> TaskResult:
    """Let the task's agent finish the conflicted merge, then check it, or undo it.

    The agent may leave the merge for swarm to commit, or commit it itself: that commit is
    kept when it is the task's merge on *pre*. A merge it abandoned is a conflict not
    resolved; any other commit it made is undone and the task failed.
    """
    s.progress.resolving(c.task_id, files)
    on = _symbolic_head(s)
    try:
        with watched(s, c.task_id) as started:
            resolution = run_resolver(
                c.task,
                worktree=s.target.worktree,
                target=s.target.branch,
                files=files,
                logs=s.log.parent,
                env=task_env(s, c),
                on_start=started,
                max_file=_max_file(s),
            )
    except BaseException:
        _back_on(s, on, pre)
        undo(s, pre)  # Ctrl-C or SIGTERM: the resolver is ended; so is its half-made merge
        raise
    outside = wrote_outside(s, "the agent resolving its conflicts")  # before swarm runs git there
    switched = _back_on(s, on, pre)
    if outside:
        undo(s, pre)
        return TaskResult(
            task_id=c.task_id, outcome=MergeOutcome.FAILED, reason=f"{outside}; merge undone"
        )
    if switched:
        undo(s, pre)
        return TaskResult(
            task_id=c.task_id,
            outcome=MergeOutcome.FAILED,
            reason=f"the agent resolving its conflicts switched the merge worktree to {switched}"
            "; merge undone",
        )
    why, also = resolution.why, resolution.also
    head = head_commit(s.target.worktree)
    if why is None and head != pre:
        wrong = _foreign_commit(s, c, pre, head)
        if wrong is None:
            return _check(s, c, pre, resolved=files, also=also)
        undo(s, pre)
        return TaskResult(
            task_id=c.task_id,
            outcome=MergeOutcome.FAILED,
            reason=f"the agent resolving its conflicts {wrong}; merge undone",
        )
    if why is None and not half_merged(s.target.worktree):
        why = "the agent abandoned the merge (none in progress when it exited)"
    if why is None and s.strategy is Strategy.SQUASH and _nothing_staged(s):
        undo(s, pre)  # the agent kept the target's side: nothing to squash
        return _already(c, pre)
    if why is not None:
        undo(s, pre)
        return _conflicted(s, c, files, why)
    if s.strategy is Strategy.SQUASH:
        message = squash_message(c.task.title, c.task_id, resolved=True)
    else:
        message = merge_message(c.task_id, c.row.branch, resolved=True)
    run_git(s, "commit", "--quiet", "--no-verify", "--no-gpg-sign", "-m", message)
    return _check(s, c, pre, resolved=files, also=also)


def _symbolic_head(s: Session) -> str:
    """The branch ref the merge worktree's HEAD names ('' when detached, as with --into)."""
    return run_git(s, "symbolic-ref", "-q", "HEAD", check=False).stdout.strip()


def _back_on(s: Session, on: str, pre: str) -> str:
    """Point the merge worktree's HEAD back at *on* if a resolver switched it; what it was on.

    Undoing a merge resets whatever HEAD names: after a resolver's `git checkout other`, that
    would be another branch of yours. Its files are put back by the undo that follows.
    """
    now = _symbolic_head(s)
    if now == on:
        return ""
    if on:
        run_git(s, "symbolic-ref", "HEAD", on)
    else:
        run_git(s, "update-ref", "--no-deref", "HEAD", pre)
    return now.removeprefix("refs/heads/") or "a detached HEAD"


def _foreign_commit(s: Session, c: Candidate, pre: str, head: str) -> str | None:
    """Why the commit a resolver made is not the task's merge on *pre*; None when it is.

    What it left uncommitted (run_resolver staged it, conflict markers excluded) is added to
    its commit, as it would have been to swarm's.
    """
    parents = run_git(s, "rev-list", "--parents", "-n1", head).stdout.split()[1:]
    wanted = [pre] if s.strategy is Strategy.SQUASH else [pre, c.tip]
    if parents != wanted:
        what = "a squash" if s.strategy is Strategy.SQUASH else "a merge"
        return f"committed {head[:12]}, not {what} of {c.tip[:12]} on {pre[:12]}"
    if not _nothing_staged(s):
        run_git(s, "commit", "--quiet", "--amend", "--no-edit", "--no-verify", "--no-gpg-sign")
    return None


def _nothing_staged(s: Session) -> bool:
    return run_git(s, "diff", "--cached", "--quiet", check=False).returncode == 0


def _check(
    s: Session,
    c: Candidate,
    pre: str,
    *,
    resolved: Sequence[str] = (),
    also: Sequence[str] = (),
    commit: str = "",
    settled: str = "",
) -> TaskResult:
    """Run the checks on the merge just made (*commit*: its HEAD when already read).

    *resolved* are the conflicts its agent resolved, *also* what it changed besides them;
    *settled* says what to review of a predicted conflict that merged clean.
    """
    steps = s.checks or c.task.checks
    commit = commit or head_commit(s.target.worktree)
    note = f"conflicts in {paths_text(resolved)} resolved by its agent" if resolved else settled
    if also:  # committed with the merge: a resolution may need them, the user reviews them
        note += f"; its agent also changed {paths_text(also)}"
    if not steps:
        return TaskResult(
            task_id=c.task_id,
            outcome=MergeOutcome.MERGED,
            commit=commit,
            reason=note,
            also=tuple(also),
            settled=settled,
        )
    # The task's own checks run as in its run; a `--check` of yours in the merge's environment.
    env = {**check_env(s), "SWARM_TASK_ID": c.task_id} if s.checks else task_env(s, c)
    s.store.update_task(
        s.run_id, c.task_id, merge_result=CHECKING, merge_target=s.target.branch,
        merge_commit=commit, merge_detail=pre,
    )  # fmt: skip
    failure = run_checks(s, steps, env, who=c.task_id, task=None if s.checks else c.task)
    check = CheckResult(
        commands=tuple(shlex.join(a) for a in steps),
        ok=failure is None,
        summary="" if failure is None else failure.summary,
    )
    moved = head_commit(s.target.worktree)
    if moved != commit:  # not swarm's: never reported as this merge's own move, nor kept
        undo(s, pre)
        return TaskResult(
            task_id=c.task_id,
            outcome=MergeOutcome.FAILED,
            reason=f"{s.target.branch} moved to {moved[:12]} while its checks ran, not by"
            " swarm; merge undone (that commit is not on it)",
            check=check,
        )
    if failure is None:
        return TaskResult(
            task_id=c.task_id,
            outcome=MergeOutcome.MERGED,
            commit=commit,
            check=check,
            reason=note,
            also=tuple(also),
            settled=settled,
        )
    undo(s, pre)
    return TaskResult(
        task_id=c.task_id,
        outcome=MergeOutcome.FAILED,
        reason=f"{failure.summary} after merging into {s.target.branch}; merge undone",
        check=check,
    )


def _unmerged(s: Session, tip: str) -> tuple[str, ...]:
    args = ("diff", "--name-only", "--diff-filter=U", "-z")
    out = os.fsdecode(runner.run_bytes(s.target.worktree, *args, check=False).stdout)
    names = (conflicts.conflict_path(f, labels=("HEAD", tip)) for f in out.split("\0") if f)
    return tuple(dict.fromkeys(names))


def _unrecorded_conflict(
    s: Session, c: Candidate, res: subprocess.CompletedProcess[str], pre: str
) -> tuple[str, ...]:
    """The paths of a conflict git stopped on without an unmerged index entry, or ().

    A file in the way of an implicit directory rename is one: git names it only in its
    messages, which merge-tree gives structured.
    """
    if res.returncode != 1 or not any(
        line.startswith("CONFLICT (") for line in res.stdout.splitlines()
    ):
        return ()
    return conflicts.merge_tree(s.repo, pre, c.tip) or ("(unknown files)",)


def _gitmodules_cause(s: Session, stderr: str) -> str:
    """Who gave the target the ``.gitmodules`` git refuses to read, when that stopped a merge.

    Git refuses a submodule setting there that would run a command (``update = !cmd``), and
    then every merge touching a gitlink: the cause is the merge that brought that file.
    """
    if "invalid value for 'submodule." not in stderr:
        return ""
    args = ("log", "-1", "--first-parent", "--format=%H%x00%s", "HEAD", "--", ".gitmodules")
    sha, _, subject = run_git(s, *args, check=False).stdout.strip().partition("\0")
    if not sha:
        return ""
    task = merged_task(subject)
    by = f"task {task}'s merge" if task else "commit"
    return f" (the .gitmodules on {s.target.branch} came with {by} {sha[:12]}: fix or revert it)"


def record(s: Session, c: Candidate, result: TaskResult) -> None:
    """Record *result* on the task, and as a ``merge`` event of the run."""
    # A merge result is a fact beside the task's state (still done), so `swarm pr` and a
    # later merge into another branch keep working whatever happened here.
    if result.outcome not in {MergeOutcome.MERGED, MergeOutcome.CONFLICTED, MergeOutcome.FAILED}:
        return
    reason = result.reason or f"merged into {s.target.branch}"
    if result.outcome is MergeOutcome.MERGED and result.commit:
        reason = f"merged into {s.target.branch} at {result.commit[:12]}"
        if result.settled:  # for `swarm status` too: the user reviews them
            reason += f"; {result.settled}"
        if result.also:
            reason += f"; its agent also changed {paths_text(result.also)}"
    s.store.update_task(
        s.run_id,
        c.task_id,
        merge_result=result.outcome.value,
        merge_target=s.target.branch,
        merge_commit=result.commit if result.outcome is MergeOutcome.MERGED else None,
        merge_detail=reason,
    )
    s.store.add_event(
        s.run_id,
        "merge",
        task_id=c.task_id,
        data={
            "outcome": result.outcome.value,
            "target": s.target.branch,
            "reason": reason,
            "files": list(result.files),
        },
    )


def _max_file(s: Session) -> int | None:
    """The cap on one file of the run whose tasks *s* merges (the default when not known)."""
    run = s.store.get_run(s.run_id)
    return run.settings.max_file if run is not None else DEFAULT_MAX_FILE
