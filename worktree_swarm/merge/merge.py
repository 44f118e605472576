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
import shlex
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path

import filelock

from worktree_swarm.config.programs import check_program
from worktree_swarm.core.errors import BadInputError, ManagerLockedError, SwarmError
from worktree_swarm.core.paths import run_dir
from worktree_swarm.core.task import INTEGRATION_PREFIX
from worktree_swarm.git import gitconfig, half_made, removal, runner, tampering
from worktree_swarm.git import repo as git
from worktree_swarm.guard import ref_moves
from worktree_swarm.infra import proc_scan, redact
from worktree_swarm.infra.lock import MERGE_LOCK, PROBE_GRACE
from worktree_swarm.infra.store import Store
from worktree_swarm.infra.store_rows import task_from_json
from worktree_swarm.merge import conflicts
from worktree_swarm.merge.candidates import merge_order, select_candidates, standing_results
from worktree_swarm.merge.checks import (
    check_env,
    clean_after_cut_off_checks,
    run_checks,
    untracked_noted,
)
from worktree_swarm.merge.guarded import BASELINE_CHECKS, MergeGuard
from worktree_swarm.merge.landing import merge_all, record
from worktree_swarm.merge.merge_report import (
    CheckResult,
    MergeOutcome,
    MergeProgress,
    MergeReport,
    Noting,
    Silent,
    TaskResult,
)
from worktree_swarm.merge.recovery import as_before_checks, undo_unchecked
from worktree_swarm.merge.session import CHECKING, Candidate, Session, Strategy, head_commit
from worktree_swarm.merge.target import (
    integration_path,
    move_branch,
    open_target,
    ref_safe_run,
    remove_scratch,
)
from worktree_swarm.merge.target import validate as validate_target
from worktree_swarm.report.run_info import commit_author

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
    # scanned for them (`candidates._leak`) or a line written.
    redact.add_env(pair for r in store.tasks(run_id) for pair in task_from_json(r.spec_json).env)
    argvs = parse_checks(checks)
    branch, own, start = _target(repo, store, run_id, into=into, checkout=checkout, look=dry_run)
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
        moves = stack.enter_context(ref_moves.moving_refs(repo, [ref]))
        # Their shims live in sessions of their own: a killed merge's checks still run.
        proc_scan.kill_merge_programs(run_dir(repo, run_id) / "merge", grace=0.5)
        remove_scratch(repo, store, run_id)  # what a killed `--into` merge left
        tampering.unplant_ref(repo, branch)  # git would write its ref and reflog through one
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
            identity=gitconfig.identity_env(commit_author(store, run_id)),
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
            undo_unchecked(session)
            runs_programs = resolve or bool(argvs) or any(c.task.checks for c in order)
            with _guarded(session, on=runs_programs and bool(order)):
                baseline = _baseline(session) if argvs and order else None
                if baseline is None or baseline.ok:
                    merge_all(session, order)
            final = head_commit(target.worktree)
            if target.temporary and final != start:
                try:
                    move_branch(repo, branch, new=final, old=start)
                except SwarmError:
                    as_before_checks(session, order)
                    raise
                moves.moved(ref, final)
            for c, result in session.unrecorded:
                record(session, c, result)
        finally:
            if not target.temporary:  # the branch checked out in swarm's merge worktree
                moves.moved(ref, git.rev_parse(repo, ref))
            if target.temporary:
                removal.remove_worktree(repo, target.worktree, force=True)
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


def _target(
    repo: git.Repo, store: Store, run_id: str, *, into: str | None, checkout: Path | None,
    look: bool,
) -> tuple[str, Path | None, str]:  # fmt: skip
    """The branch merged into, swarm's own worktree for it (None: ``--into``), its start.

    Unless *look* (a dry run, which changes nothing), a merge worktree a killed merge left
    half-made goes first: git writes its ``commondir`` in place, and lists no worktree while
    it is empty. A dry run, which cannot look past one, says what the merge would remove.
    """
    if not look:
        half_made.drop(repo, store)
    elif half := half_made.find(repo, store):
        raise BadInputError(
            f"a killed `swarm merge` left the worktree registration of {half[0].path} half-made"
            " (git lists no worktree while it is there); `swarm merge` removes it first, a dry"
            " run changes nothing: remove it with `swarm doctor --yes`, then run this again"
        )
    branch = into if into is not None else INTEGRATION_PREFIX + ref_safe_run(run_id)
    own = None if into is not None else integration_path(repo, store, run_id)
    return branch, own, validate_target(repo, store, branch, own=own, checkout=checkout)


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
    except (ValueError, RecursionError):  # not UTF-8, not TOML, past tomllib's depth or digits
        return shown.stdout
    tool = data.get("tool")
    return tool.get("swarm") if isinstance(tool, dict) else None


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
        worktree=s.target.worktree,
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
