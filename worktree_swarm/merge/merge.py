"""`swarm merge`: predict conflicts, merge done task branches in a safe order, check each merge.

All merging happens in a worktree of its own: the integration worktree on
``swarm/integration-<run>`` (kept for the user to inspect), or, with ``--into BRANCH``, a
temporary detached worktree whose result moves BRANCH with a compare-and-swap ``update-ref``.
The user's checkout is never switched, reset or written to, so a branch checked out in any
worktree is refused as ``--into`` target.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import shlex
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import filelock

from worktree_swarm.config.programs import check_program
from worktree_swarm.core.errors import BadInputError, ManagerLockedError, SwarmError
from worktree_swarm.core.models import (
    INTEGRATION_PREFIX,
)
from worktree_swarm.core.paths import run_dir
from worktree_swarm.core.text import paths_text
from worktree_swarm.git import repo as git
from worktree_swarm.git import runner, worktrees
from worktree_swarm.guard import channel
from worktree_swarm.infra import redact, supervisor
from worktree_swarm.infra.lock import MERGE_LOCK, PROBE_GRACE
from worktree_swarm.infra.store import Store, task_from_json
from worktree_swarm.merge import conflicts
from worktree_swarm.merge.candidates import merge_order, select_candidates, standing_results
from worktree_swarm.merge.checks import (
    check_env,
    clean_after_cut_off_checks,
    run_checks,
    task_env,
    untracked_noted,
    watched,
    wrote_outside,
)
from worktree_swarm.merge.guarded import BASELINE_CHECKS, MergeGuard
from worktree_swarm.merge.merge_report import (
    CheckResult,
    MergeOutcome,
    MergeProgress,
    MergeReport,
    Noting,
    Silent,
    TaskResult,
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
from worktree_swarm.merge.target import (
    half_merged,
    integration_path,
    move_branch,
    open_target,
    ref_safe_run,
    remove_scratch,
)
from worktree_swarm.merge.target import validate as validate_target
from worktree_swarm.report.status import commit_author

if TYPE_CHECKING:
    import subprocess

__all__ = ["Candidate", "MergeReport", "Strategy", "merge", "merge_order", "parse_checks"]


def parse_checks(commands: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """Split each ``--check`` command line into argv (shell-like quoting, never a shell).

    A program known not to run (as `swarm run` looks for it) is bad input: nothing is made.
    """
    parsed = []
    path = os.environ.get("PATH", os.defpath)  # the checks run with it
    for command in commands:
        try:
            argv = tuple(shlex.split(command))
        except ValueError as exc:
            raise BadInputError(f"--check {command!r} cannot be parsed: {exc}") from None
        if not argv:
            raise BadInputError("--check needs a command, got an empty string")
        check_program(argv[0], path, where=f"--check {command!r}", setup=False)
        parsed.append(argv)
    return tuple(parsed)


def merge(
    repo: git.Repo,
    store: Store,
    run_id: str,
    *,
    task_ids: Sequence[str] = (),
    into: str | None = None,
    strategy: Strategy = Strategy.MERGE,
    checks: Sequence[str] = (),
    dry_run: bool = False,
    resolve: bool = False,
    allow_outside_writes: bool = False,
    progress: MergeProgress | None = None,
    checkout: Path | None = None,
) -> MergeReport:
    """Predict, order and merge the run's done tasks (or *task_ids*); see the module docstring.

    A new integration branch starts at the HEAD of *checkout* (the one of yours that swarm
    runs in; by default the main checkout).

    Bad input (unknown task, running task, unusable ``--into`` branch, dirty integration
    worktree, unparsable check) raises BadInputError before anything is created.
    """
    tell = Noting(progress or Silent())
    # The run's secrets, as its manager had them: each task's `env` too, before a branch is
    # scanned for them (`_leak`) or a line written.
    redact.add_env(pair for r in store.tasks(run_id) for pair in task_from_json(r.spec_json).env)
    argvs = parse_checks(checks)
    branch = into if into is not None else INTEGRATION_PREFIX + ref_safe_run(run_id)
    own = None if into is not None else integration_path(repo, store, run_id)
    start = validate_target(repo, store, branch, own=own, checkout=checkout)
    standing = standing_results(repo, store, run_id, branch, start=start)
    candidates, skipped = select_candidates(
        repo, store, run_id, task_ids, target=branch, standing=standing, start=start
    )
    predict = functools.partial(
        _predict, repo, candidates, skipped, branch=branch, start=start, tell=tell,
        run_id=run_id, strategy=strategy,
    )  # fmt: skip
    if dry_run:  # no lock: a dry run creates nothing
        return dataclasses.replace(predict(dry_run=True)[0], notes=tuple(tell.notes))
    ref = f"refs/heads/{branch}"
    # Locked before predicting: a second merge says at once that one is running.
    with _merge_lock(repo, run_id), contextlib.ExitStack() as stack:
        report, order = predict(dry_run=False)
        prediction = report.prediction
        # With nothing to merge, a merge killed in its checks is still undone (not landed).
        cut_off = any(
            r.merge_result == CHECKING and r.merge_target == branch for r in store.tasks(run_id)
        )
        if not (candidates or cut_off):
            return dataclasses.replace(report, notes=tuple(tell.notes))
        # A running guard is told which ref this merge moves, so it is not taken for an agent's.
        moves = stack.enter_context(channel.moving_refs(repo, [ref]))
        # Their shims live in sessions of their own: a killed merge's checks still run.
        supervisor.kill_merge_programs(run_dir(repo, run_id) / "merge", grace=0.5)
        remove_scratch(repo, store, run_id)  # what a killed `--into` merge left
        worktrees.unplant_ref(repo, branch)  # git would write its ref and reflog through one
        target = open_target(repo, store, run_id, branch, start=start, own=own)
        if target.note:
            tell.note(target.note)
        session = Session(
            repo=repo,
            store=store,
            run_id=run_id,
            target=target,
            strategy=strategy,
            checks=argvs,
            identity=git.identity_env(commit_author(store, run_id)),
            log=run_dir(repo, run_id) / "merge" / "checks.log",
            progress=tell,
            resolve=resolve,
            allow_outside_writes=allow_outside_writes,
            results=list(skipped),
            landed={t for t, result in standing.items() if result == MergeOutcome.MERGED},
            predicted=prediction,
        )
        try:
            clean_after_cut_off_checks(session)
            _undo_unchecked(session)
            runs_programs = resolve or bool(argvs) or any(c.task.checks for c in order)
            with _guarded(session, on=runs_programs and bool(order)):
                baseline = _baseline(session) if argvs and order else None
                if baseline is None or baseline.ok:
                    _merge_all(session, order)
            final = head_commit(target.worktree)
            if target.temporary and final != start:
                try:
                    move_branch(repo, branch, new=final, old=start)
                except SwarmError:
                    _as_before_checks(session, order)
                    raise
                moves.moved(ref, final)
            for c, result in session.unrecorded:
                _record(session, c, result)
        finally:
            if not target.temporary:  # the branch checked out in swarm's merge worktree
                moves.moved(ref, git.rev_parse(repo, ref))
            if target.temporary:
                worktrees.remove_worktree(repo, target.worktree, force=True)
    return MergeReport(
        run_id=run_id,
        target_branch=branch,
        target_before=start,
        target_commit=final,
        worktree=None if target.temporary else str(target.worktree),
        dry_run=False,
        strategy=strategy.value,
        prediction=prediction,
        order=report.order,
        results=tuple(session.results),
        baseline=baseline,
        notes=tuple(tell.notes),
        tool=report.tool,
    )


def _predict(
    repo: git.Repo,
    candidates: Sequence[Candidate],
    skipped: Sequence[TaskResult],
    *,
    branch: str,
    start: str,
    tell: MergeProgress,
    run_id: str,
    strategy: Strategy,
    dry_run: bool,
) -> tuple[MergeReport, list[Candidate]]:
    """Predict the conflicts and order the *candidates*; tell *tell* so, and what is skipped."""
    prediction = conflicts.predict(
        repo,
        [conflicts.Branch(name=c.task_id, tip=c.tip, base=c.base) for c in candidates],
        target=start,
    )
    order = merge_order(candidates, prediction)
    tool = frozenset(
        c.task_id
        for c in candidates
        if "pyproject.toml" in prediction.changes[c.task_id].paths
        and _swarm_table(repo, c.base) != _swarm_table(repo, c.tip)
    )
    report = MergeReport(
        run_id=run_id,
        target_branch=branch,
        target_before=start,
        target_commit=start,
        worktree=None,
        dry_run=dry_run,
        strategy=strategy.value,
        prediction=prediction,
        order=tuple(c.task_id for c in order),
        results=tuple(skipped),
        tool=tool,
    )
    tell.predicted(report)
    for result in skipped:
        tell.finished(result)
    return report, order


def _swarm_table(repo: git.Repo, commit: str) -> object:
    """The ``[tool.swarm]`` table of *commit*'s top-level pyproject.toml, as swarm would read it.

    None without one; the file's text when it is no TOML (a change to it is shown too).
    """
    shown = runner.run_bytes(repo.root, "cat-file", "blob", f"{commit}:pyproject.toml", check=False)
    if shown.returncode != 0:
        return None
    try:
        data = tomllib.loads(shown.stdout.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return shown.stdout
    tool = data.get("tool")
    return tool.get("swarm") if isinstance(tool, dict) else None


# -- the target --------------------------------------------------------------------------


@contextlib.contextmanager
def _guarded(s: Session, *, on: bool) -> Iterator[None]:
    """Watch outside the merge worktree while inside (*on*: programs may run there)."""
    if not on:
        yield
        return
    # Not the user's: where swarm's merge worktrees go.
    guard = MergeGuard(
        s.repo,
        s.store,
        s.run_id,
        exclude=[s.target.worktree.parent],
        restore=not s.allow_outside_writes,
    )
    try:
        with guard.watching():
            s.guard = guard
            yield
    finally:
        s.guard = None
        for line in guard.notes():
            s.progress.note(line)


@contextlib.contextmanager
def _merge_lock(repo: git.Repo, run_id: str) -> Iterator[None]:
    repo.state_dir.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(repo.state_dir / MERGE_LOCK, thread_local=False)
    try:
        # `swarm status` probes it for an instant: wait that out rather than refuse.
        lock.acquire(timeout=PROBE_GRACE)
    except filelock.Timeout:
        raise ManagerLockedError(
            f"another `swarm merge` (or a `swarm clean` removing a merge worktree) is running "
            f"in {repo.root}; wait for it (run {run_id})"
        ) from None
    try:
        yield
    finally:
        lock.release()


# -- merging -----------------------------------------------------------------------------


def _baseline(s: Session) -> CheckResult:
    with untracked_noted(s):
        failure = run_checks(s, s.checks, check_env(s), who=BASELINE_CHECKS)
    result = CheckResult(
        commands=tuple(shlex.join(a) for a in s.checks),
        ok=failure is None,
        summary="" if failure is None else failure.summary,
    )
    if failure is not None:
        s.progress.note(f"checks fail on {s.target.branch} before any merge: {failure.summary}")
    return result


def _merge_all(s: Session, order: Sequence[Candidate]) -> None:
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
                _record(s, c, result)
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
    message = f"swarm: merge task {c.task_id} ({c.row.branch})"
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
        title = redact.redact(c.task.title or c.task_id)
        run_git(s, "commit", "--quiet", "--no-verify", "--no-gpg-sign", "-m",
             f"swarm: {title} (task {c.task_id}, squashed)")  # fmt: skip
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
    message = f"swarm: squashed changes of task {c.task_id} since {c.base[:12]}\n"
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
        title = redact.redact(c.task.title or c.task_id)
        message = f"swarm: {title} (task {c.task_id}, squashed, resolved)"
    else:
        message = f"swarm: merge task {c.task_id} ({c.row.branch}), conflicts resolved by its agent"
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


def _as_before_checks(s: Session, order: Sequence[Candidate]) -> None:
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


def _undo_unchecked(s: Session) -> None:
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
    return subject.startswith("swarm: ") and (
        f" task {task_id} (" in subject or f"(task {task_id}, squashed" in subject
    )


def _parent(s: Session, commit: str) -> str | None:
    res = run_git(s, "rev-parse", "--verify", "--quiet", f"{commit}^1", check=False)
    return res.stdout.strip() or None


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
    task = re.match(r"swarm: (?:merge task (\S+) \(|.*\(task (\S+), squashed)", subject)
    by = f"task {task[1] or task[2]}'s merge" if task else "commit"
    return f" (the .gitmodules on {s.target.branch} came with {by} {sha[:12]}: fix or revert it)"


def _record(s: Session, c: Candidate, result: TaskResult) -> None:
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
