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
import enum
import functools
import json
import os
import re
import shlex
import tomllib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import filelock

from worktree_swarm.config.programs import check_program
from worktree_swarm.core.errors import BadInputError, ManagerLockedError, SwarmError
from worktree_swarm.core.models import (
    INTEGRATION_PREFIX,
    MERGE_CHECKING,
    ProcessIdentity,
    Task,
    TaskState,
    merge_again,
)
from worktree_swarm.core.paths import run_dir
from worktree_swarm.core.text import paths_text
from worktree_swarm.git import leaks, runner, worktrees
from worktree_swarm.git import repo as git
from worktree_swarm.guard import channel
from worktree_swarm.infra import fs, proc, redact, supervisor
from worktree_swarm.infra.lock import MERGE_LOCK, PROBE_GRACE
from worktree_swarm.infra.store import Store, TaskRow, task_from_json
from worktree_swarm.merge import conflicts
from worktree_swarm.merge.diff import (
    BranchTips,
    branch_tip,
    named_rows,
    task_base,
    task_branch,
    work_tip,
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
from worktree_swarm.merge.target import (
    Target,
    checks_record,
    half_merged,
    integration_path,
    move_branch,
    open_target,
    ref_safe_run,
    remove_scratch,
)
from worktree_swarm.merge.target import validate as validate_target
from worktree_swarm.report.status import commit_author
from worktree_swarm.run.checks import CheckFailure, run_steps

if TYPE_CHECKING:
    import subprocess

__all__ = ["Candidate", "MergeReport", "Strategy", "merge", "merge_order", "parse_checks"]

# A merge made and being checked: its commit and the target's commit before it are recorded
# first, so that a merge killed during its checks is undone and made (and checked) again.
CHECKING = MERGE_CHECKING  # the intent recorded while a merge's checks run


class Strategy(enum.StrEnum):
    """How a task branch lands: a merge commit, or one squashed commit."""

    MERGE = "merge"
    SQUASH = "squash"


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """A task branch to merge."""

    row: TaskRow
    task: Task
    tip: str
    base: str

    @property
    def task_id(self) -> str:
        """The task's id."""
        return self.row.task_id


@dataclass(slots=True, kw_only=True)
class _Session:
    """What one `swarm merge` works with; results accumulate in ``results``."""

    repo: git.Repo
    store: Store
    run_id: str
    target: Target
    strategy: Strategy
    checks: tuple[tuple[str, ...], ...]
    identity: dict[str, str]
    log: Path
    progress: MergeProgress
    resolve: bool = False
    # Outside writes of its programs recorded, neither put back nor failing a merge.
    allow_outside_writes: bool = False
    guard: MergeGuard | None = None  # while programs (resolvers, checks) may run
    # The files each task was predicted to conflict on, against the target or another task.
    predicted: conflicts.Prediction | None = None
    results: list[TaskResult] = field(default_factory=list)
    # Tasks merged into the target, before or by this merge: a task squashed onto them
    # brings only its own changes.
    landed: set[str] = field(default_factory=set)
    # With --into, results wait until the branch has moved: recorded before, a merge killed
    # in between would leave tasks recorded as merged into a branch that never got them.
    unrecorded: list[tuple[Candidate, TaskResult]] = field(default_factory=list)


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
        session = _Session(
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
            _clean_after_cut_off_checks(session)
            _undo_unchecked(session)
            runs_programs = resolve or bool(argvs) or any(c.task.checks for c in order)
            with _guarded(session, on=runs_programs and bool(order)):
                baseline = _baseline(session) if argvs and order else None
                if baseline is None or baseline.ok:
                    _merge_all(session, order)
            final = _head(target.worktree)
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


# -- choosing and ordering ---------------------------------------------------------------


def select_candidates(
    repo: git.Repo,
    store: Store,
    run_id: str,
    task_ids: Sequence[str],
    *,
    target: str,
    standing: Mapping[str, str],
    start: str | None = None,
) -> tuple[list[Candidate], list[TaskResult]]:
    """The branches to merge, and the named tasks skipped (no branch, nothing to merge).

    Without *task_ids*: every ``done`` task not yet tried against *target* (its merge result
    there is *standing*, see :func:`standing_results`). Named tasks may be in any final state
    and are always tried, unless one depends on a task that is neither named nor in *target*
    (whose start is *start*): its branch carries that task's work, unchecked and unrecorded.
    BadInputError when there is something to merge and *start* lacks the run's base commit.
    """
    rows = named_rows(store, run_id, task_ids) if task_ids else store.tasks(run_id)
    candidates: list[Candidate] = []
    skipped: list[TaskResult] = []
    taken = store.taken_over(run_id)
    tips = BranchTips(repo)
    run = store.get_run(run_id)
    run_base = run.base_commit if run is not None else None
    landed = _landed_without_branch(repo, rows, start, taken=taken, tips=tips)
    for row in rows:
        if task_ids and row.state.is_active:
            raise BadInputError(
                f"task {row.task_id!r} is {row.state.value}; wait for it to finish"
                " (`swarm status`) before merging it"
            )
        if not task_ids and (row.state is not TaskState.DONE or row.task_id in standing):
            continue
        later = taken.get(row.task_id)
        tip = None if later else tips(task_branch(row)) or landed.get(row.task_id)
        base = task_base(store, row)
        why = _skip_reason(
            repo, row, target=target, later=later, tip=tip, base=base, run_base=run_base
        )
        if why or tip is None or base is None:
            skipped.append(
                TaskResult(task_id=row.task_id, outcome=MergeOutcome.SKIPPED, reason=why)
            )
            continue
        candidates.append(
            Candidate(row=row, task=task_from_json(row.spec_json), tip=tip, base=base)
        )
    every = store.tasks(run_id)
    cut_off = {r.task_id for r in every if _cut_off_elsewhere(r, target)}
    absent = _deps_not_there(every, candidates, standing, start, taken=taken, tips=tips)
    absent = {dep: own for dep, own in absent.items() if dep not in cut_off}  # said so below
    kept, held = _without_unmerged_deps(
        candidates, target, standing, cut_off=cut_off, absent=absent
    )
    if kept and run_base and start and not git.contained(repo, start, [run_base]):
        raise BadInputError(_without_base(repo, target, start, run_base))
    return kept, skipped + held


def _without_base(repo: git.Repo, target: str, start: str, base: str) -> str:
    """Why *target* (at *start*, which lacks the run's *base*) takes none of its tasks."""
    new = branch_tip(repo, target) is None  # the integration branch, to start at your HEAD
    where = f"{target} would start at {start[:12]}, which" if new else f"{target} ({start[:12]})"
    then = (
        "run `swarm merge` in a checkout of a branch that contains it"
        if new
        else f"merge {base[:12]} into {target} first"
    )
    return (
        f"{where} does not contain the run's base commit {base[:12]}, where its tasks started:"
        " their branches would bring it (and the commits before it) along, unchecked;"
        f" {then}, or merge into a branch that contains it (`--into BRANCH`)"
    )


def _landed_without_branch(
    repo: git.Repo,
    rows: Sequence[TaskRow],
    start: str | None,
    *,
    taken: Mapping[str, str],
    tips: BranchTips,
) -> dict[str, str]:
    """Task id -> its last recorded tip, for tasks whose branch is gone but *start* holds it.

    Landed by hand and cleaned since: merged as "already in target" (its checks run there),
    not skipped as gone.
    """
    gone = {
        r.task_id: r.tip_commit
        for r in rows
        if r.tip_commit and r.task_id not in taken and tips(task_branch(r)) is None
    }
    if start is None or not gone:
        return {}
    there = git.contained(repo, start, sorted(set(gone.values())))
    return {t: tip for t, tip in gone.items() if tip in there}


def _deps_not_there(
    tasks: Sequence[TaskRow],
    candidates: Sequence[Candidate],
    standing: Mapping[str, str],
    start: str | None,
    *,
    taken: Mapping[str, str],
    tips: BranchTips,
) -> dict[str, bool]:
    """The dependencies of *candidates* neither among them, merged, nor held by *start*.

    Each with whether it has a branch of its own to merge (not gone, not a later run's).
    Its work is :func:`work_tip`: a dependency landed and cleaned is in *start* by its last
    recorded tip.
    """
    names = {d for c in candidates for d in c.task.depends_on}
    names -= {c.task_id for c in candidates}
    names -= set(standing)  # merged, or left out there (judged by what it did there)
    if not names:
        return {}
    repo = tips.repo
    rows = {r.task_id: r for r in tasks if r.task_id in names}
    work = {t: work_tip(repo, r, taken=taken, tips=tips) for t, r in rows.items()}
    own = {t: t not in taken and tips(task_branch(r)) is not None for t, r in rows.items()}
    there = (
        git.contained(repo, start, sorted({tip for tip in work.values() if tip}))
        if start is not None
        else set()
    )
    return {name: own.get(name, False) for name in names if work.get(name) not in there}


def _restore_from(repo: git.Repo, row: TaskRow) -> str:
    """How to bring back the branch of a task merged once (`swarm clean` deleted it then).

    Its work is its merge commit's second parent, while that commit is kept (the reflog of
    the branch it was merged into): none after a squash, whose commit has one parent.
    """
    if row.merge_result != MergeOutcome.MERGED or not row.merge_commit:
        return ""
    work = git.rev_parse(repo, f"{row.merge_commit}^2^{{commit}}")
    if work is None:
        return ""
    return (
        f" (deleted once merged into {row.merge_target}); bring it back with"
        f" `git branch {row.branch} {work[:12]}`, then merge it again"
    )


def _skip_reason(
    repo: git.Repo,
    row: TaskRow,
    *,
    target: str,
    later: str | None,
    tip: str | None,
    base: str | None,
    run_base: str | None,
) -> str:
    """Why the task cannot be merged into *target* ('' when it can)."""
    if later:
        return f"branch {row.branch} is run {later}'s now (it reused the task id)"
    if _cut_off_elsewhere(row, target):
        return (
            f"its merge into {row.merge_target} was cut off in its checks; run "
            f"`{merge_again(row.merge_target, row.task_id)}` first (that merge is undone and "
            "checked again)"
        )
    if tip is None and row.base_commit is None:
        return f"it never ran ({row.state.value}): no branch {row.branch}"
    if tip is None:
        return f"branch {row.branch} is gone{_restore_from(repo, row)}"
    if base is None or base == tip:
        return "no commits on its branch"
    if leak := _leak(repo, row, run_base or base, tip):
        return f"not merging {row.branch}: {leak}; remove it from the branch's history"
    return ""


def _cut_off_elsewhere(row: TaskRow, target: str) -> bool:
    """Whether *row*'s merge into another branch than *target* was cut off in its checks.

    The task's one merge record holds that intent: recorded over by a merge into *target*,
    the unchecked merge would be taken for landed there.
    """
    return row.merge_result == CHECKING and row.merge_target != target


def _leak(repo: git.Repo, row: TaskRow, base: str, tip: str) -> leaks.Leak | None:
    """A credential the commits from *base* to *tip* would bring (as `swarm pr` refuses).

    *base* is the run's base, as for `swarm pr`: a task built on its dependency's work brings
    the dependency's commits too, and would land a leak that keeps the dependency out.
    Not a tracked file that matches a ``copy`` pattern: the run commits changes to those.
    """
    secrets = worktrees.copied_secrets(repo.root, task_from_json(row.spec_json).copy)
    return leaks.find_leak(repo, base=base, tip=tip, copy_globs=(), local_secrets=secrets)


def standing_results(
    repo: git.Repo, store: Store, run_id: str, target: str, *, start: str | None = None
) -> dict[str, str]:
    """Task id -> its recorded merge result into *target*, for the results that still hold.

    None holds once *target* is gone (deleted by hand: the next merge starts it again), and a
    merge whose commit *target* no longer contains (reset by hand) did not land after all.
    The intent of a merge killed in its checks is not a result: it is undone and merged again.
    A task merged into another branch, its own branch gone since, whose merge *start* (where
    *target* starts, or is) holds counts as merged here: `swarm clean` deletes an integration
    branch once landed, and the task branches merged into it, and records the tasks merged
    into the branch it landed on. (With its branch there, it is tried: `already in target`.)
    """
    tip = branch_tip(repo, target)
    rows = [r for r in store.tasks(run_id) if r.merge_result not in {None, CHECKING}]
    mine = [r for r in rows if r.merge_target == target and tip is not None]
    tips = BranchTips(repo)
    elsewhere = [
        r
        for r in rows
        if r.merge_target != target
        and r.merge_result == MergeOutcome.MERGED
        and r.merge_commit
        and tips(task_branch(r)) is None
    ]
    commits = {r.merge_commit for r in mine if r.merge_result == MergeOutcome.MERGED}
    there = git.contained(repo, tip, sorted(c for c in commits if c)) if tip else set()
    standing = {
        r.task_id: r.merge_result
        for r in mine
        if r.merge_result
        and (r.merge_result != MergeOutcome.MERGED or not r.merge_commit or r.merge_commit in there)
    }
    if start is not None and elsewhere:
        held = git.contained(
            repo, start, sorted({r.merge_commit for r in elsewhere if r.merge_commit})
        )
        standing.update(
            {r.task_id: MergeOutcome.MERGED for r in elsewhere if r.merge_commit in held}
        )
    return standing


def _without_unmerged_deps(
    candidates: list[Candidate],
    target: str,
    standing: Mapping[str, str],
    *,
    cut_off: Collection[str],
    absent: Mapping[str, bool] | None = None,
) -> tuple[list[Candidate], list[TaskResult]]:
    """Drop the candidates built on a task an earlier merge into *target* left out.

    A branch built on its dependency's work carries it: merged, it would land the dependency
    that conflicted or failed its checks there, or (*cut_off*) is skipped because its merge
    into another branch waits to be undone, or (*absent*) was not named with it and is not
    in *target* (each with whether it has a branch of its own to name). The dependency merged
    again by this merge (named, or retried) is judged when it is tried.
    """
    absent = absent or {}
    left_out = {MergeOutcome.CONFLICTED, MergeOutcome.FAILED}
    out = {t for t, result in standing.items() if result in left_out}
    out -= {c.task_id for c in candidates}
    out.update(cut_off)
    kept = list(candidates)
    held: list[TaskResult] = []
    for named in list(kept):
        if wanted := sorted(d for d in named.task.depends_on if d in absent):
            reason = f"depends on {', '.join(wanted)}, not in {target}: its branch would bring "
            if all(absent[d] for d in wanted):
                reason += (
                    f"that work along; name it too (`swarm merge {' '.join(wanted)} "
                    f"{named.task_id}`)"
                )
            else:  # a dependency's branch is gone or another run's: naming it merges nothing
                reason += (
                    "that work along unchecked, and it has no branch of its own to merge (gone,"
                    " or a later run's): land that work in the target first, or merge"
                    f" {named.task_id}'s branch by hand"
                )
            held.append(
                TaskResult(task_id=named.task_id, outcome=MergeOutcome.SKIPPED, reason=reason)
            )
            kept.remove(named)
            out.add(named.task_id)
    while True:
        c = next((c for c in kept if any(d in out for d in c.task.depends_on)), None)
        if c is None:
            return kept, held
        missing = ", ".join(sorted(d for d in c.task.depends_on if d in out))
        reason = f"depends on {missing}, which did not merge into {target}"
        held.append(TaskResult(task_id=c.task_id, outcome=MergeOutcome.SKIPPED, reason=reason))
        kept.remove(c)
        out.add(c.task_id)


def merge_order(
    candidates: Sequence[Candidate], prediction: conflicts.Prediction
) -> list[Candidate]:
    """Dependencies first, then what conflicts with nothing, then the least conflicting.

    Ties go to the smaller branch. Least-conflicting-first is the greedy heuristic for a maximum
    independent set of the conflict graph: it lands the most branches.
    """
    ids = {c.task_id for c in candidates}
    deps = {c.task_id: {d for d in c.task.depends_on if d in ids} for c in candidates}

    def key(c: Candidate) -> tuple[bool, int, int, int]:
        changes = prediction.changes.get(c.task_id)
        return (
            c.task_id in prediction.target,
            len(prediction.conflicts_of(c.task_id)),
            changes.lines if changes else 0,
            c.row.position,
        )

    placed: list[Candidate] = []
    done: set[str] = set()
    remaining = list(candidates)
    while remaining:
        ready = [c for c in remaining if deps[c.task_id] <= done] or remaining
        pick = min(ready, key=key)
        placed.append(pick)
        done.add(pick.task_id)
        remaining.remove(pick)
    return placed


# -- the target --------------------------------------------------------------------------


@contextlib.contextmanager
def _guarded(s: _Session, *, on: bool) -> Iterator[None]:
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
def _watched(s: _Session, who: str) -> Iterator[Callable[[ProcessIdentity], None] | None]:
    """While inside, a program started for *who* is watched (the callback registers it)."""
    if s.guard is None:
        yield None
        return
    with s.guard.program(who) as started:
        yield started


def _outside(s: _Session, who: str) -> str:
    """Why the program that just ended fails its merge: what it wrote outside ('' if nothing)."""
    if s.guard is None:
        return ""
    found = s.guard.outside()
    for line in s.guard.notes():
        s.progress.note(line)
    if found and s.allow_outside_writes:  # recorded, left as it is: `swarm report` lists it
        s.progress.note(f"{who} wrote outside the merge worktree (allowed): {found}")
        return ""
    return f"{who} wrote outside the merge worktree: {found}" if found else ""


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


def _git(s: _Session, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # rerere would resolve conflicts the prediction reported; hooks and signing need a human.
    return runner.run(
        s.target.worktree, "-c", "rerere.enabled=false", *args, env=s.identity, check=check
    )


def _head(worktree: Path) -> str:
    head = git.rev_parse_in(worktree, "HEAD^{commit}")
    if head is None:
        raise SwarmError(f"the merge worktree {worktree} has no HEAD")
    return head


def _baseline(s: _Session) -> CheckResult:
    with _untracked_noted(s):
        failure = _run_checks(s, s.checks, _check_env(s), who=BASELINE_CHECKS)
    result = CheckResult(
        commands=tuple(shlex.join(a) for a in s.checks),
        ok=failure is None,
        summary="" if failure is None else failure.summary,
    )
    if failure is not None:
        s.progress.note(f"checks fail on {s.target.branch} before any merge: {failure.summary}")
    return result


def _run_checks(
    s: _Session,
    steps: tuple[tuple[str, ...], ...],
    env: dict[str, str],
    *,
    who: str,
    task: Task | None = None,
) -> CheckFailure | None:
    """Run *steps* in the merge worktree (watched, for *who*), then undo what they wrote there.

    With *task*, its checks get what they had in its run first: its `copy` files, its `link`
    directories and its `setup` steps (`npm ci`). What a check (or setup) writes
    (``__pycache__``, build output, a formatter's edits) would read as uncommitted changes to
    the next merge, which refuses them, or be swept into a resolver's commit: the untracked
    files they added are removed and tracked files they changed are put back as committed.
    Files untracked before the checks ran, and ignored ones but for the copy files and
    link symlinks, are left alone.
    """
    before = git.untracked_files(s.target.worktree)
    placed = () if task is None else _placed(s, task)
    # On record first: a merge killed during the checks has the next one undo what they wrote.
    _note_untracked(s, before, placed)
    try:
        with _watched(s, who) as started:
            failure = None if task is None else _prepare(s, task, env, started)
            if failure is None:
                failure = run_steps(
                    steps, cwd=s.target.worktree, env=env, log=s.log, what="check",
                    timeout=None if task is None else task.check_timeout, on_start=started,
                )  # fmt: skip
        outside = _outside(s, "the checks")
        return CheckFailure(summary=outside) if outside else failure
    finally:
        redact.scrub_file(s.log)  # as a run's checks log: a secret a check printed is gone
        _clean_after_checks(s, before, placed)
        _note_untracked(s, before)  # what was placed is gone; the record is the merge's again


def _placed(s: _Session, task: Task) -> list[str]:
    """What *task*'s `copy` and `link` will add to the merge worktree: removed after its checks.

    Ignored ones too (a ``.env``): left there, a copy cut off by a killed merge, or one older
    than yours, would be what every later merge's checks get (a copy skips what exists).
    """
    try:
        names = [rel.as_posix() for _, rel in worktrees.copy_sources(s.repo.root, task.copy)]
    except SwarmError:  # the copy itself fails the checks, saying why
        names = []
    worktree = s.target.worktree
    # A link goes where nothing is, or in place of what an earlier task's setup installed.
    return sorted({*(n for n in names if not os.path.lexists(worktree / n)), *task.link})


def _prepare(
    s: _Session,
    task: Task,
    env: dict[str, str],
    started: Callable[[ProcessIdentity], None] | None,
) -> CheckFailure | None:
    """Give the merge worktree *task*'s copy files, links and setup."""
    worktree = s.target.worktree
    try:
        if task.copy:
            worktrees.copy_into(s.repo.root, worktree, task.copy)
        for name in task.link:  # not in the way: what an earlier task's setup installed there
            _remove_ignored_dir(worktree, name)
        worktrees.link_into(s.repo.root, worktree, task.link)
    except SwarmError as exc:
        return CheckFailure(summary=str(exc))
    return run_steps(
        task.setup, cwd=worktree, env=env, log=s.log, what="setup",
        timeout=task.setup_timeout, on_start=started,
    )  # fmt: skip


def _remove_ignored_dir(worktree: Path, name: str) -> None:
    """Remove the directory *name* of *worktree* when git ignores it (setup output)."""
    path = worktree / name
    if path.is_symlink() or not path.is_dir():
        return
    if not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(worktree)):
        return  # through a symlink on the way: not the worktree's (link_into refuses it)
    ignored = runner.run(worktree, "check-ignore", "-q", "--", name, check=False)
    if ignored.returncode == 0:
        fs.remove_tree(path)


def _note_untracked(s: _Session, before: set[str], placed: Sequence[str] = ()) -> None:
    """Put *before* (the merge worktree's untracked files) and *placed* on record."""
    record = _untracked_record(s)
    partial = record.with_suffix(".part")
    text = json.dumps({"untracked": sorted(before), "placed": list(placed)})
    partial.write_text(text, encoding="utf-8")
    partial.replace(record)


@contextlib.contextmanager
def _untracked_noted(s: _Session) -> Iterator[None]:
    """While inside, the merge worktree's untracked files are on record for the next merge.

    It cleans up after what ended inside half-way (see :func:`_clean_after_cut_off_checks`):
    so the record goes on a normal exit only, not when an exception (a full disk) leaves.
    """
    _note_untracked(s, git.untracked_files(s.target.worktree))
    yield
    _untracked_record(s).unlink(missing_ok=True)


def _untracked_record(s: _Session) -> Path:
    record = checks_record(s.target.worktree)
    if record is None:
        raise SwarmError(f"the merge worktree {s.target.worktree} is no longer a checkout")
    return record


def _clean_after_checks(s: _Session, before: set[str], placed: Sequence[str] = ()) -> None:
    git.remove_new(
        s.target.worktree, (git.untracked_files(s.target.worktree) - before) | set(placed)
    )
    git.reset_hard(s.target.worktree, env=s.identity)


def _clean_after_cut_off_checks(s: _Session) -> None:
    """Undo what a killed `swarm merge` (its git, checks, resolver) wrote in the merge worktree.

    Files untracked then are kept; tracked files go back to HEAD.
    """
    record = _untracked_record(s)
    try:
        data = json.loads(fs.read_file(record))
        if isinstance(data, list):  # written by an older swarm: the untracked files alone
            data = {"untracked": data}
        before, placed = set(data["untracked"]), [str(n) for n in data.get("placed", ())]
    except FileNotFoundError:
        return
    except (OSError, ValueError, TypeError, KeyError, AttributeError):  # not ours to read
        before = None  # nothing is removed
    if before is not None:
        _clean_after_checks(s, before, placed)
    record.unlink(missing_ok=True)


def _check_env(s: _Session) -> dict[str, str]:
    """What checks and resolvers get: as in a run, no git config handed over in the environment."""
    return proc.task_env(
        {
            "SWARM_RUN_ID": s.run_id,
            "SWARM_WORKTREE": str(s.target.worktree),
            "SWARM_BRANCH": s.target.branch,
        }
    )


def _task_env(s: _Session, c: Candidate) -> dict[str, str]:
    """What a task's checks and resolver get: its own ``env`` too, as in its run."""
    redact.add_env(c.task.env)  # a secret-named value is redacted from their logs
    # And, as in its run, the secrets of its `copy` files, which its checks get first.
    redact.add_env(worktrees.copied_secrets(s.repo.root, c.task.copy))
    return {**_check_env(s), "SWARM_TASK_ID": c.task_id, **dict(c.task.env)}


def _merge_all(s: _Session, order: Sequence[Candidate]) -> None:
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


def _merge_one(s: _Session, c: Candidate) -> TaskResult:
    pre = _head(s.target.worktree)
    if (s.checks or c.task.checks) and not s.target.temporary:
        # The intent first: a merge killed once committed, before its checks were recorded,
        # is undone by the next merge, not taken for one already landed.
        s.store.update_task(
            s.run_id, c.task_id, merge_result=CHECKING, merge_target=s.target.branch,
            merge_commit=None, merge_detail=pre,
        )  # fmt: skip
    # What git writes is put right by the next merge when this one ends half-way (killed, a
    # full disk): a git merge or reset cut off leaves files that are no one's changes.
    with _untracked_noted(s):
        return _merge_step(s, c, pre)


def _merge_step(s: _Session, c: Candidate, pre: str) -> TaskResult:
    message = f"swarm: merge task {c.task_id} ({c.row.branch})"
    flags = ["--no-verify", "--no-gpg-sign", "--no-edit"]
    if s.strategy is Strategy.SQUASH:
        res = _squash(s, c, flags[:2])
    else:
        res = _git(s, "merge", "--no-ff", *flags, "-m", message, c.tip, check=False)
    if res.returncode != 0:
        files = _unmerged(s, c.tip) or _unrecorded_conflict(s, c, res, pre)
        if files and s.resolve:
            return _resolve(s, c, pre, files)
        _undo(s, pre)
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
            _undo(s, pre)  # drops the squash message git left waiting
            return _held_already(s, c, pre)
        title = redact.redact(c.task.title or c.task_id)
        _git(s, "commit", "--quiet", "--no-verify", "--no-gpg-sign", "-m",
             f"swarm: {title} (task {c.task_id}, squashed)")  # fmt: skip
        return _check(s, c, pre, settled=_settled(s, c))
    head = _head(s.target.worktree)
    if head == pre:
        return _held_already(s, c, pre)
    return _check(s, c, pre, commit=head, settled=_settled(s, c))


def _settled(s: _Session, c: Candidate) -> str:
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
    out = _git(s, "check-attr", "-z", "merge", "--", *files, check=False).stdout.split("\0")
    by = any(out[i + 2] != "unspecified" for i in range(0, len(out) - 2, 3))
    how = " by a merge attribute" if by else ""
    return f"predicted to conflict in {paths_text(files)}; merged clean{how}: review it"


def _squash(s: _Session, c: Candidate, flags: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """`git merge --squash` the task, or only its own changes once its dependencies landed.

    A squashed dependency leaves no ancestry: git would merge the task from the run's base
    and take the dependency's own changes for the other side. Then the task's changes since
    its base (its dependencies' tips) are merged three-way instead, the state left as a
    squash's (``SQUASH_MSG``, written first), so it is committed, resolved and undone alike.
    """
    deps = set(c.task.depends_on)
    ancestor = _git(s, "merge-base", "--is-ancestor", c.base, "HEAD", check=False)
    if not deps or not deps <= s.landed or ancestor.returncode == 0:
        return _git(s, "merge", "--squash", *flags, c.tip, check=False)
    message = f"swarm: squashed changes of task {c.task_id} since {c.base[:12]}\n"
    (git.git_dir(s.target.worktree) / "SQUASH_MSG").write_text(message, encoding="utf-8")
    return _git(s, "merge-recursive", c.base, "--", "HEAD", c.tip, check=False)


def _held_already(s: _Session, c: Candidate, pre: str) -> TaskResult:
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


def _conflicted(s: _Session, c: Candidate, files: tuple[str, ...], why: str = "") -> TaskResult:
    reason = f"conflicts with {s.target.branch} in {paths_text(files)}"
    return TaskResult(
        task_id=c.task_id,
        outcome=MergeOutcome.CONFLICTED,
        files=files,
        reason=f"{reason}; {why}" if why else reason,
    )


def _resolve(s: _Session, c: Candidate, pre: str, files: tuple[str, ...]) -> TaskResult:
    """Let the task's agent finish the conflicted merge, then check it, or undo it.

    The agent may leave the merge for swarm to commit, or commit it itself: that commit is
    kept when it is the task's merge on *pre*. A merge it abandoned is a conflict not
    resolved; any other commit it made is undone and the task failed.
    """
    s.progress.resolving(c.task_id, files)
    on = _symbolic_head(s)
    try:
        with _watched(s, c.task_id) as started:
            resolution = run_resolver(
                c.task,
                worktree=s.target.worktree,
                target=s.target.branch,
                files=files,
                logs=s.log.parent,
                env=_task_env(s, c),
                on_start=started,
            )
    except BaseException:
        _back_on(s, on, pre)
        _undo(s, pre)  # Ctrl-C or SIGTERM: the resolver is ended; so is its half-made merge
        raise
    outside = _outside(s, "the agent resolving its conflicts")  # before swarm runs git there
    switched = _back_on(s, on, pre)
    if outside:
        _undo(s, pre)
        return TaskResult(
            task_id=c.task_id, outcome=MergeOutcome.FAILED, reason=f"{outside}; merge undone"
        )
    if switched:
        _undo(s, pre)
        return TaskResult(
            task_id=c.task_id,
            outcome=MergeOutcome.FAILED,
            reason=f"the agent resolving its conflicts switched the merge worktree to {switched}"
            "; merge undone",
        )
    why, also = resolution.why, resolution.also
    head = _head(s.target.worktree)
    if why is None and head != pre:
        wrong = _foreign_commit(s, c, pre, head)
        if wrong is None:
            return _check(s, c, pre, resolved=files, also=also)
        _undo(s, pre)
        return TaskResult(
            task_id=c.task_id,
            outcome=MergeOutcome.FAILED,
            reason=f"the agent resolving its conflicts {wrong}; merge undone",
        )
    if why is None and not half_merged(s.target.worktree):
        why = "the agent abandoned the merge (none in progress when it exited)"
    if why is None and s.strategy is Strategy.SQUASH and _nothing_staged(s):
        _undo(s, pre)  # the agent kept the target's side: nothing to squash
        return _already(c, pre)
    if why is not None:
        _undo(s, pre)
        return _conflicted(s, c, files, why)
    if s.strategy is Strategy.SQUASH:
        title = redact.redact(c.task.title or c.task_id)
        message = f"swarm: {title} (task {c.task_id}, squashed, resolved)"
    else:
        message = f"swarm: merge task {c.task_id} ({c.row.branch}), conflicts resolved by its agent"
    _git(s, "commit", "--quiet", "--no-verify", "--no-gpg-sign", "-m", message)
    return _check(s, c, pre, resolved=files, also=also)


def _symbolic_head(s: _Session) -> str:
    """The branch ref the merge worktree's HEAD names ('' when detached, as with --into)."""
    return _git(s, "symbolic-ref", "-q", "HEAD", check=False).stdout.strip()


def _back_on(s: _Session, on: str, pre: str) -> str:
    """Point the merge worktree's HEAD back at *on* if a resolver switched it; what it was on.

    Undoing a merge resets whatever HEAD names: after a resolver's `git checkout other`, that
    would be another branch of yours. Its files are put back by the undo that follows.
    """
    now = _symbolic_head(s)
    if now == on:
        return ""
    if on:
        _git(s, "symbolic-ref", "HEAD", on)
    else:
        _git(s, "update-ref", "--no-deref", "HEAD", pre)
    return now.removeprefix("refs/heads/") or "a detached HEAD"


def _foreign_commit(s: _Session, c: Candidate, pre: str, head: str) -> str | None:
    """Why the commit a resolver made is not the task's merge on *pre*; None when it is.

    What it left uncommitted (run_resolver staged it, conflict markers excluded) is added to
    its commit, as it would have been to swarm's.
    """
    parents = _git(s, "rev-list", "--parents", "-n1", head).stdout.split()[1:]
    wanted = [pre] if s.strategy is Strategy.SQUASH else [pre, c.tip]
    if parents != wanted:
        what = "a squash" if s.strategy is Strategy.SQUASH else "a merge"
        return f"committed {head[:12]}, not {what} of {c.tip[:12]} on {pre[:12]}"
    if not _nothing_staged(s):
        _git(s, "commit", "--quiet", "--amend", "--no-edit", "--no-verify", "--no-gpg-sign")
    return None


def _nothing_staged(s: _Session) -> bool:
    return _git(s, "diff", "--cached", "--quiet", check=False).returncode == 0


def _as_before_checks(s: _Session, order: Sequence[Candidate]) -> None:
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
    s: _Session,
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
    commit = commit or _head(s.target.worktree)
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
    env = {**_check_env(s), "SWARM_TASK_ID": c.task_id} if s.checks else _task_env(s, c)
    s.store.update_task(
        s.run_id, c.task_id, merge_result=CHECKING, merge_target=s.target.branch,
        merge_commit=commit, merge_detail=pre,
    )  # fmt: skip
    failure = _run_checks(s, steps, env, who=c.task_id, task=None if s.checks else c.task)
    check = CheckResult(
        commands=tuple(shlex.join(a) for a in steps),
        ok=failure is None,
        summary="" if failure is None else failure.summary,
    )
    moved = _head(s.target.worktree)
    if moved != commit:  # not swarm's: never reported as this merge's own move, nor kept
        _undo(s, pre)
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
    _undo(s, pre)
    return TaskResult(
        task_id=c.task_id,
        outcome=MergeOutcome.FAILED,
        reason=f"{failure.summary} after merging into {s.target.branch}; merge undone",
        check=check,
    )


def _undo_unchecked(s: _Session) -> None:
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
    head = _head(s.target.worktree)
    for row in rows:
        if row.merge_commit is None:  # killed between its commit and its checks' record
            pre = row.merge_detail
            # Swarm's merge commit of that task, not one you made on the target since.
            if pre and head != pre and _parent(s, head) == pre and _merges(s, head, row.task_id):
                _undo(s, pre)
                head = pre
            s.store.forget_merge(s.run_id, row.task_id)
    unchecked = {r.merge_commit: (r.task_id, r.merge_detail) for r in rows if r.merge_commit}
    while head in unchecked:
        task_id, pre = unchecked.pop(head)
        if not pre:
            return
        _undo(s, pre)
        s.store.forget_merge(s.run_id, task_id)
        head = pre


def _merges(s: _Session, commit: str, task_id: str) -> bool:
    """Whether *commit* is swarm's merge (or squash) commit of task *task_id*."""
    subject = _git(s, "log", "-1", "--format=%s", commit, "--").stdout.strip()
    return subject.startswith("swarm: ") and (
        f" task {task_id} (" in subject or f"(task {task_id}, squashed" in subject
    )


def _parent(s: _Session, commit: str) -> str | None:
    res = _git(s, "rev-parse", "--verify", "--quiet", f"{commit}^1", check=False)
    return res.stdout.strip() or None


def _unmerged(s: _Session, tip: str) -> tuple[str, ...]:
    args = ("diff", "--name-only", "--diff-filter=U", "-z")
    out = os.fsdecode(runner.run_bytes(s.target.worktree, *args, check=False).stdout)
    names = (conflicts.conflict_path(f, labels=("HEAD", tip)) for f in out.split("\0") if f)
    return tuple(dict.fromkeys(names))


def _unrecorded_conflict(
    s: _Session, c: Candidate, res: subprocess.CompletedProcess[str], pre: str
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


def _gitmodules_cause(s: _Session, stderr: str) -> str:
    """Who gave the target the ``.gitmodules`` git refuses to read, when that stopped a merge.

    Git refuses a submodule setting there that would run a command (``update = !cmd``), and
    then every merge touching a gitlink: the cause is the merge that brought that file.
    """
    if "invalid value for 'submodule." not in stderr:
        return ""
    args = ("log", "-1", "--first-parent", "--format=%H%x00%s", "HEAD", "--", ".gitmodules")
    sha, _, subject = _git(s, *args, check=False).stdout.strip().partition("\0")
    if not sha:
        return ""
    task = re.match(r"swarm: (?:merge task (\S+) \(|.*\(task (\S+), squashed)", subject)
    by = f"task {task[1] or task[2]}'s merge" if task else "commit"
    return f" (the .gitmodules on {s.target.branch} came with {by} {sha[:12]}: fix or revert it)"


def _undo(s: _Session, pre: str) -> None:
    # Only ever inside the merge worktree: never the user's checkout.
    _git(s, "reset", "--quiet", "--hard", pre)


def _record(s: _Session, c: Candidate, result: TaskResult) -> None:
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
